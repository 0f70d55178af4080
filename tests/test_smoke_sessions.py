"""The `sessions` smoke check: a session made on the live colour, shown to the candidate. Two
stand-ins share sessions with one data_dir, database name and database.secret; 17 -> 18 breaks
them whatever is shared (the session format changed)."""

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
from watchdog.smoke import SmokeReport, run_smoke
from watchdog.smoke_rpc import Credentials

pytestmark = pytest.mark.lab

CREDS = Credentials("odoo", SMOKE_LOGIN, password=SMOKE_PASSWORD)


async def sessions(tmp_path: Path, blue: str, green: str, *, shared: bool,
                   mode: str = "warn", creds: Credentials = CREDS,
                   secrets: tuple[str, str] = ("s", "s")) -> SmokeReport:
    blue_dir = tmp_path / "data"
    green_dir = blue_dir if shared else tmp_path / "green-data"
    async with standin(blue, color="blue", data_dir=blue_dir, db_secret=secrets[0]) as b, \
            standin(green, color="green", data_dir=green_dir, db_secret=secrets[1]) as g:
        site = site_config(b.url, g.url, ["sessions"], credentials_file="smoke.json",
                           sessions=mode)
        return await run_smoke(site, "blue", "green", "r1", creds)


@pytest.mark.parametrize(("blue", "green"), [("17.0", "17.0"), ("16.0", "17.0"),
                                             ("18.0", "19.0")])
async def test_shared_sessions_pass_and_set_the_metric_to_1(
        tmp_path: Path, blue: str, green: str) -> None:
    report = await sessions(tmp_path, blue, green, shared=True)
    [result] = report.results
    assert result.status == "ok", result.detail
    assert result.detail == "a session made on blue is valid on green: users stay logged in"
    assert report.ok and report.sessions_shared is True


async def test_not_shared_warns_names_the_cause_and_sets_the_metric_to_0(
        tmp_path: Path) -> None:
    report = await sessions(tmp_path, "17.0", "17.0", shared=False)
    [result] = report.results
    assert report.ok  # warn: the preflight passes, with the warning in its detail
    assert result.status == "warn"
    assert result.detail.startswith("green does not know a session made on blue: users will "
                                    "be logged out when they move to green")
    assert "do not share data_dir/sessions, the database name or database.secret" in \
        result.detail
    assert "WARNING" in report.detail()
    assert report.sessions_shared is False


async def test_another_database_secret_is_not_shared_either(tmp_path: Path) -> None:
    report = await sessions(tmp_path, "17.0", "17.0", shared=True, secrets=("one", "two"))
    assert report.sessions_shared is False
    assert report.results[0].status == "warn"


async def test_require_fails_the_preflight(tmp_path: Path) -> None:
    report = await sessions(tmp_path, "17.0", "17.0", shared=False, mode="require")
    assert not report.ok
    assert report.results[0].status == "failed"
    assert report.sessions_shared is False


async def test_17_to_18_names_the_session_format_change(tmp_path: Path) -> None:
    report = await sessions(tmp_path, "17.0", "18.0", shared=True)
    [result] = report.results
    assert report.sessions_shared is False
    assert "Odoo 17.0 -> 18.0: the session format changed in 18" in result.detail


async def test_going_back_19_to_18_says_who_is_logged_out(tmp_path: Path) -> None:
    report = await sessions(tmp_path, "19.0", "18.0", shared=True)
    assert report.sessions_shared is False
    assert "going back from 19.0 to 18.0 logs out the users who logged in on 19.0" in \
        report.results[0].detail


async def test_with_only_an_api_key_it_is_skipped_with_a_warning(tmp_path: Path) -> None:
    report = await sessions(tmp_path, "17.0", "17.0", shared=True,
                            creds=Credentials("odoo", SMOKE_LOGIN, api_key=SMOKE_KEY))
    [result] = report.results
    assert report.ok and result.status == "warn"
    assert result.detail == ("skipped: it logs in with a password and credentials_file has "
                             "only an API key")
    assert report.sessions_shared is None


async def test_off_skips_it(tmp_path: Path) -> None:
    report = await sessions(tmp_path, "17.0", "17.0", shared=False, mode="off")
    assert report.ok and report.results[0].status == "skipped"
    assert report.sessions_shared is None
