"""How much does one tick of 1,000 Prometheus rules cost?

Starts the lab's real Prometheus scraping an exporter with one series per rule, then runs
ticks of the daemon's evaluation path (the prometheus source + the evaluator) and prints wall
time, rules per second and CPU seconds per tick, for this process and for Prometheus.

Side by side, the runbook's way of checking a number: one `curl` to the query API per check,
from a bash loop (the runbook's scripts call curl once per check and compare in bash).

    .venv/bin/python bench/bench_rules_tick.py [--rules 1000] [--ticks 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, start_http_server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from watchdog.config import PrometheusRule
from watchdog.lab.procs import free_port
from watchdog.lab.prometheus import PrometheusLab, ScrapeJob
from watchdog.rules import RuleStatus, State, evaluate
from watchdog.sources.base import Target
from watchdog.sources.prometheus import PrometheusSource

TARGET = Target(site="odoo", color="green", server="odoo-green", backend="odoo",
                url="http://127.0.0.1:9069", interval=10.0)


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and its reaped children), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(x) for x in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def make_rules(count: int) -> list[PrometheusRule]:
    return [
        PrometheusRule.model_validate({
            "name": f"bench_{i}",
            "source": "prometheus",
            "query": f'lab_bench_value{{site="{{{{ site }}}}",color="{{{{ color }}}}",i="{i}"}}',
            "max": 0.5,
            "for": "30s",
        })
        for i in range(count)
    ]


async def ticks(
    url: str, rules: list[PrometheusRule], count: int, prom_pid: int
) -> list[dict[str, float]]:
    source = PrometheusSource(url, timeout=5)
    statuses = {r.name: RuleStatus() for r in rules}
    out = []
    try:
        for _ in range(count):
            wall0, cpu0 = time.perf_counter(), time.process_time()
            prom0 = proc_cpu_seconds(prom_pid)
            measurements = await asyncio.gather(*(source.measure(r, TARGET) for r in rules))
            now = time.monotonic()
            for rule, m in zip(rules, measurements, strict=True):
                statuses[rule.name] = evaluate(rule, statuses[rule.name], m, now)
            wall = time.perf_counter() - wall0
            cpu = time.process_time() - cpu0
            prom = proc_cpu_seconds(prom_pid) - prom0
            errors = sum(1 for m in measurements if m.error or m.value is None)
            breaching = sum(1 for s in statuses.values() if s.state is not State.OK)
            out.append({"wall": wall, "cpu": cpu, "prom": prom, "errors": errors,
                        "breaching": breaching})
    finally:
        await source.close()
    return out


def bash_baseline(url: str, count: int) -> dict[str, float]:
    """The runbook's way: one curl per check in a bash loop, the threshold compared in bash."""
    lines = []
    for i in range(count):
        q = urllib.parse.quote(f'lab_bench_value{{site="odoo",color="green",i="{i}"}}')
        lines.append(f'v=$(curl -s "{url}/api/v1/query?query={q}" | grep -o \'"[0-9.]*"\\]\' '
                     f'| tr -d \'"]\'); [ "${{v%%.*}}" -gt 0 ] 2>/dev/null && n=$((n+1))')
    script = "n=0\n" + "\n".join(lines) + "\necho $n\n"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall0 = time.perf_counter()
    subprocess.run(["bash", "-s"], input=script.encode(), check=True, capture_output=True)
    wall = time.perf_counter() - wall0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rules", type=int, default=1000)
    parser.add_argument("--ticks", type=int, default=5)
    parser.add_argument("--interval", type=float, default=10.0,
                        help="tick interval to cost against")
    args = parser.parse_args()

    registry = CollectorRegistry()
    gauge = Gauge("lab_bench_value", "bench series", ["site", "color", "i"], registry=registry)
    for i in range(args.rules):
        gauge.labels(site="odoo", color="green", i=str(i)).set(1.0 if i % 10 == 0 else 0.1)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    with tempfile.TemporaryDirectory(prefix="bench-rules-") as tmp:
        lab = PrometheusLab(Path(tmp), scrape_interval="1s",
                            jobs=[ScrapeJob("bench", [f"127.0.0.1:{port}"])])
        print(f"starting Prometheus on {lab.url} with {args.rules} series ...", flush=True)
        with lab:
            lab.wait_for("count(lab_bench_value)", lambda r: bool(r) and
                         int(float(r[0]["value"][1])) == args.rules, timeout=60)
            assert lab.pid is not None
            rules = make_rules(args.rules)
            print(f"running {args.ticks} ticks of {args.rules} rules ...", flush=True)
            results = asyncio.run(ticks(lab.url, rules, args.ticks, lab.pid))
            print(f"running the bash/curl baseline over {args.rules} checks ...", flush=True)
            base = bash_baseline(lab.url, args.rules)
    server.shutdown()
    thread.join(timeout=5)

    steady = results[1:] or results  # the first tick opens connections and warms up
    wall = sorted(r["wall"] for r in steady)[len(steady) // 2]
    cpu = sorted(r["cpu"] for r in steady)[len(steady) // 2]
    prom = sorted(r["prom"] for r in steady)[len(steady) // 2]
    share = cpu / args.interval * 100
    print()
    print(f"{args.rules} Prometheus rules per tick, median of {len(steady)} ticks "
          f"(cost against a {args.interval:g}s interval)")
    print(f"{'way':<34}{'wall s/tick':>12}{'rules/s':>10}{'CPU s/tick':>12}{'% of a core':>13}"
          f"{'Prom CPU s':>12}")
    print(f"{'odoo-watchdog (source+evaluator)':<34}{wall:>12.3f}{args.rules / wall:>10.0f}"
          f"{cpu:>12.3f}{share:>12.1f}%{prom:>12.3f}")
    print(f"{'runbook: bash + curl per check':<34}{base['wall']:>12.3f}"
          f"{args.rules / base['wall']:>10.0f}{base['cpu']:>12.3f}"
          f"{base['cpu'] / args.interval * 100:>12.1f}%{'':>12}")
    print()
    last = results[-1]
    print(f"last tick: {last['errors']:.0f} errors/no-data, {last['breaching']:.0f} rules "
          f"pending or firing (expected {len(range(0, args.rules, 10))})")
    goal = "met" if share < 10 else "NOT met"
    print(f"goal: a tick of {args.rules} rules every {args.interval:g}s under 10% of one core: "
          f"{goal} ({share:.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
