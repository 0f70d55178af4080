"""The `migrate` step: Odoo's module upgrade on the candidate's database (DESIGN.md §12).

Odoo's exit code alone does not say an upgrade worked (ODOO.md "Module upgrades"): `odoo -d
typo -u all` creates a new empty database and exits 0; missing module code is only logged at
ERROR ("Some modules are not loaded"), and unknown module names only at WARNING (`_logger.
warning('invalid module names, ignored: %s')` in odoo/modules/loading.py, 16 to 18), both with
exit 0. So the database must exist before the command runs, and every line of the output (not
only its tail) is scanned for an ERROR or CRITICAL record and for that warning.
A failed upgrade leaves a half-upgraded database (modules are committed one by one): the step
never retries on it, and its message says to restore the backup or clone again.

While the command runs, `locks.LockWatcher` reports sessions that block it. The command runs
as an argv (`command.run`), or with `container=` in a one-off container made from the
candidate's (image, env, mounts, network, user, working dir) through the docker SDK.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from watchdog.steps import command as commands
from watchdog.steps.base import Progress, StepFailed, quiet
from watchdog.steps.locks import Blocker, LockWatcher
from watchdog.steps.pg import Server

SUFFIX = "-wdmigrate"  # the one-off container's name: <candidate container><SUFFIX>
HALF_UPGRADED = ("The database is now half-upgraded (Odoo commits modules one by one): never "
                 "retry the upgrade on it; restore the backup or clone it again, then fix the "
                 "cause before the next rollout.")


@dataclass(frozen=True)
class MigrateResult:
    exit_code: int
    tail: tuple[str, ...]  # the last lines of the output
    seconds: float
    blocked_max: float  # the longest lock wait a session of the database had, in seconds


async def database_exists(server: Server, database: str) -> bool:
    """Whether `database` is in the server's pg_database (StepFailed: the server is
    unreachable)."""
    try:
        conn = await server.connect("postgres", application_name="odoo-watchdog-migrate")
    except psycopg.Error as exc:
        raise StepFailed(f"cannot reach PostgreSQL on {server.label} to check that database "
                         f"{database} exists: {_first_line(exc)}; check database.dsn_file "
                         "and that the server is up") from None
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            return await cur.fetchone() is not None
    finally:
        await conn.close()


async def require_database(server: Server, database: str) -> None:
    """StepFailed unless `database` exists: `odoo -d` of a missing one creates it."""
    if not await database_exists(server, database):
        raise StepFailed(f"database {database} does not exist on {server.label}: `odoo -d "
                         f"{database} -u` would silently create a new empty database and exit "
                         "0; check database.names")


# Records below ERROR that still mean the upgrade did not do what was asked.
SILENT_FAILURES = ("invalid module names, ignored:", ": not installable, skipped")


class _Scan:
    """Sees every output line; keeps the first Odoo ERROR/CRITICAL record, or a warning of
    SILENT_FAILURES."""

    def __init__(self) -> None:
        self.error: str | None = None

    def line(self, text: str) -> None:
        if self.error is None:
            self.error = commands.has_error_line([text])
        if self.error is None and any(marker in text for marker in SILENT_FAILURES):
            self.error = commands.strip_colours(text)


async def migrate(server: Server, database: str, command: Sequence[str], *, timeout: float,
                  lock_wait: float, progress: Progress = quiet,
                  on_blocked: Callable[[float, list[Blocker]], None] | None = None,
                  env: Mapping[str, str] | None = None,
                  container: ContainerPlan | None = None, grace: float = 10.0,
                  lock_interval: float = 0.5) -> MigrateResult:
    """Run the upgrade `command` on `database`; StepFailed on a missing database, an exit
    other than 0, an ERROR/CRITICAL line, or `timeout` (the command is stopped: SIGTERM, then
    SIGKILL after `grace`). Cancelling the task stops the command the same way.

    `env`: the command's environment (None: ours); with `container`, entries added to (or
    replacing) the candidate container's environment."""
    if not command:
        raise StepFailed("migrate: the command is empty; set prepare's migrate: {command: [...]}")
    await require_database(server, database)
    scan = _Scan()
    watcher = LockWatcher(server, database, lock_wait=lock_wait, on_blocked=on_blocked,
                          progress=progress, interval=lock_interval)
    watch = asyncio.create_task(watcher.run())
    where = f"in container {container.migration_name}" if container else "as a command"
    progress(f"migrate: running {' '.join(shown(command))[:200]} {where} on {database}")
    started = time.monotonic()
    try:
        if container is None:
            try:
                done = await commands.run(command, timeout=timeout, env=env, on_line=scan.line,
                                          grace=grace)
            except commands.CommandError as exc:
                raise StepFailed(f"migrate: {exc}; the database was not touched") from None
            code, tail = done.exit_code, done.tail
        else:
            code, tail = await run_container(container, command, timeout=timeout, env=env,
                                             on_line=scan.line, grace=grace)
    finally:
        watch.cancel()
        await asyncio.wait([watch])
        watcher.finish()
    seconds = time.monotonic() - started
    data = {"seconds": round(seconds, 3), "blocked_max": round(watcher.blocked_max, 3),
            "error_line": scan.error}
    if code is None:
        blocked = ""
        if watcher.blocked_max > lock_wait:
            blocked = f" It waited up to {watcher.blocked_max:.0f} s on locks of other sessions."
        raise StepFailed(f"migrate on {database} did not end within {timeout:g} s and was "
                         f"stopped.{blocked} {HALF_UPGRADED}", exit_code=None, output=tail,
                         data=data)
    if code != 0:
        found = f" ({scan.error})" if scan.error else ""
        raise StepFailed(f"migrate on {database} exited {code}{found}. {HALF_UPGRADED}",
                         exit_code=code, output=tail, data=data)
    if scan.error is not None:
        raise StepFailed(f"migrate on {database} exited 0 but logged a failure: {scan.error} "
                         f"(Odoo only logs missing module code, at ERROR, and unknown module "
                         f"names, at WARNING, and exits 0). "
                         f"{HALF_UPGRADED}", exit_code=code, output=tail, data=data)
    return MigrateResult(code, tail, seconds, watcher.blocked_max)


_SECRET_FLAGS = ("-w", "--db_password", "--password")


def shown(command: Sequence[str]) -> list[str]:
    """The command as events may show it: Odoo's password options masked."""
    out: list[str] = []
    for arg in command:
        if out and out[-1] in _SECRET_FLAGS:
            out.append("***")
        elif arg.startswith(tuple(f + "=" for f in _SECRET_FLAGS)):
            out.append(arg.split("=", 1)[0] + "=***")
        else:
            out.append(arg)
    return out


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# ---------------------------------------------------------------- the one-off container


@dataclass(frozen=True)
class MountSpec:
    type: str  # bind | volume | tmpfs
    source: str  # host path, volume name, "" for tmpfs
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class ContainerPlan:
    """What the migration container takes from the candidate's container.

    The image is the candidate's image id (exactly what it runs, whatever its tag points to
    now); its entrypoint is kept (the official image's passes `odoo ...` through and appends
    the database options), and the step's command becomes the container's command."""

    name: str  # the candidate container's
    image: str
    environment: tuple[str, ...] = ()  # KEY=value
    mounts: tuple[MountSpec, ...] = ()
    network_mode: str = "none"
    user: str = ""
    working_dir: str = ""
    extra_hosts: tuple[str, ...] = ()
    base_url: str | None = None  # the dockerd; None: docker.from_env()

    @property
    def migration_name(self) -> str:
        return self.name + SUFFIX

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], *, base_url: str | None = None) -> ContainerPlan:
        """From `docker inspect` of the candidate container."""
        config = attrs.get("Config") or {}
        host = attrs.get("HostConfig") or {}
        mounts = []
        for m in attrs.get("Mounts") or ():
            kind = m.get("Type", "")
            if kind not in ("bind", "volume", "tmpfs"):
                continue
            source = m.get("Name", "") if kind == "volume" else m.get("Source", "")
            mounts.append(MountSpec(kind, "" if kind == "tmpfs" else source,
                                    m.get("Destination", ""), not m.get("RW", True)))
        return cls(
            name=str(attrs.get("Name", "")).lstrip("/"),
            image=str(attrs.get("Image") or config.get("Image", "")),
            environment=tuple(config.get("Env") or ()),
            mounts=tuple(mounts),
            network_mode=str(host.get("NetworkMode") or "default"),
            user=str(config.get("User") or ""),
            working_dir=str(config.get("WorkingDir") or ""),
            extra_hosts=tuple(host.get("ExtraHosts") or ()),
            base_url=base_url)

    @classmethod
    async def load(cls, name: str, *, base_url: str | None = None) -> ContainerPlan:
        """`from_container` with a client of its own (`base_url`, else docker.from_env())."""
        client = await asyncio.to_thread(_client, base_url)
        try:
            return await cls.from_container(client, name)
        finally:
            client.close()

    @classmethod
    async def from_container(cls, client: Any, name: str) -> ContainerPlan:
        """Reads the candidate container `name` through the docker SDK `client`."""
        import docker.errors

        try:
            box = await asyncio.to_thread(client.containers.get, name)
        except docker.errors.NotFound:
            raise StepFailed(f"migrate: container {name} does not exist; deploy the "
                             "candidate first (prepare: deploy before migrate)") from None
        except docker.errors.DockerException as exc:
            raise StepFailed(f"migrate: cannot inspect container {name}: "
                             f"{_first_line(exc)}; is dockerd up?") from None
        base_url = getattr(getattr(client, "api", None), "base_url", None)
        return cls.from_attrs(box.attrs, base_url=base_url)


def _client(base_url: str | None) -> Any:
    import docker
    import docker.errors

    try:
        if base_url and not base_url.startswith("http+docker://"):
            return docker.DockerClient(base_url=base_url, version="auto")
        return docker.from_env(version="auto")
    except docker.errors.DockerException as exc:
        raise StepFailed(f"migrate: no dockerd answers ({_first_line(exc)}); start docker or "
                         "run the migration as a command") from None


def _merge_env(base: Sequence[str], extra: Mapping[str, str] | None) -> list[str]:
    env = dict(item.partition("=")[::2] for item in base)
    env.update(extra or {})
    return [f"{k}={v}" for k, v in env.items()]


def _remove(client: Any, name: str, grace: float) -> bool:
    """Stop (SIGTERM, then SIGKILL after `grace`) and remove container `name` if it exists."""
    import docker.errors

    try:
        box = client.containers.get(name)
    except docker.errors.NotFound:
        return False
    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
        box.stop(timeout=max(1, round(grace)))
    with contextlib.suppress(docker.errors.NotFound):
        box.remove(force=True)
    return True


async def cleanup_container(name: str, *, base_url: str | None = None,
                            grace: float = 10.0) -> bool:
    """Remove the migration container of candidate `name` (`<name>-wdmigrate`) a crash left;
    True when there was one."""
    client = await asyncio.to_thread(_client, base_url)
    try:
        return await asyncio.to_thread(_remove, client, name + SUFFIX, grace)
    finally:
        client.close()


def _start(client: Any, plan: ContainerPlan, command: Sequence[str],
           env: Mapping[str, str] | None) -> Any:
    import docker.types

    mounts = [docker.types.Mount(m.target, m.source or None, type=m.type, read_only=m.read_only)
              for m in plan.mounts]
    box = client.containers.create(
        plan.image, command=list(command), name=plan.migration_name, detach=True,
        environment=_merge_env(plan.environment, env), mounts=mounts,
        network_mode=plan.network_mode, user=plan.user or None,
        working_dir=plan.working_dir or None, extra_hosts=list(plan.extra_hosts) or None,
        labels={"odoo-watchdog.step": "migrate", "odoo-watchdog.candidate": plan.name})
    box.start()
    return box


def _lines(chunks: Iterator[bytes]) -> Iterator[str]:
    buf = b""
    for chunk in chunks:
        buf += chunk
        while b"\n" in buf:
            raw, buf = buf.split(b"\n", 1)
            yield raw.decode("utf-8", "replace").rstrip("\r")
        if len(buf) > 64 * 1024:  # a line without end: keep its start
            yield buf[:64 * 1024].decode("utf-8", "replace")
            buf = b""
    if buf:
        yield buf.decode("utf-8", "replace").rstrip("\r")


def _follow(box: Any, on_line: Callable[[str], None]) -> None:
    """The container's stdout and stderr, line by line, until it ends (in a thread)."""
    for line in _lines(box.logs(stream=True, follow=True, stdout=True, stderr=True)):
        on_line(line)


async def run_container(plan: ContainerPlan, command: Sequence[str], *, timeout: float,
                        env: Mapping[str, str] | None = None,
                        on_line: Callable[[str], None] | None = None,
                        grace: float = 10.0) -> tuple[int | None, tuple[str, ...]]:
    """Run `command` in `<plan.name>-wdmigrate`: (exit code or None after `timeout`, tail).

    A leftover container of that name is removed first; the container is always removed at
    the end; on timeout or cancellation it is stopped (SIGTERM, SIGKILL after `grace`)."""
    import docker.errors

    tail: deque[str] = deque(maxlen=commands.TAIL)

    def line(text: str) -> None:  # called from the log thread
        tail.append(text)
        if on_line is not None:
            on_line(text)

    client = await asyncio.to_thread(_client, plan.base_url)
    try:
        await asyncio.to_thread(_remove, client, plan.migration_name, grace)
        try:
            # Shielded: a cancellation while dockerd starts it (the command may already run)
            # waits for the start to end, so the finally below finds the container to remove.
            starting = asyncio.ensure_future(asyncio.to_thread(_start, client, plan, command,
                                                               env))
            try:
                box = await asyncio.shield(starting)
            except asyncio.CancelledError:
                await asyncio.wait([starting])
                raise
            except docker.errors.DockerException as exc:
                raise StepFailed(f"migrate: cannot start container {plan.migration_name} "
                                 f"from {plan.image}: {_first_line(exc)}; the database was "
                                 "not touched") from None
            follow = asyncio.ensure_future(asyncio.to_thread(_follow, box, line))
            try:
                await asyncio.wait_for(asyncio.shield(follow), timeout)
            except TimeoutError:
                await asyncio.to_thread(_remove, client, plan.migration_name, grace)
                await asyncio.wait([follow], timeout=5)
                return None, tuple(tail)
            status = await asyncio.to_thread(box.wait)
            return int(status.get("StatusCode", -1)), tuple(tail)
        finally:  # also on cancellation: stop it, then remove it
            await asyncio.shield(asyncio.to_thread(_remove, client, plan.migration_name, grace))
    finally:
        client.close()
