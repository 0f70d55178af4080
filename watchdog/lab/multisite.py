"""Many sites on one lab: one HAProxy 2.6 with a backend per site, its access log sent to the
daemon (and, rewritten, to shadow sites), and load at a fixed rate per site.

Used by the judge's lab test (tests/test_judge_lab.py, DESIGN.md §14), which rolls out 20 sites
at once instead of one after another, and by bench/bench_scale.py (500 sites on one daemon).

- `MultiSiteHaproxy`: backends named as the sites, each with `odoo-blue` and `odoo-green`
  pointing at the same two stand-ins; one frontend that routes by the Host header to the
  *routed* backends; `shadows` are backends with the same servers that no request reaches
  (a shadow site's router moves their weights and nothing else). The access log goes to every
  port of `syslog_ports`, in the `option httplog` format the receiver parses. For many sites:
  `ports` gives a backend its own pair of stand-ins, `check_inter=None` leaves HAProxy's
  health checks out (500 backends checked every 2 s are 500 requests a second to the
  stand-ins), `exporter` serves HAProxy's Prometheus exporter (servers only) on /metrics, and
  `stats_maxconn` is how many runtime-API connections HAProxy takes at once.
- `LogCopier`: a UDP listener that sends each access-log line of a routed backend on to
  the daemon once more for each rename, with the backend's name changed (`site07/odoo-green`
  -> `fixed07/odoo-green`): a shadow site sees byte for byte the requests of its routed twin.
- `RateLoad`: GETs at a fixed rate per Host (a schedule, not a loop that waits for answers,
  so a slow answer does not lower the rate), counting answers per host and how far behind the
  schedule it fell, to show the machine kept up.

Everything listens on loopback and is stopped by its own pid (HAProxy) or its own task.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from watchdog.lab.haproxy import haproxy_binary
from watchdog.lab.procs import LabProgram, ManagedProcess, free_port

__all__ = ["LoadCounts", "LogCopier", "MultiSiteHaproxy", "RateLoad"]

GLOBAL = """\
global
    stats socket {dir}/admin.sock mode 600 level admin
    stats timeout 30s
    # Every site's router opens its own connections (a command each): HAProxy's default of
    # 10 at once on the stats socket drops some of 40 sites' at the same tick.
    stats maxconn {stats_maxconn}
{logs}

defaults
    mode http
    log global
    option httplog
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 5s

frontend web
    bind 127.0.0.1:{port}
{exporter}{routes}
    default_backend nosite

backend nosite
    http-request deny deny_status 404
"""

# The check every 2 s and DOWN after 5 failures in a row: with a fault of 2% on every request
# (checks included), a colour marked DOWN by chance is some 3e-9 a check, not a flap a minute.
BACKEND = """
backend {name}
    balance roundrobin
    option httpchk
    http-check send meth GET uri /web/health ver HTTP/1.1 hdr Host localhost
    server odoo-blue 127.0.0.1:{blue_port} weight 100{check}
    server odoo-green 127.0.0.1:{green_port} weight 0{check}
"""
CHECK = " check inter {inter} fall 5 rise 2"
# The exporter's server metrics only (`scope=server`, set here: a scrape job has no params).
EXPORTER = """\
    http-request set-query scope=server if { path /metrics }
    http-request use-service prometheus-exporter if { path /metrics }
"""


class MultiSiteHaproxy(LabProgram):
    """One HAProxy for many sites; `port` is the frontend, `admin_socket` the runtime API."""

    def __init__(self, workdir: Path, blue_port: int, green_port: int, *,
                 routed: Sequence[str], shadows: Sequence[str] = (),
                 syslog_ports: Sequence[int] = (),
                 ports: Mapping[str, tuple[int, int]] | None = None,
                 check_inter: str | None = "2s", exporter: bool = False,
                 stats_maxconn: int = 200) -> None:
        for name in (*routed, *shadows):
            if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
                raise ValueError(f"backend name {name!r}: lower-case letters, digits and _")
        self.workdir = workdir
        self.blue_port = blue_port
        self.green_port = green_port
        self.routed = list(routed)
        self.shadows = list(shadows)
        self.syslog_ports = list(syslog_ports)
        self.ports = dict(ports or {})  # backend -> (blue port, green port); default the pair
        self.check_inter = check_inter
        self.exporter = exporter
        self.stats_maxconn = stats_maxconn
        self.port = free_port()
        self.config_path = workdir / "haproxy.cfg"
        self.admin_socket = workdir / "admin.sock"
        self.process = ManagedProcess(
            "haproxy-multisite",
            [haproxy_binary(), "-db", "-f", str(self.config_path)],
            log_path=workdir / "haproxy.out",
            ready=lambda: self.listening() and self.admin_socket.exists(),
            ready_timeout=20,
        )

    def render(self) -> str:
        logs = "\n".join(f"    log 127.0.0.1:{port} len 4096 local0 info"
                         for port in self.syslog_ports)
        routes = "\n".join(f"    use_backend {name} if {{ hdr(host) -i {name} }}"
                           for name in self.routed)
        text = GLOBAL.format(dir=self.workdir, logs=logs, port=self.port, routes=routes,
                             exporter=EXPORTER if self.exporter else "",
                             stats_maxconn=self.stats_maxconn)
        check = CHECK.format(inter=self.check_inter) if self.check_inter else ""
        for name in (*self.routed, *self.shadows):
            blue, green = self.ports.get(name, (self.blue_port, self.green_port))
            text += BACKEND.format(name=name, blue_port=blue, green_port=green, check=check)
        return text

    def prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.render())


# client:port [date] FRONTEND BACKEND/SERVER ... : the backend's name, once, in that place.
_BACKEND_AT = re.compile(rb"(\] [^ ]+ )([^ /]+)(/)")


class _CopierProtocol(asyncio.DatagramProtocol):
    def __init__(self, copier: LogCopier) -> None:
        self.copier = copier

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.copier.handle(data)


class LogCopier:
    """Receives the proxy's access log and sends, for each line of a backend in `renames`,
    one copy per new name to `target` (the daemon's access_log port)."""

    def __init__(self, target: tuple[str, int], renames: dict[str, Sequence[str]]) -> None:
        self.target = target
        self.renames = {old.encode(): [n.encode() for n in new] for old, new in renames.items()}
        self.transport: asyncio.DatagramTransport | None = None
        self.received = 0
        self.copied = 0
        self.skipped = 0  # lines of no renamed backend (HAProxy's own messages and the like)

    @property
    def port(self) -> int:
        assert self.transport is not None, "not started"
        return int(self.transport.get_extra_info("sockname")[1])

    async def start(self) -> LogCopier:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: _CopierProtocol(self), local_addr=("127.0.0.1", 0))
        return self

    def handle(self, data: bytes) -> None:
        self.received += 1
        match = _BACKEND_AT.search(data)
        names = self.renames.get(match.group(2)) if match else None
        if match is None or not names or self.transport is None:
            self.skipped += 1
            return
        head, tail = data[:match.start(2)], data[match.end(2):]
        for name in names:
            self.transport.sendto(head + name + tail, self.target)
            self.copied += 1

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


@dataclass
class LoadCounts:
    """What one host's requests got."""

    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)  # 0: no HTTP answer
    colors: Counter[str] = field(default_factory=Counter)

    @property
    def answered(self) -> int:
        return sum(self.statuses.values())

    @property
    def errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status == 0 or status >= 500)


class RateLoad:
    """`rate` GETs a second of `path` on `url` for each of `hosts` (the Host header), on a
    fixed schedule; at most `in_flight` unanswered per host (beyond that a tick is skipped and
    counted in `skipped`). `lag` is the largest delay behind the schedule seen."""

    def __init__(self, url: str, hosts: Sequence[str], *, rate: float, path: str = "/web/login",
                 in_flight: int = 20, timeout: float = 5.0, max_seconds: float = 600.0) -> None:
        if not url.startswith(("http://127.", "http://localhost")):
            raise ValueError(f"load goes to loopback only, not {url!r}")
        self.url = url.rstrip("/") + path
        self.hosts = list(hosts)
        self.rate = rate
        self.in_flight = in_flight
        self.timeout = timeout
        self.max_seconds = max_seconds
        self.counts = {host: LoadCounts() for host in self.hosts}
        self.lag = 0.0
        self.skipped = 0
        self.started_at: float | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._requests: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> RateLoad:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.in_flight * len(self.hosts)),
            cookie_jar=aiohttp.DummyCookieJar(),  # new users: the split, not stickiness
            timeout=aiohttp.ClientTimeout(total=self.timeout),
        )
        self.started_at = time.monotonic()
        count = len(self.hosts)
        # The hosts' schedules are spread over one period, so the proxy sees an even stream.
        self._tasks = [asyncio.create_task(self._host(host, i / (count * self.rate)))
                       for i, host in enumerate(self.hosts)]
        return self

    async def _host(self, host: str, offset: float) -> None:
        assert self.started_at is not None
        counts = self.counts[host]
        pending: set[asyncio.Task[None]] = set()
        tick = 0
        while True:
            due = self.started_at + offset + tick / self.rate
            if due - self.started_at > self.max_seconds:
                return
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            self.lag = max(self.lag, time.monotonic() - due)
            tick += 1
            if len(pending) >= self.in_flight:
                self.skipped += 1
                continue
            task = asyncio.create_task(self._one(host, counts))
            pending.add(task)
            self._requests.add(task)
            task.add_done_callback(pending.discard)
            task.add_done_callback(self._requests.discard)

    async def _one(self, host: str, counts: LoadCounts) -> None:
        assert self._session is not None
        counts.sent += 1
        try:
            async with self._session.get(self.url, headers={"Host": host}) as resp:
                await resp.read()
                counts.statuses[resp.status] += 1
                color = resp.headers.get("X-Odoo-Color")
                if color:
                    counts.colors[color] += 1
        except (aiohttp.ClientError, TimeoutError, OSError):
            counts.statuses[0] += 1

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._requests:
            await asyncio.wait(list(self._requests), timeout=self.timeout + 1)
        if self._session is not None:
            await self._session.close()

    def total(self) -> LoadCounts:
        whole = LoadCounts()
        for counts in self.counts.values():
            whole.sent += counts.sent
            whole.statuses.update(counts.statuses)
            whole.colors.update(counts.colors)
        return whole
