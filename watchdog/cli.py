"""The `odoo-watchdog` command (docs/cli.md)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from watchdog import __version__, routers
from watchdog.cli_db import add_db_commands
from watchdog.cli_ops import add_client_commands, api_url, common_options
from watchdog.config import ConfigError, LoadedConfig, SiteConfig, load
from watchdog.daemon import StartError
from watchdog.rollout import ACTIVE, steps_of
from watchdog.routers import RouterError, WeightsError, format_weights, parse_weights
from watchdog.sdnotify import SdNotify
from watchdog.secrets import SecretError
from watchdog.store import StoreError
from watchdog.yamlsrc import Problem, display_name, read

if TYPE_CHECKING:
    from watchdog.api import ApiToken


def _check(args: argparse.Namespace) -> int:
    path = Path(args.config)
    try:
        loaded = load(path)
    except ConfigError as exc:
        return _failed(exc.problems)
    for warning in loaded.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.connect:
        problems = asyncio.run(_connect(loaded))
        if problems:
            return _failed(problems)
    print(_summary(loaded))
    if args.connect:
        print(f"  every router answers and can switch ({len(loaded.config.sites)} "
              f"site{'s' if len(loaded.config.sites) != 1 else ''})")
    return 0


def _failed(problems: Sequence[Problem]) -> int:
    for problem in problems:
        print(problem, file=sys.stderr)
    count = len(problems)
    print(f"FAILED: {count} problem{'s' if count != 1 else ''}", file=sys.stderr)
    return 1


async def _connect(loaded: LoadedConfig) -> list[Problem]:
    """`Router.check()` of every site, at once; a problem is placed at the site's `router:`."""
    doc = read(loaded.path, display_name(loaded.path))

    async def one(name: str, site: SiteConfig) -> Problem | None:
        try:
            router = routers.create(name, site)
        except RouterError as exc:
            return Problem(doc.file, doc.line_of(("sites", name, "router")), str(exc))
        try:
            await router.check()
        except RouterError as exc:
            return Problem(doc.file, doc.line_of(("sites", name, "router")),
                           f"site {name!r}: {site.router.kind} router: {exc}")
        finally:
            await router.close()
        return None

    found = await asyncio.gather(*(one(n, s) for n, s in loaded.config.sites.items()))
    return [problem for problem in found if problem is not None]


def _summary(loaded: LoadedConfig) -> str:
    cfg = loaded.config
    lines = [f"SUCCESS: {loaded.path} is valid"]
    for name, site in cfg.sites.items():
        colors = ", ".join(f"{c} ({spec.server} {spec.url})" for c, spec in site.colors.items())
        steps = " -> ".join(
            "pause" if s.weight is None else str(s.weight) for s in steps_of(site.rollout)
        )
        lines.append(
            f"  site {name}: {site.router.kind} router, live {site.live}, {colors}; "
            f"{site.rollout.strategy} {steps}; {len(loaded.rules_for(name))} rules"
        )
        if site.database is not None:
            db = site.database
            names = (db.names["blue"] if db.strategy == "shared"
                     else f"blue {db.names['blue']}, green {db.names['green']}")
            lines.append(f"    database: {db.strategy} ({names})"
                         + (f", migration {db.migration or 'breaking'}"
                            if db.strategy == "shared" else "")
                         + f"; backups in {db.backup.dir}, keep {db.backup.keep}")
        if site.prepare:
            lines.append(f"    prepare: {' -> '.join(site.steps)}"
                         + " (then preflight)")
    by_source = Counter(rule.source for rule in loaded.rules)
    sources = ", ".join(f"{kind} {count}" for kind, count in sorted(by_source.items())) or "none"
    files = len(loaded.rule_files)
    lines.append(
        f"  {len(loaded.rules)} rules from {files} file{'s' if files != 1 else ''}: {sources}"
    )
    return "\n".join(lines)


def _daemon_phase(api: str, site: str) -> str | None:
    """The phase the daemon reports for `site`, or None when no daemon answers."""
    try:
        with urllib.request.urlopen(f"{api}/api/v1/sites/{site}", timeout=3) as resp:  # noqa: S310
            body = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
    phase = body.get("phase") if isinstance(body, dict) else None
    return str(phase) if phase is not None else None


def _load_or_report(path: Path) -> LoadedConfig | None:
    try:
        return load(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def _router(args: argparse.Namespace) -> int:
    loaded = _load_or_report(Path(args.config))
    if loaded is None:
        return 1
    site = loaded.config.sites.get(args.site)
    if site is None:
        known = ", ".join(sorted(loaded.config.sites))
        print(f"error: no site {args.site!r} in {args.config} (sites: {known})", file=sys.stderr)
        return 2
    wanted = None
    if args.set is not None:
        try:
            wanted = parse_weights(args.set)
        except WeightsError as exc:
            print(f"error: --set: {exc}", file=sys.stderr)
            return 2
        api = api_url(args.url, loaded)
        phase = _daemon_phase(api, args.site)
        if phase in ACTIVE and not args.force:
            print(f"refused: the daemon at {api} owns a rollout of {args.site} (phase {phase}); "
                  "use `odoo-watchdog abort` first, or --force in an emergency (the daemon will "
                  "see the change as drift and put its own split back)", file=sys.stderr)
            return 1
    router = routers.create(args.site, site)
    try:
        return asyncio.run(_router_run(router, args.site, site, wanted, args.drain))
    except RouterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


async def _router_run(
    router: routers.Router, name: str, site: SiteConfig, wanted: dict[str, int] | None,
    drain: bool,
) -> int:
    try:
        before = await router.get_weights()
        if wanted is None:
            print(f"site {name}: {site.router.kind} router")
            for color, weight in before.items():
                print(f"  {color:<6} {site.colors[color].server:<24} {weight:>3}%")
            return 0
        after = await router.set_weights(wanted, drain=drain)
        print(f"site {name}: {format_weights(after)} (was {format_weights(before)})")
        return 0
    finally:
        await router.close()


def configure_logging() -> None:
    """JSON lines to stdout (journald keeps them); a readable console when on a terminal."""
    renderer: Any = (structlog.dev.ConsoleRenderer() if sys.stdout.isatty()
                     else structlog.processors.JSONRenderer(sort_keys=True))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )


EVENT_LOOP_ENV = "ODOO_WATCHDOG_EVENT_LOOP"


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """`ODOO_WATCHDOG_EVENT_LOOP`: `asyncio` (the default: None) or `uvloop` (pip install
    'odoo-watchdog[uvloop]'): libuv's loop, about a fifth less CPU at 500 sites
    (bench/bench_scale.py --loop uvloop). Anything else is refused, naming the choices."""
    kind = os.environ.get(EVENT_LOOP_ENV, "").strip() or "asyncio"
    if kind == "asyncio":
        return None
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise StartError(f"{EVENT_LOOP_ENV}=uvloop, but uvloop is not installed "
                             "(pip install 'odoo-watchdog[uvloop]')") from None
        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    raise StartError(f"{EVENT_LOOP_ENV}={kind!r}: the event loop is asyncio (the default) "
                     "or uvloop")


def _run(args: argparse.Namespace) -> int:
    configure_logging()
    loaded = _load_or_report(Path(args.config))
    if loaded is None:
        return 1
    from watchdog.api import ApiToken

    try:
        token = ApiToken.from_file(loaded.config.api.token_file, loaded.path.parent)
    except SecretError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        factory = loop_factory()
        if factory is None:
            return asyncio.run(_serve(loaded, token))
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(_serve(loaded, token))
    except (StoreError, StartError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot listen on {loaded.config.api.listen}: {exc.strerror}",
              file=sys.stderr)
        return 1


async def _serve(loaded: LoadedConfig, token: ApiToken) -> int:
    from aiohttp import web

    from watchdog.api import create_app
    from watchdog.daemon import Daemon

    log = structlog.get_logger("odoo_watchdog")
    try:
        daemon = Daemon(loaded)
    except ValueError as exc:  # a notify url_file that cannot be read
        print(f"error: {exc}", file=sys.stderr)
        return 1
    notify = SdNotify()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[bool]] = set()

    def on_hup() -> None:
        task = loop.create_task(daemon.reload("SIGHUP"))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)

    async def reread_token() -> str | None:
        """api.token_file again on every reload (SIGHUP, an edited config): rotation without
        a restart. A file that cannot be read keeps the token and says so."""
        problem = await asyncio.to_thread(token.reread)
        if problem:
            for name in daemon.sites:
                daemon.notifier.post(name, "reload_failed", f"API token not changed: {problem}")
        return problem

    daemon.reloader.rereads.append(reread_token)
    daemon.reloader.on_reload = lambda done: (notify.ready(_status(daemon)) if done
                                     else notify.reloading())
    await daemon.start()
    runner = web.AppRunner(create_app(daemon, token), access_log=None)
    await runner.setup()
    host, port = loaded.config.api.host_port
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError:
        await daemon.stop()
        await runner.cleanup()
        raise
    log.info("started", listen=loaded.config.api.listen, sites=list(loaded.config.sites),
             rules=len(loaded.rules), token=token.value is not None)
    notify.ready(_status(daemon))  # after start(): the first reconcile is done
    notify.start_watchdog(lambda: _status(daemon))
    await stop.wait()
    notify.stopping()
    log.info("stopping", reason="signal")
    await runner.cleanup()
    await daemon.stop()
    await notify.close()
    log.info("stopped")
    return 0


def _status(daemon: Any) -> str:
    """systemd's STATUS=: one line per site."""
    parts = []
    for name, runtime in daemon.sites.items():
        w = runtime.state.weights
        parts.append(f"{name}: {runtime.state.phase.value}, blue {w['blue']}% green "
                     f"{w['green']}%")
    text = "; ".join(parts) if len(parts) > 1 else (parts[0] if parts else "no sites")
    problem = daemon.store_problem()  # first: what systemctl status must show
    return f"{problem}; {text}" if problem else text


def _demo(args: argparse.Namespace) -> int:
    from watchdog.lab.demo import run_demo

    return run_demo()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="odoo-watchdog",
        description="Blue-green and canary rollouts of Odoo with automatic rollback.",
    )
    parser.add_argument("--version", action="version", version=f"odoo-watchdog {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("-c", "--config", required=True, metavar="FILE", help="daemon config")
    run.set_defaults(func=_run)

    check = sub.add_parser("check", help="validate the config and every rule file it names")
    check.add_argument("-c", "--config", required=True, metavar="FILE", help="daemon config")
    check.add_argument("--connect", action="store_true",
                       help="also ask every site's router whether it can switch traffic")
    check.set_defaults(func=_check)

    router = sub.add_parser(
        "router", help="read or set a site's split straight through its router (emergencies)"
    )
    router.add_argument("site", help="site name from the config")
    router.add_argument("-c", "--config", required=True, metavar="FILE", help="daemon config")
    router.add_argument("--set", metavar="SPLIT", help="e.g. blue=90,green=10")
    router.add_argument("--force", action="store_true",
                        help="set even while the daemon owns a rollout of the site")
    router.add_argument("--drain", action="store_true",
                        help="a colour set to 0 drains its sticky users instead of dropping them")
    router.add_argument("--url", help="the daemon's API (default: from the config)")
    router.set_defaults(func=_router)

    add_client_commands(sub)
    add_db_commands(sub, common_options)
    from watchdog.cli_backtest import add_backtest_command
    add_backtest_command(sub)
    from watchdog.cli_report import add_report_command
    add_report_command(sub)

    demo = sub.add_parser("demo", help="run the lab demo on loopback")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
