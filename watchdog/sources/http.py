"""`source: http`: a GET on the colour's own URL (not through the proxy).

The value is 1 when the colour answers 2xx within the rule's timeout and 0 otherwise: an
unreachable colour is the very thing this rule measures, so it is a breach, never `error`.
Redirects are not followed; `/web/health` answering 303 to a login page is not healthy.
"""

from __future__ import annotations

import time

import aiohttp

from watchdog.config import DaemonConfig
from watchdog.measurement import Measurement
from watchdog.rulefiles import HttpRule
from watchdog.schema import render
from watchdog.sources.base import Target, register


class HttpSource:
    kind = "http"

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64, force_close=True),
                headers={"User-Agent": "odoo-watchdog"},
            )
        return self._session

    async def measure(self, rule: HttpRule, target: Target) -> Measurement:
        url = target.url + render(rule.path, target.variables())
        return await probe(self._client(), url, rule.timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


async def probe(session: aiohttp.ClientSession, url: str, timeout: float) -> Measurement:
    started = time.time()
    clock = time.monotonic()
    try:
        async with session.get(
            url, timeout=aiohttp.ClientTimeout(total=timeout), allow_redirects=False
        ) as resp:
            await resp.read()
            latency = time.monotonic() - clock
            ok = 200 <= resp.status < 300
            detail = f"HTTP {resp.status} in {latency * 1000:.0f} ms"
            return Measurement(1.0 if ok else 0.0, None, detail, started, time.time(), latency)
    except TimeoutError:
        detail = f"no answer in {timeout:g}s"
    except aiohttp.ClientConnectorError as exc:
        detail = f"cannot connect: {exc.os_error.strerror or exc}"
    except aiohttp.ClientError as exc:
        detail = f"{type(exc).__name__}: {exc}"
    except OSError as exc:
        detail = f"{type(exc).__name__}: {exc}"
    return Measurement(0.0, None, detail, started, time.time(), time.monotonic() - clock)


@register("http", HttpRule)
def _factory(config: DaemonConfig) -> HttpSource:
    return HttpSource()
