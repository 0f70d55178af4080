"""The proxy's own health checks count: a candidate HAProxy marks DOWN gets no traffic whatever
its weight, so the daemon must not advance onto it, must not pass preflight with it, and must
say why. The end-to-end tests fail HAProxy's check of the candidate only (its `check-port`
points at a closed port through the runtime API), while the candidate itself stays healthy for
the daemon's own probes: only the proxy's view can explain the hold.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.polling import until
from watchdog.config import SiteConfig
from watchdog.lab.haproxy import runtime_api
from watchdog.lab.load import LoadClient
from watchdog.lab.procs import free_port
from watchdog.lab.stack import LabStack
from watchdog.metrics import Metrics
from watchdog.preflight import run as run_preflight
from watchdog.rollout import Phase, Rollout, Step
from watchdog.routers import ServerHealth
from watchdog.routers.haproxy import parse_stat_typed
from watchdog.rules import State
from watchdog.siterouter import PROXY_RULE, SiteRouter
from watchdog.store import Store

SITE = "/api/v1/sites/odoo"
HOLD = 6.0  # the first step's: longer than HAProxy takes to call a server DOWN (3 checks, 1 s)

TYPED = """\
F.2.0.0.pxname.1:KNS:str:odoo
F.2.0.17.status.1:SGP:str:OPEN
S.3.1.0.pxname.1:KNS:str:odoo
S.3.1.1.svname.1:KNS:str:odoo-blue
S.3.1.17.status.1:SGP:str:UP
S.3.1.36.check_status.1:MOP:str:L7OK
S.3.1.37.check_code.1:MOP:u32:200
S.3.2.0.pxname.1:KNS:str:odoo
S.3.2.1.svname.1:KNS:str:odoo-green
S.3.2.17.status.1:SGP:str:DOWN
S.3.2.36.check_status.1:MOP:str:L7STS
S.3.2.37.check_code.1:MOP:u32:500
S.3.2.56.last_chk.1:MOP:str:Internal Server Error: a:b, c
S.4.1.0.pxname.1:KNS:str:static
S.4.1.1.svname.1:KNS:str:odoo-green
S.4.1.17.status.1:SGP:str:no check
"""


def test_stat_typed_rows_keep_values_with_colons_and_commas_whole() -> None:
    rows = parse_stat_typed(TYPED)
    assert len(rows) == 3
    green = next(r for r in rows if r["pxname"] == "odoo" and r["svname"] == "odoo-green")
    assert green == {"pxname": "odoo", "svname": "odoo-green", "status": "DOWN",
                     "check_status": "L7STS", "check_code": "500",
                     "last_chk": "Internal Server Error: a:b, c"}


@pytest.mark.parametrize(("state", "down"), [
    ("DOWN", True), ("DOWN 1/2", True), ("UP", False), ("UP 1/3", False), ("MAINT", False),
    ("DRAIN", False), ("no check", False)])
def test_only_a_failing_check_counts_as_down(state: str, down: bool) -> None:
    assert ServerHealth(state).down is down


def rollout() -> Rollout:
    return Rollout("r1", "blue", "green", "", "canary", (Step(100),), 0.0, 0.0,
                   Phase.PREFLIGHT, 0.0)


async def test_preflight_fails_on_a_candidate_the_proxy_marks_down() -> None:
    site = SiteConfig.model_validate({
        "router": {"kind": "haproxy", "socket": "/nonexistent", "backend": "odoo"},
        "colors": {"blue": {"server": "b", "url": f"http://127.0.0.1:{free_port()}"},
                   "green": {"server": "g", "url": f"http://127.0.0.1:{free_port()}"}}})
    down = {"green": ServerHealth("DOWN", "L4CON: Connection refused")}
    result = await run_preflight(site, rollout(), down)
    assert not result.ok
    assert result.detail == "the proxy marks green DOWN (L4CON: Connection refused)"


def test_the_proxys_check_becomes_a_holding_rule_of_that_colour_only(tmp_path: Path) -> None:
    class Fake:
        kind = "haproxy"

    router = SiteRouter("odoo", Fake(), Metrics(), Store(tmp_path / "state"))  # type: ignore[arg-type]
    router.health = {"green": ServerHealth("DOWN", "L7STS 500: Internal Server Error"),
                     "blue": ServerHealth("UP", "L7OK 200")}
    views = router.views("green")
    assert list(views) == [PROXY_RULE]
    assert views[PROXY_RULE].state is State.HOLDING
    assert views[PROXY_RULE].detail == "haproxy marks green DOWN (L7STS 500: Internal Server Error)"
    assert router.views("blue") == {}
    router.health = {"green": ServerHealth("MAINT")}
    assert router.views("green") == {}


# ------------------------------------------------------------------ with the real HAProxy


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[LabStack]:
    stack = LabStack(tmp_path / "lab", steps=[{"weight": 10, "hold": f"{HOLD:g}s"},
                                              {"weight": 50, "hold": "1s"}, {"weight": 100}],
                     bake="1h")
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def fail_check(lab: LabStack, color: str, port: int) -> None:
    assert lab.haproxy is not None
    answer = runtime_api(lab.haproxy.admin_socket,
                         f"set server odoo/odoo-{color} check-port {port}")
    assert answer.strip() == "", answer


async def site(lab: LabStack) -> dict[str, Any]:
    return await asyncio.to_thread(lab.site)


async def proxy_state(lab: LabStack, color: str, state: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        view = await site(lab)
        seen = view["router"]["servers"].get(color, {})
        return view if seen.get("state") == state else None

    return await until(probe, 15, f"the proxy reports {color} {state}", every=0.2)


async def test_a_candidate_the_proxy_marks_down_fails_preflight(lab: LabStack) -> None:
    fail_check(lab, "green", free_port())  # nothing listens there: L4CON
    await proxy_state(lab, "green", "DOWN")
    await asyncio.to_thread(lab.client().post, f"{SITE}/rollouts", {"to": "green"})

    async def aborted() -> dict[str, Any] | None:
        view = await site(lab)
        return view if view["phase"] == "aborted" else None

    view = await until(aborted, 10, "preflight aborted", every=0.1)
    assert view["rollout"]["reason"].startswith("preflight failed: the proxy marks green DOWN")
    assert "L4CON" in view["rollout"]["reason"]
    assert view["weights"] == {"blue": 100, "green": 0}


async def test_a_candidate_the_proxy_marks_down_holds_the_rollout_and_the_hold_says_why(
    lab: LabStack,
) -> None:
    async with LoadClient(lab.proxy_url, "/web/login", concurrency=2, max_seconds=120,
                          delay=0.02) as load:
        await load.wait_count(20)
        await asyncio.to_thread(lab.client().post, f"{SITE}/rollouts", {"to": "green"})

        async def at_step(step: int) -> dict[str, Any] | None:
            view = await site(lab)
            ro = view["rollout"]
            return view if view["phase"] == "progressing" and ro and ro["step"] == step \
                else None

        view = await until(lambda: at_step(1), 15, "step 1", every=0.05)
        hold_ends = view["rollout"]["step_started"] + HOLD
        checked = lab.green.port
        fail_check(lab, "green", free_port())
        await proxy_state(lab, "green", "DOWN")
        assert time.time() < hold_ends, "HAProxy took longer than the hold to see green DOWN"
        # Well past the hold, with green's own probes passing: the proxy's view holds it.
        while time.time() < hold_ends + 4:
            view = await site(lab)
            assert view["phase"] == "progressing" and view["rollout"]["step"] == 1, view["phase"]
            await asyncio.sleep(0.5)
        proxy = next(r for r in view["rules"] if r["name"] == PROXY_RULE)
        assert proxy["state"] == "holding" and proxy["color"] == "green"
        assert proxy["detail"].startswith("haproxy marks green DOWN")
        health = next(r for r in view["rules"] if r["name"] == "health" and r["color"] == "green")
        assert health["state"] == "ok"  # the colour itself answers: only the proxy says no

        fail_check(lab, "green", checked)  # the check passes again
        await until(lambda: at_step(2), 20, "step 2 once the proxy sees green up", every=0.1)
