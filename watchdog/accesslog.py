"""The access-log receiver: proxy access logs over syslog/UDP in, per-colour metrics out.

HAProxy 2.6 and nginx export no latency histogram per server, and Odoo has no exporter, so the
`error_rate` and `p95_latency` rules (DESIGN.md sections 5 and 8) read what this module makes
of the proxy's access log: `odoo_watchdog_http_requests_total{site,color,code}` and
`odoo_watchdog_http_request_duration_seconds{site,color}`.

One datagram is one access-log line. It goes through three steps, all on bytes (no decoding
on the hot path):

1. **Syslog framing** (`syslog_message`): RFC 3164 `<PRI>Mmm dd hh:mm:ss host tag[pid]: msg`,
   HAProxy's variant of it without a host (its default), RFC 5424
   `<PRI>1 TIMESTAMP HOST APP PROCID MSGID SD MSG`, HAProxy's `format short` (`<PRI>msg`) and
   `format raw` (no header at all). The header is stripped to the message.
2. **Parsing** the message (`parse_haproxy`, `parse_nginx`), each one pre-compiled regular
   expression anchored at the start of the line:

   - HAProxy `option httplog` (and `option httpslog`, and any `log-format` that begins like
     them): `client:port [date] frontend backend/server TR/Tw/Tc/Tr/Ta status bytes ...`.
     The duration is **Ta**, the total active time: from the first byte of the request to the
     last byte of the response, which is what the user waited for (Tr, the server's time to
     the response headers, leaves out the transfer). Ta is also the one timer that stays set
     when a request is aborted or times out (then Tr is -1): a 504 after `timeout server`
     counts with the time it took, so timeouts push the P95 up instead of vanishing from it.
     A Ta of -1 counts the request but observes no duration. Do not use `option logasap`:
     Ta then stops at the response headers (it is logged as `+N`). A status of -1 (HAProxy
     never sent a status: the client went away first) is exported as code 499, nginx's
     "client closed request", so both proxies give the same series.
   - nginx in the project's `log_format odoo_watchdog` (`deploy/nginx/access-log.conf`):
     `$remote_addr [$time_local] $status $request_time "$upstream_addr" ...`. The duration is
     `$request_time` (from the first byte read from the client to the last byte written to
     it: the same span as HAProxy's Ta). The fields the receiver needs come before the
     request line and the headers, so a line cut short by a long user agent still counts,
     and fields may be appended after them.
3. **Mapping** to (site, colour): HAProxy's `backend/server` by each site's router `backend`
   and each colour's `server`; nginx's `$upstream_addr` (host:port) by the colour's
   `server`. After a retry nginx lists every upstream tried (`a, b`, or `a : b` across
   upstream groups): the last one answered. A colour whose `server` is a host name is also
   known by the addresses it resolves to when the receiver starts, since nginx logs the
   address it connected to.

Lines that are not access-log lines (HAProxy's own "Server ... is DOWN" messages, garbage)
are counted in `unparsed` and sampled into the log, at most one sample every
`SAMPLE_EVERY` seconds; lines for a server no site knows are counted in `unmapped` and sampled
likewise (except HAProxy's `<NOSRV>` and nginx's `-`: requests that reached no server, which
are expected, for instance while every server is down). Nothing a datagram holds can raise
out of the receiver.

UDP drops under load: the receiver asks for a receive buffer of `RCVBUF` bytes (the kernel
caps it at `net.core.rmem_max` unless the process may use SO_RCVBUFFORCE); `kernel_drops()`
reads the socket's drop counter from /proc/net/udp.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import os
import re
import socket
import sys
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, NamedTuple

import structlog

from watchdog.config import DaemonConfig
from watchdog.metrics import Metrics

__all__ = [
    "FLUSH_EVERY",
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

Format = Literal["haproxy", "nginx"]
SAMPLE_EVERY = 10.0  # seconds between two samples of unparsed (or unmapped) lines in the log
# The socket's receive buffer, asked for: the kernel charges about 1 KB per queued datagram,
# so this holds some 8,000 lines while the loop is busy (4 s at 2,000 requests/s).
RCVBUF = 4 * 1024 * 1024
SAMPLE_CHARS = 300
FLUSH_EVERY = 0.5  # seconds: how stale the exported metrics may be
DRAIN = 500  # datagrams read from the socket in one turn of the event loop, at most
MAX_DATAGRAM = 65535


class AccessLine(NamedTuple):
    """One parsed access-log line: whom it went to, the status, and how long it took."""

    upstream: bytes  # HAProxy: b"backend/server"; nginx: the last address of $upstream_addr
    status: bytes  # b"200"; HAProxy's b"-1" stays as it is here (exported as 499)
    seconds: float | None  # None when the proxy logged no duration (-1)


# ---------------------------------------------------------------- syslog framing

# RFC 5424 STRUCTURED-DATA: one or more [id param="value" ...] with \" \] \\ escaped in values.
_SD = rb'(?:\[[^\]"\s]*(?:\s+[^=\s\]]+="(?:[^"\\]|\\.)*")*\s*\])+'
# One header, whichever framing; a datagram without `<PRI>` (HAProxy's `format raw`) has none.
_HEADER = (
    rb"<\d{1,3}>(?:"
    # RFC 5424: 1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD [BOM]MSG
    rb"1 \S+ \S+ \S+ \S+ \S+ (?:-|" + _SD + rb")(?: |$)(?:\xef\xbb\xbf)?"
    # RFC 3164: Mmm dd hh:mm:ss (or rsyslog's RFC 3339 stamp) [HOST] TAG[PID]: MSG; HAProxy
    # sends no host unless `log-send-hostname`. Nothing after <PRI>: HAProxy's `format short`.
    rb"|(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d |\d{4}-\d\d-\d\dT\S+ )(?:\S+ )??\S+: "
    rb")?"
)
_HEADER_RE = re.compile(_HEADER)


def syslog_message(data: bytes) -> bytes:
    """The message of one syslog datagram, without its header and its trailing newline."""
    match = _HEADER_RE.match(data)
    return data[match.end() if match else 0:].rstrip(b"\r\n\x00")


# ---------------------------------------------------------------- parsers

# client:port [accept date] frontend backend/server TR/Tw/Tc/Tr/Ta status bytes ...
_HAPROXY = (rb"[^ ]+ \[[^ \]]+\] [^ ]+ ([^/ ]+/[^ ]+) "
            rb"[-\d]+/[-\d]+/[-\d]+/[-\d]+/\+?(-1|\d+) (-1|\d{3}) ")
# $remote_addr [$time_local] $status $request_time "$upstream_addr" ...
_NGINX = rb'[^ ]+ \[[^\]]*\] (\d{3}) (\d+\.\d+|\d+) "([^"]*)"'
_HAPROXY_RE = re.compile(_HAPROXY)
_NGINX_RE = re.compile(_NGINX)
# The hot path: header and line in one match on the whole datagram.
_DATAGRAM_RE = {
    "haproxy": re.compile(rb"(?:" + _HEADER + rb")?" + _HAPROXY),
    "nginx": re.compile(rb"(?:" + _HEADER + rb")?" + _NGINX),
}


def parse_haproxy(message: bytes) -> AccessLine | None:
    """An `option httplog` line, or None when the message is not one."""
    match = _HAPROXY_RE.match(message)
    if match is None:
        return None
    key, ta, status = match.groups()
    return AccessLine(key, status, int(ta) / 1000.0 if ta != b"-1" else None)


def parse_nginx(message: bytes) -> AccessLine | None:
    """A line in the project's `log_format odoo_watchdog`, or None when the message is not one."""
    match = _NGINX_RE.match(message)
    if match is None:
        return None
    status, seconds, upstream = match.groups()
    # "a, b" after a retry, "a : b" across upstream groups: the last one answered.
    return AccessLine(upstream[upstream.rfind(b" ") + 1:], status, float(seconds))


# ---------------------------------------------------------------- mapping


def routes_from_config(config: DaemonConfig, fmt: Format) -> dict[str, tuple[str, str]]:
    """What the proxy logs for each colour → (site, colour).

    HAProxy: `backend/server`; nginx: the colour's `server` (its upstream address).
    """
    routes: dict[str, tuple[str, str]] = {}
    for site_name, site in config.sites.items():
        for color, spec in site.colors.items():
            key = f"{site.backend}/{spec.server}" if fmt == "haproxy" else spec.server
            if key in routes and routes[key] != (site_name, color):
                log.warning("access_log_route_ambiguous", key=key, kept=routes[key],
                            dropped=(site_name, color))
                continue
            routes[key] = (site_name, color)
    return routes


def _split_host_port(address: str) -> tuple[str, str] | None:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host or host.startswith("unix"):
        return None
    return host.strip("[]"), port


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _address(ip: str, port: str) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


# ---------------------------------------------------------------- receiver


class _Series:
    """What one (site, colour) saw since the last flush, and its metric children.

    A line costs a dict update and a bisect here; `flush()` moves the counts into the
    prometheus_client children in bulk. Each `inc()` and `observe()` of prometheus_client
    takes a lock (about 3 µs a line for a counter and a histogram), which would be two
    thirds of the receiver's time. The bulk update of the histogram uses its per-bucket
    values (`_buckets`, `_sum`); if a prometheus_client release changes them, every line
    is observed one by one instead (`bulk` is False).
    """

    __slots__ = ("bounds", "bucket_counts", "bulk", "code_counts", "codes", "color",
                 "duration", "metrics", "site", "total")

    def __init__(self, site: str, color: str, metrics: Metrics) -> None:
        self.site = site
        self.color = color
        self.metrics = metrics
        self.duration: Any = metrics.http_request_duration_seconds.labels(site, color)
        self.codes: dict[bytes, Any] = {}  # status -> counter child
        self.code_counts: dict[bytes, int] = {}  # status -> lines since the last flush
        upper = getattr(self.duration, "_upper_bounds", None)
        buckets = getattr(self.duration, "_buckets", None)
        self.bulk = (isinstance(upper, list) and isinstance(buckets, list)
                     and len(upper) == len(buckets) and upper[-1] == math.inf
                     and hasattr(self.duration, "_sum"))
        self.bounds: list[float] = list(upper[:-1]) if self.bulk and upper else []
        self.bucket_counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def flush(self) -> None:
        counts, self.code_counts = self.code_counts, {}
        for status, count in counts.items():
            child = self.codes.get(status)
            if child is None:
                code = "499" if status == b"-1" else status.decode()
                child = self.codes[status] = self.metrics.http_requests_total.labels(
                    self.site, self.color, code)
            child.inc(count)
        if not self.bulk:
            return
        buckets, self.bucket_counts = self.bucket_counts, [0] * len(self.bucket_counts)
        total, self.total = self.total, 0.0
        if any(buckets):
            self.duration._sum.inc(total)
            for index, count in enumerate(buckets):
                if count:
                    self.duration._buckets[index].inc(count)


class _Protocol(asyncio.DatagramProtocol):
    """asyncio's datagram transport reads one datagram per turn of the loop (one select()
    each, about 20 µs), which caps a receiver at some 30,000 lines/s and drops the rest. So
    each datagram it hands over is followed by what else is queued on the same socket (ours,
    non-blocking), up to `DRAIN` datagrams per turn, so that ticks and the API still get
    their turns under a flood."""

    def __init__(self, receiver: AccessLogReceiver, sock: socket.socket) -> None:
        self.handle = receiver.handle
        self.recv = sock.recv

    def datagram_received(self, data: bytes, addr: Any) -> None:
        handle, recv = self.handle, self.recv
        handle(data)
        for _ in range(DRAIN):
            try:
                data = recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ICMP errors and the like: the transport reports them
                log.warning("access_log_socket_error", error=str(exc))
                return
            handle(data)

    def error_received(self, exc: Exception) -> None:
        log.warning("access_log_socket_error", error=str(exc))


class AccessLogReceiver:
    """A syslog/UDP listener on the asyncio loop that turns access-log lines into metrics.

    `routes` maps what the proxy logs for a colour (see `routes_from_config`) to
    (site, colour). Counters: `received` datagrams, `parsed` access-log lines, `unparsed`
    datagrams that were not one, `unmapped` parsed lines for no known colour.
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
        if fmt not in _DATAGRAM_RE:
            raise ValueError(f"unknown access-log format {fmt!r} (haproxy or nginx)")
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"listen must be host:port (got {listen!r})")
        self.host = host.strip("[]")
        self.port = int(port)
        self.format: Format = fmt
        self.metrics = metrics
        self.rcvbuf = rcvbuf
        self.clock = clock  # for the log sampling only
        self.routes = dict(routes)
        self.received = 0
        self.parsed = 0
        self.unparsed = 0
        self.unmapped = 0
        self._match = _DATAGRAM_RE[fmt].match
        self._nginx = fmt == "nginx"
        self._series: dict[bytes, _Series | None] = {}
        self._by_key: dict[bytes, tuple[str, str]] = {
            k.encode(): v for k, v in self.routes.items()
        }
        self._transport: asyncio.DatagramTransport | None = None
        self._flusher: asyncio.TimerHandle | None = None
        self._sock: socket.socket | None = None
        self._sampled_at: dict[str, float] = {}
        self._since_sample: dict[str, int] = {"unparsed": 0, "unmapped": 0}

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
            await self._resolve_aliases(loop)
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
        self._flusher = loop.call_later(FLUSH_EVERY, self._flush_soon)
        host, port = self.address
        rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        if sys.platform.startswith("linux"):
            rcvbuf //= 2  # Linux reports twice what was granted (its bookkeeping overhead)
        log.info("access_log_listening", listen=_address(host, str(port)), format=self.format,
                 rcvbuf=rcvbuf, colors=len(self.routes))
        if rcvbuf < self.rcvbuf:
            log.warning("access_log_small_buffer", rcvbuf=rcvbuf, wanted=self.rcvbuf,
                        hint=f"lines are lost while the daemon is busy: raise the limit with "
                             f"sysctl net.core.rmem_max={self.rcvbuf}")

    async def stop(self) -> None:
        transport, self._transport = self._transport, None
        if transport is None:
            return
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        self.flush()
        stats = self.stats()
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

    async def _resolve_aliases(self, loop: asyncio.AbstractEventLoop) -> None:
        """nginx logs the address it connected to: add the addresses of host-name servers."""
        for key, target in list(self.routes.items()):
            split = _split_host_port(key)
            if split is None or _is_ip(split[0]):
                continue
            host, port = split
            try:
                infos = await asyncio.wait_for(
                    loop.getaddrinfo(host, int(port), type=socket.SOCK_STREAM), timeout=5.0)
            except (OSError, TimeoutError) as exc:
                log.warning("access_log_resolve_failed", server=key, error=str(exc))
                continue
            for info in infos:
                alias = _address(str(info[4][0]), port).encode()
                self._by_key.setdefault(alias, target)

    # ------------------------------------------------------------ the hot path

    def handle(self, data: bytes, addr: Any = None) -> None:
        """One datagram: count it, parse it, add it to its colour's counts. Never raises.

        The counts reach the metrics at the next `flush()` (every `FLUSH_EVERY` seconds
        while the receiver runs, and when it stops).
        """
        self.received += 1
        try:
            match = self._match(data)
            if match is None:
                self._reject("unparsed", data)
                return
            if self._nginx:
                status, duration, upstream = match.groups()
                # "a, b" after a retry, "a : b" across upstream groups: the last one answered.
                upstream = upstream[upstream.rfind(b" ") + 1:]
                seconds: float | None = float(duration)
            else:
                upstream, duration, status = match.groups()
                seconds = int(duration) / 1000.0 if duration != b"-1" else None
            series = self._series.get(upstream)
            if series is None:
                series = self._lookup(upstream)
                if series is None:
                    self.unmapped += 1
                    if upstream != b"-" and not upstream.endswith(b"/<NOSRV>"):
                        self._reject("unmapped", data)
                    return
            counts = series.code_counts
            counts[status] = counts.get(status, 0) + 1
            if seconds is not None:
                if series.bulk:
                    series.bucket_counts[bisect_left(series.bounds, seconds)] += 1
                    series.total += seconds
                else:
                    series.duration.observe(seconds)
            self.parsed += 1
        except Exception as exc:  # a line must never take the receiver down
            self._reject("unparsed", data, exc)

    def flush(self) -> None:
        """Move the counts gathered since the last flush into the metrics."""
        for series in self._series.values():
            if series is not None:
                series.flush()

    def _flush_soon(self) -> None:
        try:
            self.flush()
        except Exception:  # never let the timer die
            log.exception("access_log_flush_failed")
        if self._transport is not None:
            self._flusher = asyncio.get_running_loop().call_later(FLUSH_EVERY, self._flush_soon)

    def _lookup(self, upstream: bytes) -> _Series | None:
        if upstream in self._series:
            return None  # known to be unmapped
        target = self._by_key.get(upstream)
        if target is None:
            if len(self._series) < 10_000:  # unknown servers must not grow it without bound
                self._series[upstream] = None
            return None
        series = self._series[upstream] = _Series(target[0], target[1], self.metrics)
        return series

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

    def stats(self) -> dict[str, int | None]:
        return {"received": self.received, "parsed": self.parsed, "unparsed": self.unparsed,
                "unmapped": self.unmapped, "kernel_drops": self.kernel_drops()}

    def kernel_drops(self) -> int | None:
        """Datagrams the kernel dropped on our socket (its buffer was full); None if unknown."""
        if self._sock is None:
            return None
        return udp_drops(self._sock)


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
