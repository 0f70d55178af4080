"""Fault -> rollback time: odoo-watchdog in the lab against the runbook's Phase 5 monitoring loop.

The lab (`watchdog.lab.stack.LabStack`): two Odoo stand-ins behind a real HAProxy 2.6, Prometheus
2.42 scraping HAProxy's exporter every 1 s, the daemon as a real process ticking every 1 s with
the rule `error_rate` (5xx share of the candidate from HAProxy's exporter over a 3 s rate window,
max 0.05, `for: 0s`) and the lab's `health` rule (/web/health, `for: 2s`). Constant load goes
through the proxy: a new connection per request, no cookie.

Each run deploys green, waits until green serves 50% with every rule ok, makes green answer 50%
of its requests with HTTP 500, and measures until HAProxy itself (runtime API, polled every
50 ms) reports green at weight 0, counting the requests that failed through the proxy in
between. One lab serves every run: after a rollback blue is live again and the next run is a
new rollout blue -> green.

The runbook (`runbook.md`, Phase 5: Monitoring) checks, then `sleep 60`, 15 times. Its numbers
are derived from the script, not run for minutes: its check command is timed once here.

    .venv/bin/python bench/bench_rollback.py [--runs 7]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from watchdog.lab.haproxy import colour_servers
from watchdog.lab.load import LoadClient
from watchdog.lab.stack import LabStack
from watchdog.lab.standin import clear_faults, set_faults

SCRAPE, TICK, ERROR_FOR, WINDOW = "1s", "1s", "0s", "3s"
FAULT = 0.5  # share of green's answers that become HTTP 500
GOAL = 3.0  # seconds, median fault -> rollback
POLL = 0.05  # seconds between runtime API reads
RUNBOOK_SLEEP = 60.0  # `sleep 60` between checks
RUNBOOK_CHECKS = 15  # `for i in {1..15}`


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def green_weight(sock: Path) -> int:
    """Green's weight in force, from HAProxy's `show servers state` (not from the daemon)."""
    return colour_servers(sock)["green"]["weight"]


@dataclass
class Run:
    seconds: float
    failed: int
    requests: int
    rule: str
    value: float | None


async def site(lab: LabStack) -> dict[str, Any]:
    return await asyncio.to_thread(lab.site)


async def wait_until(lab: LabStack, ok: Any, what: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        view = await site(lab)
        if ok(view):
            return view
        if time.monotonic() > deadline:
            events = "; ".join(f"{e['kind']}: {e['message']}" for e in view["events"][-5:])
            raise TimeoutError(f"not {what} after {timeout:g}s (phase {view['phase']}; {events})")
        await asyncio.sleep(0.1)


def green_at_50_and_clean(view: dict[str, Any]) -> bool:
    ro = view["rollout"]
    if view["phase"] in ("rolled_back", "aborted"):
        raise RuntimeError(f"the rollout ended {view['phase']} before the fault: "
                           f"{ro and ro['reason']}")
    rules = {r["name"]: r for r in view["rules"] if r["color"] == "green"}
    return (view["phase"] == "progressing" and ro is not None and ro["step"] == 2
            and (view["actual_weights"] or {}).get("green") == 50
            and bool(rules) and all(r["state"] == "ok" for r in rules.values())
            and rules["error_rate"]["value"] == 0)


async def one_run(lab: LabStack, load: LoadClient, number: int, runs: int) -> Run:
    assert lab.haproxy is not None
    await asyncio.to_thread(lab.client().post, "/api/v1/sites/odoo/rollouts",
                            {"to": "green", "version": "17.0"})
    await wait_until(lab, green_at_50_and_clean, "green at 50% with every rule ok", 30)
    # The state above is seen just after a tick: without a random delay every fault would land
    # at the same phase of the tick and scrape cycles (1 s each), which biases the result.
    await asyncio.sleep(random.uniform(0.0, 1.0))
    mark = load.mark()
    await asyncio.to_thread(set_faults, lab.green.url, error_rate=FAULT)
    injected = time.monotonic()
    while green_weight(lab.haproxy.admin_socket) != 0:
        if time.monotonic() - injected > 60:
            raise TimeoutError("no rollback within 60 s of the fault")
        await asyncio.sleep(POLL)
    rolled_back = time.monotonic()
    between = [s for s in load.window(mark).samples if injected <= s.at <= rolled_back]
    view = await wait_until(lab, lambda v: v["phase"] == "rolled_back", "rolled_back", 10)
    event = next(e for e in reversed(view["events"]) if e["kind"] == "rolling_back")
    run = Run(rolled_back - injected, sum(1 for s in between if s.failed), len(between),
              event["rule"] or "?", event["value"])
    value = "no data" if run.value is None else f"{run.value:.3f}"
    say(f"run {number}/{runs}: HAProxy had green at 0 {run.seconds:.2f} s after the fault "
        f"(rule {run.rule}, value {value}); {run.failed} of {run.requests} requests failed")
    await asyncio.to_thread(clear_faults, lab.green.url)
    # Let green's errors leave the rate window before the next canary is judged.
    await asyncio.sleep(4.0)
    return run


def time_runbook_check(lab: LabStack, tries: int = 5) -> float:
    """The loop body of Phase 5 once, against the lab's green: its health check, and its
    log check with the stand-in's log file in place of `docker-compose logs` (no compose here).
    """
    script = (f"curl -sf {lab.green.url}/web/health >/dev/null || true; "
              f"ERROR_COUNT=$(tail -n 100 {lab.green.log_file} | grep -c ERROR || true); "
              'if [ "$ERROR_COUNT" -gt 5 ]; then echo "High error count: $ERROR_COUNT"; fi')
    took = []
    for _ in range(tries):
        started = time.monotonic()
        subprocess.run(["bash", "-c", script], check=False, capture_output=True, timeout=30)
        took.append(time.monotonic() - started)
    return statistics.median(took)


def runbook_rows(check: float, fault: float) -> list[tuple[str, float, float, float]]:
    """(label, median, best, worst) seconds from the fault to the runbook noticing it.

    The loop is `check; sleep 60`: one check every period P = 60 s + check time. A fault lands
    uniformly within a period, so the next check comes U ~ Uniform(0, P) later, and it ends
    `check` after it starts.
    - If that check catches the fault: D = U + check; median P/2 + check, worst P + check.
    - Its only check that acts is `curl -sf .../web/health` (the ERROR count is only echoed).
      With the stand-in's fault, /web/health fails with probability p = `fault` per check, so
      D = U + K*P + check with K ~ Geometric(p) missed checks before the first failing one.
      Median: solve P(D <= t) = 1/2 numerically; the worst is unbounded while the loop runs,
      and once its 15 checks are done nothing watches at all.
    """
    period = RUNBOOK_SLEEP + check
    rows = [("runbook loop, first check catches it", period / 2 + check, check,
             period + check)]

    def cdf(t: float) -> float:
        # P(U + K*P <= t - check), U uniform on [0, P), K geometric on {0, 1, ...}
        x = t - check
        if x <= 0:
            return 0.0
        total, k = 0.0, 0
        while k * period <= x and k < RUNBOOK_CHECKS:
            covered = min(1.0, (x - k * period) / period)
            total += (1 - fault) ** k * fault * covered
            k += 1
        return total

    lo, hi = check, check + RUNBOOK_CHECKS * period
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < 0.5 else (lo, mid)
    p99 = next((t for t in (check + i * 0.5 for i in range(4000)) if cdf(t) >= 0.99), math.inf)
    rows.append((f"runbook loop, health check fails {fault:.0%} of the time", hi, check, p99))
    return rows


def table(runs: list[Run], check: float, req_per_s: float) -> None:
    secs = [r.seconds for r in runs]
    med = statistics.median(secs)
    failed = statistics.median(r.failed for r in runs)
    print()
    print(f"fault -> rollback: green at 50% starts answering {FAULT:.0%} HTTP 500 ({len(runs)} "
          f"runs, load {req_per_s:.0f} req/s through HAProxy)")
    print()
    head = f"{'':<58}{'median':>9}{'min':>9}{'max':>10}{'failed req':>12}"
    print(head)
    print("-" * len(head))
    label = (f"odoo-watchdog (scrape {SCRAPE}, tick {TICK}, for {ERROR_FOR}, "
             f"window {WINDOW})")
    print(f"{label:<58}{med:>8.2f}s{min(secs):>8.2f}s{max(secs):>9.2f}s{failed:>12.0f}")
    for name, median, best, worst in runbook_rows(check, FAULT):
        # In the runbook, green already serves 100% while it is monitored (blue-green switch):
        # every request meets the fault, against 50% of them in the canary above.
        lost = median * req_per_s * FAULT
        worst_text = f"{worst:>9.1f}s" if math.isfinite(worst) else f"{'unbounded':>10}"
        print(f"{name + ' (derived)':<58}{median:>8.1f}s{best:>8.2f}s{worst_text}"
              f"{lost:>12.0f}")
    print("-" * len(head))
    rules = sorted({r.rule for r in runs})
    print(f"odoo-watchdog: runs {', '.join(f'{s:.2f}' for s in secs)} s; rule that fired: "
          f"{', '.join(rules)}; failed requests per run "
          f"{', '.join(str(r.failed) for r in runs)}")
    print(f"runbook: derived from the script, not run for minutes. Its check (curl /web/health "
          f"+ tail -n 100 log | grep -c ERROR, in place of docker-compose logs) timed here: "
          f"{check * 1000:.0f} ms. Period = sleep {RUNBOOK_SLEEP:g} s + check. The first row "
          f"assumes the first check after the fault sees it (fault uniform in the period: "
          f"median P/2, worst P); the second uses the only check that triggers its rollback, "
          f"curl -sf /web/health, which this fault fails {FAULT:.0%} of the time (max = 99th "
          f"percentile; the true worst is unbounded, and after 15 checks nothing watches). "
          f"Its failed requests are estimated as median time x {req_per_s:.0f} req/s x "
          f"{FAULT:.0%}, with green at 100% as in its blue-green switch; then a person still "
          f"runs the rollback script.")
    print()
    verdict = "met" if med <= GOAL else "NOT met"
    print(f"goal: median fault -> rollback <= {GOAL:g} s: {verdict} (median {med:.2f} s)")


async def bench(runs: int, workdir: Path) -> int:
    lab = LabStack(workdir, interval=TICK, scrape=SCRAPE, error_for=ERROR_FOR, window=WINDOW,
                   steps=[{"weight": 10, "hold": "1s"}, {"weight": 50, "hold": "10m"},
                          {"weight": 100}])
    say("starting the lab: two stand-ins, HAProxy 2.6, Prometheus 2.42, the daemon")
    try:
        await asyncio.to_thread(lab.start)
        results: list[Run] = []
        async with LoadClient(lab.proxy_url, "/web/login", concurrency=4,
                              max_seconds=600) as load:
            await load.wait_count(50)
            started = time.monotonic()
            for number in range(1, runs + 1):
                results.append(await one_run(lab, load, number, runs))
            req_per_s = len(load.since(started).samples) / (time.monotonic() - started)
        say("timing the runbook's check command")
        check = await asyncio.to_thread(time_runbook_check, lab)
    finally:
        say("stopping the daemon, Prometheus, HAProxy and the stand-ins (by pid)")
        await asyncio.to_thread(lab.stop)
    table(results, check, req_per_s)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="rollbacks to measure (default 7)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    missing = [p for p in ("haproxy", "prometheus", "curl") if shutil.which(p) is None]
    if missing:
        print(f"missing programs: {', '.join(missing)}", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="bench-rollback-"))
    try:
        return asyncio.run(bench(args.runs, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
