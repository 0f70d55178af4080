"""The stand-in's PostgreSQL mode: an Odoo-shaped database, and an upgrade that behaves like
`odoo -d DB -u MODULES --stop-after-init` (DESIGN.md §13, ODOO.md "Module upgrades").

`python -m watchdog.lab.standin initdb ...` makes a database with the tables the deployment
steps read and copy (res_partner, res_users, ir_module_module, ir_config_parameter,
ir_attachment with its files in a content-addressed filestore, ir_cron). Its modules are at an
earlier release of the series (base `16.0.1.2`), so a same-series upgrade visibly bumps them.

`python -m watchdog.lab.standin upgrade ...` takes Odoo's own option spellings and does what
Odoo's source does, traps included:
- a database that does not exist is created, base is installed at the code's version, and it
  exits 0 (odoo/cli/server.py creates every `-d` database it does not find);
- unknown module names are logged at WARNING (`odoo.modules.loading: invalid module names,
  ignored: x`, `_check_module_names` in odoo/modules/loading.py) and it exits 0;
- the modules to upgrade (and the installed ones depending on them; `-u all` or `base` means
  every installed module) are marked `to upgrade` and committed, then upgraded one by one in
  dependency order, each in its own transaction under `lock_timeout` (15 s, as Odoo's), base's
  with an `ALTER TABLE res_partner ADD COLUMN` (an ACCESS EXCLUSIVE lock: it waits behind any
  session holding a lock on res_partner); a failure leaves what was committed: a half-upgraded
  database;
- any error while loading is logged `CRITICAL odoo.service.server: Failed to initialize database
  `DB`.` with the traceback, and it exits 255 (preload_registries returns -1);
- `-u` is no major upgrade: on a database whose base is on another series than `--version`,
  nothing is bumped, a WARNING says so and it exits 0 (the gate catches it); `--major` stands
  for OpenUpgrade or Odoo's upgrade service having migrated it first, and bumps across;
- SIGTERM rolls back the module being upgraded and exits 143.
Faults: `fail` (a real SQL error in the module after the first), `slow` (`--slow-seconds` in
each module's transaction), `lock` (nothing more than the ALTER: the test holds the lock).

`hold_connection(app, conninfo)`: the HTTP stand-in keeps one idle connection to its database,
as a running Odoo's worker pool does (`--db-dsn`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import os
import re
import signal
import sys
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from watchdog.lab.standin.log import OdooLog

#: The code's modules, in dependency order: name -> (manifest version, depends).
MODULES: dict[str, tuple[str, tuple[str, ...]]] = {
    "base": ("1.3", ()),
    "web": ("1.0", ("base",)),
    "mail": ("1.10", ("base", "web")),
    "contacts": ("1.0", ("base", "mail")),
    "sale": ("1.2", ("mail", "contacts")),
}
#: What initdb installs, and at which manifest version (an earlier release of the series).
INITDB_INSTALLED = {"base": "1.2", "web": "1.0", "mail": "1.9", "contacts": "1.0"}
CRONS = ("Base: Auto-vacuum internal data", "Mail: Email Queue Manager",
         "Base: Portal Users Deletion")
LOCK_TIMEOUT = 15.0  # seconds: Odoo's load_modules sets `SET SESSION lock_timeout = '15s'`
EXIT_FAILED = 255  # preload_registries returns -1
EXIT_TERMINATED = 143  # 128 + SIGTERM
ADMIN_PASSWORD = "admin"  # noqa: S105 (what `-i base` gives the admin)
ROUNDS = 25_000  # pbkdf2-sha512 rounds of the stored password hashes (Odoo's are higher)

_SERIES = re.compile(r"^((?:saas~)?\d+\.\d+)(?=$|[-.+~_ ])")

SCHEMA = """
CREATE TABLE res_partner (
    id serial PRIMARY KEY, name varchar NOT NULL, complete_name varchar, email varchar,
    is_company boolean DEFAULT false, active boolean DEFAULT true,
    create_date timestamp without time zone, write_date timestamp without time zone);
CREATE INDEX res_partner__name_index ON res_partner (name);
CREATE TABLE res_users (
    id serial PRIMARY KEY, login varchar NOT NULL UNIQUE, password varchar,
    partner_id integer NOT NULL REFERENCES res_partner (id), active boolean DEFAULT true,
    share boolean DEFAULT false,
    create_date timestamp without time zone, write_date timestamp without time zone);
CREATE TABLE ir_module_module (
    id serial PRIMARY KEY, name varchar NOT NULL UNIQUE, state varchar(16),
    latest_version varchar, demo boolean DEFAULT false,
    create_date timestamp without time zone, write_date timestamp without time zone);
CREATE TABLE ir_config_parameter (
    id serial PRIMARY KEY, key varchar NOT NULL UNIQUE, value text NOT NULL,
    create_date timestamp without time zone, write_date timestamp without time zone);
CREATE TABLE ir_attachment (
    id serial PRIMARY KEY, name varchar NOT NULL, res_model varchar, res_id integer,
    type varchar DEFAULT 'binary', store_fname varchar, checksum varchar(40), file_size integer,
    mimetype varchar, db_datas bytea,
    create_date timestamp without time zone, write_date timestamp without time zone);
CREATE INDEX ir_attachment__checksum_index ON ir_attachment (checksum);
CREATE TABLE ir_cron (
    id serial PRIMARY KEY, cron_name varchar, active boolean DEFAULT true,
    interval_number integer DEFAULT 1, interval_type varchar DEFAULT 'days',
    nextcall timestamp without time zone NOT NULL DEFAULT now());
"""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is: a KeyboardInterrupt, so psycopg cancels the
    query it waits on (a lock wait included) before it propagates."""


def series_of(version: str) -> str | None:
    m = _SERIES.match(version.strip())
    return m.group(1) if m else None


def _column(series: str) -> str:
    """The column base's upgrade adds to res_partner: x_standin_17_0, x_standin_saas_17_2."""
    return "x_standin_" + re.sub(r"[^0-9a-z]+", "_", series)


# ---------------------------------------------------------------- options and connections


def _db_options(parser: argparse.ArgumentParser) -> None:
    """Odoo's spellings (--db_host, -r/--db_user, -w/--db_password) and dashed ones; absent
    options leave libpq its PGHOST, PGPORT, PGUSER, PGPASSWORD, as Odoo's defaults do."""
    parser.add_argument("-d", "--database", dest="database", required=True)
    parser.add_argument("--db_host", "--db-host", dest="db_host", default=None)
    parser.add_argument("--db_port", "--db-port", dest="db_port", default=None)
    parser.add_argument("-r", "--db_user", "--db-user", dest="db_user", default=None)
    parser.add_argument("-w", "--db_password", "--db-password", dest="db_password",
                        default=None)
    parser.add_argument("--version", required=True,
                        help='the code\'s Odoo version, e.g. "17.0" or "17.0-20250421"')


def _conninfo(args: argparse.Namespace, dbname: str) -> str:
    return make_conninfo("", host=args.db_host, port=args.db_port, user=args.db_user,
                         password=args.db_password, dbname=dbname, connect_timeout="10",
                         application_name=f"odoo-{os.getpid()}")


def _connect(args: argparse.Namespace, dbname: str, *,
             autocommit: bool = False) -> psycopg.Connection[Any]:
    return psycopg.connect(_conninfo(args, dbname), autocommit=autocommit)


def _exists(args: argparse.Namespace, name: str) -> bool:
    with _connect(args, "postgres", autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                            (name,)).fetchone() is not None


def _create_database(args: argparse.Namespace, name: str, *, drop: bool = False) -> None:
    """As Odoo's _create_empty_database: from template0, unicode, collation C."""
    with _connect(args, "postgres", autocommit=True) as conn:
        if drop:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {} ENCODING 'unicode' LC_COLLATE 'C' "
                             "TEMPLATE template0").format(sql.Identifier(name)))


def password_hash(password: str, rounds: int = ROUNDS) -> str:
    """passlib's pbkdf2_sha512 format, as Odoo stores res_users.password."""
    salt = os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, rounds)

    def ab64(raw: bytes) -> str:
        return base64.b64encode(raw).decode().rstrip("=").replace("+", ".")

    return f"$pbkdf2-sha512${rounds}${ab64(salt)}${ab64(digest)}"


def _base_data(conn: psycopg.Connection[Any], series: str, versions: dict[str, str], *,
               base_url: str, admin_password: str) -> None:
    """What installing base writes: the company, OdooBot and the admin (partners 1-3, users
    __system__ and admin), the module list, the database's parameters and the crons."""
    conn.execute(SCHEMA)
    conn.execute("INSERT INTO res_partner (name, complete_name, is_company, create_date, "
                 "write_date) VALUES ('My Company', 'My Company', true, now(), now()), "
                 "('OdooBot', 'OdooBot', false, now(), now()), "
                 "('Mitchell Admin', 'Mitchell Admin', false, now(), now())")
    conn.execute("INSERT INTO res_users (login, password, partner_id, active, create_date, "
                 "write_date) VALUES ('__system__', NULL, 2, false, now(), now()), "
                 "('admin', %s, 3, true, now(), now())", (password_hash(admin_password),))
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO ir_module_module (name, state, latest_version, create_date, "
            "write_date) VALUES (%s, %s, %s, now(), now())",
            [(name, "installed" if name in versions else "uninstalled",
              f"{series}.{versions[name]}" if name in versions else None)
             for name in MODULES])
        cur.executemany(
            "INSERT INTO ir_config_parameter (key, value, create_date, write_date) "
            "VALUES (%s, %s, now(), now())",
            [("database.secret", str(uuid.uuid4())), ("database.uuid", str(uuid.uuid1())),
             ("database.create_date", time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())),
             ("web.base.url", base_url)])
        cur.executemany("INSERT INTO ir_cron (cron_name, active) VALUES (%s, true)",
                        [(c,) for c in CRONS])


def _attachments(conn: psycopg.Connection[Any], filestore: Path, count: int,
                 partners: int) -> int:
    """`count` attachments on partners, their files in `filestore` as Odoo stores them
    (`<sha1[:2]>/<sha1>`, never rewritten in place); the bytes written."""
    rows = []
    total = 0
    for i in range(1, count + 1):
        data = f"odoo-watchdog stand-in attachment {i}\n".encode() + os.urandom(256 + 61 * i % 3840)
        sha = hashlib.sha1(data).hexdigest()  # noqa: S324 (Odoo's content address)
        path = filestore / sha[:2] / sha
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_bytes(data)
        total += len(data)
        rows.append((f"attachment-{i}.bin", "res.partner", 1 + (i - 1) % partners,
                     f"{sha[:2]}/{sha}", sha, len(data), "application/octet-stream"))
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO ir_attachment (name, res_model, res_id, type, store_fname, checksum, "
            "file_size, mimetype, create_date, write_date) "
            "VALUES (%s, %s, %s, 'binary', %s, %s, %s, %s, now(), now())", rows)
    return total


# ---------------------------------------------------------------- initdb


def initdb(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m watchdog.lab.standin initdb",
        description="Create an Odoo-shaped database (and its filestore) for the lab.")
    _db_options(parser)
    parser.add_argument("--partners", type=int, default=100,
                        help="partners besides base's three (company, OdooBot, admin)")
    parser.add_argument("--filestore", type=Path, default=None,
                        help="the database's filestore directory (<data_dir>/filestore/NAME)")
    parser.add_argument("--attachments", type=int, default=None,
                        help="attachments with files in --filestore (default 20 with it)")
    parser.add_argument("--admin-password", default=ADMIN_PASSWORD)
    parser.add_argument("--base-url", default="http://localhost:8069")
    parser.add_argument("--force", action="store_true", help="drop an existing database first")
    args = parser.parse_args(argv)
    series = series_of(args.version)
    if series is None:
        parser.error(f"--version {args.version!r} names no Odoo series (e.g. 17.0)")
    count = args.attachments if args.attachments is not None else (20 if args.filestore else 0)
    if count and args.filestore is None:
        parser.error("--attachments needs --filestore (where their files go)")
    name = args.database
    started = time.monotonic()
    try:
        exists = _exists(args, name)
        if exists and not args.force:
            print(f"initdb: database {name} already exists; give --force to drop it first",
                  file=sys.stderr)
            return 1
        _create_database(args, name, drop=exists)
        with _connect(args, name) as conn:
            _base_data(conn, series, INITDB_INSTALLED, base_url=args.base_url,
                       admin_password=args.admin_password)
            conn.execute(
                "INSERT INTO res_partner (name, complete_name, email, active, create_date, "
                "write_date) SELECT 'Partner ' || g, 'Partner ' || g, "
                "'partner' || g || '@example.com', true, now(), now() "
                "FROM generate_series(1, %s) AS g", (args.partners,))
            size = 0
            if count:
                size = _attachments(conn, args.filestore, count, 3 + args.partners)
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"initdb: {name}: {first}", file=sys.stderr)
        return 1
    where = f", {count} attachments ({size} bytes) in {args.filestore}" if count else ""
    print(f"initdb: database {name} for Odoo {series}: {3 + args.partners} partners, "
          f"{len(INITDB_INSTALLED)} modules installed{where} in "
          f"{time.monotonic() - started:.2f} s", flush=True)
    return 0


# ---------------------------------------------------------------- upgrade


class _Upgrade:
    def __init__(self, args: argparse.Namespace, log: OdooLog, series: str) -> None:
        self.args = args
        self.log = log
        self.series = series
        self.db: str = args.database

    def info(self, name: str, text: str, level: str = "INFO") -> None:
        self.log.write(level, name, text, dbname=self.db)

    def run(self) -> int:
        args = self.args
        if not _exists(args, self.db):
            _create_database(args, self.db)
            self.info("odoo.modules.loading", "init db")
            with _connect(args, self.db) as conn:
                _base_data(conn, self.series, {"base": MODULES["base"][0]},
                           base_url="http://localhost:8069", admin_password=ADMIN_PASSWORD)
            self.info("odoo.modules.loading", "loading 1 modules...")
            self.info("odoo.modules.loading", "1 modules loaded in 0.05s, 0 queries (+0 extra)")
            self.info("odoo.modules.loading", "Modules loaded.")
            return 0
        with _connect(args, self.db) as conn:
            conn.execute(sql.SQL("SET SESSION lock_timeout = {}").format(
                sql.Literal(f"{int(args.lock_timeout * 1000)}ms")))
            conn.commit()
            return self._upgrade(conn)

    def _upgrade(self, conn: psycopg.Connection[Any]) -> int:
        args = self.args
        started = time.monotonic()
        self.info("odoo.modules.loading", "loading 1 modules...")
        rows = conn.execute("SELECT name, state, latest_version FROM ir_module_module").fetchall()
        conn.commit()
        known = {str(n): (str(s), str(v) if v is not None else None) for n, s, v in rows}
        self.info("odoo.modules.loading", "1 modules loaded in 0.01s, 0 queries (+0 extra)")
        self.info("odoo.modules.loading", "updating modules list")
        asked = [m.strip() for m in args.update.split(",") if m.strip()]
        unknown = [m for m in asked if m != "all" and m not in known]
        if unknown:
            self.info("odoo.modules.loading",
                      f"invalid module names, ignored: {', '.join(unknown)}", "WARNING")
        targets = self._targets(asked, known)
        base = known.get("base", ("", None))[1] or ""
        found = series_of(base)
        if targets and found != self.series and not args.major:
            self.info("odoo.modules.loading",
                      f"base is at {base} in the database but the code is {self.series}: -u "
                      "does not migrate a database across versions (Odoo's upgrade service or "
                      f"OpenUpgrade first); modules left at their {found} versions", "WARNING")
            targets = []
        if targets:
            with conn.transaction():
                conn.execute("UPDATE ir_module_module SET state = 'to upgrade', "
                             "write_date = now() WHERE name = ANY(%s)", (targets,))
        self.info("odoo.modules.loading", f"loading {len(targets) or 1} modules...")
        fail_at = min(1, len(targets)) if args.fault == "fail" else -1
        for i, name in enumerate(targets):
            if i == fail_at:
                self._fail(conn)
            self._module(conn, name)
        if fail_at == len(targets) and targets:
            self._fail(conn)
        self.info("odoo.modules.loading",
                  f"{len(targets)} modules loaded in {time.monotonic() - started:.2f}s, "
                  f"{3 * len(targets)} queries (+0 extra)")
        self.info("odoo.modules.loading", "Modules loaded.")
        return 0

    def _targets(self, asked: list[str], known: dict[str, tuple[str, str | None]]) -> list[str]:
        """The installed modules to upgrade, in dependency order: those asked for and every
        installed module depending on them (button_upgrade); `all` or `base`: every one."""
        installed = [m for m in MODULES if known.get(m, ("",))[0] in ("installed", "to upgrade")]
        if "all" in asked or "base" in asked:
            return installed
        chosen = {m for m in asked if m in installed}
        for m in installed:  # dependency order: a module's depends come before it
            if set(MODULES[m][1]) & chosen:
                chosen.add(m)
        return [m for m in installed if m in chosen]

    def _module(self, conn: psycopg.Connection[Any], name: str) -> None:
        """One module in one transaction, committed at its end."""
        version = f"{self.series}.{MODULES[name][0]}"
        self.info("odoo.modules.registry", f"module {name}: creating or updating database "
                  "tables")
        with conn.transaction():
            if name == "base":
                conn.execute(sql.SQL("ALTER TABLE res_partner ADD COLUMN IF NOT EXISTS {} "
                                     "varchar").format(sql.Identifier(_column(self.series))))
            if self.args.fault == "slow":
                time.sleep(self.args.slow_seconds)
            conn.execute("UPDATE ir_module_module SET latest_version = %s, state = 'installed', "
                         "write_date = now() WHERE name = %s", (version, name))
        self.info("odoo.modules.loading", f"Module {name} upgraded to {version}")

    def _fail(self, conn: psycopg.Connection[Any]) -> None:
        """The fault `fail`: a model whose column the database lacks (a real SQL error)."""
        with conn.transaction():
            conn.execute("SELECT x_standin_missing_field FROM res_partner LIMIT 1")


def _terminate(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: the rollback must finish
    raise Terminated


def upgrade(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m watchdog.lab.standin upgrade",
        description="Stand in for `odoo -d DB -u MODULES --stop-after-init`.")
    _db_options(parser)
    parser.add_argument("-u", "--update", required=True, help="all, or mod1,mod2")
    parser.add_argument("--stop-after-init", action="store_true")
    parser.add_argument("--major", action="store_true",
                        help="the database was migrated to --version's series first "
                        "(OpenUpgrade, Odoo's upgrade service): bump across series")
    parser.add_argument("--fault", choices=("fail", "slow", "lock"), default=None)
    parser.add_argument("--slow-seconds", type=float, default=2.0)
    parser.add_argument("--lock-timeout", type=float, default=LOCK_TIMEOUT,
                        help=f"seconds (Odoo's: {LOCK_TIMEOUT:g})")
    parser.add_argument("--logfile", "--log-file", dest="logfile", type=Path, default=None)
    for ignored in ("--addons-path", "--data-dir", "-c", "--config"):
        parser.add_argument(ignored, default=None, help=argparse.SUPPRESS)
    for flag in ("--no-http", "--without-demo"):
        parser.add_argument(flag, nargs="?", const=True, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.stop_after_init:
        parser.error("the stand-in only runs upgrades: give --stop-after-init")
    series = series_of(args.version)
    if series is None:
        parser.error(f"--version {args.version!r} names no Odoo series (e.g. 17.0)")
    log = OdooLog(args.logfile, args.logfile is None, release=f"Odoo Server {args.version}")
    signal.signal(signal.SIGTERM, _terminate)
    log.write("INFO", "odoo", f"Odoo version {args.version}", dbname="?")
    log.write("INFO", "odoo", f"database: {args.db_user or 'default'}@"
              f"{args.db_host or 'default'}:{args.db_port or 'default'}", dbname="?")
    job = _Upgrade(args, log, series)
    try:
        code = job.run()
    except Terminated:
        job.info("odoo.service.server", "Initiating shutdown")
        job.info("odoo.service.server", "Hit CTRL-C again or send a second signal to force the "
                 "shutdown.")
        code = EXIT_TERMINATED
    except Exception:
        job.log.write("CRITICAL", "odoo.service.server",
                      f"Failed to initialize database `{args.database}`.", dbname=args.database,
                      exc_text=traceback.format_exc())
        code = EXIT_FAILED
    else:
        job.info("odoo.service.server", "Initiating shutdown")
        job.info("odoo.service.server", "Hit CTRL-C again or send a second signal to force the "
                 "shutdown.")
    log.close()
    return code


def main(argv: Sequence[str]) -> int:
    """`initdb ...` or `upgrade ...`."""
    command, rest = argv[0], argv[1:]
    if command == "initdb":
        return initdb(rest)
    if command == "upgrade":
        return upgrade(rest)
    raise SystemExit(f"unknown subcommand {command!r}: initdb or upgrade")


# ---------------------------------------------------------------- the HTTP stand-in's pool


async def _hold(conninfo: str, log: OdooLog | None, every: float) -> None:
    """One connection, idle but for a `SELECT 1` every `every` seconds (which finds a
    terminated one); reconnects after a second when it is lost."""
    while True:
        try:
            conn = await psycopg.AsyncConnection.connect(
                conninfo, application_name=f"odoo-{os.getpid()}", autocommit=True)
        except psycopg.Error as exc:
            if log is not None:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                log.write("WARNING", "odoo.sql_db", f"Connection to the database failed: "
                          f"{first}")
            await asyncio.sleep(1.0)
            continue
        try:
            while True:
                await asyncio.sleep(every)
                await conn.execute("SELECT 1")
        except psycopg.Error:
            await asyncio.sleep(1.0)
        finally:
            await conn.close()


def hold_connection(app: Any, conninfo: str, *, log: OdooLog | None = None,
                    every: float = 5.0) -> None:
    """While the aiohttp `app` runs, hold one idle connection to `conninfo`'s database with
    application_name `odoo-<pid>`, as a running Odoo's worker pool does."""

    async def held(_app: Any) -> AsyncIterator[None]:
        task = asyncio.create_task(_hold(conninfo, log, every))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(held)
