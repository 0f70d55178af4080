"""The HAProxy router against a real HAProxy 2.6 in front of two real Odoo stand-ins."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from watchdog.config import SiteConfig
from watchdog.lab.haproxy import HaproxyLab, colour_servers
from watchdog.lab.load import LoadClient
from watchdog.routers import RouterError, WeightsError, create
from watchdog.routers.haproxy import HaproxyRouter

pytestmark = pytest.mark.lab

STEPS = [(100, 0), (90, 10), (50, 50), (0, 100), (100, 0)]


def site(lab: HaproxyLab, **router: Any) -> SiteConfig:
    spec = {"kind": "haproxy", "socket": str(lab.admin_socket), "backend": "odoo",
            "state_file": str(lab.state_file), "drain_timeout": "1s", **router}
    return SiteConfig.model_validate({
        "router": spec,
        "colors": {
            "blue": {"server": "odoo-blue", "url": f"http://127.0.0.1:{lab.blue_port}"},
            "green": {"server": "odoo-green", "url": f"http://127.0.0.1:{lab.green_port}"},
        },
    })


@pytest.fixture
async def router(haproxy: HaproxyLab) -> AsyncIterator[HaproxyRouter]:
    r = create("odoo", site(haproxy))
    assert isinstance(r, HaproxyRouter)
    await r.set_weights({"blue": 100, "green": 0})
    yield r
    await r.close()


async def test_split_moves_step_by_step_without_dropping_a_request(
    router: HaproxyRouter, haproxy: HaproxyLab
) -> None:
    assert len(STEPS) >= 3 and (0, 100) in STEPS  # a canary split and a full switch
    async with LoadClient(haproxy.url, concurrency=8) as load:
        await load.wait_count(200)
        first = load.mark()
        for blue, green in STEPS:
            wanted = {"blue": blue, "green": green}
            assert await router.set_weights(wanted) == wanted
            assert await router.get_weights() == wanted
            start = load.mark()
            await load.wait_count(1000)
            window = load.window(start)
            assert window.total >= 1000
            assert abs(window.share("blue") - blue) <= 5, (wanted, window.by_color)
            assert abs(window.share("green") - green) <= 5, (wanted, window.by_color)
        whole = load.window(first)
    assert whole.failed == [], whole.failed[:5]


async def test_haproxy_reload_keeps_the_split(router: HaproxyRouter, haproxy: HaproxyLab) -> None:
    await router.set_weights({"blue": 70, "green": 30})
    assert "odoo-green" in haproxy.state_file.read_text()
    await asyncio.to_thread(haproxy.reload)
    assert await router.get_weights() == {"blue": 70, "green": 30}
    async with LoadClient(haproxy.url, concurrency=8) as load:
        await load.wait_count(1000)
        window = load.window(0)
    assert abs(window.share("green") - 30) <= 5
    assert window.failed == []


async def test_rollback_puts_the_zero_colour_in_maint_so_sticky_users_move(
    router: HaproxyRouter, haproxy: HaproxyLab
) -> None:
    await router.set_weights({"blue": 0, "green": 100})  # a user gets the blue cookie first
    await router.set_weights({"blue": 100, "green": 0})
    states = await router.server_states()
    assert not states["blue"].in_maint
    assert states["green"].in_maint
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        async with session.get(haproxy.url + "/web/health",
                               headers={"Cookie": "SERVERID=green"}) as resp:
            assert resp.headers["X-Odoo-Color"] == "blue"  # maint: the cookie no longer binds


async def test_promotion_drains_then_maints_the_colour_given_up(
    router: HaproxyRouter, haproxy: HaproxyLab
) -> None:
    await router.set_weights({"blue": 0, "green": 100}, drain=True)
    states = await router.server_states()
    assert states["blue"].draining and not states["blue"].in_maint
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        async def color(cookie: str | None) -> str:
            headers = {"Cookie": f"SERVERID={cookie}"} if cookie else {}
            async with session.get(haproxy.url + "/web/health", headers=headers) as resp:
                return resp.headers["X-Odoo-Color"]

        assert await color("blue") == "blue"  # a sticky user finishes on blue while draining
        assert await color(None) == "green"  # new users go to green
        await asyncio.sleep(1.5)  # drain_timeout is 1s in this site
        assert (await router.server_states())["blue"].in_maint
        assert await color("blue") == "green"
    assert await router.get_weights() == {"blue": 0, "green": 100}


async def test_a_new_switch_cancels_a_pending_drain(router: HaproxyRouter) -> None:
    await router.set_weights({"blue": 0, "green": 100}, drain=True)
    await router.set_weights({"blue": 50, "green": 50})
    await asyncio.sleep(1.5)
    states = await router.server_states()
    assert not states["blue"].in_maint
    assert await router.get_weights() == {"blue": 50, "green": 50}


async def test_tcp_stats_socket_works_like_the_unix_one(
    router: HaproxyRouter, haproxy: HaproxyLab
) -> None:
    await router.set_weights({"blue": 80, "green": 20})
    tcp = create("odoo", site(haproxy, socket=haproxy.tcp_socket))
    assert await tcp.get_weights() == {"blue": 80, "green": 20}
    await tcp.check()


async def test_check_passes_on_an_admin_socket_and_changes_nothing(
    router: HaproxyRouter, haproxy: HaproxyLab
) -> None:
    before = colour_servers(haproxy.admin_socket)
    await router.check()  # raises RouterError on any problem
    assert colour_servers(haproxy.admin_socket) == before
    assert await router.get_weights() == {"blue": 100, "green": 0}


# ------------------------------------------------------------------ bad input


async def assert_unchanged(router: HaproxyRouter, weights: dict[str, int]) -> None:
    assert await router.get_weights() == weights


async def test_wrong_server_name_is_a_clear_error_and_traffic_keeps_its_split(
    router: HaproxyRouter, haproxy: HaproxyLab
) -> None:
    await router.set_weights({"blue": 90, "green": 10})
    spec = site(haproxy).model_dump(mode="json")
    spec["colors"]["green"]["server"] = "odoo-grene"
    wrong = create("odoo", SiteConfig.model_validate(spec))
    with pytest.raises(RouterError, match="HAProxy backend odoo has no server odoo-grene"):
        await wrong.set_weights({"blue": 50, "green": 50})
    with pytest.raises(RouterError, match="has no server odoo-grene"):
        await wrong.check()
    await assert_unchanged(router, {"blue": 90, "green": 10})


async def test_wrong_backend_is_a_clear_error(router: HaproxyRouter, haproxy: HaproxyLab) -> None:
    wrong = create("odoo", site(haproxy, backend="odo"))
    with pytest.raises(RouterError, match="HAProxy has no backend odo"):
        await wrong.get_weights()


async def test_unreachable_socket_is_a_clear_error(haproxy: HaproxyLab, tmp_path: Path) -> None:
    gone = create("odoo", site(haproxy, socket=str(tmp_path / "nope.sock")))
    with pytest.raises(RouterError, match=r"cannot connect to HAProxy runtime API .*nope\.sock"):
        await gone.set_weights({"blue": 50, "green": 50})


async def test_non_admin_socket_is_refused_with_the_fix(
    router: HaproxyRouter, haproxy: HaproxyLab
) -> None:
    await router.set_weights({"blue": 100, "green": 0})
    user = create("odoo", site(haproxy, socket=str(haproxy.user_socket)))
    with pytest.raises(RouterError, match="not at level admin"):
        await user.set_weights({"blue": 50, "green": 50})
    with pytest.raises(RouterError, match="is at level 'user'"):
        await user.check()
    await assert_unchanged(router, {"blue": 100, "green": 0})


@pytest.mark.parametrize(
    ("weights", "message"),
    [({"blue": 50, "green": 49}, "must sum to 100"),
     ({"blue": 101, "green": -1}, "between 0 and 100"),
     ({"blue": 50, "red": 50}, "unknown colour 'red'"),
     ({"blue": 50.5, "green": 49.5}, "whole number")],
)
async def test_bad_weights_are_refused_before_haproxy_is_touched(
    router: HaproxyRouter, weights: dict[str, Any], message: str
) -> None:
    await router.set_weights({"blue": 60, "green": 40})
    with pytest.raises(WeightsError, match=message):
        await router.set_weights(weights)
    await assert_unchanged(router, {"blue": 60, "green": 40})


async def test_static_balance_algorithm_is_named(haproxy: HaproxyLab) -> None:
    spec = site(haproxy, backend="static").model_dump(mode="json")
    spec["colors"]["blue"]["server"] = "static-a"
    spec["colors"]["green"]["server"] = "static-b"
    static = create("odoo", SiteConfig.model_validate(spec))
    with pytest.raises(RouterError, match="backend static uses a static balance algorithm"):
        await static.set_weights({"blue": 90, "green": 10})
