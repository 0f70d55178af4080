"""A restart is invisible to rule and alert state: kill -9 of the real daemon process, then a
new process on the same state directory.

Prometheus restores how long an alert has been pending from `ALERTS_FOR_STATE`; the daemon
restores each rule's state (pending since when, firing) and the firing Alertmanager alerts from
its store. Without that, a rule pending for 8 s of its `for: 20s` would start again from zero
and fire 20 s after the restart, and a firing alert would be forgotten until Alertmanager
repeats it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.polling import until
from watchdog.lab.stack import LabStack
from watchdog.lab.standin import set_faults

pytestmark = pytest.mark.lab

SITE = "/api/v1/sites/odoo"
INTERVAL = 1.0


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[LabStack]:
    stack = LabStack(tmp_path / "lab", interval=f"{INTERVAL:g}s", health_for="20s",
                     steps=[{"weight": 50, "hold": "2s"}, {"weight": 100}], bake="1h")
    try:
        stack.start(daemon=False)
        yield stack
    finally:
        stack.stop()


def rule_state(view: dict[str, Any], name: str, color: str) -> dict[str, Any] | None:
    return next((r for r in view["rules"] if r["name"] == name and r["color"] == color), None)


async def site(lab: LabStack) -> dict[str, Any]:
    return await asyncio.to_thread(lab.site)


def restart_after_kill(lab: LabStack, down_for: float) -> None:
    assert lab.daemon is not None and lab.daemon.running()
    old = lab.daemon.pid
    lab.daemon.kill()
    assert not lab.daemon.running()
    time.sleep(down_for)
    lab.start_daemon()
    assert lab.daemon.pid != old


async def test_a_pending_rule_fires_at_its_original_deadline_after_kill_9(lab: LabStack) -> None:
    lab.start_daemon()
    set_faults(lab.blue.url, down=True)  # the live colour's health check fails from now on

    async def pending() -> dict[str, Any] | None:
        found = rule_state(await site(lab), "health", "blue")
        return found if found and found["state"] == "pending" else None

    status = await until(pending, 15, "health pending on blue", every=0.1)
    since = status["since"]
    deadline = since + 20.0
    await asyncio.sleep(max(0.0, since + 3 - time.time()))
    await asyncio.to_thread(restart_after_kill, lab, 5.0)
    restarted = time.time()

    async def firing() -> dict[str, Any] | None:
        found = rule_state(await site(lab), "health", "blue")
        assert found is None or found["state"] in ("ok", "pending", "firing"), found
        return found if found and found["state"] == "firing" else None

    after = await until(firing, 30, "health firing on blue", every=0.1)
    fired = time.time()
    assert restarted < deadline - 10, "the restart came too late to tell the clocks apart"
    assert after["since"] == since  # the streak is the one from before the kill
    # At the original deadline, within a tick (and the poll's own delay); not 20 s after the
    # restart, which would be about restarted + 20.
    assert deadline - INTERVAL <= fired <= deadline + INTERVAL + 0.5, (
        f"fired {fired - since:.1f}s after the breach began (for: 20s), "
        f"{fired - restarted:.1f}s after the restart")


def alert(status: str, ends_at: str = "0001-01-01T00:00:00Z") -> dict[str, Any]:
    labels = {"alertname": "OdooCandidateSlow", "severity": "critical", "site": "odoo",
              "color": "green"}
    return {"version": "4", "status": status, "receiver": "odoo-watchdog",
            "groupKey": "{}:{alertname=\"OdooCandidateSlow\"}", "truncatedAlerts": 0,
            "groupLabels": {"alertname": "OdooCandidateSlow"}, "commonLabels": labels,
            "commonAnnotations": {}, "externalURL": "http://127.0.0.1:9093",
            "alerts": [{"status": status, "labels": labels,
                        "annotations": {"summary": "green answers slowly"},
                        "startsAt": "2026-12-02T10:00:00Z", "endsAt": ends_at,
                        "generatorURL": "http://127.0.0.1:9090/graph",
                        "fingerprint": "c0ffee0123456789"}]}


async def test_a_firing_alert_still_holds_the_rollout_after_kill_9_until_resolved(
    lab: LabStack,
) -> None:
    config = yaml.safe_load(lab.config_path.read_text())
    config["alertmanager"] = {"on_fire": "pause"}
    lab.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    lab.start_daemon()
    client = lab.client()
    await asyncio.to_thread(client.post, f"{SITE}/rollouts", {"to": "green"})

    async def phase(name: str) -> dict[str, Any] | None:
        view = await site(lab)
        return view if view["phase"] == name else None

    await until(lambda: phase("progressing"), 15, "progressing", every=0.1)
    await asyncio.to_thread(client.post, "/api/v1/alertmanager", alert("firing"))
    paused = await until(lambda: phase("paused"), 5, "paused by the alert", every=0.05)
    assert paused["rollout"]["paused_by"] == "rule:alert:OdooCandidateSlow"

    await asyncio.to_thread(restart_after_kill, lab, 2.0)
    # Well past the step's 2 s hold: a forgotten alert would have let the rollout resume.
    for _ in range(6):
        view = await site(lab)
        assert view["phase"] == "paused", view["phase"]
        assert [a["name"] for a in view["alerts"]] == ["OdooCandidateSlow"]
        await asyncio.sleep(INTERVAL)

    await asyncio.to_thread(client.post, "/api/v1/alertmanager", alert("resolved"))
    resumed = await until(lambda: phase("progressing"), 5, "resumed after the resolve",
                          every=0.05)
    assert resumed["alerts"] == []
    assert resumed["rollout"]["paused_by"] is None
    events = (await asyncio.to_thread(lab.site))["events"]
    assert "rule alert:OdooCandidateSlow cleared" in events[-1]["message"], events[-1]
