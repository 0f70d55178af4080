"""`source: http`: a GET on the colour's own URL (not through the proxy).

The value is 1 when the colour answers 2xx within the rule's timeout and 0 otherwise: an
unreachable colour is the very thing this rule measures, so it is a breach, never `error`.
Redirects are not followed; `/web/health` answering 303 to a login page is not healthy.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from typing import cast
from urllib.parse import unquote, urlsplit

from watchdog.config import DaemonConfig
from watchdog.measurement import Measurement
from watchdog.rulefiles import HttpRule
from watchdog.schema import render
from watchdog.sources.base import Target, register

# A health answer is a few bytes; past this much body the status is all the probe needs.
MAX_BODY = 1 << 20


class HttpSource:
    kind = "http"

    def __init__(self) -> None:
        self._tls: ssl.SSLContext | None = None

    async def measure(self, rule: HttpRule, target: Target) -> Measurement:
        url = target.url + render(rule.path, target.variables())
        if url.startswith("https:") and self._tls is None:
            self._tls = ssl.create_default_context()
        return await probe(url, rule.timeout, self._tls)

    async def close(self) -> None:
        return None


class BadAnswer(Exception):
    """What came back is not an HTTP/1 answer."""


class _Get(asyncio.Protocol):
    """One GET on a connection of its own (`Connection: close`; Odoo's server closes every
    connection anyway): the status line and headers, then the body up to its end (its
    Content-Length, chunked's last chunk, or the server closing), at most MAX_BODY."""

    def __init__(self, request: bytes, done: asyncio.Future[int]) -> None:
        self.request = request
        self.done = done
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.status: int | None = None
        self.body_from = 0
        self.length: int | None = None
        self.chunked = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: another event loop's transports (uvloop's) are
        # not subclasses of asyncio.Transport, and the check would leave the probe hanging.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            if self.status is None:
                self._head()
        except BadAnswer as exc:
            self._end(exc)
            return
        if self.status is not None and self._complete():
            self._end()

    def _head(self) -> None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > 65536:
                raise BadAnswer("headers longer than 64 KiB")
            return
        lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise BadAnswer(f"not an HTTP answer: {lines[0][:60]!r}")
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length" and value.strip().isdigit():
                self.length = int(value)
            elif name == "transfer-encoding" and "chunked" in value.lower():
                self.chunked = True
        self.status, self.body_from = int(code), end + 4
        if self.status in (204, 304) or 100 <= self.status < 200:
            self.length = 0

    def _complete(self) -> bool:
        body = len(self.buffer) - self.body_from
        if body >= MAX_BODY:
            return True
        if self.length is not None and not self.chunked:
            return body >= self.length
        return self.chunked and self.buffer.endswith(b"0\r\n\r\n")

    def _end(self, error: Exception | None = None) -> None:
        if not self.done.done():
            if error is None and self.status is not None:
                self.done.set_result(self.status)
            else:
                self.done.set_exception(error or BadAnswer("closed before answering"))
        if self.transport is not None:
            self.transport.close()

    def eof_received(self) -> bool:
        self._end()  # an answer without a length ends when the server closes
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and not self.done.done() and self.status is None:
            self.done.set_exception(exc)
        self._end()


def request_of(url: str) -> tuple[str, int, bytes]:
    """(host, port, the request's bytes) for a GET of `url` (http or https)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadAnswer(f"not an http(s) URL: {url}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.netloc.rpartition("@")[2]
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    head = [f"GET {target} HTTP/1.1", f"Host: {host}", "User-Agent: odoo-watchdog",
            "Accept: */*", "Connection: close"]
    if parts.username is not None:
        user = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        head.append("Authorization: Basic " + base64.b64encode(user.encode()).decode())
    return parts.hostname, port, ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")


async def probe(url: str, timeout: float, tls: ssl.SSLContext | None = None) -> Measurement:
    """GET `url`: value 1 for a 2xx within `timeout`, else 0 with the reason. Redirects are
    not followed. A raw HTTP/1.1 exchange on the event loop: for one GET on a new connection
    each time it costs a third less CPU than aiohttp's client (bench_scale --parts)."""
    started = time.time()
    clock = time.monotonic()
    loop = asyncio.get_running_loop()
    transport: asyncio.BaseTransport | None = None
    try:
        host, port, request = request_of(url)
        done: asyncio.Future[int] = loop.create_future()
        async with asyncio.timeout(timeout):
            transport, _ = await loop.create_connection(
                lambda: _Get(request, done), host, port,
                ssl=(tls or ssl.create_default_context()) if url.startswith("https:") else None)
            status = await done
        latency = time.monotonic() - clock
        detail = f"HTTP {status} in {latency * 1000:.0f} ms"
        return Measurement(1.0 if 200 <= status < 300 else 0.0, None, detail, started,
                           time.time(), latency)
    except TimeoutError:
        detail = f"no answer in {timeout:g}s"
    except ConnectionRefusedError:
        detail = "cannot connect: connection refused"
    except ssl.SSLError as exc:
        detail = f"TLS: {exc.reason or exc}"
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        detail = f"cannot connect: {reason}" if transport is None else f"{reason}"
    except BadAnswer as exc:
        detail = str(exc)
    finally:
        if transport is not None:
            transport.close()
    return Measurement(0.0, None, detail, started, time.time(), time.monotonic() - clock)


@register("http", HttpRule)
def _factory(config: DaemonConfig) -> HttpSource:
    return HttpSource()
