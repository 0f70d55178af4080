"""The evaluator, transition by transition, with a fake clock (the `now` argument)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from watchdog.measurement import Measurement
from watchdog.rules import Outcome, RuleStatus, State, evaluate, judge


@dataclass(frozen=True)
class R:
    """A rule as the evaluator sees it."""

    max: float | None = 1.0
    min: float | None = None
    for_: float = 0.0
    no_data: str = "hold"


OK = Measurement(0.5)
BAD = Measurement(5.0)
NONE = Measurement.no_data("empty result")
NAN = Measurement(math.nan)
ERR = Measurement.failed("prometheus: unreachable")


@pytest.mark.parametrize(
    ("rule", "measurement", "outcome"),
    [
        (R(max=1.0), Measurement(1.0), Outcome.OK),  # equal to max is not above it
        (R(max=1.0), Measurement(1.0001), Outcome.BREACH),
        (R(max=None, min=1.0), Measurement(1.0), Outcome.OK),
        (R(max=None, min=1.0), Measurement(0.0), Outcome.BREACH),
        (R(min=0.2, max=0.8), Measurement(0.9), Outcome.BREACH),
        (R(min=0.2, max=0.8), Measurement(0.1), Outcome.BREACH),
        (R(min=0.2, max=0.8), Measurement(0.5), Outcome.OK),
        (R(max=1.0), Measurement(math.inf), Outcome.BREACH),
        (R(max=1.0), NONE, Outcome.NO_DATA),
        (R(max=1.0), NAN, Outcome.NO_DATA),
        (R(max=1.0), ERR, Outcome.ERROR),
    ],
)
def test_judge_compares_value_with_min_and_max(
    rule: R, measurement: Measurement, outcome: Outcome
) -> None:
    assert judge(rule, measurement) is outcome


def run(rule: R, steps: list[tuple[float, Measurement]]) -> list[RuleStatus]:
    status = RuleStatus()
    seen = []
    for now, measurement in steps:
        status = evaluate(rule, status, measurement, now)
        seen.append(status)
    return seen


# Each case: a rule, then (time, measurement, expected state) for every tick.
TRANSITIONS = {
    "ok stays ok": (R(for_=60), [(0, OK, State.OK), (30, OK, State.OK)]),
    "breach with for 0 fires at once": (R(for_=0), [(0, BAD, State.FIRING)]),
    "breach must last for before firing": (
        R(for_=60),
        [(0, BAD, State.PENDING), (30, BAD, State.PENDING), (59.9, BAD, State.PENDING),
         (60, BAD, State.FIRING), (90, BAD, State.FIRING)],
    ),
    "one ok clears pending": (
        R(for_=60), [(0, BAD, State.PENDING), (30, OK, State.OK), (60, BAD, State.PENDING),
                     (90, BAD, State.PENDING), (120, BAD, State.FIRING)],
    ),
    "one ok clears firing": (
        R(for_=0), [(0, BAD, State.FIRING), (10, OK, State.OK), (20, OK, State.OK)],
    ),
    "hold: no data on an ok rule holds": (
        R(no_data="hold"), [(0, OK, State.OK), (10, NONE, State.HOLDING), (20, NAN, State.HOLDING),
                            (30, OK, State.OK)],
    ),
    "hold: error on an ok rule holds": (
        R(no_data="hold"), [(0, ERR, State.HOLDING), (10, OK, State.OK)],
    ),
    "hold: pending stays pending and keeps its start": (
        R(for_=60, no_data="hold"),
        [(0, BAD, State.PENDING), (30, NONE, State.PENDING), (60, BAD, State.FIRING)],
    ),
    "hold: firing stays firing": (
        R(for_=0, no_data="hold"), [(0, BAD, State.FIRING), (10, ERR, State.FIRING),
                                    (20, NONE, State.FIRING), (30, OK, State.OK)],
    ),
    "hold then breach starts a new streak": (
        R(for_=60, no_data="hold"),
        [(0, NONE, State.HOLDING), (10, BAD, State.PENDING), (69, BAD, State.PENDING),
         (70, BAD, State.FIRING)],
    ),
    "no_data ok: missing data clears": (
        R(for_=0, no_data="ok"), [(0, BAD, State.FIRING), (10, NONE, State.OK),
                                  (20, ERR, State.OK)],
    ),
    "no_data breach: missing data is a breach and counts toward for": (
        R(for_=30, no_data="breach"),
        [(0, NONE, State.PENDING), (15, BAD, State.PENDING), (30, ERR, State.FIRING)],
    ),
}


@pytest.mark.parametrize("case", sorted(TRANSITIONS))
def test_transition_table(case: str) -> None:
    rule, steps = TRANSITIONS[case]
    statuses = run(rule, [(t, m) for t, m, _ in steps])
    assert [s.state for s in statuses] == [want for _, _, want in steps]


def test_pending_since_is_the_first_breach() -> None:
    statuses = run(R(for_=60), [(5, OK), (10, BAD), (20, BAD)])
    assert statuses[1].since == 10
    assert statuses[2].since == 10
    assert statuses[2].changed_at == 10


def test_changed_at_moves_only_on_a_state_change() -> None:
    statuses = run(R(for_=20), [(0, OK), (10, BAD), (20, BAD), (30, BAD), (40, BAD)])
    assert [s.changed_at for s in statuses] == [None, 10, 10, 30, 30]


def test_status_keeps_last_value_detail_and_outcome() -> None:
    statuses = run(R(), [(0, Measurement(7.0, detail="7 from {}")), (10, NONE)])
    assert statuses[0].value == 7.0
    assert statuses[0].outcome is Outcome.BREACH
    assert statuses[1].outcome is Outcome.NO_DATA
    assert statuses[1].detail == "empty result"
    assert statuses[1].evaluated_at == 10


def test_metric_values_of_states() -> None:
    assert [int(s) for s in (State.OK, State.PENDING, State.FIRING, State.HOLDING)] == [0, 1, 2, 3]
