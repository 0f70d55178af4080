"""`source: prometheus`: an instant query on Prometheus' HTTP API (`GET /api/v1/query`).

Asked with aiohttp on the event loop, over at most `CONNECTIONS` kept-alive connections, each
request within the configured timeout (waiting for a free connection included). Rules with the
same rendered query in one tick share one request.

DESIGN.md §8 names prometheus-api-client, run in a thread; it was, until `bench_scale.py
--parts` measured it at 0.82-0.86 ms of CPU a query (requests, urllib3, a thread hop and the
GIL), against 0.10-0.22 ms for the same query here: at 500 sites ticking every second that is
the difference between 43% and under 10% of a core for the queries alone. The answer is read
the way the API documents it (`status`, `data.resultType`, `data.result`; `errorType` and
`error` on a failure); the rest is the same as before: empty vector or NaN is `no_data`,
more than one series an error naming their labels.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from typing import Any

import aiohttp

from watchdog.config import DaemonConfig
from watchdog.measurement import Measurement
from watchdog.rulefiles import PrometheusRule
from watchdog.schema import render
from watchdog.sources.base import Target, register

# Prometheus runs 20 queries at once by default (--query.max-concurrency); a daemon keeps
# well within that.
CONNECTIONS = 8


class PrometheusSource:
    kind = "prometheus"

    def __init__(self, url: str, timeout: float, connections: int = CONNECTIONS) -> None:
        self.url = url
        self.timeout = timeout
        self._endpoint = url.rstrip("/") + "/api/v1/query"
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        self._inflight: dict[str, asyncio.Future[Measurement]] = {}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._connections),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                # Answers of a few hundred bytes from a Prometheus on the same host or network:
                # gzip costs more to undo than it saves.
                headers={"User-Agent": "odoo-watchdog", "Accept-Encoding": "identity"},
            )
        return self._session

    async def measure(self, rule: PrometheusRule, target: Target) -> Measurement:
        query = render(rule.query, target.variables())
        shared = self._inflight.get(query)
        if shared is not None:
            return await asyncio.shield(shared)
        future: asyncio.Future[Measurement] = asyncio.get_running_loop().create_future()
        self._inflight[query] = future
        try:
            result = await self.query(query)
            future.set_result(result)
            return result
        finally:
            del self._inflight[query]
            if not future.done():
                future.cancel()

    async def query(self, query: str) -> Measurement:
        """One instant query. A kept connection that Prometheus closed in the meantime (a
        restart) is tried once more on a new one; anything else is this tick's `error`."""
        started = time.time()
        try:
            try:
                status, body = await self._get(query)
            except aiohttp.ServerDisconnectedError:
                status, body = await self._get(query)
        except TimeoutError:
            return self._failed(f"no answer in {self.timeout:g}s", started)
        except aiohttp.ClientConnectorError as exc:
            return self._failed(f"unreachable ({_os_reason(exc.os_error)})", started)
        except (aiohttp.ClientError, OSError) as exc:
            return self._failed(f"unreachable ({type(exc).__name__}: {_short(str(exc))})",
                                started)
        return answer(self.url, status, body, started, time.time())

    async def _get(self, query: str) -> tuple[int, bytes]:
        async with self._client().get(self._endpoint, params={"query": query},
                                      allow_redirects=False) as resp:
            return resp.status, await resp.read()

    def _failed(self, why: str, started: float) -> Measurement:
        return Measurement.failed(f"prometheus {self.url}: {why}", started, time.time())

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def answer(url: str, status: int, body: bytes, started: float = 0.0,
           finished: float = 0.0) -> Measurement:
    """A measurement from the query API's answer: `{"status": "success", "data": {...}}`, or
    on a failure (HTTP 400, 422, 503) `{"status": "error", "errorType", "error"}`."""
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        return Measurement.failed(
            f"prometheus {url}: HTTP Status Code {status}, not a query answer: "
            f"{_short(body.decode('utf-8', 'replace'))}", started, finished)
    if status != 200 or payload.get("status") != "success":
        why = f"{payload.get('errorType', 'error')}: {payload.get('error', '')}".rstrip(": ")
        return Measurement.failed(f"prometheus {url}: HTTP Status Code {status}: {why}",
                                  started, finished)
    data = payload.get("data")
    if not isinstance(data, dict):
        return Measurement.failed(f"prometheus {url}: an answer without data", started,
                                  finished)
    return interpret(data.get("result"), started, finished)


def interpret(data: Any, started: float = 0.0, finished: float = 0.0) -> Measurement:
    """One value from an instant-query result: vector, scalar or string."""
    if isinstance(data, list) and len(data) == 2 and not isinstance(data[0], dict):
        return _number(data[1], "scalar", started, finished)  # resultType scalar: [ts, "v"]
    if not isinstance(data, list):
        return Measurement.failed(f"unexpected answer from Prometheus: {data!r:.80}",
                                  started, finished)
    if not data:
        return Measurement.no_data("empty result", started, finished)
    if len(data) > 1:
        shown = "; ".join(_labels(item.get("metric", {})) for item in data[:3])
        more = f" and {len(data) - 3} more" if len(data) > 3 else ""
        return Measurement.failed(
            f"query returned {len(data)} series, expected one: {shown}{more} "
            "(aggregate with sum() or filter by labels)", started, finished)
    item = data[0]
    if "values" in item:
        return Measurement.failed("query returned a range vector; use an instant vector",
                                  started, finished)
    return _number(item.get("value", [None, None])[1], _labels(item.get("metric", {})),
                   started, finished)


def _number(raw: Any, series: str, started: float, finished: float) -> Measurement:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return Measurement.failed(f"not a number: {raw!r:.40}", started, finished)
    origin = f" from {series}" if series != "{}" else ""  # an aggregate has no labels to name
    if math.isnan(value):
        return Measurement.no_data(f"NaN{origin}", started, finished)
    return Measurement(value, None, f"{value:g}{origin}", started, finished)


def _labels(metric: dict[str, str]) -> str:
    if not metric:
        return "{}"
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(metric.items())) + "}"


def _os_reason(error: OSError) -> str:
    """`connection refused`, not asyncio's "Connect call failed ('127.0.0.1', 9090)"."""
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if error.errno:
        return os.strerror(error.errno).lower()
    return _short(str(error))


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 200 else text[:197] + "..."


@register("prometheus", PrometheusRule)
def _factory(config: DaemonConfig) -> PrometheusSource:
    return PrometheusSource(config.prometheus.url, config.prometheus.timeout)
