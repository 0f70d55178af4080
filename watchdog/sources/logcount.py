"""Counting for `source: logs`: the per-second window, and scanning lines at C speed.

Both transports (files, docker) hand their new bytes here; only matching lines are seen by
Python code, and a window is a ring of per-second counts, never a list of lines.
"""

from __future__ import annotations

import calendar
import itertools
import math
import operator
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TS_LEN", "EpochCache", "ReadResult", "SecondRing", "decode", "docker_lines",
           "plain_lines", "utc_second"]

# Docker's `timestamps=True` prefix: RFC3339NanoFixed in UTC, always 30 characters and a space.
TS_LEN = 30
_content = operator.itemgetter(slice(TS_LEN + 1, None))


class SecondRing:
    """Counts per whole second for the last `window` seconds: `ceil(window) + 2` slots."""

    __slots__ = ("counts", "seconds", "size")

    def __init__(self, window: float) -> None:
        self.size = math.ceil(window) + 2
        self.seconds = [-1] * self.size
        self.counts = [0] * self.size

    def add(self, second: int, count: int = 1) -> None:
        i = second % self.size
        held = self.seconds[i]
        if held == second:
            self.counts[i] += count
        elif held < second:
            self.seconds[i] = second
            self.counts[i] = count
        # else: older than anything the ring can still hold, so outside any window

    def total(self, now: float, window: float) -> int:
        """Lines in the seconds from floor(now - window) on."""
        first = math.floor(now - window)
        return sum(c for s, c in zip(self.seconds, self.counts, strict=True) if s >= first)

    def clear(self) -> None:
        self.seconds = [-1] * self.size
        self.counts = [0] * self.size



def decode(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def plain_lines(search: Callable[[str], Any], text: str) -> tuple[int, list[str]]:
    """(lines read, matching lines) of complete lines `text` (no final newline)."""
    lines = text.split("\n")
    return len(lines), list(filter(search, lines))


def docker_lines(search: Callable[[str], Any], text: str) -> tuple[int, list[str]]:
    """Like plain_lines for docker's `timestamp line` output (final newline allowed); the
    pattern sees each line without its timestamp, the matches keep theirs."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    hits = itertools.compress(lines, map(search, map(_content, lines)))
    return len(lines), list(hits)


class EpochCache:
    """`YYYY-MM-DD?HH:MM:SS` -> epoch seconds, UTC or local; lines of one second share it."""

    def __init__(self, local: bool) -> None:
        self.local = local
        self.cache: dict[str, int | None] = {}

    def __call__(self, stamp: str) -> int | None:
        cached = self.cache.get(stamp, -1)
        if cached != -1:
            return cached
        value: int | None
        try:
            fields = (int(stamp[0:4]), int(stamp[5:7]), int(stamp[8:10]),
                      int(stamp[11:13]), int(stamp[14:16]), int(stamp[17:19]))
            if self.local:
                value = int(time.mktime((*fields, 0, 0, -1)))
            else:
                value = calendar.timegm((*fields, 0, 0, 0))
        except (ValueError, OverflowError):
            value = None
        if len(self.cache) > 4096:
            self.cache.clear()
        self.cache[stamp] = value
        return value


utc_second = EpochCache(local=False)


@dataclass
class ReadResult:
    """What one read of a file or container found, besides the counts in its ring."""

    read: int = 0
    notes: list[str] = field(default_factory=list)
    error: str | None = None
