"""The smoke checks that log in, run by the daemon as a real process: the credentials come from
`smoke_settings.credentials_file` (read at start), the preflight logs in, writes and deletes a
partner and checks sessions; the password is in no event, no status and no line of the
daemon's output; `odoo_watchdog_sessions_shared{site}` says what the check found.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import daemon_metrics
from tests.polling import wait
from watchdog.lab.stack import LabStack
from watchdog.lab.standin import StandinProcess

pytestmark = pytest.mark.lab

PASSWORD = "s3cret-smoke-pw-4417"
LOGIN = "smoke"


def partners(standin: StandinProcess) -> int:
    with urllib.request.urlopen(f"{standin.url}/__lab__/info", timeout=5) as resp:
        return int(json.loads(resp.read())["partners"])


def sessions_shared(lab: LabStack) -> float | None:
    for family in text_string_to_metric_families(daemon_metrics(lab)):
        for sample in family.samples:
            if sample.name == "odoo_watchdog_sessions_shared" and sample.labels == {"site": "odoo"}:
                return float(sample.value)
    return None


@pytest.fixture
def make_lab(tmp_path: Path) -> Iterator[Callable[..., LabStack]]:
    labs: list[LabStack] = []

    def make(*, shared: bool, password: str = PASSWORD, sessions: str = "warn") -> LabStack:
        work = tmp_path / f"lab{len(labs)}"
        work.mkdir()
        creds = work / "smoke.json"
        creds.write_text(json.dumps({"db": "odoo", "login": LOGIN, "password": password}))
        creds.chmod(0o600)
        rollout = {"strategy": "canary", "interval": "1s",
                   "steps": [{"weight": 10, "hold": "1h"}, {"weight": 100}],
                   "smoke": ["health", "login", "rpc", "workflow", "sessions"]}
        lab = LabStack(work, site_extra={
            "rollout": rollout,
            "smoke_settings": {"credentials_file": str(creds), "sessions": sessions}})
        user = [f"{LOGIN}:{PASSWORD}"]
        data = work / "data"
        lab.blue = StandinProcess("blue", work / "blue", version="16.0", users=user,
                                  data_dir=data if shared else work / "data-blue")
        lab.green = StandinProcess("green", work / "green", version="17.0", users=user,
                                   data_dir=data if shared else work / "data-green")
        labs.append(lab)
        lab.start()
        return lab

    yield make
    for lab in labs:
        lab.stop()


def preflight_event(lab: LabStack) -> tuple[str, str]:
    def probe() -> tuple[str, str] | None:
        for event in lab.site().get("events", []):
            if event["kind"] in ("preflight_passed", "aborted"):
                return event["kind"], event["message"]
        return None

    return wait(probe, 40, "the preflight's end", every=0.2)


def everything_shown(lab: LabStack) -> str:
    """Every place a secret could leak: events, status (JSON and the CLI's table), the
    daemon's own output."""
    site = lab.site()
    status = subprocess.run([sys.executable, "-m", "watchdog.cli", "status", "odoo", "--url",
                             lab.api_url], capture_output=True, text=True, timeout=30,
                            check=False).stdout
    assert lab.daemon is not None
    return json.dumps(site) + status + lab.daemon.log_path.read_text()


def test_preflight_logs_in_writes_and_checks_sessions_with_no_secret_shown(
        make_lab: Callable[..., LabStack]) -> None:
    lab = make_lab(shared=True)
    before = partners(lab.green)
    lab.client().post("/api/v1/sites/odoo/rollouts", {"to": "green", "version": "17.0"})
    kind, message = preflight_event(lab)
    assert kind == "preflight_passed", message
    assert "workflow ok" in message and "sessions ok" in message, message
    assert sessions_shared(lab) == 1.0
    assert partners(lab.green) == before, "the smoke partner was unlinked"
    assert PASSWORD not in everything_shown(lab)
    lab.client().post("/api/v1/sites/odoo/abort", {"reason": "test done"})


def test_sessions_not_shared_warns_and_a_wrong_password_fails_without_showing_it(
        make_lab: Callable[..., LabStack]) -> None:
    lab = make_lab(shared=False)
    lab.client().post("/api/v1/sites/odoo/rollouts", {"to": "green", "version": "17.0"})
    kind, message = preflight_event(lab)
    assert kind == "preflight_passed", message
    assert "sessions WARNING" in message, message
    assert sessions_shared(lab) == 0.0
    lab.client().post("/api/v1/sites/odoo/abort", {"reason": "test done"})

    wrong = "not-the-password-9921"
    other = make_lab(shared=True, password=wrong)
    other.client().post("/api/v1/sites/odoo/rollouts", {"to": "green", "version": "17.0"})
    kind, message = preflight_event(other)
    assert kind == "aborted" and "authentication failed for login smoke" in message, message
    shown: Any = everything_shown(other)
    assert wrong not in shown and PASSWORD not in shown
