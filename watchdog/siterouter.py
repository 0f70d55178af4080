"""One site's traffic switch as the daemon uses it: the router with its metrics, the split it
last reported, its last error, and the repair of drift.

The router modules (`watchdog/routers/`) only talk to a proxy; this object adds what every
kind needs the same way: each read and write is counted and timed
(`odoo_watchdog_router_operations_total`, `..._operation_seconds`), a failure is logged once
and written to the audit log, and `reconcile` puts the stored split back when the proxy
reports another one (a reload of the proxy, a person with a runtime API). It does so even while
the state store cannot write: that split is already recorded, and the drift's audit line waits
in the store's memory until it can be written.

Every read also takes the proxy's own health checks (`Router.health`): a candidate the proxy
marks DOWN gets no traffic whatever its weight, so it holds the rollout as the rule
`proxy:health` and fails preflight; the API and `status` show what the proxy said.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from watchdog import crashpoints
from watchdog.metrics import Metrics
from watchdog.rollout import Event, RuleView, SiteState, Weights
from watchdog.routers import Router, RouterError, ServerHealth, format_weights
from watchdog.rules import State
from watchdog.store import Store

log = structlog.get_logger("odoo_watchdog")
PROXY_RULE = "proxy:health"  # the name the proxy's own check has among the rules


def audit_event(state: SiteState, kind: str, message: str) -> Event:
    """An event that changes no state (drift repaired, router error), in the state's context."""
    phase = state.phase.value
    ro = state.rollout
    return Event(kind, message, phase, phase, dict(state.weights),
                 rollout_id=ro.id if ro else None)


class SiteRouter:
    def __init__(self, site: str, router: Router, metrics: Metrics, store: Store) -> None:
        self.site = site
        self.router = router
        self.metrics = metrics
        self.store = store
        self.actual: Weights | None = None  # the split the router last reported
        self.error: str | None = None  # the last failure, until an operation succeeds
        self.health: dict[str, ServerHealth] = {}  # the proxy's own checks, at the last read

    @property
    def kind(self) -> str:
        return self.router.kind

    def _count(self, result: str, started: float) -> None:
        self.metrics.router_operations_total.labels(self.site, self.kind, result).inc()
        self.metrics.router_operation_seconds.labels(self.kind).observe(
            time.monotonic() - started)

    async def _record(self, state: SiteState, kind: str, message: str) -> None:
        """Into the audit log. A store that cannot write keeps the line in memory and writes it,
        with its own time, once it can: the repair or the error it tells of goes on anyway."""
        written = await asyncio.to_thread(self.store.record, self.site,
                                          audit_event(state, kind, message))
        if not written:
            log.warning("audit_pending", site=self.site, kind=kind, pending=self.store.pending)

    async def check(self, state: SiteState) -> str | None:
        """The router's own check (admin level, servers known, files writable); the problem,
        logged and kept as the router's error, or None."""
        try:
            await self.router.check()
        except RouterError as exc:
            self.error = str(exc)
            log.error("router_check_failed", site=self.site, error=self.error)
            await self._record(state, "router_error", f"router check failed: {exc}")
            return self.error
        return None

    async def read(self) -> Weights | None:
        started = time.monotonic()
        try:
            actual = await self.router.get_weights()
        except RouterError as exc:
            self._count("error", started)
            if self.error != str(exc):
                log.error("router_error", site=self.site, error=str(exc))
            self.error = str(exc)
            self.actual = None
            return None
        self._count("ok", started)
        self.error = None
        self.actual = actual
        await self._read_health()
        return actual

    async def _read_health(self) -> None:
        """The proxy's view of each colour; unknown (empty) when it cannot be read, which
        never blocks on its own: the rules still judge the colour."""
        try:
            self.health = await self.router.health()
        except RouterError as exc:
            log.warning("router_health_unreadable", site=self.site, error=str(exc))
            self.health = {}

    def views(self, color: str) -> dict[str, RuleView]:
        """The proxy's check as a rule of `color`: holding (a rollout does not advance, a bake
        does not end) while the proxy itself takes the server out as DOWN."""
        health = self.health.get(color)
        if health is None or not health.down:
            return {}
        return {PROXY_RULE: RuleView(PROXY_RULE, State.HOLDING, "notify", None, "UP",
                                     f"{self.kind} marks {color} {health.describe()}")}

    async def apply(self, state: SiteState, weights: Weights, drain: bool) -> bool:
        started = time.monotonic()
        try:
            await self.router.set_weights(weights, drain=drain)
        except RouterError as exc:
            self._count("error", started)
            self.error = str(exc)
            log.error("router_error", site=self.site, error=str(exc), weights=weights)
            await self._record(state, "router_error",
                               f"setting {format_weights(weights)} failed: {exc}")
            return False
        crashpoints.hit("after_router")
        self._count("ok", started)
        self.error = None
        self.actual = dict(weights)
        return True

    async def reconcile(self, state: SiteState, known: bool = False) -> None:
        """Make the router match the stored split.

        `known`: `self.actual` was read in this tick (or set by a switch that read it back),
        so the router is not asked again.
        """
        actual = self.actual if known else await self.read()
        desired = state.weights
        if actual is not None:
            try:
                await self.router.settle()
            except RouterError as exc:
                log.error("router_error", site=self.site, error=str(exc))
        if actual is None or actual == desired:
            return
        self.metrics.router_drift_total.labels(self.site).inc()
        log.warning("drift", site=self.site, actual=actual, weights=desired)
        await self._record(state, "drift", f"router reports {format_weights(actual)}, desired "
                           f"is {format_weights(desired)}: putting it back")
        await self.apply(state, desired, drain=False)

    async def close(self) -> None:
        await self.router.close()
