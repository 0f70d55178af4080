"""The `migrate` step on the lab's real PostgreSQL 15: small Python scripts stand in for `odoo
-u` (they connect with the PG* environment of `Server.env()` and log Odoo-format lines), a
second session of the test's own blocks them on a lock, and a busybox container stands in for
the candidate's (network none) for the one-off container."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_step_gate import make_odoo_db
from watchdog.lab.docker import IMAGE, client, docker_unavailable
from watchdog.lab.postgres import PostgresLab
from watchdog.steps.base import StepFailed
from watchdog.steps.locks import Blocker
from watchdog.steps.migrate import SUFFIX, ContainerPlan, cleanup_container, migrate, shown
from watchdog.steps.pg import Server

pytestmark = pytest.mark.lab

# What every script shares: Odoo's log format, in UTC, on stdout.
PRELUDE = """
import os, signal, sys, time
from datetime import datetime, timezone
DB, OUT = sys.argv[1], sys.argv[2]
def log(level, name, text):
    now = datetime.now(timezone.utc)
    print(f"{now:%Y-%m-%d %H:%M:%S},{now.microsecond // 1000:03d} {os.getpid()} {level} {DB} "
          f"{name}: {text}", flush=True)
def mark(name, text=""):
    with open(os.path.join(OUT, name), "w") as f:
        f.write(text)
log("INFO", "odoo", "Odoo version 17.0-20250421")
"""

SCRIPTS = {
    # a successful -u: waits its turn for res_partner's lock, as Odoo's DDL does
    "upgrade": """
import psycopg
with psycopg.connect(dbname=DB, application_name="odoo-upgrade") as conn:
    log("INFO", "odoo.modules.loading", "loading 3 modules...")
    conn.execute("SET lock_timeout = '15s'")
    mark("waiting", repr(time.time()))
    conn.execute("ALTER TABLE res_partner ADD COLUMN x_wd_upgraded integer")
    conn.execute("UPDATE ir_module_module SET latest_version = '17.0.1.4' WHERE name = 'base'")
log("INFO", "odoo.modules.loading", "Modules loaded.")
""",
    "critical": """
log("INFO", "odoo.modules.loading", "loading 3 modules...")
log("CRITICAL", "odoo.service.server", "Failed to initialize database `" + DB + "`.")
print("Traceback (most recent call last):")
print('  File "/usr/lib/python3/dist-packages/odoo/modules/registry.py", line 87, in new')
print("psycopg2.errors.UndefinedColumn: column res_partner.x_new does not exist")
sys.exit(255)
""",
    # Odoo only logs unknown module names (at WARNING: odoo/modules/loading.py
    # _check_module_names) and exits 0; coloured, as with a TTY (netsvc.ColoredFormatter)
    "unknown": """
now = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
print(f"{now},123 {os.getpid()} \\x1b[1;33m\\x1b[1;49mWARNING\\x1b[0m {DB} "
      "odoo.modules.loading: invalid module names, ignored: x ", flush=True)
for i in range(40):
    log("INFO", "odoo.modules.loading", f"module {i}: loading")
""",
    # a module whose code is not installable (odoo/modules/graph.py add_modules): WARNING
    "uninstallable": """
log("WARNING", "odoo.modules.graph", "module sale_custom: not installable, skipped")
log("INFO", "odoo.modules.loading", "modules loaded")
""",
    "sleep": """
mark("pid", str(os.getpid()))
time.sleep(60)
""",
    "term": """
def on_term(signum, frame):
    mark("sigterm")
    sys.exit(143)
signal.signal(signal.SIGTERM, on_term)
mark("started")
time.sleep(60)
""",
    "marker": """
mark("ran")
""",
}


def script(tmp_path: Path, name: str, db: str) -> list[str]:
    path = tmp_path / f"{name}.py"
    path.write_text(PRELUDE + SCRIPTS[name])
    return [sys.executable, str(path), db, str(tmp_path)]


@pytest.fixture
def odoo17(postgres: PostgresLab, pg_names: Callable[[str], str]) -> str:
    return make_odoo_db(postgres, pg_names("migrate"))


async def test_an_upgrade_that_exits_0_without_errors_passes(
        postgres: PostgresLab, pg_server: Server, odoo17: str, tmp_path: Path) -> None:
    result = await migrate(pg_server, odoo17, script(tmp_path, "upgrade", odoo17), timeout=30,
                           lock_wait=5, env=pg_server.env())
    assert result.exit_code == 0
    assert result.tail[-1].endswith("odoo.modules.loading: Modules loaded.")
    assert postgres.psql("SELECT latest_version FROM ir_module_module WHERE name = 'base'",
                         dbname=odoo17).strip() == "17.0.1.4"
    assert result.blocked_max < 1


async def test_the_command_in_events_has_odoo_passwords_masked(
        pg_server: Server, odoo17: str, tmp_path: Path) -> None:
    assert shown(["odoo", "-w", "pw1", "--db_password=pw2", "-d", "x"]) == [
        "odoo", "-w", "***", "--db_password=***", "-d", "x"]
    lines: list[str] = []
    await migrate(pg_server, odoo17, [*script(tmp_path, "marker", odoo17), "-w", "s3cret"],
                  timeout=30, lock_wait=5, env=pg_server.env(), progress=lines.append)
    assert lines and not any("s3cret" in line for line in lines), lines


async def test_a_missing_database_fails_before_the_command_runs(
        pg_server: Server, pg_names: Callable[[str], str], tmp_path: Path) -> None:
    missing = pg_names("typo")
    with pytest.raises(StepFailed) as failed:
        await migrate(pg_server, missing, script(tmp_path, "marker", missing), timeout=30,
                      lock_wait=5, env=pg_server.env())
    assert str(failed.value) == (
        f"database {missing} does not exist on {pg_server.label}: `odoo -d {missing} -u` "
        "would silently create a new empty database and exit 0; check database.names")
    assert not (tmp_path / "ran").exists()


async def test_exit_255_with_a_critical_line_fails_and_says_half_upgraded(
        pg_server: Server, odoo17: str, tmp_path: Path) -> None:
    with pytest.raises(StepFailed) as failed:
        await migrate(pg_server, odoo17, script(tmp_path, "critical", odoo17), timeout=30,
                      lock_wait=5, env=pg_server.env())
    assert failed.value.exit_code == 255
    message = str(failed.value)
    assert "exited 255" in message and "Failed to initialize database" in message
    assert "half-upgraded" in message and "restore the backup or clone it again" in message
    assert failed.value.output[-1].startswith("psycopg2.errors.UndefinedColumn")


async def test_an_error_line_with_exit_0_fails_even_outside_the_tail(
        pg_server: Server, odoo17: str, tmp_path: Path) -> None:
    with pytest.raises(StepFailed) as failed:
        await migrate(pg_server, odoo17, script(tmp_path, "unknown", odoo17), timeout=30,
                      lock_wait=5, env=pg_server.env())
    assert failed.value.exit_code == 0
    assert "invalid module names, ignored: x" in str(failed.value)
    assert "\x1b" not in str(failed.value)  # colours stripped
    assert not any("invalid module names" in line for line in failed.value.output)
    assert len(failed.value.output) == 20


async def test_a_module_not_installable_fails_though_odoo_exits_0(
        pg_server: Server, odoo17: str, tmp_path: Path) -> None:
    with pytest.raises(StepFailed) as failed:
        await migrate(pg_server, odoo17, script(tmp_path, "uninstallable", odoo17), timeout=30,
                      lock_wait=5, env=pg_server.env())
    assert failed.value.exit_code == 0
    assert "module sale_custom: not installable, skipped" in str(failed.value)


async def test_a_command_past_its_timeout_is_stopped_and_fails(
        pg_server: Server, odoo17: str, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(StepFailed) as failed:
        await migrate(pg_server, odoo17, script(tmp_path, "sleep", odoo17), timeout=1.5,
                      lock_wait=5, env=pg_server.env(), grace=2)
    assert time.monotonic() - started < 6
    assert failed.value.exit_code is None
    assert "did not end within 1.5 s" in str(failed.value)
    assert "half-upgraded" in str(failed.value)
    pid = int((tmp_path / "pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_cancelling_the_step_sends_sigterm_to_the_command(
        pg_server: Server, odoo17: str, tmp_path: Path) -> None:
    task = asyncio.create_task(migrate(pg_server, odoo17, script(tmp_path, "term", odoo17),
                                       timeout=60, lock_wait=5, env=pg_server.env(), grace=5))
    for _ in range(100):
        if (tmp_path / "started").exists():
            break
        await asyncio.sleep(0.1)
    assert (tmp_path / "started").exists()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (tmp_path / "sigterm").exists()


async def test_a_session_holding_a_lock_is_named_then_the_migration_completes(
        postgres: PostgresLab, pg_server: Server, odoo17: str, tmp_path: Path) -> None:
    blue = await pg_server.connect(odoo17, application_name="odoo-blue", autocommit=False)
    calls: list[tuple[float, float, list[Blocker]]] = []
    lines: list[str] = []
    first = asyncio.Event()

    def on_blocked(seconds: float, blockers: list[Blocker]) -> None:
        calls.append((time.time(), seconds, blockers))
        if seconds:
            first.set()

    try:
        await blue.execute("UPDATE res_partner SET name = name WHERE id = 1")
        blue_pid = blue.info.backend_pid
        task = asyncio.create_task(migrate(
            pg_server, odoo17, script(tmp_path, "upgrade", odoo17), timeout=60, lock_wait=1,
            env=pg_server.env(), progress=lines.append, on_blocked=on_blocked))
        await asyncio.wait_for(first.wait(), 15)
        waited_since = float((tmp_path / "waiting").read_text())
        at, seconds, blockers = calls[0]
        assert at - waited_since <= 1 + 1, at - waited_since
        assert seconds > 1
        assert [b.pid for b in blockers] == [blue_pid]
        b = blockers[0]
        assert b.application_name == "odoo-blue"
        assert b.state == "idle in transaction"
        assert b.query == "UPDATE res_partner SET name = name WHERE id = 1"
        assert b.client.startswith("127.0.0.1:") and b.xact_start is not None
        assert any(f"blocked by pid {blue_pid} (odoo-blue, 127.0.0.1:" in line
                   and "UPDATE res_partner" in line for line in lines), lines
        await asyncio.sleep(1.2)  # the same episode is not reported again
        assert len(calls) == 1
        assert not task.done()
        await blue.commit()  # the watcher never cancels anyone: the test lets go
        result = await asyncio.wait_for(task, 30)
    finally:
        await blue.rollback()
        await blue.close()
    assert result.exit_code == 0
    assert result.blocked_max > 1
    assert calls[-1][1:] == (0.0, [])
    assert len(calls) == 2
    assert postgres.psql("SELECT count(*) FROM information_schema.columns WHERE "
                         "column_name = 'x_wd_upgraded'", dbname=odoo17).strip() == "1"


# ---------------------------------------------------------------- in a one-off container

UNAVAILABLE = docker_unavailable()
needs_docker = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"docker: {UNAVAILABLE}")


@pytest.fixture
def docker_client() -> Iterator[Any]:
    cli = client()
    yield cli
    cli.close()


def _gone(cli: Any, name: str) -> bool:
    import docker.errors

    try:
        cli.containers.get(name)
    except docker.errors.NotFound:
        return True
    return False


def _remove(cli: Any, name: str) -> None:
    import docker.errors

    try:
        cli.containers.get(name).remove(force=True)
    except docker.errors.NotFound:
        pass


@pytest.fixture
def candidate(docker_client: Any, tmp_path: Path) -> Iterator[str]:
    """A busybox "candidate" (network none) with an env var and a bind mount of tmp_path."""
    name = f"wdtest-cand-{uuid.uuid4().hex[:8]}"
    data = tmp_path / "data"
    data.mkdir()
    docker_client.containers.run(
        IMAGE, ["sleep", "3600"], name=name, detach=True, network_mode="none",
        environment={"ODOO_MARK": "from-candidate"}, working_dir="/mnt/data",
        volumes={str(data): {"bind": "/mnt/data", "mode": "rw"}})
    try:
        yield name
    finally:
        _remove(docker_client, name + SUFFIX)
        _remove(docker_client, name)


LINE = "2026-12-02 19:40:00,123 1 {level} db odoo.modules.loading: {text}"


@needs_docker
async def test_a_container_migration_runs_with_the_candidates_env_and_mounts(
        docker_client: Any, candidate: str, pg_server: Server, odoo17: str,
        tmp_path: Path) -> None:
    # a leftover of a crash, under the migration container's name
    docker_client.containers.run(IMAGE, ["sleep", "3600"], name=candidate + SUFFIX,
                                 detach=True, network_mode="none")
    plan = await ContainerPlan.from_container(docker_client, candidate)
    assert plan.network_mode == "none" and plan.working_dir == "/mnt/data"
    assert [(m.type, m.target) for m in plan.mounts] == [("bind", "/mnt/data")]
    info = LINE.format(level="INFO", text="Modules loaded.")
    result = await migrate(
        pg_server, odoo17,
        ["sh", "-c", f'echo "$ODOO_MARK $EXTRA"; pwd; echo done > ran; echo "{info}"'],
        timeout=60, lock_wait=30, env={"EXTRA": "extra-var"}, container=plan, grace=1)
    assert result.exit_code == 0
    assert result.tail == ("from-candidate extra-var", "/mnt/data", info)
    assert (tmp_path / "data" / "ran").read_text() == "done\n"
    assert _gone(docker_client, candidate + SUFFIX)


@needs_docker
async def test_a_container_migration_exiting_255_fails_and_is_removed(
        docker_client: Any, candidate: str, pg_server: Server, odoo17: str) -> None:
    plan = await ContainerPlan.from_container(docker_client, candidate)
    critical = LINE.format(level="CRITICAL", text="Failed to initialize database `db`.")
    with pytest.raises(StepFailed) as failed:
        await migrate(pg_server, odoo17, ["sh", "-c", f"echo '{critical}'; exit 255"],
                      timeout=60, lock_wait=30, container=plan, grace=1)
    assert failed.value.exit_code == 255
    assert failed.value.output == (critical,)
    assert "half-upgraded" in str(failed.value)
    assert _gone(docker_client, candidate + SUFFIX)


@needs_docker
async def test_a_container_migration_past_its_timeout_is_stopped_and_removed(
        docker_client: Any, candidate: str, pg_server: Server, odoo17: str) -> None:
    plan = await ContainerPlan.from_container(docker_client, candidate)
    started = time.monotonic()
    with pytest.raises(StepFailed) as failed:
        await migrate(pg_server, odoo17, ["sh", "-c", "echo started; sleep 60"], timeout=2,
                      lock_wait=30, container=plan, grace=1)
    assert time.monotonic() - started < 15
    assert failed.value.exit_code is None and failed.value.output == ("started",)
    assert _gone(docker_client, candidate + SUFFIX)


@needs_docker
async def test_cleanup_container_removes_a_leftover(docker_client: Any, candidate: str) -> None:
    docker_client.containers.run(IMAGE, ["sleep", "3600"], name=candidate + SUFFIX,
                                 detach=True, network_mode="none")
    assert await cleanup_container(candidate, grace=1)
    assert _gone(docker_client, candidate + SUFFIX)
    assert not await cleanup_container(candidate, grace=1)
    assert not _gone(docker_client, candidate)  # the candidate itself is left alone


@needs_docker
async def test_cancelling_a_container_migration_stops_and_removes_it(
        docker_client: Any, candidate: str, pg_server: Server, odoo17: str,
        tmp_path: Path) -> None:
    plan = await ContainerPlan.from_container(docker_client, candidate)
    task = asyncio.create_task(migrate(
        pg_server, odoo17, ["sh", "-c", "touch started; sleep 60"], timeout=60, lock_wait=30,
        container=plan, grace=1))
    for _ in range(100):
        if (tmp_path / "data" / "started").exists():
            break
        await asyncio.sleep(0.1)
    assert (tmp_path / "data" / "started").exists()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Removed by the time the task ends; on a loaded machine dockerd has been seen to list it
    # for a moment longer (one fresh-clone CI run while four other test runs loaded the cores).
    for _ in range(50):
        if _gone(docker_client, candidate + SUFFIX):
            break
        await asyncio.sleep(0.2)
    assert _gone(docker_client, candidate + SUFFIX)
