"""The access-log receiver: proxy access logs over syslog/UDP in, per-colour metrics out.

HAProxy 2.6 and nginx export no latency histogram per server, and Odoo has no exporter, so the
`error_rate` and `p95_latency` rules (docs/rules.md, docs/metrics.md) read what the receiver makes
of the proxy's access log: `odoo_watchdog_http_requests_total{site,color,code}` and
`odoo_watchdog_http_request_duration_seconds{site,color}`.

One datagram is one access-log line. It goes through three steps, all on bytes (no decoding
on the hot path), each described in its module:

1. **Syslog framing** and 2. **parsing** (`watchdog.accesslog_parse`): every framing HAProxy
   and nginx send, HAProxy's `option httplog` and nginx's `log_format odoo_watchdog`, one
   parser per format for the hot path and for `parse_haproxy` / `parse_nginx`.
3. **Mapping** to (site, colour) (`watchdog.accesslog_routes`): HAProxy's `backend/server`,
   nginx's last `$upstream_addr`, and the addresses of host-name servers.

The counts go into plain counters that `watchdog.accesslog_metrics.AccessLogCollector` (on
the daemon's registry) reads at scrape time, with the receiver's own counts: datagrams
received, unparsed, unmapped, and dropped by the kernel.

Lines that are not access-log lines (HAProxy's own "Server ... is DOWN" messages, garbage)
are counted in `unparsed` and sampled into the log, at most one sample every
`SAMPLE_EVERY` seconds; lines for a server no site knows are counted in `unmapped` and sampled
likewise (except HAProxy's `<NOSRV>` and nginx's `-`: requests that reached no server, which
are expected, for instance while every server is down; and HAProxy's `<PROMEX>` and `<STATS>`:
its own exporter and stats page, scraped every few seconds). Nothing a datagram holds can raise
out of the receiver.

For `source: traffic` (DESIGN.md §14) each mapped colour also has a `TrafficWindow`
(`watchdog.traffic`): the last 300 seconds of its requests in fixed memory, which the traffic
source reads in-process, with no Prometheus in between. After each batch of datagrams the
receiver tells `on_lines` which sites had lines, at most once every `NOTIFY_EVERY` seconds per
receiver (a batch in between is told when that time is up, never dropped), so the
traffic rules are judged as the lines arrive.

UDP drops under load: the receiver asks for a receive buffer of `RCVBUF` bytes (the kernel
caps it at `net.core.rmem_max` unless the process may use SO_RCVBUFFORCE); `kernel_drops()`
reads the socket's drop counter from /proc/net/udp.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import structlog

from watchdog.accesslog_metrics import Series
from watchdog.accesslog_parse import (
    FIELDS,
    AccessLine,
    Format,
    parse_haproxy,
    parse_nginx,
    syslog_message,
)
from watchdog.accesslog_routes import address, resolve_aliases, routes_from_config
from watchdog.config import DaemonConfig
from watchdog.metrics import Metrics
from watchdog.traffic import TrafficWindow

__all__ = [
    "RCVBUF",
    "SAMPLE_EVERY",
    "AccessLine",
    "AccessLogReceiver",
    "Format",
    "parse_haproxy",
    "parse_nginx",
    "routes_from_config",
    "syslog_message",
    "udp_drops",
]

log = structlog.get_logger("odoo_watchdog.accesslog")

SAMPLE_EVERY = 10.0  # seconds between two samples of unparsed (or unmapped) lines in the log
# The socket's receive buffer, asked for: the kernel charges about 1 KB per queued datagram,
# so this holds some 8,000 lines while the loop is busy (4 s at 2,000 requests/s).
RCVBUF = 4 * 1024 * 1024
SAMPLE_CHARS = 300
DRAIN = 500  # datagrams read from the socket in one turn of the event loop, at most
MAX_DATAGRAM = 65535
MAX_UNKNOWN = 10_000  # unknown servers remembered as such, at most
NOTIFY_EVERY = 0.1  # seconds between two calls of on_lines, at least
# What HAProxy logs instead of a server for a request no server answered (`<NOSRV>`) or that
# HAProxy answered itself: its Prometheus exporter (`<PROMEX>`), its stats page (`<STATS>`).
NO_SERVER = (b"/<NOSRV>", b"/<PROMEX>", b"/<STATS>")


class _Protocol(asyncio.DatagramProtocol):
    """asyncio's datagram transport reads one datagram per turn of the loop (one select()
    each, about 20 µs), which caps a receiver at some 30,000 lines/s and drops the rest. So
    each datagram it hands over is followed by what else is queued on the same socket (ours,
    non-blocking), up to `DRAIN` datagrams per turn, so that ticks and the API still get
    their turns under a flood."""

    def __init__(self, receiver: AccessLogReceiver, sock: socket.socket) -> None:
        self.handle = receiver.handle
        self.batch_done = receiver.batch_done
        self.recv = sock.recv

    def datagram_received(self, data: bytes, addr: Any) -> None:
        handle, recv = self.handle, self.recv
        handle(data)
        for _ in range(DRAIN):
            try:
                data = recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # ICMP errors and the like: the transport reports them
                log.warning("access_log_socket_error", error=str(exc))
                break
            handle(data)
        self.batch_done()

    def error_received(self, exc: Exception) -> None:
        log.warning("access_log_socket_error", error=str(exc))


class AccessLogReceiver:
    """A syslog/UDP listener on the asyncio loop that turns access-log lines into metrics.

    `routes` maps what the proxy logs for a colour (see `routes_from_config`) to
    (site, colour). Counters: `received` datagrams, `parsed` access-log lines, `unparsed`
    datagrams that were not one, `unmapped` parsed lines for no known colour. The receiver
    adds to the `Series` of `metrics.access_log` and attaches its counters to it, so every
    count is on the registry as soon as the line is handled.
    """

    def __init__(
        self,
        listen: str,
        fmt: Format,
        routes: Mapping[str, tuple[str, str]],
        metrics: Metrics,
        *,
        rcvbuf: int = RCVBUF,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if fmt not in FIELDS:
            raise ValueError(f"unknown access-log format {fmt!r} (haproxy or nginx)")
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"listen must be host:port (got {listen!r})")
        self.host = host.strip("[]")
        self.port = int(port)
        self.format: Format = fmt
        self.metrics = metrics
        self.rcvbuf = rcvbuf
        self.clock = clock  # the log sampling's, and the seconds of the traffic windows
        self.routes = dict(routes)
        self.received = 0
        self.unparsed = 0
        self.unmapped = 0
        self._fields = FIELDS[fmt]
        # upstream -> its series and window; None: unknown
        self._series: dict[bytes, tuple[Series, TrafficWindow] | None] = {}
        self.windows: dict[tuple[str, str], TrafficWindow] = {}
        self.on_lines: Callable[[str], None] | None = None  # a site had lines (the fast path)
        self._dirty: set[str] = set()
        self._told_at = -NOTIFY_EVERY
        self._timer: asyncio.TimerHandle | None = None
        self._by_key: dict[bytes, tuple[str, str]] = {
            k.encode(): v for k, v in self.routes.items()
        }
        self._transport: asyncio.DatagramTransport | None = None
        self._sock: socket.socket | None = None
        self._closed_drops: int | None = None  # kernel drops on the sockets it has closed
        self._sampled_at: dict[str, float] = {}
        self._since_sample: dict[str, int] = {"unparsed": 0, "unmapped": 0}
        metrics.access_log.attach(self)

    @classmethod
    def from_config(cls, config: DaemonConfig, metrics: Metrics) -> AccessLogReceiver | None:
        """The receiver the config asks for (`access_log:`), or None when it asks for none."""
        spec = config.access_log
        if spec is None:
            return None
        return cls(spec.listen, spec.format, routes_from_config(config, spec.format), metrics)

    # ------------------------------------------------------------ lifecycle

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens (the real port once started, when `listen` asked for port 0)."""
        if self._sock is not None:
            name = self._sock.getsockname()
            return str(name[0]), int(name[1])
        return self.host, self.port

    async def start(self) -> None:
        """Bind the UDP socket and start receiving; raises OSError if the address is taken."""
        if self._transport is not None:
            return
        loop = asyncio.get_running_loop()
        if self.format == "nginx":
            # nginx logs the address it connected to: add the addresses of host-name servers.
            for alias, target in (await resolve_aliases(self.routes)).items():
                self._by_key.setdefault(alias.encode(), target)
        infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)
        family, type_, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, type_, proto)
        try:
            self._grow_buffer(sock)
            sock.bind(sockaddr)
            sock.setblocking(False)
            transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self, sock),
                                                               sock=sock)
        except BaseException:
            sock.close()
            raise
        self._transport = transport
        self._sock = sock
        host, port = self.address
        rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        if sys.platform.startswith("linux"):
            rcvbuf //= 2  # Linux reports twice what was granted (its bookkeeping overhead)
        log.info("access_log_listening", listen=address(host, str(port)), format=self.format,
                 rcvbuf=rcvbuf, colors=len(self.routes))
        if rcvbuf < self.rcvbuf:
            log.warning("access_log_small_buffer", rcvbuf=rcvbuf, wanted=self.rcvbuf,
                        hint=f"lines are lost while the daemon is busy: raise the limit with "
                             f"sysctl net.core.rmem_max={self.rcvbuf}")

    async def stop(self) -> None:
        transport, self._transport = self._transport, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if transport is None:
            return
        stats = self.stats()
        self._closed_drops = (self._closed_drops or 0) + (stats["kernel_drops"] or 0)
        transport.close()
        await asyncio.sleep(0)  # let the transport close its socket
        self._sock = None
        log.info("access_log_stopped", **stats)

    async def __aenter__(self) -> AccessLogReceiver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _grow_buffer(self, sock: socket.socket) -> None:
        force = getattr(socket, "SO_RCVBUFFORCE", None)
        if force is not None:
            with contextlib.suppress(OSError):  # needs CAP_NET_ADMIN
                sock.setsockopt(socket.SOL_SOCKET, force, self.rcvbuf)
                return
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)

    # ------------------------------------------------------------ the hot path

    def handle(self, data: bytes, addr: Any = None) -> None:
        """One datagram: count it, parse it, add it to its colour's counts. Never raises."""
        self.received += 1
        try:
            fields = self._fields(data)
            if fields is None:
                self._reject("unparsed", data)
                return
            upstream, status, seconds = fields
            found = self._series.get(upstream)
            if found is None:
                found = self._lookup(upstream)
                if found is None:
                    self.unmapped += 1
                    if upstream != b"-" and not upstream.endswith(NO_SERVER):
                        self._reject("unmapped", data)
                    return
            series, window = found
            # Straight into the Series: a method call would cost a tenth of the line.
            series.codes[status] += 1
            if seconds is not None:
                series.buckets[bisect_left(series.bounds, seconds)] += 1
                series.sum += seconds
            window.add(int(self.clock()), status, seconds)
            self._dirty.add(series.site)
        except Exception as exc:  # a line must never take the receiver down
            self._reject("unparsed", data, exc)

    def _lookup(self, upstream: bytes) -> tuple[Series, TrafficWindow] | None:
        if upstream in self._series:
            return None  # known to be unmapped
        target = self._by_key.get(upstream)
        if target is None:
            if len(self._series) < MAX_UNKNOWN:  # unknown servers must not grow it unbounded
                self._series[upstream] = None
            return None
        found = self._series[upstream] = (self.metrics.access_log.series(*target),
                                          self.window(*target))
        return found

    def window(self, site: str, color: str) -> TrafficWindow:
        """The traffic window of (site, colour), made on first use."""
        window = self.windows.get((site, color))
        if window is None:
            window = self.windows[site, color] = TrafficWindow()
        return window

    def batch_done(self) -> None:
        """After a batch of datagrams: tell `on_lines` the sites that had lines, now if the
        last call was `NOTIFY_EVERY` ago or more, else when that time is up."""
        if not self._dirty or self.on_lines is None or self._timer is not None:
            return
        wait = self._told_at + NOTIFY_EVERY - self.clock()
        if wait <= 0:
            self._tell()
            return
        self._timer = asyncio.get_running_loop().call_later(wait, self._tell)

    def _tell(self) -> None:
        self._timer = None
        self._told_at = self.clock()
        sites, self._dirty = self._dirty, set()
        if self.on_lines is None:
            return
        for site in sorted(sites):
            try:
                self.on_lines(site)
            except Exception:  # the fast path must never take the receiver down
                log.exception("access_log_on_lines_failed", site=site)

    def _reject(self, kind: Literal["unparsed", "unmapped"], data: bytes,
                exc: Exception | None = None) -> None:
        if kind == "unparsed":
            self.unparsed += 1
        self._since_sample[kind] += 1
        now = self.clock()
        if now - self._sampled_at.get(kind, -SAMPLE_EVERY) < SAMPLE_EVERY:
            return
        self._sampled_at[kind] = now
        count, self._since_sample[kind] = self._since_sample[kind], 0
        if kind == "unparsed":
            log.warning("access_log_unparsed", format=self.format, sample=_show(data),
                        lines=count, unparsed=self.unparsed, received=self.received,
                        error=repr(exc) if exc is not None else None)
        else:
            log.warning("access_log_unmapped", format=self.format, sample=_show(data),
                        lines=count, unmapped=self.unmapped, known=sorted(self.routes),
                        hint="no colour's server matches this line: check sites.*.colors.*.server"
                             " (and the router backend for haproxy)")

    # ------------------------------------------------------------ reporting

    @property
    def parsed(self) -> int:
        """Access-log lines counted for a colour (the hot path counts the others only)."""
        return self.received - self.unparsed - self.unmapped

    def stats(self) -> dict[str, int | None]:
        return {"received": self.received, "parsed": self.parsed, "unparsed": self.unparsed,
                "unmapped": self.unmapped, "kernel_drops": self.kernel_drops()}

    def kernel_drops(self) -> int | None:
        """Datagrams the kernel dropped on our socket (its buffer was full); None if unknown
        (not listening, or not Linux)."""
        if self._sock is None:
            return None
        return udp_drops(self._sock)

    def kernel_drops_total(self) -> int | None:
        """Kernel drops on every socket this receiver has listened on, for the counter (which
        must not go back when the receiver is stopped and started again); None if unknown."""
        current = self.kernel_drops()
        if current is None:
            return self._closed_drops
        return (self._closed_drops or 0) + current


def udp_drops(sock: socket.socket) -> int | None:
    """The `drops` column of /proc/net/udp{,6} for `sock` (Linux), or None."""
    try:
        inode = str(os.fstat(sock.fileno()).st_ino)
    except OSError:
        return None
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as handle:
                lines: Iterable[str] = handle.readlines()[1:]
        except OSError:
            continue
        for row in lines:
            cols = row.split()
            if len(cols) >= 13 and cols[9] == inode:
                return int(cols[12])
    return None


def _show(data: bytes) -> str:
    text = data.decode("utf-8", "replace").rstrip("\n")
    return text if len(text) <= SAMPLE_CHARS else text[:SAMPLE_CHARS] + "..."
