"""Memory that does not grow with time: what the daemon keeps per tick and per alert stays
the same size however long it runs (issue 13, item 2; bench/bench_soak.py measures the real
process over 30 minutes).

Each test runs some work, then much more of it: what the Python heap gained over the longer
second stretch must stay within what moves without growing (a leak of 100 bytes a tick is
60 kB over the 600 ticks of the second stretch here).
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from watchdog.alerts import MAX_SEEN, AlertBook
from watchdog.config import load
from watchdog.daemon import Daemon
from watchdog.lab.haproxy import HaproxyLab
from watchdog.lab.stack import health_rules
from watchdog.lab.standin import StandinProcess

SITES = 2
RULES = health_rules()


def traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


@pytest.fixture
def tracing() -> Iterator[None]:
    tracemalloc.start(1)
    try:
        yield
    finally:
        tracemalloc.stop()


def resolved(count: int) -> dict[str, Any]:
    return {"version": "4", "status": "resolved", "alerts": [{
        "status": "resolved", "fingerprint": uuid.uuid4().hex[:16],
        "startsAt": "2026-12-01T08:00:00Z", "endsAt": "2026-12-01T08:05:00Z",
        "labels": {"alertname": "PodDown", "site": "odoo", "pod": uuid.uuid4().hex[:8]},
        "annotations": {}} for _ in range(count)]}


def firing(fp: str) -> dict[str, Any]:
    return {"version": "4", "status": "firing", "alerts": [{
        "status": "firing", "fingerprint": fp, "startsAt": "2026-12-01T08:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z", "labels": {"alertname": "Slow", "site": "odoo"},
        "annotations": {}}]}


def test_the_fingerprints_kept_to_tell_duplicates_stay_few(tracing: None) -> None:
    """Every distinct alert ever heard of was kept until 100,000 (16 MB) before a trim."""
    book = AlertBook()
    book.receive(firing("still-firing"), {"odoo"}, {})
    for _ in range(24):  # 6,000 distinct alerts, resolved
        book.receive(resolved(250), {"odoo"}, {})
    first = traced()
    for _ in range(48):  # 12,000 more
        book.receive(resolved(250), {"odoo"}, {})
    second = traced()
    print(f"heap: +{second - first} B for 12,000 more alerts")
    assert len(book._seen) <= MAX_SEEN
    assert second - first < 200_000, f"{(second - first) / 1e6:.2f} MB more for 12,000 alerts"
    # The alert still firing is remembered through every trim: its repeat is a duplicate.
    assert book.receive(firing("still-firing"), {"odoo"}, {}).duplicates == 1
    # So is a repeat of one heard of lately.
    recent = resolved(1)
    book.receive(recent, {"odoo"}, {})
    assert book.receive(recent, {"odoo"}, {}).duplicates == 1


@pytest.fixture
def config(tmp_path: Path, haproxy: HaproxyLab,
           standins: tuple[StandinProcess, ...]) -> Path:
    """SITES idle sites on the lab's HAProxy, an http rule each on the live colour; the
    schedule's interval is long, so the test's own calls are the ticks."""
    blue, green = standins
    rules = tmp_path / "rules.yml"
    rules.write_text(RULES)
    site = {"router": {"kind": "haproxy", "socket": str(haproxy.admin_socket),
                       "backend": "odoo"},
            "colors": {"blue": {"server": "odoo-blue", "url": blue.url},
                       "green": {"server": "odoo-green", "url": green.url}},
            "live": "blue", "rollout": {"steps": [{"weight": 100}], "interval": "1h"}}
    path = tmp_path / "watchdog.yml"
    path.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"), "rule_files": [str(rules)],
        "sites": {f"site{i}": site for i in range(SITES)}}))
    return path


def samples(daemon: Daemon) -> int:
    return sum(len(m.samples) for m in daemon.metrics.registry.collect())


@pytest.mark.lab
async def test_ticks_leave_nothing_behind(config: Path, tracing: None) -> None:
    """760 ticks of 2 sites against HAProxy and a stand-in: the heap, the metric series and
    the tasks are what they were after the first 160."""
    daemon = Daemon(load(config))
    await daemon.start()
    try:
        async def ticks(count: int) -> None:
            for _ in range(count):
                for name in daemon.sites:
                    await daemon.tick(name)

        await ticks(40)  # caches, connections, the store's statements: warm
        series = samples(daemon)
        start = traced()
        await ticks(40)
        first = traced() - start
        await ticks(300)
        second = traced() - start - first
        print(f"heap: +{first} B over {40 * SITES} ticks, +{second} B over {300 * SITES}")
        assert all(r.ticks >= 380 for r in daemon.sites.values())
        # What moves without growing (the loop's cancelled timers until it purges them, the
        # store's statement cache) is some 15 kB either way; 100 bytes kept per tick would be
        # 60 kB over the 600 ticks of the second stretch.
        assert second < 40_000, (f"the heap grew {first / 1e3:.0f} kB over 80 ticks, then "
                                 f"{second / 1e3:.0f} kB over 600")
        assert samples(daemon) == series
        assert len(daemon._tasks) <= 1  # the reload watcher
    finally:
        await daemon.stop()


@pytest.mark.lab
async def test_reloads_that_rename_rules_add_no_series(config: Path) -> None:
    """A rule file regenerated with new rule names (a version in the name) on every reload:
    the removed rules' series go, their evaluation counts with them."""
    loaded = load(config)
    rules = Path(loaded.config.rule_files[0])
    daemon = Daemon(loaded)
    await daemon.start()
    try:
        counts = []
        for i in range(6):
            text = RULES.replace("name: health", f"name: health_v{i}")
            await asyncio.to_thread(rules.write_text, text)
            assert await daemon.reload("test")
            for name in daemon.sites:
                await daemon.tick(name)
            counts.append(samples(daemon))
            text = "\n".join(str(s) for m in daemon.metrics.registry.collect()
                             for s in m.samples)
            assert f"health_v{i}" in text
            assert i == 0 or f"health_v{i - 1}" not in text
        assert len(set(counts)) == 1, counts
    finally:
        await daemon.stop()
