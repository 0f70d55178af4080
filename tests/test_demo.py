"""`make demo` end to end: the lab starts, a fault is injected, rules fire, everything stops."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.lab


def test_demo_shows_rules_firing_on_injected_faults_and_cleans_up() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "watchdog.cli", "demo"],
        capture_output=True, text=True, timeout=240, check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "FAULT: injecting 30% HTTP 500 answers into green" in out
    assert "rule error_rate         ok -> pending" in out
    assert "rule error_rate    pending -> firing" in out
    assert "rule health        pending -> firing" in out
    assert "stopping Prometheus and the stand-ins (by pid)" in out
    pids = [int(word.rstrip(",")) for line in out.splitlines() if "pid " in line
            for word in [line.split("pid ")[1].split()[0]]]
    assert len(pids) == 3
    for pid in pids:  # every program the demo started is gone
        assert not os.path.exists(f"/proc/{pid}") or _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
