"""The `odoo-watchdog` client commands as a user runs them, against the lab's daemon process.

The daemon is a real process (`odoo-watchdog run`) in front of a real HAProxy and Prometheus;
each CLI call is a subprocess, and every traffic change is read back from HAProxy itself.
Holds and the bake are an hour long, so a rollout moves only when the test says so.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from watchdog import routers
from watchdog.config import load
from watchdog.lab.procs import free_port
from watchdog.lab.stack import LabStack

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parent.parent
STEPS: list[Any] = [{"weight": 10, "hold": "1h"}, "pause", {"weight": 100}]
BLUE = {"blue": 100, "green": 0}
GREEN = {"blue": 0, "green": 100}
CANARY = {"blue": 90, "green": 10}
ACTIVE = {"preflight", "progressing", "paused", "baking", "rolling_back"}
CLEAR = "\x1b[H\x1b[2J"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabStack]:
    stack = LabStack(tmp_path_factory.mktemp("cli-lab"), steps=STEPS, interval="1s",
                     bake="1h", keep_previous="1h")
    try:
        stack.start()
        deadline = time.monotonic() + 20
        while not stack.site()["rules"]:  # rule states exist from the first tick on
            assert time.monotonic() < deadline, "the daemon never ticked"
            time.sleep(0.1)
        yield stack
    finally:
        stack.stop()


@pytest.fixture(autouse=True)
def settled(lab: LabStack) -> Iterator[None]:
    """Every test starts and ends with no active rollout and blue at 100% in HAProxy."""
    _settle(lab)
    yield
    _settle(lab)


def _settle(lab: LabStack) -> None:
    client = lab.client()
    view = lab.site()
    if view["phase"] in ACTIVE:
        view = client.post("/api/v1/sites/odoo/abort", {"reason": "test cleanup"})
    if view["live"] != "blue" or view["weights"] != BLUE:
        view = client.post("/api/v1/sites/odoo/switch", {"to": "blue"})
    assert view["phase"] not in ACTIVE and view["live"] == "blue"
    assert haproxy_weights(lab) == BLUE


def haproxy_weights(lab: LabStack) -> dict[str, int]:
    """The split HAProxy really has, read over its runtime API."""
    async def read() -> dict[str, int]:
        router = routers.create("odoo", load(lab.config_path).config.sites["odoo"])
        try:
            return await router.get_weights()
        finally:
            await router.close()
    return asyncio.run(read())


def cli(*args: str, env: dict[str, str] | None = None,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`odoo-watchdog ARGS` as a subprocess, with no ODOO_WATCHDOG_TOKEN unless given."""
    full_env = {k: v for k, v in os.environ.items() if k != "ODOO_WATCHDOG_TOKEN"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "watchdog.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=full_env, cwd=ROOT, check=False)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stdout


def refused(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout == ""
    return result.stderr


def wait_phase(lab: LabStack, phase: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    view = lab.site()
    while view["phase"] != phase:
        assert time.monotonic() < deadline, f"phase {view['phase']}, wanted {phase}"
        time.sleep(0.1)
        view = lab.site()
    return view


def unchanged(lab: LabStack, before: dict[str, Any]) -> None:
    after = lab.site()
    for key in ("phase", "live", "weights"):
        assert after[key] == before[key], key
    assert (after["rollout"] or {}).get("id") == (before["rollout"] or {}).get("id")
    assert haproxy_weights(lab) == before["weights"]


def rule_row(name: str, color: str, state: str, value: str, threshold: str) -> re.Pattern[str]:
    return re.compile(rf"^  {name}\s+{color}\s+{state}\s+{re.escape(value)}  "
                      rf"{re.escape(threshold)}\s+2s\s+rollback\s*$", re.MULTILINE)


# ---------------------------------------------------------------- status


def test_status_shows_phase_weights_and_each_rule(lab: LabStack) -> None:
    phase = lab.site()["phase"]
    out = ok(cli("status", "-c", str(lab.config_path)))
    lines = out.splitlines()
    assert lines[0] == f"site odoo: {phase}, live blue, weights blue 100% / green 0%"
    header = lines[1].split()
    assert header[:5] == ["rule", "colour", "state", "value", "threshold"]
    # Green gets no requests, blue neither outside a test: HAProxy's 5xx share is 0/0, no data.
    assert rule_row("error_rate", "blue", "holding", "no data", "<= 0.05").search(out), out
    assert rule_row("health", "blue", "ok", "1", ">= 1").search(out), out
    assert "\n  proxy checks: blue UP (L7OK 200), green UP (L7OK 200)\n" in out + "\n", out
    assert "\x1b" not in out


def test_status_json_and_one_site(lab: LabStack) -> None:
    config = str(lab.config_path)
    sites = json.loads(ok(cli("status", "--json", "-c", config)))
    assert isinstance(sites, list) and [s["site"] for s in sites] == ["odoo"]
    assert sites[0]["weights"] == BLUE and sites[0]["live"] == "blue"
    assert {r["name"] for r in sites[0]["rules"]} == {"error_rate", "health"}

    one = json.loads(ok(cli("status", "odoo", "--json", "-c", config)))
    assert isinstance(one, dict) and one["site"] == "odoo"
    assert one["weights"] == BLUE
    assert 1 <= len(one["events"]) <= 50

    out = ok(cli("status", "odoo", "-c", config))
    assert out.count("site odoo:") == 1
    last = one["events"][-1]
    assert f"{last['kind']}: {last['message']}" in out  # recent events, newest last

    err = refused(cli("status", "nope", "-c", config))
    assert err == "error: no site 'nope'\n"


def test_status_watch_redraws_until_interrupted(lab: LabStack) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ODOO_WATCHDOG_TOKEN"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "watchdog.cli", "status", "--watch", "-c", str(lab.config_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        time.sleep(2.5)
        assert proc.poll() is None, proc.communicate()
        os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C does
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    frames = out.split(CLEAR)
    assert frames[0] == ""
    frames = frames[1:]
    assert len(frames) >= 2, out
    for frame in frames:
        lines = frame.splitlines()
        assert re.fullmatch(rf"\d\d:\d\d:\d\d {re.escape(lab.api_url)}", lines[0]), lines[0]
        assert "site odoo: " in frame and "weights blue 100% / green 0%" in frame
    assert proc.returncode in (0, 130), err
    assert "Traceback" not in err


# ---------------------------------------------------------------- commands


def test_deploy_then_promote_abort_and_switch(lab: LabStack) -> None:
    config = str(lab.config_path)
    me = f"{getpass.getuser()}@{socket.gethostname()}"

    out = ok(cli("deploy", "odoo", "--to", "green", "--version", "17.0", "-c", config))
    lines = out.splitlines()
    assert lines[0] == "site odoo: preflight, live blue, weights blue 100% / green 0%"
    match = re.match(r"  rollout ([0-9a-f]+): blue -> green 17\.0, canary, step 0/3$", lines[1])
    assert match, out
    rollout_id = match.group(1)

    view = wait_phase(lab, "progressing")
    assert view["rollout"]["id"] == rollout_id and view["weights"] == CANARY
    assert haproxy_weights(lab) == CANARY
    out = ok(cli("status", "-c", config))
    assert out.startswith("site odoo: progressing, live blue, weights blue 90% / green 10%\n")
    assert re.search(rf"rollout {rollout_id}: blue -> green 17\.0, canary, step 1/3 \(10%\), "
                     r"next in (1h|59m\d+s)\n", out), out
    assert rule_row("health", "green", "ok", "1", ">= 1").search(out), out

    out = ok(cli("promote", "odoo", "-c", config))
    assert out.startswith("site odoo: paused, live blue, weights blue 90% / green 10%\n")
    assert "step 2/3 (pause), paused by step" in out
    assert haproxy_weights(lab) == CANARY

    out = ok(cli("abort", "odoo", "--reason", "bad build", "-c", config))
    assert out.startswith("site odoo: aborted, live blue, weights blue 100% / green 0%\n")
    assert "  reason: bad build\n" in out
    assert haproxy_weights(lab) == BLUE

    out = ok(cli("switch", "odoo", "green", "-c", config))
    assert out.startswith("site odoo: aborted, live green, weights blue 0% / green 100%\n")
    assert haproxy_weights(lab) == GREEN
    out = ok(cli("switch", "odoo", "blue", "-c", config))
    assert out.startswith("site odoo: aborted, live blue, weights blue 100% / green 0%\n")
    assert haproxy_weights(lab) == BLUE

    events = lab.site()["events"]
    ours = [(e["kind"], e["actor"]) for e in events if e["rollout_id"] == rollout_id]
    assert ours[:5] == [("started", me), ("preflight_passed", "daemon"), ("step", "daemon"),
                        ("paused", me), ("aborted", me)]
    assert [(e["kind"], e["actor"], e["weights"]) for e in events[-2:]] == [
        ("switched", me, GREEN), ("switched", me, BLUE)]


def test_promote_full_goes_to_100_percent(lab: LabStack) -> None:
    config = str(lab.config_path)
    ok(cli("deploy", "odoo", "--to", "green", "-c", config))
    wait_phase(lab, "progressing")
    out = ok(cli("promote", "odoo", "--full", "-c", config))
    assert out.startswith("site odoo: progressing, live blue, weights blue 0% / green 100%\n")
    assert "step 3/3 (100%)" in out
    assert haproxy_weights(lab) == GREEN
    # the settle fixture aborts it: blue back at 100%


def test_commands_the_phase_forbids_exit_1_with_the_daemons_reason(lab: LabStack) -> None:
    config = str(lab.config_path)
    before = lab.site()
    err = refused(cli("promote", "odoo", "-c", config))
    assert err == f"error: nothing to promote: odoo is {before['phase']}\n"
    err = refused(cli("deploy", "odoo", "--to", "blue", "-c", config))
    assert err == "error: blue is already live on odoo; deploy to green\n"
    err = refused(cli("switch", "odoo", "blue", "-c", config))
    assert err == "error: blue already serves all of odoo\n"
    unchanged(lab, before)


# ---------------------------------------------------------------- token and reachability


def test_without_a_token_posts_are_refused_and_change_nothing(lab: LabStack) -> None:
    before = lab.site()
    # --url alone: no config, so no token_file, and no ODOO_WATCHDOG_TOKEN either.
    err = refused(cli("deploy", "odoo", "--to", "green", "--url", lab.api_url))
    assert err == "error: missing or wrong bearer token\n"
    unchanged(lab, before)
    # Reading needs no token.
    assert json.loads(ok(cli("status", "odoo", "--json", "--url", lab.api_url)))["site"] == "odoo"


def test_token_from_the_environment_with_url(lab: LabStack) -> None:
    env = {"ODOO_WATCHDOG_TOKEN": lab.token}
    out = ok(cli("switch", "odoo", "green", "--url", lab.api_url, env=env))
    assert "live green, weights blue 0% / green 100%" in out
    assert haproxy_weights(lab) == GREEN
    ok(cli("switch", "odoo", "blue", "--url", lab.api_url, env=env))
    assert haproxy_weights(lab) == BLUE


def test_wrong_token_in_the_environment_wins_over_token_file_and_is_refused(
    lab: LabStack,
) -> None:
    config = str(lab.config_path)
    before = lab.site()
    env = {"ODOO_WATCHDOG_TOKEN": "not-the-token"}
    for args in (["deploy", "odoo", "--to", "green", "--version", "17.0"],
                 ["promote", "odoo", "--full"], ["abort", "odoo", "--reason", "x"],
                 ["switch", "odoo", "green"]):
        err = refused(cli(*args, "-c", config, env=env))
        assert err == "error: missing or wrong bearer token\n", args
    unchanged(lab, before)


def test_unreachable_daemon_is_a_clear_error(lab: LabStack) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["status"], ["status", "--watch"], ["status", "odoo", "--json"],
                 ["deploy", "odoo", "--to", "green"], ["switch", "odoo", "green"]):
        err = refused(cli(*args, "--url", url, env={"ODOO_WATCHDOG_TOKEN": lab.token},
                          timeout=15))
        assert err.startswith(f"error: cannot reach the daemon at {url}: "), (args, err)
        assert "Connection refused" in err
    assert haproxy_weights(lab) == BLUE


@pytest.mark.parametrize("url", ["http://127.0.0.1:notaport", "http://[::1"])
def test_malformed_url_is_an_error_message_not_a_traceback(url: str) -> None:
    result = cli("status", "--url", url, timeout=15)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: "), result.stderr
