"""The stand-in's PostgreSQL mode on the lab's real PostgreSQL 15: `initdb` makes an Odoo-shaped
database and filestore, `upgrade` behaves like `odoo -u ... --stop-after-init` (ODOO.md "Module
upgrades"), and the daemon's own `gate` and `migrate` judge what it leaves. The commands run as
subprocesses, as the daemon runs Odoo's."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from watchdog.lab.postgres import PostgresLab
from watchdog.lab.procs import free_port
from watchdog.steps.base import StepFailed
from watchdog.steps.command import has_error_line
from watchdog.steps.gate import gate
from watchdog.steps.migrate import database_exists, migrate
from watchdog.steps.pg import Server

pytestmark = pytest.mark.lab

STANDIN = [sys.executable, "-m", "watchdog.lab.standin"]


def db_args(postgres: PostgresLab) -> list[str]:
    return ["--db_host", "127.0.0.1", "--db_port", str(postgres.port), "-r", "postgres"]


def env() -> dict[str, str]:
    """Ours without PG* variables: the options alone say where the server is."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def run(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*STANDIN, *argv], capture_output=True, text=True, timeout=timeout,
                          env=env(), check=False)


def initdb(postgres: PostgresLab, name: str, *extra: str, version: str = "16.0") -> str:
    done = run("initdb", *db_args(postgres), "-d", name, "--version", version,
               "--partners", "20", *extra)
    assert done.returncode == 0, done.stderr
    return name


def upgrade(postgres: PostgresLab, name: str, *extra: str, version: str = "16.0",
            modules: str = "all") -> subprocess.CompletedProcess[str]:
    return run("upgrade", "-d", name, "-u", modules, "--stop-after-init", "--version", version,
               *db_args(postgres), *extra)


def query(postgres: PostgresLab, name: str, text: str) -> str:
    return postgres.psql(text, dbname=name).strip()


def one(postgres: PostgresLab, name: str, text: str, *params: object) -> object:
    """The first column of the first row (None without rows), through psycopg."""
    with psycopg.connect(postgres.dsn(name), autocommit=True) as conn:
        row = conn.execute(text, params).fetchone()
    return row[0] if row else None


def modules(postgres: PostgresLab, name: str) -> dict[str, tuple[str, str]]:
    rows = query(postgres, name, "SELECT name, state, coalesce(latest_version, '') "
                 "FROM ir_module_module ORDER BY id")
    return {n: (s, v) for n, s, v in (row.split("|") for row in rows.splitlines())}


def column_exists(postgres: PostgresLab, name: str, column: str) -> bool:
    return one(postgres, name, "SELECT count(*) FROM information_schema.columns WHERE "
               "table_name = 'res_partner' AND column_name = %s", column) == 1


def wait_for(check: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_initdb_makes_odoo_tables_partners_and_a_content_addressed_filestore(
        postgres: PostgresLab, pg_names: Callable[[str], str], tmp_path: Path) -> None:
    name = pg_names("initdb")
    filestore = tmp_path / "filestore" / name
    done = run("initdb", *db_args(postgres), "-d", name, "--version", "16.0",
               "--partners", "500", "--filestore", str(filestore), "--attachments", "7")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1 and "503 partners" in done.stdout
    assert "postgres" not in done.stdout  # no conninfo printed
    tables = query(postgres, name, "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM "
                   "pg_tables WHERE schemaname = 'public'")
    assert tables == ("ir_attachment,ir_config_parameter,ir_cron,ir_module_module,res_partner,"
                      "res_users")
    assert query(postgres, name, "SELECT count(*) FROM res_partner") == "503"
    assert query(postgres, name, "SELECT count(*) FROM pg_indexes WHERE tablename = "
                 "'res_partner' AND indexdef LIKE '%(name)%'") == "1"
    assert modules(postgres, name) == {
        "base": ("installed", "16.0.1.2"), "web": ("installed", "16.0.1.0"),
        "mail": ("installed", "16.0.1.9"), "contacts": ("installed", "16.0.1.0"),
        "sale": ("uninstalled", "")}
    params = dict(row.split("|", 1) for row in query(
        postgres, name, "SELECT key, value FROM ir_config_parameter").splitlines())
    assert set(params) == {"database.secret", "database.uuid", "database.create_date",
                           "web.base.url"}
    assert len(params["database.uuid"]) == 36 and params["database.secret"]
    assert query(postgres, name, "SELECT password LIKE '$pbkdf2-sha512$%' FROM res_users "
                 "WHERE login = 'admin'") == "t"
    assert int(query(postgres, name, "SELECT count(*) FROM ir_cron")) >= 1
    rows = query(postgres, name, "SELECT store_fname, checksum, file_size FROM ir_attachment")
    assert len(rows.splitlines()) == 7
    for row in rows.splitlines():
        fname, checksum, size = row.split("|")
        data = (filestore / fname).read_bytes()
        assert hashlib.sha1(data).hexdigest() == checksum  # noqa: S324
        assert fname == f"{checksum[:2]}/{checksum}" and len(data) == int(size)
    assert len(list(filestore.glob("*/*"))) == 7
    # an existing database is refused, unless --force
    again = run("initdb", *db_args(postgres), "-d", name, "--version", "16.0")
    assert again.returncode == 1 and "already exists" in again.stderr
    forced = run("initdb", *db_args(postgres), "-d", name, "--version", "17.0",
                 "--partners", "0", "--force")
    assert forced.returncode == 0, forced.stderr
    assert query(postgres, name, "SELECT count(*) FROM res_partner") == "3"


def test_initdb_honours_the_libpq_environment(
        postgres: PostgresLab, pg_names: Callable[[str], str]) -> None:
    name = pg_names("pgenv")
    done = subprocess.run([*STANDIN, "initdb", "-d", name, "--version", "17.0"],
                          capture_output=True, text=True, timeout=30, check=False,
                          env={**env(), "PGHOST": "127.0.0.1", "PGPORT": str(postgres.port),
                               "PGUSER": "postgres"})
    assert done.returncode == 0, done.stderr
    assert query(postgres, name, "SELECT count(*) FROM res_partner") == "103"


async def test_a_same_series_upgrade_bumps_the_modules_and_the_gate_passes(
        postgres: PostgresLab, pg_server: Server, pg_names: Callable[[str], str]) -> None:
    name = initdb(postgres, pg_names("minor"))
    assert not column_exists(postgres, name, "x_standin_16_0")
    done = upgrade(postgres, name, version="16.0-20250909")
    assert done.returncode == 0, done.stdout + done.stderr
    assert has_error_line(done.stdout.splitlines()) is None
    lines = done.stdout.splitlines()
    assert lines[-3].split(None, 5)[3:5] == ["INFO", name]
    assert lines[-3].endswith("odoo.modules.loading: Modules loaded. ")
    assert modules(postgres, name) == {
        "base": ("installed", "16.0.1.3"), "web": ("installed", "16.0.1.0"),
        "mail": ("installed", "16.0.1.10"), "contacts": ("installed", "16.0.1.0"),
        "sale": ("uninstalled", "")}
    assert column_exists(postgres, name, "x_standin_16_0")
    result = await gate(pg_server, name, version="16.0")
    assert result.ok, result.problems
    assert result.base_version == "16.0.1.3"


async def test_upgrading_one_module_upgrades_its_dependents_only(
        postgres: PostgresLab, pg_names: Callable[[str], str]) -> None:
    name = initdb(postgres, pg_names("one"))
    done = upgrade(postgres, name, modules="mail")
    assert done.returncode == 0, done.stdout
    found = modules(postgres, name)
    assert found["base"] == ("installed", "16.0.1.2")  # not upgraded
    assert found["mail"] == ("installed", "16.0.1.10")
    assert "Module contacts upgraded" in done.stdout
    assert not column_exists(postgres, name, "x_standin_16_0")  # base's ALTER did not run


async def test_16_to_17_without_major_exits_0_and_the_gate_refuses(
        postgres: PostgresLab, pg_server: Server, pg_names: Callable[[str], str]) -> None:
    name = initdb(postgres, pg_names("major"))
    done = upgrade(postgres, name, version="17.0")
    assert done.returncode == 0, done.stdout
    warning = [line for line in done.stdout.splitlines() if " WARNING " in line]
    assert len(warning) == 1 and "does not migrate a database across versions" in warning[0]
    assert has_error_line(done.stdout.splitlines()) is None
    assert modules(postgres, name)["base"] == ("installed", "16.0.1.2")
    result = await gate(pg_server, name, version="17.0")
    assert not result.ok
    assert result.problems == (
        "base is still on 16.0 (latest_version 16.0.1.2): `-u` is not a major-version "
        "upgrade; migrate the database with Odoo's upgrade service or OpenUpgrade first",)


async def test_16_to_17_with_major_bumps_across_and_the_gate_passes(
        postgres: PostgresLab, pg_server: Server, pg_names: Callable[[str], str]) -> None:
    name = initdb(postgres, pg_names("major"))
    done = upgrade(postgres, name, "--major", version="17.0")
    assert done.returncode == 0, done.stdout
    assert modules(postgres, name)["base"] == ("installed", "17.0.1.3")
    assert column_exists(postgres, name, "x_standin_17_0")
    result = await gate(pg_server, name, version="17.0")
    assert result.ok, result.problems


async def test_fault_fail_exits_255_with_a_critical_traceback_and_half_upgrades(
        postgres: PostgresLab, pg_server: Server, pg_names: Callable[[str], str]) -> None:
    name = initdb(postgres, pg_names("fail"))
    done = upgrade(postgres, name, "--fault", "fail")
    assert done.returncode == 255
    lines = done.stdout.splitlines()
    critical = has_error_line(lines)
    assert critical is not None
    assert critical.split(None, 5)[3:] == [
        "CRITICAL", name, f"odoo.service.server: Failed to initialize database `{name}`. "]
    after = lines[lines.index(critical) + 1:]
    assert after[0] == "Traceback (most recent call last):"
    assert ('psycopg.errors.UndefinedColumn: column "x_standin_missing_field" does not exist'
            in after)
    found = modules(postgres, name)
    assert found["base"] == ("installed", "16.0.1.3")  # committed before the failure
    assert {found[m][0] for m in ("web", "mail", "contacts")} == {"to upgrade"}
    result = await gate(pg_server, name, version="16.0")
    assert not result.ok
    assert result.problems[0].startswith("modules left 'to upgrade': contacts, mail, web ")


async def test_a_missing_database_is_created_with_base_and_exits_0(
        postgres: PostgresLab, pg_server: Server, pg_names: Callable[[str], str]) -> None:
    name = pg_names("typo")
    assert await database_exists(pg_server, name) is False
    done = upgrade(postgres, name, version="17.0")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"INFO {name} odoo.modules.loading: init db" in done.stdout
    assert await database_exists(pg_server, name) is True
    assert modules(postgres, name) == {
        "base": ("installed", "17.0.1.3"), "web": ("uninstalled", ""),
        "mail": ("uninstalled", ""), "contacts": ("uninstalled", ""),
        "sale": ("uninstalled", "")}
    # the trap: the empty new database even passes the gate; only the check before the
    # command (require_database) tells it from the real one
    assert (await gate(pg_server, name, version="17.0")).ok


async def test_unknown_module_names_are_logged_at_warning_and_exit_0(
        postgres: PostgresLab, pg_server: Server, pg_names: Callable[[str], str]) -> None:
    """Odoo's _check_module_names (odoo/modules/loading.py, 16-18) logs `_logger.warning(
    'invalid module names, ignored: %s', ...)`: a WARNING, not an ERROR, with exit 0; migrate
    fails on that warning too (a misspelt `-u` module upgraded nothing)."""
    name = initdb(postgres, pg_names("unknown"))
    command = [*STANDIN, "upgrade", "-d", name, "-u", "nosuch", "--stop-after-init",
               "--version", "16.0", *db_args(postgres)]
    with pytest.raises(StepFailed) as failed:
        await migrate(pg_server, name, command, timeout=30, lock_wait=5, env=env())
    assert "exited 0 but logged a failure" in str(failed.value)
    assert "invalid module names, ignored: nosuch" in str(failed.value)
    done = upgrade(postgres, name, modules="nosuch,web")
    assert done.returncode == 0
    line = next(line for line in done.stdout.splitlines() if "invalid module" in line)
    assert line.split(None, 5)[3:] == [
        "WARNING", name, "odoo.modules.loading: invalid module names, ignored: nosuch "]
    assert has_error_line(done.stdout.splitlines()) is None
    assert modules(postgres, name)["web"] == ("installed", "16.0.1.0")
    assert modules(postgres, name)["base"] == ("installed", "16.0.1.2")


def _blocked(postgres: PostgresLab, name: str, pid: int) -> bool:
    return one(postgres, "postgres", "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
               "AND application_name = %s AND wait_event_type = 'Lock' "
               "AND query LIKE 'ALTER TABLE%%'", name, f"odoo-{pid}") == 1


def test_a_lock_held_on_res_partner_blocks_the_upgrade_until_released(
        postgres: PostgresLab, pg_names: Callable[[str], str]) -> None:
    name = initdb(postgres, pg_names("lock"))
    blue = psycopg.connect(postgres.dsn(name), application_name="odoo-blue")
    try:
        blue.execute("LOCK TABLE res_partner IN ACCESS SHARE MODE")
        proc = subprocess.Popen([*STANDIN, "upgrade", "-d", name, "-u", "all",
                                 "--stop-after-init", "--version", "16.0", "--fault", "lock",
                                 *db_args(postgres)], stdout=subprocess.PIPE, text=True,
                                env=env())
        try:
            assert wait_for(lambda: _blocked(postgres, name, proc.pid))
            time.sleep(0.5)
            assert proc.poll() is None
            assert modules(postgres, name)["base"] == ("to upgrade", "16.0.1.2")
            blue.rollback()
            out, _ = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        blue.close()
    assert proc.returncode == 0, out
    assert modules(postgres, name)["base"] == ("installed", "16.0.1.3")


def test_a_lock_held_past_lock_timeout_fails_the_upgrade_with_255(
        postgres: PostgresLab, pg_names: Callable[[str], str]) -> None:
    name = initdb(postgres, pg_names("locktimeout"))
    with psycopg.connect(postgres.dsn(name)) as blue:
        blue.execute("LOCK TABLE res_partner IN ACCESS SHARE MODE")
        started = time.monotonic()
        done = upgrade(postgres, name, "--lock-timeout", "1")
        assert 1 <= time.monotonic() - started < 8
    assert done.returncode == 255
    assert "psycopg.errors.LockNotAvailable: canceling statement due to lock timeout" \
        in done.stdout
    assert modules(postgres, name)["base"] == ("to upgrade", "16.0.1.2")  # rolled back


def test_sigterm_mid_upgrade_rolls_back_the_module_and_exits_promptly(
        postgres: PostgresLab, pg_names: Callable[[str], str], tmp_path: Path) -> None:
    name = initdb(postgres, pg_names("term"))
    log = tmp_path / "odoo.log"
    proc = subprocess.Popen([*STANDIN, "upgrade", "-d", name, "-u", "all", "--stop-after-init",
                             "--version", "16.0", "--fault", "slow", "--slow-seconds", "30",
                             "--logfile", str(log), *db_args(postgres)], env=env())
    try:
        assert wait_for(lambda: log.exists() and "module base: creating" in log.read_text())
        time.sleep(0.3)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=5)
        assert time.monotonic() - started < 3
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 143
    assert "odoo.service.server: Initiating shutdown" in log.read_text()
    assert modules(postgres, name)["base"] == ("to upgrade", "16.0.1.2")
    assert not column_exists(postgres, name, "x_standin_16_0")  # the ALTER was rolled back
    assert one(postgres, "postgres", "SELECT count(*) FROM pg_stat_activity WHERE "
               "application_name = %s", f"odoo-{proc.pid}") == 0


def test_the_http_standin_holds_an_idle_connection_with_db_dsn(
        postgres: PostgresLab, pg_names: Callable[[str], str], tmp_path: Path) -> None:
    name = initdb(postgres, pg_names("pool"))
    proc = subprocess.Popen([*STANDIN, "--port", str(free_port()), "--db", name, "--db-dsn",
                             f"host=127.0.0.1 port={postgres.port} user=postgres dbname={name}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env())
    try:
        assert wait_for(lambda: one(
            postgres, "postgres", "SELECT state FROM pg_stat_activity WHERE datname = %s AND "
            "application_name = %s", name, f"odoo-{proc.pid}") == "idle")
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    assert wait_for(lambda: one(postgres, "postgres", "SELECT count(*) FROM pg_stat_activity "
                                "WHERE datname = %s", name) == 0, timeout=5)
