"""The configs we ship are valid for the real programs that read them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_haproxy_cfg_is_valid_for_haproxy_26() -> None:
    result = subprocess.run(["haproxy", "-c", "-f", str(ROOT / "deploy/haproxy/haproxy.cfg")],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Configuration file is valid" in result.stdout + result.stderr


@pytest.mark.parametrize("needle", [
    "level admin", "prometheus-exporter", "cookie SERVERID", "option redispatch",
    "server-state-file", "load-server-state-from-file global", "option httplog",
    "log 127.0.0.1:5140",
])
def test_shipped_haproxy_cfg_has_what_the_router_relies_on(needle: str) -> None:
    assert needle in (ROOT / "deploy/haproxy/haproxy.cfg").read_text()
