"""One site as the daemon runs it: its config, router, state and lock, and its metrics.

The lock is held to decide, store and act; ticks, operator commands and Alertmanager webhooks
all take it, so none of them interleave. Measuring happens outside it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from watchdog.config import COLORS, SiteConfig
from watchdog.metrics import Metrics
from watchdog.rollout import Event, Phase, SiteState
from watchdog.siterouter import SiteRouter


@dataclass
class SiteRuntime:
    name: str
    config: SiteConfig
    router: SiteRouter
    state: SiteState
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_tick: float | None = None
    ticks: int = 0


def export(metrics: Metrics, site: str, state: SiteState) -> None:
    """The site's gauges from its state; counters exist at 0 from the start, so `increase()`
    sees the first event too."""
    for outcome in ("promoted", "rolled_back", "aborted"):
        metrics.rollouts_total.labels(site, outcome)
    metrics.router_drift_total.labels(site)
    for color in COLORS:
        metrics.traffic_weight.labels(site, color).set(state.weights[color])
    for phase in Phase:
        metrics.rollout_phase.labels(site, phase.value).set(1 if phase is state.phase else 0)
    ro = state.rollout
    step = ro.step + 1 if ro is not None and ro.active and ro.step >= 0 else 0
    metrics.rollout_step.labels(site).set(step)


def count(metrics: Metrics, site: str, event: Event) -> None:
    if event.kind in ("promoted", "rolled_back", "aborted"):
        metrics.rollouts_total.labels(site, event.kind).inc()
    if event.kind in ("rolling_back", "failback"):
        metrics.rollbacks_total.labels(site, event.rule or "operator").inc()
