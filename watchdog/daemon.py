"""The daemon: lifecycle, the schedule, and the wiring between the parts that do the work.

Every `interval` each site ticks (one APScheduler job per site, never two at once): the rule
manager measures and judges the target colour's rules (`rulemanager.py`), the state machine
decides (`rollout.py`), the decision is stored *before* the router is touched (`store.py`),
its actions are carried out, and the site's router puts back a split someone changed
(`siterouter.py`). docs/architecture.md draws the rooms and the flow of one tick.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from watchdog.ownership import FencedRouter, Leases, Sole, default_instance
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
from watchdog.sources.traffic import TrafficSource
from watchdog.store import Lease, LeaseLost, StoreError, open_store

log = structlog.get_logger("odoo_watchdog")


class UnknownSite(KeyError):
    pass


class StartError(RuntimeError):
    """The daemon cannot start (a port taken, a secret unreadable); the message says why."""


class NotOwner(RuntimeError):
    """Another daemon holds the site's lease (or none does right now): `owner` is
    {"instance", "api"} or None. The API passes the request on to that owner."""

    def __init__(self, site: str, owner: dict[str, Any] | None) -> None:
        self.site = site
        self.owner = owner
        who = f"{owner['instance']} ({owner['api']})" if owner else "no daemon, for the moment"
        super().__init__(f"site {site} is owned by {who}")


class Daemon:
    def __init__(self, loaded: LoadedConfig, *, clock: Callable[[], float] = time.time) -> None:
        crashpoints.announce()  # ODOO_WATCHDOG_CRASH_AT, for tests only: a WARNING
        self.clock = clock
        self.metrics = Metrics()
        # Relative to the config's folder (`/` keeps an absolute state_dir as it is); or
        # PostgreSQL (store.kind), shared with other daemons: then each site is leased.
        try:
            self.store = open_store(loaded.config, loaded.path.parent, clock)
        except (StoreError, SecretError) as exc:
            raise StartError(str(exc)) from None
        self.store.on_error = lambda op: self.metrics.store_errors_total.labels(op).inc()
        cfg = loaded.config
        names = list(cfg.sites)
        instance = cfg.store.instance or default_instance()
        self.ownership: Sole | Leases = (
            Leases(self.store, instance, cfg.api.url, cfg.store.lease, names, self.metrics,
                   on_acquired=self._acquired, on_lost=self._lost, idle=self._idle)
            if cfg.store.shared else Sole(instance, cfg.api.url, names))
        # A store that cannot write (docs/rollouts.md "Crash safety"): since when it was
        # reported; per site, a decision to make again once it writes (a step that ended, a
        # resume at start) and the rule and alert memory not yet stored; sites whose held
        # decision was logged in this episode.
        self._store_failing: float | None = None
        self._deferred: dict[str, Callable[[rollout.SiteState], Decision]] = {}
        self._unsaved_memory: dict[str, tuple[Any, Any]] = {}
        self._held: set[str] = set()
        self.alerts = AlertBook()
        self.access_log = AccessLogReceiver.from_config(loaded.config, self.metrics)
        # Secrets (url_file) are read now: a missing one stops the start with a clear error.
        self.notifier = notify.Notifier(notify.resolve(loaded.config.notify, loaded.path.parent),
                                        clock)
        sources = create_all(loaded.config)
        sources["traffic"] = TrafficSource(self.access_log)  # the receiver's own windows
        self.rules = RuleManager(loaded, sources, self.metrics, self.notifier.post, clock)
        # Sites whose lines the fast path judges now, and those with lines since it began.
        self._judging: set[str] = set()
        self._lines_again: set[str] = set()
        if self.access_log is not None:
            self.access_log.on_lines = self._lines_arrived
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
        shared = self.ownership.shared
        for name, config in self.loaded.config.sites.items():
            raw = routers.create(name, config)
            router = SiteRouter(name, FencedRouter(raw, name, self.ownership.owns)
                                if shared else raw, self.metrics, self.store,
                                on_alert=self._router_alert(name))
            # Until this daemon owns a shared site, its state is the stored one, for the views.
            state = (await asyncio.to_thread(self.store.load, name) if shared else None) \
                or rollout.initial(name, config.live)
            self.sites[name] = SiteRuntime(name, config, router, state)
        self.scheduler = AsyncIOScheduler()
        for name in self.sites if not shared else ():
            await self._activate(name)
        self.scheduler.start()
        self.notifier.start()
        self._spawn(self.reloader.watch())
        if shared:
            await self.ownership.round()  # the first leases before the API answers
            self._spawn(self.ownership.run())
        self.started.set()

    def _router_alert(self, name: str) -> Callable[[str, str], None]:
        """What the site's router calls when a proxy node stays unreachable (and is back)."""
        def alert(kind: str, message: str) -> None:
            state = self.sites[name].state if name in self.sites else None
            self.notifier.post(name, kind, message,
                               phase=state.phase.value if state else "idle",
                               weights=dict(state.weights) if state else {})
        return alert

    async def _activate(self, name: str) -> None:
        """The site becomes this daemon's: its stored state (the last decision of whoever
        owned it), its rule and alert memory, the router read back and set to the stored split,
        what an interrupted step left cleaned up; then its tick is scheduled."""
        runtime = self.sites[name]
        config = runtime.config
        async with runtime.lock:
            state = await asyncio.to_thread(self.store.load, name)
            if state is None:
                state = rollout.initial(name, config.live)
                await asyncio.to_thread(self.store.save, state, [Event(
                    "initialized", f"first start: {config.live} is live",
                    "idle", "idle", dict(state.weights), actor="daemon")],
                    fence=self.ownership.fence(name))
            memory = await asyncio.to_thread(self.store.load_memory, name)
            self.rules.statuses.pop(name, None)  # what this daemon knew when it last owned it
            self.alerts.firing.pop(name, None)
            restored = (self.rules.restore(name, memory["rules"]),
                        self.alerts.restore(name, memory["alerts"], self.clock()))
            runtime.state = state
            site.export(self.metrics, name, state)
            await runtime.router.check(state)
            await runtime.router.reconcile(state)
            # Before any step runs: what an interrupted clone, restore or migration left.
            await self.preparer.clean_up(name, config)
            if state.phase is Phase.PREPARING:  # the step that ran when its owner stopped
                await self._commit_or_defer(
                    runtime, lambda s: rollout.resume(s, Resume(), self.clock()))
        log.info("site_loaded", site=name, phase=state.phase.value, live=state.live,
                 weights=state.weights, rules_restored=restored[0],
                 alerts_restored=restored[1], instance=self.ownership.instance)
        if self.scheduler is not None and self.ownership.owns(name):
            self.scheduler.add_job(
                self.tick, "interval", args=[name], id=f"tick:{name}",
                seconds=config.rollout.interval, max_instances=1, coalesce=True,
                next_run_time=datetime.now(), misfire_grace_time=None, replace_existing=True,
            )

    async def _acquired(self, name: str, lease: Lease) -> None:
        await self._activate(name)
        phase = self.sites[name].state.phase.value
        await asyncio.to_thread(self.store.record, name, Event(
            "lease_acquired", f"{self.ownership.instance} owns {name} now (lease epoch "
            f"{lease.epoch})", phase, phase, dict(self.sites[name].state.weights),
            actor="daemon"))

    async def _lost(self, name: str, why: str) -> None:
        """The site is not this daemon's any more: nothing more is decided or sent for it
        (the router refuses changes already: FencedRouter); its tick stops, a step running
        for it is cancelled (the new owner cleans up what it leaves, as after a crash)."""
        runtime = self.sites.get(name)
        if runtime is None:
            return
        if self.scheduler is not None:
            with contextlib.suppress(Exception):
                self.scheduler.remove_job(f"tick:{name}")
        self.preparer.cancel(name)
        self._deferred.pop(name, None)
        self._unsaved_memory.pop(name, None)
        await runtime.router.close()  # timers that would send later (a drain's maint)
        log.warning("site_released", site=name, why=why, instance=self.ownership.instance)

    def _idle(self, name: str) -> bool:
        """A site that may be handed to another daemon: no rollout running, no step."""
        runtime = self.sites.get(name)
        return runtime is not None and not runtime.state.active \
            and not self.preparer.running(name) and not runtime.lock.locked()

    def owns(self, name: str) -> bool:
        return self.ownership.owns(name)

    def require_owner(self, name: str) -> None:
        """NotOwner (the API passes the request on) unless this daemon owns the site."""
        self.require_site(name)
        if not self.ownership.owns(name):
            raise NotOwner(name, self.ownership.owner(name))

    async def stop(self) -> None:
        """Finish the tick in progress, leave traffic as it is; give the leases up, so other
        daemons take the sites at once instead of after a lease."""
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        await self.preparer.close()
        for task in list(self._tasks):  # the lease round first: no new site while stopping
            task.cancel()
        with contextlib.suppress(StoreError):
            await self.ownership.release_all()
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
        if runtime is None or not self.ownership.owns(name):
            return
        try:
            await self._tick(runtime)
        except Exception:  # a bug must not stop the schedule; it is logged loudly
            log.exception("tick_failed", site=name)

    async def _tick(self, runtime: SiteRuntime) -> None:
        # Measure without the lock (it may take up to a source's timeout), decide with it.
        state, name = runtime.state, runtime.name
        target = Target.of(name, runtime.config, state.target, state.weights)
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
            if not self.ownership.owns(name):
                return  # lost while measuring: the new owner decides
            actual = await runtime.router.read()
            if not self.store.ok:  # the recorded split first: a locked store makes saves wait
                await runtime.router.reconcile(runtime.state, known=actual is not None)
            deferred = self._deferred.pop(name, None)
            if deferred is not None:
                await self._commit_or_defer(runtime, deferred)
            if runtime.state.target == state.target and runtime.state.phase is state.phase:
                # (A command in between changed what was measured: decide on the next tick.)
                rules = {**measured, **self._known_views(runtime)}
                await self._commit_or_hold(runtime, rollout.tick(runtime.state, Tick(
                    self.clock(), rules, actual, checked, previous_healthy)))
            if not self.ownership.owns(name):
                return  # the commit was refused: another daemon owns the site now
            await runtime.router.reconcile(runtime.state, known=runtime.router.actual is not None)
        await self._save_history(runtime)
        if self.store.pending:  # audit lines wait: retry every tick, so it goes on by itself
            await asyncio.to_thread(self.store.flush)
        await self._check_store()
        runtime.last_tick = self.clock()
        runtime.ticks += 1

    async def _remember(self, name: str) -> None:
        """Store what a restart must not forget: rule states that moved, alerts that ended."""
        rules = self.rules.memory(name)
        alerts = self.alerts.memory(name) if self.alerts.expire(name, self.clock()) else None
        await self._save_memory(name, rules, alerts)

    async def _save_memory(self, name: str, rules: Any, alerts: Any) -> None:
        """Store rule states and/or alerts; while the store cannot write they wait here (the
        newest of each) and go with the next tick once it can: never a reason to stop a tick."""
        unsaved = self._unsaved_memory.pop(name, (None, None))
        rules = rules if rules is not None else unsaved[0]
        alerts = alerts if alerts is not None else unsaved[1]
        if rules is None and alerts is None:
            return
        if self.store.ok:
            try:
                await asyncio.to_thread(self.store.save_memory, name, rules=rules, alerts=alerts,
                                        fence=self.ownership.fence(name))
                return
            except LeaseLost as exc:
                self.ownership.lost(name, str(exc))
                return
            except StoreError:
                pass
        self._unsaved_memory[name] = (rules, alerts)

    async def _save_history(self, runtime: SiteRuntime) -> None:
        """This tick's weights and rule values for the rollout's pictures (`/ui`): skipped
        while the store cannot write; a failure is counted (store_errors_total) and no more."""
        state = runtime.state
        ro = state.rollout
        if ro is None or not self.store.ok or not self.store.wants_history(ro.id, ro.active):
            return
        rows = [views.rule_row(r, c, s) for r, c, s in self.rules.rows(runtime.name)]
        rows += [views.hold_row(v, state.target)
                 for v in runtime.router.views(state.target).values()]
        view = views.rollout_view(state, self.clock())
        try:
            if view is not None:
                await asyncio.to_thread(self.store.save_tick, runtime.name, view,
                                        dict(state.weights), rows,
                                        fence=self.ownership.fence(runtime.name))
        except LeaseLost as exc:
            self.ownership.lost(runtime.name, str(exc))
        except StoreError:
            pass

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

    async def decide_now(self, name: str, previous_healthy: bool | None = None) -> Decision:
        """A decision on what is known now (last rule states, firing alerts), without
        measuring: the Alertmanager webhook's fast path to a rollback (and the access log's;
        it probes the previous colour first when a failback may follow)."""
        runtime = self.sites[name]
        async with runtime.lock:
            if not self.ownership.owns(name):
                raise NotOwner(name, self.ownership.owner(name))
            rules = {**self.rules.views(name, runtime.state.target), **self._known_views(runtime)}
            decision = rollout.tick(runtime.state, Tick(self.clock(), rules,
                                                        runtime.router.actual,
                                                        previous_healthy=previous_healthy))
            await self._commit(runtime, decision)
            return decision

    def _lines_arrived(self, name: str) -> None:
        """The receiver had lines for `name` (at most every 100 ms): judge its
        traffic rules on them now, one judgement per site at a time."""
        if name not in self.sites or not self.ownership.owns(name) \
                or not self.rules.fast_rules(name):
            return
        if name in self._judging:
            self._lines_again.add(name)
            return
        self._judging.add(name)
        self._spawn(self._judge_lines(name))

    async def _judge_lines(self, name: str) -> None:
        """The fast path (DESIGN.md §14): a traffic rule that fires on the lines just received
        goes to the webhook's decision path at once, without waiting for the tick."""
        try:
            while True:
                self._lines_again.discard(name)
                runtime = self.sites[name]
                state = runtime.state
                target = Target.of(name, runtime.config, state.target, state.weights)
                firing = self.rules.measure_fast(name, target, state.phase.value)
                acting = [v for v in firing if v.on_fire in ("rollback", "pause")]
                if acting and (state.active or state.can_fail_back(self.clock())):
                    healthy = (await preflight.previous_healthy(runtime.config, state,
                                                                self.clock())
                               if not state.active else None)
                    decision = await self.decide_now(name, healthy)
                    if decision.changed:
                        log.info("decided_on_lines", site=name,
                                 rules=[v.name for v in acting], phase=decision.state.phase.value)
                if name not in self._lines_again:
                    return
        except Exception:  # a bug must not stop the receiver's fast path for good
            log.exception("judge_lines_failed", site=name)
        finally:
            self._judging.discard(name)

    async def receive_alerts(self, payload: Any) -> Receipt:
        """An Alertmanager webhook; PayloadError (a 400) when it is not one."""
        owned = {name for name in self.sites if self.ownership.owns(name)}
        receipt = self.alerts.receive(payload, owned, self.loaded.config.alertmanager.match)
        for alert in receipt.firing + receipt.resolved:
            log.info("alert", site=alert.site, alert=alert.name, color=alert.color,
                     status=alert.status, summary=alert.summary)
        for status, count in receipt.counts().items():
            self.metrics.alerts_received_total.labels(status).inc(count)
        for name in sorted(receipt.sites):
            await self._save_memory(name, None, self.alerts.memory(name))
        for name in sorted({a.site for a in receipt.firing}):
            with contextlib.suppress(NotOwner):  # lost since: its new owner hears it too
                await self.decide_now(name)
        return receipt

    def owners_of(self, names: set[str]) -> dict[str, dict[str, Any]]:
        """The other daemons that own some of `names` now, by API URL: {api: owner}."""
        out: dict[str, dict[str, Any]] = {}
        for name in sorted(names):
            if name in self.sites and not self.ownership.owns(name):
                owner = self.ownership.owner(name)
                if owner is not None:
                    out[owner["api"]] = owner
        return out

    # ---------------------------------------------------------------- decisions

    async def _commit(self, runtime: SiteRuntime, decision: Decision) -> None:
        """Store first, then act: a crash between the two resumes from the stored split."""
        if decision.changed:
            try:
                await asyncio.to_thread(self.store.save, decision.state, decision.events,
                                        fence=self.ownership.fence(runtime.name))
            except LeaseLost as exc:  # another daemon took the site: act on nothing
                self.ownership.lost(runtime.name, str(exc))
                raise NotOwner(runtime.name, self.ownership.owner(runtime.name)) from None
            crashpoints.hit("after_save")
        runtime.state = decision.state
        for event in decision.events:
            log.info(event.kind, site=runtime.name, message=event.message,
                     rollout_id=event.rollout_id, phase_from=event.phase_from,
                     phase=event.phase_to, weights=event.weights, rule=event.rule,
                     value=event.value, threshold=event.threshold, actor=event.actor)
            site.count(self.metrics, runtime.name, event)
        if decision.changed:  # the same state: its gauges already say it
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

    async def _commit_or_hold(self, runtime: SiteRuntime, decision: Decision) -> bool:
        """`_commit`, or, when the store cannot write, nothing: the state stays the last
        recorded one, no traffic moves, and the machine decides again on the next tick."""
        try:
            await self._commit(runtime, decision)
        except NotOwner:
            return True  # nothing to make again here: the site is another daemon's
        except StoreError as exc:
            if runtime.name not in self._held:  # once per site and episode
                self._held.add(runtime.name)
                log.warning("decision_not_stored", site=runtime.name, error=str(exc),
                            events=[e.kind for e in decision.events])
            return False
        return True

    async def _commit_or_defer(self, runtime: SiteRuntime,
                               decide: Callable[[rollout.SiteState], Decision]) -> None:
        """A decision that will not come again by itself (a step ended, a resume): when it
        cannot be stored it is made again, on the state of then, at each tick until it is."""
        if not await self._commit_or_hold(runtime, decide(runtime.state)):
            self._deferred[runtime.name] = decide

    async def _check_store(self) -> None:
        """Tell once per episode that the store cannot write, and once that it writes again:
        the log, a notification and an audit line per site (written when it can be)."""
        store = self.store
        if not store.ok and self._store_failing is None:
            self._store_failing = since = store.since or self.clock()
            text = (f"{store.message()}; traffic changes wait until it writes again, a changed "
                    "split is still put back")
            log.error("store_failed", path=str(store.path), error=store.error)
            await self._tell_every_site("store_failed", text, since)
        elif store.ok and self._store_failing is not None:
            took = self.clock() - self._store_failing
            self._store_failing = None
            self._held.clear()
            text = (f"state store {store.path} writes again after {took:.1f}s; "
                    f"{store.flushed} audit events kept in memory were written")
            log.info("store_recovered", path=str(store.path), seconds=round(took, 3),
                     written=store.flushed)
            await self._tell_every_site("store_recovered", text)

    async def _tell_every_site(self, kind: str, text: str, at: float | None = None) -> None:
        """A notification and an audit line (`at`: its time) for each site."""
        for name, runtime in self.sites.items():
            if not self.ownership.owns(name):
                continue
            phase, weights = runtime.state.phase.value, dict(runtime.state.weights)
            self.notifier.post(name, kind, f"{name}: {text}", phase=phase, weights=weights)
            await asyncio.to_thread(self.store.record, name,
                                    Event(kind, text, phase, phase, weights, actor="daemon"), at)

    def store_problem(self) -> str | None:
        """One line for systemd's STATUS= while the store cannot write, else None."""
        if self.store.ok:
            return None
        return f"{self.store.message()} (no traffic change until it can)"

    async def _require_store(self) -> None:
        """StoreError (the API's 503) when the store cannot write even on a new try: a backup
        or restore by hand is not started without its record."""
        if not self.store.ok and not await asyncio.to_thread(self.store.flush):
            raise StoreError(self.store.message())

    async def step_done(self, name: str, done: StepDone) -> None:
        """A prepare step's task ended: the machine decides what follows."""
        runtime = self.sites.get(name)
        if runtime is None or not self.ownership.owns(name):
            return
        async with runtime.lock:
            await self._commit_or_defer(
                runtime, lambda s: rollout.step_done(s, done, self.clock()))
        await self._check_store()

    async def command(self, name: str, cmd: rollout.Command) -> rollout.SiteState:
        self.require_owner(name)
        runtime = self.sites[name]
        async with runtime.lock:
            self.require_owner(name)
            if isinstance(cmd, rollout.Start) and runtime.config.steps \
                    and self.preparer.running(name) and not runtime.state.active:
                raise DatabaseBusy(f"a backup or restore of {name} is running; start the "
                                   "rollout when it has ended (see the site's events)")
            db = runtime.config.database
            decision = rollout.command(
                runtime.state, cmd, self.clock(), runtime.config.rollout,
                prepare=runtime.config.steps, shared=db is not None and db.strategy == "shared",
                breaking=db is not None and db.breaking)
            try:
                await self._commit(runtime, decision)
            finally:
                await self._check_store()
        return runtime.state

    # ---------------------------------------------------------------- backups by hand

    async def backup(self, name: str, color: str | None, actor: str) -> dict[str, Any]:
        """Start a backup of `color`'s database (default: the live colour's)."""
        self.require_owner(name)
        await self._require_store()
        runtime = self.sites[name]
        async with runtime.lock:
            chosen = color or runtime.state.live
            backup_id = self.preparer.backup_now(name, chosen, actor)
        return {"id": backup_id, "color": chosen, "site": name}

    async def backups(self, name: str) -> list[dict[str, Any]]:
        self.require_owner(name)
        found = await asyncio.to_thread(self.preparer.list_backups, name)
        return [info.as_json() for info in found]

    async def restore(self, name: str, backup_id: str, to: str, *, force: bool,
                      actor: str) -> dict[str, Any]:
        """Start restoring a backup into `to`; refused while `to` has traffic unless force."""
        self.require_owner(name)
        await self._require_store()
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
        self._reread(name, "database settings", "database_config_kept",
                     lambda: self.preparer.configure(name, config, new.path.parent))

    def _reconfigure_smoke(self, name: str, config: Any, new: LoadedConfig) -> None:
        """Re-read the smoke credentials (the file may change without the config); one that
        cannot be read keeps the previous ones (and says so, never with its content)."""
        self._reread(name, "smoke credentials", "smoke_credentials_kept",
                     lambda: self.smoke_credentials.configure(name, config, new.path.parent))

    def _reread(self, name: str, what: str, kept: str, read: Callable[[], None]) -> None:
        try:
            read()
        except SecretError as exc:
            log.error(kept, site=name, error=str(exc))
            self.notifier.post(name, "reload_failed", f"{what} not changed: {exc}")

    def _reload_failed(self, problems: list[str]) -> None:
        for name in self.sites:
            self.notifier.post(name, "reload_failed", "config reload failed, the last good "
                               "rules stay in force: " + "; ".join(problems[:3]))

    # ---------------------------------------------------------------- views

    def require_site(self, name: str) -> None:
        """UnknownSite (the API's 404) unless the daemon runs a site of that name."""
        if name not in self.sites:
            raise UnknownSite(name)

    def snapshot(self, name: str,
                 stored: rollout.SiteState | None = None) -> views.SiteSnapshot:
        """What the API shows of the site; for a site another daemon owns, `stored` (its
        state as the owner last committed it) and no more: its owner has the rest."""
        self.require_site(name)
        r = self.sites[name]
        if not self.ownership.owns(name):
            return views.SiteSnapshot(
                r.name, stored or r.state, None, r.router.kind, None, {}, (), (), (), None,
                r.config.rollout.interval, self.clock(), store=self.store.view())
        return views.SiteSnapshot(
            r.name, r.state, r.router.actual, r.router.kind, r.router.error, r.router.health,
            tuple(self.rules.rows(name)), tuple(r.router.views(r.state.target).values()),
            tuple(self.alerts.firing.get(name, {}).values()),
            r.last_tick, r.config.rollout.interval, self.clock(), store=self.store.view(),
            nodes=r.router.node_views())

    async def site_view(self, name: str, events: int = 0) -> dict[str, Any]:
        self.require_site(name)
        stored = (await asyncio.to_thread(self.store.load, name)
                  if self.ownership.shared and not self.ownership.owns(name) else None)
        snap = self.snapshot(name, stored)
        recent = await asyncio.to_thread(self.store.events, name, events) if events else None
        view = views.site_view(snap, recent)
        view["owner"] = self.ownership.owner(name)
        return view

    async def sites_view(self) -> list[dict[str, Any]]:
        return [await self.site_view(name) for name in self.sites]

    def daemons_view(self) -> dict[str, Any]:
        """Every daemon that is up (its heartbeat is current), with how many sites it owns."""
        return {"instance": self.ownership.instance, "api": self.ownership.api,
                "store": self.loaded.config.store.kind, "daemons": self.ownership.daemons()}

    def config_view(self) -> dict[str, Any]:
        return self.reloader.view()
