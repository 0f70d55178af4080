"""The daemon: wiring between the scheduler, the sources, the pure core, the store and routers.

Every `interval` each site ticks (one APScheduler job per site, never two at once):
measure every rule for the target colour concurrently, judge them (`rules.py`), decide
(`rollout.py`), store the decision *before* touching the router, carry out its actions, then
reconcile: read the router's real split and put the desired one back if someone changed it.
Measuring happens outside the site's lock; deciding, storing and acting inside it, which
operator commands and Alertmanager webhooks take too, so none of them interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from watchdog import notify, odoo, reload, rollout, routers, views
from watchdog.accesslog import AccessLogReceiver
from watchdog.alerts import AlertBook, Receipt
from watchdog.config import COLORS, ConfigError, LoadedConfig, SiteConfig, load
from watchdog.measurement import Measurement
from watchdog.metrics import Metrics
from watchdog.rollout import (
    ApplyWeights,
    Decision,
    Event,
    Notify,
    Phase,
    RuleView,
    RunPreflight,
    SiteState,
    Tick,
)
from watchdog.rules import RuleStatus, State, evaluate
from watchdog.sources import Source, Target, create_all, measure_all
from watchdog.store import Store

log = structlog.get_logger("odoo_watchdog")


class UnknownSite(KeyError):
    pass


class StartError(RuntimeError):
    """The daemon cannot start (a port taken, a secret unreadable); the message says why."""


@dataclass
class SiteRuntime:
    name: str
    config: SiteConfig
    router: routers.Router
    state: SiteState
    statuses: dict[tuple[str, str], RuleStatus] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    actual: dict[str, int] | None = None
    router_error: str | None = None
    last_tick: float | None = None
    ticks: int = 0


class Daemon:
    def __init__(self, loaded: LoadedConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.loaded = loaded
        self.clock = clock
        self.metrics = Metrics()
        self.store = Store(loaded.config.state_dir if loaded.config.state_dir.is_absolute()
                           else loaded.path.parent / loaded.config.state_dir)
        self.sources: dict[str, Source] = create_all(loaded.config)
        self.sites: dict[str, SiteRuntime] = {}
        self.scheduler: AsyncIOScheduler | None = None
        self.started = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.alerts = AlertBook()
        self.access_log = AccessLogReceiver.from_config(loaded.config, self.metrics)
        # Secrets (url_file) are read now: a missing one stops the start with a clear error.
        self.notifier = notify.Notifier(notify.resolve(loaded.config.notify, loaded.path.parent))
        self.reload_error: list[str] | None = None
        self.reload_warnings: list[str] = []
        self.last_reload_at = time.time()
        self._signature = self._files_signature()
        self._reload_lock = asyncio.Lock()
        self.on_reload: Callable[[bool], None] | None = None  # sd_notify hook, set by `run`
        self.metrics.config_last_reload_successful.set(1)
        self.metrics.config_last_reload_success_timestamp_seconds.set(self.last_reload_at)

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        if self.access_log is not None:  # first: a port already taken fails the start
            try:
                await self.access_log.start()
            except OSError as exc:
                listen = self.loaded.config.access_log.listen if self.loaded.config.access_log \
                    else "?"
                raise StartError(f"access_log: cannot listen on {listen} (UDP): "
                                 f"{exc.strerror or exc}") from None
        for name, site in self.loaded.config.sites.items():
            state = await asyncio.to_thread(self.store.load, name)
            if state is None:
                state = rollout.initial(name, site.live)
                await asyncio.to_thread(self.store.save, state, [Event(
                    "initialized", f"first start: {site.live} is live",
                    "idle", "idle", dict(state.weights), actor="daemon")])
            runtime = SiteRuntime(name, site, routers.create(name, site), state)
            self.sites[name] = runtime
            self._export(runtime)
            await self._reconcile(runtime)
            log.info("site_loaded", site=name, phase=state.phase.value, live=state.live,
                     weights=state.weights)
        self.scheduler = AsyncIOScheduler()
        for name, runtime in self.sites.items():
            self.scheduler.add_job(
                self.tick, "interval", args=[name], id=f"tick:{name}",
                seconds=runtime.config.rollout.interval, max_instances=1, coalesce=True,
                next_run_time=datetime.now(), misfire_grace_time=None,
            )
        self.scheduler.start()
        self.notifier.start()
        self._spawn(self._watch_files())
        self.started.set()

    async def stop(self) -> None:
        """Finish the tick in progress, leave traffic as it is."""
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        for runtime in self.sites.values():
            async with runtime.lock:
                await runtime.router.close()
        for task in list(self._tasks):
            task.cancel()
        for source in self.sources.values():
            await source.close()
        await self.notifier.close()
        if self.access_log is not None:
            await self.access_log.stop()
        self.store.close()

    def healthy(self) -> bool:
        return self.started.is_set() and self.scheduler is not None and self.scheduler.running

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---------------------------------------------------------------- ticks

    async def tick(self, name: str) -> None:
        runtime = self.sites.get(name)
        if runtime is None:
            return
        try:
            await self._tick(runtime)
        except Exception:  # a bug must not stop the schedule; it is logged loudly
            log.exception("tick_failed", site=name)

    async def _tick(self, runtime: SiteRuntime) -> None:
        # Measure without the lock (it may take up to a source's timeout), decide with it.
        state = runtime.state
        target = state.target
        measured = await self._measure(runtime, target)
        preflight = None
        if state.phase is Phase.PREFLIGHT:
            preflight = await self._preflight(runtime)
        previous_healthy = None
        if state.previous is not None and state.can_fail_back(self.clock()):
            url = runtime.config.colors[state.previous].url
            previous_healthy, _ = await odoo.check_health_url(url)
        async with runtime.lock:
            actual = await self._read(runtime)
            if runtime.state.target == target and runtime.state.phase is state.phase:
                # (A command in between changed what was measured: decide on the next tick.)
                rules = {**measured, **self._alert_views(runtime, target)}
                decision = rollout.tick(runtime.state, Tick(
                    self.clock(), rules, actual,
                    preflight if runtime.state.phase is Phase.PREFLIGHT else None,
                    previous_healthy))
                await self._commit(runtime, decision)
            await self._reconcile(runtime, known=runtime.actual is not None)
        runtime.last_tick = self.clock()
        runtime.ticks += 1

    def _tick_soon(self, name: str) -> None:
        """Bring the site's next tick forward to now (the scheduler still never runs two)."""
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.modify_job(f"tick:{name}", next_run_time=datetime.now())
        else:
            self._spawn(self.tick(name))

    def _alert_views(self, runtime: SiteRuntime, color: str) -> dict[str, RuleView]:
        on_fire = self.loaded.config.alertmanager.on_fire
        return self.alerts.views(runtime.name, color, on_fire)

    async def decide_now(self, name: str) -> Decision | None:
        """A decision on what is known now (last rule states, firing alerts), without
        measuring: the Alertmanager webhook's fast path to a rollback."""
        runtime = self.sites[name]
        async with runtime.lock:
            target = runtime.state.target
            rules = {rule: RuleView(rule, st.state, self._on_fire(rule), st.value, "",
                                    st.detail)
                     for (rule, color), st in runtime.statuses.items() if color == target}
            rules.update(self._alert_views(runtime, target))
            decision = rollout.tick(runtime.state, Tick(self.clock(), rules, runtime.actual))
            await self._commit(runtime, decision)
            return decision

    def _on_fire(self, rule_name: str) -> str:
        for rule in self.loaded.rules:
            if rule.name == rule_name:
                return str(rule.on_fire)
        return "notify"

    async def receive_alerts(self, payload: Any) -> Receipt:
        """An Alertmanager webhook; PayloadError (a 400) when it is not one."""
        match = self.loaded.config.alertmanager.match
        receipt = self.alerts.receive(payload, set(self.sites), match)
        for alert in receipt.firing + receipt.resolved:
            self.metrics.alerts_received_total.labels(alert.status).inc()
            log.info("alert", site=alert.site, alert=alert.name, color=alert.color,
                     status=alert.status, summary=alert.summary)
        for status, count in (("duplicate", receipt.duplicates),
                              ("unknown_site", receipt.unknown_site),
                              ("unmatched", receipt.unmatched)):
            if count:
                self.metrics.alerts_received_total.labels(status).inc(count)
        for site in sorted({a.site for a in receipt.firing}):
            await self.decide_now(site)
        return receipt

    async def _measure(self, runtime: SiteRuntime, color: str) -> dict[str, RuleView]:
        rules = self.loaded.rules_for(runtime.name)
        target = Target.of(runtime.name, runtime.config, color)
        started = time.monotonic()
        measurements = await measure_all(self.sources, rules, target)
        now = self.clock()
        out: dict[str, RuleView] = {}
        # A reload while measuring may have removed a rule: it no longer counts, at all.
        current = {r.name for r in self.loaded.rules_for(runtime.name)}
        for rule, m in zip(rules, measurements, strict=True):
            if rule.name not in current:
                continue
            key = (rule.name, color)
            before = runtime.statuses.get(key, RuleStatus())
            after = evaluate(rule, before, m, now)
            runtime.statuses[key] = after
            self._rule_metrics(runtime.name, rule, color, after, m, time.monotonic() - started)
            if after.state is not before.state:
                log.info("rule_state", site=runtime.name, rule=rule.name, color=color,
                         state_from=before.state.label, state=after.state.label,
                         value=after.value, threshold=rule.threshold_text(), detail=m.detail,
                         phase=runtime.state.phase.value)
                if after.state is State.FIRING and rule.on_fire == "notify":
                    self.notifier.post(runtime.name, "rule", f"{runtime.name}: rule {rule.name} "
                                       f"fired on {color} (value {after.value}, threshold "
                                       f"{rule.threshold_text()}; {m.detail})", rule=rule.name)
            out[rule.name] = RuleView(rule.name, after.state, rule.on_fire, after.value,
                                        rule.threshold_text(), after.detail)
        # Rules of the other colour are not measured now: forget their states and series, so
        # neither the API nor the metrics keep showing a colour's last state as current.
        for key in [k for k in runtime.statuses if k[1] != color]:
            self._forget(runtime.name, *key)
        return out

    def _forget(self, site: str, rule: str, color: str) -> None:
        runtime = self.sites.get(site)
        if runtime is not None:
            runtime.statuses.pop((rule, color), None)
        for gauge in (self.metrics.rule_state, self.metrics.rule_value):
            with contextlib.suppress(KeyError):
                gauge.remove(site, rule, color)

    def _rule_metrics(self, site: str, rule: Any, color: str, status: RuleStatus,
                      m: Measurement, seconds: float) -> None:
        outcome = status.outcome.value if status.outcome else "error"
        self.metrics.rule_evaluations_total.labels(site, rule.name, outcome).inc()
        self.metrics.rule_evaluation_seconds.labels(rule.source).observe(
            max(0.0, m.finished - m.started) if m.finished else seconds)
        self.metrics.rule_state.labels(site, rule.name, color).set(int(status.state))
        value = status.value if status.value is not None else math.nan
        self.metrics.rule_value.labels(site, rule.name, color).set(value)

    async def _preflight(self, runtime: SiteRuntime) -> rollout.Preflight:
        ro = runtime.state.rollout
        assert ro is not None
        live_ok, live_detail = await odoo.smoke(runtime.config.colors[ro.live].url, ["health"])
        if not live_ok:
            return rollout.Preflight(False, f"live {ro.live} is not healthy: {live_detail}")
        checks = runtime.config.rollout.smoke
        ok, detail = await odoo.smoke(runtime.config.colors[ro.candidate].url, checks)
        return rollout.Preflight(ok, f"{ro.candidate}: {detail}")

    # ---------------------------------------------------------------- decisions

    async def _commit(self, runtime: SiteRuntime, decision: Decision) -> None:
        """Store first, then act: a crash between the two resumes from the stored split."""
        if decision.changed:
            await asyncio.to_thread(self.store.save, decision.state, decision.events)
        runtime.state = decision.state
        for event in decision.events:
            log.info(event.kind, site=runtime.name, message=event.message,
                     rollout_id=event.rollout_id, phase_from=event.phase_from,
                     phase=event.phase_to, weights=event.weights, rule=event.rule,
                     value=event.value, threshold=event.threshold, actor=event.actor)
            self._count(runtime.name, event)
        self._export(runtime)
        for action in decision.actions:
            if isinstance(action, ApplyWeights):
                await self._apply(runtime, action.weights, action.drain)
            elif isinstance(action, Notify):
                self.notifier.post(runtime.name, action.kind, action.message,
                                   phase=runtime.state.phase.value,
                                   weights=dict(runtime.state.weights))
            elif isinstance(action, RunPreflight):
                self._tick_soon(runtime.name)

    def _count(self, site: str, event: Event) -> None:
        if event.kind in ("promoted", "rolled_back", "aborted"):
            self.metrics.rollouts_total.labels(site, event.kind).inc()
        if event.kind in ("rolling_back", "failback"):
            self.metrics.rollbacks_total.labels(site, event.rule or "operator").inc()

    async def _apply(self, runtime: SiteRuntime, weights: dict[str, int], drain: bool) -> bool:
        kind = runtime.router.kind
        started = time.monotonic()
        try:
            await runtime.router.set_weights(weights, drain=drain)
        except routers.RouterError as exc:
            self.metrics.router_operations_total.labels(runtime.name, kind, "error").inc()
            runtime.router_error = str(exc)
            log.error("router_error", site=runtime.name, error=str(exc), weights=weights)
            await asyncio.to_thread(self.store.record, runtime.name, self._event(
                runtime, "router_error", f"setting {routers.format_weights(weights)} failed: "
                f"{exc}"))
            return False
        finally:
            self.metrics.router_operation_seconds.labels(kind).observe(time.monotonic() - started)
        self.metrics.router_operations_total.labels(runtime.name, kind, "ok").inc()
        runtime.router_error = None
        runtime.actual = dict(weights)
        return True

    async def _read(self, runtime: SiteRuntime) -> dict[str, int] | None:
        kind = runtime.router.kind
        started = time.monotonic()
        try:
            actual = await runtime.router.get_weights()
        except routers.RouterError as exc:
            self.metrics.router_operations_total.labels(runtime.name, kind, "error").inc()
            if runtime.router_error != str(exc):
                log.error("router_error", site=runtime.name, error=str(exc))
            runtime.router_error = str(exc)
            runtime.actual = None
            return None
        finally:
            self.metrics.router_operation_seconds.labels(kind).observe(time.monotonic() - started)
        self.metrics.router_operations_total.labels(runtime.name, kind, "ok").inc()
        runtime.router_error = None
        runtime.actual = actual
        return actual

    async def _reconcile(self, runtime: SiteRuntime, known: bool = False) -> None:
        """Make the router match the stored split (a reload or a person may have changed it).

        `known`: `runtime.actual` was read from the router in this tick (or set by a switch it
        read back), so it is not asked again.
        """
        actual = runtime.actual if known else await self._read(runtime)
        desired = runtime.state.weights
        if actual is not None:
            try:
                await runtime.router.settle()
            except routers.RouterError as exc:
                log.error("router_error", site=runtime.name, error=str(exc))
        if actual is None or actual == desired:
            return
        self.metrics.router_drift_total.labels(runtime.name).inc()
        message = (f"router reports {routers.format_weights(actual)}, desired is "
                   f"{routers.format_weights(desired)}: putting it back")
        log.warning("drift", site=runtime.name, actual=actual, weights=desired)
        await asyncio.to_thread(self.store.record, runtime.name,
                                self._event(runtime, "drift", message))
        await self._apply(runtime, desired, drain=False)

    def _event(self, runtime: SiteRuntime, kind: str, message: str) -> Event:
        phase = runtime.state.phase.value
        ro = runtime.state.rollout
        return Event(kind, message, phase, phase, dict(runtime.state.weights),
                     rollout_id=ro.id if ro else None)

    def _export(self, runtime: SiteRuntime) -> None:
        state = runtime.state
        # Counters exist at 0 from the start, so increase() sees the first event too.
        for outcome in ("promoted", "rolled_back", "aborted"):
            self.metrics.rollouts_total.labels(runtime.name, outcome)
        self.metrics.router_drift_total.labels(runtime.name)
        for color in COLORS:
            self.metrics.traffic_weight.labels(runtime.name, color).set(state.weights[color])
        for phase in Phase:
            self.metrics.rollout_phase.labels(runtime.name, phase.value).set(
                1 if phase is state.phase else 0)
        ro = state.rollout
        step = ro.step + 1 if ro is not None and ro.active and ro.step >= 0 else 0
        self.metrics.rollout_step.labels(runtime.name).set(step)

    # ---------------------------------------------------------------- commands

    async def command(self, name: str, cmd: rollout.Command) -> SiteState:
        runtime = self.sites.get(name)
        if runtime is None:
            raise UnknownSite(name)
        async with runtime.lock:
            decision = rollout.command(runtime.state, cmd, self.clock(),
                                       runtime.config.rollout)
            await self._commit(runtime, decision)
        return runtime.state

    # ---------------------------------------------------------------- reload

    def _files_signature(self) -> reload.Signature:
        paths = [self.loaded.path, *reload.rule_paths(self.loaded.path,
                                                      self.loaded.config.rule_files)]
        return reload.signature(paths)

    async def _watch_files(self, every: float = 1.0) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                if await asyncio.to_thread(self._files_signature) != self._signature:
                    await self.reload("file changed")
            except Exception:
                log.exception("reload_watch_failed")

    async def reload(self, reason: str = "SIGHUP") -> bool:
        """Re-read the config and rule files; swap between ticks, or keep the last good set.

        Rules, thresholds and rollout settings change at once (a running rollout keeps its
        snapshot of steps; a rule that is gone stops counting). Sites, routers, the API and
        Prometheus settings need a restart: a change to them is reported, not applied.
        """
        async with self._reload_lock:
            if self.on_reload:
                self.on_reload(False)
            try:
                ok = await self._reload(reason)
            finally:
                if self.on_reload:
                    self.on_reload(True)
            return ok

    async def _reload(self, reason: str) -> bool:
        self._signature = await asyncio.to_thread(self._files_signature)
        try:
            new = await asyncio.to_thread(load, self.loaded.path)
        except ConfigError as exc:
            self.reload_error = [str(p) for p in exc.problems]
            self.metrics.config_last_reload_successful.set(0)
            log.error("reload_failed", reason=reason, problems=self.reload_error)
            for name in self.sites:
                self.notifier.post(name, "reload_failed", "config reload failed, the last good "
                                   "rules stay in force: " + "; ".join(self.reload_error[:3]))
            return False
        old = self.loaded.config
        warnings = [f"{part} changed: restart the daemon to apply it"
                    for part, before, after in (
                        ("sites (names, routers or colours)",
                         {n: (s.router, s.colors) for n, s in old.sites.items()},
                         {n: (s.router, s.colors) for n, s in new.config.sites.items()}),
                        ("api", old.api, new.config.api),
                        ("access_log", old.access_log, new.config.access_log),
                        ("prometheus", old.prometheus, new.config.prometheus),
                        ("state_dir", old.state_dir, new.config.state_dir),
                        ("notify", old.notify, new.config.notify))
                    if before != after]
        for runtime in self.sites.values():  # between ticks: each site's lock in turn
            async with runtime.lock:
                site = new.config.sites.get(runtime.name)
                if site is not None and site.router == runtime.config.router:
                    if site.rollout.interval != runtime.config.rollout.interval \
                            and self.scheduler is not None:
                        self.scheduler.reschedule_job(f"tick:{runtime.name}", trigger="interval",
                                                      seconds=site.rollout.interval)
                    runtime.config = site
                names = {r.name for r in new.rules_for(runtime.name)}
                gone = {r.name for r in self.loaded.rules_for(runtime.name)} - names
                gone |= {k[0] for k in runtime.statuses if k[0] not in names}
                for rule_name in gone:  # a removed rule stops counting, for every colour
                    for color in COLORS:
                        self._forget(runtime.name, rule_name, color)
        self.loaded = new
        self.reload_error = None
        self.reload_warnings = warnings + new.warnings
        self.last_reload_at = time.time()
        self.metrics.config_last_reload_successful.set(1)
        self.metrics.config_last_reload_success_timestamp_seconds.set(self.last_reload_at)
        log.info("reloaded", reason=reason, rules=len(new.rules), warnings=warnings)
        return True

    # ---------------------------------------------------------------- views

    def require_site(self, name: str) -> None:
        """UnknownSite (the API's 404) unless the daemon runs a site of that name."""
        if name not in self.sites:
            raise UnknownSite(name)

    async def site_view(self, name: str, events: int = 0) -> dict[str, Any]:
        runtime = self.sites.get(name)
        if runtime is None:
            raise UnknownSite(name)
        recent = await asyncio.to_thread(self.store.events, name, events) if events else None
        return views.site_view(self, runtime, recent)

    async def sites_view(self) -> list[dict[str, Any]]:
        return [await self.site_view(name) for name in self.sites]

    def config_view(self) -> dict[str, Any]:
        return {"path": str(self.loaded.path), "last_reload_successful": not self.reload_error,
                "last_reload_at": self.last_reload_at, "errors": self.reload_error or [],
                "warnings": self.reload_warnings, "rules": len(self.loaded.rules)}
