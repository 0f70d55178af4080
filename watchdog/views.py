"""The JSON shapes the API serves: a site with its rollout, rules and recent events."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from watchdog.alerts import Alert
from watchdog.rollout import Phase, RuleView, SiteState, Weights
from watchdog.routers import ServerHealth
from watchdog.rulemanager import Rule
from watchdog.rules import RuleStatus


@dataclass(frozen=True)
class SiteSnapshot:
    """What the API shows of one site at one moment; the daemon takes it, this module only
    shapes it (so the views never reach into the running daemon)."""

    name: str
    state: SiteState
    actual: Weights | None
    router_kind: str
    router_error: str | None
    proxy: dict[str, ServerHealth]
    rules: tuple[tuple[Rule, str, RuleStatus], ...]
    holds: tuple[RuleView, ...]  # what else holds the target colour (the proxy's check)
    alerts: tuple[Alert, ...]
    last_tick: float | None
    interval: float
    now: float
    # The state store's health (Store.view()): {"ok", "error", "since", "path", "pending"}.
    store: dict[str, Any] | None = None
    # With several proxy nodes (`sockets`): SiteRouter.node_views(), one row per node
    # {"node", "ok", "weights", "error", "since"}; None with one proxy.
    nodes: list[dict[str, Any]] | None = None


def site_view(snap: SiteSnapshot, events: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    state = snap.state
    view: dict[str, Any] = {
        "site": snap.name,
        "live": state.live,
        "phase": state.phase.value,
        "target": state.target,
        "weights": state.weights,
        "actual_weights": snap.actual,
        "router": router_view(snap),
        "previous": ({"color": state.previous, "until": state.previous_until}
                     if state.previous else None),
        "rollout": rollout_view(state, snap.now),
        "rules": [rule_row(rule, color, status) for rule, color, status in snap.rules]
        + [hold_row(view, state.target) for view in snap.holds],
        "alerts": [{"name": a.name, "color": a.color, "since": a.starts_at,
                    "summary": a.summary, "ends_at": a.ends_at} for a in snap.alerts],
        "last_tick": snap.last_tick,
        "interval": snap.interval,
        "store": snap.store,
    }
    if events is not None:
        view["events"] = events
    return view


def router_view(snap: SiteSnapshot) -> dict[str, Any]:
    """The switch: its kind, last error, the proxy's check of each colour, and with several
    proxy nodes each node (`nodes`: whether it has the stored split, what it reports, why not,
    seconds it has lacked it)."""
    view: dict[str, Any] = {
        "kind": snap.router_kind, "error": snap.router_error,
        "servers": {color: {"state": h.state, "check": h.check, "down": h.down}
                    for color, h in sorted(snap.proxy.items())}}
    if snap.nodes is not None:
        view["nodes"] = [dict(node) for node in snap.nodes]
    return view


def hold_row(view: RuleView, color: str) -> dict[str, Any]:
    """A hold that is not a configured rule (`proxy:health`), in a rule's shape."""
    return {"name": view.name, "color": color, "source": view.name.partition(":")[0],
            "state": view.state.label, "value": view.value, "outcome": None,
            "threshold": view.threshold, "for": 0.0, "on_fire": view.on_fire, "since": None,
            "detail": view.detail}


def rule_row(rule: Rule, color: str, status: RuleStatus) -> dict[str, Any]:
    value = status.value
    return {
        "name": rule.name, "color": color, "source": rule.source,
        "state": status.state.label,
        "value": value if value is None or math.isfinite(value) else None,
        "outcome": status.outcome.value if status.outcome else None,
        "threshold": rule.threshold_text(), "for": rule.for_, "on_fire": rule.on_fire,
        "since": status.since, "detail": status.detail,
        # source: traffic: each colour's requests in the window; a judge's p-value and ratio.
        **({"samples": dict(status.comparison.samples), "p_value": status.comparison.p_value,
            "ratio": status.comparison.as_json()["ratio"]} if status.comparison else {}),
    }


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
        "prepare": prepare_view(state, now),
    }


def prepare_view(state: SiteState, now: float) -> list[dict[str, Any]]:
    """Each prepare step: how it ended, or that it runs (for how long), or that it waits."""
    ro = state.rollout
    if ro is None:
        return []
    rows: list[dict[str, Any]] = []
    for index, name in enumerate(ro.prepare):
        done = ro.prepared[index] if index < len(ro.prepared) else None
        if done is not None:
            rows.append({"step": name, "state": done.outcome, "detail": done.detail,
                         "started": done.started, "ended": done.ended,
                         "seconds": round(done.duration, 3), "exit_code": done.exit_code,
                         "output": list(done.output)})
        elif ro.preparing == name and ro.prepare_started is not None:
            rows.append({"step": name, "state": "running", "started": ro.prepare_started,
                         "seconds": round(max(0.0, now - ro.prepare_started), 3)})
        else:
            rows.append({"step": name, "state": "waiting" if ro.active else "skipped"})
    return rows
