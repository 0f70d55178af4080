"""Several HAProxy nodes in front of one site (`router.sockets`, DESIGN.md §15): two real
HAProxy 2.6 processes on loopback in front of the same two stand-ins.

What each node really has is read with the lab's own runtime-API reader (`colour_servers`),
never with the router under test.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from watchdog.config import SiteConfig
from watchdog.lab.haproxy import HaproxyLab, colour_servers, runtime_api
from watchdog.lab.standin import StandinProcess
from watchdog.metrics import Metrics
from watchdog.rollout import initial
from watchdog.routers import MultiRouter, NodesDisagree, RouterError, create
from watchdog.routers.haproxy import HaproxyRouter
from watchdog.rules import State
from watchdog.siterouter import NODE_BACK, NODE_DOWN, NODES_RULE, SiteRouter
from watchdog.store import Store
from watchdog.views import SiteSnapshot, site_view

pytestmark = pytest.mark.lab

SPLIT = {"blue": 90, "green": 10}


def site_config(sockets: list[str], state_files: list[Path] | None = None,
                **router: Any) -> SiteConfig:
    spec: dict[str, Any] = {"kind": "haproxy", "sockets": sockets, "backend": "odoo",
                            "drain_timeout": "1s", **router}
    if state_files is not None:
        spec["state_files"] = [str(p) for p in state_files]
    return SiteConfig.model_validate({
        "router": spec,
        "colors": {"blue": {"server": "odoo-blue", "url": "http://127.0.0.1:1"},
                   "green": {"server": "odoo-green", "url": "http://127.0.0.1:2"}}})


# ------------------------------------------------------------------ the config


def test_socket_alone_is_one_haproxy_as_before() -> None:
    site = SiteConfig.model_validate({
        "router": {"kind": "haproxy", "socket": "/run/haproxy/admin.sock", "backend": "odoo"},
        "colors": {"blue": {"server": "b", "url": "http://127.0.0.1:1"},
                   "green": {"server": "g", "url": "http://127.0.0.1:2"}}})
    assert isinstance(create("odoo", site), HaproxyRouter)


@pytest.mark.parametrize(("router", "message"), [
    ({}, "give exactly one of socket"),
    ({"socket": "/a.sock", "sockets": ["/b.sock"]}, "give exactly one of socket"),
    ({"sockets": []}, "at least 1"),
    ({"sockets": [f"/{i}.sock" for i in range(17)]}, "at most 16"),
    ({"sockets": ["/a.sock", "/b.sock", "/a.sock"]}, "sockets names /a.sock more than once"),
    ({"sockets": ["/a.sock", "/b.sock"], "state_files": ["/a.state"]},
     "state_files has 1 entries and sockets 2"),
    ({"sockets": ["/a.sock", "/b.sock"], "state_files": ["/s", "/s"]},
     "state_files names /s more than once"),
    ({"sockets": ["/a.sock"], "state_file": "/a.state"}, "give state_files"),
    ({"socket": "/a.sock", "state_files": ["/a.state"]}, "state_files goes with sockets"),
])
def test_sockets_are_checked(router: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SiteConfig.model_validate({
            "router": {"kind": "haproxy", "backend": "odoo", **router},
            "colors": {"blue": {"server": "b", "url": "http://127.0.0.1:1"},
                       "green": {"server": "g", "url": "http://127.0.0.1:2"}}})


def test_sockets_make_one_router_per_node_with_its_own_state_file() -> None:
    router = create("odoo", site_config(["/a.sock", "/b.sock"], [Path("/a"), Path("/b")],
                                        node_deadline="5s"))
    assert isinstance(router, MultiRouter)
    assert router.node_deadline == 5.0
    nodes = list(router.routers.values())
    assert all(isinstance(n, HaproxyRouter) for n in nodes)
    assert [(n.socket, n.state_file) for n in nodes  # type: ignore[attr-defined]
            ] == [("/a.sock", Path("/a")), ("/b.sock", Path("/b"))]


# ------------------------------------------------------------------ two real nodes


@pytest.fixture
def nodes(tmp_path: Path, standins: tuple[StandinProcess, ...]) -> Iterator[list[HaproxyLab]]:
    blue, green = standins
    labs = [HaproxyLab(tmp_path / name, blue.port, green.port) for name in ("a", "b")]
    try:
        for lab in labs:
            lab.start()
        yield labs
    finally:
        for lab in labs:
            lab.stop()


@pytest.fixture
async def multi(nodes: list[HaproxyLab]) -> AsyncIterator[MultiRouter]:
    router = create("odoo", site_config([str(n.admin_socket) for n in nodes],
                                        [n.state_file for n in nodes]))
    assert isinstance(router, MultiRouter)
    yield router
    await router.close()


def split_of(lab: HaproxyLab) -> dict[str, int]:
    """The weight in force on each colour of one node, as HAProxy itself prints it."""
    return {c: s["weight"] for c, s in colour_servers(lab.admin_socket).items()}


async def test_a_split_is_applied_to_every_node_and_read_back_from_each(
    multi: MultiRouter, nodes: list[HaproxyLab]
) -> None:
    assert await multi.set_weights(SPLIT) == SPLIT
    assert [split_of(n) for n in nodes] == [SPLIT, SPLIT]
    assert await multi.get_weights() == SPLIT
    assert [(n.ok, n.weights, n.error) for n in multi.nodes()] == [(True, SPLIT, None)] * 2
    # each node's state file holds that node's split, so its own reload keeps it
    for lab in nodes:
        assert "odoo-green" in lab.state_file.read_text()
    await asyncio.to_thread(nodes[1].reload)
    assert split_of(nodes[1]) == SPLIT
    assert await multi.get_weights() == SPLIT


async def test_a_node_gone_is_named_the_others_are_set_and_the_split_is_not_agreed(
    multi: MultiRouter, nodes: list[HaproxyLab]
) -> None:
    a, b = nodes
    await multi.set_weights({"blue": 100, "green": 0})
    b.stop()
    with pytest.raises(RouterError) as err:
        await multi.set_weights(SPLIT)
    assert f"blue=90,green=10 is set on 1 of 2 haproxy nodes; not on {b.admin_socket}" \
        in str(err.value)
    assert "cannot connect to HAProxy runtime API" in str(err.value)
    assert split_of(a) == SPLIT  # the node that answers has it
    status = {n.socket: n for n in multi.nodes()}
    assert status[str(a.admin_socket)].ok and status[str(a.admin_socket)].weights == SPLIT
    assert not status[str(b.admin_socket)].ok
    assert status[str(b.admin_socket)].weights is None
    with pytest.raises(NodesDisagree, match=f"{b.admin_socket}: cannot connect"):
        await multi.get_weights()


async def test_a_node_that_hangs_costs_its_timeout_once_not_per_node(
    nodes: list[HaproxyLab], tmp_path: Path
) -> None:
    hung = tmp_path / "hung.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(hung))
        listener.listen(8)  # accepts in the kernel, never answers
        router = create("odoo", site_config(
            [str(nodes[0].admin_socket), str(hung), str(nodes[1].admin_socket)],
            timeout="500ms"))
        started = time.monotonic()
        with pytest.raises(RouterError, match=r"hung\.sock: no answer in 0\.5s"):
            await router.set_weights(SPLIT)
        took = time.monotonic() - started
        await router.close()
    assert [split_of(n) for n in nodes] == [SPLIT, SPLIT]
    assert took < 1.4, f"the nodes were not set in parallel: {took:.2f}s"


async def test_health_is_the_worst_of_the_nodes(
    multi: MultiRouter, nodes: list[HaproxyLab]
) -> None:
    await multi.set_weights(SPLIT)
    answer = runtime_api(nodes[1].admin_socket, "set server odoo/odoo-green health down")
    assert answer.strip() == "", answer
    health = await multi.health()
    assert not health["blue"].down
    assert health["green"].down
    assert str(nodes[1].admin_socket) in health["green"].check
    assert str(nodes[0].admin_socket) not in health["green"].check


# ------------------------------------------------------------------ the site's router


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "state")
    yield s
    s.close()


async def test_the_node_back_gets_the_split_again_and_only_it(
    multi: MultiRouter, nodes: list[HaproxyLab], store: Store
) -> None:
    a, b = nodes
    alerts: list[tuple[str, str]] = []
    metrics = Metrics()
    router = SiteRouter("odoo", multi, metrics, store,
                        on_alert=lambda kind, text: alerts.append((kind, text)))
    state = dataclasses.replace(initial("odoo", "blue"), weights=dict(SPLIT))
    await router.reconcile(state)
    assert [split_of(n) for n in nodes] == [SPLIT, SPLIT] and router.actual == SPLIT
    assert router.views("green") == {}

    b.stop()
    b.state_file.unlink()  # a fresh host: it comes back with haproxy.cfg's weights
    multi.node_deadline = 0.3
    await router.reconcile(state)
    hold = router.views("green")[NODES_RULE]
    assert hold.state is State.HOLDING
    assert hold.detail.startswith("1 of 2 haproxy nodes do not have blue=90,green=10: "
                                  f"{b.admin_socket} failed: cannot connect")
    assert router.actual is None and router.error is not None
    rows = {row["node"]: row for row in router.node_views() or []}
    assert rows[str(a.admin_socket)] == {"node": str(a.admin_socket), "ok": True,
                                         "weights": SPLIT, "error": None, "since": None}
    assert rows[str(b.admin_socket)]["ok"] is False
    assert rows[str(b.admin_socket)]["weights"] is None
    assert rows[str(b.admin_socket)]["since"] is not None
    up = metrics.registry.get_sample_value
    assert up("odoo_watchdog_router_node_up", {"site": "odoo", "node": str(b.admin_socket)}) == 0
    assert up("odoo_watchdog_router_node_weight",
              {"site": "odoo", "node": str(b.admin_socket), "color": "green"}) is None
    await asyncio.sleep(0.35)
    await router.reconcile(state)  # past the deadline: one alert
    await router.reconcile(state)  # and not again in the same episode
    assert [k for k, _ in alerts] == [NODE_DOWN]
    assert str(b.admin_socket) in alerts[0][1]

    # node a's weights are 180/20 in HAProxy's own scale: the same split, so a repair that
    # touched it would leave 90/10 there
    answer = runtime_api(a.admin_socket, "set server odoo/odoo-blue weight 180; "
                         "set server odoo/odoo-green weight 20")
    assert answer.strip() == "", answer
    b.start()
    assert split_of(b) == {"blue": 100, "green": 0}
    await router.reconcile(state)
    assert split_of(b) == SPLIT
    assert split_of(a) == {"blue": 180, "green": 20}
    assert router.actual == SPLIT and router.error is None
    assert router.views("green") == {}
    assert [k for k, _ in alerts] == [NODE_DOWN, NODE_BACK]
    assert up("odoo_watchdog_router_node_up", {"site": "odoo", "node": str(b.admin_socket)}) == 1
    assert up("odoo_watchdog_router_node_weight",
              {"site": "odoo", "node": str(b.admin_socket), "color": "green"}) == 10
    kinds = [e["kind"] for e in store.events("odoo")]
    assert kinds.count(NODE_DOWN) == 1 and kinds.count(NODE_BACK) == 1
    assert kinds.index(NODE_DOWN) < kinds.index(NODE_BACK)
    assert any(e["kind"] == "drift" and str(b.admin_socket) in e["message"]
               and str(a.admin_socket) not in e["message"] for e in store.events("odoo"))


async def test_a_node_that_drifted_is_put_back_and_the_view_shows_each_node(
    multi: MultiRouter, nodes: list[HaproxyLab], store: Store
) -> None:
    router = SiteRouter("odoo", multi, Metrics(), store)
    state = dataclasses.replace(initial("odoo", "blue"), weights=dict(SPLIT))
    await router.reconcile(state)
    runtime_api(nodes[0].admin_socket, "set server odoo/odoo-green weight 50")  # a person
    assert await router.read() is None  # the nodes disagree now
    assert router.views("blue")[NODES_RULE].detail.endswith(
        f"{nodes[0].admin_socket} reports blue=64,green=36, desired is blue=90,green=10")
    await router.reconcile(state, known=False)
    assert [split_of(n) for n in nodes] == [SPLIT, SPLIT]
    snap = SiteSnapshot("odoo", state, router.actual, router.kind, router.error, router.health,
                        (), (), (), None, 1.0, time.time(), nodes=router.node_views())
    view = site_view(snap)["router"]
    assert set(view) == {"kind", "error", "servers", "nodes"}
    assert [row["ok"] for row in view["nodes"]] == [True, True]
    assert [row["weights"] for row in view["nodes"]] == [SPLIT, SPLIT]
