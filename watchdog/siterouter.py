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

With several proxy nodes (HAProxy `sockets`, a `routers.NodeRouter`) the split counts only when
every node has it: the repair is per node (a node that drifted, was restarted or did not answer
gets the stored split again; the nodes that have it are not touched), a rule view
`router:nodes` holds the rollout while any node lacks it, `router.nodes` in the site view and
`odoo_watchdog_router_node_up` / `_node_weight` show each node, and a node failing for longer
than `router.node_deadline` is an alert (`on_alert`, and `router_node_down` in the audit log
once per episode; `router_node_back` when it has the split again).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog

from watchdog import crashpoints
from watchdog.metrics import Metrics
from watchdog.rollout import Event, RuleView, SiteState, Weights
from watchdog.routers import (
    NodeRouter,
    NodeStatus,
    Router,
    RouterError,
    ServerHealth,
    format_weights,
)
from watchdog.rules import State
from watchdog.schema import COLORS
from watchdog.store import SqlStore

log = structlog.get_logger("odoo_watchdog")
PROXY_RULE = "proxy:health"  # the name the proxy's own check has among the rules
NODES_RULE = "router:nodes"  # the nodes' agreement on the split, among the rules
NODE_DOWN = "router_node_down"  # audit event and notification kind: a node failed too long
NODE_BACK = "router_node_back"  # and has the split again


def audit_event(state: SiteState, kind: str, message: str) -> Event:
    """An event that changes no state (drift repaired, router error), in the state's context."""
    phase = state.phase.value
    ro = state.rollout
    return Event(kind, message, phase, phase, dict(state.weights),
                 rollout_id=ro.id if ro else None)


class SiteRouter:
    def __init__(self, site: str, router: Router, metrics: Metrics, store: SqlStore,
                 on_alert: Callable[[str, str], None] | None = None) -> None:
        """`on_alert(kind, message)`: called for `router_node_down` and `router_node_back`
        (the daemon passes its notifier's post)."""
        self.site = site
        self.router = router
        self.metrics = metrics
        self.store = store
        self.on_alert = on_alert
        self._nodes_of: Router | None = None  # the router `_node_router` was worked out for
        self._node_router: NodeRouter | None = None
        self.actual: Weights | None = None  # the split the router last reported
        self.error: str | None = None  # the last failure, until an operation succeeds
        self.health: dict[str, ServerHealth] = {}  # the proxy's own checks, at the last read
        self.desired: Weights | None = None  # the stored split, as of the last apply/reconcile
        # With several nodes: since when (monotonic) each node lacks the split, and the nodes
        # whose episode was alerted as down.
        self._failing: dict[str, float] = {}
        self._down: set[str] = set()

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
            self.actual = None
            if self._nodes() is not None:
                # Each node's failure is logged when it starts and ends (`_track`), not the
                # combined message at every tick; the nodes that answered still have checks.
                self.error = str(exc)
                self._track()
                await self._read_health()
                return None
            if self.error != str(exc):
                log.error("router_error", site=self.site, error=str(exc))
            self.error = str(exc)
            return None
        self._count("ok", started)
        self.error = None
        self.actual = actual
        self._track()
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
        does not end) while the proxy itself takes the server out as DOWN. With several
        nodes, also `router:nodes`: holding while any node lacks the stored split."""
        out: dict[str, RuleView] = {}
        health = self.health.get(color)
        if health is not None and health.down:
            out[PROXY_RULE] = RuleView(PROXY_RULE, State.HOLDING, "notify", None, "UP",
                                       f"{self.kind} marks {color} {health.describe()}")
        nodes = self._nodes()
        if nodes is not None:
            statuses = nodes.nodes()
            lacking = [(n.socket, why) for n in statuses if (why := self._lacks(n))]
            if lacking:
                split = format_weights(self.desired) if self.desired else "one split"
                out[NODES_RULE] = RuleView(
                    NODES_RULE, State.HOLDING, "notify", float(len(lacking)),
                    f"all {len(statuses)} nodes have the split",
                    f"{len(lacking)} of {len(statuses)} {self.kind} nodes do not have {split}: "
                    + "; ".join(f"{sock} {why}" for sock, why in lacking))
        return out

    # ---------------------------------------------------------------- several nodes

    def _nodes(self) -> NodeRouter | None:
        # isinstance on a runtime-checkable Protocol walks its attributes each time: asked
        # once per router object (it showed under the profiler; no difference outside it).
        router = self.router
        if router is not self._nodes_of:
            self._nodes_of = router
            self._node_router = router if isinstance(router, NodeRouter) else None
        return self._node_router

    def _lacks(self, node: NodeStatus) -> str | None:
        """Why `node` does not have the stored split (None: it has it)."""
        if not node.ok or node.weights is None:
            return f"failed: {node.error or 'no answer'}"
        if self.desired is not None and node.weights != self.desired:
            return (f"reports {format_weights(node.weights)}, desired is "
                    f"{format_weights(self.desired)}")
        return None

    def _track(self) -> None:
        """After every read or write of the nodes: since when each lacks the split, the
        per-node metrics, and a log line when a node starts or stops lacking it."""
        nodes = self._nodes()
        if nodes is None:
            return
        now = time.monotonic()
        for node in nodes.nodes():
            why = self._lacks(node)
            self.metrics.router_node_up.labels(self.site, node.socket).set(0 if why else 1)
            for color in COLORS:
                if node.weights is not None:
                    self.metrics.router_node_weight.labels(self.site, node.socket, color).set(
                        node.weights[color])
                else:  # absent while unknown, rather than a value it no longer has
                    try:
                        self.metrics.router_node_weight.remove(self.site, node.socket, color)
                    except KeyError:
                        pass
            if why and node.socket not in self._failing:
                self._failing[node.socket] = now
                log.warning("router_node_failing", site=self.site, node=node.socket, why=why)
            elif not why and node.socket in self._failing:
                del self._failing[node.socket]
                log.info("router_node_ok", site=self.site, node=node.socket)

    async def _alert_nodes(self, state: SiteState) -> None:
        """`router_node_down` once per episode for a node lacking the split longer than the
        deadline, `router_node_back` when it has it again: audit log and `on_alert`."""
        nodes = self._nodes()
        if nodes is None:
            return
        now = time.monotonic()
        for node in nodes.nodes():
            since = self._failing.get(node.socket)
            if since is not None and node.socket not in self._down \
                    and now - since >= nodes.node_deadline:
                self._down.add(node.socket)
                await self._alert(state, NODE_DOWN, (
                    f"{self.kind} node {node.socket} has not had the split "
                    f"{format_weights(state.weights)} for {now - since:.0f}s: "
                    f"{self._lacks(node)}; rollouts of {self.site} hold until it has"))
            elif since is None and node.socket in self._down:
                self._down.discard(node.socket)
                await self._alert(state, NODE_BACK, (
                    f"{self.kind} node {node.socket} has the split "
                    f"{format_weights(state.weights)} again"))

    async def _alert(self, state: SiteState, kind: str, message: str) -> None:
        if kind == NODE_DOWN:
            log.error(kind, site=self.site, message=message)
        else:
            log.info(kind, site=self.site, message=message)
        await self._record(state, kind, message)
        if self.on_alert is not None:
            self.on_alert(kind, message)

    def node_views(self) -> list[dict[str, Any]] | None:
        """`router.nodes` of the site view: each node with whether it has the stored split,
        what it reports, why not, and for how many seconds it has lacked it. None with one
        proxy."""
        nodes = self._nodes()
        if nodes is None:
            return None
        now = time.monotonic()
        out = []
        for node in nodes.nodes():
            why = self._lacks(node)
            since = self._failing.get(node.socket)
            out.append({"node": node.socket, "ok": why is None,
                        "weights": dict(node.weights) if node.weights is not None else None,
                        "error": why,
                        "since": round(now - since, 3) if why and since is not None else None})
        return out

    async def _reconcile_nodes(self, state: SiteState, nodes: NodeRouter,
                               actual: Weights | None) -> None:
        """Put the stored split back on each node that lacks it, and on no other."""
        desired = dict(state.weights)
        statuses = nodes.nodes()
        if any(n.ok for n in statuses):
            try:
                await self.router.settle()
            except RouterError as exc:
                log.error("router_error", site=self.site, error=str(exc))
        stale = [n for n in statuses if self._lacks(n)]
        drifted = [n for n in stale if n.ok and n.weights is not None]
        if drifted:
            self.metrics.router_drift_total.labels(self.site).inc()
            log.warning("drift", site=self.site, nodes=[n.socket for n in drifted],
                        weights=desired)
            await self._record(state, "drift", "; ".join(n.describe() for n in drifted)
                               + f"; desired is {format_weights(desired)}: putting it back")
        if stale:
            started = time.monotonic()
            results = await nodes.set_on([n.socket for n in stale], desired, drain=False)
            for result in results:
                self._count("ok" if result.ok else "error", started)
            if all(r.ok for r in results):
                crashpoints.hit("after_router")
        lacking = [n for n in nodes.nodes() if self._lacks(n)]
        if lacking:
            self.actual = None
            self.error = (f"{len(lacking)} of {len(statuses)} {self.kind} nodes do not have "
                          f"{format_weights(desired)}: "
                          + "; ".join(f"{n.socket} {self._lacks(n)}" for n in lacking))
        elif actual != desired or stale:
            self.actual = desired
            self.error = None
        self._track()
        await self._alert_nodes(state)

    async def apply(self, state: SiteState, weights: Weights, drain: bool) -> bool:
        started = time.monotonic()
        self.desired = dict(weights)
        try:
            await self.router.set_weights(weights, drain=drain)
        except RouterError as exc:
            self._count("error", started)
            self.error = str(exc)
            if self._nodes() is not None:  # some nodes may have it, some not: no one split
                self.actual = None
                self._track()
            log.error("router_error", site=self.site, error=str(exc), weights=weights)
            await self._record(state, "router_error",
                               f"setting {format_weights(weights)} failed: {exc}")
            return False
        crashpoints.hit("after_router")
        self._count("ok", started)
        self.error = None
        self.actual = dict(weights)
        self._track()
        return True

    async def reconcile(self, state: SiteState, known: bool = False) -> None:
        """Make the router match the stored split.

        `known`: `self.actual` was read in this tick (or set by a switch that read it back),
        so the router is not asked again.
        """
        actual = self.actual if known else await self.read()
        desired = state.weights
        self.desired = dict(desired)
        nodes = self._nodes()
        if nodes is not None:
            await self._reconcile_nodes(state, nodes, actual)
            return
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
