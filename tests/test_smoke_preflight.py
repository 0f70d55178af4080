"""The preflight with the smoke checks that log in: every check's result and duration in its
detail, the sessions finding for the metric, and never the smoke user's password or key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_smoke_lab import (
    SMOKE_KEY,
    SMOKE_LOGIN,
    SMOKE_PASSWORD,
    site_config,
    standin,
)
from tests.test_smoke_lab import (
    forget_failed_logins as forget_failed_logins,  # autouse fixture
)
from watchdog.preflight import run
from watchdog.rollout import Phase, Rollout, Step
from watchdog.smoke_rpc import Credentials

pytestmark = pytest.mark.lab

ALL = ["health", "login", "rpc", "workflow", "latency", "sessions", "http"]


def rollout() -> Rollout:
    return Rollout("r7", "blue", "green", "", "canary", (Step(100),), 0.0, 0.0,
                   Phase.PREFLIGHT, 0.0)


async def test_the_whole_preflight_passes_with_each_check_timed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with standin("17.0", color="blue", data_dir=data) as blue, \
            standin("17.0", color="green", data_dir=data) as green:
        site = site_config(blue.url, green.url, ALL, credentials_file="smoke.json",
                           latency={"requests": 5},
                           http=[{"name": "login_form", "path": "/web/login",
                                  "body": "oe_login_form"}])
        creds = Credentials("odoo", SMOKE_LOGIN, password=SMOKE_PASSWORD, api_key=SMOKE_KEY)
        before = green.partners()
        result = await run(site, rollout(), None, creds)
        after = green.partners()
    assert result.ok, result.detail
    assert after == before
    names = [c["check"] for c in result.checks()]
    assert names == ["health", "login", "rpc", "workflow", "latency", "sessions", "login_form"]
    assert all(c["status"] == "ok" and c["seconds"] > 0 for c in result.checks())
    assert result.detail.startswith("green: health ok ")
    assert " ms (partner created, read back and unlinked over XML-RPC on 17.0)" in result.detail
    assert result.sessions_shared is True
    assert SMOKE_PASSWORD not in result.detail and SMOKE_KEY not in result.detail


async def test_a_wrong_password_fails_the_preflight_without_showing_it(tmp_path: Path) -> None:
    log = tmp_path / "green.log"
    wrong = "Wrong-Pa55word-42"
    async with standin("18.0", color="blue") as blue, \
            standin("18.0", color="green", log_file=log) as green:
        site = site_config(blue.url, green.url, ["health", "workflow", "sessions"],
                           credentials_file="smoke.json", sessions="require")
        result = await run(site, rollout(), None,
                           Credentials("odoo", SMOKE_LOGIN, password=wrong))
    assert not result.ok
    assert "workflow FAILED" in result.detail
    assert "authentication failed for login smoke on db odoo" in result.detail
    # sessions does not log in again with credentials that just failed (the cooldown)
    assert "sessions FAILED" in result.detail and "not logging in again" in result.detail
    assert wrong not in result.detail
    assert wrong not in log.read_text()
    assert result.sessions_shared is None


async def test_checks_that_log_in_without_credentials_say_so() -> None:
    async with standin("17.0") as blue, standin("17.0") as green:
        site = site_config(blue.url, green.url, ["workflow"], credentials_file="smoke.json")
        result = await run(site, rollout())
    assert not result.ok
    assert "workflow FAILED" in result.detail
    assert "no credentials (smoke_settings.credentials_file)" in result.detail
