"""End to end: the daemon as a real process drives a real HAProxy 2.6, judged by Prometheus 2.42.

Each test builds its own `LabStack` (two Odoo stand-ins behind HAProxy, Prometheus scraping
HAProxy's exporter every second, the daemon ticking every second) with short steps, sends
constant load through the proxy, and reads the split HAProxy really applies from its runtime
API with its own parser of `show servers state`: never from the daemon, whose word is what is
being checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import (
    FORCED_DRAIN,
    FORCED_MAINT,
    daemon_metrics,
    haproxy_servers,
    post,
    site,
    step_of,
)
from tests.polling import until
from watchdog.durations import parse_duration
from watchdog.lab.haproxy import runtime_api
from watchdog.lab.load import LoadClient
from watchdog.lab.stack import LabStack
from watchdog.lab.standin import set_faults

pytestmark = pytest.mark.lab

FINAL = {"promoted", "rolled_back", "aborted"}
BLUE_ONLY = {"blue": 100, "green": 0}
GREEN_ONLY = {"blue": 0, "green": 100}
DRAIN_TIMEOUT = 2.0  # LabStack's router drain_timeout


# ------------------------------------------------------------------------------- HAProxy, directly


def weights(lab: LabStack) -> dict[str, int]:
    """The weight HAProxy applies to each colour (the daemon writes percentages as weights)."""
    return {color: s["weight"] for color, s in haproxy_servers(lab).items()}


# ------------------------------------------------------------------------------- the daemon


def metric(lab: LabStack, name: str, **labels: str) -> float:
    """One sample of the daemon's /metrics, matched by name and labels (the text format lists
    labels in any order); 0 when it is not exported yet."""
    for family in text_string_to_metric_families(daemon_metrics(lab)):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def describe(view: dict[str, Any]) -> str:
    events = "\n".join(f"  {e['kind']}: {e['message']}" for e in view.get("events", [])[-12:])
    rules = ", ".join(f"{r['name']}/{r['color']}={r['state']}({r['value']})"
                      for r in view.get("rules", []))
    return f"phase {view['phase']}, weights {view['weights']}, rules {rules}\n{events}"


async def wait_phase(lab: LabStack, phase: str, step: int | None = None,
                     timeout: float = 20.0) -> dict[str, Any]:
    """Until the daemon reports `phase` (at 1-based `step`); fails at once on a wrong end."""
    last: dict[str, Any] = {}

    async def probe() -> dict[str, Any] | None:
        nonlocal last
        last = await site(lab)
        here = step_of(last)
        if here[0] == phase and (step is None or here[1] == step):
            return last
        if here[0] in FINAL and here[0] != phase:
            raise AssertionError(f"rollout ended {here[0]} while waiting for {phase}:\n"
                                 f"{describe(last)}")
        return None

    try:
        return await until(probe, timeout, f"{phase} step {step}", every=0.05)
    except AssertionError as exc:
        if "rollout ended" in str(exc):
            raise
        raise AssertionError(f"{exc}; {describe(last)}") from None


async def wait_weights(lab: LabStack, want: dict[str, int], timeout: float) -> float:
    """Until HAProxy applies `want`; returns the time.monotonic() it was seen."""
    async def probe() -> float | None:
        return time.monotonic() if weights(lab) == want else None

    return await until(probe, timeout, f"HAProxy at {want} (it is at {weights(lab)})",
                       every=0.02)


async def start_rollout(lab: LabStack) -> dict[str, Any]:
    return await post(lab, "rollouts", {"to": "green", "version": "17.0"})


class Splits:
    """Every distinct split HAProxy applied, sampled every 20 ms in the background."""

    def __init__(self, lab: LabStack) -> None:
        self.lab = lab
        self.seen: list[dict[str, int]] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            now = weights(self.lab)
            if not self.seen or self.seen[-1] != now:
                self.seen.append(now)
            await asyncio.sleep(0.02)

    async def __aenter__(self) -> Splits:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@pytest.fixture
def make_lab(tmp_path: Path) -> Iterator[Callable[..., LabStack]]:
    """Builds and starts a LabStack per call; every program is stopped after the test."""
    labs: list[LabStack] = []

    def make(**options: Any) -> LabStack:
        lab = LabStack(tmp_path / f"lab{len(labs)}", **options)
        labs.append(lab)
        lab.start()
        return lab

    yield make
    for lab in labs:
        lab.stop()


def load_for(lab: LabStack) -> LoadClient:
    return LoadClient(lab.proxy_url, "/web/login", concurrency=4, max_seconds=120)


# ------------------------------------------------------------------------------- 1. promote


async def test_canary_walks_every_step_in_haproxy_bakes_and_promotes_without_a_failed_request(
    make_lab: Callable[..., LabStack],
) -> None:
    steps = [{"weight": 10, "hold": "2s"}, {"weight": 50, "hold": "2s"}, {"weight": 100}]
    lab = make_lab(steps=steps, bake="2s")
    assert weights(lab) == BLUE_ONLY
    async with load_for(lab) as load:
        await load.wait_count(20)
        first = load.mark()
        async with Splits(lab) as splits:
            await start_rollout(lab)
            for number, want in enumerate([{"blue": 90, "green": 10}, {"blue": 50, "green": 50},
                                           GREEN_ONLY], start=1):
                view = await wait_phase(lab, "progressing", number, timeout=15)
                assert view["weights"] == want
                # The daemon stores the step before it touches HAProxy: allow it that moment.
                await wait_weights(lab, want, timeout=1.0)
                if number < 3:
                    # Held: HAProxy keeps the step's split while the daemon reports the step.
                    for _ in range(5):
                        assert weights(lab) == want
                        assert step_of(await site(lab)) == ("progressing", number)
                        await asyncio.sleep(0.2)
                    seen = load.mark()
                    await load.wait_count(60)
                    share = load.window(seen).share("green")
                    assert abs(share - want["green"]) <= 12, (number, share)
            view = await wait_phase(lab, "baking", timeout=10)
            assert weights(lab) == GREEN_ONLY
            assert view["live"] == "blue"  # not live before the bake is over
            view = await wait_phase(lab, "promoted", timeout=15)
            promoted_at = load.mark()
            await load.wait_count(40)
        applied = splits.seen
        window = load.window(first)
        after = load.window(promoted_at)
    assert view["live"] == "green"
    assert view["previous"]["color"] == "blue"
    assert weights(lab) == GREEN_ONLY
    # Blue was drained at 100% (sticky users finish) and is in maint drain_timeout later.
    assert haproxy_servers(lab)["blue"]["admin"] & FORCED_MAINT, haproxy_servers(lab)
    assert after.share("green") == 100.0
    assert applied == [BLUE_ONLY, {"blue": 90, "green": 10}, {"blue": 50, "green": 50},
                       GREEN_ONLY]
    assert window.total > 200
    assert window.failed == [], window.failed[:5]
    assert metric(lab, "odoo_watchdog_rollouts_total", site="odoo", outcome="promoted") == 1.0
    kinds = [e["kind"] for e in (await site(lab))["events"]]
    assert kinds[kinds.index("started"):] == ["started", "preflight_passed", "step", "step",
                                              "step", "baking", "promoted"]


# ------------------------------------------------------------------------------- 2. fault


# Fault -> rollback bound, with scrape 1 s, tick 1 s, `for` 2 s, rate window 5 s, max 0.05:
#  - the first scrape after the fault may hold only a sliver of errors; the one after it holds a
#    whole scrape interval of them: 5xx share >= 0.5 * 1 s / 5 s window = 0.10 > 0.05. So a
#    breaching sample is in Prometheus at most 2 * scrape after the fault;
#  - the daemon's next tick sees it: first breach at most 2 * scrape + tick after the fault;
#  - `for` later the rule fires, on the first tick at or after since + for: at most one more tick
#    (tick timestamps jitter by the time a measurement takes);
#  - the rollback itself is one runtime-API command (milliseconds).
# Bound = for + 2 * scrape + 2 * tick + 2 s slack (a loaded 2-core machine) = 8 s.
SCRAPE, TICK, ERROR_FOR, WINDOW = 1.0, 1.0, 2.0, 5.0
ROLLBACK_BOUND = ERROR_FOR + 2 * SCRAPE + 2 * TICK + 2.0


async def test_injected_5xx_at_50_percent_rolls_back_by_itself_within_the_derived_bound(
    make_lab: Callable[..., LabStack],
) -> None:
    # health_for is long so that the rule under test is error_rate: with 50% errors
    # /web/health fails half the time too, and could fire first by chance.
    lab = make_lab(steps=[{"weight": 10, "hold": "1s"}, {"weight": 50, "hold": "60s"},
                          {"weight": 100}],
                   scrape=f"{SCRAPE:g}s", interval=f"{TICK:g}s", error_for=f"{ERROR_FOR:g}s",
                   window=f"{WINDOW:g}s", health_for="60s")
    assert parse_duration(lab.error_for) == ERROR_FOR
    async with load_for(lab) as load:
        await load.wait_count(20)
        await start_rollout(lab)
        await wait_phase(lab, "progressing", 2, timeout=15)
        await wait_weights(lab, {"blue": 50, "green": 50}, timeout=1.0)

        async def error_rate_ok() -> bool | None:
            rules = {(r["name"], r["color"]): r for r in (await site(lab))["rules"]}
            rule = rules.get(("error_rate", "green"))
            return True if rule and rule["state"] == "ok" and rule["value"] == 0 else None

        await until(error_rate_ok, 10, "error_rate ok on green")
        mark = load.mark()
        await asyncio.to_thread(set_faults, lab.green.url, error_rate=0.5)
        injected = time.monotonic()
        out = await wait_weights(lab, BLUE_ONLY, timeout=ROLLBACK_BOUND + 10)
        took = out - injected
        during = load.window(mark)
        # Sticky users leave green too.
        assert haproxy_servers(lab)["green"]["admin"] & FORCED_MAINT
        view = await wait_phase(lab, "rolled_back", timeout=5)
        await asyncio.sleep(0.5)
        calm = load.mark()
        await load.wait_count(60)
        after = load.window(calm)
    assert took < ROLLBACK_BOUND, f"rollback took {took:.2f}s, bound {ROLLBACK_BOUND:g}s"
    assert during.failed, "the fault never showed through the proxy"
    assert after.failed == [] and after.share("blue") == 100.0
    assert view["live"] == "blue" and view["weights"] == BLUE_ONLY
    # The exposition sorts labels: {rule="error_rate",site="odoo"}; parsed, the order is moot.
    assert metric(lab, "odoo_watchdog_rollbacks_total", site="odoo", rule="error_rate") == 1.0
    assert sum(metric(lab, "odoo_watchdog_rollbacks_total", site="odoo", rule=r)
               for r in ("health", "operator")) == 0
    assert metric(lab, "odoo_watchdog_rollouts_total", site="odoo",
                  outcome="rolled_back") == 1.0
    rolling = [e for e in view["events"] if e["kind"] == "rolling_back"]
    assert len(rolling) == 1, describe(view)
    event = rolling[0]
    assert event["rule"] == "error_rate"
    assert event["value"] is not None and event["value"] > 0.05
    assert event["threshold"] == "<= 0.05"
    assert "error_rate" in event["message"] and "0.05" in event["message"]
    assert event["weights"] == BLUE_ONLY
    assert [e["kind"] for e in view["events"]][-1] == "rolled_back"


# ------------------------------------------------------------------------------- 3. pause


async def test_pause_step_holds_the_split_until_promote_then_goes_on_to_promoted(
    make_lab: Callable[..., LabStack],
) -> None:
    lab = make_lab(steps=[{"weight": 10, "hold": "1s"}, "pause", {"weight": 100}], bake="1s")
    async with load_for(lab) as load:
        await load.wait_count(20)
        first = load.mark()
        await start_rollout(lab)
        view = await wait_phase(lab, "paused", 2, timeout=15)
        assert view["rollout"]["paused_by"] == "step"
        assert view["weights"] == {"blue": 90, "green": 10}
        ticked = view["last_tick"]
        # It stays paused at 10% over several ticks.
        for _ in range(16):
            view = await site(lab)
            assert step_of(view) == ("paused", 2), describe(view)
            assert weights(lab) == {"blue": 90, "green": 10}
            await asyncio.sleep(0.3)
        assert view["last_tick"] - ticked >= 3.5, "the daemon stopped ticking while paused"
        await post(lab, "promote", {})
        await wait_weights(lab, GREEN_ONLY, timeout=2)
        view = await site(lab)
        assert step_of(view) in {("progressing", 3), ("baking", 3), ("promoted", 3)}
        view = await wait_phase(lab, "promoted", timeout=15)
        window = load.window(first)
    assert view["live"] == "green" and weights(lab) == GREEN_ONLY
    kinds = [e["kind"] for e in view["events"]]
    assert kinds[kinds.index("paused"):] == ["paused", "step", "baking", "promoted"]
    assert window.failed == []


# ------------------------------------------------------------------------------- 4. abort


async def test_abort_mid_canary_puts_blue_back_to_100_with_the_reason_in_the_events(
    make_lab: Callable[..., LabStack],
) -> None:
    lab = make_lab(steps=[{"weight": 10, "hold": "1s"}, {"weight": 50, "hold": "60s"},
                          {"weight": 100}])
    reason = "migration 17.0.1.3 locks res_partner"
    async with load_for(lab) as load:
        await load.wait_count(20)
        await start_rollout(lab)
        await wait_phase(lab, "progressing", 2, timeout=15)
        await wait_weights(lab, {"blue": 50, "green": 50}, timeout=1.0)
        mark = load.mark()
        answer = await post(lab, "abort", {"reason": reason})
        # The abort answers after the router is switched: HAProxy is there already.
        assert weights(lab) == BLUE_ONLY
        assert haproxy_servers(lab)["green"]["admin"] & FORCED_MAINT
        assert answer["phase"] == "aborted"
        await asyncio.sleep(0.3)
        calm = load.mark()
        await load.wait_count(60)
        view = await site(lab)
        window, after = load.window(mark), load.window(calm)
    assert view["phase"] == "aborted" and view["weights"] == BLUE_ONLY
    assert view["rollout"]["reason"] == reason
    aborted = [e for e in view["events"] if e["kind"] == "aborted"]
    assert len(aborted) == 1 and reason in aborted[0]["message"]
    assert aborted[0]["weights"] == BLUE_ONLY
    assert after.share("blue") == 100.0
    assert window.failed == []
    assert metric(lab, "odoo_watchdog_rollouts_total", site="odoo", outcome="aborted") == 1.0


# ------------------------------------------------------------------------------- 5. kill -9


async def test_kill_9_in_a_hold_keeps_the_split_and_the_restart_keeps_the_step_clock(
    make_lab: Callable[..., LabStack],
) -> None:
    hold = 20.0  # room for a restart that takes a few seconds on a loaded machine
    lab = make_lab(steps=[{"weight": 10, "hold": "1s"}, {"weight": 50, "hold": f"{hold:g}s"},
                          {"weight": 100}], bake="60s")
    half = {"blue": 50, "green": 50}
    async with load_for(lab) as load:
        await load.wait_count(20)
        await start_rollout(lab)
        view = await wait_phase(lab, "progressing", 2, timeout=15)
        started = view["rollout"]["step_started"]
        rollout_id = view["rollout"]["id"]
        await wait_weights(lab, half, timeout=1.0)
        await asyncio.sleep(max(0.0, started + 5 - time.time()))
        assert lab.daemon is not None
        old_pid = lab.daemon.pid
        lab.daemon.kill()
        assert not lab.daemon.running()
        down = load.mark()
        for _ in range(15):  # 3 s with no daemon: HAProxy keeps the split
            assert weights(lab) == half
            await asyncio.sleep(0.2)
        await load.wait_count(40)
        while_down = load.window(down)
        await asyncio.to_thread(lab.start_daemon)
        restarted = time.time()
        assert lab.daemon.pid != old_pid
        view = await site(lab)
        assert step_of(view) == ("progressing", 2), describe(view)
        assert view["rollout"]["id"] == rollout_id
        assert view["rollout"]["step_started"] == started
        assert view["weights"] == half and weights(lab) == half
        assert metric(lab, "odoo_watchdog_rollout_step", site="odoo") == 2
        assert metric(lab, "odoo_watchdog_traffic_weight", site="odoo", color="green") == 50
        await wait_weights(lab, GREEN_ONLY, timeout=hold + 10)
        moved = time.time()
        view = await site(lab)
    assert while_down.failed == []
    assert 30 <= while_down.share("green") <= 70, while_down.share("green")
    assert restarted < started + hold - 5, "restart came too late to tell the clocks apart"
    # The hold counts from the stored start, not from the restart.
    assert started + hold - 0.3 <= moved <= started + hold + 2.5, (
        f"next step {moved - started:.1f}s after the step began (hold {hold:g}s), "
        f"{moved - restarted:.1f}s after the restart")
    assert step_of(view) in {("progressing", 3), ("baking", 3)}
    assert "drift" not in [e["kind"] for e in view["events"]]


# ------------------------------------------------------------------------------- 6. drift


async def test_split_changed_behind_the_daemons_back_is_restored_within_one_tick(
    make_lab: Callable[..., LabStack],
) -> None:
    lab = make_lab(steps=[{"weight": 10, "hold": "60s"}, {"weight": 100}])
    assert lab.haproxy is not None
    tick = parse_duration(lab.interval)
    want = {"blue": 90, "green": 10}
    async with load_for(lab):
        await start_rollout(lab)
        await wait_phase(lab, "progressing", 1, timeout=15)
        await wait_weights(lab, want, timeout=1.0)
        await asyncio.sleep(1.5 * tick)
        before = metric(lab, "odoo_watchdog_router_drift_total", site="odoo")
        answer = runtime_api(lab.haproxy.admin_socket,
                             "set server odoo/odoo-blue weight 80; "
                             "set server odoo/odoo-green weight 20")
        changed = time.monotonic()
        assert answer.strip() == "", answer
        assert weights(lab) == {"blue": 80, "green": 20}
        restored = await wait_weights(lab, want, timeout=tick + 5)
        view = await site(lab)
    took = restored - changed
    assert took <= tick + 0.75, f"restored after {took:.2f}s, tick {tick:g}s"
    assert metric(lab, "odoo_watchdog_router_drift_total", site="odoo") == before + 1
    drifts = [e for e in view["events"] if e["kind"] == "drift"]
    assert len(drifts) == 1, describe(view)
    assert "blue=80,green=20" in drifts[0]["message"]
    assert "blue=90,green=10" in drifts[0]["message"]
    assert step_of(view) == ("progressing", 1)


# ------------------------------------------------------------------------------- 7. no Prometheus


async def test_prometheus_down_mid_canary_holds_the_rollout_and_it_resumes_when_back(
    make_lab: Callable[..., LabStack],
) -> None:
    hold = 2.0
    lab = make_lab(steps=[{"weight": 10, "hold": f"{hold:g}s"}, {"weight": 50, "hold": "1s"},
                          {"weight": 100}], bake="1s")
    assert lab.prometheus is not None
    tenth = {"blue": 90, "green": 10}
    async with load_for(lab):
        await start_rollout(lab)
        view = await wait_phase(lab, "progressing", 1, timeout=15)
        started = view["rollout"]["step_started"]
        await asyncio.to_thread(lab.prometheus.stop)
        assert not lab.prometheus.running()
        view = await site(lab)
        assert step_of(view) == ("progressing", 1), "advanced before Prometheus was stopped"
        assert time.time() < started + hold, "Prometheus took longer than the hold to stop"
        # Three holds with no Prometheus: no data is no reason to advance.
        end = time.monotonic() + 3 * hold
        states = set()
        while time.monotonic() < end:
            view = await site(lab)
            assert step_of(view) == ("progressing", 1), describe(view)
            assert weights(lab) == tenth
            states |= {r["state"] for r in view["rules"] if r["name"] == "error_rate"}
            await asyncio.sleep(0.2)
        rule = next(r for r in view["rules"] if r["name"] == "error_rate")
        assert rule["state"] == "holding" and rule["outcome"] == "error", rule
        await asyncio.to_thread(lab.prometheus.start)
        back = time.monotonic()
        await wait_phase(lab, "progressing", 2, timeout=20)
        resumed = time.monotonic() - back
        view = await wait_phase(lab, "promoted", timeout=20)
    assert "holding" in states
    # A restarted Prometheus hands its targets to the scrapers up to 5 s after it is ready
    # (its discovery manager sends updates every 5 s); the 5 s rate window then needs two
    # scrapes, and the daemon one tick: 5 + 2 * 1 + 1 = 8 s, plus slack.
    assert resumed < 12, f"resumed {resumed:.1f}s after Prometheus was back"
    assert view["live"] == "green" and weights(lab) == GREEN_ONLY


# ------------------------------------------------------------------------- 8. kill -9 in a drain


def sticky_color(lab: LabStack, cookie: str) -> str | None:
    """The colour that answers a user whose HAProxy stickiness cookie names `cookie`."""
    req = urllib.request.Request(f"{lab.proxy_url}/web/login",
                                 headers={"Cookie": f"SERVERID={cookie}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        color = resp.headers.get("X-Odoo-Color")
    return str(color) if color is not None else None


async def test_kill_9_during_the_promotion_drain_still_ends_with_the_old_colour_in_maint(
    make_lab: Callable[..., LabStack],
) -> None:
    lab = make_lab(steps=[{"weight": 10, "hold": "1s"}, {"weight": 100}], bake="60s")
    tick = parse_duration(lab.interval)
    async with load_for(lab):
        await start_rollout(lab)
        await wait_phase(lab, "progressing", 1, timeout=15)
        at_100 = await wait_weights(lab, GREEN_ONLY, timeout=15)
        assert haproxy_servers(lab)["blue"]["admin"] & FORCED_DRAIN
        assert await asyncio.to_thread(sticky_color, lab, "blue") == "blue"  # draining
        assert lab.daemon is not None
        lab.daemon.kill()
        assert time.monotonic() - at_100 < DRAIN_TIMEOUT, "killed after the drain was over"
        await asyncio.to_thread(lab.start_daemon)
        # Give the restarted daemon drain_timeout from the step, and two ticks, to finish it.
        await asyncio.sleep(max(0.0, at_100 + DRAIN_TIMEOUT + 2 * tick + 0.5 - time.monotonic()))
        view = await site(lab)
        blue = haproxy_servers(lab)["blue"]
        sticky = await asyncio.to_thread(sticky_color, lab, "blue")
    assert step_of(view) in {("progressing", 2), ("baking", 2)}, describe(view)
    assert weights(lab) == GREEN_ONLY
    assert blue["admin"] & FORCED_MAINT, f"blue admin state {blue['admin']} (8 = drain)"
    assert sticky == "green", "a user sticky to blue still reaches blue after the drain"
