"""The daemon: lifecycle, the schedule, and the wiring between the parts that do the work.

Every `interval` each site ticks (one APScheduler job per site, never two at once): the rule
manager measures and judges the target colour's rules (`rulemanager.py`), the state machine
decides (`rollout.py`), the decision is stored *before* the router is touched (`store.py`),
its actions are carried out, and the site's router puts back a split someone changed
(`siterouter.py`). docs/architecture.md draws the rooms and the flow of one tick.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from watchdog import crashpoints, notify, preflight, reload, rollout, routers, site, views
from watchdog.accesslog import AccessLogReceiver
from watchdog.alerts import AlertBook, Receipt
from watchdog.config import LoadedConfig
from watchdog.metrics import Metrics
from watchdog.prepare import DatabaseBusy, HasTraffic, Preparer
from watchdog.rollout import (
    ApplyWeights,
    CancelStep,
    Decision,
    Event,
    Notify,
    Phase,
    Resume,
    RunPreflight,
    RunStep,
    StepDone,
    Tick,
)
from watchdog.rulemanager import RuleManager, restart_needed
from watchdog.secrets import SecretError
from watchdog.site import SiteRuntime
from watchdog.siterouter import SiteRouter
from watchdog.smoke import SmokeCredentials
from watchdog.sources import Target, create_all
from watchdog.store import Store

log = structlog.get_logger("odoo_watchdog")


class UnknownSite(KeyError):
    pass


class StartError(RuntimeError):
    """The daemon cannot start (a port taken, a secret unreadable); the message says why."""


class Daemon:
    def __init__(self, loaded: LoadedConfig, *, clock: Callable[[], float] = time.time) -> None:
        crashpoints.announce()  # ODOO_WATCHDOG_CRASH_AT, for tests only: a WARNING
        self.clock = clock
        self.metrics = Metrics()
        # Relative to the config's folder (`/` keeps an absolute state_dir as it is).
        self.store = Store(loaded.path.parent / loaded.config.state_dir, clock)
        self.alerts = AlertBook()
        self.access_log = AccessLogReceiver.from_config(loaded.config, self.metrics)
        # Secrets (url_file) are read now: a missing one stops the start with a clear error.
        self.notifier = notify.Notifier(notify.resolve(loaded.config.notify, loaded.path.parent),
                                        clock)
        self.rules = RuleManager(loaded, create_all(loaded.config), self.metrics,
                                 self.notifier.post, clock)
        self.sites: dict[str, SiteRuntime] = {}
        self.preparer = Preparer(self.metrics, self.store, self.step_done, clock)
        self.smoke_credentials = SmokeCredentials()  # smoke_settings.credentials_file, per site
        self.scheduler: AsyncIOScheduler | None = None
        self.started = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.reloader = reload.Reloader(loaded, self.metrics, self._apply_config,
                                        self._reload_failed, clock)

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        if self.access_log is not None:  # first: a port already taken fails the start
            try:
                await self.access_log.start()
            except OSError as exc:
                raise StartError(f"access_log: cannot listen on {self.access_log.host}:"
                                 f"{self.access_log.port} (UDP): {exc.strerror or exc}") from None
        for name, config in self.loaded.config.sites.items():
            try:  # the database's dsn_file and the smoke user's credentials, never logged
                self.preparer.configure(name, config, self.loaded.path.parent)
                self.smoke_credentials.configure(name, config, self.loaded.path.parent)
            except SecretError as exc:
                raise StartError(str(exc)) from None
        for name, config in self.loaded.config.sites.items():
            state = await asyncio.to_thread(self.store.load, name)
            if state is None:
                state = rollout.initial(name, config.live)
                await asyncio.to_thread(self.store.save, state, [Event(
                    "initialized", f"first start: {config.live} is live",
                    "idle", "idle", dict(state.weights), actor="daemon")])
            memory = await asyncio.to_thread(self.store.load_memory, name)
            restored = (self.rules.restore(name, memory["rules"]),
                        self.alerts.restore(name, memory["alerts"], self.clock()))
            router = SiteRouter(name, routers.create(name, config), self.metrics, self.store)
            runtime = self.sites[name] = SiteRuntime(name, config, router, state)
            site.export(self.metrics, name, state)
            await router.check(state)
            await router.reconcile(state)
            # Before any step runs: what an interrupted clone, restore or migration left.
            await self.preparer.clean_up(name, config)
            if state.phase is Phase.PREPARING:  # the step that ran when the daemon stopped
                async with runtime.lock:
                    await self._commit(runtime, rollout.resume(state, Resume(), self.clock()))
            log.info("site_loaded", site=name, phase=state.phase.value, live=state.live,
                     weights=state.weights, rules_restored=restored[0],
                     alerts_restored=restored[1])
        self.scheduler = AsyncIOScheduler()
        for name, runtime in self.sites.items():
            self.scheduler.add_job(
                self.tick, "interval", args=[name], id=f"tick:{name}",
                seconds=runtime.config.rollout.interval, max_instances=1, coalesce=True,
                next_run_time=datetime.now(), misfire_grace_time=None,
            )
        self.scheduler.start()
        self.notifier.start()
        self._spawn(self.reloader.watch())
        self.started.set()

    async def stop(self) -> None:
        """Finish the tick in progress, leave traffic as it is."""
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        await self.preparer.close()
        for runtime in self.sites.values():
            async with runtime.lock:
                await runtime.router.close()
        for task in list(self._tasks):
            task.cancel()
        await self.rules.close()
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
        state, name = runtime.state, runtime.name
        target = Target.of(name, runtime.config, state.target)
        measured = await self.rules.measure(name, target, state.phase.value)
        # The proxy's checks as of the last read-back (at most one interval old).
        checked = (await preflight.run(runtime.config, state.rollout, runtime.router.health,
                                       self.smoke_credentials.get(name))
                   if state.phase is Phase.PREFLIGHT and state.rollout else None)
        if checked is not None and checked.sessions_shared is not None:
            self.metrics.sessions_shared.labels(name).set(1 if checked.sessions_shared else 0)
        previous_healthy = await preflight.previous_healthy(runtime.config, state, self.clock())
        await self._remember(name)
        async with runtime.lock:
            actual = await runtime.router.read()
            if runtime.state.target == state.target and runtime.state.phase is state.phase:
                # (A command in between changed what was measured: decide on the next tick.)
                rules = {**measured, **self._known_views(runtime)}
                await self._commit(runtime, rollout.tick(runtime.state, Tick(
                    self.clock(), rules, actual, checked, previous_healthy)))
            await runtime.router.reconcile(runtime.state, known=runtime.router.actual is not None)
        runtime.last_tick = self.clock()
        runtime.ticks += 1

    async def _remember(self, name: str) -> None:
        """Store what a restart must not forget: rule states that moved, alerts that ended."""
        rules = self.rules.memory(name)
        alerts = self.alerts.memory(name) if self.alerts.expire(name, self.clock()) else None
        if rules is not None or alerts is not None:
            await asyncio.to_thread(self.store.save_memory, name, rules=rules, alerts=alerts)

    def _tick_soon(self, name: str) -> None:
        """Bring the site's next tick forward to now (the scheduler still never runs two)."""
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.modify_job(f"tick:{name}", next_run_time=datetime.now())
        else:
            self._spawn(self.tick(name))

    def _known_views(self, runtime: SiteRuntime) -> dict[str, rollout.RuleView]:
        """What counts beside the measured rules: firing alerts, the proxy's own check."""
        target = runtime.state.target
        return {**self.alerts.views(runtime.name, target, self.loaded.config.alertmanager.on_fire,
                                    self.clock()), **runtime.router.views(target)}

    async def decide_now(self, name: str) -> Decision:
        """A decision on what is known now (last rule states, firing alerts), without
        measuring: the Alertmanager webhook's fast path to a rollback."""
        runtime = self.sites[name]
        async with runtime.lock:
            rules = {**self.rules.views(name, runtime.state.target), **self._known_views(runtime)}
            decision = rollout.tick(runtime.state, Tick(self.clock(), rules,
                                                        runtime.router.actual))
            await self._commit(runtime, decision)
            return decision

    async def receive_alerts(self, payload: Any) -> Receipt:
        """An Alertmanager webhook; PayloadError (a 400) when it is not one."""
        receipt = self.alerts.receive(payload, set(self.sites),
                                      self.loaded.config.alertmanager.match)
        for alert in receipt.firing + receipt.resolved:
            log.info("alert", site=alert.site, alert=alert.name, color=alert.color,
                     status=alert.status, summary=alert.summary)
        for status, count in receipt.counts().items():
            self.metrics.alerts_received_total.labels(status).inc(count)
        for name in sorted(receipt.sites):
            await asyncio.to_thread(self.store.save_memory, name,
                                    alerts=self.alerts.memory(name))
        for name in sorted({a.site for a in receipt.firing}):
            await self.decide_now(name)
        return receipt

    # ---------------------------------------------------------------- decisions

    async def _commit(self, runtime: SiteRuntime, decision: Decision) -> None:
        """Store first, then act: a crash between the two resumes from the stored split."""
        if decision.changed:
            await asyncio.to_thread(self.store.save, decision.state, decision.events)
            crashpoints.hit("after_save")
        runtime.state = decision.state
        for event in decision.events:
            log.info(event.kind, site=runtime.name, message=event.message,
                     rollout_id=event.rollout_id, phase_from=event.phase_from,
                     phase=event.phase_to, weights=event.weights, rule=event.rule,
                     value=event.value, threshold=event.threshold, actor=event.actor)
            site.count(self.metrics, runtime.name, event)
        site.export(self.metrics, runtime.name, runtime.state)
        for action in decision.actions:
            if isinstance(action, ApplyWeights):
                crashpoints.hit("after_commit")
                await runtime.router.apply(runtime.state, action.weights, action.drain)
            elif isinstance(action, Notify):
                self.notifier.post(runtime.name, action.kind, action.message,
                                   phase=runtime.state.phase.value,
                                   weights=dict(runtime.state.weights))
            elif isinstance(action, RunPreflight):
                self._tick_soon(runtime.name)
            elif isinstance(action, RunStep) and runtime.state.rollout is not None:
                self.preparer.start(runtime.name, runtime.config, runtime.state.rollout, action)
            elif isinstance(action, CancelStep):
                self.preparer.cancel(runtime.name)

    async def step_done(self, name: str, done: StepDone) -> None:
        """A prepare step's task ended: the machine decides what follows."""
        runtime = self.sites.get(name)
        if runtime is None:
            return
        async with runtime.lock:
            await self._commit(runtime, rollout.step_done(runtime.state, done, self.clock()))

    async def command(self, name: str, cmd: rollout.Command) -> rollout.SiteState:
        self.require_site(name)
        runtime = self.sites[name]
        async with runtime.lock:
            if isinstance(cmd, rollout.Start) and runtime.config.steps \
                    and self.preparer.running(name) and not runtime.state.active:
                raise DatabaseBusy(f"a backup or restore of {name} is running; start the "
                                   "rollout when it has ended (see the site's events)")
            db = runtime.config.database
            decision = rollout.command(
                runtime.state, cmd, self.clock(), runtime.config.rollout,
                prepare=runtime.config.steps, shared=db is not None and db.strategy == "shared",
                breaking=db is not None and db.breaking)
            await self._commit(runtime, decision)
        return runtime.state

    # ---------------------------------------------------------------- backups by hand

    async def backup(self, name: str, color: str | None, actor: str) -> dict[str, Any]:
        """Start a backup of `color`'s database (default: the live colour's)."""
        self.require_site(name)
        runtime = self.sites[name]
        async with runtime.lock:
            chosen = color or runtime.state.live
            backup_id = self.preparer.backup_now(name, chosen, actor)
        return {"id": backup_id, "color": chosen, "site": name}

    async def backups(self, name: str) -> list[dict[str, Any]]:
        self.require_site(name)
        found = await asyncio.to_thread(self.preparer.list_backups, name)
        return [info.as_json() for info in found]

    async def restore(self, name: str, backup_id: str, to: str, *, force: bool,
                      actor: str) -> dict[str, Any]:
        """Start restoring a backup into `to`; refused while `to` has traffic unless force."""
        self.require_site(name)
        runtime = self.sites[name]
        async with runtime.lock:
            self.preparer.require(name)
            share = runtime.state.weights.get(to, 0)
            if share > 0 and not force:
                raise HasTraffic(
                    f"{to} serves {share}% of {name}'s traffic: restoring its database "
                    "under its users would lose their work since the backup; switch traffic "
                    "away first, or pass force (--force) if that is what you want")
            if runtime.state.phase is Phase.PREPARING:
                raise DatabaseBusy(f"{name} is preparing a rollout; abort it or wait")
            self.preparer.restore(name, backup_id, to, force=force, actor=actor)
        return {"id": backup_id, "to": to, "site": name, "force": force}

    # ---------------------------------------------------------------- reload

    @property
    def loaded(self) -> LoadedConfig:
        return self.reloader.loaded

    async def reload(self, reason: str = "SIGHUP") -> bool:
        """Re-read the config and rule files; swap between ticks, or keep the last good set."""
        return await self.reloader.reload(reason)

    async def _apply_config(self, new: LoadedConfig) -> list[str]:
        """Rules, thresholds and rollout settings change at once (a running rollout keeps its
        snapshot of steps; a rule that is gone stops counting); what `restart_needed` names
        is reported, not applied."""
        for runtime in self.sites.values():  # between ticks: each site's lock in turn
            async with runtime.lock:
                config = new.config.sites.get(runtime.name)
                if config is not None and config.router == runtime.config.router:
                    if config.rollout.interval != runtime.config.rollout.interval \
                            and self.scheduler is not None:
                        self.scheduler.reschedule_job(f"tick:{runtime.name}", trigger="interval",
                                                      seconds=config.rollout.interval)
                    if config.database != runtime.config.database:
                        self._reconfigure_database(runtime.name, config, new)
                    self._reconfigure_smoke(runtime.name, config, new)
                    runtime.config = config
        self.rules.update(new, self.sites)  # no await inside: atomic for the ticks
        return restart_needed(self.loaded.config, new.config)

    def _reconfigure_database(self, name: str, config: Any, new: LoadedConfig) -> None:
        """New database settings take effect for the next step; a dsn_file that cannot be
        read keeps the old ones (and says so)."""
        try:
            self.preparer.configure(name, config, new.path.parent)
        except SecretError as exc:
            log.error("database_config_kept", site=name, error=str(exc))
            self.notifier.post(name, "reload_failed", f"database settings not changed: {exc}")

    def _reconfigure_smoke(self, name: str, config: Any, new: LoadedConfig) -> None:
        """Re-read the smoke credentials (the file may change without the config); one that
        cannot be read keeps the previous ones (and says so, never with its content)."""
        try:
            self.smoke_credentials.configure(name, config, new.path.parent)
        except SecretError as exc:
            log.error("smoke_credentials_kept", site=name, error=str(exc))
            self.notifier.post(name, "reload_failed", f"smoke credentials not changed: {exc}")

    def _reload_failed(self, problems: list[str]) -> None:
        for name in self.sites:
            self.notifier.post(name, "reload_failed", "config reload failed, the last good "
                               "rules stay in force: " + "; ".join(problems[:3]))

    # ---------------------------------------------------------------- views

    def require_site(self, name: str) -> None:
        """UnknownSite (the API's 404) unless the daemon runs a site of that name."""
        if name not in self.sites:
            raise UnknownSite(name)

    def snapshot(self, name: str) -> views.SiteSnapshot:
        self.require_site(name)
        r = self.sites[name]
        return views.SiteSnapshot(
            r.name, r.state, r.router.actual, r.router.kind, r.router.error, r.router.health,
            tuple(self.rules.rows(name)), tuple(r.router.views(r.state.target).values()),
            tuple(self.alerts.firing.get(name, {}).values()),
            r.last_tick, r.config.rollout.interval, self.clock())

    async def site_view(self, name: str, events: int = 0) -> dict[str, Any]:
        snap = self.snapshot(name)
        recent = await asyncio.to_thread(self.store.events, name, events) if events else None
        return views.site_view(snap, recent)

    async def sites_view(self) -> list[dict[str, Any]]:
        return [await self.site_view(name) for name in self.sites]

    def config_view(self) -> dict[str, Any]:
        return self.reloader.view()
