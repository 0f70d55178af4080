"""The backtest agrees with the live daemon (DESIGN.md §16, issue 15).

One lab (two stand-ins behind HAProxy 2.6, Prometheus scraping HAProxy's exporter every second,
the daemon as a process ticking every second): a canary rollout, 50% 5xx injected into green at
step 2, the daemon's `error_rate` rule goes pending, then firing, and the daemon rolls back.
When the rule's state changed is read from the daemon itself: its `rule_state` log lines (JSON,
one per change) and the rollout's ticks from `GET /api/v1/rollouts/{id}`. Then `run_backtest`
replays the same rule file over the same minute of Prometheus' history, one step per tick, for
green only; its firing interval must start within a couple of steps of the daemon's firing, and
nothing may be pending or firing before the fault.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import post, site
from tests.polling import until
from watchdog.backtest import Replay, rfc3339, run_backtest
from watchdog.config import load
from watchdog.durations import parse_duration
from watchdog.lab.load import LoadClient
from watchdog.lab.stack import LabStack
from watchdog.lab.standin import set_faults

pytestmark = pytest.mark.lab

TICK = 1.0  # the daemon's interval, the backtest's step
# The daemon measures at its tick's time and the backtest at its grid's; the data both read is
# the same Prometheus samples, so they see a breach at most a step apart, and `for` adds the
# same wait to both. Two steps, plus the tick's own jitter on a loaded 2-core machine.
AGREE = 2 * TICK + 0.5


def rule_changes(log_path: Path, rule: str, color: str) -> list[tuple[float, str, str]]:
    """(time, from, to) of each `rule_state` line of the daemon's JSON log for one rule."""
    changes = []
    for line in log_path.read_text().splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        if entry.get("event") == "rule_state" and entry.get("rule") == rule \
                and entry.get("color") == color:
            at = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp()
            changes.append((at, entry["state_from"], entry["state"]))
    return changes


def rollout_ticks(lab: LabStack, rollout_id: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{lab.api_url}/api/v1/rollouts/{rollout_id}",
                                timeout=5) as resp:
        data: dict[str, Any] = json.loads(resp.read())
    return data


def first_tick_in(ticks: list[dict[str, Any]], state: str) -> float | None:
    for tick in ticks:
        for row in tick["rules"]:
            if row["name"] == "error_rate" and row["color"] == "green" \
                    and row["state"] == state:
                return float(tick["at"])
    return None


async def test_backtest_fires_where_the_live_daemon_fired(tmp_path: Path) -> None:
    lab = LabStack(tmp_path / "lab", steps=[{"weight": 10, "hold": "1s"},
                                            {"weight": 50, "hold": "60s"}, {"weight": 100}],
                   scrape="1s", interval=f"{TICK:g}s", error_for="2s", window="5s",
                   health_for="60s")
    lab.start()
    try:
        async with LoadClient(lab.proxy_url, "/web/login", concurrency=4,
                              max_seconds=90) as load_client:
            await load_client.wait_count(20)
            await post(lab, "rollouts", {"to": "green", "version": "17.0"})

            async def at_step_2_and_ok() -> dict[str, Any] | None:
                view = await site(lab)
                ro = view["rollout"] or {}
                rows = {(r["name"], r["color"]): r for r in view["rules"]}
                row = rows.get(("error_rate", "green"))
                if view["phase"] == "progressing" and ro.get("step") == 2 and row \
                        and row["state"] == "ok" and row["value"] == 0:
                    return view
                assert view["phase"] not in {"rolled_back", "aborted", "promoted"}, view
                return None

            view = await until(at_step_2_and_ok, 30, "step 2 with error_rate ok on green",
                               every=0.1)
            rollout_id = view["rollout"]["id"]
            started_at = float(view["rollout"]["started_at"])
            # A few clean seconds on green at 50% so the backtest has a quiet stretch to judge.
            await asyncio.sleep(3)
            fault_at = time.time()
            await asyncio.to_thread(set_faults, lab.green.url, error_rate=0.5)

            async def rolled_back() -> dict[str, Any] | None:
                view = await site(lab)
                return view if view["phase"] == "rolled_back" else None

            await until(rolled_back, 20, "rolled_back", every=0.1)
        # Let Prometheus scrape past the rollback so the range has the whole story.
        await asyncio.sleep(2)
        end = time.time()
        history = await asyncio.to_thread(rollout_ticks, lab, rollout_id)
        # ---- what the backtest says over the same period, one step per tick
        loaded = load(lab.config_path)
        result = await asyncio.to_thread(run_backtest, loaded, "odoo", math.floor(started_at),
                                         end, TICK, ["green"])
    finally:
        lab.stop()

    # ---- what the daemon decided
    changes = rule_changes(lab.workdir / "daemon.log", "error_rate", "green")
    live_pending = next(at for at, _, to in changes if to == "pending" and at >= fault_at)
    live_firing = next(at for at, _, to in changes if to == "firing" and at >= fault_at)
    assert not [c for c in changes if c[0] < fault_at and c[2] in ("pending", "firing")], changes
    assert history["outcome"] == "rolled_back"
    # The ticks the store kept say the same as the log, within a tick.
    tick_firing = first_tick_in(history["ticks"], "firing")
    assert tick_firing is not None and abs(tick_firing - live_firing) <= TICK + 0.5, \
        (tick_firing, live_firing)

    # ---- the backtest against it
    replays: list[Replay] = [r for r in result.replays if r.name == "error_rate"]
    assert [r.color for r in replays] == ["green"]
    intervals = replays[0].intervals
    summary = [(i.state, rfc3339(i.start), rfc3339(i.end), i.peak) for i in intervals]
    # Nothing before the fault: the clean steps 1 and 2 are quiet in the replay too.
    assert all(i.start >= fault_at - 0.5 for i in intervals), (rfc3339(fault_at), summary)
    fired = replays[0].fired
    assert fired, summary
    backtest_firing = fired[0].start
    pending = [i for i in intervals if i.state == "pending"]
    assert pending and pending[0].start <= backtest_firing, summary
    assert abs(backtest_firing - live_firing) <= AGREE, (
        f"daemon fired at {rfc3339(live_firing)}, backtest at {rfc3339(backtest_firing)}: "
        f"{summary}")
    assert abs(pending[0].start - live_pending) <= AGREE, (live_pending, summary)
    # The replay's `for` is the daemon's: pending for at least `for` before firing.
    assert backtest_firing - pending[0].start >= parse_duration(lab.error_for) - 1e-6
    assert fired[0].action == "rollback" and fired[0].peak is not None and fired[0].peak > 0.05
    print(f"\nfault injected {rfc3339(fault_at)}; daemon pending {rfc3339(live_pending)}, "
          f"firing {rfc3339(live_firing)} (first firing tick {rfc3339(tick_firing)}); "
          f"backtest pending {rfc3339(pending[0].start)}, firing {rfc3339(backtest_firing)} "
          f"(firing - daemon = {backtest_firing - live_firing:+.2f}s); intervals {summary}")
