"""Helpers of tests/test_traffic_e2e.py: `source: traffic` rules (DESIGN.md §14) on the lab,
with no Prometheus anywhere.

Everything the tests assert is read from the programs themselves: HAProxy's weights from its
runtime API (`show servers state`), nginx's split from the upstream file it loads and from the
colours that answered, the daemon's word from its site JSON and /metrics.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import step_of
from tests.polling import until
from watchdog.lab.haproxy import colour_servers
from watchdog.lab.nginx import NginxLab
from watchdog.lab.procs import ManagedProcess, free_port, free_udp_port, http_ok
from watchdog.lab.stack import LabStack
from watchdog.lab.standin import StandinProcess
from watchdog.routers.nginx import render_upstream

ROOT = Path(__file__).resolve().parent.parent
SNIPPET = ROOT / "deploy" / "nginx" / "access-log.conf"
FINAL = {"promoted", "rolled_back", "aborted"}
BLUE_ONLY = {"blue": 100, "green": 0}


# ------------------------------------------------------------------------ the daemon's word


def fetch_site(api_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{api_url}/api/v1/sites/odoo", timeout=5) as resp:
        data: dict[str, Any] = json.loads(resp.read())
    return data


async def site_of(api_url: str) -> dict[str, Any]:
    return await asyncio.to_thread(fetch_site, api_url)


def metrics_text(api_url: str) -> str:
    with urllib.request.urlopen(f"{api_url}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def metric(text: str, name: str, **labels: str) -> float | None:
    """One sample of /metrics by name and exact labels; None when it is not exported."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


def rows(view: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """The site JSON's rule rows by (rule, colour)."""
    return {(r["name"], r["color"]): r for r in view.get("rules", [])}


def describe(view: dict[str, Any]) -> str:
    events = "\n".join(f"  {e['kind']}: {e['message']}" for e in view.get("events", [])[-12:])
    shown = "\n".join(
        f"  {r['name']}/{r['color']}: {r['state']} ({r.get('outcome')}) value={r['value']} "
        f"samples={r.get('samples')} p={r.get('p_value')} {r['detail']}"
        for r in view.get("rules", []))
    return f"phase {view['phase']}, weights {view['weights']}\nrules:\n{shown}\nevents:\n{events}"


async def wait_phase(api_url: str, phase: str, step: int | None = None,
                     timeout: float = 30.0) -> dict[str, Any]:
    """Until the daemon reports `phase` (at 1-based `step`); fails at once on a wrong end."""
    last: dict[str, Any] = {}

    async def probe() -> dict[str, Any] | None:
        nonlocal last
        last = await site_of(api_url)
        here = step_of(last)
        if here[0] == phase and (step is None or here[1] == step):
            return last
        if here[0] in FINAL and here[0] != phase:
            raise AssertionError(f"rollout ended {here[0]} while waiting for {phase}:\n"
                                 f"{describe(last)}")
        return None

    try:
        return await until(probe, timeout, f"{phase} step {step}", every=0.1)
    except AssertionError as exc:
        if "rollout ended" in str(exc):
            raise
        raise AssertionError(f"{exc}; {describe(last)}") from None


async def wait_row(api_url: str, rule: str, color: str, check: Any, timeout: float,
                   what: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Until the row of (rule, colour) satisfies `check(row)`; (row, whole view)."""
    last: dict[str, Any] = {}

    async def probe() -> tuple[dict[str, Any], dict[str, Any]] | None:
        nonlocal last
        last = await site_of(api_url)
        row = rows(last).get((rule, color))
        return (row, last) if row is not None and check(row) else None

    try:
        return await until(probe, timeout, what, every=0.1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {describe(last)}") from None


def rollback_event(view: dict[str, Any]) -> dict[str, Any]:
    found: list[dict[str, Any]] = [e for e in view.get("events", [])
                                   if e["kind"] == "rolling_back"]
    assert found, describe(view)
    return found[-1]


# ------------------------------------------------------------------------ HAProxy, directly


def haproxy_weights(lab: LabStack) -> dict[str, int]:
    assert lab.haproxy is not None
    return {c: s["weight"] for c, s in colour_servers(lab.haproxy.admin_socket).items()}


async def wait_haproxy(lab: LabStack, want: dict[str, int], timeout: float,
                       every: float = 0.02) -> float:
    """Until HAProxy applies `want`; the time.monotonic() it was seen."""
    async def probe() -> float | None:
        return time.monotonic() if await asyncio.to_thread(haproxy_weights, lab) == want \
            else None

    return await until(probe, timeout, f"HAProxy at {want}", every=every)


# ------------------------------------------------------------------------ no Prometheus


def descendants(pid: int) -> dict[int, str]:
    """Every live process below `pid`, by pid, with its command name (/proc/<pid>/comm)."""
    children: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) < 2 or fields[0] == "Z":
            continue
        child = int(entry.name)
        children.setdefault(int(fields[1]), []).append(child)
        names[child] = stat[stat.find("(") + 1:stat.rfind(")")]
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found[child] = names[child]
                todo.append(child)
    return found


def assert_no_prometheus(config_path: Path, daemon_pid: int | None,
                         before: Iterable[int] = ()) -> dict[int, str]:
    """The daemon's config has no prometheus: section, none of the processes this lab started
    (ours, less those running `before` it: a session's fixtures may run a Prometheus of their
    own) is a Prometheus, and the daemon we check is among them; what the lab runs."""
    config = yaml.safe_load(config_path.read_text())
    assert "prometheus" not in config, config
    earlier = set(before)
    ours = {pid: name for pid, name in descendants(os.getpid()).items() if pid not in earlier}
    assert daemon_pid in ours, ours
    assert not [n for n in ours.values() if "prometheus" in n.lower()], ours
    return ours


# ------------------------------------------------------------------------ nginx


NGINX_CONFIG = """\
# nginx lab config for the traffic-rule test; every path is inside the workdir.
{user}worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log notice;

events {{
    worker_connections 1024;
}}

http {{
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;

    # The shipped snippet (deploy/nginx/access-log.conf), only its port changed.
    include {snippet};
    include {upstream_file};

    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_connect_timeout 2s;
            proxy_read_timeout 30s;
        }}
    }}
}}
"""


class TrafficNginx(NginxLab):
    """The lab's nginx with the shipped access-log snippet pointed at `syslog_port`."""

    def __init__(self, workdir: Path, upstream_file: Path, syslog_port: int) -> None:
        super().__init__(workdir, upstream_file)
        self.snippet = workdir / "access-log.conf"
        self.syslog_port = syslog_port

    def render(self) -> str:
        text = SNIPPET.read_text()
        assert "syslog:server=127.0.0.1:5140," in text
        self.snippet.write_text(text.replace("127.0.0.1:5140", f"127.0.0.1:{self.syslog_port}"))
        return NGINX_CONFIG.format(
            user="user root;\n" if os.geteuid() == 0 else "", dir=self.workdir, port=self.port,
            snippet=self.snippet, upstream_file=self.upstream_file, upstream=self.upstream)


class NginxTrafficLab:
    """Two stand-ins behind a real nginx that logs to the daemon, the daemon as a process
    with an nginx router and `access_log: {format: nginx}`, and no Prometheus."""

    def __init__(self, workdir: Path, *, rules: str, steps: list[Any], interval: str,
                 bake: str) -> None:
        self.workdir = workdir
        self.rules = rules
        self.steps = steps
        self.interval = interval
        self.bake = bake
        self.blue = StandinProcess("blue", workdir / "blue", version="16.0")
        self.green = StandinProcess("green", workdir / "green", version="17.0")
        self.syslog_port = free_udp_port()
        self.api_port = free_port()
        self.upstream_file = workdir / "conf.d" / "odoo-upstream.conf"
        self.config_path = workdir / "watchdog.yml"
        self.nginx: TrafficNginx | None = None
        self.daemon: ManagedProcess | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def proxy_url(self) -> str:
        assert self.nginx is not None
        return self.nginx.url

    def servers(self) -> dict[str, str]:
        return {"blue": f"127.0.0.1:{self.blue.port}", "green": f"127.0.0.1:{self.green.port}"}

    def start(self) -> NginxTrafficLab:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.blue.start()
        self.green.start()
        self.upstream_file.parent.mkdir(exist_ok=True)
        self.upstream_file.write_text(render_upstream("odoo", "odoo", self.servers(), BLUE_ONLY))
        self.nginx = TrafficNginx(self.workdir / "nginx", self.upstream_file, self.syslog_port)
        self.nginx.start()
        token = self.workdir / "api-token"
        token.write_text("t" * 32 + "\n")
        token.chmod(0o600)
        rules_path = self.workdir / "rules.yml"
        rules_path.write_text(self.rules)
        config = {
            "api": {"listen": f"127.0.0.1:{self.api_port}", "token_file": str(token)},
            "state_dir": str(self.workdir / "state"),
            "rule_files": [str(rules_path)],
            "access_log": {"listen": f"127.0.0.1:{self.syslog_port}", "format": "nginx"},
            "sites": {"odoo": {
                "router": {"kind": "nginx", "upstream_file": str(self.upstream_file),
                           "upstream": "odoo", "test": self.nginx.test_command,
                           "reload": self.nginx.reload_command, "timeout": "10s"},
                "colors": {c: {"server": s, "url": self.standin(c).url}
                           for c, s in self.servers().items()},
                "live": "blue",
                "rollout": {"strategy": "canary", "steps": self.steps,
                            "interval": self.interval, "bake": self.bake,
                            "smoke": ["health", "login", "rpc"]},
            }},
        }
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.token = "t" * 32
        self.daemon = ManagedProcess(
            "odoo-watchdog",
            [sys.executable, "-m", "watchdog.cli", "run", "-c", str(self.config_path)],
            log_path=self.workdir / "daemon.log",
            ready=lambda: http_ok(f"{self.api_url}/healthz"), ready_timeout=30)
        self.daemon.start()
        return self

    def standin(self, color: str) -> StandinProcess:
        return self.blue if color == "blue" else self.green

    def upstream_split(self) -> dict[str, str]:
        """Each colour's parameter in the upstream file nginx loads: weight=N or down."""
        out: dict[str, str] = {}
        servers = self.servers()
        for line in self.upstream_file.read_text().splitlines():
            words = shlex.split(line.replace(";", " ").split("#")[0])
            if len(words) >= 3 and words[0] == "server":
                for color, address in servers.items():
                    if words[1] == address:
                        out[color] = words[2]
        return out

    def stop(self) -> None:
        for proc in (self.daemon, self.nginx):
            if proc is not None:
                proc.stop()
        self.blue.stop()
        self.green.stop()

    def __enter__(self) -> NginxTrafficLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
