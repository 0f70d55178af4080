"""The preparing phase and frozen, in the pure machine (fake clock): steps in order, a failed
step aborts with traffic untouched, abort cancels the running step, a restart runs a step
again but never a migration, and a shared database with a breaking migration freezes instead
of rolling back."""

from __future__ import annotations

from typing import Any

import pytest

from tests.test_rollout import OK, Driver, kinds, rule, weights_of
from watchdog.rollout import (
    Abort,
    CancelStep,
    Conflict,
    Decision,
    Notify,
    Phase,
    Preflight,
    Promote,
    Resume,
    RunPreflight,
    RunStep,
    Start,
    StepDone,
    StepOutcome,
    Switch,
    all_to,
    command,
    resume,
    step_done,
)
from watchdog.rules import State
from watchdog.store import state_from_json, state_to_json

STEPS = ("backup", "clone", "migrate", "gate")


class Prep(Driver):
    def begin(self, steps: tuple[str, ...] = STEPS, **db: Any) -> Decision:
        d = command(self.state, Start("green", "17.0", id="r1"), self.now, self.cfg,
                    prepare=steps, **db)
        self.state = d.state
        return d

    def done(self, outcome: str = "passed", detail: str = "", after: float = 5.0,
             index: int | None = None, exit_code: int | None = None,
             migrated: bool = False) -> Decision:
        rollout = self.state.rollout
        assert rollout is not None
        i = rollout.prepare_step if index is None else index
        start = self.now
        self.now += after
        d = step_done(self.state, StepDone(i, StepOutcome(
            rollout.prepare[i], outcome, detail, start, self.now, exit_code,
            ("last line",)), migrated=migrated), self.now)
        self.state = d.state
        return d


def run_steps(d: Decision) -> list[tuple[int, str]]:
    return [(a.index, a.step) for a in d.actions if isinstance(a, RunStep)]


def test_a_rollout_with_prepare_steps_runs_them_in_order_then_preflight() -> None:
    drv = Prep()
    d = drv.begin()
    assert drv.phase is Phase.PREPARING
    assert run_steps(d) == [(0, "backup")]
    assert not any(isinstance(a, RunPreflight) for a in d.actions)
    assert drv.state.rollout is not None and drv.state.rollout.prepare_started == drv.now
    for index, name in enumerate(STEPS[1:], start=1):
        d = drv.done(detail="ok", migrated=name == "gate")
        assert run_steps(d) == [(index, name)]
        assert "passed" in d.events[0].message
    d = drv.done()
    assert drv.phase is Phase.PREFLIGHT
    assert any(isinstance(a, RunPreflight) for a in d.actions)
    rollout = drv.state.rollout
    assert rollout is not None
    assert [o.step for o in rollout.prepared] == list(STEPS)
    assert all(o.outcome == "passed" and o.duration == 5.0 for o in rollout.prepared)
    assert drv.state.weights == all_to("blue")  # nothing moved while preparing
    drv.tick(rules=OK, preflight=Preflight(True, "health ok"))
    assert drv.phase is Phase.PROGRESSING


def test_a_failed_step_aborts_with_traffic_untouched_and_its_exit_code_in_the_event() -> None:
    drv = Prep()
    drv.begin()
    drv.done()  # backup
    drv.done()  # clone
    d = drv.done("failed", "exit code 255: registry failed to load", exit_code=255,
                 migrated=True)
    assert drv.phase is Phase.ABORTED
    assert weights_of(d) == []
    assert drv.state.weights == all_to("blue")
    assert "aborted" in kinds(d) and "exit code 255" in d.events[-1].message
    assert run_steps(d) == []


def test_ticks_do_nothing_while_preparing_even_when_a_rule_fires() -> None:
    drv = Prep()
    drv.begin()
    d = drv.tick(after=30, rules={"e": rule("e", State.FIRING)})
    assert drv.phase is Phase.PREPARING and not d.changed


def test_a_late_step_result_after_abort_changes_nothing() -> None:
    drv = Prep()
    drv.begin()
    d = drv.cmd(Abort("wrong version"))
    assert drv.phase is Phase.ABORTED
    assert [a for a in d.actions if isinstance(a, CancelStep)]
    late = drv.done("failed", "cancelled", index=0)
    assert not late.changed and drv.phase is Phase.ABORTED


def test_a_stale_step_index_is_ignored() -> None:
    drv = Prep()
    drv.begin()
    drv.done()
    d = drv.done(index=0)  # the backup's result again
    assert not d.changed
    assert drv.state.rollout is not None and drv.state.rollout.prepare_step == 1


def test_after_a_restart_a_clone_runs_again_from_its_start() -> None:
    drv = Prep()
    drv.begin()
    drv.done()
    drv.now += 100
    d = resume(drv.state, Resume(), drv.now)
    assert run_steps(d) == [(1, "clone")]
    assert d.state.rollout is not None and d.state.rollout.prepare_started == drv.now
    assert "again" in d.events[0].message


def test_after_a_restart_a_migration_is_never_run_again() -> None:
    drv = Prep()
    drv.begin()
    drv.done()
    drv.done()
    d = resume(drv.state, Resume(), drv.now + 60)
    assert d.state.phase is Phase.ABORTED
    assert run_steps(d) == []
    assert d.state.rollout is not None and "half-upgraded" in d.state.rollout.reason


def test_a_restart_of_a_shared_migration_freezes() -> None:
    drv = Prep()
    drv.begin(("backup", "migrate", "gate"), shared=True, breaking=True)
    drv.done()
    d = resume(drv.state, Resume(), drv.now + 60)
    assert d.state.phase is Phase.FROZEN
    assert "frozen" in kinds(d)


def test_abort_during_a_shared_migration_freezes_and_cancels_it() -> None:
    drv = Prep()
    drv.begin(("backup", "migrate", "gate"), shared=True, breaking=False)
    drv.done()
    d = drv.cmd(Abort("too slow"))
    assert drv.phase is Phase.FROZEN
    assert [a for a in d.actions if isinstance(a, CancelStep)]
    assert "restore" in d.events[-1].message


def _migrated_shared(breaking: bool) -> Prep:
    drv = Prep()
    drv.begin(("backup", "migrate", "gate"), shared=True, breaking=breaking)
    drv.done()
    drv.done(migrated=True)
    drv.done()
    drv.tick(rules=OK, preflight=Preflight(True, "health ok"))
    assert drv.phase is Phase.PROGRESSING
    return drv


def test_shared_breaking_a_rollback_rule_freezes_and_traffic_stays() -> None:
    drv = _migrated_shared(breaking=True)
    before = dict(drv.state.weights)
    assert before["green"] == 10
    d = drv.tick(after=10, rules={"e": rule("e", State.FIRING)})
    assert drv.phase is Phase.FROZEN
    assert weights_of(d) == [] and drv.state.weights == before
    assert "frozen" in kinds(d)
    assert [a for a in d.actions if isinstance(a, Notify) and a.kind == "frozen"]  # told
    # frozen: ticks keep coming, nothing moves, abort is refused
    d = drv.tick(after=600, rules={"e": rule("e", State.FIRING)})
    assert not d.changed and drv.phase is Phase.FROZEN
    with pytest.raises(Conflict, match="promote"):
        drv.cmd(Abort())


def test_frozen_promote_makes_the_candidate_live_without_failback() -> None:
    drv = _migrated_shared(breaking=True)
    drv.tick(after=10, rules={"e": rule("e", State.FIRING)})
    d = drv.cmd(Promote())
    assert drv.phase is Phase.PROMOTED
    assert drv.state.live == "green" and drv.state.weights == all_to("green")
    assert drv.state.previous is None  # old code never goes back on the migrated schema
    assert "no failback" in d.events[-1].message


def test_frozen_switch_is_the_way_back_after_a_restore() -> None:
    drv = _migrated_shared(breaking=True)
    drv.tick(after=10, rules={"e": rule("e", State.FIRING)})
    drv.cmd(Switch("blue"))
    assert drv.phase is Phase.ABORTED
    assert drv.state.live == "blue" and drv.state.weights == all_to("blue")


def test_shared_compatible_rolls_back_as_usual() -> None:
    drv = _migrated_shared(breaking=False)
    drv.tick(after=10, rules={"e": rule("e", State.FIRING)})
    assert drv.phase is Phase.ROLLING_BACK
    assert drv.state.weights == all_to("blue")


def test_the_prepare_record_survives_the_store() -> None:
    drv = Prep()
    drv.begin(shared=False)
    drv.done(detail="backup 20261202T000000Z-blue")
    again = state_from_json(state_to_json(drv.state))
    assert again == drv.state
