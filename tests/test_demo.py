"""`make demo` end to end: a canary promoted, a canary rolled back by itself, a database
prepared, a rollback from the access log without Prometheus; all cleaned up."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.lab


def test_demo_promotes_one_canary_rolls_back_the_other_and_cleans_up() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "watchdog.cli", "demo"],
        capture_output=True, text=True, timeout=420, check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert re.search(r"daemon: promoted +rollout \w+ promoted: green is live", out)
    assert re.search(r"daemon: rolling_back +rolling back \w+ from 50% blue: rule error_rate "
                     r"fired", out)
    assert "final: rolled_back, live green, weights blue 0% / green 100%" in out
    took = re.search(r"HAProxy had blue at 0% ([\d.]+)s later", out)
    assert took is not None and float(took.group(1)) < 15
    # The third act: the database prepared, each step with its duration, then promoted.
    for step in ("backup", "clone", "migrate", "gate"):
        assert re.search(rf"daemon: prepare_step +step \d/4 {step} passed in [\d.]+s", out), step
        assert re.search(rf"\] +{step} +[\d.]+s$", out, re.MULTILINE), step
    assert "green (17.0) serves on odoo_green" in out
    # The fourth act: no Prometheus, the rollback decided by a traffic rule from the access log.
    act4 = out[out.index("ROLLOUT 4"):]
    assert "Prometheus: not started; the daemon's config has no prometheus: section" in act4
    assert re.search(r"daemon: rolling_back +rolling back \w+ from 10% green: rule "
                     r"candidate_5xx_vs_live fired", act4), act4
    assert "decided_on_lines: candidate_5xx_vs_live" in act4, act4
    assert "final: rolled_back, live blue, weights blue 100% / green 0%" in act4, act4
    pids = [int(p) for p in re.findall(r"pid (\d+)", out)]
    # Twice two stand-ins, HAProxy, Prometheus, the daemon; and PostgreSQL; then two
    # stand-ins, HAProxy and the daemon, with no Prometheus.
    assert len(pids) == 15
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
