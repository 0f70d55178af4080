"""HAProxy's real access logs reach the daemon (as a real process) and become its metrics."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

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


def requests_by_color(lab: LabStack) -> dict[str, float]:
    with urllib.request.urlopen(f"{lab.api_url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "odoo_watchdog_http_requests":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("site") == "odoo":
                color = sample.labels["color"]
                out[color] = out.get(color, 0.0) + sample.value
    return out


async def test_daemon_counts_each_colours_requests_from_haproxy_logs(lab: LabStack) -> None:
    assert lab.haproxy is not None
    router = create("odoo", SiteConfig.model_validate({
        "router": {"kind": "haproxy", "socket": str(lab.haproxy.admin_socket), "backend": "odoo"},
        "colors": {"blue": {"server": "odoo-blue", "url": lab.blue.url},
                   "green": {"server": "odoo-green", "url": lab.green.url}},
    }))
    await router.set_weights({"blue": 70, "green": 30})  # behind the daemon's back...
    before = requests_by_color(lab)
    async with LoadClient(lab.proxy_url, concurrency=4, max_requests=2000) as load:
        await load.wait_count(2000, timeout=60)
        sent = load.window(0).by_color
    await asyncio.sleep(1.5)  # the receiver flushes every 0.5 s
    after = requests_by_color(lab)
    seen = {c: after.get(c, 0.0) - before.get(c, 0.0) for c in ("blue", "green")}
    total = sum(sent.values())
    assert total >= 1900
    # ...the daemon puts its own split (blue 100) back within a tick, so both colours served.
    for color in ("blue", "green"):
        assert abs(seen[color] - sent[color]) <= max(2, 0.01 * total), (seen, sent)
    await router.close()
