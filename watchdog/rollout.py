"""The rollout state machine: (site state, input, now) -> (new state, actions, events).

Pure, like `rules.py`: it never sleeps, reads a clock, or touches a router. The daemon feeds
it ticks (rule states for the target colour, the split the router reports, smoke results)
and operator commands, stores the new state *before* carrying out the actions, and so can be
killed at any moment and resume from the store.

Phases (docs/rollouts.md): idle -> [preparing ->] preflight -> progressing <-> paused -> baking
-> promoted; any active phase -> rolling_back -> rolled_back; or aborted by an operator. A
rollout advances only when its step's hold is over and no rule is pending, firing or holding.

`preparing` runs the site's prepare steps (backup, clone, migrate, gate) one by one: the
machine says which to run (`RunStep`) and hears how it ended (`StepDone`); a failed step aborts
with traffic untouched. On a shared database whose migration is breaking, once `migrate` has
run nothing moves traffic back to the old code: a rule that would roll back freezes the
rollout instead (`frozen`), and the operator decides (`promote`, or restore then `switch`).
"""

from __future__ import annotations

from dataclasses import replace

from watchdog.config import COLORS, RolloutConfig
from watchdog.rollout_types import (
    ACTIVE,
    FINAL,
    PAUSE,
    Abort,
    Action,
    ApplyWeights,
    BadCommand,
    CancelStep,
    Command,
    Conflict,
    Decision,
    Event,
    Notify,
    Phase,
    Preflight,
    Promote,
    Resume,
    Rollout,
    RuleView,
    RunPreflight,
    RunStep,
    SiteState,
    Start,
    Step,
    StepDone,
    StepOutcome,
    Switch,
    Tick,
    Weights,
    all_to,
    initial,
    other,
    steps_of,
)
from watchdog.rules import State

__all__ = [
    "ACTIVE",
    "FINAL",
    "PAUSE",
    "Abort",
    "Action",
    "ApplyWeights",
    "BadCommand",
    "CancelStep",
    "Command",
    "Conflict",
    "Decision",
    "Event",
    "Notify",
    "Phase",
    "Preflight",
    "Promote",
    "Resume",
    "Rollout",
    "RuleView",
    "RunPreflight",
    "RunStep",
    "SiteState",
    "Start",
    "Step",
    "StepDone",
    "StepOutcome",
    "Switch",
    "Tick",
    "Weights",
    "all_to",
    "command",
    "initial",
    "other",
    "resume",
    "step_done",
    "steps_of",
    "tick",
]


class _Builder:
    """Collects the new state, actions and events of one decision."""

    def __init__(self, state: SiteState) -> None:
        self.before = state
        self.state = state
        self.actions: list[Action] = []
        self.events: list[Event] = []

    def event(self, kind: str, message: str, *, rule: RuleView | None = None,
              actor: str = "daemon", notify: bool = True) -> None:
        rollout = self.state.rollout or self.before.rollout
        self.events.append(Event(
            kind=kind, message=message, phase_from=self.before.phase.value,
            phase_to=self.state.phase.value, weights=dict(self.state.weights),
            rollout_id=rollout.id if rollout else None,
            rule=rule.name if rule else None, value=rule.value if rule else None,
            threshold=rule.threshold if rule else None, actor=actor,
        ))
        if notify:
            self.actions.append(Notify(kind, f"{self.state.site}: {message}"))

    def weights(self, weights: Weights, drain: bool = False) -> None:
        self.state = replace(self.state, weights=dict(weights))
        self.actions.append(ApplyWeights(dict(weights), drain))

    def rollout(self, **changes: object) -> Rollout:
        assert self.state.rollout is not None
        new = replace(self.state.rollout, **changes)  # type: ignore[arg-type]
        self.state = replace(self.state, rollout=new)
        return new

    def done(self) -> Decision:
        return Decision(self.state, tuple(self.actions), tuple(self.events))


# ---------------------------------------------------------------- commands


def command(state: SiteState, cmd: Command, now: float, config: RolloutConfig,
            prepare: tuple[str, ...] = (), shared: bool = False,
            breaking: bool = False) -> Decision:
    """An operator's command; raises Conflict when the phase does not allow it.

    `prepare` (the site's prepare steps), `shared` and `breaking` (its database) shape a new
    rollout; they are the site's settings when it starts, kept in the rollout after."""
    if isinstance(cmd, Start):
        return _start(state, cmd, now, config, prepare, shared, breaking)
    if isinstance(cmd, Promote):
        return _promote(state, cmd, now)
    if isinstance(cmd, Abort):
        return _abort(state, cmd, now)
    return _switch(state, cmd, now)


def _start(state: SiteState, cmd: Start, now: float, config: RolloutConfig,
           prepare: tuple[str, ...], shared: bool, breaking: bool) -> Decision:
    if state.active:
        raise Conflict(f"a rollout of {state.site} is already {state.phase}", state.phase)
    if cmd.to not in COLORS:
        raise BadCommand(f"unknown colour {cmd.to!r}: colours are blue and green")
    if not cmd.id:
        raise BadCommand("a rollout needs an id")
    if cmd.to == state.live:
        raise Conflict(f"{cmd.to} is already live on {state.site}; deploy to {other(cmd.to)}",
                       state.phase)
    strategy = cmd.strategy or config.strategy
    rollout = Rollout(
        id=cmd.id, live=state.live, candidate=cmd.to, version=cmd.version,
        strategy=strategy, steps=steps_of(config, strategy), bake=config.bake,
        keep_previous=config.keep_previous,
        phase=Phase.PREPARING if prepare else Phase.PREFLIGHT, started_at=now, actor=cmd.actor,
        reason=f"{cmd.actor} asked for {cmd.to}" + (f" {cmd.version}" if cmd.version else ""),
        prepare=tuple(prepare), shared=shared, breaking=breaking and shared,
    )
    b = _Builder(state)
    # A new rollout ends any failback window: the kept colour is about to be replaced.
    b.state = replace(state, rollout=rollout, previous=None, previous_until=None)
    steps = " -> ".join(s.label() for s in rollout.steps)
    first = f"prepare {' -> '.join(prepare)}, then " if prepare else ""
    b.event("started", f"rollout {rollout.id} {state.live} -> {cmd.to}"
            + (f" ({cmd.version})" if cmd.version else "") + f", {first}{strategy} {steps}",
            actor=cmd.actor)
    if prepare:
        _run_step(b, 0, now, "")
    else:
        b.actions.append(RunPreflight(state.live, cmd.to))
    return b.done()


# ---------------------------------------------------------------- preparing


def _run_step(b: _Builder, index: int, now: float, again: str) -> None:
    rollout = b.rollout(prepare_step=index, prepare_started=now)
    name = rollout.prepare[index]
    b.actions.append(RunStep(index, name))
    b.event("prepare_step", f"step {index + 1}/{len(rollout.prepare)} {name} "
            f"{again or 'started'}", notify=False)


def step_done(state: SiteState, done: StepDone, now: float) -> Decision:
    """A prepare step ended: the next one, preflight, or the end of the rollout."""
    rollout = state.rollout
    b = _Builder(state)
    if rollout is None or rollout.phase is not Phase.PREPARING \
            or done.index != rollout.prepare_step:
        return b.done()  # a step that no longer counts (aborted meanwhile): nothing to do
    out = done.outcome
    rollout = b.rollout(prepared=(*rollout.prepared, out), prepare_started=None,
                        migrated=rollout.migrated or done.migrated)
    total = len(rollout.prepare)
    code = f", exit code {out.exit_code}" if out.exit_code is not None else ""
    took = f"{out.duration:.1f}s"
    if out.outcome == "passed":
        b.event("prepare_step", f"step {done.index + 1}/{total} {out.step} passed in {took}"
                + (f": {out.detail}" if out.detail else "") + code, notify=False)
        if done.index + 1 < total:
            _run_step(b, done.index + 1, now, "")
        else:
            b.rollout(phase=Phase.PREFLIGHT)
            b.actions.append(RunPreflight(rollout.live, rollout.candidate))
        return b.done()
    why = f"step {out.step} {out.outcome} after {took}{code}: {out.detail}"
    if rollout.shared and out.step == "migrate" and rollout.migrated:
        _freeze(b, now, f"{why}; the shared database is half-upgraded and "
                f"{rollout.live} serves on it: restore the backup (`odoo-watchdog db restore`)")
        return b.done()
    b.rollout(phase=Phase.ABORTED, finished_at=now, reason=why)
    b.event("aborted", f"rollout {rollout.id} aborted while preparing, no traffic moved: {why}")
    return b.done()


def resume(state: SiteState, cmd: Resume, now: float) -> Decision:
    """After a restart: the step that was running when the daemon stopped runs again from its
    start (each is safe to repeat), except `migrate`: a half-upgraded database is never
    upgraded again."""
    rollout = state.rollout
    b = _Builder(state)
    if rollout is None or rollout.phase is not Phase.PREPARING or rollout.preparing is None:
        return b.done()
    index, name = rollout.prepare_step, rollout.preparing
    if name != "migrate":
        _run_step(b, index, now, "runs again from its start (the daemon restarted)")
        return b.done()
    started = rollout.prepare_started or now
    return step_done(state, StepDone(index, StepOutcome(
        name, "failed", "the daemon stopped while the migration ran; the candidate's database "
        "may be half-upgraded and is never upgraded again: clone (or restore) it anew and "
        "start a new rollout", started, now), migrated=True), now)


def _freeze(b: _Builder, now: float, why: str, rule: RuleView | None = None) -> None:
    rollout = b.state.rollout
    assert rollout is not None
    b.rollout(phase=Phase.FROZEN, paused_by=None, reason=why)
    b.event("frozen", f"rollout {rollout.id} frozen with {rollout.candidate} at "
            f"{b.state.weights[rollout.candidate]}%: {why}. Traffic stays as it is (the "
            f"shared database is migrated; old code must not serve it). Decide: `promote`, or "
            f"`odoo-watchdog db restore` and then `switch`", rule=rule)


def _promote(state: SiteState, cmd: Promote, now: float) -> Decision:
    rollout = state.rollout
    if rollout is None or rollout.phase not in (Phase.PROGRESSING, Phase.PAUSED, Phase.BAKING,
                                                Phase.FROZEN):
        raise Conflict(f"nothing to promote: {state.site} is {state.phase}", state.phase)
    b = _Builder(state)
    if rollout.phase is Phase.FROZEN:
        _promoted(b, now, f"{cmd.actor} promoted out of frozen", cmd.actor)
        return b.done()
    if rollout.phase is Phase.BAKING:
        _promoted(b, now, f"{cmd.actor} promoted before the bake ended", cmd.actor)
        return b.done()
    if cmd.full:  # the 100% step, even when a pause follows it
        last = max(i for i, s in enumerate(rollout.steps) if s.weight == 100)
        b.rollout(phase=Phase.PROGRESSING, paused_by=None)
        _enter_step(b, last, now, f"{cmd.actor} promoted to 100%", cmd.actor)
        return b.done()
    b.rollout(phase=Phase.PROGRESSING, paused_by=None)
    _advance(b, now, f"{cmd.actor} promoted", cmd.actor)
    return b.done()


def _abort(state: SiteState, cmd: Abort, now: float) -> Decision:
    rollout = state.rollout
    if rollout is None or not rollout.active:
        raise Conflict(f"nothing to abort: {state.site} is {state.phase}", state.phase)
    if rollout.phase is Phase.FROZEN:
        raise Conflict(f"{state.site} is frozen (the shared database is migrated): `promote`, "
                       "or `odoo-watchdog db restore` and then `switch`", state.phase)
    b = _Builder(state)
    reason = cmd.reason or "aborted by an operator"
    if rollout.phase is Phase.PREPARING:
        step = rollout.preparing
        b.actions.append(CancelStep(reason))
        if step == "migrate" and rollout.shared:
            b.rollout(prepare_started=None, migrated=True)
            _freeze(b, now, f"{cmd.actor} aborted during migrate ({reason}); the shared "
                    f"database may be half-upgraded and {rollout.live} serves on it: restore "
                    "the backup (`odoo-watchdog db restore`)")
            return b.done()
        b.rollout(phase=Phase.ABORTED, finished_at=now, reason=reason, prepare_started=None)
        b.event("aborted", f"rollout {rollout.id} aborted during {step or 'preparing'}: "
                f"{reason}; no traffic moved", actor=cmd.actor)
        return b.done()
    b.rollout(phase=Phase.ABORTED, finished_at=now, reason=reason, paused_by=None)
    if state.weights != all_to(rollout.live):
        b.weights(all_to(rollout.live))
    b.event("aborted", f"rollout {rollout.id} aborted: {reason}; traffic back to "
            f"{rollout.live}", actor=cmd.actor)
    return b.done()


def _switch(state: SiteState, cmd: Switch, now: float) -> Decision:
    frozen = state.rollout is not None and state.rollout.phase is Phase.FROZEN
    if state.active and not frozen:
        raise Conflict(f"{state.site} has a rollout {state.phase}: abort it first",
                       state.phase)
    if cmd.to not in COLORS:
        raise BadCommand(f"unknown colour {cmd.to!r}: colours are blue and green")
    if frozen and state.rollout is not None:  # the operator's way out of frozen
        b = _Builder(state)
        b.rollout(phase=Phase.ABORTED, finished_at=now,
                  reason=f"{cmd.actor} switched to {cmd.to} out of frozen")
        b.state = replace(b.state, live=cmd.to, previous=None, previous_until=None)
        if state.weights != all_to(cmd.to):
            b.weights(all_to(cmd.to))
        b.event("switched", f"manual switch out of frozen: all traffic to {cmd.to}",
                actor=cmd.actor)
        return b.done()
    if cmd.to == state.live and state.weights == all_to(cmd.to):
        raise Conflict(f"{cmd.to} already serves all of {state.site}", state.phase)
    b = _Builder(state)
    b.state = replace(state, live=cmd.to, previous=None, previous_until=None)
    b.weights(all_to(cmd.to))
    b.event("switched", f"manual switch: all traffic to {cmd.to}", actor=cmd.actor)
    return b.done()


# ---------------------------------------------------------------- ticks


def tick(state: SiteState, t: Tick) -> Decision:
    """One evaluation: rules for the target colour decide what happens next."""
    b = _Builder(state)
    rollout = state.rollout
    if rollout is None or not rollout.active:
        _watch_live(b, t)
        return b.done()
    if rollout.phase in (Phase.PREPARING, Phase.FROZEN):
        return b.done()  # steps run off the tick; frozen waits for an operator
    if rollout.phase is Phase.PREFLIGHT:
        _preflight(b, t)
        return b.done()
    if rollout.phase is Phase.ROLLING_BACK:
        if t.actual == state.weights:
            b.rollout(phase=Phase.ROLLED_BACK, finished_at=t.now)
            b.event("rolled_back", f"rollout {rollout.id} rolled back: {rollout.live} serves "
                    f"100% again ({rollout.reason})")
        return b.done()
    firing = [r for r in t.rules.values() if r.state is State.FIRING]
    rollback = [r for r in firing if r.on_fire == "rollback"]
    if rollback:
        if rollout.frozen_instead:
            _freeze(b, t.now, f"rule {rollback[0].name} fired ({_value(rollback[0])})",
                    rollback[0])
        else:
            _roll_back(b, rollback[0], t.now)
        return b.done()
    pausing = [r for r in firing if r.on_fire == "pause"]
    if rollout.phase is Phase.PAUSED:
        if rollout.paused_by and rollout.paused_by.startswith("rule:") and not pausing:
            b.rollout(phase=Phase.PROGRESSING, paused_by=None)
            b.event("resumed", f"rule {rollout.paused_by[5:]} cleared; rollout resumes")
        return b.done()
    if pausing:
        rule = pausing[0]
        b.rollout(phase=Phase.PAUSED, paused_by=f"rule:{rule.name}",
                  reason=f"rule {rule.name} fired")
        b.event("paused", f"paused at {state.weights[rollout.candidate]}%: rule {rule.name} "
                f"fired ({_value(rule)})", rule=rule)
        return b.done()
    blocking = sorted(r.name for r in t.rules.values() if r.state is not State.OK)
    if rollout.phase is Phase.BAKING:
        if t.now - (rollout.step_started or t.now) >= rollout.bake and not blocking:
            _promoted(b, t.now, "bake passed with every rule ok", "daemon")
        return b.done()
    # progressing: the next step once the hold is over and every rule is ok
    step = rollout.current
    held = t.now - (rollout.step_started or t.now)
    if step is not None and held < step.hold:
        return b.done()
    if blocking:
        return b.done()
    _advance(b, t.now, "hold passed with every rule ok", "daemon")
    return b.done()


def _preflight(b: _Builder, t: Tick) -> None:
    rollout = b.state.rollout
    assert rollout is not None
    firing = [r for r in t.rules.values() if r.state is State.FIRING and r.on_fire == "rollback"]
    if firing and rollout.frozen_instead:
        _freeze(b, t.now, f"rule {firing[0].name} fired on {rollout.candidate} in preflight "
                f"({_value(firing[0])})", firing[0])
        return
    if firing:
        rule = firing[0]
        b.rollout(phase=Phase.ABORTED, finished_at=t.now,
                  reason=f"rule {rule.name} fired on {rollout.candidate} before any traffic")
        b.event("aborted", f"rollout {rollout.id} aborted before any traffic moved: rule "
                f"{rule.name} fired on {rollout.candidate} ({_value(rule)})", rule=rule)
        return
    if t.preflight is None:
        return
    # A pending or firing rule keeps the candidate at 0% until it clears (holding does not:
    # a colour with no traffic yet has no data). Preflight runs again at the next tick.
    if t.preflight.ok and any(r.state in (State.PENDING, State.FIRING)
                              for r in t.rules.values()):
        return
    if not t.preflight.ok and rollout.frozen_instead:
        _freeze(b, t.now, f"preflight failed: {t.preflight.detail}")
        return
    if not t.preflight.ok:
        b.rollout(phase=Phase.ABORTED, finished_at=t.now,
                  reason=f"preflight failed: {t.preflight.detail}")
        b.event("aborted", f"rollout {rollout.id} aborted before any traffic moved: preflight "
                f"failed: {t.preflight.detail}")
        return
    b.rollout(phase=Phase.PROGRESSING)
    b.event("preflight_passed", f"preflight passed: {t.preflight.detail}", notify=False)
    _advance(b, t.now, "preflight passed", "daemon")


def _advance(b: _Builder, now: float, why: str, actor: str) -> None:
    rollout = b.state.rollout
    assert rollout is not None
    nxt = rollout.step + 1
    if nxt >= len(rollout.steps):
        b.rollout(phase=Phase.BAKING, step_started=now)
        b.event("baking", f"{rollout.candidate} at 100%, baking for {rollout.bake:g}s "
                f"({why})", actor=actor)
        return
    _enter_step(b, nxt, now, why, actor)


def _enter_step(b: _Builder, index: int, now: float, why: str, actor: str) -> None:
    rollout = b.state.rollout
    assert rollout is not None
    step = rollout.steps[index]
    total = len(rollout.steps)
    if step.is_pause:
        b.rollout(step=index, step_started=now, phase=Phase.PAUSED, paused_by="step",
                  reason="pause step")
        b.event("paused", f"step {index + 1}/{total}: paused at "
                f"{b.state.weights[rollout.candidate]}%, waiting for promote ({why})",
                actor=actor)
        return
    assert step.weight is not None
    weights = {rollout.candidate: step.weight, rollout.live: 100 - step.weight}
    b.rollout(step=index, step_started=now, phase=Phase.PROGRESSING)
    b.weights(weights, drain=step.weight == 100)
    b.event("step", f"step {index + 1}/{total}: {rollout.candidate} at {step.weight}% "
            f"({why})", actor=actor)


def _promoted(b: _Builder, now: float, why: str, actor: str) -> None:
    rollout = b.state.rollout
    assert rollout is not None
    b.rollout(phase=Phase.PROMOTED, finished_at=now, reason=why)
    # No failback onto a database its code no longer matches.
    keep = not rollout.frozen_instead
    b.state = replace(b.state, live=rollout.candidate, previous=rollout.live if keep else None,
                      previous_until=now + rollout.keep_previous if keep else None)
    if b.state.weights != all_to(rollout.candidate):
        b.weights(all_to(rollout.candidate), drain=True)
    kept = (f"{rollout.live} kept for failback" if keep else
            f"no failback to {rollout.live} (the shared database is migrated)")
    b.event("promoted", f"rollout {rollout.id} promoted: {rollout.candidate} is live"
            + (f" ({rollout.version})" if rollout.version else "")
            + f"; {kept} ({why})", actor=actor)


def _roll_back(b: _Builder, rule: RuleView, now: float) -> None:
    rollout = b.state.rollout
    assert rollout is not None
    reason = f"rule {rule.name} fired ({_value(rule)})"
    b.rollout(phase=Phase.ROLLING_BACK, reason=reason, paused_by=None)
    b.weights(all_to(rollout.live))
    b.event("rolling_back", f"rolling back {rollout.id} from "
            f"{b.before.weights[rollout.candidate]}% {rollout.candidate}: {reason}", rule=rule)


def _watch_live(b: _Builder, t: Tick) -> None:
    """No rollout: rules watch the live colour; fail back while the previous one is kept."""
    state = b.state
    if state.previous is not None and not state.can_fail_back(t.now):
        b.state = replace(state, previous=None, previous_until=None)
        b.event("previous_released", f"{state.previous} is no longer kept for failback",
                notify=False)
        state = b.state
    rollback = [r for r in t.rules.values()
                if r.state is State.FIRING and r.on_fire == "rollback"]
    if not rollback:
        return
    rule = rollback[0]
    if state.can_fail_back(t.now) and t.previous_healthy and state.previous is not None:
        failed = state.live
        b.state = replace(state, live=state.previous, previous=None, previous_until=None)
        b.weights(all_to(state.previous))
        b.event("failback", f"failback: {failed} broke after promotion, rule {rule.name} "
                f"fired ({_value(rule)}); {state.previous} serves 100% again", rule=rule)


def _value(rule: RuleView) -> str:
    value = "no data" if rule.value is None else f"{rule.value:.4g}"
    return f"value {value}, threshold {rule.threshold}" if rule.threshold else f"value {value}"
