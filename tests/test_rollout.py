"""The rollout state machine, phase by phase, with a fake clock (Tick.now)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from watchdog.config import RolloutConfig
from watchdog.rollout import (
    Abort,
    ApplyWeights,
    BadCommand,
    Command,
    Conflict,
    Decision,
    Notify,
    Phase,
    Preflight,
    Promote,
    RuleView,
    RunPreflight,
    SiteState,
    Start,
    Switch,
    Tick,
    command,
    initial,
    tick,
)
from watchdog.rules import State


def config(**extra: Any) -> RolloutConfig:
    base: dict[str, Any] = {
        "steps": [{"weight": 10, "hold": "60s"}, {"weight": 50, "hold": "60s"}, "pause",
                  {"weight": 100}],
        "bake": "120s", "keep_previous": "1h", "interval": "10s",
    }
    base.update(extra)
    return RolloutConfig.model_validate(base)


def rule(name: str, state: State, on_fire: str = "rollback", value: float = 0.5) -> RuleView:
    return RuleView(name, state, on_fire, value, "<= 0.01", "test")


OK = {"error_rate": rule("error_rate", State.OK, value=0.0)}


@dataclass
class Driver:
    """Holds a site's state and a fake clock; records every decision."""

    cfg: RolloutConfig = field(default_factory=config)
    state: SiteState = field(default_factory=lambda: initial("odoo", "blue"))
    now: float = 1000.0
    log: list[Decision] = field(default_factory=list)

    def cmd(self, c: Command) -> Decision:
        d = command(self.state, c, self.now, self.cfg)
        self.state = d.state
        self.log.append(d)
        return d

    def tick(self, after: float = 0.0, rules: dict[str, RuleView] | None = None,
             **extra: Any) -> Decision:
        self.now += after
        extra.setdefault("actual", self.state.weights)
        d = tick(self.state, Tick(self.now, rules if rules is not None else OK, **extra))
        self.state = d.state
        self.log.append(d)
        return d

    @property
    def phase(self) -> Phase:
        return self.state.phase

    def start(self) -> None:
        self.cmd(Start("green", "17.0", id="r1"))
        self.tick(rules=OK, preflight=Preflight(True, "health ok, login ok"))

    def to_step(self, index: int) -> None:
        """From idle to the start of step `index` (0-based) of the default steps."""
        self.start()
        while self.state.rollout is not None and self.state.rollout.step < index:
            if self.phase is Phase.PAUSED:
                self.cmd(Promote())
            else:
                self.tick(after=60)


def weights_of(d: Decision) -> list[dict[str, int]]:
    return [a.weights for a in d.actions if isinstance(a, ApplyWeights)]


def kinds(d: Decision) -> list[str]:
    return [e.kind for e in d.events]


# ------------------------------------------------------------------ start and preflight


def test_start_goes_to_preflight_and_asks_for_smoke_checks() -> None:
    drv = Driver()
    d = drv.cmd(Start("green", "17.0", actor="alice", id="r-42"))
    assert drv.phase is Phase.PREFLIGHT
    assert drv.state.rollout is not None and drv.state.rollout.id == "r-42"
    assert d.events[0].rollout_id == "r-42"
    assert RunPreflight("blue", "green") in d.actions
    assert kinds(d) == ["started"]
    assert d.events[0].actor == "alice"
    assert weights_of(d) == []  # no traffic moves before preflight passes


def test_preflight_waits_for_its_result() -> None:
    drv = Driver()
    drv.cmd(Start("green", id="r1"))
    d = drv.tick(after=10)
    assert drv.phase is Phase.PREFLIGHT
    assert not d.changed


def test_failed_preflight_aborts_with_traffic_untouched() -> None:
    drv = Driver()
    drv.cmd(Start("green", id="r1"))
    d = drv.tick(preflight=Preflight(False, "login answered 500"))
    assert drv.phase is Phase.ABORTED
    assert weights_of(d) == []
    assert drv.state.weights == {"blue": 100, "green": 0}
    assert "preflight failed: login answered 500" in d.events[0].message


def test_passed_preflight_enters_the_first_step() -> None:
    drv = Driver()
    drv.cmd(Start("green", id="r1"))
    d = drv.tick(preflight=Preflight(True, "ok"))
    assert drv.phase is Phase.PROGRESSING
    assert weights_of(d) == [{"green": 10, "blue": 90}]
    assert drv.state.rollout is not None and drv.state.rollout.step == 0
    assert drv.state.rollout.step_started == drv.now


def test_a_rollback_rule_firing_in_preflight_aborts_before_traffic_moves() -> None:
    drv = Driver()
    drv.cmd(Start("green", id="r1"))
    d = drv.tick(rules={"health": rule("health", State.FIRING)},
                 preflight=Preflight(True, "ok"))
    assert drv.phase is Phase.ABORTED
    assert weights_of(d) == []


@pytest.mark.parametrize(
    ("cmd", "message"),
    [(Start("blue", id="r1"), "blue is already live"), (Promote(), "nothing to promote"),
     (Abort(), "nothing to abort")],
)
def test_commands_the_idle_phase_refuses(cmd: Command, message: str) -> None:
    with pytest.raises(Conflict, match=message) as info:
        Driver().cmd(cmd)
    assert info.value.phase is Phase.IDLE


def test_start_refuses_an_unknown_colour() -> None:
    with pytest.raises(ValueError, match="unknown colour 'red'"):
        Driver().cmd(Start("red", id="r1"))


def test_start_needs_an_id_from_the_caller() -> None:
    with pytest.raises(BadCommand, match="needs an id"):
        Driver().cmd(Start("green"))


def test_start_refuses_while_a_rollout_is_active() -> None:
    drv = Driver()
    drv.start()
    with pytest.raises(Conflict, match="already progressing"):
        drv.cmd(Start("green", id="r1"))


# ------------------------------------------------------------------ progressing


def test_step_waits_for_its_hold() -> None:
    drv = Driver()
    drv.start()
    d = drv.tick(after=59)
    assert not d.changed
    d = drv.tick(after=1)
    assert weights_of(d) == [{"green": 50, "blue": 50}]
    assert kinds(d) == ["step"]


@pytest.mark.parametrize("state", [State.PENDING, State.FIRING, State.HOLDING])
def test_never_advances_while_a_rule_is_pending_firing_or_holding(state: State) -> None:
    drv = Driver()
    drv.start()
    blocking = {"p95": rule("p95", state, on_fire="notify")}
    for _ in range(10):
        d = drv.tick(after=60, rules=blocking)
        assert weights_of(d) == []
    assert drv.state.weights == {"green": 10, "blue": 90}
    d = drv.tick(after=10, rules=OK)  # cleared: the hold was long over, so advance now
    assert weights_of(d) == [{"green": 50, "blue": 50}]


def test_missing_data_never_promotes() -> None:
    drv = Driver(cfg=config(steps=[{"weight": 100}], bake="60s"))
    drv.start()
    drv.tick(after=1)
    assert drv.phase is Phase.BAKING
    holding = {"error_rate": rule("error_rate", State.HOLDING, value=float("nan"))}
    for _ in range(100):
        drv.tick(after=60, rules=holding)
    assert drv.phase is Phase.BAKING


def test_pause_step_waits_for_promote() -> None:
    drv = Driver()
    drv.to_step(1)
    d = drv.tick(after=60)
    assert drv.phase is Phase.PAUSED
    assert kinds(d) == ["paused"]
    for _ in range(5):
        assert not drv.tick(after=3600).changed
    d = drv.cmd(Promote(actor="bob"))
    assert drv.phase is Phase.PROGRESSING
    assert weights_of(d) == [{"green": 100, "blue": 0}]
    assert d.events[0].actor == "bob"


def test_promote_full_jumps_to_100_from_any_step() -> None:
    drv = Driver()
    drv.start()
    d = drv.cmd(Promote(full=True))
    assert weights_of(d) == [{"green": 100, "blue": 0}]
    assert [a.drain for a in d.actions if isinstance(a, ApplyWeights)] == [True]


def test_promote_in_progressing_skips_the_rest_of_the_hold() -> None:
    drv = Driver()
    drv.start()
    d = drv.cmd(Promote())
    assert weights_of(d) == [{"green": 50, "blue": 50}]


def test_last_step_leads_to_baking_then_promotion() -> None:
    drv = Driver()
    drv.to_step(3)
    assert drv.state.weights == {"green": 100, "blue": 0}
    d = drv.tick(after=1)
    assert drv.phase is Phase.BAKING
    assert kinds(d) == ["baking"]
    assert not drv.tick(after=119).changed
    d = drv.tick(after=1)
    assert drv.phase is Phase.PROMOTED
    assert drv.state.live == "green"
    assert drv.state.previous == "blue"
    assert drv.state.previous_until == drv.now + 3600
    assert kinds(d) == ["promoted"]


def test_promote_while_baking_ends_the_bake() -> None:
    drv = Driver(cfg=config(steps=[{"weight": 100}]))
    drv.start()
    drv.tick(after=1)
    assert drv.phase is Phase.BAKING
    drv.cmd(Promote())
    assert drv.phase is Phase.PROMOTED


def test_bluegreen_is_one_step_of_100_with_drain() -> None:
    drv = Driver()
    drv.cmd(Start("green", strategy="bluegreen", id="r1"))
    d = drv.tick(preflight=Preflight(True, "ok"))
    assert [(a.weights, a.drain) for a in d.actions if isinstance(a, ApplyWeights)] == [
        ({"green": 100, "blue": 0}, True)]


# ------------------------------------------------------------------ a rule firing in every phase


def progressing() -> Driver:
    drv = Driver()
    drv.start()
    return drv


def driven(step: int, then: float, phase: Phase) -> Driver:
    """To the start of `step` (0-based), then one tick `then` seconds later, which is in
    `phase`."""
    drv = Driver()
    drv.to_step(step)
    drv.tick(after=then)
    assert drv.phase is phase
    return drv


def paused() -> Driver:
    return driven(1, 60, Phase.PAUSED)  # the end of the 50% hold: the pause step


def baking() -> Driver:
    return driven(3, 1, Phase.BAKING)  # the step after 100%


@pytest.mark.parametrize("setup", [progressing, paused, baking])
def test_firing_rollback_rule_rolls_back_from_every_active_phase(setup: Any) -> None:
    drv = setup()
    d = drv.tick(after=1, rules={"error_rate": rule("error_rate", State.FIRING, value=0.3)})
    assert drv.phase is Phase.ROLLING_BACK
    assert [(a.weights, a.drain) for a in d.actions if isinstance(a, ApplyWeights)] == [
        ({"blue": 100, "green": 0}, False)]  # maint at once, sticky users included
    event = d.events[0]
    assert (event.kind, event.rule, event.value, event.threshold) == (
        "rolling_back", "error_rate", 0.3, "<= 0.01")
    assert any(isinstance(a, Notify) and a.kind == "rolling_back" for a in d.actions)


def test_rolling_back_finishes_once_the_router_reports_the_live_split() -> None:
    drv = progressing()
    drv.tick(after=1, rules={"error_rate": rule("error_rate", State.FIRING)})
    d = drv.tick(after=1, actual={"blue": 90, "green": 10})  # router not there yet
    assert drv.phase is Phase.ROLLING_BACK and not d.events
    d = drv.tick(after=1, actual={"blue": 100, "green": 0})
    assert drv.phase is Phase.ROLLED_BACK
    assert kinds(d) == ["rolled_back"]
    assert drv.state.live == "blue"


def test_a_rolled_back_rollout_is_never_retried_by_itself() -> None:
    drv = progressing()
    drv.tick(after=1, rules={"error_rate": rule("error_rate", State.FIRING)})
    drv.tick(after=1)
    assert drv.phase is Phase.ROLLED_BACK
    for _ in range(20):
        assert not drv.tick(after=600).changed
    assert drv.state.weights == {"blue": 100, "green": 0}


@pytest.mark.parametrize("setup", [progressing, baking])
def test_pause_rule_holds_the_weight_until_it_clears(setup: Any) -> None:
    drv = setup()
    before = dict(drv.state.weights)
    firing = {"p95": rule("p95", State.FIRING, on_fire="pause")}
    d = drv.tick(after=1, rules=firing)
    assert drv.phase is Phase.PAUSED
    assert weights_of(d) == []
    assert drv.state.rollout is not None and drv.state.rollout.paused_by == "rule:p95"
    for _ in range(3):
        drv.tick(after=60, rules=firing)
    assert drv.phase is Phase.PAUSED and drv.state.weights == before
    d = drv.tick(after=1, rules=OK)
    assert drv.phase is Phase.PROGRESSING
    assert kinds(d) == ["resumed"]


def test_notify_rule_firing_only_blocks_advancing() -> None:
    drv = progressing()
    d = drv.tick(after=60, rules={"slow": rule("slow", State.FIRING, on_fire="notify")})
    assert drv.phase is Phase.PROGRESSING
    assert weights_of(d) == []


# ------------------------------------------------------------------ abort


@pytest.mark.parametrize("setup", [progressing, paused, baking])
def test_abort_sends_traffic_back_to_live(setup: Any) -> None:
    drv = setup()
    d = drv.cmd(Abort("bad migration", actor="carol"))
    assert drv.phase is Phase.ABORTED
    assert weights_of(d) == [{"blue": 100, "green": 0}]
    assert d.events[0].actor == "carol"
    assert "bad migration" in d.events[0].message


def test_abort_in_preflight_moves_no_traffic() -> None:
    drv = Driver()
    drv.cmd(Start("green", id="r1"))
    d = drv.cmd(Abort())
    assert drv.phase is Phase.ABORTED
    assert weights_of(d) == []


# ------------------------------------------------------------------ after promotion


def promoted() -> Driver:
    drv = baking()
    drv.tick(after=120)
    assert drv.phase is Phase.PROMOTED
    return drv


def test_failback_when_the_new_live_colour_breaks_within_keep_previous() -> None:
    drv = promoted()
    assert drv.state.target == "green"
    d = drv.tick(after=600, rules={"health": rule("health", State.FIRING)},
                 previous_healthy=True)
    assert drv.state.live == "blue"
    assert weights_of(d) == [{"blue": 100, "green": 0}]
    assert kinds(d) == ["failback"]
    assert drv.state.previous is None


def test_no_failback_to_an_unhealthy_previous_colour() -> None:
    drv = promoted()
    d = drv.tick(after=600, rules={"health": rule("health", State.FIRING)},
                 previous_healthy=False)
    assert drv.state.live == "green"
    assert weights_of(d) == []


def test_no_failback_after_keep_previous() -> None:
    drv = promoted()
    d = drv.tick(after=3601, rules={"health": rule("health", State.FIRING)},
                 previous_healthy=True)
    assert drv.state.live == "green"
    assert weights_of(d) == []
    assert kinds(d) == ["previous_released"]


def test_a_new_rollout_ends_the_failback_window() -> None:
    drv = promoted()
    drv.cmd(Start("blue", "18.0", id="r1"))
    assert drv.state.previous is None
    assert drv.state.target == "blue"


# ------------------------------------------------------------------ manual switch


def test_switch_moves_all_traffic_when_idle() -> None:
    drv = Driver()
    d = drv.cmd(Switch("green", actor="dave"))
    assert weights_of(d) == [{"blue": 0, "green": 100}]
    assert drv.state.live == "green"
    assert d.events[0].actor == "dave"


def test_switch_is_refused_during_a_rollout() -> None:
    drv = progressing()
    with pytest.raises(Conflict, match="abort it first"):
        drv.cmd(Switch("blue"))


def test_every_event_carries_the_rollout_id_and_weights() -> None:
    drv = progressing()
    rollout_id = drv.state.rollout.id if drv.state.rollout else None
    events = [e for d in drv.log for e in d.events]
    assert [e.kind for e in events] == ["started", "preflight_passed", "step"]
    assert all(e.rollout_id == rollout_id for e in events)
    assert events[-1].weights == {"blue": 90, "green": 10}
    assert (events[-1].phase_from, events[-1].phase_to) == ("preflight", "progressing")
