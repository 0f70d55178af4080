"""Does the daemon's memory grow with time? N sites ticking every second for a long while.

The lab's real programs (two Odoo stand-ins behind one HAProxy, Prometheus scraping HAProxy's
exporter, HAProxy's access log over UDP syslog to the daemon, a light load of requests through
HAProxy) and the daemon as a real process, started as `LabStack` starts it, with a config of
N sites (default 10), all on that HAProxy's backend, each ticking every second with the lab's
two rules (an http rule on the colour's `/web/health`, a Prometheus rule on HAProxy's 5xx
share). Each minute the daemon's RSS (`VmRSS` of /proc/<pid>/status) and CPU (utime + stime
of /proc/<pid>/stat) are sampled and printed; at the end, a table with the least-squares slope
of RSS after the first `--warmup` minutes, in MB per hour.

Goal (issue 13): after the first 5 minutes, growth under 1 MB per hour with 10 sites, and RSS
under 80 MB.

    .venv/bin/python bench/bench_soak.py [--sites 10] [--minutes 30] [--warmup 5]
        [--load 10] [--poll 5] [--alerts 0]   # requests/s, seconds between reads, alerts/s
        [--code DIR]   # run the daemon from another checkout (a `git worktree`), as a baseline

Measured (2 cores, Python 3.11). `--minutes 30`, 10 idle sites, 10 requests/s through
HAProxy, /metrics and the sites read every 5 s; every 5th minute shown. The run's daemon was
the code of 0fd7798, before the two fixes below, which an idle run does not reach:

    minute   RSS MB    CPU s   CPU %
         0     74.8      0.9    nan%
         1     75.6      2.6    2.8%
         2     75.7      4.3    2.8%
         3     75.9      5.8    2.6%
         4     76.0      7.4    2.6%
         5     76.1      9.0    2.8%
        10     76.4     17.2    2.6%
        15     76.5     25.6    2.7%
        20     76.7     33.8    2.5%
        21     76.8     35.4    2.6%
        25     76.8     41.3    2.7%
        30     76.8     49.2    2.7%
    slope after minute 5: +1.48 MB/hour over 26 samples (goal under 1 MB/hour with 10 sites)
    RSS peak 76.8 MB (goal under 80 MB); CPU 2.7% of a core on average (10 sites at 1 s ticks)
    verdict: FAIL

RSS climbs 1.3 MB in the first 5 minutes, 0.7 MB more up to minute 21, then stays at 76.8 MB for
the last 10 minutes: the slope over minutes 5-30 (+1.48 MB/hour) is that late warm-up, not a
leak. In the same setting, the daemon in this process under tracemalloc gained no Python heap
over 4 minutes (0.093 -> 0.107 MB traced) and 760 ticks (tests/test_memory_soak.py). The 1 MB/hour
goal is not met by this run's least-squares figure; a run long enough to leave the warm-up out
(`--warmup 20`) would judge the plateau.

The growths found and fixed, each with a test in tests/test_memory_soak.py:

- Alertmanager fingerprints kept to tell duplicates: every distinct alert ever heard of, until
  100,000 (16 MB). `--alerts 200 --minutes 6 --warmup 1 --poll 0 --load 0`, previous code
  (`--code` on a worktree of 835c4d0): 75.1 -> 93.8 MB, +180 MB/hour; now: 75.2 -> 78.0 MB, flat
  (77.9, 77.9, 78.0, 78.0) from minute 3. Now at most 5,000 besides the firing ones.
- A reload that removed a rule left its `odoo_watchdog_rule_evaluations_total` series: rule files
  regenerated with new names added three series per rule and reload.

Before the fixes, `--minutes 10` idle: 74.4 -> 76.4 MB, +1.87 MB/hour after minute 5, flat at
76.4 from minute 6.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from watchdog.lab.procs import ManagedProcess, http_ok
from watchdog.lab.stack import LabStack

GOAL_SLOPE = 1.0  # MB per hour, after the warm-up
GOAL_RSS = 80.0  # MB


def rss_mb(pid: int) -> float:
    """VmRSS of a process, in MB (10^6 bytes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (minutes, MB) points, in MB per hour."""
    if len(points) < 2:
        return float("nan")
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    sxy = sum((x - mx) * (y - my) for x, y in points)
    return sxy / sxx * 60 if sxx else float("nan")


def many_sites(lab: LabStack, count: int) -> None:
    """The lab's config with its one site copied `count` times (site0 .. siteN-1)."""
    config = yaml.safe_load(lab.config_path.read_text())
    one = config["sites"].pop("odoo")
    config["sites"] = {f"site{i}": copy.deepcopy(one) for i in range(count)}
    lab.config_path.write_text(yaml.safe_dump(config, sort_keys=False))


def load(url: str, every: float, stop: threading.Event) -> None:
    """A light, steady load through HAProxy: access-log lines and Prometheus series move."""
    while not stop.wait(every):
        try:
            with urllib.request.urlopen(url + "/web/health", timeout=2) as resp:  # noqa: S310
                resp.read()
        except OSError:
            pass


def poll(api: str, every: float, stop: threading.Event) -> None:
    """What watches the daemon: Prometheus scraping /metrics, an operator's `status`."""
    while not stop.wait(every):
        for path in ("/metrics", "/api/v1/sites", "/api/v1/sites/site0", "/healthz"):
            try:
                with urllib.request.urlopen(api + path, timeout=5) as resp:  # noqa: S310
                    resp.read()
            except OSError:
                pass


def alerts(lab: LabStack, per_second: int, sites: int, stop: threading.Event) -> None:
    """Alertmanager's webhook with `per_second` alerts never seen before, resolved, each
    second (pods that come and go): what the daemon remembers of them must stay bounded."""
    client = lab.client()
    n = 0
    while not stop.wait(1.0):
        batch = []
        for _ in range(per_second):
            n += 1
            batch.append({"status": "resolved", "fingerprint": f"{n:016x}",
                          "startsAt": "2026-12-01T08:00:00Z", "endsAt": "2026-12-01T08:05:00Z",
                          "labels": {"alertname": "PodDown", "severity": "critical",
                                     "site": f"site{n % sites}",
                                     "pod": f"pod-{n}"}, "annotations": {}})
        try:
            client.post("/api/v1/alertmanager", {"version": "4", "status": "resolved",
                                                 "alerts": batch})
        except Exception as exc:  # the bench goes on; the daemon's RSS tells
            print(f"  alertmanager webhook: {exc}", flush=True)


def start_daemon(lab: LabStack, code: Path | None, extra_env: dict[str, str]) -> ManagedProcess:
    if code is None and not extra_env:
        return lab.start_daemon()
    env = {**os.environ, **extra_env}
    if code is not None:
        env["PYTHONPATH"] = str(code)
    lab.daemon = ManagedProcess(
        "odoo-watchdog", [sys.executable, "-m", "watchdog.cli", "run", "-c",
                          str(lab.config_path)],
        log_path=lab.workdir / "daemon.log", env=env, cwd=code or Path.cwd(),
        ready=lambda: http_ok(f"{lab.api_url}/healthz"), ready_timeout=30)
    lab.daemon.start()
    return lab.daemon


def table(samples: list[tuple[float, float, float]], warmup: float, sites: int) -> str:
    """The samples (minute, RSS MB, CPU s) with the slope and the verdict."""
    lines = [f"{'minute':>6}{'RSS MB':>9}{'CPU s':>9}{'CPU %':>8}"]
    prev: tuple[float, float, float] | None = None
    for minute, rss, cpu in samples:
        share = ((cpu - prev[2]) / ((minute - prev[0]) * 60) * 100) if prev else float("nan")
        lines.append(f"{minute:>6.0f}{rss:>9.1f}{cpu:>9.1f}{share:>7.1f}%")
        prev = (minute, rss, cpu)
    after = [(m, r) for m, r, _ in samples if m >= warmup]
    slope = slope_per_hour(after)
    peak = max(r for _, r, _ in samples)
    total_cpu = samples[-1][2] - samples[0][2]
    span = (samples[-1][0] - samples[0][0]) * 60
    ok = slope < GOAL_SLOPE and peak < GOAL_RSS
    lines += [
        f"slope after minute {warmup:g}: {slope:+.2f} MB/hour over {len(after)} samples "
        f"(goal under {GOAL_SLOPE:g} MB/hour with 10 sites)",
        f"RSS peak {peak:.1f} MB (goal under {GOAL_RSS:g} MB); "
        f"CPU {total_cpu / span * 100 if span else float('nan'):.1f}% of a core on average "
        f"({sites} sites at 1 s ticks)",
        f"verdict: {'PASS' if ok else 'FAIL'}",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=5.0,
                        help="minutes left out of the slope")
    parser.add_argument("--sample", type=float, default=60.0, help="seconds between samples")
    parser.add_argument("--load", type=float, default=10.0,
                        help="requests per second through HAProxy (0: none)")
    parser.add_argument("--poll", type=float, default=5.0,
                        help="seconds between two reads of /metrics and the sites (0: none)")
    parser.add_argument("--alerts", type=int, default=0,
                        help="distinct resolved Alertmanager alerts posted per second")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for the daemon (to compare settings)")
    parser.add_argument("--code", type=Path, default=None,
                        help="run the daemon from this checkout (e.g. a git worktree)")
    args = parser.parse_args()

    stop = threading.Event()
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        lab = LabStack(Path(tmp) / "lab", interval="1s", access_log=True)
        try:
            lab.start(daemon=False)
            many_sites(lab, args.sites)
            daemon = start_daemon(lab, args.code, dict(e.split("=", 1) for e in args.env))
            assert daemon.pid is not None
            pid = daemon.pid
            if args.load > 0:
                threading.Thread(target=load, args=(lab.proxy_url, 1 / args.load, stop),
                                 daemon=True).start()
            if args.poll > 0:
                threading.Thread(target=poll, args=(lab.api_url, args.poll, stop),
                                 daemon=True).start()
            if args.alerts > 0:
                threading.Thread(target=alerts, args=(lab, args.alerts, args.sites, stop),
                                 daemon=True).start()
            print(f"daemon pid {pid} from {args.code or 'this checkout'}: {args.sites} sites at "
                  f"1 s ticks for {args.minutes:g} min, a sample every {args.sample:g} s",
                  flush=True)
            started = time.monotonic()
            samples: list[tuple[float, float, float]] = []
            while True:
                minute = (time.monotonic() - started) / 60
                if not daemon.running():
                    print(daemon.tail(), file=sys.stderr)
                    raise SystemExit("the daemon stopped")
                samples.append((minute, rss_mb(pid), cpu_seconds(pid)))
                print(f"  minute {minute:5.1f}: RSS {samples[-1][1]:6.1f} MB, "
                      f"CPU {samples[-1][2]:7.1f} s", flush=True)
                if minute >= args.minutes - 1e-6:
                    break
                time.sleep(max(0.0, started + len(samples) * args.sample - time.monotonic()))
        finally:
            stop.set()
            lab.stop()
    print()
    print(table(samples, args.warmup, args.sites))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
