"""`ODOO_WATCHDOG_EVENT_LOOP`: the daemon on uvloop does a whole canary on the real lab; a
wrong value is refused before anything starts."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import post, site, step_of
from tests.polling import until
from watchdog.lab.load import LoadClient
from watchdog.lab.stack import LabStack

pytestmark = pytest.mark.lab


@pytest.fixture
def uvloop_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LabStack]:
    monkeypatch.setenv("ODOO_WATCHDOG_EVENT_LOOP", "uvloop")  # the daemon inherits it
    lab = LabStack(tmp_path / "lab", steps=[{"weight": 50, "hold": "2s"}, {"weight": 100}],
                   interval="1s", bake="2s")
    lab.start()
    yield lab
    lab.stop()


async def test_a_daemon_on_uvloop_walks_a_canary_to_promoted(uvloop_lab: LabStack) -> None:
    lab = uvloop_lab
    assert lab.daemon is not None and lab.daemon.pid is not None
    maps = await asyncio.to_thread(Path(f"/proc/{lab.daemon.pid}/maps").read_text)
    assert "/uvloop/" in maps, "the daemon did not load uvloop"
    # Traffic through HAProxy, so that the error-rate rule has requests to measure.
    async with LoadClient(lab.proxy_url, "/web/login", concurrency=4, max_seconds=120) as load:
        await load.wait_count(20)
        await post(lab, "rollouts", {"to": "green", "version": "17.0"})

        last: dict[str, Any] = {}

        async def promoted() -> dict[str, Any] | None:
            nonlocal last
            view = last = await site(lab)
            assert step_of(view)[0] not in ("rolled_back", "aborted"), view["events"]
            return view if step_of(view)[0] == "promoted" else None

        try:
            view = await until(promoted, 40, "promoted on uvloop")
        except AssertionError as exc:
            events = [e["message"] for e in last.get("events", [])]
            raise AssertionError(f"{exc}: phase {last.get('phase')}, rules "
                                 f"{last.get('rules')}, events {events}") from None
    assert view["weights"] == {"blue": 0, "green": 100}
    # Every rule was measured on this loop: the http probe, Prometheus, with no error.
    assert {r["name"] for r in view["rules"]} >= {"health", "error_rate"}
    assert all(r["outcome"] != "error" for r in view["rules"]), view["rules"]


def test_an_unknown_event_loop_is_refused_naming_the_choices(tmp_path: Path) -> None:
    config = tmp_path / "watchdog.yml"
    config.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"),
        "sites": {"odoo": {
            "router": {"kind": "haproxy", "socket": str(tmp_path / "none.sock"),
                       "backend": "odoo"},
            "colors": {"blue": {"server": "b", "url": "http://127.0.0.1:1"},
                       "green": {"server": "g", "url": "http://127.0.0.1:2"}},
        }},
    }))
    done = subprocess.run(
        [sys.executable, "-m", "watchdog.cli", "run", "-c", str(config)],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "ODOO_WATCHDOG_EVENT_LOOP": "trio"},
    )
    assert done.returncode == 1
    assert done.stderr.strip() == ("error: ODOO_WATCHDOG_EVENT_LOOP='trio': the event loop is "
                                   "asyncio (the default) or uvloop")
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").iterdir())
