"""The daemon's own metrics (docs/metrics.md: the names are a contract), read from the real
daemon process's `/metrics` through a whole story, then from a real Prometheus scraping it.

The story (run once per module, snapshots kept): start (idle) -> a canary to green, paused at
50% by a `pause` step, promoted -> a split changed behind the daemon's back (drift, put back) ->
a canary back to blue, paused at 50%, where blue starts answering 50% 5xx -> rolled back by
`error_rate` -> one resolved Alertmanager alert.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FORCED_MAINT, haproxy_servers
from tests.polling import wait
from watchdog import __version__
from watchdog.durations import parse_duration
from watchdog.lab.haproxy import runtime_api
from watchdog.lab.load import LoadClient
from watchdog.lab.prometheus import ScrapeJob
from watchdog.lab.stack import LabStack
from watchdog.lab.standin import clear_faults, set_faults

pytestmark = pytest.mark.lab

PHASES = ("idle", "preparing", "preflight", "progressing", "paused", "baking", "promoted",
          "rolling_back", "rolled_back", "aborted", "frozen")
RULES = ("error_rate", "health")
JOB = "odoo-watchdog"

T = TypeVar("T")
Labels = frozenset[tuple[str, str]]


# ------------------------------------------------------------------------------------ parsing


@dataclass
class Scrape:
    """One /metrics answer: the raw text, and every sample by (name, labels)."""

    text: str
    types: dict[str, str] = field(default_factory=dict)  # family name -> type
    values: dict[tuple[str, Labels], float] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Scrape:
        out = cls(text)
        for family in text_string_to_metric_families(text):
            out.types[family.name] = family.type
            for s in family.samples:
                out.values[(s.name, frozenset(s.labels.items()))] = s.value
        return out

    def get(self, name: str, **labels: str) -> float | None:
        return self.values.get((name, frozenset(labels.items())))

    def __call__(self, name: str, **labels: str) -> float:
        value = self.get(name, **labels)
        assert value is not None, f"no sample {name}{labels}; have: {self.names()}"
        return value

    def series(self, name: str, **labels: str) -> dict[Labels, float]:
        """Every sample of `name` whose labels include `labels`."""
        want = set(labels.items())
        return {key: v for (n, key), v in self.values.items() if n == name and want <= key}

    def names(self) -> list[str]:
        return sorted({n for n, _ in self.values})

    def declared(self, name: str, kind: str) -> bool:
        """The HELP and TYPE lines are there, whether or not there are samples."""
        return (f"# HELP {name} " in self.text and f"# TYPE {name} {kind}\n" in self.text)


def split(m: Scrape) -> dict[str, float]:
    """odoo_watchdog_traffic_weight of site odoo, by colour."""
    return {color: m("odoo_watchdog_traffic_weight", site="odoo", color=color)
            for color in ("blue", "green")}


def phases(m: Scrape) -> dict[str, float]:
    """odoo_watchdog_rollout_phase of site odoo, by phase."""
    return {dict(k)["phase"]: v
            for k, v in m.series("odoo_watchdog_rollout_phase", site="odoo").items()}


def only(phase: str) -> dict[str, float]:
    """The phase gauges when the site is in `phase`: 1 for it, 0 for every other one."""
    return {p: (1.0 if p == phase else 0.0) for p in PHASES}


def scrape(lab: LabStack) -> Scrape:
    with urllib.request.urlopen(f"{lab.api_url}/metrics", timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        return Scrape.parse(resp.read().decode())


# ------------------------------------------------------------------------------------ the story


@dataclass
class Story:
    lab: LabStack
    at_start: Scrape
    paused: Scrape
    promoted: Scrape
    rolled_back: Scrape
    after_alert: Scrape
    first_id: str = ""
    second_id: str = ""
    rolled_back_view: dict[str, Any] = field(default_factory=dict)


def phase_is(lab: LabStack, phase: str, step: int | None = None) -> dict[str, Any] | None:
    view = lab.site()
    if view["phase"] in ("promoted", "rolled_back", "aborted") and view["phase"] != phase:
        raise AssertionError(f"rollout ended {view['phase']} waiting for {phase}: "
                             f"{[e['message'] for e in view.get('events', [])[-6:]]}")
    if view["phase"] == phase and (step is None or view["rollout"]["step"] == step):
        return view
    return None


async def run_story(lab: LabStack) -> Story:
    client = lab.client()
    at_start = scrape(lab)

    async def until(probe: Callable[[], T | None], timeout: float, what: str) -> T:
        return await asyncio.to_thread(wait, probe, timeout, what)

    async with LoadClient(lab.proxy_url, "/web/login", concurrency=2, delay=0.01,
                          max_seconds=120) as load:
        await load.wait_count(10)
        # 1. green: 10% -> 50% -> pause -> promote -> 100% -> bake -> promoted.
        first = await asyncio.to_thread(client.post, "/api/v1/sites/odoo/rollouts",
                                        {"to": "green", "version": "17.0"})
        await until(lambda: phase_is(lab, "paused", 3), 20, "paused at 50%")
        paused = scrape(lab)
        await asyncio.to_thread(client.post, "/api/v1/sites/odoo/promote", {})
        await until(lambda: phase_is(lab, "promoted"), 20, "promoted")
        # A split changed behind the daemon's back: drift, put back within a tick. (First
        # blue's drain after the promote ends in maintenance, or it would undo the change.)
        assert lab.haproxy is not None
        await until(lambda: haproxy_servers(lab)["blue"]["admin"] & FORCED_MAINT, 10,
                    "blue in maintenance")
        # (blue was put in maintenance when it went to 0: bring it back with a weight)
        answer = runtime_api(lab.haproxy.admin_socket,
                             "set server odoo/odoo-blue weight 20; "
                             "set server odoo/odoo-blue state ready; "
                             "set server odoo/odoo-green weight 80")
        assert answer.strip() == "", answer
        try:
            await until(lambda: scrape(lab).get("odoo_watchdog_router_drift_total",
                                                site="odoo"), 5, "the drift counted")
        except AssertionError as exc:
            view = lab.site()
            raise AssertionError(
                f"{exc}: HAProxy has\n"
                f"{runtime_api(lab.haproxy.admin_socket, 'show servers state odoo')}\n"
                f"the daemon: {view['phase']} {view['weights']} actual "
                f"{view['actual_weights']} last tick {time.time() - view['last_tick']:.1f}s "
                f"ago, router {view['router']}") from None
        await until(lambda: lab.site()["actual_weights"] == {"blue": 0, "green": 100}, 5,
                    "the split put back")
        promoted = scrape(lab)

        # 2. back to blue: paused at 50%, blue fails half its requests -> rolled back.
        second = await asyncio.to_thread(client.post, "/api/v1/sites/odoo/rollouts",
                                         {"to": "blue", "version": "16.0"})
        await until(lambda: phase_is(lab, "paused", 3), 20, "paused at 50% on blue")
        await asyncio.to_thread(set_faults, lab.blue.url, error_rate=0.5)
        try:
            view = await until(lambda: phase_is(lab, "rolled_back"), 20, "rolled back")
        finally:
            await asyncio.to_thread(clear_faults, lab.blue.url)
    # The tick that finished the rollback still measured blue (the candidate until then);
    # the next one measures the live colour, green, and blue's series go.
    await asyncio.sleep(parse_duration(lab.interval) + 1.0)
    rolled_back = scrape(lab)

    # 3. One Alertmanager alert (resolved: it changes nothing else).
    await asyncio.to_thread(client.post, "/api/v1/alertmanager", {
        "version": "4", "status": "resolved", "receiver": "odoo-watchdog", "alerts": [{
            "status": "resolved", "fingerprint": "feedc0de",
            "labels": {"alertname": "OdooDown", "site": "odoo", "color": "blue",
                       "severity": "critical"},
            "annotations": {"summary": "lab"}, "startsAt": "2024-01-01T00:00:00Z"}]})
    after_alert = scrape(lab)
    return Story(lab, at_start, paused, promoted, rolled_back, after_alert, first["rollout"]["id"],
                 second["rollout"]["id"], view)


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Story]:
    lab = LabStack(tmp_path_factory.mktemp("metrics"),
                   steps=[{"weight": 10, "hold": "1s"}, {"weight": 50, "hold": "1s"}, "pause",
                          {"weight": 100}],
                   bake="1s", error_for="1s", health_for="60s", window="5s")
    try:
        lab.start(daemon=False)
        # The lab's Prometheus scrapes the daemon too, with a job label of our own.
        assert lab.prometheus is not None
        lab.prometheus.jobs.append(ScrapeJob(JOB, [f"127.0.0.1:{lab.api_port}"],
                                             labels={"env": "lab"}))
        lab.prometheus.reload()
        lab.start_daemon()
        # Scraped before the story begins, so that every phase of it is in the TSDB.
        lab.prometheus.wait_scraped(JOB)
        yield asyncio.run(run_story(lab))
    finally:
        lab.stop()


# ------------------------------------------------------------------------------------ at start


def test_at_start_build_info_weights_phase_and_config(story: Story) -> None:
    m = story.at_start
    assert m.types["odoo_watchdog_build_info"] == "gauge"
    assert m.series("odoo_watchdog_build_info") == {frozenset({("version", __version__)}): 1.0}
    # The split is there from the start, not only during a rollout.
    assert m.types["odoo_watchdog_traffic_weight"] == "gauge"
    assert split(m) == {"blue": 100, "green": 0}
    assert phases(m) == only("idle")
    assert m("odoo_watchdog_rollout_step", site="odoo") == 0
    assert m.types["odoo_watchdog_config_last_reload_successful"] == "gauge"
    assert m("odoo_watchdog_config_last_reload_successful") == 1
    stamp = m("odoo_watchdog_config_last_reload_success_timestamp_seconds")
    assert time.time() - 120 < stamp <= time.time()


def test_every_metric_of_the_contract_is_declared_with_its_type_from_the_start(
    story: Story,
) -> None:
    contract = {
        "odoo_watchdog_build_info": "gauge",
        "odoo_watchdog_traffic_weight": "gauge",
        "odoo_watchdog_rollout_phase": "gauge",
        "odoo_watchdog_rollout_step": "gauge",
        "odoo_watchdog_rollouts_total": "counter",
        "odoo_watchdog_rollbacks_total": "counter",
        "odoo_watchdog_rule_value": "gauge",
        "odoo_watchdog_rule_state": "gauge",
        "odoo_watchdog_rule_evaluations_total": "counter",
        "odoo_watchdog_rule_evaluation_seconds": "histogram",
        "odoo_watchdog_router_operations_total": "counter",
        "odoo_watchdog_router_operation_seconds": "histogram",
        "odoo_watchdog_router_drift_total": "counter",
        "odoo_watchdog_alerts_received_total": "counter",
        "odoo_watchdog_config_last_reload_successful": "gauge",
        "odoo_watchdog_config_last_reload_success_timestamp_seconds": "gauge",
        "odoo_watchdog_http_requests_total": "counter",
        "odoo_watchdog_http_request_duration_seconds": "histogram",
    }
    for scrape_ in (story.at_start, story.after_alert):
        missing = [f"{n} {k}" for n, k in contract.items() if not scrape_.declared(n, k)]
        assert missing == [], missing


def test_http_metrics_are_declared_for_the_access_log_receiver(story: Story) -> None:
    """Filled by the access-log receiver (a later issue); declared now, with no samples yet
    (no access_log in the lab's config)."""
    m = story.after_alert
    assert m.declared("odoo_watchdog_http_requests_total", "counter")
    assert m.declared("odoo_watchdog_http_request_duration_seconds", "histogram")
    assert m.series("odoo_watchdog_http_requests_total") == {}


# ------------------------------------------------------------------------------------ paused


def test_mid_rollout_paused_at_50_percent(story: Story) -> None:
    m = story.paused
    assert split(m) == {"blue": 50, "green": 50}
    assert phases(m) == only("paused")
    assert m("odoo_watchdog_rollout_step", site="odoo") == 3  # 1-based: the pause step
    # The candidate is measured during the rollout.
    for rule in RULES:
        assert m("odoo_watchdog_rule_state", site="odoo", rule=rule, color="green") == 0
    assert m("odoo_watchdog_rule_value", site="odoo", rule="health", color="green") == 1
    # Known from the start, at 0: increase() then sees the first rollout too.
    assert m.series("odoo_watchdog_rollouts_total") == {
        frozenset({("site", "odoo"), ("outcome", o)}): 0.0
        for o in ("promoted", "rolled_back", "aborted")}


# ------------------------------------------------------------------------------------ promoted


def test_after_the_promote(story: Story) -> None:
    m = story.promoted
    assert split(m) == {"blue": 0, "green": 100}
    assert phases(m) == only("promoted")
    assert m("odoo_watchdog_rollout_step", site="odoo") == 0  # no active rollout
    assert m.types["odoo_watchdog_rollouts"] == "counter"
    assert m.series("odoo_watchdog_rollouts_total") == {
        frozenset({("site", "odoo"), ("outcome", "promoted")}): 1.0,
        frozenset({("site", "odoo"), ("outcome", "rolled_back")}): 0.0,
        frozenset({("site", "odoo"), ("outcome", "aborted")}): 0.0}
    assert m.series("odoo_watchdog_rollbacks_total") == {}
    assert m("odoo_watchdog_router_drift_total", site="odoo") == 1


def test_rule_metrics_after_the_promote(story: Story) -> None:
    m = story.promoted
    # Green is live now: its rules are measured, and fine.
    for rule in RULES:
        assert m("odoo_watchdog_rule_state", site="odoo", rule=rule, color="green") == 0
        assert m("odoo_watchdog_rule_evaluations_total", site="odoo", rule=rule,
                 result="ok") >= 3
        assert m.get("odoo_watchdog_rule_evaluations_total", site="odoo", rule=rule,
                     result="error") is None
    assert m("odoo_watchdog_rule_value", site="odoo", rule="health", color="green") == 1
    assert m("odoo_watchdog_rule_value", site="odoo", rule="error_rate", color="green") == 0
    # Before green had traffic its 5xx share was 0/0: no data (held).
    assert m("odoo_watchdog_rule_evaluations_total", site="odoo", rule="error_rate",
             result="no_data") >= 1
    assert m.types["odoo_watchdog_rule_evaluation_seconds"] == "histogram"
    for source in ("prometheus", "http"):
        count = m("odoo_watchdog_rule_evaluation_seconds_count", source=source)
        assert count >= 3
        assert m("odoo_watchdog_rule_evaluation_seconds_bucket", source=source,
                 le="+Inf") == count
        assert 0 < m("odoo_watchdog_rule_evaluation_seconds_sum", source=source) < count * 5
        evaluated = sum(m.series("odoo_watchdog_rule_evaluations_total",
                                 rule="error_rate" if source == "prometheus" else "health"
                                 ).values())
        assert count == evaluated


def test_router_metrics_after_the_promote(story: Story) -> None:
    m = story.promoted
    ok = m("odoo_watchdog_router_operations_total", site="odoo", router="haproxy", result="ok")
    assert ok >= 10  # a read every tick, a write every step
    assert m.get("odoo_watchdog_router_operations_total", site="odoo", router="haproxy",
                 result="error") is None
    count = m("odoo_watchdog_router_operation_seconds_count", router="haproxy")
    assert count == ok
    assert m("odoo_watchdog_router_operation_seconds_bucket", router="haproxy",
             le="+Inf") == count
    # The runtime API on loopback answers in milliseconds.
    assert m("odoo_watchdog_router_operation_seconds_bucket", router="haproxy",
             le="0.25") >= 0.9 * count


# ------------------------------------------------------------------------------------ rolled back


def test_after_the_rollback(story: Story) -> None:
    m = story.rolled_back
    assert story.rolled_back_view["live"] == "green"
    assert split(m) == {"blue": 0, "green": 100}
    assert phases(m) == only("rolled_back")
    assert m("odoo_watchdog_rollout_step", site="odoo") == 0
    assert {dict(k)["outcome"]: v for k, v in
            m.series("odoo_watchdog_rollouts_total", site="odoo").items()} == {
        "promoted": 1.0, "rolled_back": 1.0, "aborted": 0.0}
    assert m.series("odoo_watchdog_rollbacks_total") == {
        frozenset({("site", "odoo"), ("rule", "error_rate")}): 1.0}
    # Blue was measured during the rollout and breached: its error_rate went over 5%.
    assert m("odoo_watchdog_rule_evaluations_total", site="odoo", rule="error_rate",
             result="breach") >= 1
    assert m("odoo_watchdog_rule_evaluations_total", site="odoo", rule="error_rate",
             result="ok") > story.promoted("odoo_watchdog_rule_evaluations_total", site="odoo",
                                           rule="error_rate", result="ok")
    assert m("odoo_watchdog_router_drift_total", site="odoo") == 1  # no drift of its own
    # Green is measured again, and fine.
    assert m("odoo_watchdog_rule_state", site="odoo", rule="error_rate", color="green") == 0


def test_the_rollback_event_matches_the_metrics(story: Story) -> None:
    view = story.rolled_back_view
    rolling = [e for e in view["events"]
               if e["kind"] == "rolling_back" and e["rollout_id"] == story.second_id]
    assert len(rolling) == 1 and rolling[0]["rule"] == "error_rate"
    assert rolling[0]["value"] > 0.05


def test_rule_series_of_the_colour_no_longer_measured_are_not_left_firing(story: Story) -> None:
    m = story.rolled_back
    stale = {k: v for k, v in m.series("odoo_watchdog_rule_state", site="odoo").items()
             if ("color", "blue") in k}
    assert stale == {}, {tuple(sorted(dict(k).items())): v for k, v in stale.items()}
    assert m.series("odoo_watchdog_rule_value", site="odoo", color="blue") == {}


def test_alerts_received_total_is_absent_until_an_alert_comes(story: Story) -> None:
    """alerts_received_total has only its HELP/TYPE lines until the first alert: the counter
    is labelled by status, and no status is known before one arrives."""
    assert story.at_start.series("odoo_watchdog_alerts_received_total") == {}
    assert story.rolled_back.series("odoo_watchdog_alerts_received_total") == {}
    assert story.after_alert.series("odoo_watchdog_alerts_received_total") == {
        frozenset({("status", "resolved")}): 1.0}


def test_counters_only_go_up_through_the_story(story: Story) -> None:
    snapshots = [story.at_start, story.paused, story.promoted, story.rolled_back,
                 story.after_alert]
    for before, after in itertools.pairwise(snapshots):
        counters = {key: value for key, value in before.values.items()
                    if key[0].endswith(("_total", "_count", "_bucket", "_sum"))}
        assert counters, "no counter in a scrape: the loop below would check nothing"
        for (name, labels), value in counters.items():
            later = after.values.get((name, labels))
            assert later is not None and later >= value, (name, dict(labels), value, later)
    for scrape_ in snapshots:
        assert scrape_.values
        for (name, labels), value in scrape_.values.items():
            if name == "odoo_watchdog_rule_value":
                continue  # NaN when a rule has no data
            assert not math.isnan(value), (name, dict(labels))


# ------------------------------------------------------------------------------------ PromQL


def promql(story: Story, query: str, want: Callable[[list[dict[str, Any]]], bool],
           timeout: float = 15) -> list[dict[str, Any]]:
    assert story.lab.prometheus is not None
    return story.lab.prometheus.wait_for(query, want, timeout=timeout)


def test_prometheus_scrapes_them_and_promql_returns_them(story: Story) -> None:
    # The rolled-back phase, as the dashboards ask for it.
    result = promql(story, 'odoo_watchdog_rollout_phase{phase="rolled_back"} == 1',
                    lambda r: len(r) == 1)
    labels = result[0]["metric"]
    assert labels["site"] == "odoo" and labels["job"] == JOB and labels["env"] == "lab"
    assert labels["instance"] == f"127.0.0.1:{story.lab.api_port}"

    result = promql(story, 'odoo_watchdog_traffic_weight{site="odoo",color="blue"}',
                    lambda r: len(r) == 1)
    assert float(result[0]["value"][1]) == 0
    result = promql(story, 'odoo_watchdog_traffic_weight{site="odoo",color="green"}',
                    lambda r: len(r) == 1)
    assert float(result[0]["value"][1]) == 100

    result = promql(story, 'odoo_watchdog_rollbacks_total{rule="error_rate"}',
                    lambda r: len(r) == 1)
    assert float(result[0]["value"][1]) == 1 and result[0]["metric"]["site"] == "odoo"
    result = promql(story, 'sum by (outcome) (odoo_watchdog_rollouts_total{job="odoo-watchdog"})',
                    lambda r: len(r) == 3)
    assert {r["metric"]["outcome"]: float(r["value"][1]) for r in result} == {
        "promoted": 1, "rolled_back": 1, "aborted": 0}

    # The phases went by while Prometheus scraped every second: promoted was seen, then
    # the second rollout, then rolled_back.
    result = promql(story, 'max_over_time(odoo_watchdog_rollout_phase{phase="promoted"}[5m])',
                    lambda r: len(r) == 1)
    assert float(result[0]["value"][1]) == 1
    result = promql(story, 'max_over_time(odoo_watchdog_traffic_weight{color="blue"}[5m])',
                    lambda r: len(r) == 1)
    assert float(result[0]["value"][1]) == 100

    result = promql(story, f'odoo_watchdog_build_info{{version="{__version__}"}}',
                    lambda r: len(r) == 1)
    assert float(result[0]["value"][1]) == 1
    result = promql(story, "odoo_watchdog_config_last_reload_successful", lambda r: len(r) == 1)
    assert float(result[0]["value"][1]) == 1
    result = promql(story, "time() - odoo_watchdog_config_last_reload_success_timestamp_seconds",
                    lambda r: len(r) == 1)
    assert 0 <= float(result[0]["value"][1]) < 600

    # Histograms work with the functions dashboards use.
    result = promql(story, "histogram_quantile(0.95, sum by (le, source) "
                           "(odoo_watchdog_rule_evaluation_seconds_bucket))",
                    lambda r: len(r) == 2)
    for r in result:
        assert 0 < float(r["value"][1]) <= 30, r
    # (promql() fails unless the predicate holds before its timeout.)
    promql(story, 'odoo_watchdog_router_operation_seconds_count{router="haproxy"} > 0',
           lambda r: len(r) == 1)
    result = promql(story, "odoo_watchdog_router_drift_total", lambda r: len(r) == 1)
    assert float(result[0]["value"][1]) == 1
    promql(story, 'odoo_watchdog_rule_evaluations_total{rule="error_rate",result="breach"} > 0',
           lambda r: len(r) == 1)
    # Counters survive as counters: a rate over them is not negative.
    result = promql(story, 'rate(odoo_watchdog_router_operations_total{result="ok"}[1m])',
                    lambda r: len(r) == 1)
    assert float(result[0]["value"][1]) > 0
    json.dumps(result)  # plain data
