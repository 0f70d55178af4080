"""End to end with a database: the daemon as a real process, HAProxy, the two stand-ins and a
real PostgreSQL 15 holding Odoo-shaped databases made by the stand-in's `initdb`.

A separate-database rollout runs backup, clone, migrate (the stand-in's `upgrade`, which acts as
`odoo -u all --stop-after-init` does) and gate before its preflight; backups by hand through the
API and the CLI; `db restore` refused on the colour with traffic; `kill -9` of the daemon during
a clone and during a migration; a shared database with a breaking migration that freezes
instead of rolling back.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.polling import wait
from watchdog.client import ApiError
from watchdog.lab.postgres import PostgresLab
from watchdog.lab.stack import LabStack
from watchdog.lab.standin import set_faults

pytestmark = pytest.mark.lab

PARTNERS = 3000
FILES = 20
BLUE_ONLY = {"blue": 100, "green": 0}


# ---------------------------------------------------------------- the database lab


def standin(*args: str) -> list[str]:
    return [sys.executable, "-m", "watchdog.lab.standin", *args]


def initdb(postgres: PostgresLab, name: str, filestore: Path | None, version: str = "16.0",
           partners: int = PARTNERS) -> None:
    argv = standin("initdb", "--db-host", "127.0.0.1", "--db-port", str(postgres.port),
                   "-r", "postgres", "-d", name, "--version", version,
                   "--partners", str(partners))
    if filestore is not None:
        argv += ["--filestore", str(filestore), "--attachments", str(FILES)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def upgrade_command(postgres: PostgresLab, *extra: str) -> list[str]:
    """The migrate step's argv: the stand-in's `odoo -u all --stop-after-init`."""
    return standin("upgrade", "-d", "{{ database }}", "-u", "all", "--stop-after-init",
                   "--version", "{{ version }}", "--db_host", "127.0.0.1", "--db_port",
                   str(postgres.port), "-r", "postgres", *extra)


def databases(postgres: PostgresLab) -> set[str]:
    return set(postgres.psql("SELECT datname FROM pg_database").split())


def count(postgres: PostgresLab, name: str, table: str = "res_partner") -> int:
    return int(postgres.psql(f"SELECT count(*) FROM {table}", dbname=name))  # noqa: S608


def param(postgres: PostgresLab, name: str, key: str) -> str:
    sql = f"SELECT value FROM ir_config_parameter WHERE key = '{key}'"  # noqa: S608
    return postgres.psql(sql, dbname=name).strip()


def events(view: dict[str, Any]) -> list[tuple[str, str]]:
    return [(e["kind"], e["message"]) for e in view.get("events", [])]


def describe(view: dict[str, Any]) -> str:
    return f"phase {view['phase']}, weights {view['weights']}\n" + "\n".join(
        f"  {k}: {m}" for k, m in events(view)[-15:])


def wait_view(lab: LabStack, ok: Callable[[dict[str, Any]], bool], timeout: float,
              what: str) -> dict[str, Any]:
    last: dict[str, Any] = {}

    def probe() -> dict[str, Any] | None:
        nonlocal last
        last = lab.site()
        return last if ok(last) else None

    try:
        return wait(probe, timeout, what, every=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{describe(last)}") from None


def kill9(lab: LabStack) -> None:
    assert lab.daemon is not None and lab.daemon.proc is not None
    os.kill(lab.daemon.proc.pid, signal.SIGKILL)
    lab.daemon.proc.wait(timeout=10)


def processes(marker: str) -> list[int]:
    """Pids of running processes whose command line holds `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if marker in cmdline and "pytest" not in cmdline:
                found.append(int(entry.name))
    return found


@pytest.fixture
def make_lab(tmp_path: Path, postgres: PostgresLab,
             pg_names: Callable[[str], str]) -> Iterator[Callable[..., LabStack]]:
    """A LabStack whose site has `database:` settings on the session's PostgreSQL, with
    blue's database made by the stand-in's initdb (16.0, partners, attachments)."""
    labs: list[LabStack] = []

    def make(prepare: list[Any], *, strategy: str = "separate", migration: str | None = None,
             steps: list[Any] | None = None, blue_db: bool = True) -> LabStack:
        work = tmp_path / f"lab{len(labs)}"
        work.mkdir()
        dsn = work / "pg.dsn"
        dsn.write_text(f"host=127.0.0.1 port={postgres.port} user=postgres\n")
        blue = pg_names("blue")
        names = {"blue": blue, "green": pg_names("green") if strategy == "separate" else blue}
        database: dict[str, Any] = {
            "strategy": strategy, "dsn_file": str(dsn), "names": names,
            "backup": {"dir": str(work / "backups"), "keep": 3}, "lock_wait": "1s"}
        if strategy == "separate":
            database["filestore"] = {"blue": str(work / "fs-blue"),
                                     "green": str(work / "fs-green")}
        if migration is not None:
            database["migration"] = migration
        if blue_db:
            initdb(postgres, blue, work / "fs-blue" if strategy == "separate" else None)
        lab = LabStack(work, steps=steps or [{"weight": 10, "hold": "2s"}, {"weight": 100}],
                       bake="2s", site_extra={"database": database, "prepare": prepare})
        labs.append(lab)
        lab.start()
        lab.names = names  # type: ignore[attr-defined]
        return lab

    yield make
    for lab in labs:
        lab.stop()


def deploy(lab: LabStack, version: str = "17.0") -> dict[str, Any]:
    result: dict[str, Any] = lab.client().post("/api/v1/sites/odoo/rollouts",
                                               {"to": "green", "version": version})
    return result


def passed(view: dict[str, Any], step: str) -> str | None:
    """The event of `step` passing ("step 2/4 clone passed in 0.3s: ...")."""
    for kind, message in events(view):
        if kind == "prepare_step" and f" {step} passed in " in message:
            return message
    return None


# ---------------------------------------------------------------- the whole rollout


def test_separate_rollout_backs_up_clones_migrates_and_gates_before_preflight(
        make_lab: Callable[..., LabStack], postgres: PostgresLab) -> None:
    lab = make_lab(["backup", "clone",
                    {"migrate": {"command": upgrade_command(postgres, "--major"),
                                 "timeout": "1m"}}, "gate"])
    names = lab.names  # type: ignore[attr-defined]
    deploy(lab)
    view = wait_view(lab, lambda v: v["phase"] in ("progressing", "baking", "promoted"), 60,
                     "past preparing")
    kinds = [k for k, _ in events(view)]
    for step in ("backup", "clone", "migrate", "gate"):
        assert passed(view, step), describe(view)
    assert "progress" in kinds
    # The candidate's database: the live one's rows, secret and uuid, upgraded to 17.0.
    green, blue = names["green"], names["blue"]
    assert count(postgres, green) == count(postgres, blue) >= PARTNERS
    for key in ("database.secret", "database.uuid"):
        assert param(postgres, green, key) == param(postgres, blue, key)
    base = postgres.psql("SELECT latest_version FROM ir_module_module WHERE name = 'base'",
                         dbname=green).strip()
    assert base.startswith("17.0."), base
    blue_base = postgres.psql("SELECT latest_version FROM ir_module_module WHERE name = "
                              "'base'", dbname=blue).strip()
    assert blue_base.startswith("16.0."), "the live colour's database was never touched"
    # Filestore by hard links, every file.
    fs_blue, fs_green = lab.workdir / "fs-blue", lab.workdir / "fs-green"
    blue_files = sorted(p.relative_to(fs_blue) for p in fs_blue.rglob("*") if p.is_file())
    assert len(blue_files) == FILES
    for rel in blue_files:
        assert (fs_green / rel).stat().st_ino == (fs_blue / rel).stat().st_ino
    # The backup counted: listed, verified, in the metrics.
    backups = lab.client().get("/api/v1/sites/odoo/backups")["backups"]
    assert [b["database"] for b in backups] == [blue] and backups[0]["verified"]
    assert {"id", "color", "database", "created", "bytes", "verified"} == set(backups[0])
    lab.client().post("/api/v1/sites/odoo/abort", {"reason": "test done"})


def test_a_failed_migration_aborts_with_traffic_untouched(
        make_lab: Callable[..., LabStack], postgres: PostgresLab) -> None:
    lab = make_lab(["clone", {"migrate": {"command": upgrade_command(postgres, "--fault",
                                                                     "fail"),
                                          "timeout": "1m"}}, "gate"])
    deploy(lab, "16.0")
    view = wait_view(lab, lambda v: v["phase"] == "aborted", 60, "aborted")
    aborted = [m for k, m in events(view) if k == "aborted"]
    assert aborted and "step migrate failed" in aborted[0], describe(view)
    assert "exit code 255" in aborted[0], describe(view)
    assert view["weights"] == BLUE_ONLY
    assert not passed(view, "gate")


# ---------------------------------------------------------------- backups by hand


def test_backup_list_and_restore_through_the_api_and_the_cli(
        make_lab: Callable[..., LabStack], postgres: PostgresLab) -> None:
    lab = make_lab([])
    names = lab.names  # type: ignore[attr-defined]
    client = lab.client()
    started = client.post("/api/v1/sites/odoo/backups", {})
    assert started["color"] == "blue"
    backup_id = started["id"]
    wait_view(lab, lambda v: any(k == "backup_done" and backup_id in m
                                 for k, m in events(v)), 30, "backup done")
    listed = client.get("/api/v1/sites/odoo/backups")["backups"]
    assert listed[0]["id"] == backup_id and listed[0]["verified"] and listed[0]["bytes"] > 0
    cli = [sys.executable, "-m", "watchdog.cli"]
    table = subprocess.run([*cli, "db", "list", "odoo", "--url", lab.api_url],
                           capture_output=True, text=True, timeout=30, check=False)
    assert table.returncode == 0 and backup_id in table.stdout and "yes" in table.stdout
    # Restore: refused on blue (it has all the traffic), done on green.
    with pytest.raises(ApiError) as refused:
        client.post(f"/api/v1/sites/odoo/backups/{backup_id}/restore", {"to": "blue"})
    assert refused.value.status == 409 and "traffic" in str(refused.value)
    with pytest.raises(ApiError) as unknown:
        client.post("/api/v1/sites/odoo/backups/20990101T000000Z-blue/restore", {"to": "green"})
    assert unknown.value.status == 404
    with pytest.raises(ApiError) as bad:
        client.post(f"/api/v1/sites/odoo/backups/{backup_id}/restore", {"to": "red"})
    assert bad.value.status == 400 and "to" in str(bad.value)
    env = {**os.environ, "ODOO_WATCHDOG_TOKEN": lab.token}
    restored = subprocess.run([*cli, "db", "restore", "odoo", backup_id, "--to", "green",
                               "--wait", "--timeout", "60", "--url", lab.api_url],
                              capture_output=True, text=True, timeout=90, check=False, env=env)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert "restored" in restored.stdout
    assert count(postgres, names["green"]) == count(postgres, names["blue"]) >= PARTNERS
    assert param(postgres, names["green"], "database.uuid") == param(
        postgres, names["blue"], "database.uuid")
    fs_green = lab.workdir / "fs-green"
    assert len([p for p in fs_green.rglob("*") if p.is_file()]) == FILES
    metrics = subprocess.run(["curl", "-s", f"{lab.api_url}/metrics"], capture_output=True,
                             text=True, timeout=10, check=False).stdout
    assert 'odoo_watchdog_backup_bytes{site="odoo"}' in metrics


# ---------------------------------------------------------------- kill -9


def test_kill_9_during_a_clone_leaves_no_half_made_database(
        make_lab: Callable[..., LabStack], postgres: PostgresLab) -> None:
    lab = make_lab(["clone"])
    names = lab.names  # type: ignore[attr-defined]
    green, temp = names["green"], names["green"] + "_wdclone"
    # A session of the live colour holding a lock: the clone takes the dump route, and its
    # pg_dump waits on the lock with the temporary database made: the moment to kill.
    holder = psycopg.connect(f"host=127.0.0.1 port={postgres.port} user=postgres "
                             f"dbname={names['blue']} application_name=odoo-live")
    holder.execute("BEGIN")
    holder.execute("LOCK TABLE res_partner IN ACCESS EXCLUSIVE MODE")
    try:
        deploy(lab, "16.0")
        wait(lambda: temp in databases(postgres), 30, "the temporary clone database made")
        kill9(lab)
    finally:
        holder.rollback()
        holder.close()
    # The daemon's pg_dump and pg_restore got SIGTERM when it died (PR_SET_PDEATHSIG).
    wait(lambda: (not processes(f"{names['blue']}") and not processes(temp)) or None, 10,
         "the clone's programs gone")
    assert green not in databases(postgres), "a half-made database under the candidate's name"
    lab.start_daemon()
    # The start cleaned up, and the clone ran again from its start, to its end.
    view = wait_view(lab, lambda v: passed(v, "clone") is not None, 60, "the clone re-run")
    assert temp not in databases(postgres)
    assert count(postgres, green) == count(postgres, names["blue"])
    assert any(k == "cleanup" for k, _ in events(view)) or "runs again" in describe(view)


def test_kill_9_during_a_migration_aborts_after_the_restart(
        make_lab: Callable[..., LabStack], postgres: PostgresLab) -> None:
    lab = make_lab(["clone", {"migrate": {"command": upgrade_command(
        postgres, "--fault", "slow", "--slow-seconds", "30"), "timeout": "5m"}}])
    deploy(lab, "16.0")
    wait(lambda: processes("--slow-seconds") or None, 30, "the upgrade running")
    kill9(lab)
    wait(lambda: not processes("--slow-seconds") or None, 10, "the upgrade stopped with the "
         "daemon")
    lab.start_daemon()
    view = wait_view(lab, lambda v: v["phase"] == "aborted", 30, "aborted after the restart")
    assert "half-upgraded" in describe(view)
    assert view["weights"] == BLUE_ONLY
    assert not processes("--slow-seconds")


# ---------------------------------------------------------------- shared + breaking


def test_shared_breaking_migration_freezes_instead_of_rolling_back(
        make_lab: Callable[..., LabStack], postgres: PostgresLab) -> None:
    lab = make_lab([{"migrate": {"command": upgrade_command(postgres), "timeout": "1m"}}],
                   strategy="shared", migration="breaking",
                   steps=[{"weight": 10, "hold": "1h"}, {"weight": 100}])
    deploy(lab, "16.0")
    wait_view(lab, lambda v: v["phase"] == "progressing" and v["weights"]["green"] == 10, 60,
              "green at 10%")
    set_faults(lab.green.url, down=True)
    try:
        view = wait_view(lab, lambda v: v["phase"] == "frozen", 30, "frozen")
        time.sleep(2.0)  # ticks go on: traffic still stays
        view = lab.site()
        assert view["phase"] == "frozen" and view["weights"] == {"blue": 90, "green": 10}
        assert any(k == "frozen" and "restore" in m for k, m in events(view))
        assert [r for r in view["rules"] if r["state"] == "firing"], "rules still evaluated"
        with pytest.raises(ApiError) as refused:
            lab.client().post("/api/v1/sites/odoo/abort", {"reason": "no"})
        assert refused.value.status == 409
    finally:
        set_faults(lab.green.url, down=False)
    lab.client().post("/api/v1/sites/odoo/promote", {"full": True})
    wait_view(lab, lambda v: v["phase"] == "promoted", 20, "promoted out of frozen")
