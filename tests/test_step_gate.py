"""The `gate` step and the shared database's checks on the lab's real PostgreSQL 15, in
Odoo-like databases made by `make_odoo_db` (the tables and columns these checks read)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import psycopg
import pytest

from watchdog.lab.postgres import PostgresLab
from watchdog.steps.base import StepFailed
from watchdog.steps.gate import gate, run_gate, series_of, shared_checks
from watchdog.steps.pg import Server

pytestmark = pytest.mark.lab

CRONS = ("Mail: Email Queue Manager", "Base: Auto-vacuum internal data", "Calendar: Reminders")

SCHEMA = """
CREATE TABLE res_partner (id serial PRIMARY KEY, name varchar NOT NULL);
INSERT INTO res_partner (name) VALUES ('My Company'), ('Administrator');
CREATE TABLE ir_module_module (id serial PRIMARY KEY, name varchar UNIQUE NOT NULL,
                               state varchar NOT NULL, latest_version varchar);
CREATE TABLE ir_config_parameter (id serial PRIMARY KEY, key varchar UNIQUE NOT NULL,
                                  value text NOT NULL);
CREATE TABLE ir_cron (id serial PRIMARY KEY, cron_name varchar, active boolean);
"""


def make_odoo_db(postgres: PostgresLab, name: str, *, series: str = "17.0",
                 params: dict[str, str] | None = None) -> str:
    """A database with the Odoo tables the steps read: res_partner, ir_module_module (base,
    web, mail installed at `<series>.1.x`), ir_config_parameter, ir_cron."""
    postgres.psql(f'CREATE DATABASE "{name}"')
    values = ", ".join(f"('{m}', 'installed', '{series}.1.{i}')"
                       for i, m in enumerate(("base", "web", "mail"), start=3))
    settings = {"database.uuid": "6d1c0f0e-0000-4000-8000-000000000001",
                "database.secret": "s3cret", **(params or {})}
    rows = ", ".join(f"('{k}', '{v}')" for k, v in settings.items())
    crons = ", ".join(f"('{c}', true)" for c in CRONS)
    inserts = [
        f"INSERT INTO ir_module_module (name, state, latest_version) VALUES {values}",  # noqa: S608
        f"INSERT INTO ir_config_parameter (key, value) VALUES {rows}",  # noqa: S608
        f"INSERT INTO ir_cron (cron_name, active) VALUES {crons}",  # noqa: S608
    ]
    postgres.psql(SCHEMA + ";".join(inserts), dbname=name)
    return name


@pytest.fixture
def odoo17(postgres: PostgresLab, pg_names: Callable[[str], str]) -> str:
    return make_odoo_db(postgres, pg_names("odoo17"))


def test_series_of_reads_the_series_from_versions_and_tags() -> None:
    assert series_of("17.0") == "17.0"
    assert series_of("saas~17.2") == "saas~17.2"
    assert series_of("17.0-20250421") == "17.0"
    assert series_of("18.0.1.3") == "18.0"
    assert series_of("latest") is None
    assert series_of("") is None
    assert series_of("17") is None


async def test_a_clean_17_database_passes_for_17(pg_server: Server, odoo17: str) -> None:
    result = await gate(pg_server, odoo17, version="17.0")
    assert result.ok, result.problems
    assert result.problems == ()
    assert result.base_version == "17.0.1.3"
    assert (await run_gate(pg_server, odoo17, version="17.0-20250421")).ok


async def test_a_module_left_to_upgrade_is_refused_and_named(
        postgres: PostgresLab, pg_server: Server, odoo17: str) -> None:
    postgres.psql("UPDATE ir_module_module SET state = 'to upgrade' WHERE name = 'mail';"
                  "INSERT INTO ir_module_module (name, state) VALUES ('sale', 'to install')",
                  dbname=odoo17)
    result = await gate(pg_server, odoo17, version="17.0")
    assert not result.ok
    text = " | ".join(result.problems)
    assert "'to upgrade': mail" in text and "'to install': sale" in text, text
    with pytest.raises(StepFailed) as failed:
        await run_gate(pg_server, odoo17, version="17.0")
    assert "mail" in str(failed.value) and "sale" in str(failed.value)
    assert len(failed.value.data["problems"]) == 2


async def test_a_wrong_series_is_refused(pg_server: Server, odoo17: str) -> None:
    result = await gate(pg_server, odoo17, version="saas~17.2")
    assert not result.ok
    assert result.problems[0].startswith("base is still on 17.0 (latest_version 17.0.1.3)")
    newer = await gate(pg_server, odoo17, version="16.0")
    assert not newer.ok
    assert "newer than the candidate's 16.0" in newer.problems[0], newer.problems


async def test_base_still_on_16_after_u_gets_the_major_upgrade_message(
        postgres: PostgresLab, pg_server: Server, pg_names: Callable[[str], str]) -> None:
    db = make_odoo_db(postgres, pg_names("odoo16"), series="16.0")
    result = await gate(pg_server, db, version="17.0")
    assert not result.ok
    assert result.problems == (
        "base is still on 16.0 (latest_version 16.0.1.3): `-u` is not a major-version "
        "upgrade; migrate the database with Odoo's upgrade service or OpenUpgrade first",)


async def test_a_neutralized_database_is_refused(
        postgres: PostgresLab, pg_server: Server, pg_names: Callable[[str], str]) -> None:
    db = make_odoo_db(postgres, pg_names("neutral"), params={"database.is_neutralized": "True"})
    result = await gate(pg_server, db, version="17.0")
    assert not result.ok
    assert len(result.problems) == 1 and "neutralized" in result.problems[0]
    assert "never for a colour that takes production traffic" in result.problems[0]


async def test_partially_updated_is_refused_on_19_only(
        postgres: PostgresLab, pg_server: Server, pg_names: Callable[[str], str]) -> None:
    params = {"base.partially_updated_database": "True"}
    on19 = make_odoo_db(postgres, pg_names("odoo19"), series="19.0", params=params)
    result = await gate(pg_server, on19, version="19.0")
    assert not result.ok
    assert "base.partially_updated_database is set" in result.problems[0], result.problems
    # the same parameter on 17 means nothing to Odoo 17
    on17 = make_odoo_db(postgres, pg_names("odoo17p"), series="17.0", params=params)
    assert (await gate(pg_server, on17, version="17.0")).ok


async def test_no_version_series_checks_modules_only(pg_server: Server, odoo17: str) -> None:
    assert (await gate(pg_server, odoo17, version="latest")).ok


async def test_a_missing_database_or_table_is_a_problem_not_a_crash(
        postgres: PostgresLab, pg_server: Server, pg_names: Callable[[str], str]) -> None:
    missing = pg_names("missing")
    result = await gate(pg_server, missing, version="17.0")
    assert not result.ok and "does not exist" in result.problems[0]
    empty = pg_names("empty")
    postgres.psql(f'CREATE DATABASE "{empty}"')
    result = await gate(pg_server, empty, version="17.0")
    assert not result.ok and "no ir_module_module table" in result.problems[0]
    checks = await shared_checks(pg_server, missing)
    assert checks.problems and "does not exist" in checks.problems[0]


async def test_shared_checks_refuse_modules_to_upgrade(
        postgres: PostgresLab, pg_server: Server, odoo17: str) -> None:
    assert (await shared_checks(pg_server, odoo17)).ok
    postgres.psql("UPDATE ir_module_module SET state = 'to remove' WHERE name = 'web'",
                  dbname=odoo17)
    checks = await shared_checks(pg_server, odoo17)
    assert not checks.ok
    assert "'to remove': web" in checks.problems[0]


async def test_shared_checks_report_a_transaction_and_a_running_cron_without_waiting(
        postgres: PostgresLab, pg_server: Server, odoo17: str) -> None:
    blue = await pg_server.connect(odoo17, application_name="odoo-blue", autocommit=False)
    cron = await pg_server.connect(odoo17, application_name="odoo-blue-cron", autocommit=False)
    try:
        await blue.execute("UPDATE res_partner SET name = name WHERE id = 1")
        await cron.execute("SELECT id FROM ir_cron WHERE id = 2 FOR UPDATE")
        blue_pid, cron_pid = blue.info.backend_pid, cron.info.backend_pid
        started = time.monotonic()
        checks = await asyncio.wait_for(shared_checks(pg_server, odoo17), 10)
        took = time.monotonic() - started
        assert took < 2, took
        assert checks.ok, checks.problems  # warnings only
        text = "\n".join(checks.warnings)
        assert f"pid {blue_pid} (odoo-blue, 127.0.0.1:" in text, text
        assert "is idle in transaction since" in text
        assert "UPDATE res_partner SET name = name WHERE id = 1" in text
        assert f"pid {cron_pid} (odoo-blue-cron" in text
        locked = [w for w in checks.warnings if w.startswith("ir_cron ")]
        assert locked == [w for w in locked if "ir_cron 2 (Base: Auto-vacuum internal data)"
                          in w] and len(locked) == 1, locked
        # the probe left nothing behind: the cron session still holds its row, others are free
        async with await psycopg.AsyncConnection.connect(
                pg_server.conninfo(odoo17), autocommit=True) as probe:
            cur = await probe.execute("SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a "
                                      "USING (pid) WHERE a.application_name = 'odoo-watchdog-gate'")
            assert (await cur.fetchone()) == (0,)
    finally:
        await blue.rollback()
        await cron.rollback()
        await blue.close()
        await cron.close()
    assert not [w for w in (await shared_checks(pg_server, odoo17)).warnings
                if w.startswith("ir_cron")]
