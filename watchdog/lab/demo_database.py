"""The demo's third act: a rollout that prepares the database first.

A fresh lab (two stand-ins, HAProxy, Prometheus, the daemon) plus PostgreSQL 15, with blue's
Odoo 16.0 database made by the stand-in's `initdb` (partners, modules, parameters,
attachments in a filestore). The site has `strategy: separate` and the prepare steps backup,
clone, migrate and gate; `migrate` runs the stand-in's `upgrade` (which behaves as
`odoo -u all --stop-after-init`, here after a major-version migration, `--major`). The
rollout 16.0 -> 17.0 prints each step as the daemon reports it, with its duration, then the
canary goes on as in the first act.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from watchdog.lab.load import LoadClient
from watchdog.lab.postgres import PostgresLab
from watchdog.lab.stack import LabStack

PARTNERS = 20_000
ATTACHMENTS = 200
STEP_DONE = re.compile(r"step (\d+)/(\d+) (\w+) passed in ([\d.]+)s")


def _say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def _standin(*args: str) -> list[str]:
    return [sys.executable, "-m", "watchdog.lab.standin", *args]


def _initdb(pg: PostgresLab, name: str, filestore: Path) -> str:
    done = subprocess.run(
        _standin("initdb", "--db-host", "127.0.0.1", "--db-port", str(pg.port), "-r",
                 "postgres", "-d", name, "--version", "16.0", "--partners", str(PARTNERS),
                 "--filestore", str(filestore), "--attachments", str(ATTACHMENTS)),
        capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"initdb failed: {done.stdout}{done.stderr}")
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else name


def _site_extra(pg: PostgresLab, workdir: Path) -> dict[str, Any]:
    dsn = workdir / "pg.dsn"
    dsn.write_text(f"host=127.0.0.1 port={pg.port} user=postgres\n")
    dsn.chmod(0o600)
    upgrade = _standin("upgrade", "-d", "{{ database }}", "-u", "all", "--stop-after-init",
                       "--version", "{{ version }}", "--major", "--db_host", "127.0.0.1",
                       "--db_port", str(pg.port), "-r", "postgres")
    return {
        "database": {
            "strategy": "separate", "dsn_file": str(dsn),
            "names": {"blue": "odoo_blue", "green": "odoo_green"},
            "filestore": {"blue": str(workdir / "filestore" / "odoo_blue"),
                          "green": str(workdir / "filestore" / "odoo_green")},
            "backup": {"dir": str(workdir / "backups"), "keep": 3},
            "lock_wait": "5s",
        },
        "prepare": ["backup", "clone", {"migrate": {"command": upgrade, "timeout": "5m"}},
                    "gate"],
    }


async def database_act(workdir: Path, watcher_cls: Any) -> int:
    """Run the act; 0 when the rollout prepared the database and was promoted."""
    _say("")
    _say("ROLLOUT 3: a new lab with PostgreSQL 15: blue on Odoo 16.0 -> green on 17.0, the "
         "database prepared first")
    (workdir / "filestore").mkdir(parents=True, exist_ok=True)
    pg = PostgresLab(workdir / "postgres")
    lab: LabStack | None = None
    load: LoadClient | None = None
    try:
        await asyncio.to_thread(pg.start)
        _say(f"  PostgreSQL 15 on 127.0.0.1:{pg.port}  pid {pg.pid}")
        summary = await asyncio.to_thread(_initdb, pg, "odoo_blue",
                                          workdir / "filestore" / "odoo_blue")
        _say(f"  blue's database: {summary}")
        lab = LabStack(workdir / "lab", steps=[{"weight": 10, "hold": "3s"}, {"weight": 100}],
                       bake="3s", site_extra=_site_extra(pg, workdir))
        await asyncio.to_thread(lab.start)
        assert lab.daemon is not None
        assert lab.haproxy is not None and lab.prometheus is not None
        _say(f"  blue (16.0) pid {lab.blue.pid}, green (17.0) pid {lab.green.pid}, HAProxy pid "
             f"{lab.haproxy.pid}, Prometheus pid {lab.prometheus.pid}, daemon pid "
             f"{lab.daemon.pid}")
        _say("  prepare: backup, clone, migrate (odoo -u all --stop-after-init), gate")
        # Traffic for the rules to judge: without it they have no data and hold the canary.
        load = await LoadClient(lab.proxy_url, "/web/login", concurrency=2, delay=0.02,
                                max_seconds=240).start()
        watcher = watcher_cls(lab)
        watcher.poll()
        t0 = time.monotonic()
        lab.client().post("/api/v1/sites/odoo/rollouts", {"to": "green", "version": "17.0"})
        site = await watcher.until({"preflight", "progressing", "aborted", "promoted"}, 180)
        prepared = time.monotonic() - t0
        steps = [m for e in site.get("events", []) for m in [e["message"]]
                 if STEP_DONE.search(m)]
        if site["phase"] == "aborted":
            _say("the database steps failed: the demo failed")
            return 1
        site = await watcher.until({"promoted", "rolled_back", "aborted"}, 90)
        if site["phase"] != "promoted":
            _say(f"rollout 3 ended {site['phase']}, not promoted: the demo failed")
            return 1
        backups = lab.client().get("/api/v1/sites/odoo/backups")["backups"]
        _say("")
        _say("SUMMARY of rollout 3")
        for message in steps:
            found = STEP_DONE.search(message)
            assert found is not None
            _say(f"  {found.group(3):<8} {float(found.group(4)):6.2f}s")
        _say(f"  database prepared in {prepared:.1f}s, then the canary: promoted, green (17.0)"
             " serves on odoo_green; blue's odoo_blue (16.0) untouched")
        if backups:
            b = backups[0]
            _say(f"  backup {b['id']}: {b['bytes'] / 1e6:.1f} MB, verified: {b['verified']}")
        return 0
    finally:
        if load is not None:
            await load.stop()
        if lab is not None:
            await asyncio.to_thread(lab.stop)
        await asyncio.to_thread(pg.stop)
