"""What the access-log receiver keeps per site and colour for `source: traffic` (DESIGN.md §14).

One `TrafficWindow` per (site, colour): a ring of `HISTORY` one-second slots. Each slot holds
the second it counts, the requests, the 5xx answers, the requests with a duration, and a
uniform sample of at most `PER_SECOND` of those durations (reservoir sampling: each of the
second's requests has the same chance to be kept, however many there are). A slot is reused
when its second comes round again, so the memory of a window is fixed by `HISTORY` and
`PER_SECOND`, never by the traffic: at most 300 x 100 durations of 8 bytes (an `array('d')`),
some 240 KB per colour at any rate, and a few hundred bytes on a quiet site.

`view(now, window)` sums the slots of the last `window` seconds: the counts, and the sample of
durations with each second's weight (its requests with a duration over the durations it kept),
so a quantile over seconds of different traffic is not skewed toward quiet seconds. The
statistical judge (`watchdog.judge`) takes the pooled sample: within a second every request
had the same chance; above `PER_SECOND` requests a second, busy seconds count less in it than
they would with every duration (said in the README).

Pure: the caller passes the second (`add`) and the time (`view`); nothing here reads a clock.
"""

from __future__ import annotations

import math
import random
from array import array
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["HISTORY", "PER_SECOND", "TrafficWindow", "WindowView", "quantile"]

HISTORY = 300  # seconds kept: the longest `window` a traffic rule may have
PER_SECOND = 100  # durations kept per colour and second, at most


class _Second:
    __slots__ = ("at", "durations", "errors", "seen", "total")

    def __init__(self) -> None:
        self.at = -1
        self.total = 0
        self.errors = 0
        self.seen = 0  # requests of this second with a duration
        self.durations = array("d")


@dataclass(frozen=True)
class WindowView:
    """One colour's requests over a window."""

    seconds: float  # the window's length
    total: int
    errors: int  # 5xx answers
    durations: tuple[float, ...]  # the pooled sample (all of them below PER_SECOND a second)
    weights: tuple[float, ...]  # each duration's weight: requests it stands for

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.total if self.total else None

    @property
    def rps(self) -> float:
        return self.total / self.seconds

    def quantile(self, q: float) -> float | None:
        return quantile(self.durations, self.weights, q)


def quantile(values: tuple[float, ...], weights: tuple[float, ...], q: float) -> float | None:
    """The weighted `q`-quantile (0..1) of `values`: the smallest value whose cumulated weight
    reaches `q` of the whole (with equal weights, the nearest-rank quantile); None if empty."""
    if not values:
        return None
    pairs = sorted(zip(values, weights, strict=True))
    goal = q * math.fsum(weights)
    cumulated = 0.0
    for value, weight in pairs:
        cumulated += weight
        if cumulated >= goal - 1e-9:
            return value
    return pairs[-1][0]


class TrafficWindow:
    """The last `history` seconds of one colour's requests, in fixed memory."""

    __slots__ = ("_current", "_random", "_ring", "history", "per_second")

    def __init__(self, history: int = HISTORY, per_second: int = PER_SECOND,
                 rng: Callable[[], float] | None = None) -> None:
        self.history = history
        self.per_second = per_second
        self._ring: list[_Second | None] = [None] * history
        self._random = rng or random.Random().random  # noqa: S311 (sampling, not secrets)
        self._current = _Second()  # the slot of the newest second (a placeholder at first)

    def add(self, second: int, status: bytes, duration: float | None) -> None:
        """One request seen in `second` (an integer time), answered `status` (as logged)."""
        slot = self._current
        if slot.at != second:  # the first request of a new second (or a late line)
            found = self._slot(second)
            if found is None:
                return
            slot = found
        slot.total += 1
        if status[:1] == b"5":
            slot.errors += 1
        if duration is not None:
            seen = slot.seen = slot.seen + 1
            if seen <= self.per_second:
                slot.durations.append(duration)
            else:
                j = int(self._random() * seen)
                if j < self.per_second:
                    slot.durations[j] = duration

    def _slot(self, second: int) -> _Second | None:
        """The slot of `second`, emptied if it held an older one; None if it holds a newer
        one (the line is older than any window)."""
        index = second % self.history
        slot = self._ring[index]
        if slot is None:
            slot = self._ring[index] = _Second()
        if slot.at != second:
            if second < slot.at:
                return None
            slot.at = second
            slot.total = slot.errors = slot.seen = 0
            del slot.durations[:]
        self._current = slot
        return slot

    def view(self, now: float, window: float) -> WindowView:
        """The requests of the seconds in (now - window, now]."""
        last = math.floor(now)
        first = last - min(math.ceil(window), self.history) + 1
        total = errors = 0
        durations: list[float] = []
        weights: list[float] = []
        for slot in self._ring:
            if slot is None or not first <= slot.at <= last:
                continue
            total += slot.total
            errors += slot.errors
            if slot.durations:
                durations.extend(slot.durations)
                weight = slot.seen / len(slot.durations)
                weights.extend([weight] * len(slot.durations))
        return WindowView(float(window), total, errors, tuple(durations), tuple(weights))

    def memory(self) -> int:
        """Durations held now (at most history x per_second)."""
        return sum(len(s.durations) for s in self._ring if s is not None)
