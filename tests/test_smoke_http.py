"""The `latency` and named `http` smoke checks against a stand-in."""

from __future__ import annotations

import pytest

from tests.test_smoke_lab import new_session, site_config, standin
from watchdog.config import HttpCheck, LatencySettings
from watchdog.lab.standin import aset_faults
from watchdog.smoke import run_smoke
from watchdog.smoke_http import nearest_rank, run_http, run_latency

pytestmark = pytest.mark.lab


def test_nearest_rank_p95() -> None:
    assert nearest_rank([float(i) for i in range(1, 21)]) == 19.0  # ceil(0.95 * 20) = 19th
    assert nearest_rank([float(i) for i in range(1, 11)]) == 10.0  # ceil(9.5) = 10th
    assert nearest_rank([3.0]) == 3.0


async def test_latency_under_its_threshold_passes() -> None:
    async with standin() as lab, new_session() as session:
        ok, detail = await run_latency(session, lab.url, LatencySettings(requests=20))
    assert ok, detail
    assert detail.endswith(" < 500 ms over 20 GET /web/login")


async def test_latency_over_its_threshold_fails_naming_the_p95_and_stops_early() -> None:
    async with standin() as lab, new_session() as session:
        await aset_faults(session, lab.url, latency=0.06)
        settings = LatencySettings.model_validate({"requests": 20, "p95": "50ms"})
        ok, detail = await run_latency(session, lab.url, settings)
    assert not ok
    # 20 requests: one slow one is allowed (the 19th of 20 is the p95), the second ends it.
    assert detail.startswith("p95 at least ")
    assert "over GET /web/login, not under 50 ms, stopped after 2 of 20" in detail
    shown = int(detail.removeprefix("p95 at least ").split(" ms")[0])
    assert shown >= 50


async def test_latency_a_5xx_fails_it() -> None:
    async with standin() as lab, new_session() as session:
        await aset_faults(session, lab.url, down=True)
        ok, detail = await run_latency(session, lab.url, LatencySettings(requests=5))
    assert not ok
    assert detail == "GET /web/login 1 of 5 answered 503"


@pytest.mark.parametrize(("check", "ok", "detail"), [
    ({"name": "login_page", "path": "/web/login", "body": "oe_login_form"}, True,
     "GET /web/login answered 200 with 'oe_login_form'"),
    ({"name": "hidden", "path": "/web/nothing-here", "status": [403, 404]}, True,
     "GET /web/nothing-here answered 404"),
    ({"name": "gone", "path": "/web/nothing-here"}, False,
     "GET /web/nothing-here answered 404, not 200"),
    ({"name": "text", "path": "/web/login", "body": "no such text"}, False,
     "GET /web/login answered 200 without 'no such text'"),
])
async def test_http_checks(check: dict[str, object], ok: bool, detail: str) -> None:
    async with standin() as lab, new_session() as session:
        got = await run_http(session, lab.url, HttpCheck.model_validate(check))
    assert got == (ok, detail)


async def test_each_http_check_is_reported_under_its_name() -> None:
    async with standin() as lab:
        site = site_config(lab.url, lab.url, ["health", "http", "latency"], http=[
            {"name": "login_page", "path": "/web/login", "body": "oe_login_form"},
            {"name": "db_manager_hidden", "path": "/web/nothing-here", "status": [200]}],
            latency={"requests": 3})
        report = await run_smoke(site, "blue", "green", "r1")
    names = [(r.name, r.status) for r in report.results]
    assert names == [("health", "ok"), ("login_page", "ok"), ("db_manager_hidden", "failed"),
                     ("latency", "ok")]
    assert not report.ok
    assert "db_manager_hidden FAILED " in report.detail()
    assert all(r.seconds > 0 for r in report.results)
