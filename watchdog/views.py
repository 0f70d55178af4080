"""The JSON shapes the API serves: a site with its rollout, rules and recent events."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from watchdog.rollout import Phase, SiteState

if TYPE_CHECKING:
    from watchdog.daemon import Daemon, SiteRuntime


def site_view(daemon: Daemon, runtime: SiteRuntime,
              events: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    state = runtime.state
    view: dict[str, Any] = {
        "site": runtime.name,
        "live": state.live,
        "phase": state.phase.value,
        "target": state.target,
        "weights": state.weights,
        "actual_weights": runtime.actual,
        "router": {"kind": runtime.router.kind, "error": runtime.router_error},
        "previous": ({"color": state.previous, "until": state.previous_until}
                     if state.previous else None),
        "rollout": rollout_view(state, daemon.clock()),
        "rules": rules_view(daemon, runtime),
        "alerts": [{"name": a.name, "color": a.color, "since": a.starts_at,
                    "summary": a.summary}
                   for a in daemon.alerts.firing.get(runtime.name, {}).values()],
        "last_tick": runtime.last_tick,
        "interval": runtime.config.rollout.interval,
    }
    if events is not None:
        view["events"] = events
    return view


def rules_view(daemon: Daemon, runtime: SiteRuntime) -> list[dict[str, Any]]:
    out = []
    rules = {r.name: r for r in daemon.loaded.rules_for(runtime.name)}
    for (rule_name, color), status in sorted(runtime.statuses.items()):
        rule = rules.get(rule_name)
        if rule is None:
            continue
        value = status.value
        out.append({
            "name": rule_name, "color": color, "source": rule.source,
            "state": status.state.label,
            "value": value if value is None or math.isfinite(value) else None,
            "outcome": status.outcome.value if status.outcome else None,
            "threshold": rule.threshold_text(), "for": rule.for_, "on_fire": rule.on_fire,
            "since": status.since, "detail": status.detail,
        })
    return out


def rollout_view(state: SiteState, now: float) -> dict[str, Any] | None:
    ro = state.rollout
    if ro is None:
        return None
    step = ro.current
    next_in = None
    if ro.phase is Phase.PROGRESSING and step is not None and ro.step_started is not None:
        next_in = max(0.0, step.hold - (now - ro.step_started))
    elif ro.phase is Phase.BAKING and ro.step_started is not None:
        next_in = max(0.0, ro.bake - (now - ro.step_started))
    return {
        "id": ro.id, "from": ro.live, "to": ro.candidate, "version": ro.version,
        "strategy": ro.strategy, "phase": ro.phase.value,
        "step": ro.step + 1 if ro.step >= 0 else 0, "steps": len(ro.steps),
        "step_label": step.label() if step else None, "step_started": ro.step_started,
        "next_step_in": next_in, "paused_by": ro.paused_by, "reason": ro.reason,
        "started_at": ro.started_at, "finished_at": ro.finished_at,
    }
