"""The preparing phase as the daemon runs it: each prepare step an asyncio task, off the tick.

The rollout machine says which step to run (`RunStep`) and hears how it ended (`StepDone`),
through `Daemon.step_done`; this module turns a step's name into the calls of
`watchdog/steps/` with the site's database settings, writes the step's progress lines into
the site's events, and times it (`odoo_watchdog_prepare_step_seconds`). `abort` cancels the
task: a running command gets SIGTERM, then SIGKILL.

Backups by hand and restores (the API's `/backups` routes) are jobs of the same kind: one
database job per site at a time (a second one is DatabaseBusy, the API's 409), progress and end
in the site's events, and they never touch traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from watchdog import crashpoints
from watchdog.config import SiteConfig
from watchdog.dbconfig import (
    DatabaseConfig,
    deploy_settings,
    load_servers,
    migrate_settings,
    render_command,
)
from watchdog.metrics import Metrics
from watchdog.rollout import Event, Rollout, RunStep, StepDone, StepOutcome
from watchdog.schema import render
from watchdog.steps import backup as backup_step
from watchdog.steps import clone as clone_step
from watchdog.steps import deploy as deploy_step
from watchdog.steps import filestore as fs_step
from watchdog.steps import gate as gate_step
from watchdog.steps import migrate as migrate_step
from watchdog.steps.base import StepFailed
from watchdog.steps.command import CommandError
from watchdog.steps.pg import Server
from watchdog.store import SqlStore

log = structlog.get_logger("odoo_watchdog.prepare")
OUTPUT_LINES = 10  # of a command's last lines, kept in the rollout and its events


class DatabaseBusy(Exception):
    """A database job (a step, a backup, a restore) already runs for the site: the API's 409."""


class UnknownBackup(KeyError):
    """No backup of that id for the site (the API's 404)."""


class NoDatabase(Exception):
    """The site has no `database:` settings (the API's 400)."""


class HasTraffic(Exception):
    """A restore into a colour that serves users, without force (the API's 409)."""


@dataclass
class SiteDatabase:
    """A site's database settings with its servers (the dsn_file read once, at start)."""

    config: DatabaseConfig
    servers: dict[str, Server]
    backup_root: Path

    def server(self, color: str) -> Server:
        return self.servers[color]

    def name(self, color: str) -> str:
        return self.config.names[color]  # type: ignore[index]

    def filestore(self, color: str) -> Path | None:
        fs = self.config.filestore
        return fs[color] if fs is not None else None  # type: ignore[index]


Done = Callable[[str, StepDone], Awaitable[None]]


class Preparer:
    def __init__(self, metrics: Metrics, store: SqlStore, done: Done,
                 clock: Callable[[], float] = time.time) -> None:
        self.metrics = metrics
        self.store = store
        self.done = done
        self.clock = clock
        self.databases: dict[str, SiteDatabase] = {}
        self._jobs: dict[str, asyncio.Task[Any]] = {}
        self._steps: dict[str, int] = {}  # site -> index of the step its job runs
        self._blocked_since: dict[str, float | None] = {}  # a migration waiting on a lock

    # ---------------------------------------------------------------- set-up

    def configure(self, site: str, config: SiteConfig, config_dir: Path) -> None:
        """Read the site's dsn_file (SecretError when it cannot be read or parsed)."""
        db = config.database
        if db is None:
            self.databases.pop(site, None)
            return
        root = db.backup.dir if db.backup.dir.is_absolute() else config_dir / db.backup.dir
        self.databases[site] = SiteDatabase(db, load_servers(db, config_dir, site), root)
        # Read at scrape time, so the value climbs while the migration waits.
        self._blocked_since.setdefault(site, None)
        self.metrics.migration_blocked_seconds.labels(site).set_function(
            lambda: self._blocked_for(site))

    def _blocked_for(self, site: str) -> float:
        since = self._blocked_since.get(site)
        return 0.0 if since is None else max(0.0, self.clock() - since)

    async def clean_up(self, site: str, config: SiteConfig) -> list[str]:
        """What a crash may have left: temporary databases of a clone or restore, a
        migration container, half-written backups. Run at start, before any step."""
        dropped: list[str] = []
        deploy = deploy_settings(config.prepare)
        for color in ("blue", "green") if deploy is not None and deploy.image else ():
            container = config.colors[color].container
            if container is None:
                continue
            try:
                dropped += [f"{container}: {line}" for line in
                            await deploy_step.cleanup_deploy_leftovers(container)]
            except StepFailed as exc:
                self._record(site, "cleanup", str(exc))
        db = self.databases.get(site)
        if db is None:
            for name in dropped:
                self._record(site, "cleanup", f"cleaned up after an interruption: {name}")
            return dropped
        for color in ("blue", "green"):
            container = config.colors[color].container
            if container is not None and migrate_settings(config.prepare).container:
                with contextlib.suppress(Exception):
                    if await migrate_step.cleanup_container(container):
                        dropped.append(f"container {container}-wdmigrate, left by an "
                                       "interrupted migration")
        for color in ("blue", "green") if db.config.strategy == "separate" else ():
            try:
                dropped += await clone_step.cleanup_leftovers(
                    db.server(color), db.name(color), db.filestore(color))
                dropped += await backup_step.cleanup_restore_leftovers(
                    db.server(color), db.name(color))
            except Exception as exc:  # a server down at start: said, not fatal
                log.warning("cleanup_failed", site=site, color=color, error=str(exc))
                self._record(site, "cleanup", f"could not look for leftovers of {color}'s "
                             f"database on {db.server(color).label}: {exc}")
        if db.config.strategy == "shared":
            with contextlib.suppress(Exception):
                dropped += await backup_step.cleanup_restore_leftovers(
                    db.server("blue"), db.name("blue"))
        for color in ("blue", "green"):
            path = db.filestore(color)
            if path is not None:  # a restore's staging tree (a clone's is clone_step's)
                staging = fs_step.restore_temp_path(path)
                for leftover in (staging, fs_step.restore_temp_path(staging)):
                    if await asyncio.to_thread(_remove_tree, leftover):
                        dropped.append(f"half-unpacked filestore {leftover}")
        with contextlib.suppress(OSError):
            dropped += [f"half-written backup {p.name}"
                        for p in await asyncio.to_thread(backup_step.cleanup_partial,
                                                         self._root(site))]
        for name in dropped:
            self._record(site, "cleanup", f"cleaned up after an interruption: {name}")
        return dropped

    def _root(self, site: str) -> Path:
        return self.require(site).backup_root / site

    def require(self, site: str) -> SiteDatabase:
        db = self.databases.get(site)
        if db is None:
            raise NoDatabase(f"site {site!r} has no database: settings")
        return db

    # ---------------------------------------------------------------- steps

    def start(self, site: str, config: SiteConfig, rollout: Rollout, action: RunStep) -> None:
        """Run the step as a task; its end goes to `done` (also when it fails)."""
        self.cancel(site)
        self._steps[site] = action.index
        self._spawn(site, self._run(site, config, rollout, action))

    def cancel(self, site: str) -> None:
        job = self._jobs.pop(site, None)
        if job is not None and not job.done():
            job.cancel()

    def running(self, site: str) -> bool:
        job = self._jobs.get(site)
        return job is not None and not job.done()

    async def close(self) -> None:
        jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel()
        for job in jobs:
            with contextlib.suppress(BaseException):
                await job

    def _spawn(self, site: str, coro: Awaitable[Any]) -> None:
        if self.running(site):
            raise DatabaseBusy(f"a database job already runs for {site}")
        self._jobs[site] = asyncio.ensure_future(coro)

    async def _run(self, site: str, config: SiteConfig, rollout: Rollout,
                   action: RunStep) -> None:
        started = self.clock()
        outcome, detail, migrated = "failed", "", False
        code: int | None = None
        output: tuple[str, ...] = ()
        try:
            detail, migrated = await self._step(site, config, rollout, action.step)
            outcome = "passed"
        except StepFailed as exc:
            detail, code, output = str(exc), exc.exit_code, tuple(exc.output)
            migrated = bool(exc.data.get("migrated", action.step == "migrate"))
        except CommandError as exc:
            detail = str(exc)
        except asyncio.CancelledError:
            ended = self.clock()
            self.metrics.prepare_step_seconds.labels(site, action.step, "cancelled").observe(
                ended - started)
            self._blocked_since[site] = None
            raise
        except Exception as exc:  # a bug or an unexpected error: the step fails, loudly
            log.exception("prepare_step_error", site=site, step=action.step)
            detail = f"unexpected error: {type(exc).__name__}: {exc}"
            migrated = action.step == "migrate"
        ended = self.clock()
        self.metrics.prepare_step_seconds.labels(site, action.step, outcome).observe(
            ended - started)
        self._blocked_since[site] = None
        tail = output[-OUTPUT_LINES:]
        if outcome == "failed" and tail:
            detail = f"{detail} | last lines: " + " / ".join(line.strip() for line in tail[-3:])
        result = StepOutcome(action.step, outcome, detail, started, ended, code, tail)
        self._jobs.pop(site, None)
        await self.done(site, StepDone(action.index, result, migrated=migrated))

    async def _step(self, site: str, config: SiteConfig, rollout: Rollout,
                    step: str) -> tuple[str, bool]:
        """Run one step; (detail, migrated). StepFailed says why it did not pass."""
        cand = rollout.candidate
        progress = self._progress(site, step)
        if step == "deploy":  # the only step that needs no database settings
            return await self._deploy(site, config, rollout, progress), False
        db = self.require(site)
        if step == "gate":
            result = await gate_step.gate(db.server(cand), db.name(cand),
                                          version=rollout.version)
            crashpoints.hit("in_step:gate")
            if not result.ok:
                raise StepFailed("the database does not match the code: "
                                 + "; ".join(result.problems))
            return f"{db.name(cand)} matches: base {result.base_version}", False
        if step == "migrate":
            return await self._migrate(site, config, rollout, db, progress)
        if step == "backup":
            info = await self._backup(site, db, rollout.live, progress)
            return (f"{info.id}: {info.database}, {backup_step.size(info.bytes)}, verified "
                    f"({info.manifest.get('filestore_files', 0)} filestore files)"), False
        if step == "clone":
            live = rollout.live
            done = await clone_step.clone(
                db.server(live), db.name(live), db.server(cand), db.name(cand),
                src_filestore=db.filestore(live), dst_filestore=db.filestore(cand),
                progress=progress)
            files = (f", filestore {done.files} files"
                     f" ({'hard links' if done.linked else 'copied'})"
                     if db.filestore(cand) is not None else "")
            ended = (f", {done.terminated} session(s) of the old {db.name(cand)} ended"
                     if done.terminated else "")
            return (f"{db.name(live)} -> {db.name(cand)} by {done.method} ({done.why}) in "
                    f"{done.seconds:.1f}s{files}{ended}"), False
        raise StepFailed(f"step {step} is not known to this daemon")

    async def _deploy(self, site: str, config: SiteConfig, rollout: Rollout,
                      progress: Callable[[str], None]) -> str:
        settings = deploy_settings(config.prepare)
        assert settings is not None  # the machine runs deploy only when it is a step
        cand = rollout.candidate
        color = config.colors[cand]
        db = self.databases.get(site)
        variables = {"site": site, "color": cand, "version": rollout.version,
                     "database": db.name(cand) if db is not None else "", "url": color.url}
        argv = render_command(settings.command, variables) if settings.command else None
        if settings.image is not None:
            if not rollout.version and re.search(r"\{\{\s*version\s*\}\}", settings.image):
                raise StepFailed("deploy: the image needs {{ version }}, and the rollout has "
                                 "none: start it with --version (e.g. deploy SITE --to green "
                                 "--version 17.0)")
            image = render(settings.image, variables)
            assert color.container is not None  # the config requires it
            done = await deploy_step.deploy(color.container, image, url=color.url,
                                            timeout=settings.timeout, pull=settings.pull,
                                            command=argv, progress=progress)
            pulled = ", pulled" if done.pulled else ""
            return (f"{color.container} recreated from {image}{pulled}: {done.health} in "
                    f"{done.seconds:.1f}s")
        assert argv is not None
        done = await deploy_step.deploy_command(argv, url=color.url, timeout=settings.timeout,
                                                progress=progress)
        return f"{Path(argv[0]).name} ... exited 0, {done.health} in {done.seconds:.1f}s"

    async def _backup(self, site: str, db: SiteDatabase, color: str,
                      progress: Callable[[str], None],
                      backup_id: str | None = None) -> backup_step.BackupInfo:
        info = await backup_step.backup(
            db.server(color), db.name(color), db.filestore(color), self._root(site),
            site=site, color=color, keep=db.config.backup.keep, progress=progress,
            clock=self.clock, backup_id=backup_id)
        self.metrics.backup_last_success_timestamp_seconds.labels(site).set(self.clock())
        self.metrics.backup_bytes.labels(site).set(info.bytes)
        return info

    # ---------------------------------------------------------------- by hand

    def backup_now(self, site: str, color: str, actor: str) -> str:
        """Start a backup of `color`'s database; its id. DatabaseBusy while a job runs."""
        db = self.require(site)
        if self.running(site):
            raise DatabaseBusy(f"a database job already runs for {site}; try again when it "
                               "has ended (see the site's events)")
        backup_id = backup_step.new_id(self._root(site), color, self.clock())
        self._record(site, "backup_started", f"backup {backup_id} of {db.name(color)} "
                     f"({color}) started", actor)

        async def job() -> None:
            started = self.clock()
            try:
                info = await self._backup(site, db, color, self._progress(site, "backup"),
                                          backup_id)
            except (StepFailed, CommandError) as exc:
                self.metrics.prepare_step_seconds.labels(site, "backup", "failed").observe(
                    self.clock() - started)
                self._record(site, "backup_failed", f"backup {backup_id} failed: {exc}", actor)
            except Exception as exc:
                log.exception("backup_error", site=site)
                self._record(site, "backup_failed", f"backup {backup_id} failed: unexpected "
                             f"error {type(exc).__name__}: {exc}", actor)
            else:
                self.metrics.prepare_step_seconds.labels(site, "backup", "passed").observe(
                    self.clock() - started)
                took = self.clock() - started
                self._record(site, "backup_done", f"backup {info.id} of {info.database}: "
                             f"{backup_step.size(info.bytes)}, verified, in {took:.1f}s", actor)
            finally:
                self._jobs.pop(site, None)

        self._spawn(site, job())
        return backup_id

    def list_backups(self, site: str) -> list[backup_step.BackupInfo]:
        return backup_step.list_backups(self._root(site))

    def restore(self, site: str, backup_id: str, to: str, *, force: bool, actor: str) -> None:
        """Start restoring backup `backup_id` into `to`'s database and filestore."""
        db = self.require(site)
        info = backup_step.find_backup(self._root(site), backup_id)
        if info is None:
            raise UnknownBackup(backup_id)
        if self.running(site):
            raise DatabaseBusy(f"a database job already runs for {site}; try again when it "
                               "has ended (see the site's events)")
        name = db.name(to)
        self._record(site, "restore_started", f"restore of backup {backup_id} into {name} "
                     f"({to}) started" + (" (forced)" if force else ""), actor)

        async def job() -> None:
            started = self.clock()
            try:
                done = await backup_step.restore(
                    db.server(to), info, name, db.filestore(to),
                    progress=self._progress(site, "restore"), force=force)
            except (StepFailed, CommandError) as exc:
                self._record(site, "restore_failed", f"restore of {backup_id} into {name} "
                             f"failed, the database is as it was: {exc}", actor)
            except Exception as exc:
                log.exception("restore_error", site=site)
                self._record(site, "restore_failed", f"restore of {backup_id} into {name} "
                             f"failed: unexpected error {type(exc).__name__}: {exc}", actor)
            else:
                self._record(site, "restore_done", f"backup {backup_id} restored into {name} "
                             f"({to}), {done.files} filestore files, in "
                             f"{self.clock() - started:.1f}s", actor)
            finally:
                self._jobs.pop(site, None)

        self._spawn(site, job())

    async def _migrate(self, site: str, config: SiteConfig, rollout: Rollout,
                       db: SiteDatabase, progress: Callable[[str], None]) -> tuple[str, bool]:
        cand = rollout.candidate
        server, name = db.server(cand), db.name(cand)
        settings = migrate_settings(config.prepare)
        if db.config.strategy == "shared":
            checks = await gate_step.shared_checks(server, name)
            for warning in checks.warnings:
                progress(f"before migrate: {warning}")
            if checks.problems:
                raise StepFailed("the shared database is not ready for migrate: "
                                 + "; ".join(checks.problems), data={"migrated": False})
        if not await migrate_step.database_exists(server, name):
            raise StepFailed(f"database {name} does not exist on {server.label}: `odoo -d "
                             f"{name} -u` would create a new empty database and exit 0; check "
                             "database.names (or run clone first)", data={"migrated": False})
        variables = {"site": site, "color": cand, "version": rollout.version,
                     "database": name, "url": config.colors[cand].url}
        argv = render_command(settings.command, variables)
        plan = None
        if settings.container:
            container = config.colors[cand].container
            assert container is not None  # the config requires it
            plan = await migrate_step.ContainerPlan.load(container)

        def blocked(seconds: float, blockers: list[Any]) -> None:
            self._blocked_since[site] = self.clock() - seconds if blockers else None

        result = await migrate_step.migrate(
            server, name, argv, timeout=settings.timeout, lock_wait=db.config.lock_wait,
            progress=progress, on_blocked=blocked, container=plan)
        blocked_text = (f", waited {result.blocked_max:.1f}s on locks"
                        if result.blocked_max else "")
        return (f"{Path(argv[0]).name} ... exited 0 in {result.seconds:.1f}s, no ERROR or "
                f"CRITICAL line{blocked_text}", True)

    # ---------------------------------------------------------------- records

    def _progress(self, site: str, step: str) -> Callable[[str], None]:
        def line(text: str) -> None:
            self._record(site, "progress", f"{step}: {text}" if not text.startswith(step)
                         else text)
            crashpoints.hit(f"in_step:{step}")
        return line

    def _record(self, site: str, kind: str, message: str, actor: str = "daemon") -> None:
        log.info(kind, site=site, message=message)
        try:
            self.store.record(site, Event(kind, message, "", "", {}, actor=actor))
        except Exception:  # the store's trouble must not stop the step
            log.exception("record_failed", site=site, kind=kind)



def _remove_tree(path: Path) -> bool:
    if not path.exists():
        return False
    shutil.rmtree(path, ignore_errors=True)
    return True

