"""The rollout state machine: (site state, input, now) -> (new state, actions, events).

Pure, like `rules.py`: it never sleeps, reads a clock, or touches a router. The daemon feeds
it ticks (rule states for the target colour, the split the router reports, smoke results)
and operator commands, stores the new state *before* carrying out the actions, and so can be
killed at any moment and resume from the store.

Phases (docs/rollouts.md): idle -> preflight -> progressing <-> paused -> baking -> promoted;
any active phase -> rolling_back -> rolled_back; or aborted by an operator. A rollout advances
only when its step's hold is over and no rule is pending, firing or holding.
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
    Command,
    Conflict,
    Decision,
    Event,
    Notify,
    Phase,
    Preflight,
    Promote,
    Rollout,
    RuleView,
    RunPreflight,
    SiteState,
    Start,
    Step,
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
    "Command",
    "Conflict",
    "Decision",
    "Event",
    "Notify",
    "Phase",
    "Preflight",
    "Promote",
    "Rollout",
    "RuleView",
    "RunPreflight",
    "SiteState",
    "Start",
    "Step",
    "Switch",
    "Tick",
    "Weights",
    "all_to",
    "command",
    "initial",
    "other",
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


def command(state: SiteState, cmd: Command, now: float, config: RolloutConfig) -> Decision:
    """An operator's command; raises Conflict when the phase does not allow it."""
    if isinstance(cmd, Start):
        return _start(state, cmd, now, config)
    if isinstance(cmd, Promote):
        return _promote(state, cmd, now)
    if isinstance(cmd, Abort):
        return _abort(state, cmd, now)
    return _switch(state, cmd, now)


def _start(state: SiteState, cmd: Start, now: float, config: RolloutConfig) -> Decision:
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
        keep_previous=config.keep_previous, phase=Phase.PREFLIGHT, started_at=now, actor=cmd.actor,
        reason=f"{cmd.actor} asked for {cmd.to}" + (f" {cmd.version}" if cmd.version else ""),
    )
    b = _Builder(state)
    # A new rollout ends any failback window: the kept colour is about to be replaced.
    b.state = replace(state, rollout=rollout, previous=None, previous_until=None)
    b.actions.append(RunPreflight(state.live, cmd.to))
    steps = " -> ".join(s.label() for s in rollout.steps)
    b.event("started", f"rollout {rollout.id} {state.live} -> {cmd.to}"
            + (f" ({cmd.version})" if cmd.version else "") + f", {strategy} {steps}",
            actor=cmd.actor)
    return b.done()


def _promote(state: SiteState, cmd: Promote, now: float) -> Decision:
    rollout = state.rollout
    if rollout is None or rollout.phase not in (Phase.PROGRESSING, Phase.PAUSED, Phase.BAKING):
        raise Conflict(f"nothing to promote: {state.site} is {state.phase}", state.phase)
    b = _Builder(state)
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
    b = _Builder(state)
    reason = cmd.reason or "aborted by an operator"
    b.rollout(phase=Phase.ABORTED, finished_at=now, reason=reason, paused_by=None)
    if state.weights != all_to(rollout.live):
        b.weights(all_to(rollout.live))
    b.event("aborted", f"rollout {rollout.id} aborted: {reason}; traffic back to "
            f"{rollout.live}", actor=cmd.actor)
    return b.done()


def _switch(state: SiteState, cmd: Switch, now: float) -> Decision:
    if state.active:
        raise Conflict(f"{state.site} has a rollout {state.phase}: abort it first",
                       state.phase)
    if cmd.to not in COLORS:
        raise BadCommand(f"unknown colour {cmd.to!r}: colours are blue and green")
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
    b.state = replace(b.state, live=rollout.candidate, previous=rollout.live,
                      previous_until=now + rollout.keep_previous)
    if b.state.weights != all_to(rollout.candidate):
        b.weights(all_to(rollout.candidate), drain=True)
    b.event("promoted", f"rollout {rollout.id} promoted: {rollout.candidate} is live"
            + (f" ({rollout.version})" if rollout.version else "")
            + f"; {rollout.live} kept for failback ({why})", actor=actor)


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
