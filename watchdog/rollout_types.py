"""The records of the rollout machine (`rollout.py`): a site's state, the inputs it decides on
(ticks and operator commands) and the outputs it decides (actions and audit events).

All frozen dataclasses: plain values the store writes as JSON and the tests build by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from watchdog.config import COLORS, RolloutConfig, WeightStep
from watchdog.rules import State

Weights = dict[str, int]


class Phase(StrEnum):
    IDLE = "idle"
    PREPARING = "preparing"
    PREFLIGHT = "preflight"
    PROGRESSING = "progressing"
    PAUSED = "paused"
    BAKING = "baking"
    PROMOTED = "promoted"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"
    FROZEN = "frozen"  # shared database, breaking migration: traffic stays, people decide


ACTIVE = frozenset({Phase.PREPARING, Phase.PREFLIGHT, Phase.PROGRESSING, Phase.PAUSED,
                    Phase.BAKING, Phase.ROLLING_BACK, Phase.FROZEN})
FINAL = frozenset({Phase.PROMOTED, Phase.ROLLED_BACK, Phase.ABORTED})
PAUSE = "pause"


class BadCommand(ValueError):
    """A command that can never be right (an unknown colour): the API's 400."""


class Conflict(Exception):
    """A command the current phase does not allow (the API's 409)."""

    def __init__(self, message: str, phase: Phase) -> None:
        super().__init__(message)
        self.phase = phase


def other(color: str) -> str:
    return COLORS[1] if color == COLORS[0] else COLORS[0]


def all_to(color: str) -> Weights:
    return {c: (100 if c == color else 0) for c in COLORS}


@dataclass(frozen=True)
class Step:
    """One step as the rollout snapshot keeps it: a weight held for `hold`, or a pause."""

    weight: int | None  # None: a pause that waits for `promote`
    hold: float = 0.0

    @property
    def is_pause(self) -> bool:
        return self.weight is None

    def label(self) -> str:
        return PAUSE if self.weight is None else f"{self.weight}%"


def steps_of(config: RolloutConfig, strategy: str | None = None) -> tuple[Step, ...]:
    if (strategy or config.strategy) == "bluegreen":
        return (Step(100, 0.0),)
    return tuple(Step(s.weight, s.hold) if isinstance(s, WeightStep) else Step(None)
                 for s in config.steps)


@dataclass(frozen=True)
class StepOutcome:
    """How one prepare step ended (watchdog/steps/), as the rollout keeps it."""

    step: str
    outcome: str  # passed | failed | cancelled
    detail: str
    started: float
    ended: float
    exit_code: int | None = None
    output: tuple[str, ...] = ()  # the last lines of a command's output

    @property
    def duration(self) -> float:
        return max(0.0, self.ended - self.started)


@dataclass(frozen=True)
class Rollout:
    id: str
    live: str  # the colour that served 100% before this rollout
    candidate: str
    version: str
    strategy: str
    steps: tuple[Step, ...]
    bake: float
    keep_previous: float
    phase: Phase
    started_at: float
    step: int = -1  # index into steps; -1 before the first
    step_started: float | None = None
    paused_by: str | None = None  # "step", "rule:<name>" or "operator"
    reason: str = ""
    finished_at: float | None = None
    actor: str = "daemon"
    # The preparing phase: its steps, the one running (its index and start, stored before it
    # begins) and how each ended.
    prepare: tuple[str, ...] = ()
    prepare_step: int = -1
    prepare_started: float | None = None
    prepared: tuple[StepOutcome, ...] = ()
    shared: bool = False  # both colours use one database
    breaking: bool = False  # shared database, migration breaking: no rollback once migrated
    migrated: bool = False  # `migrate` has started on the (shared) database

    @property
    def frozen_instead(self) -> bool:
        """A rollback would put old code on the migrated schema: freeze instead."""
        return self.breaking and self.migrated

    @property
    def preparing(self) -> str | None:
        """The name of the prepare step that runs now, if one does."""
        if self.phase is Phase.PREPARING and 0 <= self.prepare_step < len(self.prepare):
            return self.prepare[self.prepare_step]
        return None

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE

    @property
    def current(self) -> Step | None:
        return self.steps[self.step] if 0 <= self.step < len(self.steps) else None


@dataclass(frozen=True)
class SiteState:
    """Everything the daemon must remember about a site; stored as one record."""

    site: str
    live: str
    weights: Weights  # the desired split; the router is made to match it
    rollout: Rollout | None = None  # the current rollout, or the last one
    previous: str | None = None  # the colour kept warm for failback after a promotion
    previous_until: float | None = None

    @property
    def phase(self) -> Phase:
        return self.rollout.phase if self.rollout is not None else Phase.IDLE

    @property
    def active(self) -> bool:
        return self.rollout is not None and self.rollout.active

    @property
    def target(self) -> str:
        """The colour whose rules decide: the candidate during a rollout, else the live one."""
        return self.rollout.candidate if self.active and self.rollout else self.live

    def can_fail_back(self, now: float) -> bool:
        return (self.previous is not None and self.previous_until is not None
                and now < self.previous_until)


def initial(site: str, live: str) -> SiteState:
    return SiteState(site=site, live=live, weights=all_to(live))


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class RuleView:
    """One rule for the target colour, as the machine needs it."""

    name: str
    state: State
    on_fire: str  # rollback | pause | notify
    value: float | None = None
    threshold: str = ""
    detail: str = ""


@dataclass(frozen=True)
class Preflight:
    ok: bool
    detail: str


@dataclass(frozen=True)
class Tick:
    now: float
    rules: Mapping[str, RuleView] = field(default_factory=dict)
    actual: Weights | None = None  # the split the router reports; None when unreadable
    preflight: Preflight | None = None  # smoke results, when the phase is preflight
    previous_healthy: bool | None = None  # for failback after promotion


@dataclass(frozen=True)
class Start:
    """Start a rollout to `to`; `id` names it in the audit log (made by the caller, so this
    module stays a pure function of its inputs)."""

    to: str
    version: str = ""
    strategy: str | None = None
    actor: str = "api"
    id: str = field(default="", kw_only=True)


@dataclass(frozen=True)
class Promote:
    full: bool = False
    actor: str = "api"


@dataclass(frozen=True)
class Abort:
    reason: str = ""
    actor: str = "api"


@dataclass(frozen=True)
class Switch:
    to: str
    actor: str = "api"


@dataclass(frozen=True)
class StepDone:
    """A prepare step ended (from the daemon's step task); `index` must be the running one."""

    index: int
    outcome: StepOutcome
    migrated: bool = False  # a migrate that got as far as running its command


@dataclass(frozen=True)
class Resume:
    """The daemon started and found this site preparing: no step task runs any more."""

    actor: str = "daemon"


Command = Start | Promote | Abort | Switch


# ---------------------------------------------------------------- outputs


@dataclass(frozen=True)
class ApplyWeights:
    weights: Weights
    drain: bool = False  # a colour going to 0 keeps its sticky users for a while


@dataclass(frozen=True)
class RunPreflight:
    live: str
    candidate: str


@dataclass(frozen=True)
class Notify:
    kind: str  # started, step, paused, promoted, rolled_back, failback, aborted, rule
    message: str


@dataclass(frozen=True)
class RunStep:
    """Start prepare step `index` (its name `step`) off the tick's path."""

    index: int
    step: str


@dataclass(frozen=True)
class CancelStep:
    """Stop the running prepare step (a command gets SIGTERM, then SIGKILL)."""

    reason: str


Action = ApplyWeights | RunPreflight | Notify | RunStep | CancelStep


@dataclass(frozen=True)
class Event:
    """One line of the audit log: what changed, why, and who asked."""

    kind: str
    message: str
    phase_from: str
    phase_to: str
    weights: Weights
    rollout_id: str | None = None
    rule: str | None = None
    value: float | None = None
    threshold: str | None = None
    actor: str = "daemon"


@dataclass(frozen=True)
class Decision:
    state: SiteState
    actions: tuple[Action, ...] = ()
    events: tuple[Event, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.actions or self.events)
