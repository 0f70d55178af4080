"""Properties of the rollout state machine (watchdog/rollout.py) over random histories.

Hypothesis draws a RolloutConfig (canary or bluegreen, rising steps ending at 100 with pauses
anywhere, holds, bake, keep_previous) and a sequence of inputs: operator commands (Start,
Promote, Abort, Switch, some of them refused) and ticks with random rule states and on_fire
actions, time advances, preflight results, router reports (the desired split, a drifted one,
or none) and the previous colour's health. After every input the invariants below are checked
against the decision and against a model of which commands each phase accepts.

The two examples at the end are violations this test found (a firing `pause` rule did not hold
the candidate at 0% in preflight; `promote --full` stopped at a pause that followed the 100%
step), kept as plain tests of the fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watchdog.config import COLORS, RolloutConfig
from watchdog.rollout import (
    FINAL,
    Abort,
    ApplyWeights,
    BadCommand,
    Command,
    Conflict,
    Decision,
    Phase,
    Preflight,
    Promote,
    Rollout,
    RuleView,
    SiteState,
    Start,
    Switch,
    Tick,
    all_to,
    command,
    initial,
    other,
    tick,
)
from watchdog.rules import State

RULE_NAMES = ("error_rate", "health", "p95")
ON_FIRE = ("rollback", "pause", "pause", "notify")  # a rollback ends a history's rollout
# Time advances: zero, around typical holds and bakes, now and then beyond keep_previous.
ADVANCES = st.one_of(st.sampled_from([0.0, 1.0, 5.0, 30.0, 60.0, 120.0, 4000.0]),
                     st.floats(min_value=0.0, max_value=200.0, allow_nan=False))


# ------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Conf:
    """A RolloutConfig and the weights its steps name (for the candidate-weight invariant)."""

    config: RolloutConfig
    weights: frozenset[int]


@st.composite
def configs(draw: st.DrawFn) -> Conf:
    middle = draw(st.lists(st.integers(1, 99), unique=True, max_size=4))
    weights = [*sorted(middle), 100]
    steps: list[Any] = []
    for weight in weights:
        if draw(st.booleans()) and draw(st.booleans()):  # a pause before it, one time in four
            steps.append("pause")
        steps.append({"weight": weight, "hold": f"{draw(st.sampled_from([0, 1, 30, 60]))}s"})
    if draw(st.integers(0, 7)) == 0:  # the config allows a pause after the 100% step too
        steps.append("pause")
    config = RolloutConfig.model_validate({
        "strategy": draw(st.sampled_from(["canary", "bluegreen"])),
        "steps": steps,
        "bake": f"{draw(st.sampled_from([0, 10, 120]))}s",
        "keep_previous": f"{draw(st.sampled_from([0, 30, 3600]))}s",
    })
    return Conf(config, frozenset(weights))


@dataclass(frozen=True)
class DoCommand:
    cmd: Command
    advance: float


@dataclass(frozen=True)
class DoTick:
    """A tick `advance` seconds after the last input. Its rules change those of the tick
    before (rules keep their state from tick to tick, as they do), or replace them all when
    `fresh`; its `now` and `actual` are filled in when it runs."""

    advance: float
    tick: Tick
    actual: str  # "desired": the router reports our split; "drifted": another one; "none"
    fresh: bool = True


# Mostly ok, so that histories get far; each other state often enough to matter.
STATES = st.sampled_from([State.OK, State.OK, State.OK, State.OK, State.OK, State.PENDING,
                          State.FIRING, State.HOLDING])
rule_views = st.builds(
    RuleView, name=st.sampled_from(RULE_NAMES), state=STATES,
    on_fire=st.sampled_from(ON_FIRE), value=st.sampled_from([None, 0.0, 0.3]),
    threshold=st.sampled_from(["", "<= 0.05"]))


def starts(live: str) -> st.SearchStrategy[Start]:
    """Mostly to the other colour; now and then to the live one, to red (no such colour) or
    without an id (all refused). id "new" is replaced by a fresh one when it runs."""
    to = st.sampled_from([other(live)] * 4 + [live, "red"])
    return st.builds(
        lambda to, strategy, has_id: Start(to, "17.0", strategy, id="new" if has_id else ""),
        to, st.sampled_from([None, "canary", "bluegreen"]), st.integers(0, 9).map(bool))


def commands(live: str) -> st.SearchStrategy[Command]:
    return st.one_of(
        starts(live), starts(live),
        st.builds(Promote, full=st.booleans()),
        st.builds(Abort, reason=st.sampled_from(["", "bad migration"])),
        st.builds(Switch, to=st.sampled_from([*COLORS, "red"])),
    )


ticks = st.builds(
    DoTick, advance=ADVANCES,
    tick=st.builds(
        Tick, now=st.just(0.0),
        rules=st.one_of(st.just({}), st.lists(rule_views, min_size=1, max_size=3).map(
            lambda rs: {r.name: r for r in rs})),
        preflight=st.sampled_from([None, None, Preflight(True, "smoke ok"),
                                   Preflight(True, "smoke ok"), Preflight(True, "smoke ok"),
                                   Preflight(False, "login answered 500")]),
        previous_healthy=st.sampled_from([None, True, False])),
    actual=st.sampled_from(["desired", "desired", "drifted", "none"]),
    fresh=st.integers(0, 2).map(lambda n: n == 0),
)


def inputs(state: SiteState) -> st.SearchStrategy[DoCommand | DoTick]:
    """Mostly ticks (a rollout needs several to get anywhere); a command one time in four."""
    return st.integers(0, 3).flatmap(
        lambda n: st.builds(DoCommand, cmd=commands(state.live), advance=ADVANCES) if n == 0
        else ticks)


# ------------------------------------------------------------------------------- the model


def refusal(state: SiteState, cmd: Command) -> type[Exception] | None:
    """Which exception each phase answers a command with, written from the docs, not the
    code: None when the command is accepted."""
    if isinstance(cmd, Start):
        if state.active:
            return Conflict
        if cmd.to not in COLORS or not cmd.id:
            return BadCommand
        return Conflict if cmd.to == state.live else None
    if isinstance(cmd, Promote):
        ok = state.phase in (Phase.PROGRESSING, Phase.PAUSED, Phase.BAKING)
        return None if ok else Conflict
    if isinstance(cmd, Abort):
        return None if state.active else Conflict
    if state.active:
        return Conflict
    if cmd.to not in COLORS:
        return BadCommand
    # Outside a rollout the live colour has everything (checked below), so a switch to it
    # has nothing to do.
    return Conflict if cmd.to == state.live else None


def drifted(weights: dict[str, int]) -> dict[str, int]:
    blue = (weights["blue"] + 37) % 101
    return {"blue": blue, "green": 100 - blue}


# ------------------------------------------------------------------------------- invariants


def check_state(state: SiteState, conf: Conf) -> None:
    weights = state.weights
    assert set(weights) == set(COLORS), weights
    assert all(0 <= w <= 100 for w in weights.values()), weights
    assert sum(weights.values()) == 100, weights
    assert state.live in COLORS
    assert (state.previous is None) == (state.previous_until is None)
    assert state.previous != state.live
    rollout = state.rollout
    if rollout is not None and rollout.active:
        assert rollout.live == state.live and rollout.candidate != rollout.live
        assert weights[rollout.candidate] in conf.weights | {0, 100}, (weights, conf.weights)
        if rollout.phase in (Phase.PREFLIGHT, Phase.ROLLING_BACK):
            assert weights == all_to(rollout.live)
        assert state.previous is None  # a Start ends the failback window
    else:
        # Outside a rollout (idle, or after one ended however it ended) one colour has all.
        assert weights == all_to(state.live), (state.phase, weights, state.live)
    if rollout is not None and rollout.phase in FINAL:
        assert rollout.finished_at is not None


def check_decision(before: SiteState, d: Decision, rules: Mapping[str, RuleView] | None,
                   ) -> None:
    after = d.state
    applied = [a for a in d.actions if isinstance(a, ApplyWeights)]
    # The router is told exactly the split that is stored, once, and whenever it changes.
    assert all(a.weights == after.weights for a in applied), (applied, after.weights)
    assert len(applied) <= 1, applied
    if after.weights != before.weights:
        assert applied, "the split changed without an ApplyWeights"
    for a in applied:
        if a.drain:
            assert 0 in a.weights.values(), a  # only a colour going to 0 drains
    # Whatever changes is explained in the audit log; what is logged changed something.
    if after != before:
        assert d.events, (before, after)
    else:
        assert not d.events and not applied, d
    if d.events:
        assert d.events[0].phase_from == before.phase.value
        assert d.events[-1].phase_to == after.phase.value
        assert d.events[-1].weights == after.weights
        if after.rollout is not None:
            assert all(e.rollout_id == after.rollout.id for e in d.events)
    # Within one rollout the candidate's share only rises, until it goes to 0 at the end.
    ro_before, ro_after = before.rollout, after.rollout
    if (ro_before is not None and ro_after is not None and ro_before.id == ro_after.id
            and ro_before.active):
        cand = ro_before.candidate
        if ro_after.phase in (Phase.PROGRESSING, Phase.PAUSED, Phase.BAKING, Phase.PROMOTED):
            assert after.weights[cand] >= before.weights[cand], (before, after)
        else:  # rolling back, rolled back, aborted
            assert after.weights[cand] == 0, (before, after)
    if rules is None or ro_before is None or not ro_before.active:
        return
    cand = ro_before.candidate
    firing = [r for r in rules.values() if r.state is State.FIRING]
    if any(r.on_fire == "rollback" for r in firing):
        # A firing rollback rule never lets the candidate gain: it ends the rollout at 0%.
        assert after.weights[cand] <= before.weights[cand]
        assert after.weights[cand] == 0
        assert after.phase in (Phase.ROLLING_BACK, Phase.ROLLED_BACK, Phase.ABORTED)
    elif any(r.on_fire == "pause" for r in firing):
        # A firing pause rule holds the weight (in preflight: at 0%, still in preflight).
        assert after.weights == before.weights
        assert after.phase in ((Phase.PREFLIGHT, Phase.ABORTED)
                               if ro_before.phase is Phase.PREFLIGHT
                               else (Phase.PAUSED, Phase.ROLLING_BACK, Phase.ROLLED_BACK))
    blocking = (State.PENDING, State.FIRING) if ro_before.phase is Phase.PREFLIGHT else (
        State.PENDING, State.FIRING, State.HOLDING)  # no traffic yet, no data: holding is ok
    if any(r.state in blocking for r in rules.values()):
        # A tick never moves traffic to the candidate while any rule is not ok.
        assert after.weights[cand] <= before.weights[cand]
        assert after.phase is not Phase.PROMOTED


@dataclass
class Run:
    """One history: the state, a clock, and every final rollout as first seen."""

    conf: Conf
    state: SiteState
    now: float = 1000.0
    final: dict[str, Rollout] = field(default_factory=dict)
    rules: dict[str, RuleView] = field(default_factory=dict)  # as of the last tick
    ids: int = 0

    def step(self, item: DoCommand | DoTick) -> None:
        before = self.state
        self.now += item.advance
        rules: dict[str, RuleView] | None = None
        if isinstance(item, DoCommand):
            cmd = item.cmd
            if isinstance(cmd, Start) and cmd.id:
                self.ids += 1
                cmd = Start(cmd.to, cmd.version, cmd.strategy, id=f"r{self.ids}")
            want = refusal(before, cmd)
            if want is not None:
                with pytest.raises(want):
                    command(before, cmd, self.now, self.conf.config)
                return
            d = command(before, cmd, self.now, self.conf.config)
            if isinstance(cmd, Start):
                assert d.state.rollout is not None and d.state.rollout.id == cmd.id
                assert d.state.phase is Phase.PREFLIGHT
            if isinstance(cmd, Promote) and cmd.full:
                assert before.rollout is not None
                assert d.state.weights[before.rollout.candidate] == 100
        else:
            actual = {"desired": dict(before.weights), "drifted": drifted(before.weights),
                      "none": None}[item.actual]
            rules = dict(item.tick.rules) if item.fresh else {**self.rules, **item.tick.rules}
            self.rules = rules
            d = tick(before, replace(item.tick, now=self.now, rules=rules, actual=actual))
        check_decision(before, d, rules)
        self.state = d.state
        check_state(self.state, self.conf)
        self.check_final(before)

    def check_final(self, before: SiteState) -> None:
        """A finished rollout is history: it never changes, and only a Start replaces it."""
        rollout = self.state.rollout
        if before.rollout is not None and (rollout is None or rollout.id != before.rollout.id):
            assert rollout is not None and rollout.phase is Phase.PREFLIGHT, rollout
            assert rollout.id not in self.final and before.rollout.phase in FINAL
        if rollout is None:
            return
        if rollout.id in self.final:
            assert rollout == self.final[rollout.id], (self.final[rollout.id], rollout)
        elif rollout.phase in FINAL:
            self.final[rollout.id] = rollout


@settings(max_examples=200, deadline=None)
@given(conf=configs(), live=st.sampled_from(COLORS), length=st.integers(1, 60), data=st.data())
def test_invariants_hold_after_every_input(conf: Conf, live: str, length: int,
                                           data: st.DataObject) -> None:
    """Each input is checked by Run.step: refused commands against `refusal`, every decision
    by check_decision, every new state by check_state, finished rollouts by check_final."""
    run = Run(conf, initial("odoo", live))
    check_state(run.state, conf)
    for _ in range(length):
        run.step(data.draw(inputs(run.state)))


@settings(max_examples=200, deadline=None)
@given(conf=configs(), history=st.lists(
    st.builds(DoTick, advance=ADVANCES, tick=st.just(Tick(0.0, preflight=Preflight(True, "ok"))),
              actual=st.just("desired")),
    min_size=1, max_size=30))
def test_with_every_rule_ok_a_rollout_only_waits_for_pauses_and_time(
    conf: Conf, history: list[DoTick],
) -> None:
    """Every rule ok, the router obeying, time going by: a rollout never rolls back or
    aborts by itself, and with enough time it either promotes or waits at a pause step."""
    run = Run(conf, initial("odoo", "blue"))
    run.step(DoCommand(Start("green", id="new"), 0.0))
    for item in history:
        run.step(item)
        assert run.state.phase not in (Phase.ROLLING_BACK, Phase.ROLLED_BACK, Phase.ABORTED)
    for _ in range(2 * len(conf.config.steps) + 3):  # each tick long enough for any hold
        run.step(DoTick(4000.0, Tick(0.0), "desired"))
    rollout = run.state.rollout
    assert rollout is not None
    assert run.state.phase is Phase.PROMOTED or rollout.paused_by == "step", rollout


# ------------------------------------------------------------------------------- violations


def started(*steps: Any) -> tuple[RolloutConfig, SiteState]:
    """A config with these steps, and a rollout of it to green in preflight."""
    cfg = RolloutConfig.model_validate({"steps": list(steps)})
    return cfg, command(initial("odoo", "blue"), Start("green", id="r1"), 0.0, cfg).state


def test_a_firing_pause_rule_holds_the_candidate_at_0_in_preflight() -> None:
    _, state = started({"weight": 10}, {"weight": 100})
    firing = {"p95": RuleView("p95", State.FIRING, "pause", 2.5, "<= 1")}
    d = tick(state, Tick(1.0, firing, state.weights, Preflight(True, "ok")))
    assert d.state.weights == {"blue": 100, "green": 0}, d.events
    assert d.state.phase is Phase.PREFLIGHT
    cleared = tick(d.state, Tick(2.0, {}, state.weights, Preflight(True, "ok")))
    assert cleared.state.weights == {"blue": 90, "green": 10}


def test_promote_full_reaches_100_when_the_steps_end_with_a_pause() -> None:
    cfg, state = started({"weight": 10}, {"weight": 100}, "pause")
    at_10 = tick(state, Tick(1.0, {}, state.weights, Preflight(True, "ok"))).state
    assert at_10.weights == {"blue": 90, "green": 10}
    d = command(at_10, Promote(full=True), 2.0, cfg)
    assert d.state.weights == {"blue": 0, "green": 100}, d.events
