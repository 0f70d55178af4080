"""Crash points, for tests only: the daemon kills itself with SIGKILL at a named point.

`ODOO_WATCHDOG_CRASH_AT=<point>[:N][+SECONDS]` arms one point: the Nth time the daemon reaches
it (default the first), it sends itself SIGKILL, a real `kill -9` (no `finally`, no flush of
anything but the line it writes to stderr first); with `+SECONDS` the kill comes that long after
the Nth hit, while the daemon goes on (a prepare step's command runs meanwhile). The chaos test
(tests/test_chaos.py) restarts the daemon after each kill and checks that it resumes.

Unset, `hit()` is one comparison: nothing measurable. Set, the daemon logs a WARNING at start,
and a name that is not a point (a typo) stops the start, so that a test cannot pass by never
crashing. Never set it in production.

The points (where each hook is: docs/rollouts.md "Crash safety"):

- `after_save`: a decision is in the store, and nothing of it was done yet (not logged, no
  metric, no router call, no notification, no step started);
- `after_commit`: a decision with a new split is stored, right before the router call;
- `after_router`: the router applied the new split and answered (HAProxy: with its read-back),
  before the daemon takes that answer as the split in force, counts it and checks it (a
  drain the router began is left running, as a crash would leave it);
- `in_step:<step>` for backup, clone, deploy, migrate, gate and restore: a step's progress
  line was written to the events (gate, which has none: its check ran, its result not yet
  reported). Which line is the middle of which step: docs/rollouts.md.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from dataclasses import dataclass

import structlog

log = structlog.get_logger("odoo_watchdog")

ENV = "ODOO_WATCHDOG_CRASH_AT"
STEPS = ("backup", "clone", "deploy", "migrate", "gate", "restore")
POINTS = ("after_save", "after_commit", "after_router", *(f"in_step:{s}" for s in STEPS))


@dataclass(frozen=True)
class CrashPoint:
    point: str
    nth: int = 1
    delay: float = 0.0

    def __str__(self) -> str:
        return self.point + (f":{self.nth}" if self.nth != 1 else "") + (
            f"+{self.delay:g}" if self.delay else "")


def parse(text: str) -> CrashPoint:
    """`after_commit`, `after_commit:2`, `in_step:migrate+0.5`; ValueError naming the points."""
    spec, delay = text.strip(), 0.0
    if "+" in spec:
        spec, _, seconds = spec.partition("+")
        try:
            delay = float(seconds)
        except ValueError:
            delay = -1.0
        if not 0 <= delay <= 3600:
            raise ValueError(f"{ENV}={text!r}: the delay after '+' must be seconds (0 to 3600)")
    point, nth = spec, 1
    head, _, tail = spec.rpartition(":")
    if head and tail.isdigit():
        point, nth = head, int(tail)
    if point not in POINTS or nth < 1:
        raise ValueError(f"{ENV}={text!r} names no crash point; the points are "
                         f"{', '.join(POINTS)}, each optionally followed by :N (the Nth time "
                         "it is reached) and +SECONDS")
    return CrashPoint(point, nth, delay)


def _from_env() -> tuple[CrashPoint | None, str | None]:
    text = os.environ.get(ENV)
    if not text:
        return None, None
    try:
        return parse(text), None
    except ValueError as exc:
        return None, str(exc)


_armed, _error = _from_env()
_hits = 0


def armed() -> CrashPoint | None:
    return _armed


def announce() -> None:
    """At the daemon's start: a WARNING when a point is armed; ValueError when the variable
    names none (a typo must not pass for a test that never crashed)."""
    if _error is not None:
        raise ValueError(_error)
    if _armed is not None:
        log.warning("crash_point_armed", variable=ENV, point=str(_armed),
                    message=f"{ENV} is set: this daemon kills itself with SIGKILL at "
                            f"{_armed}. For tests only; never set it in production")


def hit(point: str) -> None:
    """A hook: the daemon reached `point`. Kills the process when it is the armed one."""
    if _armed is None or point != _armed.point:
        return
    global _hits
    _hits += 1
    if _hits != _armed.nth:
        return
    if _armed.delay:
        timer = threading.Timer(_armed.delay, _die, (point, _hits))
        timer.daemon = True
        timer.start()
    else:
        _die(point, _hits)


def _die(point: str, count: int) -> None:
    sys.stderr.write(f"odoo-watchdog: crash point {point} reached (time {count}"
                     f"{f', +{_armed.delay:g}s' if _armed and _armed.delay else ''}): "
                     "SIGKILL\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)
