"""Many sites on one daemon: does a site's tick cost more as sites are added?

One real `odoo-watchdog run` process with N sites (10, 100, 500), each ticking every second
with two rules: an http rule (GET the colour's /web/health on a stand-in) and a Prometheus
rule (the 5xx rate of the colour's server, on HAProxy's exporter, from the lab's Prometheus
2.42). One HAProxy 2.6 holds a backend per site (`watchdog.lab.multisite`, stats maxconn
2000: 500 routers read it at the same moment; no health checks, so HAProxy does not add 500
requests a second to the stand-ins); a few stand-in pairs serve every site's colours
(site i on pair i mod `--standins`). After the daemon has ticked every site and a warm-up,
over `--seconds`:

- CPU share of one core of the daemon (utime + stime of /proc/PID/stat), its RSS (VmRSS);
- ticks per second expected (N / interval) and seen (the increase of
  `odoo_watchdog_rule_evaluations_total`, two evaluations a tick), and how old the oldest
  site's `last_tick` is at the end (a daemon that cannot keep up falls behind);
- CPU ms per site-tick: the CPU of the window over the ticks seen. Flat across N is linear
  growth; a rising figure is a cost that grows with the number of sites.

The baseline side by side: `--baseline DIR` runs the same bench, on the same lab, with the
daemon's code from DIR (a `git worktree` of the commit before the fixes); both rows per N,
the two daemons one after the other on a lab of the same size.

    .venv/bin/python bench/bench_scale.py [--sites 10,100,500] [--seconds 30] [--warmup 10]
        [--baseline /tmp/wd-base] [--code DIR] [--standins 2] [--loop uvloop] [--parts 2000]
    .venv/bin/python bench/bench_scale.py --quick      # 10 and 50 sites, a few seconds each

Goal (issue part 5): 500 sites at a 1 s interval under 50% of one core and under 250 MB RSS,
the cost per site-tick flat from 10 to 500 sites.

    .venv/bin/python bench/bench_scale.py --sites 500 --daemons 3   # one PostgreSQL store
    .venv/bin/python bench/bench_scale.py --sites 100 --profile /tmp/p.prof  # pstats of the loop

Measured (2 cores, quiet during the run; Python 3.11, HAProxy 2.6.12, Prometheus 2.42; 30 s
after a 10 s warm-up; `--baseline` c03f071 with `--parts 2000`). `before`: c03f071, the
daemon after the first round of fixes (below); `after`: the Prometheus query with aiohttp on
kept connections instead of prometheus-api-client in threads, the http probe as one raw
HTTP/1.1 exchange instead of aiohttp's client:

    code     sites  cpu % core   rss MB   ticks/s    seen/s ms/site-tk  oldest s eval err  rtr err
                                         expected                      last_tick (window)
    before      10        3.3%    151.0        10      10.0      3.269       0.1        0        0
    after       10        1.5%    150.4        10      10.0      1.468       0.1        0        0
    before     100       24.2%    156.6       100      99.7      2.423       0.7        0        0
    after      100       14.2%    155.5       100      99.7      1.427       0.6        0        0
    before     500       90.8%    177.2       500     459.6      1.976       1.7        0        0
    after      500       62.5%    178.7       500     501.9      1.246       1.0        0        0

    part (--parts: 2000 calls, 50 at a time, CPU of the whole process)        cpu ms/call
    prometheus rule: aiohttp, kept connections (the daemon's source)               0.104
      before: prometheus-api-client in a pool of 8 threads                         0.836
    http rule: a raw GET, a new connection each (the daemon's source)              0.147
      before: aiohttp's client, a new connection each                              0.256
    router read: HAProxy state + the backend's stats, one round trip               0.140

Runs of the same code differ by up to 10% at 500 sites (58-72% of a core for `after` over
five runs this session): compare rows of one run. Cost per site-tick is flat or falling from
10 to 500 sites (the loop's fixed work spread over more ticks): growth is linear. The goal of
50% of a core at 500 sites is not met: 62.5%. Where the rest goes (py-spy on the daemon at
500 sites, 20 s, syscalls included): the event loop's epoll_wait 19%, socket writes 12.5%,
connect() 10%: the kernel's side of two new loopback connections a site-tick (the probe, the
HAProxy socket) and a query on a kept one; the daemon's own Python (rules, decisions,
metrics, APScheduler) is a few percent each. Replacing the HAProxy streams with a bare
Protocol measured no difference (reverted). With uvloop (`--loop uvloop`, the daemon's opt-in
ODOO_WATCHDOG_EVENT_LOOP=uvloop) the same 500 sites take 48.3% (beside 56.0% for asyncio in
the same run) and 49.4% in another, every tick seen: the goal is met on uvloop only.

`--daemons 3` (`after`, PostgreSQL 15 store, lease 10s), 500 sites spread by the leases: 75.0%
of a core for the three together (about 25% each; 126% before this round), the largest 178 MB,
498 of 500 ticks/s, 1.5 ms per site-tick (the leases and the shared store add about 0.25).

First round (41719a5 -> c03f071, the same bench): each site's tick asked HAProxy for `show
stat typed`, the stats of *every* proxy (3.3 MB, 103,000 lines with 500 backends) and parsed
it to find its own two servers: O(sites) a tick. At 500 sites HAProxy could not produce 500
dumps a second (155 of 500 ticks/s, 479 MB in flight). Now one round trip a tick asks for
`show servers state <backend>; show stat <backend id> 4 -1 typed`, and gauges are exported
only when the state changed: 100 sites 13.4 -> 1.84 ms/site-tick, 500 sites 479 -> 178 MB.

"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from watchdog.lab.multisite import MultiSiteHaproxy
from watchdog.lab.postgres import PostgresLab
from watchdog.lab.procs import ManagedProcess, free_port, http_ok
from watchdog.lab.prometheus import PrometheusLab, ScrapeJob
from watchdog.lab.standin import StandinProcess

GOAL_CPU = 50.0  # % of one core at 500 sites
GOAL_RSS = 250.0  # MB at 500 sites
RULES_PER_SITE = 2

# `odoo-watchdog run` under cProfile timed by the main thread's CPU clock (the event loop's
# CPU, not its waits): SIGUSR1 starts it, SIGUSR2 writes the stats to argv[1].
PROFILED = """
import cProfile, signal, sys, time
from watchdog import cli
prof = cProfile.Profile(time.thread_time)
signal.signal(signal.SIGUSR1, lambda *_: prof.enable())
def dump(*_):
    prof.disable()
    prof.dump_stats(sys.argv[1])
signal.signal(signal.SIGUSR2, dump)
sys.exit(cli.main(sys.argv[2:]))
"""

RULES = """\
rules:
  - name: health
    source: http
    path: /web/health
    timeout: 1s
    min: 1
    for: 2s
    on_fire: rollback
  - name: server_5xx
    source: prometheus
    query: >-
      sum(rate(haproxy_server_http_responses_total{
        proxy="{{ backend }}",server="{{ server }}",code="5xx"}[1m]))
    max: 1
    for: 5s
    no_data: hold
    on_fire: rollback
"""


def site_name(i: int) -> str:
    return f"site{i:03d}"


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_mb(pid: int, key: str) -> float:
    """A size line of /proc/PID/status (VmRSS, VmHWM), in MB (10^6 bytes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError(f"no {key} for pid {pid}")


def get(url: str, timeout: float = 30.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (loopback)
        data: bytes = resp.read()
    return data


def counters(api: str) -> dict[str, float]:
    """From /metrics: rule evaluations (all, and those with result error) and router
    operations that failed."""
    out = {"evaluations": 0.0, "eval_errors": 0.0, "router_errors": 0.0}
    for family in text_string_to_metric_families(get(f"{api}/metrics").decode()):
        for sample in family.samples:
            if sample.name == "odoo_watchdog_rule_evaluations_total":
                out["evaluations"] += sample.value
                if sample.labels.get("result") == "error":
                    out["eval_errors"] += sample.value
            elif (sample.name == "odoo_watchdog_router_operations_total"
                  and sample.labels.get("result") == "error"):
                out["router_errors"] += sample.value
    return out


def last_ticks(api: str) -> list[tuple[str, float | None]]:
    body: dict[str, Any] = json.loads(get(f"{api}/api/v1/sites", timeout=60))
    return [(s["site"], s.get("last_tick")) for s in body["sites"]]


@dataclass
class Row:
    code: str
    sites: int
    cpu_pct: float
    rss_mb: float
    expected: float
    seen: float
    ms_per_site_tick: float
    oldest_tick_age: float
    eval_errors: float
    router_errors: float

    def line(self) -> str:
        return (f"{self.code:<8}{self.sites:>6}{self.cpu_pct:>11.1f}%{self.rss_mb:>9.1f}"
                f"{self.expected:>10.0f}{self.seen:>10.1f}{self.ms_per_site_tick:>11.3f}"
                f"{self.oldest_tick_age:>10.1f}{self.eval_errors:>9.0f}{self.router_errors:>9.0f}")


HEADER = (f"{'code':<8}{'sites':>6}{'cpu % core':>12}{'rss MB':>9}{'ticks/s':>10}"
          f"{'seen/s':>10}{'ms/site-tk':>11}{'oldest s':>10}{'eval err':>9}{'rtr err':>9}")
HEADER2 = (f"{'':<8}{'':>6}{'':>12}{'':>9}{'expected':>10}{'':>10}{'':>11}{'last_tick':>10}"
           f"{'(window)':>9}{'':>9}")


class Lab:
    """The programs every run shares: stand-in pairs, one HAProxy with a backend per site,
    Prometheus scraping HAProxy's exporter."""

    def __init__(self, workdir: Path, standins: int, shared_store: bool = False) -> None:
        self.workdir = workdir
        # --daemons N: one PostgreSQL 15 store that the daemons share (DESIGN.md §15)
        self.postgres = PostgresLab(workdir / "postgres") if shared_store else None
        self.databases = 0
        self.pairs = [(StandinProcess("blue", workdir / f"blue{k}", version="16.0"),
                       StandinProcess("green", workdir / f"green{k}", version="17.0"))
                      for k in range(standins)]
        self.haproxy: MultiSiteHaproxy | None = None
        self.prometheus = PrometheusLab(workdir / "prometheus", scrape_interval="5s")

    def size(self, sites: int) -> MultiSiteHaproxy:
        """HAProxy with a backend for each of `sites` (a new one for each size: a proxy of
        500 backends would weigh on a run of 10 sites), Prometheus scraping its exporter."""
        if self.haproxy is not None and len(self.haproxy.routed) == sites:
            return self.haproxy
        if self.haproxy is not None:
            self.haproxy.stop()
        names = [site_name(i) for i in range(sites)]
        first = self.pairs[0]
        self.haproxy = MultiSiteHaproxy(
            self.workdir / f"haproxy-{sites}", first[0].port, first[1].port, routed=names,
            ports={n: (self.pair(i)[0].port, self.pair(i)[1].port) for i, n in enumerate(names)},
            check_inter=None, exporter=True, stats_maxconn=2000)
        self.haproxy.start()
        self.prometheus.jobs = [ScrapeJob("haproxy", [f"127.0.0.1:{self.haproxy.port}"])]
        if self.prometheus.running():
            self.prometheus.reload()
        else:
            self.prometheus.start()
        self.prometheus.wait_for(
            f'count(haproxy_server_weight{{instance="127.0.0.1:{self.haproxy.port}"}})',
            lambda r: bool(r) and int(float(r[0]["value"][1])) == 2 * sites, timeout=60)
        return self.haproxy

    def pair(self, i: int) -> tuple[StandinProcess, StandinProcess]:
        return self.pairs[i % len(self.pairs)]

    def start(self) -> None:
        for blue, green in self.pairs:
            blue.start()
            green.start()
        if self.postgres is not None:
            self.postgres.start()

    def stop(self) -> None:
        if self.postgres is not None:
            self.postgres.stop()
        self.prometheus.stop()
        if self.haproxy is not None:
            self.haproxy.stop()
        for blue, green in self.pairs:
            blue.stop()
            green.stop()

    def store_dsn_file(self, rundir: Path) -> Path:
        """A fresh database of the shared store for one run, its DSN in a file."""
        assert self.postgres is not None
        self.databases += 1
        name = f"bench_scale_{self.databases}"
        self.postgres.psql(f'CREATE DATABASE "{name}"')
        path = rundir / "store-dsn"
        path.write_text(self.postgres.dsn(name) + "\n")
        path.chmod(0o600)
        return path

    def write_config(self, rundir: Path, sites: int, api_port: int, *,
                     store: Path | None = None, instance: str = "d0") -> Path:
        """One daemon's config; `store`: the shared PostgreSQL store's DSN file."""
        rundir.mkdir(parents=True, exist_ok=True)
        token = rundir / "api-token"
        token.write_text("bench-scale-token\n")
        token.chmod(0o600)
        rules = rundir / "rules.yml"
        rules.write_text(RULES)
        config = {
            "api": {"listen": f"127.0.0.1:{api_port}", "token_file": str(token)},
            "state_dir": str(rundir / f"state-{instance}"),
            "prometheus": {"url": self.prometheus.url, "timeout": "2s"},
            "rule_files": [str(rules)],
            "sites": {site_name(i): self._site(i) for i in range(sites)},
        }
        if store is not None:
            config["api"]["advertise"] = f"http://127.0.0.1:{api_port}"
            config["store"] = {"kind": "postgresql", "dsn_file": str(store), "lease": "10s",
                               "instance": instance}
        path = rundir / f"watchdog-{instance}.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def _site(self, i: int) -> dict[str, Any]:
        blue, green = self.pair(i)
        assert self.haproxy is not None
        return {
            "router": {"kind": "haproxy", "socket": str(self.haproxy.admin_socket),
                       "backend": site_name(i), "drain_timeout": "2s"},
            "colors": {"blue": {"server": "odoo-blue", "url": blue.url},
                       "green": {"server": "odoo-green", "url": green.url}},
            "live": "blue",
            "rollout": {"strategy": "canary", "interval": "1s", "bake": "3s",
                        "steps": [{"weight": 10, "hold": "3s"}, {"weight": 100}]},
        }


@contextlib.contextmanager
def daemon(config: Path, code: Path, sites: int,
           profile: Path | None = None) -> Iterator[ManagedProcess]:
    api = yaml.safe_load(config.read_text())["api"]["listen"]
    argv = [sys.executable, "-m", "watchdog.cli", "run", "-c", str(config)]
    if profile is not None:
        argv[1:3] = ["-c", PROFILED, str(profile)]
    proc = ManagedProcess(
        "odoo-watchdog", argv,
        log_path=config.with_suffix(".log"), cwd=code,
        env={"PYTHONPATH": str(code), "PYTHONUNBUFFERED": "1"},
        ready=lambda: http_ok(f"http://{api}/healthz", timeout=2.0),
        ready_timeout=60 + sites * 0.5)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop(grace=10)


def measure(lab: Lab, root: Path, code: Path, label: str, sites: int, seconds: float,
            warmup: float, profile: Path | None = None, daemons: int = 1) -> Row:
    """One run: `daemons` daemon processes for the same `sites` (more than one share a
    PostgreSQL store and spread the sites by their leases); CPU and ticks are their sums,
    RSS the largest one's."""
    rundir = root / f"{label}-{sites}"
    rundir.mkdir(parents=True)
    store = lab.store_dsn_file(rundir) if daemons > 1 else None
    ports = [free_port() for _ in range(daemons)]
    apis = [f"http://127.0.0.1:{port}" for port in ports]
    configs = [lab.write_config(rundir, sites, port, store=store, instance=f"d{i}")
               for i, port in enumerate(ports)]
    out = None if profile is None else profile.with_name(
        f"{profile.stem}-{label}-{sites}{profile.suffix}")
    with contextlib.ExitStack() as stack:
        procs = [stack.enter_context(daemon(c, code, sites, out if i == 0 else None))
                 for i, c in enumerate(configs)]
        pids = [p.pid for p in procs if p.pid is not None]
        deadline = time.monotonic() + 60 + sites * 0.2
        while not all_ticked(apis, sites):
            if time.monotonic() > deadline or not all(p.running() for p in procs):
                for p in procs:
                    print(p.tail(), file=sys.stderr)
                raise SystemExit(f"{label}: not every one of {sites} sites ticked in time")
            time.sleep(1.0)
        time.sleep(warmup)
        read0 = time.monotonic()
        before = summed(counters(api) for api in apis)
        read0 = (read0 + time.monotonic()) / 2  # the counters' moment, near enough
        wall0, cpu0 = time.monotonic(), sum(cpu_seconds(pid) for pid in pids)
        if out is not None:
            procs[0].signal(signal.SIGUSR1)  # the harness's cProfile starts
        time.sleep(seconds)
        wall1, cpu1 = time.monotonic(), sum(cpu_seconds(pid) for pid in pids)
        rss = max(status_mb(pid, "VmRSS") for pid in pids)
        if out is not None:
            procs[0].signal(signal.SIGUSR2)
            while not out.exists():
                time.sleep(0.2)
            print(f"  profile of the event loop's thread (CPU time): {out}", flush=True)
        read1 = time.monotonic()
        after = summed(counters(api) for api in apis)
        read1 = (read1 + time.monotonic()) / 2
        ages = [time.time() - t for t in newest_ticks(apis).values()]
        if not all(p.running() for p in procs):
            raise SystemExit(f"{label}: a daemon stopped")
    wall, cpu = wall1 - wall0, cpu1 - cpu0
    rate = (after["evaluations"] - before["evaluations"]) / RULES_PER_SITE / (read1 - read0)
    return Row(label, sites, cpu / wall * 100, rss, sites / 1.0, rate,
               cpu / (rate * wall) * 1000 if rate else float("nan"),
               max(ages, default=float("nan")),
               after["eval_errors"] - before["eval_errors"],
               after["router_errors"] - before["router_errors"])


def summed(parts: Iterator[dict[str, float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for part in parts:
        for key, value in part.items():
            total[key] = total.get(key, 0.0) + value
    return total


def newest_ticks(apis: list[str]) -> dict[str, float]:
    """Each site's newest `last_tick` in any daemon's view (a site ticks on its owner)."""
    newest: dict[str, float] = {}
    for api in apis:
        for name, at in last_ticks(api):
            if at is not None:
                newest[name] = max(at, newest.get(name, at))
    return newest


def all_ticked(apis: list[str], sites: int) -> bool:
    return len(newest_ticks(apis)) == sites


def verdict(rows: list[Row], code: str) -> str:
    mine = [r for r in rows if r.code == code]
    if not mine:
        return ""
    top = max(mine, key=lambda r: r.sites)
    ok = top.cpu_pct < GOAL_CPU and top.rss_mb < GOAL_RSS and top.seen >= 0.95 * top.expected
    growth = top.ms_per_site_tick / min(mine, key=lambda r: r.sites).ms_per_site_tick
    return (f"{code}: {top.sites} sites {top.cpu_pct:.1f}% of a core (goal < {GOAL_CPU:g}%), "
            f"{top.rss_mb:.0f} MB (goal < {GOAL_RSS:g}), {top.seen:.0f} of {top.expected:.0f} "
            f"ticks/s; ms per site-tick x{growth:.2f} from the fewest sites: "
            f"{'PASS' if ok else 'FAIL'}")


# ------------------------------------------------------------------ --parts

PARTS_CONCURRENCY = int(os.environ.get("PARTS_CONCURRENCY", "50"))  # calls in flight at once


async def _cpu_per_call(call: Any, calls: int) -> float:
    """CPU ms (the whole process: the event loop and every thread) per call of `call()`,
    `PARTS_CONCURRENCY` at a time, after a warm-up round."""
    import asyncio

    await asyncio.gather(*[call() for _ in range(PARTS_CONCURRENCY)])
    started = time.process_time()
    for _ in range(calls // PARTS_CONCURRENCY):
        await asyncio.gather(*[call() for _ in range(PARTS_CONCURRENCY)])
    return (time.process_time() - started) / calls * 1000


async def _parts(lab: Lab, calls: int) -> list[tuple[str, float]]:
    """What one site-tick's calls cost, each alone in this process: the daemon's own
    clients, and for the Prometheus query an asynchronous client on a kept connection."""
    import aiohttp

    from watchdog.config import SiteConfig
    from watchdog.routers.haproxy import HaproxyRouter
    from watchdog.sources.http import probe
    from watchdog.sources.prometheus import PrometheusSource, interpret

    query = RULES.split("query: >-", 1)[1].split("max:", 1)[0]
    query = " ".join(query.split()).replace("{{ backend }}", site_name(0)) \
        .replace("{{ server }}", "odoo-green")
    out: list[tuple[str, float]] = []
    source = PrometheusSource(lab.prometheus.url, 2.0)
    try:
        async def prom() -> None:
            assert (await source.query(query)).error is None
        out.append(("prometheus rule: aiohttp, kept connections (the daemon's source)",
                    await _cpu_per_call(prom, calls)))
    finally:
        await source.close()
    try:  # the source until now; no longer a dependency, measured where it is installed
        from prometheus_api_client import PrometheusConnect
    except ImportError:
        print("(prometheus-api-client is not installed: its row is left out)")
    else:
        import asyncio
        from concurrent.futures import ThreadPoolExecutor

        import requests
        from urllib3.util.retry import Retry

        session = requests.Session()
        session.trust_env = False
        session.headers["Accept-Encoding"] = "identity"
        client = PrometheusConnect(url=lab.prometheus.url, retry=Retry(total=0), timeout=2.0,
                                   session=session)
        pool = ThreadPoolExecutor(max_workers=8)
        loop = asyncio.get_running_loop()

        async def prom_threads() -> None:
            data = await loop.run_in_executor(pool, client.custom_query, query)
            assert interpret(data).error is None
        out.append(("  before: prometheus-api-client in a pool of 8 threads (not used)",
                    await _cpu_per_call(prom_threads, calls)))
        pool.shutdown()
    health = f"{lab.pair(0)[1].url}/web/health"
    async def http() -> None:
        assert (await probe(health, 1.0)).value == 1.0
    out.append(("http rule: a raw GET, a new connection each (the daemon's source)",
                await _cpu_per_call(http, calls)))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            limit=64, force_close=True)) as session:
        async def http_aiohttp() -> None:
            async with session.get(health, timeout=aiohttp.ClientTimeout(total=1.0),
                                   allow_redirects=False) as resp:
                await resp.read()
                assert resp.status == 200
        out.append(("  before: aiohttp's client, a new connection each (not used)",
                    await _cpu_per_call(http_aiohttp, calls)))
    router = HaproxyRouter(site_name(0), SiteConfig.model_validate(lab._site(0)))
    try:
        async def read() -> None:
            await router.get_weights()
        out.append(("router read: HAProxy state + the backend's stats, one round trip",
                    await _cpu_per_call(read, calls)))
    finally:
        await router.close()
    return out


def parts(lab: Lab, calls: int, rows: list[Row]) -> None:
    import asyncio

    measured = asyncio.run(_parts(lab, calls))
    print(f"\nwhat a site-tick calls, each alone ({calls} calls, {PARTS_CONCURRENCY} at a "
          "time, CPU of the whole process):")
    print(f"{'part':<72}{'cpu ms/call':>12}")
    for name, ms in measured:
        print(f"{name:<72}{ms:>12.3f}")
    own = sum(ms for name, ms in measured if not name.startswith(" "))
    print(f"{'sum of the three parts the daemon uses':<72}{own:>12.3f}")
    for row in rows:
        label = f"{row.code} {row.sites} sites: the whole site-tick (the rest)"
        print(f"{label:<72}{row.ms_per_site_tick:>12.3f}  ({row.ms_per_site_tick - own:.3f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", default="10,100,500", help="comma-separated site counts")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=10.0,
                        help="seconds after every site has ticked once")
    parser.add_argument("--standins", type=int, default=2, help="stand-in pairs for all sites")
    parser.add_argument("--code", action="append", default=[], metavar="[LABEL=]DIR",
                        help="a daemon's code, one row each (default: after=this checkout)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="also run the daemon from this checkout (a git worktree)")
    parser.add_argument("--quick", action="store_true", help="10 and 50 sites, 5 s each")
    parser.add_argument("--daemons", type=int, default=1,
                        help="the same sites on this many daemons sharing a PostgreSQL 15 "
                             "store (leases of 10 s); needs a daemon with leases (§15)")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                        help="the daemons' event loop (ODOO_WATCHDOG_EVENT_LOOP); the rows' "
                             "labels get +uvloop")
    parser.add_argument("--keep", action="store_true", help="keep the lab's folder")
    parser.add_argument("--parts", type=int, default=0, metavar="CALLS",
                        help="after the runs, the CPU per call of each part of a site-tick "
                             "(the Prometheus query, the http probe, the router read), "
                             "CALLS of each, in this process")
    parser.add_argument("--profile", type=Path, default=None, metavar="FILE.prof",
                        help="cProfile the event loop's thread (its CPU time) over the window, "
                             "to FILE-LABEL-SITES.prof (pstats)")
    args = parser.parse_args()
    if args.quick:
        args.sites, args.seconds, args.warmup = "10,50", 5.0, 2.0
    counts = [int(n) for n in args.sites.split(",")]
    codes = [(c.partition("=")[0] if "=" in c else "after", Path(c.rpartition("=")[2]).resolve())
             for c in args.code] or [("after", Path(__file__).resolve().parent.parent)]
    if args.baseline is not None:
        codes.insert(0, ("before", args.baseline.resolve()))
    if args.loop != "asyncio":
        os.environ["ODOO_WATCHDOG_EVENT_LOOP"] = args.loop  # the daemons inherit it
        codes = [(f"{label}+{args.loop}", code) for label, code in codes]

    root = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    lab = Lab(root / "lab", args.standins, shared_store=args.daemons > 1)
    if args.daemons > 1:
        codes = [(f"{label}x{args.daemons}", code) for label, code in codes]
    rows: list[Row] = []
    try:
        print(f"starting the lab: {args.standins} stand-in pairs, Prometheus; HAProxy with "
              "a backend per site for each size ...", flush=True)
        lab.start()
        for sites in counts:
            lab.size(sites)
            for label, code in codes:
                print(f"{label} ({code}): {sites} sites, {args.warmup:g} s warm-up, "
                      f"{args.seconds:g} s measured ...", flush=True)
                rows.append(measure(lab, root, code, label, sites, args.seconds,
                                    args.warmup, args.profile, args.daemons))
                print("  " + rows[-1].line(), flush=True)
        if args.parts:
            parts(lab, args.parts, rows)
    finally:
        lab.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print(f"{len(counts)} sizes, 1 s interval, 2 rules a site (http + prometheus), "
          f"{args.seconds:g} s measured after a {args.warmup:g} s warm-up")
    print(HEADER)
    print(HEADER2)
    for row in rows:
        print(row.line())
    print()
    for label, _ in codes:
        print(verdict(rows, label))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
