"""Bad input on the Alertmanager webhook never breaks the daemon, and ignored alerts move nothing.

One lab for the module (two Odoo stand-ins behind a real HAProxy 2.6, Prometheus scraping its
exporter); the `Daemon` runs in this process behind aiohttp's test server, as in test_api.py.
Its own rules cannot fire during a test (`for: 1h`, holds and bake of an hour). Every case
checks the status code and the message, then that `/healthz` still answers and that the
site's phase, split, rollout, events and firing alerts, and HAProxy's real split, are what
they were before the request.

The property test at the end runs a second daemon (own state store, same HAProxy) in an event
loop of its own thread, so that a synchronous hypothesis test can post a thousand generated
payloads through one client.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_asyncio
import structlog
import yaml
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from watchdog import alerts, payloads, routers
from watchdog.alerts import MAX_ALERTS
from watchdog.api import create_app
from watchdog.config import load
from watchdog.daemon import Daemon
from watchdog.lab.stack import LabStack

pytestmark = pytest.mark.lab

WEBHOOK = "/api/v1/alertmanager"
SITE = "/api/v1/sites/odoo"
STEPS: list[Any] = [{"weight": 10, "hold": "1h"}, "pause", {"weight": 100}]
BLUE = {"blue": 100, "green": 0}
CANARY = {"blue": 90, "green": 10}
ACTIVE = {"preflight", "progressing", "paused", "baking", "rolling_back"}
Api = TestClient[Any, Any]
T = TypeVar("T")


# ---------------------------------------------------------------- payloads


def alert(status: str = "firing", *, name: str = "OdooCandidate5xx", site: str = "odoo",
          color: str | None = "green", severity: str | None = "critical",
          fingerprint: str | None = None, starts_at: str = "2026-01-01T00:00:00Z",
          **labels: str) -> dict[str, Any]:
    """One alert as Alertmanager sends it in a version-4 webhook."""
    all_labels = {"alertname": name, "site": site, **labels}
    if color is not None:
        all_labels["color"] = color
    if severity is not None:
        all_labels["severity"] = severity
    out: dict[str, Any] = {
        "status": status, "labels": all_labels,
        "annotations": {"summary": f"{name} on {site}/{color}"},
        "startsAt": starts_at,
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-01-01T00:05:00Z",
        "generatorURL": "http://127.0.0.1:9090/graph",
    }
    if fingerprint is not None:
        out["fingerprint"] = fingerprint
    return out


def payload(*alerts: dict[str, Any]) -> dict[str, Any]:
    """A version-4 webhook body around `alerts`."""
    status = "firing" if any(a.get("status") == "firing" for a in alerts) else "resolved"
    return {"receiver": "watchdog", "status": status, "alerts": list(alerts),
            "groupLabels": {"alertname": "OdooCandidate5xx"}, "commonLabels": {},
            "commonAnnotations": {}, "externalURL": "http://127.0.0.1:9093", "version": "4",
            "groupKey": '{}:{alertname="OdooCandidate5xx"}', "truncatedAlerts": 0}


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def counts(firing: int = 0, resolved: int = 0, duplicates: int = 0, unknown_site: int = 0,
           unmatched: int = 0) -> dict[str, Any]:
    return {"status": "ok", "firing": firing, "resolved": resolved, "duplicates": duplicates,
            "unknown_site": unknown_site, "unmatched": unmatched}


# ---------------------------------------------------------------- fixtures


def write_config(lab: LabStack, state_dir: Path, path: Path) -> Path:
    """The lab's daemon config with its own state store (a daemon that starts idle)."""
    raw = yaml.safe_load(lab.config_path.read_text())
    raw["state_dir"] = str(state_dir)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabStack]:
    stack = LabStack(tmp_path_factory.mktemp("webhook-lab"), steps=STEPS, interval="1s",
                     bake="1h", keep_previous="1h", error_for="1h", health_for="1h")
    try:
        stack.start(daemon=False)
        yield stack
    finally:
        stack.stop()


# `daemon`, `api` and `router` (on this module's `lab`) are tests/conftest.py's.


@pytest_asyncio.fixture(loop_scope="module")
async def settled(api: Api, lab: LabStack, daemon: Daemon,
                  router: routers.Router) -> AsyncIterator[None]:
    """Each test starts and ends with no alert firing, no active rollout, blue at 100%."""
    await settle(api, lab, daemon)
    assert await router.get_weights() == BLUE
    yield
    await settle(api, lab, daemon)
    assert await router.get_weights() == BLUE


async def settle(api: Api, lab: LabStack, daemon: Daemon) -> None:
    # Resolve whatever still fires, through the webhook itself.
    for book in list(daemon.alerts.firing.values()):
        for fp, a in list(book.items()):
            body = payload(alert("resolved", name=a.name, site=a.site, color=a.color,
                                 fingerprint=fp, starts_at=a.starts_at))
            resp = await api.post(WEBHOOK, data=dumps(body), headers=auth(lab))
            assert resp.status == 200, await resp.text()
    view = await get_site(api)
    assert view["alerts"] == []
    if view["phase"] in ACTIVE:
        resp = await command(api, lab, "abort", {"reason": "test cleanup"})
        assert resp.status == 200, await resp.text()
        view = await resp.json()
    if view["live"] != "blue" or view["weights"] != BLUE:
        resp = await command(api, lab, "switch", {"to": "blue"})
        assert resp.status == 200, await resp.text()
        view = await resp.json()
    assert view["phase"] not in ACTIVE and view["live"] == "blue" and view["weights"] == BLUE


# ---------------------------------------------------------------- helpers


def auth(lab: LabStack) -> dict[str, str]:
    return {"Authorization": f"Bearer {lab.token}", "Content-Type": "application/json"}


async def command(api: Api, lab: LabStack, action: str, body: dict[str, Any]) -> Any:
    return await api.post(f"{SITE}/{action}", data=dumps(body), headers=auth(lab))


async def get_site(api: Api) -> dict[str, Any]:
    resp = await api.get(SITE)
    assert resp.status == 200
    data: dict[str, Any] = await resp.json()
    return data


async def wait_phase(api: Api, phase: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    view = await get_site(api)
    while view["phase"] != phase:
        assert time.monotonic() < deadline, f"phase {view['phase']}, wanted {phase}: {view}"
        await asyncio.sleep(0.1)
        view = await get_site(api)
    return view


async def start_canary(api: Api, lab: LabStack, router: routers.Router) -> dict[str, Any]:
    """A rollout to green, through preflight, at its first step: green 10% in HAProxy."""
    resp = await command(api, lab, "rollouts", {"to": "green", "version": "17.0"})
    assert resp.status == 201, await resp.text()
    view = await wait_phase(api, "progressing")
    assert view["weights"] == CANARY
    assert await router.get_weights() == CANARY
    return view


async def snapshot(api: Api, router: routers.Router) -> dict[str, Any]:
    """Everything a webhook could change: the daemon's view of the site and HAProxy's split."""
    view = await get_site(api)
    ro = view["rollout"]
    return {
        "phase": view["phase"], "live": view["live"], "weights": view["weights"],
        "rollout": (ro["id"], ro["phase"], ro["step"]) if ro else None,
        "previous": view["previous"], "alerts": view["alerts"],
        "events": [e["id"] for e in view["events"]],
        "haproxy": await router.get_weights(),
    }


async def alert_counts(api: Api) -> dict[str, float]:
    """odoo_watchdog_alerts_received_total by status."""
    resp = await api.get("/metrics")
    assert resp.status == 200
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(await resp.text()):
        for s in family.samples:
            if s.name == "odoo_watchdog_alerts_received_total":
                out[s.labels["status"]] = s.value
    return out


async def rollbacks(api: Api) -> float:
    resp = await api.get("/metrics")
    total = 0.0
    for family in text_string_to_metric_families(await resp.text()):
        for s in family.samples:
            if s.name == "odoo_watchdog_rollbacks_total":
                total += s.value
    return total


def grew(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after)
            if after.get(k, 0) != before.get(k, 0)}


async def healthy(api: Api) -> None:
    resp = await api.get("/healthz")
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"status": "ok"}


async def post_unchanged(api: Api, router: routers.Router, body: bytes,
                         headers: dict[str, str], status: int) -> tuple[Any, dict[str, float]]:
    """POST `body`, check the status, that the daemon still answers and that nothing changed;
    returns the answer and how the alert counters grew."""
    before = await snapshot(api, router)
    counted = await alert_counts(api)
    resp = await api.post(WEBHOOK, data=body, headers=headers)
    assert resp.status == status, await resp.text()
    await healthy(api)
    assert await snapshot(api, router) == before
    return resp, grew(counted, await alert_counts(api))


async def refused(api: Api, router: routers.Router, lab: LabStack, body: bytes, status: int,
                  message: str, headers: dict[str, str] | None = None) -> dict[str, float]:
    resp, growth = await post_unchanged(api, router, body,
                                        headers if headers is not None else auth(lab), status)
    assert resp.content_type == "application/json"
    data = await resp.json()
    assert message in data["error"], data
    return growth


async def accepted(api: Api, router: routers.Router, lab: LabStack, body: dict[str, Any],
                   answer: dict[str, Any]) -> dict[str, float]:
    resp, growth = await post_unchanged(api, router, dumps(body), auth(lab), 200)
    assert await resp.json() == answer
    return growth


# ---------------------------------------------------------------- bad payloads: 400

VALID = alert()
BAD_PAYLOADS: list[tuple[str, bytes, str]] = [
    ("garbage bytes", b"\x00\xff\xfe garbage {{{", "body is not valid JSON"),
    ("empty body", b"", "body is not valid JSON"),
    ("whitespace", b"  \n ", "body is not valid JSON"),
    ("truncated JSON", dumps(payload(VALID))[:-5], "body is not valid JSON"),
    ("nested too deeply", b"[" * 100_000 + b"]" * 100_000, "body is not valid JSON"),
    ("huge integer", b'{"version": ' + b"9" * 5000 + b"}", "body is not valid JSON"),
    # From here on the messages name the field as `odoo-watchdog check` names a config key.
    ("JSON array", dumps([payload(VALID)]), "body: expected a mapping, got a list"),
    ("JSON string", dumps("version 4"), "body: expected a mapping, got 'version 4'"),
    ("JSON null", b"null", "body: expected a mapping, got nothing"),
    ("version 3", dumps({**payload(VALID), "version": "3"}),
     "version: unsupported payload version '3': this receiver takes Alertmanager's "
     'version "4"'),
    ("version 4 as a number", dumps({**payload(VALID), "version": 4}),
     "version: unsupported payload version 4:"),
    ("version NaN", b'{"version": NaN, "alerts": []}',
     "version: unsupported payload version nan:"),
    ("no version", dumps({"alerts": [VALID]}), "version: missing required key"),
    ("no alerts", dumps({k: v for k, v in payload(VALID).items() if k != "alerts"}),
     "alerts: missing required key"),
    ("alerts an object", dumps({**payload(), "alerts": VALID}),
     "alerts: expected a list, got a mapping"),
    ("alerts null", dumps({**payload(), "alerts": None}), "alerts: expected a list, got nothing"),
    ("alert a string", dumps({**payload(), "alerts": ["OdooCandidate5xx"]}),
     "alerts[0]: expected a mapping, got 'OdooCandidate5xx'"),
    ("alert without status", dumps(payload({k: v for k, v in VALID.items() if k != "status"})),
     "alerts[0].status: missing required key"),
    ("alert status pending", dumps(payload({**VALID, "status": "pending"})),
     "alerts[0].status: input should be 'firing' or 'resolved' (got 'pending')"),
    ("alert without labels", dumps(payload({k: v for k, v in VALID.items() if k != "labels"})),
     "alerts[0].labels: missing required key"),
    ("labels a list", dumps(payload({**VALID, "labels": [["alertname", "X"]]})),
     "alerts[0].labels: expected a mapping, got a list"),
    ("label value a number", dumps(payload({**VALID, "labels": {**VALID["labels"],
                                                               "severity": 5}})),
     "alerts[0].labels.severity: input should be a valid string (got 5)"),
    ("label value null", dumps(payload({**VALID, "labels": {**VALID["labels"], "site": None}})),
     "alerts[0].labels.site: input should be a valid string (got nothing)"),
    ("label value an object", dumps(payload({**VALID, "labels": {**VALID["labels"],
                                                                "color": {"x": "green"}}})),
     "alerts[0].labels.color: input should be a valid string (got a mapping)"),
    ("label value a lone surrogate", dumps(payload({**VALID, "labels": {**VALID["labels"],
                                                                       "instance": "\ud800"}})),
     "alerts[0].labels.instance: not valid Unicode (a lone surrogate)"),
    ("label key a lone surrogate", dumps(payload({**VALID, "labels": {**VALID["labels"],
                                                                     "\udc00": "x"}})),
     "alerts[0].labels: a key is not valid Unicode (a lone surrogate)"),
    ("no alertname", dumps(payload({**VALID, "labels": {k: v for k, v in VALID["labels"].items()
                                                        if k != "alertname"}})),
     "alerts[0].labels.alertname: missing required key"),
    ("empty alertname", dumps(payload({**VALID, "labels": {**VALID["labels"], "alertname": ""}})),
     "alerts[0].labels.alertname: must not be empty"),
    ("fingerprint a number", dumps(payload({**VALID, "fingerprint": 1234})),
     "alerts[0].fingerprint: input should be a valid string (got 1234)"),
    ("startsAt a number", dumps(payload({**VALID, "startsAt": 0})),
     "alerts[0].startsAt: input should be a valid string (got 0)"),
    ("startsAt not a time", dumps(payload({**VALID, "startsAt": "yesterday"})),
     "alerts[0].startsAt: expected an RFC 3339 time such as 2026-01-01T00:00:00Z, "
     "got 'yesterday'"),
    ("endsAt no real time", dumps(payload({**VALID, "endsAt": "2026-13-01T00:00:00Z"})),
     "alerts[0].endsAt: expected an RFC 3339 time such as 2026-01-01T00:00:00Z, "
     "got '2026-13-01T00:00:00Z'"),
    ("annotations a list", dumps(payload({**VALID, "annotations": ["summary"]})),
     "alerts[0].annotations: expected a mapping, got a list"),
    ("annotations null", dumps(payload({**VALID, "annotations": None})),
     "alerts[0].annotations: expected a mapping, got nothing"),
    ("annotation a number", dumps(payload({**VALID, "annotations": {"summary": 5}})),
     "alerts[0].annotations.summary: input should be a valid string (got 5)"),
    ("unknown alert key", dumps(payload({**VALID, "startAt": "2026-01-01T00:00:00Z"})),
     "alerts[0].startAt: unknown key"),
    ("unknown top-level key", dumps({**payload(VALID), "Version": "4"}), "Version: unknown key"),
    ("commonLabels a list", dumps({**payload(VALID), "commonLabels": []}),
     "commonLabels: expected a mapping, got a list"),
    ("truncatedAlerts negative", dumps({**payload(VALID), "truncatedAlerts": -1}),
     "truncatedAlerts: input should be greater than or equal to 0 (got -1)"),
    ("truncatedAlerts a string", dumps({**payload(VALID), "truncatedAlerts": "0"}),
     "truncatedAlerts: input should be a valid integer (got '0')"),
    ("group status unknown", dumps({**payload(VALID), "status": "pending"}),
     "status: input should be 'firing' or 'resolved' (got 'pending')"),
    # The whole payload is refused: the valid first alert (a firing one for the candidate)
    # must not be applied either.
    ("second alert broken", dumps(payload(VALID, {**VALID, "status": 1})),
     "alerts[1].status: input should be 'firing' or 'resolved' (got 1)"),
    # Several problems: the first three, then how many more.
    ("five alerts broken", dumps(payload(*[{**VALID, "status": i} for i in range(5)])),
     "alerts[0].status: input should be 'firing' or 'resolved' (got 0); alerts[1].status: "
     "input should be 'firing' or 'resolved' (got 1); alerts[2].status: input should be "
     "'firing' or 'resolved' (got 2); and 2 more"),
]
NOT_JSON = {"garbage bytes", "empty body", "whitespace", "truncated JSON", "nested too deeply",
            "huge integer"}
MODULE_LOOP = pytest.mark.asyncio(loop_scope="module")


@MODULE_LOOP
@pytest.mark.usefixtures("settled")
class TestRefused:
    @pytest.mark.parametrize("case", BAD_PAYLOADS, ids=[c[0] for c in BAD_PAYLOADS])
    async def test_bad_payload_is_400(self, api: Api, router: routers.Router, lab: LabStack,
                                      case: tuple[str, bytes, str]) -> None:
        """While a canary is at 10%, a bad payload (even one holding a firing alert for the
        candidate) is a 400 naming the problem, and nothing moves."""
        name, body, message = case
        await start_canary(api, lab, router)
        growth = await refused(api, router, lab, body, 400, message)
        # A JSON body that is no webhook is counted as invalid; one that is not JSON never
        # reaches the webhook's parser and is not counted. No alert is counted either way.
        if name in NOT_JSON:
            assert growth == {}
        else:
            assert growth == {"invalid": 1.0}

    async def test_more_than_max_alerts_is_400(self, api: Api, router: routers.Router,
                                               lab: LabStack) -> None:
        many = [alert(site="elsewhere", fingerprint=f"{i:016x}") for i in range(MAX_ALERTS + 1)]
        await start_canary(api, lab, router)
        growth = await refused(api, router, lab, dumps(payload(*many)), 400,
                               f"{MAX_ALERTS + 1} alerts in one payload; at most {MAX_ALERTS}")
        assert growth == {"invalid": 1.0}
        # Exactly the maximum is fine.
        growth = await accepted(api, router, lab, payload(*many[:MAX_ALERTS]),
                                counts(unknown_site=MAX_ALERTS))
        assert growth == {"unknown_site": float(MAX_ALERTS)}

    async def test_body_over_one_mib_is_413(self, api: Api, router: routers.Router,
                                            lab: LabStack) -> None:
        await start_canary(api, lab, router)
        big = payload(alert())
        big["commonAnnotations"] = {"pad": "x" * (1024 * 1024 + 1)}
        resp, growth = await post_unchanged(api, router, dumps(big), auth(lab), 413)
        assert "Maximum request body size 1048576 exceeded" in await resp.text()
        assert growth == {}
        # A gzip bomb is never inflated (no Content-Encoding is decoded): refused as not JSON.
        bomb = gzip.compress(b" " * (4 * 1024 * 1024))
        resp, growth = await post_unchanged(
            api, router, bomb, {**auth(lab), "Content-Encoding": "gzip"}, 400)
        assert "body is not valid JSON" in await resp.text()
        assert growth == {}

    @pytest.mark.parametrize("header", [
        None, "", "Bearer", "Bearer ", "Bearer wrong-token", "Basic dXNlcjpwYXNz",
        "{token}", "Bearer {token}x", "Bearer  {token}", "bearer {token}x",
    ], ids=["missing", "empty", "scheme only", "scheme and space", "wrong", "basic",
            "token without scheme", "token with suffix", "two spaces", "lowercase wrong"])
    async def test_missing_or_wrong_token_is_401(self, api: Api, router: routers.Router,
                                                 lab: LabStack, header: str | None) -> None:
        """A valid firing alert for the candidate, without the right token: 401, not applied,
        not even counted."""
        await start_canary(api, lab, router)
        headers = {"Content-Type": "application/json"}
        if header is not None:
            headers["Authorization"] = header.format(token=lab.token)
        growth = await refused(api, router, lab, dumps(payload(alert())), 401,
                               "missing or wrong bearer token", headers)
        assert growth == {}

    @pytest.mark.parametrize("encoding", ["gzip", "deflate"])
    async def test_body_that_does_not_decode_is_400(self, api: Api, router: routers.Router,
                                                    lab: LabStack, encoding: str) -> None:
        await start_canary(api, lab, router)
        growth = await refused(api, router, lab, b"\x00\x01 this is not " + encoding.encode(),
                               400, "body is not valid JSON: ",
                               {**auth(lab), "Content-Encoding": encoding})
        assert growth == {}

    async def test_label_with_lone_surrogate_is_not_500(self, api: Api, router: routers.Router,
                                                        lab: LabStack) -> None:
        await start_canary(api, lab, router)
        # A resolved alert of the site, without fingerprint: refused by name, nothing changes
        # and the daemon still answers.
        body = dumps(payload(alert("resolved", instance="\ud800")))
        with structlog.testing.capture_logs():  # as in production: logging cannot fail
            growth = await refused(api, router, lab, body, 400,
                                   "alerts[0].labels.instance: not valid Unicode "
                                   "(a lone surrogate)")
        assert growth == {"invalid": 1.0}

    async def test_alertname_with_lone_surrogate_does_not_wedge_the_site(
            self, api: Api, router: routers.Router, lab: LabStack) -> None:
        await start_canary(api, lab, router)
        bad = alert(name="X\ud800", fingerprint="surrogate-1")
        # Logs captured, not printed: in production they are ASCII JSON and cannot fail, so
        # only the daemon's own handling is judged here.
        with structlog.testing.capture_logs() as logs:
            try:
                resp = await api.post(WEBHOOK, data=dumps(payload(bad)), headers=auth(lab))
                await asyncio.sleep(2.5)  # a couple of ticks
                await healthy(api)
                assert resp.status == 400, await resp.text()
                assert (await resp.json())["error"] == (  # the summary holds the name too
                    "alerts[0].labels.alertname: not valid Unicode (a lone surrogate); "
                    "alerts[0].annotations.summary: not valid Unicode (a lone surrogate)")
                assert [e for e in logs if e["event"] == "tick_failed"] == []
                view = await get_site(api)
                assert view["phase"] == "progressing" and view["alerts"] == []
                assert await router.get_weights() == CANARY
            finally:
                await api.post(WEBHOOK, data=dumps(payload({**bad, "status": "resolved"})),
                               headers=auth(lab))


# ---------------------------------------------------------------- accepted, changing nothing


@MODULE_LOOP
@pytest.mark.usefixtures("settled")
class TestIgnored:
    async def test_unknown_site_is_counted_and_ignored(self, api: Api, router: routers.Router,
                                                       lab: LabStack) -> None:
        await start_canary(api, lab, router)
        growth = await accepted(api, router, lab, payload(alert(site="crm")),
                                counts(unknown_site=1))
        assert growth == {"unknown_site": 1.0}
        # No site label at all: the same.
        no_site = {**alert(), "labels": {"alertname": "X", "severity": "critical",
                                         "color": "green"}}
        growth = await accepted(api, router, lab, payload(no_site), counts(unknown_site=1))
        assert growth == {"unknown_site": 1.0}

    @pytest.mark.parametrize("severity", ["warning", "CRITICAL", None],
                             ids=["warning", "CRITICAL", "no severity"])
    async def test_non_matching_labels_are_unmatched(self, api: Api, router: routers.Router,
                                                     lab: LabStack,
                                                     severity: str | None) -> None:
        await start_canary(api, lab, router)
        growth = await accepted(api, router, lab, payload(alert(severity=severity)),
                                counts(unmatched=1))
        assert growth == {"unmatched": 1.0}

    async def test_resolved_for_unknown_fingerprint(self, api: Api, router: routers.Router,
                                                    lab: LabStack) -> None:
        await start_canary(api, lab, router)
        growth = await accepted(api, router, lab,
                                payload(alert("resolved", fingerprint="feedfacefeedface")),
                                counts(resolved=1))
        assert growth == {"resolved": 1.0}
        # Sent again (Alertmanager retries): a duplicate.
        growth = await accepted(api, router, lab,
                                payload(alert("resolved", fingerprint="feedfacefeedface")),
                                counts(duplicates=1))
        assert growth == {"duplicate": 1.0}

    async def test_empty_alert_list(self, api: Api, router: routers.Router,
                                    lab: LabStack) -> None:
        await start_canary(api, lab, router)
        assert await accepted(api, router, lab, payload(), counts()) == {}

    async def test_firing_for_live_colour_while_idle_moves_nothing(
            self, api: Api, router: routers.Router, lab: LabStack) -> None:
        before = await snapshot(api, router)
        assert before["phase"] not in ACTIVE and before["haproxy"] == BLUE
        resp = await api.post(WEBHOOK, data=dumps(payload(alert(color="blue",
                                                                fingerprint="b1"))),
                              headers=auth(lab))
        assert resp.status == 200
        assert await resp.json() == counts(firing=1)
        # Known as firing; and after a few ticks that see it, traffic has not moved.
        await asyncio.sleep(2.5)
        await healthy(api)
        after = await snapshot(api, router)
        assert [(a["name"], a["color"]) for a in after.pop("alerts")] == [
            ("OdooCandidate5xx", "blue")]
        before.pop("alerts")
        assert after == before

    async def test_firing_for_live_colour_during_canary_does_not_roll_back(
            self, api: Api, router: routers.Router, lab: LabStack) -> None:
        await start_canary(api, lab, router)
        before = await snapshot(api, router)
        resp = await api.post(WEBHOOK, data=dumps(payload(alert(color="blue"))),
                              headers=auth(lab))
        assert resp.status == 200 and await resp.json() == counts(firing=1)
        await asyncio.sleep(2.5)  # ticks see the alert too
        after = await snapshot(api, router)
        assert len(after.pop("alerts")) == 1
        before.pop("alerts")
        assert after == before
        assert after["phase"] == "progressing" and after["haproxy"] == CANARY


# ---------------------------------------------------------------- accepted, acting


@MODULE_LOOP
@pytest.mark.usefixtures("settled")
class TestActing:
    async def test_firing_for_candidate_rolls_back_once_duplicate_changes_nothing(
            self, api: Api, router: routers.Router, lab: LabStack) -> None:
        await start_canary(api, lab, router)
        counted = await alert_counts(api)
        rolled = await rollbacks(api)
        body = dumps(payload(alert(fingerprint="c0ffee")))
        resp = await api.post(WEBHOOK, data=body, headers=auth(lab))
        assert resp.status == 200 and await resp.json() == counts(firing=1)
        # Decided before the answer: HAProxy already sends nothing to green.
        assert await router.get_weights() == BLUE
        view = await get_site(api)
        assert view["phase"] in ("rolling_back", "rolled_back")
        assert [e["rule"] for e in view["events"] if e["kind"] == "rolling_back"][-1:] == [
            "alert:OdooCandidate5xx"]
        assert await rollbacks(api) == rolled + 1
        await wait_phase(api, "rolled_back")
        # The same payload again (Alertmanager re-sends groups): a duplicate, nothing more.
        resp, growth = await post_unchanged(api, router, body, auth(lab), 200)
        assert await resp.json() == counts(duplicates=1)
        assert growth == {"duplicate": 1.0}
        assert await rollbacks(api) == rolled + 1
        assert grew(counted, await alert_counts(api)) == {"firing": 1.0, "duplicate": 1.0}
        # Resolved: the alert is gone; resolved twice: a duplicate.
        resolved = dumps(payload(alert("resolved", fingerprint="c0ffee")))
        resp = await api.post(WEBHOOK, data=resolved, headers=auth(lab))
        assert await resp.json() == counts(resolved=1)
        assert (await get_site(api))["alerts"] == []
        resp = await api.post(WEBHOOK, data=resolved, headers=auth(lab))
        assert await resp.json() == counts(duplicates=1)

    async def test_alert_without_colour_counts_for_the_candidate(
            self, api: Api, router: routers.Router, lab: LabStack) -> None:
        await start_canary(api, lab, router)
        resp = await api.post(WEBHOOK, data=dumps(payload(alert(color=None))),
                              headers=auth(lab))
        assert resp.status == 200 and await resp.json() == counts(firing=1)
        assert await router.get_weights() == BLUE
        view = await wait_phase(api, "rolled_back")
        assert view["rollout"]["reason"].startswith("rule alert:OdooCandidate5xx fired")


# ---------------------------------------------------------------- what the daemon gets


def test_parse_gives_every_key_of_each_alert_endsat_as_sent() -> None:
    """alerts.parse (AlertBook's entry) gives Alertmanager's keys as sent, and "" or {} for
    what a hand-made payload leaves out."""
    firing = alert(fingerprint="f1", starts_at="2026-01-01T00:00:00.123456789+02:00")
    resolved = alert("resolved", fingerprint="r1")
    bare = {"status": "firing", "labels": {"alertname": "X"}}
    parsed = alerts.parse(payload(firing, resolved, bare))
    assert parsed == [
        {"status": "firing", "labels": firing["labels"], "annotations": firing["annotations"],
         "startsAt": "2026-01-01T00:00:00.123456789+02:00", "endsAt": "0001-01-01T00:00:00Z",
         "generatorURL": "http://127.0.0.1:9090/graph", "fingerprint": "f1"},
        {"status": "resolved", "labels": resolved["labels"],
         "annotations": resolved["annotations"], "startsAt": "2026-01-01T00:00:00Z",
         "endsAt": "2026-01-01T00:05:00Z", "generatorURL": "http://127.0.0.1:9090/graph",
         "fingerprint": "r1"},
        {"status": "firing", "labels": {"alertname": "X"}, "annotations": {}, "startsAt": "",
         "endsAt": "", "generatorURL": "", "fingerprint": ""},
    ]
    assert alerts.parse({"version": "4", "alerts": []}) == []


@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00Z", "2026-01-01T00:00:00Z",
                                   "2026-06-30T23:59:59.999999999-07:00", "2026-01-01t00:00:00z",
                                   "2026-01-01T00:00:00.5+00:00"])
def test_rfc3339_times_alertmanager_writes_are_taken(stamp: str) -> None:
    (parsed,) = alerts.parse(payload({**VALID, "startsAt": stamp, "endsAt": stamp}))
    assert (parsed["startsAt"], parsed["endsAt"]) == (stamp, stamp)
    when = payloads.parse_time(stamp)
    assert when is not None and when.utcoffset() is not None


@pytest.mark.parametrize("stamp", ["", "2026-01-01", "2026-01-01T00:00:00", "1767225600",
                                   "2026-01-01 00:00:00Z", "2026-02-30T00:00:00Z",
                                   "2026-01-01T00:00:60Z", "٢٠٢٦-01-01T00:00:00Z"])
def test_other_times_are_refused_by_name(stamp: str) -> None:
    assert payloads.parse_time(stamp) is None
    with pytest.raises(alerts.PayloadError) as caught:
        alerts.parse(payload({**VALID, "endsAt": stamp}))
    assert str(caught.value) == ("alerts[0].endsAt: expected an RFC 3339 time such as "
                                 f"2026-01-01T00:00:00Z, got {stamp!r}")


# ---------------------------------------------------------------- property: never a 5xx


class LoopThread:
    """An event loop in a thread of its own, for a synchronous hypothesis test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="webhook-loop",
                                       daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[T], timeout: float = 30) -> T:
        async def wrap() -> T:
            return await coro
        return asyncio.run_coroutine_threadsafe(wrap(), self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


class Webhook:
    """A second daemon (idle, its own state store, the lab's HAProxy) with one test client."""

    def __init__(self, lab: LabStack, workdir: Path) -> None:
        self.lab = lab
        self.config = write_config(lab, workdir / "state", workdir / "watchdog.yml")
        self.loop = LoopThread()
        self.daemon: Daemon | None = None
        self.client: Api | None = None
        self.router: routers.Router | None = None

    def start(self) -> Webhook:
        async def start() -> None:
            self.daemon = Daemon(load(self.config))
            await self.daemon.start()
            self.client = TestClient(TestServer(create_app(self.daemon, self.lab.token),
                                                host="127.0.0.1"))
            await self.client.start_server()
            self.router = routers.create("odoo", load(self.config).config.sites["odoo"])
        self.loop.run(start())
        return self

    def post(self, body: bytes) -> tuple[int, bytes]:
        async def post() -> tuple[int, bytes]:
            assert self.client is not None
            resp = await self.client.post(WEBHOOK, data=body, headers=auth(self.lab))
            return resp.status, await resp.read()
        return self.loop.run(post())

    def get(self, path: str) -> tuple[int, Any]:
        async def get() -> tuple[int, Any]:
            assert self.client is not None
            resp = await self.client.get(path)
            return resp.status, await resp.json()
        return self.loop.run(get())

    def haproxy(self) -> dict[str, int]:
        assert self.router is not None
        return self.loop.run(self.router.get_weights())

    def stop(self) -> None:
        async def stop() -> None:
            if self.client is not None:
                await self.client.close()
            if self.router is not None:
                await self.router.close()
            if self.daemon is not None:
                await self.daemon.stop()
        try:
            self.loop.run(stop())
        finally:
            self.loop.close()


@pytest.fixture(scope="module")
def webhook(lab: LabStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Webhook]:
    hook = Webhook(lab, tmp_path_factory.mktemp("webhook-prop"))
    try:
        yield hook.start()
    finally:
        hook.stop()


# Text for the strings of valid-shaped payloads; any JSON value (what corrupted() puts in) may
# also hold lone surrogates, refused by name when sent as JSON escapes, not JSON when sent raw.
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=24)
ANY_TEXT = st.text(st.characters(exclude_categories=[]), max_size=24)
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=12)
LABEL_KEYS = st.sampled_from(["alertname", "site", "color", "severity", "instance"]) | TEXT
LABEL_VALUES = st.sampled_from(["odoo", "crm", "blue", "green", "purple", "critical", "warning",
                                "OdooCandidate5xx", ""]) | TEXT
LABELS = st.dictionaries(LABEL_KEYS, LABEL_VALUES, max_size=6)
# Labels that reach the daemon's decisions: its site, matching or not, any colour.
SITE_LABELS = st.fixed_dictionaries(
    {"alertname": st.sampled_from(["OdooCandidate5xx", "OdooDown"]) | TEXT.filter(bool),
     "site": st.sampled_from(["odoo", "odoo", "crm"]),
     "severity": st.sampled_from(["critical", "critical", "warning"])},
    optional={"color": st.sampled_from(["blue", "green", "purple", ""]) | TEXT,
              "instance": TEXT})
# Times as Alertmanager writes them (any other string is refused: corrupted() sends those).
STAMPS = st.sampled_from(["2026-01-01T00:00:00Z", "0001-01-01T00:00:00Z",
                          "2026-01-01T00:00:00.123456789+02:00"])
ALERT_FIELDS = {
    # A small pool, so that duplicates and firing/resolved pairs happen.
    "fingerprint": st.sampled_from(["a1", "a2", "b1", ""]) | TEXT,
    "startsAt": STAMPS, "endsAt": STAMPS, "generatorURL": TEXT,
    "annotations": st.dictionaries(TEXT, TEXT, max_size=3),
}
STATUSES = st.sampled_from(["firing", "resolved"])
ALERTS = st.fixed_dictionaries({"status": STATUSES, "labels": SITE_LABELS | LABELS},
                               optional=ALERT_FIELDS)
SITE_ALERTS = st.fixed_dictionaries({"status": STATUSES, "labels": SITE_LABELS},
                                    optional=ALERT_FIELDS)
PAYLOADS = st.fixed_dictionaries(
    {"version": st.just("4"),
     "alerts": st.lists(SITE_ALERTS, max_size=6) | st.lists(ALERTS, max_size=6)},
    optional={
        "receiver": TEXT, "status": st.sampled_from(["firing", "resolved"]),
        "groupLabels": LABELS, "commonLabels": LABELS, "commonAnnotations": LABELS,
        "externalURL": TEXT, "groupKey": TEXT, "truncatedAlerts": st.integers(min_value=0),
    })


@st.composite
def corrupted(draw: st.DrawFn) -> Any:
    """A valid-shaped payload with one field (top level, an alert's or a label) replaced by
    any JSON value, or removed."""
    data: dict[str, Any] = draw(PAYLOADS)
    targets: list[dict[str, Any]] = [data]
    for a in data["alerts"]:
        targets += [a, a["labels"]]
    target = draw(st.sampled_from(targets))
    key = draw(st.sampled_from(sorted(target)) if target else ANY_TEXT)
    if draw(st.booleans()) and key in target:
        del target[key]
    else:
        target[key] = draw(JSON_VALUES)
    return data


def encode(value: Any, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


BODIES = st.one_of(
    st.binary(max_size=256),
    st.builds(encode, JSON_VALUES, st.booleans()),
    st.builds(encode, PAYLOADS, st.booleans()),
    st.builds(encode, PAYLOADS, st.booleans()),  # twice: half of the bodies are valid
    st.builds(encode, corrupted(), st.booleans()),
)


def test_any_body_gets_200_or_4xx(webhook: Webhook) -> None:
    """A thousand generated bodies through one client: each answered 200 (every alert
    accounted for exactly once) or 4xx with a message; then the daemon is still healthy,
    still idle on blue, and HAProxy's split is untouched."""
    answers: dict[int | str, int] = {}

    @settings(max_examples=1000, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(body=BODIES)
    def any_body(body: bytes) -> None:
        status, answer = webhook.post(body)
        answers[status] = answers.get(status, 0) + 1
        assert status == 200 or 400 <= status < 500, (status, answer)
        data = json.loads(answer)
        if status == 200:
            for k in ("firing", "resolved", "duplicates", "unknown_site", "unmatched"):
                answers[k] = answers.get(k, 0) + data[k]
            sent = json.loads(body)
            assert data["status"] == "ok"
            assert sum(data[k] for k in ("firing", "resolved", "duplicates", "unknown_site",
                                         "unmatched")) == len(sent["alerts"])
        else:
            assert isinstance(data["error"], str) and data["error"]

    any_body()
    print("answers:", answers)
    assert answers.get(200, 0) > 50 and answers.get(400, 0) > 50, answers
    assert all(answers.get(k, 0) > 10 for k in ("firing", "resolved", "unknown_site",
                                                 "unmatched")), answers
    status, body = webhook.get("/healthz")
    assert (status, body) == (200, {"status": "ok"})
    status, view = webhook.get(SITE)
    assert status == 200
    assert view["phase"] == "idle" and view["live"] == "blue" and view["weights"] == BLUE
    assert webhook.haproxy() == BLUE

