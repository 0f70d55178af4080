"""The http source against a real Odoo stand-in process."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from watchdog.config import DaemonConfig, HttpRule
from watchdog.lab.procs import free_port
from watchdog.lab.standin import StandinProcess, set_faults
from watchdog.measurement import Measurement
from watchdog.rules import Outcome, judge
from watchdog.sources import create, kinds, measure_all
from watchdog.sources.base import Target
from watchdog.sources.http import HttpSource

pytestmark = pytest.mark.lab


def rule(path: str = "/web/health", timeout: str = "2s") -> HttpRule:
    return HttpRule.model_validate(
        {"name": "health", "source": "http", "path": path, "timeout": timeout, "min": 1}
    )


def target(url: str) -> Target:
    return Target(site="odoo", color="green", server="odoo-green", backend="odoo", url=url,
                  interval=1.0)


async def measure(url: str, r: HttpRule) -> Measurement:
    source = HttpSource()
    try:
        return await source.measure(r, target(url))
    finally:
        await source.close()


async def test_healthy_colour_is_1_with_its_latency(green: StandinProcess) -> None:
    m = await measure(green.url, rule())
    assert m.value == 1.0
    assert m.latency is not None and 0 < m.latency < 1
    assert m.detail.startswith("HTTP 200 in ")
    assert judge(rule(), m) is Outcome.OK


async def test_down_colour_is_0_and_a_breach(green: StandinProcess) -> None:
    set_faults(green.url, down=True)
    m = await measure(green.url, rule())
    assert m.value == 0.0
    assert m.error is None  # down is what the rule measures, not a failure to measure
    assert m.detail.startswith("HTTP 503")
    assert judge(rule(), m) is Outcome.BREACH


async def test_slow_colour_is_0_after_the_rule_timeout(green: StandinProcess) -> None:
    set_faults(green.url, latency=2.0)
    start = time.monotonic()
    m = await measure(green.url, rule(timeout="300ms"))
    took = time.monotonic() - start
    assert m.value == 0.0
    assert m.detail == "no answer in 0.3s"
    assert took < 1.5


async def test_redirect_is_not_followed_and_not_healthy(green: StandinProcess) -> None:
    m = await measure(green.url, rule(path="/web"))  # 303 to /web/login without a session
    assert m.value == 0.0
    assert m.detail.startswith("HTTP 303")


async def test_unreachable_colour_is_0_with_the_reason() -> None:
    m = await measure(f"http://127.0.0.1:{free_port()}", rule())
    assert m.value == 0.0
    assert m.detail.startswith("cannot connect")


async def answering(reply: bytes, *, close: bool) -> tuple[asyncio.Server, str]:
    """A server that reads a request and writes `reply`, then closes or keeps the
    connection open (a server that ignores `Connection: close`)."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        if close:
            writer.close()
        else:
            await asyncio.sleep(30)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


@pytest.mark.parametrize(("reply", "close", "value", "detail"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", False, 1.0, "HTTP 200 in "),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
     False, 1.0, "HTTP 200 in "),
    (b"HTTP/1.0 500 Internal Server Error\r\n\r\nboom", True, 0.0, "HTTP 500 in "),
    (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", True, 0.0, "not an HTTP answer: 'SSH-2.0-OpenSSH_9.2'"),
    (b"", True, 0.0, "closed before answering"),
])
async def test_an_answer_ends_at_its_length_and_a_wrong_one_says_what_it_was(
    reply: bytes, close: bool, value: float, detail: str,
) -> None:
    """A kept-open connection still ends at the answer's length or last chunk: the probe
    does not wait for its timeout (2 s) when a server ignores `Connection: close`."""
    server, url = await answering(reply, close=close)
    try:
        start = time.monotonic()
        m = await measure(url, rule())
        took = time.monotonic() - start
    finally:
        server.close()
    assert (m.value, m.detail[:len(detail)]) == (value, detail)
    assert took < 1.0


async def test_stopped_standin_turns_the_probe_from_1_to_0(tmp_path: Path) -> None:
    proc = StandinProcess("blue", tmp_path)
    proc.start()
    try:
        assert (await measure(proc.url, rule())).value == 1.0
        proc.stop()
        assert (await measure(proc.url, rule())).value == 0.0
    finally:
        proc.stop()


def test_registry_maps_source_kinds_to_classes() -> None:
    config = DaemonConfig.model_validate({"sites": {"odoo": {
        "router": {"kind": "haproxy", "socket": "/run/haproxy.sock", "backend": "odoo"},
        "colors": {"blue": {"server": "b", "url": "http://127.0.0.1:1"},
                   "green": {"server": "g", "url": "http://127.0.0.1:2"}},
    }}})
    assert {"http", "prometheus"} <= set(kinds())
    assert isinstance(create("http", config), HttpSource)
    with pytest.raises(ValueError, match="no source of kind 'graphite'"):
        create("graphite", config)


class StuckSource:
    kind = "stuck"

    async def measure(self, rule: Any, target: Target) -> Measurement:
        await asyncio.sleep(60)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        return None


async def test_measure_all_bounds_a_stuck_source_and_keeps_the_others(
    green: StandinProcess,
) -> None:
    stuck_rule = rule().model_copy(update={"source": "stuck", "name": "stuck"})
    http = HttpSource()
    try:
        start = time.monotonic()
        results = await measure_all({"http": http, "stuck": StuckSource()},
                                    [rule(), stuck_rule], target(green.url), deadline=0.5)
    finally:
        await http.close()
    assert time.monotonic() - start < 2
    assert results[0].value == 1.0
    assert results[1].error == "stuck source gave no answer in 0.5s"
