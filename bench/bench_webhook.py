"""How fast does an Alertmanager webhook turn into a rollback, and how many webhooks per second
does the daemon take?

The lab (two Odoo stand-ins behind a real HAProxy 2.6, Prometheus scraping it) with the daemon
as a REAL PROCESS (`python -m watchdog.cli run`, as systemd runs it), talked to over loopback
HTTP with its bearer token. Its own rules cannot fire (`for: 1h`); a canary holds at 50%.

1. Webhook -> rollback. Each run: a rollout to green, at 50% in HAProxy; then one firing
   version-4 payload for green (critical, new fingerprint). Timed from just before the POST:
   the HTTP answer (the daemon decides, stores and sets HAProxy before it answers), and the
   first moment HAProxy's runtime API (`show servers state`, polled by this script) reports
   green at weight 0 / in maintenance. Then the alert is resolved and the next run starts once
   the rollout is rolled_back. For comparison: the answer time of a webhook that decides
   nothing (an alert for another site).
2. Webhooks per second. N payloads of one alert each, distinct fingerprints, alternately for
   an unknown site and with a non-matching severity (so nothing rolls back), from a few
   concurrent keep-alive clients. Every answer is checked, and the daemon's
   `odoo_watchdog_alerts_received_total` must grow by exactly N.

    .venv/bin/python bench/bench_webhook.py [--runs 30] [--count 6000] [--clients 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from watchdog.lab.haproxy import state_rows
from watchdog.lab.stack import LabStack

LATENCY_GOAL = 0.050  # seconds
RATE_GOAL = 1000.0  # webhooks per second
STEPS: list[Any] = [{"weight": 50, "hold": "1h"}, {"weight": 100}]
HAPROXY_MAINT = 0x01
SITE = "/api/v1/sites/odoo"


def alert(status: str, fingerprint: str, *, site: str = "odoo", color: str = "green",
          severity: str = "critical", starts_at: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    return {"status": status, "fingerprint": fingerprint, "startsAt": starts_at,
            "endsAt": "0001-01-01T00:00:00Z",
            "labels": {"alertname": "OdooCandidate5xx", "site": site, "color": color,
                       "severity": severity},
            "annotations": {"summary": "bench"}, "generatorURL": "http://127.0.0.1:9090/"}


def payload(*alerts: dict[str, Any]) -> bytes:
    return json.dumps({"version": "4", "receiver": "watchdog", "status": alerts[0]["status"],
                       "groupKey": "bench", "groupLabels": {}, "commonLabels": {},
                       "commonAnnotations": {}, "externalURL": "http://127.0.0.1:9093",
                       "truncatedAlerts": 0, "alerts": list(alerts)}).encode()


async def green_state(socket_path: Path) -> tuple[int, int]:
    """(weight, admin state) of odoo-green, from HAProxy's runtime API."""
    reader, writer = await asyncio.open_unix_connection(str(socket_path))
    try:
        writer.write(b"show servers state odoo\n")
        await writer.drain()
        data = (await reader.read()).decode()
    finally:
        writer.close()
        await writer.wait_closed()
    row = state_rows(data)["odoo-green"]
    return int(row["srv_uweight"]), int(row["srv_admin_state"])


def green_out(state: tuple[int, int]) -> bool:
    weight, admin = state
    return weight == 0 or bool(admin & HAPROXY_MAINT)


class Bench:
    def __init__(self, lab: LabStack, session: aiohttp.ClientSession) -> None:
        self.lab = lab
        self.session = session
        self.auth = {"Authorization": f"Bearer {lab.token}",
                     "Content-Type": "application/json"}
        assert lab.haproxy is not None
        self.socket = lab.haproxy.admin_socket

    async def post(self, path: str, body: bytes) -> tuple[int, Any]:
        async with self.session.post(self.lab.api_url + path, data=body,
                                     headers=self.auth) as resp:
            return resp.status, await resp.json()

    async def site(self) -> dict[str, Any]:
        async with self.session.get(self.lab.api_url + SITE) as resp:
            data: dict[str, Any] = await resp.json()
            return data

    async def alerts_received(self) -> float:
        async with self.session.get(self.lab.api_url + "/metrics") as resp:
            text = await resp.text()
        return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == "odoo_watchdog_alerts_received_total")

    async def wait(self, what: str, check: Any, timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            got = await check()
            if got:
                return got
            if time.monotonic() > deadline:
                raise RuntimeError(f"not {what} after {timeout:g}s")
            await asyncio.sleep(0.02)

    async def canary_at_half(self) -> None:
        status, body = await self.post(f"{SITE}/rollouts",
                                       json.dumps({"to": "green", "version": "17.0"}).encode())
        if status != 201:
            raise RuntimeError(f"rollout refused: {status} {body}")

        async def at_half() -> bool:
            view = await self.site()
            if view["phase"] not in ("preflight", "progressing"):
                raise RuntimeError(f"rollout went {view['phase']}: {view.get('rollout')}")
            return view["phase"] == "progressing" and (await green_state(self.socket))[0] == 50

        await self.wait("at 50%", at_half)

    async def rollback_run(self, index: int) -> tuple[float, float]:
        await self.canary_at_half()
        fp = f"bench-{index:04d}-{time.time_ns()}"
        body = payload(alert("firing", fp))
        t0 = time.perf_counter()
        async with self.session.post(self.lab.api_url + "/api/v1/alertmanager", data=body,
                                     headers=self.auth) as resp:
            answer = await resp.json()
            status = resp.status
        answered = time.perf_counter() - t0
        while not green_out(await green_state(self.socket)):
            if time.perf_counter() - t0 > 10:
                raise RuntimeError("HAProxy still sends to green 10s after the webhook")
        out = time.perf_counter() - t0
        if status != 200 or answer.get("firing") != 1:
            raise RuntimeError(f"webhook answered {status} {answer}")
        # Resolve it (else the next rollout's preflight would see it firing), then wait for
        # the next tick to see the rollback done.
        status, answer = await self.post("/api/v1/alertmanager", payload(alert("resolved", fp)))
        if status != 200 or answer.get("resolved") != 1:
            raise RuntimeError(f"resolved webhook answered {status} {answer}")

        async def rolled_back() -> bool:
            view = await self.site()
            return bool(view["phase"] == "rolled_back" and view["alerts"] == [])

        await self.wait("rolled back", rolled_back)
        return answered, out

    async def idle_answer(self, count: int) -> list[float]:
        times = []
        for i in range(count):
            body = payload(alert("firing", f"idle-{i}-{time.time_ns()}", site="elsewhere"))
            t0 = time.perf_counter()
            status, answer = await self.post("/api/v1/alertmanager", body)
            times.append(time.perf_counter() - t0)
            if status != 200 or answer.get("unknown_site") != 1:
                raise RuntimeError(f"webhook answered {status} {answer}")
        return times

    async def throughput(self, count: int, clients: int) -> tuple[float, int, float]:
        before = await self.alerts_received()
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(count):
            queue.put_nowait(i)
        ok = done = 0
        bad: list[str] = []
        stamp = time.time_ns()

        async def worker() -> None:
            nonlocal ok, done
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                if i % 2:
                    a = alert("firing", f"t-{stamp}-{i}", site=f"elsewhere-{i % 7}")
                    key = "unknown_site"
                else:
                    a = alert("firing", f"t-{stamp}-{i}", severity="info")
                    key = "unmatched"
                status, answer = await self.post("/api/v1/alertmanager", payload(a))
                if status == 200 and answer.get(key) == 1:
                    ok += 1
                else:
                    bad.append(f"{status} {answer}")
                done += 1
                if done % 1000 == 0:
                    print(f"  ... {done}/{count} sent", flush=True)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - t0
        if bad:
            print(f"  {len(bad)} bad answers, first: {bad[0]}")
        grown = await self.alerts_received() - before
        return elapsed, ok, grown


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def ms(value: float) -> str:
    return f"{value * 1000:8.1f}"


async def run(args: argparse.Namespace, workdir: Path) -> int:
    print(f"starting the lab in {workdir} (stand-ins, HAProxy, Prometheus, the daemon as a "
          f"process) ...", flush=True)
    lab = LabStack(workdir, steps=STEPS, interval="1s", bake="1h", keep_previous="1h",
                   error_for="1h", health_for="1h")
    try:
        lab.start()
        assert lab.daemon is not None
        print(f"daemon pid {lab.daemon.pid}, API {lab.api_url}", flush=True)
        connector = aiohttp.TCPConnector(limit=max(args.clients, 2))
        async with aiohttp.ClientSession(connector=connector) as session:
            bench = Bench(lab, session)
            print(f"1. webhook -> rollback, {args.runs} runs", flush=True)
            answered: list[float] = []
            out: list[float] = []
            for i in range(args.runs):
                a, o = await bench.rollback_run(i)
                answered.append(a)
                out.append(o)
                print(f"  run {i + 1:2d}/{args.runs}: answer {a * 1000:6.1f} ms, "
                      f"HAProxy green out {o * 1000:6.1f} ms", flush=True)
            idle = await bench.idle_answer(200)
            print(f"2. webhooks per second: {args.count} payloads, {args.clients} clients",
                  flush=True)
            elapsed, ok, grown = await bench.throughput(args.count, args.clients)
    finally:
        lab.stop()
        print("lab stopped", flush=True)

    rate = args.count / elapsed
    lat_met = statistics.median(out) <= LATENCY_GOAL
    rate_met = rate >= RATE_GOAL and ok == args.count and grown == args.count
    width = 58
    print()
    print("odoo-watchdog webhook benchmark (daemon as a real process, loopback, HAProxy 2.6)")
    print(f"{'':{width}} {'median':>8} {'p95':>8} {'max':>8}")
    print(f"{'webhook -> rollback, ' + str(args.runs) + ' runs (ms)':{width}}")
    print(f"{'  HTTP answer (decided, stored, HAProxy set)':{width}} "
          f"{ms(statistics.median(answered))} {ms(pct(answered, 0.95))} {ms(max(answered))}")
    print(f"{'  HAProxy reports green at weight 0 (polled)':{width}} "
          f"{ms(statistics.median(out))} {ms(pct(out, 0.95))} {ms(max(out))}")
    print(f"{'  (a webhook that decides nothing: answer)':{width}} "
          f"{ms(statistics.median(idle))} {ms(pct(idle, 0.95))} {ms(max(idle))}")
    print(f"{'webhooks per second, ' + str(args.count) + ' payloads, ' + str(args.clients) + ' clients':{width}} "  # noqa: E501
          f"{rate:8.0f}/s in {elapsed:.2f}s")
    print(f"{'  answered 200 as expected':{width}} {ok:8d} of {args.count}")
    print(f"{'  counted by odoo_watchdog_alerts_received_total':{width}} {grown:8.0f} of "
          f"{args.count} ({'no loss' if grown == args.count else 'LOSS'})")
    print()
    print(f"goal: webhook -> HAProxy weight 0 <= {LATENCY_GOAL * 1000:.0f} ms (median): "
          f"{'met' if lat_met else 'NOT met'} ({statistics.median(out) * 1000:.1f} ms; "
          f"p95 {pct(out, 0.95) * 1000:.1f} ms "
          f"{'also within' if pct(out, 0.95) <= LATENCY_GOAL else 'NOT within'})")
    print(f"goal: >= {RATE_GOAL:.0f} webhooks/s, none lost: {'met' if rate_met else 'NOT met'} "
          f"({rate:.0f}/s, {grown:.0f} counted of {args.count})")
    return 0 if lat_met and rate_met else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30, help="rollbacks to time (>= 20)")
    parser.add_argument("--count", type=int, default=6000, help="payloads for the rate (>= 5000)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-webhook-") as tmp:
        return asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
