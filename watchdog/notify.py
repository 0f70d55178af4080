"""Outgoing notifications: a generic JSON webhook and Slack incoming webhooks.

Sent from a queue by one worker task, never from the tick: a slow or dead receiver delays
nobody's rollback. Each send has a timeout and a few retries with backoff; a message that
still fails is logged and dropped. The queue is bounded, so a dead receiver cannot grow the
daemon's memory; when full, the oldest message is dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from watchdog.config import NotifyTarget
from watchdog.secrets import read_secret

log = structlog.get_logger("odoo_watchdog.notify")
RETRIES = 3
QUEUE_SIZE = 1000


@dataclass(frozen=True)
class Message:
    site: str
    kind: str
    text: str
    at: float
    details: dict[str, Any]


@dataclass(frozen=True)
class Target:
    kind: str  # webhook | slack
    url: str
    timeout: float


def resolve(targets: list[NotifyTarget], base: Path) -> list[Target]:
    """Read url_file secrets now; a missing secret file is a clear error at start
    (SecretError, a ValueError)."""
    out = []
    for spec in targets:
        url = spec.url
        if url is None:
            assert spec.url_file is not None  # NotifyTarget validates: one of url, url_file
            url = read_secret(spec.url_file, base, f"notify {spec.kind}: url_file")
        out.append(Target(spec.kind, url, spec.timeout))
    return out


def payload(target: Target, message: Message) -> dict[str, Any]:
    if target.kind == "slack":
        return {"text": f"*odoo-watchdog* {message.text}"}
    return {"site": message.site, "kind": message.kind, "text": message.text,
            "at": message.at, **message.details}


class Notifier:
    def __init__(self, targets: list[Target], clock: Callable[[], float] = time.time) -> None:
        self.targets = targets
        self.clock = clock
        self.queue: asyncio.Queue[Message] = asyncio.Queue(QUEUE_SIZE)
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        if self.targets and self._task is None:
            self._task = asyncio.create_task(self._worker())

    def post(self, site: str, kind: str, text: str, **details: Any) -> None:
        """Queue a message; returns at once."""
        if not self.targets:
            return
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
                self.dropped += 1
        self.queue.put_nowait(Message(site, kind, text, self.clock(), details))

    async def _worker(self) -> None:
        self._session = aiohttp.ClientSession()
        while True:
            message = await self.queue.get()
            await asyncio.gather(*(self._send(t, message) for t in self.targets))

    async def _send(self, target: Target, message: Message) -> None:
        assert self._session is not None
        body = payload(target, message)
        for attempt in range(1, RETRIES + 1):
            try:
                async with self._session.post(
                    target.url, json=body, timeout=aiohttp.ClientTimeout(total=target.timeout)
                ) as resp:
                    await resp.read()
                    if resp.status < 300:
                        self.sent += 1
                        return
                    reason = f"HTTP {resp.status}"
                    if 400 <= resp.status < 500 and resp.status != 429:
                        break  # the receiver refuses this message; retrying will not help
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            if attempt < RETRIES:
                await asyncio.sleep(0.5 * 2 ** (attempt - 1))
        self.failed += 1
        log.warning("notify_failed", target=target.kind, kind=message.kind, site=message.site,
                    reason=reason)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()
