"""The rules in force, where each stands, and their series: one owner for all three.

Shaped like Prometheus' rule manager (`rules/manager.go`): `update` swaps in a new rule set
between ticks and copies the state of every rule that survives it (a pending rule keeps its
`since`, so a reload never restarts a `for` clock); the series of a removed rule are deleted, so
neither `/metrics` nor the API shows a rule that no longer counts. A failed load never gets
here: the daemon keeps the previous set.

The state of each rule is also what `memory()` hands the store and `restore()` takes back after
a restart, as Prometheus restores `ALERTS_FOR_STATE`: a rule pending for 50 s of its `for: 60s`
fires 10 s after a restart, not 60 s.

`restart_needed` is the pure half of a reload: which changes of a new config the daemon cannot
take while running (sites, routers, listeners, the store) and reports instead of applying.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import structlog

from watchdog.config import COLORS, DaemonConfig, LoadedConfig, TrafficRule
from watchdog.measurement import Comparison, Measurement
from watchdog.metrics import Metrics
from watchdog.rollout import RuleView
from watchdog.rules import Outcome, RuleStatus, State, evaluate
from watchdog.sources import Source, Target, measure_all
from watchdog.sources.traffic import TrafficSource

log = structlog.get_logger("odoo_watchdog")

Key = tuple[str, str]  # (rule name, colour)
FAST_SHARE = 20.0  # measure_fast spends at most 1/20 of a core on one rule
Post = Callable[..., None]  # notify.Notifier.post


class Rule(Protocol):
    """What the manager needs of a rule model (config's rule models satisfy it)."""

    @property
    def name(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def on_fire(self) -> str: ...
    @property
    def for_(self) -> float: ...

    def threshold_text(self) -> str: ...


def rule_view(rule: Rule, status: RuleStatus) -> RuleView:
    """What the rollout machine sees of a rule: the one place such a view is built."""
    return RuleView(rule.name, status.state, str(rule.on_fire), status.value,
                    rule.threshold_text(), status.detail)


def restart_needed(old: DaemonConfig, new: DaemonConfig) -> list[str]:
    """The parts of `new` a running daemon does not take, one warning each."""
    parts = (
        ("sites (names, routers or colours)",
         {n: (s.router, s.colors) for n, s in old.sites.items()},
         {n: (s.router, s.colors) for n, s in new.sites.items()}),
        ("api", old.api, new.api),
        ("access_log", old.access_log, new.access_log),
        ("prometheus", old.prometheus, new.prometheus),
        ("state_dir", old.state_dir, new.state_dir),
        ("store", old.store, new.store),
        ("notify", old.notify, new.notify),
    )
    return [f"{part} changed: restart the daemon to apply it"
            for part, before, after in parts if before != after]


def status_to_json(status: RuleStatus) -> dict[str, Any]:
    value = status.value if status.value is not None and math.isfinite(status.value) else None
    out: dict[str, Any] = {
        "state": status.state.label, "since": status.since, "changed_at": status.changed_at,
        "outcome": status.outcome.value if status.outcome else None, "value": value,
        "detail": status.detail, "evaluated_at": status.evaluated_at}
    if status.comparison is not None:
        out["comparison"] = status.comparison.as_json()
    return out


def status_from_json(data: dict[str, Any]) -> RuleStatus:
    outcome = data.get("outcome")
    compared = data.get("comparison")
    return RuleStatus(State[str(data["state"]).upper()], data.get("since"),
                      data.get("changed_at"), Outcome(outcome) if outcome else None,
                      data.get("value"), str(data.get("detail", "")), data.get("evaluated_at"),
                      Comparison.from_json(compared) if isinstance(compared, dict) else None)


class RuleManager:
    def __init__(self, loaded: LoadedConfig, sources: dict[str, Source], metrics: Metrics,
                 post: Post, clock: Callable[[], float] = time.time) -> None:
        self.loaded = loaded
        self.sources = sources
        self.metrics = metrics
        self.post = post
        self.clock = clock
        self.statuses: dict[str, dict[Key, RuleStatus]] = {}
        self._stored: dict[str, dict[Key, tuple[State, float | None]]] = {}
        # (site, rule): when measure_fast measures it again for the same target
        self._fast_next: dict[tuple[str, str], tuple[float, Target | None]] = {}

    def rules_for(self, site: str) -> list[Any]:
        return list(self.loaded.rules_for(site))

    def _in_force(self, site: str) -> dict[str, Rule]:
        return {r.name: r for r in self.rules_for(site)}

    async def close(self) -> None:
        for source in self.sources.values():
            await source.close()

    # ------------------------------------------------------------ measuring

    async def measure(self, site: str, target: Target, phase: str) -> dict[str, RuleView]:
        """Measure and judge every rule of `site` for the target's colour."""
        color = target.color
        rules = self.rules_for(site)
        started = time.monotonic()
        measurements = await measure_all(self.sources, rules, target)
        now = self.clock()
        current = {r.name for r in self.rules_for(site)}  # a reload may have removed one
        out: dict[str, RuleView] = {}
        for rule, m in zip(rules, measurements, strict=True):
            if rule.name in current:
                after = self._judged(site, rule, color, m, now, phase, started)
                out[rule.name] = rule_view(rule, after)
        statuses = self.statuses.setdefault(site, {})
        # The other colour is not measured now: forget its states and series, so neither the
        # API nor the metrics keep showing a colour's last state as current.
        for key in [k for k in statuses if k[1] != color]:
            self.forget(site, *key)
        return out

    def fast_rules(self, site: str) -> list[TrafficRule]:
        """The site's rules judged as access-log lines arrive: every `source: traffic` rule
        (a `for: 0s` one fires there at once; one with a `for` fires there once its breach
        has lasted that long, not at the next tick after)."""
        return [r for r in self.rules_for(site) if isinstance(r, TrafficRule)]

    def measure_fast(self, site: str, target: Target, phase: str) -> list[RuleView]:
        """Measure and judge the site's traffic rules now, in-process (no await: no tick sees
        it half done); the views of those that fire. A rule whose measurement took t seconds
        is measured again here after `FAST_SHARE` x t at the soonest, so a judge on large
        samples costs at most 1 / FAST_SHARE of a core (the tick still measures it)."""
        source = self.sources.get("traffic")
        rules = self.fast_rules(site)
        if not isinstance(source, TrafficSource) or not rules:
            return []
        started = time.monotonic()
        now = self.clock()
        firing = []
        for rule in rules:
            key = (site, rule.name)
            began = time.monotonic()
            soonest, same = self._fast_next.get(key, (0.0, None))
            if began < soonest and same == target:  # a new target (split): measured at once
                continue
            measured = source.measure_now(rule, target)
            self._fast_next[key] = (began + FAST_SHARE * (time.monotonic() - began), target)
            after = self._judged(site, rule, target.color, measured, now, phase, started)
            if after.state is State.FIRING:
                firing.append(rule_view(rule, after))
        return firing

    def _judged(self, site: str, rule: Any, color: str, m: Measurement, now: float,
                phase: str, started: float) -> RuleStatus:
        """Judge one measurement, keep the new state, export it, log a change."""
        statuses = self.statuses.setdefault(site, {})
        before = statuses.get((rule.name, color), RuleStatus())
        after = evaluate(rule, before, m, now)
        statuses[(rule.name, color)] = after
        self._series(site, rule, color, after, m, time.monotonic() - started)
        if after.state is not before.state:
            self._changed(site, rule, color, before, after, m, phase)
        return after

    def _changed(self, site: str, rule: Rule, color: str, before: RuleStatus,
                 after: RuleStatus, m: Measurement, phase: str) -> None:
        log.info("rule_state", site=site, rule=rule.name, color=color,
                 state_from=before.state.label, state=after.state.label, value=after.value,
                 threshold=rule.threshold_text(), detail=m.detail, phase=phase)
        if after.state is State.FIRING and rule.on_fire == "notify":
            self.post(site, "rule", f"{site}: rule {rule.name} fired on {color} (value "
                      f"{after.value}, threshold {rule.threshold_text()}; {m.detail})",
                      rule=rule.name)

    def _series(self, site: str, rule: Rule, color: str, status: RuleStatus, m: Measurement,
                seconds: float) -> None:
        outcome = status.outcome.value if status.outcome else "error"
        self.metrics.rule_evaluations_total.labels(site, rule.name, outcome).inc()
        self.metrics.rule_evaluation_seconds.labels(rule.source).observe(
            max(0.0, m.finished - m.started) if m.finished else seconds)
        self.metrics.rule_state.labels(site, rule.name, color).set(int(status.state))
        value = status.value if status.value is not None else math.nan
        self.metrics.rule_value.labels(site, rule.name, color).set(value)
        if rule.source != "traffic":
            return
        # Only what this measurement read: a skipped rule, or one colour no longer read,
        # keeps no sample size and no p-value from an earlier comparison.
        compared = m.comparison
        samples = dict(compared.samples) if compared is not None else {}
        for whose in COLORS:
            if whose in samples:
                self.metrics.rule_samples.labels(site, rule.name, whose).set(samples[whose])
            else:
                with contextlib.suppress(KeyError):
                    self.metrics.rule_samples.remove(site, rule.name, whose)
        if compared is not None and compared.p_value is not None:
            self.metrics.rule_p_value.labels(site, rule.name, color).set(compared.p_value)
        else:
            with contextlib.suppress(KeyError):
                self.metrics.rule_p_value.remove(site, rule.name, color)

    def views(self, site: str, color: str) -> dict[str, RuleView]:
        """The last known view of each rule for `color`, without measuring."""
        rules = self._in_force(site)
        return {name: rule_view(rules[name], status)
                for (name, c), status in self.statuses.get(site, {}).items()
                if c == color and name in rules}

    def rows(self, site: str) -> list[tuple[Rule, str, RuleStatus]]:
        """(rule, colour, status) of each rule in force that has a state, sorted."""
        rules = self._in_force(site)
        return [(rules[name], color, status)
                for (name, color), status in sorted(self.statuses.get(site, {}).items())
                if name in rules]

    # ------------------------------------------------------------ reload

    def update(self, new: LoadedConfig, sites: Iterable[str]) -> None:
        """Swap in `new`; surviving rules keep their state, removed ones lose it and their
        series, for every colour."""
        for site in sites:
            names = {r.name for r in new.rules_for(site)}
            gone = {r.name for r in self.loaded.rules_for(site)} - names
            gone |= {k[0] for k in self.statuses.get(site, {}) if k[0] not in names}
            for rule_name in gone:
                self._fast_next.pop((site, rule_name), None)
                for color in COLORS:
                    self.forget(site, rule_name, color, gone=True)
                for outcome in Outcome:  # its counts too: a renamed rule adds none each reload
                    with contextlib.suppress(KeyError):
                        self.metrics.rule_evaluations_total.remove(site, rule_name,
                                                                   outcome.value)
        self.loaded = new

    def forget(self, site: str, rule: str, color: str, *, gone: bool = False) -> None:
        """Drop the rule's state and series for `color`. Its sample sizes are labelled by
        whose requests they count (the target's peer too), so they go only with the rule
        (`gone`); otherwise the next measurement sets or removes them (`_series`)."""
        self.statuses.get(site, {}).pop((rule, color), None)
        gauges = [self.metrics.rule_state, self.metrics.rule_value, self.metrics.rule_p_value]
        for gauge in gauges + ([self.metrics.rule_samples] if gone else []):
            with contextlib.suppress(KeyError):
                gauge.remove(site, rule, color)

    # ------------------------------------------------------------ restart

    def memory(self, site: str) -> list[dict[str, Any]] | None:
        """The site's rule states to store, or None when nothing a restart needs has changed
        since the last call (a value moving within a state is not worth an fsync)."""
        statuses = self.statuses.get(site, {})
        essential = {k: (s.state, s.since) for k, s in statuses.items()}
        if self._stored.get(site) == essential:
            return None
        self._stored[site] = essential
        return [{"rule": rule, "color": color, **status_to_json(s)}
                for (rule, color), s in sorted(statuses.items())]

    def restore(self, site: str, stored: list[dict[str, Any]]) -> int:
        """Take back stored states of rules still in force; how many were restored."""
        names = {r.name for r in self.rules_for(site)}
        statuses = self.statuses.setdefault(site, {})
        for item in stored:
            if item.get("rule") in names and item.get("color") in COLORS:
                statuses[(item["rule"], item["color"])] = status_from_json(item)
        self._stored[site] = {k: (s.state, s.since) for k, s in statuses.items()}
        return len(statuses)
