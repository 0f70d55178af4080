"""The smoke checks a candidate passes before it gets traffic, against the real stand-in."""

from __future__ import annotations

import pytest

from watchdog.lab.procs import free_port
from watchdog.lab.standin import StandinProcess, set_faults
from watchdog.odoo import smoke

pytestmark = pytest.mark.lab


async def test_health_login_and_rpc_pass_on_a_healthy_colour(green: StandinProcess) -> None:
    ok, detail = await smoke(green.url, ["health", "login", "rpc"])
    assert ok, detail
    # the series from server_version_info, and the build's server_version
    assert detail == "/web/health pass, /web/login 200, XML-RPC version 17.0 (17.0-20250225)"


@pytest.mark.parametrize(("fault", "check", "message"), [
    ({"down": True}, "health", "/web/health answered 503"),
    ({"down": True}, "login", "/web/login answered 503"),
    ({"down": True}, "rpc", "/xmlrpc/2/common answered 503"),
    ({"error_rate": 1.0}, "rpc", "/xmlrpc/2/common answered 500"),
])
async def test_each_check_fails_with_what_went_wrong(
    green: StandinProcess, fault: dict[str, object], check: str, message: str
) -> None:
    set_faults(green.url, **fault)
    ok, detail = await smoke(green.url, [check])
    assert not ok
    assert detail == message


async def test_unreachable_colour_fails_every_check() -> None:
    ok, detail = await smoke(f"http://127.0.0.1:{free_port()}", ["health", "rpc"])
    assert not ok
    assert "/web/health unreachable" in detail and "/xmlrpc/2/common unreachable" in detail
