"""The daemon's step runner on real PostgreSQL 15: migrate then gate, as the rollout machine
asks for them, each outcome reported back; a failing migration's exit code and output."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from watchdog.config import SiteConfig
from watchdog.lab.postgres import PostgresLab
from watchdog.metrics import Metrics
from watchdog.prepare import Preparer
from watchdog.rollout import RunStep, Start, StepDone, command, initial
from watchdog.store import Store

pytestmark = pytest.mark.lab

UPGRADE = """\
import os, sys, psycopg
db = sys.argv[1]
with psycopg.connect(dbname=db, host="127.0.0.1", port=sys.argv[2], user="postgres") as conn:
    conn.execute("UPDATE ir_module_module SET latest_version = '17.0.1.4' WHERE name = 'base'")
print("2026-12-02 10:00:00,000 1 INFO %s odoo.modules.loading: 1 modules loaded" % db)
sys.exit(int(os.environ.get("EXIT", "0")))
"""


def site_config(tmp_path: Path, postgres: PostgresLab, names: dict[str, str],
                code: int) -> SiteConfig:
    dsn = tmp_path / "pg.dsn"
    dsn.write_text(f"host=127.0.0.1 port={postgres.port} user=postgres\n")
    script = tmp_path / "upgrade.py"
    script.write_text(UPGRADE.replace('os.environ.get("EXIT", "0")', f'"{code}"'))
    return SiteConfig.model_validate({
        "router": {"kind": "haproxy", "socket": str(tmp_path / "admin.sock"), "backend": "odoo"},
        "colors": {"blue": {"server": "odoo-blue", "url": "http://127.0.0.1:8069"},
                   "green": {"server": "odoo-green", "url": "http://127.0.0.1:9069"}},
        "database": {"strategy": "separate", "dsn_file": str(dsn), "names": names},
        "prepare": [{"migrate": {"command": [sys.executable, str(script), "{{ database }}",
                                             str(postgres.port)],
                                 "timeout": "30s"}}, "gate"],
    })


def make_db(postgres: PostgresLab, name: str) -> None:
    postgres.psql(f"CREATE DATABASE {name}")
    postgres.psql("CREATE TABLE ir_module_module (id serial, name text, state text, "
                  "latest_version text); INSERT INTO ir_module_module (name, state, "
                  "latest_version) VALUES ('base', 'installed', '17.0.1.3'); CREATE TABLE "
                  "ir_config_parameter (key text, value text)", dbname=name)


async def run(tmp_path: Path, postgres: PostgresLab, pg_names: Callable[[str], str],
              code: int) -> tuple[Any, list[StepDone]]:
    names = {"blue": pg_names("blue"), "green": pg_names("green")}
    make_db(postgres, names["green"])
    config = site_config(tmp_path, postgres, names, code)
    store = Store(tmp_path / "state")
    dones: list[StepDone] = []
    state = initial("odoo", "blue")
    finished = asyncio.Event()
    holder: dict[str, Any] = {}

    async def done(site: str, result: StepDone) -> None:
        dones.append(result)
        from watchdog.rollout import step_done
        decision = step_done(holder["state"], result, result.outcome.ended)
        holder["state"] = decision.state
        nxt = [a for a in decision.actions if isinstance(a, RunStep)]
        if nxt and decision.state.rollout is not None:
            preparer.start(site, config, decision.state.rollout, nxt[0])
        else:
            finished.set()

    preparer = Preparer(Metrics(), store, done)
    preparer.configure("odoo", config, tmp_path)
    decision = command(state, Start("green", "17.0", id="r1"), 0.0, config.rollout,
                       prepare=config.steps)
    holder["state"] = decision.state
    first = next(a for a in decision.actions if isinstance(a, RunStep))
    assert decision.state.rollout is not None
    preparer.start("odoo", config, decision.state.rollout, first)
    await asyncio.wait_for(finished.wait(), 60)
    store.close()
    return holder["state"], dones


async def test_migrate_then_gate_pass_and_the_rollout_goes_to_preflight(
    tmp_path: Path, postgres: PostgresLab, pg_names: Callable[[str], str],
) -> None:
    state, dones = await run(tmp_path, postgres, pg_names, 0)
    assert [d.outcome.step for d in dones] == ["migrate", "gate"]
    assert all(d.outcome.outcome == "passed" for d in dones), dones
    assert dones[0].migrated
    assert "17.0.1.4" in dones[1].outcome.detail
    assert state.phase.value == "preflight"


async def test_a_migration_that_exits_255_aborts_with_its_exit_code_and_output(
    tmp_path: Path, postgres: PostgresLab, pg_names: Callable[[str], str],
) -> None:
    state, dones = await run(tmp_path, postgres, pg_names, 255)
    assert [d.outcome.step for d in dones] == ["migrate"]
    out = dones[0].outcome
    assert out.outcome == "failed" and out.exit_code == 255
    assert any("modules loaded" in line for line in out.output)
    assert state.phase.value == "aborted"
    assert state.weights == {"blue": 100, "green": 0}
