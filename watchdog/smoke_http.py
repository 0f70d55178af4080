"""Smoke checks made of plain GETs on the candidate: `latency` and the named `http` checks.

- `latency`: `requests` sequential GETs of `path`; the p95 (nearest rank: the ceil(0.95 n)-th
  smallest) must be under `p95`. It stops as soon as more requests were slow than a passing
  p95 allows, and then reports the least the p95 can be.
- `http`: each `{name, path, status, body}` is one GET (no redirect followed), one of the
  accepted statuses, and `body` in the answer when given.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import aiohttp

from watchdog.config import HttpCheck, LatencySettings

__all__ = ["nearest_rank", "run_http", "run_latency"]

TIMEOUT = 10.0


def nearest_rank(samples: list[float], q: float = 0.95) -> float:
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


async def run_latency(session: aiohttp.ClientSession, url: str, settings: LatencySettings,
                      clock: Callable[[], float] = time.monotonic) -> tuple[bool, str]:
    n, limit, path = settings.requests, settings.p95, settings.path
    allowed_slow = n - math.ceil(0.95 * n)  # more slow ones than this and the p95 is slow
    samples: list[float] = []
    for index in range(n):
        start = clock()
        try:
            async with session.get(url + path, allow_redirects=False,
                                   timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as resp:
                await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return False, f"GET {path} {index + 1} of {n}: {type(exc).__name__}: {exc}"
        samples.append(clock() - start)
        if status >= 500:
            return False, f"GET {path} {index + 1} of {n} answered {status}"
        slow = sorted((s for s in samples if s >= limit), reverse=True)
        if len(slow) > allowed_slow:
            floor = slow[allowed_slow]
            early = (f", stopped after {len(samples)} of {n}: it can no longer pass"
                     if len(samples) < n else "")
            return False, (f"p95 {'at least ' if early else ''}{_ms(floor)} over GET {path}, "
                           f"not under {_ms(limit)}{early}")
    return True, f"p95 {_ms(nearest_rank(samples))} < {_ms(limit)} over {n} GET {path}"


async def run_http(session: aiohttp.ClientSession, url: str, check: HttpCheck) -> tuple[bool, str]:
    try:
        async with session.get(url + check.path, allow_redirects=False,
                               timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as resp:
            body = await resp.text(errors="replace")
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return False, f"GET {check.path} unreachable: {type(exc).__name__}: {exc}"
    accepted = ", ".join(str(s) for s in check.status)
    if status not in check.status:
        return False, f"GET {check.path} answered {status}, not {accepted}"
    if check.body is not None and check.body not in body:
        return False, f"GET {check.path} answered {status} without {check.body[:60]!r}"
    found = f" with {check.body[:60]!r}" if check.body is not None else ""
    return True, f"GET {check.path} answered {status}{found}"
