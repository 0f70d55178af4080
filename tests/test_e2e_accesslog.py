"""HAProxy's real access logs reach the daemon (as a real process) and become its metrics."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.accesslog_helpers import lines_counted, requests_by_color
from watchdog.config import SiteConfig
from watchdog.lab.load import LoadClient
from watchdog.lab.stack import LabStack
from watchdog.routers import create

pytestmark = pytest.mark.lab


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[LabStack]:
    stack = LabStack(tmp_path, access_log=True)
    stack.start()
    yield stack
    stack.stop()


def scrape(lab: LabStack) -> str:
    with urllib.request.urlopen(f"{lab.api_url}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


async def settled_scrape(lab: LabStack, quiet: float = 0.5, timeout: float = 10) -> str:
    """A scrape once the received-lines counter has not moved for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    text = scrape(lab)
    last, since = lines_counted(text).get("received"), time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        text = scrape(lab)
        received = lines_counted(text).get("received")
        if received != last:
            last, since = received, time.monotonic()
    return text


async def test_daemon_counts_each_colours_requests_from_haproxy_logs(lab: LabStack) -> None:
    assert lab.haproxy is not None
    router = create("odoo", SiteConfig.model_validate({
        "router": {"kind": "haproxy", "socket": str(lab.haproxy.admin_socket), "backend": "odoo"},
        "colors": {"blue": {"server": "odoo-blue", "url": lab.blue.url},
                   "green": {"server": "odoo-green", "url": lab.green.url}},
    }))
    await router.set_weights({"blue": 70, "green": 30})  # behind the daemon's back...
    first = scrape(lab)
    before, lines_before = requests_by_color(first), lines_counted(first)
    async with LoadClient(lab.proxy_url, concurrency=4, max_requests=2000) as load:
        await load.wait_count(2000, timeout=60)
        sent = load.window(0).by_color
    last = await settled_scrape(lab)  # every line is on /metrics as soon as it is received
    after, lines_after = requests_by_color(last), lines_counted(last)
    seen = {c: after.get(c, 0.0) - before.get(c, 0.0) for c in ("blue", "green")}
    total = sum(sent.values())
    assert total >= 1900
    # ...the daemon puts its own split (blue 100) back within a tick, so both colours served.
    for color in ("blue", "green"):
        assert abs(seen[color] - sent[color]) <= max(2, 0.01 * total), (seen, sent)
    # the receiver's own counts on /metrics: a line for each request, and at most a few of
    # HAProxy's own messages (a weight or state change) that are not access-log lines
    received = lines_after["received"] - lines_before["received"]
    assert received >= sum(seen.values()), (lines_before, lines_after)
    assert lines_after["unparsed"] - lines_before["unparsed"] <= 2, (lines_before, lines_after)
    assert "odoo_watchdog_access_log_kernel_drops_total " in last
    await router.close()
