"""The whole alert path with real programs: Prometheus 2.42 → Alertmanager 0.25 → the daemon.

One `LabStack` for the module (two Odoo stand-ins behind HAProxy 2.6, the daemon as a real
process) whose own rules cannot fire during a test (`for: 1h`, a one-hour hold at 50%, so a
canary sits at 50% until something else acts). A second Prometheus scrapes HAProxy's exporter
every second and evaluates one alerting rule on the candidate's 5xx share; it sends to a real
Alertmanager whose webhook is the daemon's `/api/v1/alertmanager`, with the daemon's bearer
token from a file (`http_config.authorization.credentials_file`).

The split is read from HAProxy's runtime API itself, never from the daemon.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FORCED_MAINT, daemon_metrics, haproxy_servers, post, site
from tests.polling import until
from watchdog.lab.alertmanager import AlertmanagerLab
from watchdog.lab.load import LoadClient
from watchdog.lab.prometheus import PrometheusLab, ScrapeJob
from watchdog.lab.stack import LabStack
from watchdog.lab.standin import clear_faults, set_faults

pytestmark = pytest.mark.lab

STEPS: list[Any] = [{"weight": 50, "hold": "1h"}, {"weight": 100}]
BLUE = {"blue": 100, "green": 0}
HALF = {"blue": 50, "green": 50}
ACTIVE = {"preflight", "progressing", "paused", "baking", "rolling_back"}
ALERT = "OdooCandidate5xx"
RULE = f"alert:{ALERT}"
GREEN = 'proxy="odoo",server="odoo-green"'
GREEN_SHARE = (f'sum(rate(haproxy_server_http_responses_total{{{GREEN},code="5xx"}}[5s]))\n'
               f'/ sum(rate(haproxy_server_http_responses_total{{{GREEN}}}[5s]))')
ALERT_RULES = {"groups": [{"name": "odoo-canary", "rules": [{
    "alert": ALERT,
    "expr": f"{GREEN_SHARE}\n> 0.05",
    "for": "0s",
    "labels": {"severity": "critical", "site": "odoo", "color": "green"},
    "annotations": {"summary": "5xx share of green is {{ $value | humanizePercentage }}"},
}]}]}


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabStack]:
    stack = LabStack(tmp_path_factory.mktemp("am-lab"), steps=STEPS, interval="1s", bake="1h",
                     keep_previous="1h", error_for="1h", health_for="1h")
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


# ---------------------------------------------------------------- HAProxy, directly


def haproxy_weights(lab: LabStack) -> dict[str, int]:
    """What new requests see: a server in maintenance takes none, whatever its weight."""
    return {color: 0 if s["admin"] & FORCED_MAINT else s["weight"]
            for color, s in haproxy_servers(lab).items()}


# ---------------------------------------------------------------- the daemon


def fetch(url: str, data: bytes | None = None) -> str:
    """GET (or POST `data`) on one of the lab's loopback URLs."""
    req = urllib.request.Request(url, data=data,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return str(resp.read().decode())


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [(s.labels, s.value) for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == name]


def alerts_received(lab: LabStack) -> dict[str, float]:
    """odoo_watchdog_alerts_received_total by status."""
    return {labels["status"]: value for labels, value in
            samples(daemon_metrics(lab), "odoo_watchdog_alerts_received_total")}


def describe(view: dict[str, Any]) -> str:
    events = "\n".join(f"  {e['kind']}: {e['message']}" for e in view.get("events", [])[-8:])
    return f"phase {view['phase']}, weights {view['weights']}, alerts {view['alerts']}\n{events}"


async def canary_at_half(lab: LabStack) -> dict[str, Any]:
    """No active rollout and blue live, then a rollout to green, held at 50% in HAProxy."""
    view = await site(lab)
    if view["phase"] in ACTIVE:
        view = await post(lab, "abort", {"reason": "test set-up"})
    if view["live"] != "blue" or view["weights"] != BLUE:
        view = await post(lab, "switch", {"to": "blue"})
    await post(lab, "rollouts", {"to": "green", "version": "17.0"})

    async def at_half() -> dict[str, Any] | None:
        got = await site(lab)
        assert got["phase"] in ("preflight", "progressing"), describe(got)
        return got if got["phase"] == "progressing" and haproxy_weights(lab) == HALF else None

    view = await until(at_half, 20, "at 50%")
    assert view["weights"] == HALF and view["alerts"] == []
    return view


# ---------------------------------------------------------------- tests


async def test_alertmanager_with_wrong_token_gets_401_and_nothing_changes(
        lab: LabStack, tmp_path: Path) -> None:
    """Alertmanager holding a wrong token file delivers a firing critical alert for the
    candidate: the daemon refuses it (401, which Alertmanager reports as a failed, not retried,
    notification) and keeps its 50% split."""
    before = await canary_at_half(lab)
    counted = alerts_received(lab)
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-the-daemon-token\n")
    am = AlertmanagerLab(tmp_path / "alertmanager", f"{lab.api_url}/api/v1/alertmanager",
                         token_file=wrong)
    am.start()
    try:
        now = dt.datetime.now(dt.UTC)
        fetch(f"{am.url}/api/v2/alerts", json.dumps([{
            "labels": {"alertname": ALERT, "severity": "critical", "site": "odoo",
                       "color": "green"},
            "annotations": {"summary": "pushed by the test"},
            "startsAt": now.isoformat(), "endsAt": (now + dt.timedelta(minutes=10)).isoformat(),
        }]).encode())

        async def failed() -> float | None:
            text = await asyncio.to_thread(fetch, f"{am.url}/metrics")
            value = sum(v for labels, v in samples(text, "alertmanager_notifications_failed_total")
                        if labels.get("integration") == "webhook")
            return value if value >= 1 else None

        await until(failed, 20, "a failed webhook notification in Alertmanager")
        log = (tmp_path / "alertmanager" / "alertmanager.log").read_text()
        assert "401" in log, log[-2000:]
        view = await site(lab)
        assert view["phase"] == "progressing" and view["weights"] == HALF, describe(view)
        assert view["rollout"]["id"] == before["rollout"]["id"]
        assert view["alerts"] == []
        assert [e for e in view["events"] if e["kind"] == "rolling_back"] == [
            e for e in before["events"] if e["kind"] == "rolling_back"]
        assert haproxy_weights(lab) == HALF
        assert alerts_received(lab) == counted
    finally:
        am.stop()


async def test_prometheus_alert_rolls_back_through_alertmanager(
        lab: LabStack, tmp_path: Path) -> None:
    """5xx from the canary → Prometheus alert → Alertmanager → webhook → rollback; then the
    resolved notification clears the alert in the daemon."""
    await canary_at_half(lab)
    assert lab.haproxy is not None
    rules = tmp_path / "alerts.yml"
    rules.write_text(json.dumps(ALERT_RULES))  # JSON is YAML
    am = AlertmanagerLab(tmp_path / "alertmanager", f"{lab.api_url}/api/v1/alertmanager",
                         token_file=lab.token_path)
    prom = PrometheusLab(tmp_path / "prometheus", scrape_interval="1s",
                         jobs=[ScrapeJob("haproxy", [f"127.0.0.1:{lab.haproxy.port}"])],
                         rule_files=[rules], alertmanagers=[am.target])
    green = lab.standin("green")
    try:
        am.start()
        prom.start()
        async with LoadClient(lab.proxy_url, "/web/login", concurrency=4, delay=0.01,
                              max_seconds=90) as load:
            # The expression has data (green answers at 50%) and does not fire yet.
            await asyncio.to_thread(prom.wait_for, GREEN_SHARE, lambda r: len(r) == 1, 20)
            assert await asyncio.to_thread(prom.query, f'ALERTS{{alertname="{ALERT}"}}') == []
            assert load.window(0).share("green") > 20
            counted = alerts_received(lab)

            injected = time.monotonic()
            set_faults(green.url, error_rate=0.5)

            async def rolling_back() -> dict[str, Any] | None:
                view = await site(lab)
                return view if view["phase"] in ("rolling_back", "rolled_back") else None

            view = await until(rolling_back, 30, "rolling back")
            took = time.monotonic() - injected
            # HAProxy itself: green out, at weight 0 and in maintenance; blue takes it all.
            servers = haproxy_servers(lab)
            assert servers["green"]["weight"] == 0 and servers["green"]["admin"] & FORCED_MAINT
            assert haproxy_weights(lab) == BLUE

            async def rolled_back() -> dict[str, Any] | None:
                got = await site(lab)
                return got if got["phase"] == "rolled_back" else None

            view = await until(rolled_back, 10, "rolled back")
            assert view["weights"] == BLUE, describe(view)
            rolling = [e for e in view["events"] if e["kind"] == "rolling_back"]
            assert rolling and rolling[-1]["rule"] == RULE, describe(view)
            assert view["rollout"]["reason"].startswith(f"rule {RULE} fired"), view["rollout"]
            assert [a["name"] for a in view["alerts"]] == [ALERT]

            text = daemon_metrics(lab)
            assert f'odoo_watchdog_rollbacks_total{{rule="{RULE}",site="odoo"}} 1.0' in \
                text.splitlines(), [ln for ln in text.splitlines() if "rollbacks" in ln]
            firing = alerts_received(lab).get("firing", 0) - counted.get("firing", 0)
            assert firing >= 1

            # Clear the fault: Prometheus resolves the alert, Alertmanager sends it resolved.
            clear_faults(green.url)

            async def resolved() -> dict[str, Any] | None:
                got = await site(lab)
                count = alerts_received(lab).get("resolved", 0) - counted.get("resolved", 0)
                return got if count >= 1 and got["alerts"] == [] else None

            view = await until(resolved, 30, "resolved")
            assert view["phase"] == "rolled_back" and haproxy_weights(lab) == BLUE
            print(f"5xx injected -> rollback in {took:.2f}s")
    finally:
        clear_faults(green.url)
        prom.stop()
        am.stop()
