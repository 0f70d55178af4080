"""Constant load through a proxy, recording which colour answered each request.

Each request opens a new connection and sends no cookie, like a stream of new users: that
is what a weight split applies to (sticky users follow their cookie, not the weights). The
stand-in names the colour that answered in `X-Odoo-Color`. Every loop is bounded in time and
count, and only loopback is allowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp


@dataclass(frozen=True)
class Sample:
    at: float  # time.monotonic() when the answer (or the failure) came
    status: int  # 0 when no HTTP answer came at all
    color: str | None
    latency: float
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.status == 0 or self.status >= 500


@dataclass
class Window:
    samples: list[Sample] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.samples)

    @property
    def failed(self) -> list[Sample]:
        return [s for s in self.samples if s.failed]

    @property
    def by_color(self) -> Counter[str]:
        return Counter(s.color for s in self.samples if not s.failed and s.color)

    def share(self, color: str) -> float:
        """Percent of successful answers that came from `color`."""
        ok = sum(self.by_color.values())
        return 100.0 * self.by_color[color] / ok if ok else 0.0


class LoadClient:
    """`concurrency` workers sending GETs to `url + path` until stopped or a bound is hit."""

    def __init__(
        self,
        url: str,
        path: str = "/web/health",
        *,
        concurrency: int = 8,
        max_seconds: float = 300.0,
        max_requests: int = 1_000_000,
        timeout: float = 5.0,
        delay: float = 0.0,
    ) -> None:
        host = urlsplit(url).hostname or ""
        if host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("127."):
            raise ValueError(f"load goes to loopback only, not {host!r}")
        self.url = url.rstrip("/") + path
        self.concurrency = concurrency
        self.max_seconds = max_seconds
        self.max_requests = max_requests
        self.timeout = timeout
        self.delay = delay  # seconds each worker waits between requests (0: as fast as it can)
        self.samples: list[Sample] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> LoadClient:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True, limit=self.concurrency * 2),
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=self.timeout),
        )
        deadline = time.monotonic() + self.max_seconds
        self._tasks = [asyncio.create_task(self._worker(deadline)) for _ in range(self.concurrency)]
        return self

    async def _worker(self, deadline: float) -> None:
        assert self._session is not None
        while not self._stop.is_set() and time.monotonic() < deadline:
            if len(self.samples) >= self.max_requests:
                return
            start = time.monotonic()
            try:
                async with self._session.get(self.url) as resp:
                    await resp.read()
                    color = resp.headers.get("X-Odoo-Color")
                    self.samples.append(
                        Sample(time.monotonic(), resp.status, color, time.monotonic() - start)
                    )
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                self.samples.append(
                    Sample(time.monotonic(), 0, None, time.monotonic() - start,
                           f"{type(exc).__name__}: {exc}")
                )
            if self.delay:
                await asyncio.sleep(self.delay)

    def mark(self) -> int:
        return len(self.samples)

    def window(self, start: int, end: int | None = None) -> Window:
        return Window(self.samples[start:end])

    def since(self, when: float) -> Window:
        return Window([s for s in self.samples if s.at >= when])

    async def wait_count(self, count: int, timeout: float = 60.0) -> None:
        """Until `count` more samples than now have been recorded."""
        target = len(self.samples) + count
        deadline = time.monotonic() + timeout
        while len(self.samples) < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(self.samples)} of {target} requests in {timeout}s")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> LoadClient:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def main(argv: list[str] | None = None) -> int:
    """Run a LoadClient as its own process (benchmarks), writing samples as JSON lines at the
    end: `python -m watchdog.lab.load URL --out FILE`; SIGTERM ends it early."""
    import argparse
    import json
    import signal

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("url")
    parser.add_argument("--path", default="/web/health")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    async def run() -> list[Sample]:
        client = LoadClient(args.url, args.path, concurrency=args.concurrency,
                            max_seconds=args.seconds, delay=args.delay)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await client.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.seconds)
        await client.stop()
        return client.samples

    samples = asyncio.run(run())
    with open(args.out, "w") as out:
        for s in samples:
            out.write(json.dumps([s.at, s.status, s.color, s.latency, s.error]) + "\n")
    return 0


def read_samples(path: str) -> list[Sample]:
    import json

    with open(path) as handle:
        return [Sample(*json.loads(line)) for line in handle if line.strip()]


if __name__ == "__main__":
    raise SystemExit(main())
