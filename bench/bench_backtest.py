"""Benchmark of `odoo-watchdog backtest` (DESIGN.md §16): 20 rules over 7 days of 30 s steps.

The history is synthetic but the Prometheus is real: 40 series (20 metrics x 2 colours, half
gauges, half counters read through rate()), one sample every 30 s for 7 days, written with
`promtool tsdb create-blocks-from openmetrics` into the data dir of a Prometheus 2.42 that
the lab starts on loopback. Each rule has a few injected faults. The backtest then replays the
20 rules for both colours: 40 x 20,161 steps, fetched in chunks of at most 11,000 points.

Measured: wall time of `run_backtest` (fetching, parsing, evaluating), the Python heap's peak
during it (tracemalloc, a separate run since tracing slows it) and the process' peak RSS
(resource.getrusage, whole process with imports). Goal: under 10 s and under 200 MB.

Baselines, honestly labelled: there is no earlier backtest and the runbook has none (an
operator today would read a Grafana panel by eye). What can be compared is this code with its
two choices turned off: one query_range per rule per day instead of chunks of 11,000 points,
and every step through `rules.evaluate` instead of skipping ok steps of an ok rule (the result
is the same, tests/test_backtest.py checks it), and one fetching thread instead of four.

Run: .venv/bin/python bench/bench_backtest.py

A run on the 2-core lab machine (other sessions' tests running alongside):

    history: 40 series x 7 days at 30s written in 1.3s, promtool blocks in 27.8s
    40 replays (rules x colours) x 20161 steps = 806,440 evaluations; faults of gauge_0 on
    green each caught: True
    variant                                         wall s  queries  firing
    backtest (chunks of 11,000 points, 4 threads)     3.91       80     120
    baseline: one query_range per rule per day        4.05      320     120
    baseline: every step through evaluate()           7.51       80     120
    baseline: one fetching thread                     3.56       80     120
    python heap peak during one backtest (tracemalloc): 15.3 MB
    process peak RSS after two backtests (getrusage): 142.5 MB, of which 124.4 MB before any
    work (the imports: watchdog.sources brings scipy and prometheus_api_client)

So: 3.9 s and 142 MB against the goal of 10 s and 200 MB. Chunk planning saves requests (80
against 320) but little time on loopback; the shortcut past quiet steps halves the time; the
four fetching threads gain nothing on loopback with 2 cores (the work is Python's, under the
GIL) and are there for a Prometheus across a network, where each request waits.
"""

from __future__ import annotations

import math
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from watchdog.backtest import Backtest, run_backtest
from watchdog.config import load
from watchdog.lab.prometheus import PrometheusLab

IMPORTED_RSS = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

RULES = 20
DAYS = 7
STEP = 30.0
SERVERS = ("odoo-blue", "odoo-green")


def write_history(path: Path, begin: float, end: float) -> list[tuple[float, float]]:
    """The openmetrics file; returns the faults (start, end) of rule 0 on green."""
    faults: list[tuple[float, float]] = []
    with path.open("w") as out:
        for kind in ("gauge", "counter"):
            name = "bench_gauge" if kind == "gauge" else "bench_requests"
            out.write(f"# TYPE {name} {kind}\n")
            sample = name if kind == "gauge" else f"{name}_total"
            for k in range(RULES // 2):
                for server in SERVERS:
                    # three 15-minute faults per series, spread over the week
                    spots = [begin + (j + 1) * (end - begin) / 4 + k * 3600 for j in range(3)]
                    if k == 0 and server == "odoo-green" and kind == "gauge":
                        faults = [(s, s + 900) for s in spots]
                    total, t = 0.0, begin
                    lines = []
                    while t <= end:
                        bad = any(s <= t < s + 900 for s in spots)
                        if kind == "gauge":
                            value = (5.0 if bad else 0.2 + 0.1 * math.sin(t / 3600))
                            lines.append(f'{sample}{{rule="{k}",server="{server}"}} '
                                         f"{value:.4f} {t:.0f}\n")
                        else:
                            total += (50.0 if bad else 2.0) * STEP
                            lines.append(f'{sample}{{rule="{k}",server="{server}"}} '
                                         f"{total:.0f} {t:.0f}\n")
                        t += STEP
                    out.writelines(lines)
        out.write("# EOF\n")
    return faults


def rule_file(path: Path) -> None:
    rules = ["rules:"]
    for k in range(RULES // 2):
        rules.append(f"  - {{name: gauge_{k}, source: prometheus, max: 1, for: 2m, "
                     f"query: 'bench_gauge{{rule=\"{k}\",server=\"{{{{ server }}}}\"}}'}}")
        rules.append(f"  - {{name: rate_{k}, source: prometheus, max: 10, for: 1m, "
                     "on_fire: pause, query: 'sum(rate(bench_requests_total{rule=\""
                     f"{k}\",server=\"{{{{ server }}}}\"}}[2m]))'}}")
    path.write_text("\n".join(rules) + "\n")


def config_file(path: Path, url: str) -> None:
    path.write_text(f"""\
prometheus: {{url: "{url}"}}
rule_files: [rules.yml]
sites:
  shop:
    router: {{kind: haproxy, socket: /run/haproxy/admin.sock, backend: odoo}}
    colors:
      blue: {{server: odoo-blue, url: http://127.0.0.1:8069}}
      green: {{server: odoo-green, url: http://127.0.0.1:9069}}
""")


def timed(label: str, run: callable, rows: list[tuple[str, ...]]) -> Backtest:  # type: ignore[valid-type]
    started = time.perf_counter()
    result: Backtest = run()
    elapsed = time.perf_counter() - started
    fired = sum(len(r.fired) for r in result.replays)
    rows.append((label, f"{elapsed:.2f}", str(result.requests), str(fired)))
    return result


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-backtest-") as tmp:
        work = Path(tmp)
        now = math.floor(time.time() / STEP) * STEP
        begin, end = now - DAYS * 86400 - 600, now - 60
        started = time.perf_counter()
        faults = write_history(work / "history.om", begin, end)
        written = time.perf_counter() - started
        started = time.perf_counter()
        subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", "-q",
                        str(work / "history.om"), str(work / "tsdb")],
                       check=True, capture_output=True, timeout=600)
        blocks = time.perf_counter() - started
        print(f"history: {2 * RULES} series x {DAYS} days at {STEP:g}s written in {written:.1f}s, "
              f"promtool blocks in {blocks:.1f}s")
        lab = PrometheusLab(work, jobs=[])
        lab.process.argv = [a.replace("retention.time=2h", "retention.time=30d")
                            for a in lab.process.argv]
        rule_file(work / "rules.yml")
        config_file(work / "watchdog.yml", "")  # placeholder until the port is known
        with lab:
            config_file(work / "watchdog.yml", lab.url)
            loaded = load(work / "watchdog.yml")
            start, stop = now - DAYS * 86400, now
            rows: list[tuple[str, ...]] = []
            # warm Prometheus' page cache once, so every variant meets the same state
            run_backtest(loaded, "shop", start, stop, STEP)
            result = timed("backtest (chunks of 11,000 points, 4 threads)",
                           lambda: run_backtest(loaded, "shop", start, stop, STEP), rows)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            timed("baseline: one query_range per rule per day",
                  lambda: run_backtest(loaded, "shop", start, stop, STEP, max_points=2880),
                  rows)
            timed("baseline: every step through evaluate()",
                  lambda: run_backtest(loaded, "shop", start, stop, STEP,
                                       quiet_shortcut=False), rows)
            timed("baseline: one fetching thread",
                  lambda: run_backtest(loaded, "shop", start, stop, STEP, workers=1), rows)
            tracemalloc.start()
            run_backtest(loaded, "shop", start, stop, STEP)
            _, heap_peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        steps = len(result.replays[0].times)
        green = next(r for r in result.replays if (r.name, r.color) == ("gauge_0", "green"))
        caught = all(any(i.start <= f1 and i.end >= f0 for i in green.fired)
                     for f0, f1 in [(f0 + 180, f1) for f0, f1 in faults])
        print(f"{len(result.replays)} replays (rules x colours) x {steps} steps = "
              f"{len(result.replays) * steps:,} evaluations; faults of gauge_0 on green "
              f"each caught: {caught}")
        width = max(len(r[0]) for r in rows)
        print(f"{'variant':<{width}}  {'wall s':>7}  {'queries':>7}  {'firing':>6}")
        for label, wall, queries, fired in rows:
            print(f"{label:<{width}}  {wall:>7}  {queries:>7}  {fired:>6}")
        print(f"python heap peak during one backtest (tracemalloc): {heap_peak / 2**20:.1f} MB")
        print(f"process peak RSS after two backtests (getrusage): {rss:.1f} MB, of which "
              f"{IMPORTED_RSS:.1f} MB before any work (the imports: watchdog.sources brings "
              "scipy and prometheus_api_client)")
        return 0


if __name__ == "__main__":
    sys.exit(main())
