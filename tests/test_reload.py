"""Reload of the rule files, with the daemon as a real process (docs/rules.md, "Reloading").

An edit is noticed by the 1 s file poll (or SIGHUP) and applies between ticks; a broken edit
keeps the last good rules, sets odoo_watchdog_config_last_reload_successful to 0 and names
file:line in the API and the log; a reload in the middle of a rollout does not disturb it, and
a rule removed then stops counting.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.polling import wait
from watchdog.lab.load import LoadClient
from watchdog.lab.procs import http_ok
from watchdog.lab.stack import LAB_RULES, LabStack
from watchdog.lab.standin import clear_faults, set_faults

pytestmark = pytest.mark.lab

POLL, TICK = 1.0, 1.0
# An edit is seen by the next poll, measured (a new rule) by the next tick; slack for 2 cores.
PICKUP = POLL + TICK + 2.0
HOLD_1 = 5.0  # step 1 of the rollout in (d): long enough to reload in the middle of it

T = TypeVar("T")


# ------------------------------------------------------------------------------------ helpers


def get_json(lab: LabStack, path: str) -> Any:
    with urllib.request.urlopen(f"{lab.api_url}{path}", timeout=5) as resp:
        return json.loads(resp.read())


def config(lab: LabStack) -> dict[str, Any]:
    body = get_json(lab, "/api/v1/sites")
    assert [s["site"] for s in body["sites"]] == ["odoo"]
    cfg: dict[str, Any] = body["config"]
    return cfg


def rules(lab: LabStack) -> dict[str, dict[str, Any]]:
    """The site's rules by name (for the colour measured now)."""
    view = lab.site()
    return {r["name"]: r for r in view["rules"] if r["color"] == view["target"]}


def samples(lab: LabStack) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"{lab.api_url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def metric(lab: LabStack, name: str, **labels: str) -> float | None:
    return samples(lab).get((name, frozenset(labels.items())))


def series(lab: LabStack, name: str, **labels: str) -> list[dict[str, str]]:
    """The label sets of every sample of `name` whose labels include `labels`."""
    want = set(labels.items())
    return [dict(key) for (n, key), _ in samples(lab).items() if n == name and want <= key]


def reload_ok(lab: LabStack) -> float | None:
    return metric(lab, "odoo_watchdog_config_last_reload_successful")


def reload_stamp(lab: LabStack) -> float:
    value = metric(lab, "odoo_watchdog_config_last_reload_success_timestamp_seconds")
    assert value is not None
    return value


def write(path: Path, text: str) -> None:
    """Replace the file in one step, as an editor or config management would."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def line_of(text: str, needle: str) -> int:
    """1-based line number of the first line containing `needle`."""
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in the text")


def log_events(lab: LabStack, event: str) -> list[dict[str, Any]]:
    out = []
    for line in (lab.workdir / "daemon.log").read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == event:
            out.append(record)
    return out


# ------------------------------------------------------------------------------------ the lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabStack]:
    stack = LabStack(tmp_path_factory.mktemp("reload"), interval=f"{TICK:g}s",
                     steps=[{"weight": 10, "hold": f"{HOLD_1:g}s"},
                            {"weight": 50, "hold": "1s"}, {"weight": 100}],
                     bake="1s", health_for="30s")
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def base(lab: LabStack) -> Iterator[str]:
    """The lab's rule file as written at start; put back (and reloaded) after each test."""
    text = LAB_RULES.format(window=lab.window, error_for=lab.error_for,
                            health_for=lab.health_for) + lab.extra_rules
    assert lab.rules_path.read_text() == text
    yield text
    if lab.rules_path.read_text() != text:
        write(lab.rules_path, text)
        wait(lambda: config(lab)["last_reload_successful"]
             and rules(lab).get("error_rate", {}).get("threshold") == "<= 0.05",
             PICKUP, "the original rules back")


BLUE = {"blue": 100, "green": 0}
ACTIVE = ("preflight", "progressing", "paused", "baking", "rolling_back")


@pytest.fixture
def blue_live(lab: LabStack) -> dict[str, Any]:
    """Blue live with all of the traffic and no rollout active, whatever an earlier test of
    the module left (test_d promotes green; a failed test may leave a rollout or a switch):
    the site's view once HAProxy is there too."""
    client = lab.client()
    if lab.site()["phase"] in ACTIVE:
        client.post("/api/v1/sites/odoo/abort", {"reason": "test set-up"})
    view = lab.site()
    if view["live"] != "blue" or view["weights"] != BLUE:
        client.post("/api/v1/sites/odoo/switch", {"to": "blue"})
    settled: dict[str, Any] = wait(
        lambda: (v := lab.site())["target"] == "blue" and v["actual_weights"] == BLUE and v,
        10, "blue live with all the traffic")
    return settled


# ------------------------------------------------------------------------------------ (a)


def test_a_good_edit_is_picked_up_within_a_poll_and_a_tick(
    lab: LabStack, base: str, blue_live: dict[str, Any],
) -> None:
    wait(lambda: {"error_rate", "health"} <= set(rules(lab)), 10, "both rules measured")
    before = config(lab)
    assert before["last_reload_successful"] is True and before["errors"] == []
    assert before["rules"] == 2
    assert rules(lab)["error_rate"]["threshold"] == "<= 0.05"
    stamp = reload_stamp(lab)

    edited = base.replace("max: 0.05", "max: 0.2") + (
        "  - name: login_page\n"
        "    source: http\n"
        "    path: /web/login\n"
        "    timeout: 1s\n"
        "    min: 1\n"
        "    for: 0s\n"
        "    on_fire: notify\n")
    write(lab.rules_path, edited)
    edited_at = time.monotonic()

    wait(lambda: rules(lab)["error_rate"]["threshold"] == "<= 0.2", POLL + 2.0,
         "the new threshold in force")
    seen = wait(lambda: rules(lab).get("login_page"), PICKUP, "the new rule measured")
    took = time.monotonic() - edited_at
    assert took <= PICKUP, f"picked up after {took:.2f}s"
    assert seen["threshold"] == ">= 1" and seen["source"] == "http"
    assert seen["state"] == "ok" and seen["value"] == 1  # blue's /web/login answers 200
    after = config(lab)
    assert after["last_reload_successful"] is True and after["errors"] == []
    assert after["rules"] == 3
    assert after["last_reload_at"] > before["last_reload_at"]
    assert reload_ok(lab) == 1
    assert reload_stamp(lab) > stamp
    # It is evaluated, not only listed.
    wait(lambda: (metric(lab, "odoo_watchdog_rule_evaluations_total", site="odoo",
                         rule="login_page", result="ok") or 0) >= 2, 2 * TICK + 2,
         "login_page evaluated twice")
    assert series(lab, "odoo_watchdog_rule_state", rule="login_page") == [
        {"site": "odoo", "rule": "login_page", "color": "blue"}]


# ------------------------------------------------------------------------------------ (b)


@pytest.mark.parametrize("breakage", ["bad_yaml", "unknown_key"])
def test_b_a_broken_edit_keeps_the_last_good_rules_and_says_where(
    lab: LabStack, base: str, breakage: str,
) -> None:
    wait(lambda: {"error_rate", "health"} <= set(rules(lab)), 10, "both rules measured")
    assert reload_ok(lab) == 1
    stamp = reload_stamp(lab)
    failed_before = len(log_events(lab, "reload_failed"))
    # The broken edit also raises the threshold, to tell whether any of it was applied.
    if breakage == "bad_yaml":
        broken = base.replace("max: 0.05", "max: 0.5").replace(
            "path: /web/health", "path: [/web/health")
        # PyYAML reports the flow sequence where it finds the next key.
        line = line_of(broken, "path: [/web/health") + 1
        words = "YAML syntax error"
    else:
        broken = base.replace("max: 0.05", "max: 0.5\n    maximum: 0.5")
        line = line_of(broken, "maximum: 0.5")
        words = "maximum: unknown key"
    write(lab.rules_path, broken)

    wait(lambda: reload_ok(lab) == 0, POLL + 2.0, "config_last_reload_successful 0")
    cfg = config(lab)
    assert cfg["last_reload_successful"] is False
    where = f"{lab.rules_path}:{line}:"
    assert any(e.startswith(where) and words in e for e in cfg["errors"]), (where, cfg["errors"])
    # The last good set stays in force: same rules, same threshold, still evaluated.
    assert cfg["rules"] == 2
    assert reload_stamp(lab) == stamp
    evaluated = metric(lab, "odoo_watchdog_rule_evaluations_total", site="odoo",
                       rule="health", result="ok") or 0
    time.sleep(2 * TICK + 0.2)
    now = rules(lab)
    assert set(now) == {"error_rate", "health"}
    assert now["error_rate"]["threshold"] == "<= 0.05"
    assert (metric(lab, "odoo_watchdog_rule_evaluations_total", site="odoo", rule="health",
                   result="ok") or 0) >= evaluated + 1
    assert reload_ok(lab) == 0  # and it stays 0: the poll does not retry the same broken file
    # The log says it, with file:line.
    failures = log_events(lab, "reload_failed")[failed_before:]
    assert len(failures) == 1, failures
    assert failures[0]["level"] == "error"
    assert any(p.startswith(where) and words in p for p in failures[0]["problems"]), failures

    # Fixing it brings the metric back to 1 and applies the fixed file.
    write(lab.rules_path, base.replace("max: 0.05", "max: 0.5"))
    wait(lambda: reload_ok(lab) == 1, POLL + 2.0, "config_last_reload_successful back to 1")
    cfg = config(lab)
    assert cfg["last_reload_successful"] is True and cfg["errors"] == []
    assert reload_stamp(lab) > stamp
    assert rules(lab)["error_rate"]["threshold"] == "<= 0.5"


# ------------------------------------------------------------------------------------ (c)


def test_c_sighup_reloads_an_edit_the_poll_cannot_see(lab: LabStack, base: str) -> None:
    assert lab.daemon is not None
    wait(lambda: "error_rate" in rules(lab), 10, "error_rate measured")
    assert rules(lab)["error_rate"]["threshold"] == "<= 0.05"
    stamp = reload_stamp(lab)
    reloads = len(log_events(lab, "reloaded"))

    # Same size, and the old mtime put back: the poll's (mtime, size) signature is unchanged.
    st = os.stat(lab.rules_path)
    edited = base.replace("max: 0.05", "max: 0.07")
    assert len(edited.encode()) == st.st_size
    with open(lab.rules_path, "w") as fh:  # in place: same inode, as `sed -i` would not be
        fh.write(edited)
    os.utime(lab.rules_path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(lab.rules_path)
    assert (after.st_mtime_ns, after.st_size) == (st.st_mtime_ns, st.st_size)

    time.sleep(2 * POLL + 0.5)
    assert rules(lab)["error_rate"]["threshold"] == "<= 0.05", "the poll saw it after all"
    assert reload_stamp(lab) == stamp
    assert len(log_events(lab, "reloaded")) == reloads

    lab.daemon.signal(signal.SIGHUP)
    wait(lambda: rules(lab)["error_rate"]["threshold"] == "<= 0.07", 3.0,
         "SIGHUP applied the edit")
    assert reload_stamp(lab) > stamp
    assert reload_ok(lab) == 1
    assert config(lab)["last_reload_successful"] is True
    done = log_events(lab, "reloaded")[reloads:]
    assert [r["reason"] for r in done] == ["SIGHUP"], done
    assert lab.daemon.running()


def test_c_sighup_with_nothing_changed_still_reloads(lab: LabStack, base: str) -> None:
    assert lab.daemon is not None
    stamp = reload_stamp(lab)
    time.sleep(0.05)
    lab.daemon.signal(signal.SIGHUP)
    wait(lambda: reload_stamp(lab) > stamp, 3.0, "the success timestamp advanced")
    assert reload_ok(lab) == 1 and lab.daemon.running()


def test_c_a_removed_rule_leaves_no_series_for_any_colour(lab: LabStack, base: str) -> None:
    view = lab.site()
    assert view["rollout"] is None or view["phase"] in ("idle", "promoted", "rolled_back",
                                                        "aborted")
    live = view["live"]
    other = "green" if live == "blue" else "blue"
    wait(lambda: "health" in rules(lab), 10, "health measured")
    client = lab.client()
    try:
        # The live colour changes: the rules are measured on the other colour from now on.
        client.post("/api/v1/sites/odoo/switch", {"to": other})
        wait(lambda: lab.site()["target"] == other and "health" in rules(lab), 5,
             f"health measured on {other}")
        stamp = reload_stamp(lab)
        head, _, _ = base.partition("  - name: health\n")
        write(lab.rules_path, head)
        wait(lambda: reload_stamp(lab) > stamp, POLL + 2.0, "the reload")
        assert "health" not in rules(lab)
        assert series(lab, "odoo_watchdog_rule_state", rule="health", color=other) == []
        assert series(lab, "odoo_watchdog_rule_state", rule="health") == []
        assert series(lab, "odoo_watchdog_rule_value", rule="health") == []
    finally:
        client.post("/api/v1/sites/odoo/switch", {"to": live})
        wait(lambda: lab.site()["target"] == live, 5, f"{live} live again")


def after_a_tick(lab: LabStack, timeout: float = 10.0) -> float:
    """Returns as soon as a tick of the site ends (its last_tick changes): the time.time()
    of that tick."""
    last = lab.site()["last_tick"]
    got: float = wait(lambda: (t := lab.site()["last_tick"]) != last and t, timeout, "a tick",
                      every=0.02)
    return got


LATENCY = 4.0  # seconds the live stand-in waits before each answer in the next test


def test_c_a_rule_removed_while_it_is_being_measured_leaves_nothing_behind(
    lab: LabStack, base: str,
) -> None:
    live = lab.site()["live"]
    slow = ("  - name: slow_login\n    source: http\n    path: /web/login\n    timeout: 8s\n"
            "    min: 1\n    for: 0s\n    on_fire: notify\n")
    standin = lab.standin(live)
    assert lab.daemon is not None
    set_faults(standin.url, latency=LATENCY)
    try:
        # The reload must land while a tick is measuring slow_login. On a busy machine the
        # timing can miss; then the scenario is set up again (a miss proves nothing either way).
        for attempt in range(3):
            write(lab.rules_path, base + slow)
            # Its first measurement took LATENCY s; it is listed at the end of that tick.
            wait(lambda: "slow_login" in rules(lab), PICKUP + 2 * LATENCY,
                 "slow_login measured", every=0.02)
            ended = after_a_tick(lab, timeout=2 * LATENCY + 5)
            # The next tick begins within one interval of that one and measures for LATENCY s;
            # SIGHUP (not the 1 s poll) so that the reload lands right then.
            time.sleep(TICK + 0.2)
            stamp = reload_stamp(lab)
            write(lab.rules_path, base)
            lab.daemon.signal(signal.SIGHUP)
            wait(lambda stamp=stamp: reload_stamp(lab) > stamp, POLL + 2.0, "the reload")
            reloaded = config(lab)["last_reload_at"]
            if ended + TICK < reloaded < ended + LATENCY:
                break
            print(f"attempt {attempt + 1}: the reload came {reloaded - ended:.2f}s after the "
                  "tick ended, not inside the next measurement; again")
        else:
            raise AssertionError("three times the reload missed the measurement in flight")
        assert "slow_login" not in rules(lab)
        # Once the measurement in flight is over, and one more tick after it:
        after_a_tick(lab, timeout=LATENCY + 5)
    finally:
        clear_faults(standin.url)
        # HAProxy's health checks timed out meanwhile: wait until it has the server back.
        wait(lambda: http_ok(f"{lab.proxy_url}/web/login"), 15, "the live colour up in HAProxy",
             every=0.2)
    after_a_tick(lab)
    assert series(lab, "odoo_watchdog_rule_state", rule="slow_login") == []
    assert series(lab, "odoo_watchdog_rule_value", rule="slow_login") == []


# ------------------------------------------------------------------------------------ (d)


def view_of_rollout(view: dict[str, Any]) -> tuple[Any, ...]:
    ro = view["rollout"]
    return (view["phase"], ro["id"], ro["step"], ro["step_started"], view["weights"])


async def test_d_a_reload_mid_rollout_keeps_it_going_and_a_removed_rule_stops_counting(
    lab: LabStack, base: str, blue_live: dict[str, Any],
) -> None:
    def in_thread(fn: Callable[[], T]) -> Any:
        return asyncio.to_thread(fn)

    async def until(probe: Callable[[], Any], timeout: float, what: str) -> Any:
        return await asyncio.to_thread(wait, probe, timeout, what)

    assert blue_live["phase"] not in ACTIVE and blue_live["live"] == "blue"
    async with LoadClient(lab.proxy_url, "/web/login", concurrency=2, delay=0.01,
                          max_seconds=90) as load:
        await load.wait_count(10)
        await in_thread(lambda: lab.client().post("/api/v1/sites/odoo/rollouts",
                                                  {"to": "green", "version": "17.0"}))
        view = await until(lambda: (v := lab.site())["phase"] == "progressing"
                           and v["rollout"]["step"] == 1 and v, 15, "progressing step 1")
        # Both rules measured on the candidate before the edit.
        await until(lambda: {"error_rate", "health"} <= set(rules(lab)), 5, "rules on green")
        before = view_of_rollout(view)
        assert before[4] == {"blue": 90, "green": 10}
        assert series(lab, "odoo_watchdog_rule_state", rule="health", color="green")
        stamp = reload_stamp(lab)

        # Remove `health` and change error_rate's threshold, in the middle of step 1. The edit
        # and a SIGHUP come right after a tick, so that the reload lands between two ticks (a
        # reload in the middle of a measurement is the test above).
        head, _, _ = base.partition("  - name: health\n")
        await asyncio.to_thread(after_a_tick, lab)
        write(lab.rules_path, head.replace("max: 0.05", "max: 0.06"))
        assert lab.daemon is not None
        lab.daemon.signal(signal.SIGHUP)
        await until(lambda: reload_stamp(lab) > stamp, POLL + 2.0, "the reload")
        view = lab.site()
        assert view_of_rollout(view) == before, "the reload disturbed the rollout"
        assert view["actual_weights"] == {"blue": 90, "green": 10}
        assert time.time() < view["rollout"]["step_started"] + HOLD_1, "reloaded too late"
        names = {r["name"] for r in view["rules"]}
        assert names == {"error_rate"}, view["rules"]
        assert rules(lab)["error_rate"]["threshold"] == "<= 0.06"
        assert config(lab)["rules"] == 1
        # The removed rule's state series for the measured colour is gone, and it is no
        # longer evaluated.
        assert series(lab, "odoo_watchdog_rule_state", rule="health", color="green") == []
        assert series(lab, "odoo_watchdog_rule_value", rule="health", color="green") == []
        counted = {k: v for k, v in samples(lab).items()
                   if k[0] == "odoo_watchdog_rule_evaluations_total"
                   and ("rule", "health") in k[1]}
        await asyncio.sleep(2 * TICK + 0.2)
        assert {k: v for k, v in samples(lab).items()
                if k[0] == "odoo_watchdog_rule_evaluations_total"
                and ("rule", "health") in k[1]} == counted
        assert "health" not in rules(lab)
        # The rollout carries on: step 2, bake, promoted.
        view = await until(lambda: (v := lab.site())["phase"] == "promoted" and v, 30,
                           "promoted")
        window = load.window(0)
    assert view["rollout"]["id"] == before[1]
    assert view["live"] == "green" and view["weights"] == {"blue": 0, "green": 100}
    assert window.failed == []
    kinds = [e["kind"] for e in view["events"] if e["rollout_id"] == before[1]]
    assert kinds[-5:] == ["step", "step", "step", "baking", "promoted"], kinds
