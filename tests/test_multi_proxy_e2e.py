"""A canary through two HAProxy nodes (`router.sockets`, DESIGN.md §15), with the daemon in this
process on a LabStack(haproxy_nodes=2): a node killed mid-step holds the rollout (`router:nodes`)
until it is back and has the split again; a node reloaded without its state file (its weights
back to haproxy.cfg's) gets the split back within two ticks, and the other node is not touched.

What each node has is read with the lab's own runtime-API reader, never the daemon's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.polling import until
from watchdog.config import load
from watchdog.daemon import Daemon
from watchdog.lab.haproxy import HaproxyLab, colour_servers, runtime_api
from watchdog.lab.stack import LabStack, health_rules
from watchdog.rollout import Start
from watchdog.siterouter import NODE_BACK, NODE_DOWN, NODES_RULE

pytestmark = pytest.mark.lab

INTERVAL = 0.3
HOLD = 2.0  # step 1's
RULES = health_rules()


def split_of(node: HaproxyLab) -> dict[str, int]:
    return {c: s["weight"] for c, s in colour_servers(node.admin_socket).items()}


def make_lab(workdir: Path, steps: list[Any]) -> LabStack:
    lab = LabStack(workdir, interval=f"{INTERVAL:g}s", steps=steps, bake="1s",
                   prometheus=False, rules=RULES, haproxy_nodes=2)
    lab.start(daemon=False)
    config = yaml.safe_load(lab.config_path.read_text())
    config["sites"]["odoo"]["router"]["node_deadline"] = "1s"
    lab.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return lab


@pytest.fixture
def lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LabStack]:
    stack = make_lab(tmp_path / "lab", request.param)
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
async def daemon(lab: LabStack) -> AsyncIterator[tuple[Daemon, list[tuple[str, str]]]]:
    """The daemon, with its site router's alerts collected (what the daemon's notifier would
    post: `on_alert`)."""
    d = Daemon(load(lab.config_path))
    await d.start()
    alerts: list[tuple[str, str]] = []
    d.sites["odoo"].router.on_alert = lambda kind, text: alerts.append((kind, text))
    try:
        yield d, alerts
    finally:
        await d.stop()


async def at(d: Daemon, phase: str, step: int | None, timeout: float) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        view = await d.site_view("odoo")
        ro = view["rollout"]
        if view["phase"] == phase and (step is None or (ro and ro["step"] == step)):
            return view
        return None

    return await until(probe, timeout, f"{phase} at step {step}", every=0.05)


@pytest.mark.parametrize("lab", [[{"weight": 10, "hold": f"{HOLD:g}s"},
                                  {"weight": 50, "hold": "1s"}, {"weight": 100}]],
                         indirect=True)
async def test_a_node_killed_mid_step_holds_the_rollout_until_it_is_back_with_the_split(
    lab: LabStack, daemon: tuple[Daemon, list[tuple[str, str]]]
) -> None:
    d, alerts = daemon
    a, b = lab.haproxies
    await d.command("odoo", Start("green", id="multi1"))
    view = await at(d, "progressing", 1, 15)
    canary = {"blue": 90, "green": 10}
    assert [split_of(a), split_of(b)] == [canary, canary]
    hold_ends = view["rollout"]["step_started"] + HOLD

    b.kill()  # the crash case
    b.state_file.unlink()  # and it comes back as a fresh host: haproxy.cfg's weights
    runtime = d.sites["odoo"]
    while time.time() < hold_ends + 2.0:  # well past the hold, and past node_deadline
        view = await d.site_view("odoo")
        assert (view["phase"], view["rollout"]["step"]) == ("progressing", 1)
        await asyncio.sleep(0.1)
    hold = next(r for r in view["rules"] if r["name"] == NODES_RULE)
    assert hold["state"] == "holding"
    assert f"{b.admin_socket} failed: cannot connect" in hold["detail"]
    assert str(a.admin_socket) not in hold["detail"]
    nodes = {row["node"]: row for row in runtime.router.node_views() or []}
    assert nodes[str(a.admin_socket)]["ok"] and nodes[str(a.admin_socket)]["weights"] == canary
    assert not nodes[str(b.admin_socket)]["ok"]
    assert nodes[str(b.admin_socket)]["since"] >= 1.0
    assert [kind for kind, _ in alerts] == [NODE_DOWN]
    assert split_of(a) == canary

    await asyncio.to_thread(b.start)
    await at(d, "progressing", 2, 10)
    assert [split_of(a), split_of(b)] == [{"blue": 50, "green": 50}] * 2
    await at(d, "promoted", None, 15)
    assert [split_of(a), split_of(b)] == [{"blue": 0, "green": 100}] * 2
    assert [kind for kind, _ in alerts] == [NODE_DOWN, NODE_BACK]
    events = await asyncio.to_thread(d.store.events, "odoo", 100)
    kinds = [e["kind"] for e in events]
    assert kinds.count(NODE_DOWN) == 1 and kinds.count(NODE_BACK) == 1
    # before it advanced, the node back got the step's split from the daemon
    restored = next(e for e in events if e["kind"] == "drift"
                    and f"{b.admin_socket} reports blue=100,green=0" in e["message"])
    assert kinds.index(NODE_DOWN) < events.index(restored) < kinds.index(NODE_BACK)
    step2 = next(i for i, e in enumerate(events) if e["kind"] == "step"
                 and e["message"].startswith("step 2/3"))
    assert events.index(restored) < step2


@pytest.mark.parametrize("lab", [[{"weight": 10, "hold": "1h"}, {"weight": 100}]],
                         indirect=True)
async def test_a_node_reloaded_without_its_state_gets_the_split_back_within_two_ticks(
    lab: LabStack, daemon: tuple[Daemon, list[tuple[str, str]]]
) -> None:
    d, alerts = daemon
    a, b = lab.haproxies
    await d.command("odoo", Start("green", id="multi2"))
    await at(d, "progressing", 1, 15)
    canary = {"blue": 90, "green": 10}
    # node a in HAProxy's own scale: the same split, so a daemon that touched it would
    # leave 90/10 there
    answer = runtime_api(a.admin_socket, "set server odoo/odoo-blue weight 180; "
                         "set server odoo/odoo-green weight 20")
    assert answer.strip() == "", answer
    runtime = d.sites["odoo"]
    seen = runtime.ticks

    async def ticked() -> bool | None:
        return True if runtime.ticks > seen else None

    await until(ticked, 5, "a tick after node a's change")
    b.state_file.unlink()
    await asyncio.to_thread(b.reload)
    ticks, started = runtime.ticks, time.monotonic()
    assert split_of(b) == {"blue": 100, "green": 0}  # the reload reset it

    async def restored() -> bool | None:
        return True if split_of(b) == canary else None

    await until(restored, 5, "node b has the split again", every=0.02)
    took, ticks_taken = time.monotonic() - started, runtime.ticks - ticks
    assert ticks_taken <= 2, f"restored after {ticks_taken} ticks ({took:.2f}s)"
    assert split_of(a) == {"blue": 180, "green": 20}
    view = await d.site_view("odoo")
    assert (view["phase"], view["rollout"]["step"]) == ("progressing", 1)
    assert alerts == []  # back long before node_deadline
    print(f"node b restored {took * 1000:.0f} ms after its reload ({ticks_taken} ticks "
          f"completed in between, interval {INTERVAL:g}s)")
