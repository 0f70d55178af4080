"""The stand-in's command line: `python -m watchdog.lab.standin` runs one in the foreground."""

from __future__ import annotations

import argparse
from pathlib import Path

from aiohttp import web

from watchdog.lab.standin.app import create_app
from watchdog.lab.standin.state import PASSWORD_COST, STATE, StandinSettings
from watchdog.lab.standin.users import COOLDOWN_AFTER, COOLDOWN_DURATION

DESCRIPTION = (
    "The Odoo stand-in: an aiohttp app that speaks Odoo 16-19's HTTP and RPC surface on loopback."
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m watchdog.lab.standin",
        description=DESCRIPTION,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8069)
    parser.add_argument("--color", default="blue")
    parser.add_argument("--version", default="17.0", help='the Odoo version to claim, e.g. "18.0"')
    parser.add_argument("--db", default="odoo")
    parser.add_argument("--login", default="admin")
    parser.add_argument("--password", default="admin")
    parser.add_argument("--log-file", type=Path, default=None)
    parser.add_argument("--log-stdout", action="store_true")
    parser.add_argument(
        "--syslog",
        type=Path,
        default=None,
        metavar="SOCKET",
        help="log as Odoo's --syslog does, to this unix datagram socket (Odoo's /dev/log), "
        "instead of --log-file and --log-stdout",
    )
    parser.add_argument(
        "--password-cost",
        type=float,
        default=PASSWORD_COST,
        help=f"seconds one password check takes (Odoo's pbkdf2: about {PASSWORD_COST})",
    )
    parser.add_argument("--db-dsn", default=None, metavar="CONNINFO",
                        help="hold one idle connection to this database, as Odoo's workers do")
    users = parser.add_argument_group("users and sessions")
    users.add_argument("--user", action="append", default=[], metavar="LOGIN:PASSWORD[:API_KEY]",
                       help="a user (repeatable); an API key that never expires")
    users.add_argument("--users", type=Path, default=None, metavar="FILE",
                       help='a JSON list of users: [{"login", "password", "api_keys": '
                       '[{"key", "expires"}], "totp", "name"}]')
    users.add_argument("--totp-user", action="append", default=[], metavar="LOGIN",
                       help="this user has two-factor authentication (repeatable)")
    users.add_argument("--expired-api-key", action="append", default=[],
                       metavar="LOGIN:API_KEY",
                       help="give this user an API key that expired yesterday (refused from 18)")
    users.add_argument("--login-cooldown-after", type=int, default=COOLDOWN_AFTER,
                       metavar="N", help="base.login_cooldown_after (0: no cooldown)")
    users.add_argument("--login-cooldown-duration", type=float, default=COOLDOWN_DURATION,
                       metavar="SECONDS", help="base.login_cooldown_duration")
    users.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                       help="Odoo's data_dir: sessions as files under DIR/sessions")
    users.add_argument("--db-secret", default=None, metavar="SECRET",
                       help="database.secret (default: the same for every stand-in on --db)")
    args = parser.parse_args(argv)
    settings = StandinSettings(
        color=args.color,
        version=args.version,
        db=args.db,
        login=args.login,
        password=args.password,
        log_file=args.log_file,
        log_stdout=args.log_stdout,
        syslog=args.syslog,
        password_cost=args.password_cost,
        data_dir=args.data_dir,
        db_secret=args.db_secret,
        users=args.user,
        users_file=args.users,
        totp_users=args.totp_user,
        expired_api_keys=args.expired_api_key,
        login_cooldown_after=args.login_cooldown_after,
        login_cooldown_duration=args.login_cooldown_duration,
    )
    try:
        app = create_app(settings)
    except (OSError, ValueError) as exc:  # a bad users file or --user spec
        parser.error(str(exc))

    async def announce(_app: web.Application) -> None:
        app[STATE].log.write(
            "INFO",
            "odoo.service.server",
            f"HTTP service (werkzeug) running on {args.host}:{args.port}",
        )

    app.on_startup.append(announce)
    if args.db_dsn:
        from watchdog.lab.standin.pgmode import hold_connection

        hold_connection(app, args.db_dsn, log=app[STATE].log)
    # SIGTERM/SIGINT end run_app gracefully, and main returns: exit status 0.
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        print=None,
        access_log=None,
        shutdown_timeout=2.0,
        handle_signals=True,
    )
