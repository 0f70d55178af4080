"""The rule evaluator: a measurement and the time in, a rule's new state out.

Pure: no I/O, no clock of its own (the caller passes `now`), so every transition is tested
with a fake clock. The meaning follows Prometheus alerting rules, which operators know:

- a rule is `pending` from its first breach and `firing` once breaches have lasted `for`;
- one `ok` measurement clears it;
- `skipped` (a rule that compares with a live colour that has no traffic, DESIGN.md §14)
  counts as ok: it neither holds nor fires;
- `no_data` and `error` follow the rule's `no_data:` policy: `ok` clears, `breach` counts as
  a breach, `hold` keeps the rule where it is (an ok rule becomes `holding`). A rollout never
  advances while any rule is pending, firing or holding: missing data never promotes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import IntEnum, StrEnum
from typing import Protocol

from watchdog.measurement import Comparison, Measurement


class Outcome(StrEnum):
    """What one measurement means for one rule (the `result` label of the metrics)."""

    OK = "ok"
    BREACH = "breach"
    NO_DATA = "no_data"
    ERROR = "error"
    SKIPPED = "skipped"


class State(IntEnum):
    """A rule's state; the values are those of `odoo_watchdog_rule_state`."""

    OK = 0
    PENDING = 1
    FIRING = 2
    HOLDING = 3

    @property
    def label(self) -> str:
        return self.name.lower()


class Thresholds(Protocol):
    """What the evaluator needs of a rule (config's rule models satisfy it)."""

    @property
    def min(self) -> float | None: ...
    @property
    def max(self) -> float | None: ...
    @property
    def for_(self) -> float: ...
    @property
    def no_data(self) -> str: ...


@dataclass(frozen=True)
class RuleStatus:
    """Where one rule stands for one colour; `since` is when the current breach streak began."""

    state: State = State.OK
    since: float | None = None
    changed_at: float | None = None
    outcome: Outcome | None = None
    value: float | None = None
    detail: str = ""
    evaluated_at: float | None = None
    comparison: Comparison | None = None


def judge(rule: Thresholds, measurement: Measurement) -> Outcome:
    """ok / breach / no_data / error / skipped for one measurement; breach is `value > max`
    or `< min`, or the judge's own verdict when the measurement carries one."""
    if measurement.error is not None:
        return Outcome.ERROR
    if measurement.skipped:
        return Outcome.SKIPPED
    if measurement.breach is not None:
        return Outcome.BREACH if measurement.breach else Outcome.OK
    value = measurement.value
    if value is None or math.isnan(value):
        return Outcome.NO_DATA
    if rule.max is not None and value > rule.max:
        return Outcome.BREACH
    if rule.min is not None and value < rule.min:
        return Outcome.BREACH
    return Outcome.OK


def evaluate(
    rule: Thresholds, status: RuleStatus, measurement: Measurement, now: float
) -> RuleStatus:
    """The rule's state after `measurement`, taken at `now`."""
    outcome = judge(rule, measurement)
    seen = replace(
        status, outcome=outcome, value=measurement.value, detail=measurement.detail,
        evaluated_at=now, comparison=measurement.comparison,
    )
    effective = Outcome.OK if outcome is Outcome.SKIPPED else outcome
    if outcome in (Outcome.NO_DATA, Outcome.ERROR):
        policy = rule.no_data
        if policy == "ok":
            effective = Outcome.OK
        elif policy == "breach":
            effective = Outcome.BREACH
        else:
            return _hold(seen, now)
    if effective is Outcome.OK:
        return _moved(seen, State.OK, None, now)
    return _breach(rule, seen, now)


def _breach(rule: Thresholds, status: RuleStatus, now: float) -> RuleStatus:
    streak = status.state in (State.PENDING, State.FIRING) and status.since is not None
    since = status.since if streak and status.since is not None else now
    state = State.FIRING if now - since >= rule.for_ else State.PENDING
    return _moved(status, state, since, now)


def _hold(status: RuleStatus, now: float) -> RuleStatus:
    """No usable data under `hold`: a pending or firing rule stays; an ok rule holds."""
    if status.state in (State.PENDING, State.FIRING, State.HOLDING):
        return status
    return _moved(status, State.HOLDING, None, now)


def _moved(status: RuleStatus, state: State, since: float | None, now: float) -> RuleStatus:
    changed = status.changed_at if state is status.state else now
    return replace(status, state=state, since=since, changed_at=changed)
