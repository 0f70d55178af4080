"""`make demo`: the lab with a real canary and a real automatic rollback.

Two Odoo stand-ins (blue 16.0, green 17.0) behind a real HAProxy 2.6, Prometheus 2.42 scraping
HAProxy's exporter every second, constant load through the proxy, and the odoo-watchdog daemon
as a real process. Four rollouts:

1. blue -> green, 10% -> 50% -> 100%, bake, promoted;
2. green -> blue, where blue starts answering 30% HTTP 500 at 50%: the daemon rolls back;
3. in a fresh lab with PostgreSQL 15, blue (Odoo 16.0) -> green (17.0) with the database
   prepared first: backup, clone, migrate, gate (watchdog/lab/demo_database.py);
4. in a fresh lab WITHOUT Prometheus, HAProxy's access log to the daemon and the rules of
   rules/traffic.yml: green breaks at 10% and the daemon rolls back from the access-log lines
   as they arrive (watchdog/lab/demo_traffic.py).

Every decision the daemon takes is printed as it happens, from its own audit log.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from watchdog.client import ApiError
from watchdog.config import SiteConfig
from watchdog.lab.demo_database import database_act
from watchdog.lab.demo_traffic import traffic_act
from watchdog.lab.load import LoadClient
from watchdog.lab.stack import LabStack
from watchdog.lab.standin import set_faults
from watchdog.routers import create


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


class Watcher:
    """Prints each new audit-log event and each rule state change of the site."""

    def __init__(self, lab: LabStack) -> None:
        self.lab = lab
        self.seen = 0
        self.rules: dict[tuple[str, str], str] = {}

    def poll(self) -> dict[str, Any]:
        site: dict[str, Any] = self.lab.client().get("/api/v1/sites/odoo")
        for event in site.get("events", []):
            if event["id"] > self.seen:
                self.seen = event["id"]
                say(f"  daemon: {event['kind']:<14} {event['message']}")
        for rule in site.get("rules", []):
            key = (rule["name"], rule["color"])
            if self.rules.get(key) != rule["state"]:
                if key in self.rules or rule["state"] != "ok":
                    value = (("inf" if rule.get("ratio") == "inf" else "no data")
                             if rule["value"] is None else f"{rule['value']:.3g}")
                    say(f"  rule {rule['name']} on {rule['color']}: {rule['state']} "
                        f"(value {value}, threshold {rule['threshold']})")
                self.rules[key] = rule["state"]
        return site

    async def until(self, phases: set[str], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            site = self.poll()
            if site["phase"] in phases:
                return site
            if time.monotonic() > deadline:
                raise TimeoutError(f"phase {site['phase']} after {timeout:g}s, "
                                   f"wanted {sorted(phases)}")
            await asyncio.sleep(0.25)


def haproxy_router(lab: LabStack) -> Any:
    assert lab.haproxy is not None
    return create("odoo", SiteConfig.model_validate({
        "router": {"kind": "haproxy", "socket": str(lab.haproxy.admin_socket), "backend": "odoo"},
        "colors": {"blue": {"server": "odoo-blue", "url": lab.blue.url},
                   "green": {"server": "odoo-green", "url": lab.green.url}},
    }))


async def scenario(workdir: Path) -> int:
    say("odoo-watchdog demo: a canary that is promoted, then one that is rolled back")
    lab = LabStack(workdir, interval="1s", scrape="1s", window="5s", error_for="2s",
                   steps=[{"weight": 10, "hold": "5s"}, {"weight": 50, "hold": "8s"},
                          {"weight": 100}], bake="5s")
    load: LoadClient | None = None
    try:
        say("starting the lab: two Odoo stand-ins, HAProxy 2.6, Prometheus 2.42 (1s scrape)")
        await asyncio.to_thread(lab.start, False)
        assert lab.haproxy is not None and lab.prometheus is not None
        say(f"  blue  (Odoo 16.0) {lab.blue.url}  pid {lab.blue.pid}")
        say(f"  green (Odoo 17.0) {lab.green.url}  pid {lab.green.pid}")
        say(f"  HAProxy {lab.proxy_url}  pid {lab.haproxy.pid}; Prometheus {lab.prometheus.url}"
            f"  pid {lab.prometheus.pid}")
        await asyncio.to_thread(lab.start_daemon)
        assert lab.daemon is not None
        say(f"  odoo-watchdog daemon {lab.api_url}  pid {lab.daemon.pid}, tick 1s, rules: "
            "error_rate (5xx share <= 5% for 2s), health (/web/health for 2s)")
        load = await LoadClient(lab.proxy_url, "/web/login", concurrency=4, delay=0.01,
                                max_seconds=280).start()
        say("constant load through HAProxy: 4 concurrent users, new connection per request")
        watcher = Watcher(lab)
        watcher.poll()
        await asyncio.sleep(2)

        say("")
        say("ROLLOUT 1: blue -> green (Odoo 17.0), canary 10% -> 50% -> 100%, bake 5s")
        t1 = time.monotonic()
        lab.client().post("/api/v1/sites/odoo/rollouts", {"to": "green", "version": "17.0"})
        site = await watcher.until({"promoted", "rolled_back", "aborted"}, 90)
        if site["phase"] != "promoted":
            say(f"rollout 1 ended {site['phase']}, not promoted: the demo failed")
            return 1
        first_took = time.monotonic() - t1
        say(f"rollout 1 promoted in {first_took:.1f}s; green serves 100%")

        say("")
        say("ROLLOUT 2: green -> blue (Odoo 18.0 hotfix), the candidate breaks at 50%")
        lab.client().post("/api/v1/sites/odoo/rollouts", {"to": "blue", "version": "18.0"})
        deadline = time.monotonic() + 60
        while watcher.poll()["weights"]["blue"] < 50:
            if time.monotonic() > deadline:
                say("rollout 2 never reached 50%: the demo failed")
                return 1
            await asyncio.sleep(0.2)
        router = haproxy_router(lab)
        await asyncio.sleep(1.0)
        say("FAULT: blue starts answering 30% of requests with HTTP 500")
        fault_at = time.monotonic()
        mark = load.mark()
        await asyncio.to_thread(set_faults, lab.blue.url, error_rate=0.3)
        rolled_back_at = None
        while time.monotonic() - fault_at < 60:
            if (await router.get_weights())["blue"] == 0:
                rolled_back_at = time.monotonic()
                break
            watcher.poll()
            await asyncio.sleep(0.05)
        if rolled_back_at is None:
            say("no rollback within 60s: the demo failed")
            return 1
        during = load.window(mark)
        failed_during = [s for s in during.samples if s.failed and s.at <= rolled_back_at]
        site = await watcher.until({"rolled_back"}, 20)
        await asyncio.to_thread(set_faults, lab.blue.url, error_rate=0.0)
        await asyncio.sleep(1)
        total = load.window(0)
        say("")
        say("SUMMARY")
        say(f"  rollout 1: promoted blue -> green in {first_took:.1f}s, "
            "every step read back from HAProxy")
        say(f"  rollout 2: fault injected into blue at 50%; HAProxy had blue at 0% "
            f"{rolled_back_at - fault_at:.1f}s later (rule: 5xx share > 5% for 2s, "
            "1s scrape, 1s tick)")
        say(f"  requests that failed between the fault and the rollback: {len(failed_during)} "
            f"of {len([s for s in during.samples if s.at <= rolled_back_at])}")
        say(f"  requests through HAProxy in the whole demo: {total.total}, failed: "
            f"{len(total.failed)} (all of them the injected 500s)")
        say("  the runbook's loop checks every 60s: it would have noticed after 0-60s, "
            "and then a person runs the rollback script")
        say(f"  final: {site['phase']}, live {site['live']}, weights "
            f"blue {site['weights']['blue']}% / green {site['weights']['green']}%")
        await router.close()
    except (ApiError, TimeoutError) as exc:
        say(f"the demo failed: {exc}")
        if lab.daemon is not None:
            print(lab.daemon.tail(40), file=sys.stderr)
        return 1
    finally:
        if load is not None:
            await load.stop()
        say("stopping the daemon, Prometheus, HAProxy and the stand-ins (by pid)")
        await asyncio.to_thread(lab.stop)
    try:
        code = await database_act(workdir / "act3", Watcher)
    except (ApiError, TimeoutError, RuntimeError) as exc:
        say(f"the demo failed: {exc}")
        return 1
    say("stopped PostgreSQL, the daemon, Prometheus, HAProxy and the stand-ins (by pid)")
    if code != 0:
        return code
    try:
        code = await traffic_act(workdir / "act4", Watcher)
    except (ApiError, TimeoutError, RuntimeError) as exc:
        say(f"the demo failed: {exc}")
        return 1
    say("stopped the daemon, HAProxy and the stand-ins of rollout 4 (by pid; no Prometheus ran)")
    return code


def run_demo(keep: bool = False) -> int:
    missing = [p for p in ("prometheus", "haproxy") if shutil.which(p) is None]
    if not Path("/usr/lib/postgresql/15/bin/postgres").exists():
        missing.append("postgresql-15")
    if missing:
        print(f"missing programs: {', '.join(missing)}: run `make demo` (it installs them)",
              file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="odoo-watchdog-demo-"))
    try:
        return asyncio.run(scenario(workdir))
    except KeyboardInterrupt:
        return 130
    finally:
        if not keep:
            with contextlib.suppress(OSError):
                shutil.rmtree(workdir, ignore_errors=True)
