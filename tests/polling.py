"""Waiting for the lab, bounded: poll a probe until it answers, or fail saying what never came."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def wait(probe: Callable[[], T | None], timeout: float, what: str, every: float = 0.05) -> T:
    """Call `probe` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout:g}s")
        time.sleep(every)


async def until(probe: Callable[[], Awaitable[T | None]], timeout: float, what: str,
                every: float = 0.05) -> T:
    """Await `probe` until it returns something other than None."""
    deadline = time.monotonic() + timeout
    while True:
        got = await probe()
        if got is not None:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout:g}s")
        await asyncio.sleep(every)
