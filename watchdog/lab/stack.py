"""The whole lab in one object: two Odoo stand-ins behind HAProxy, Prometheus scraping
HAProxy's exporter, and the odoo-watchdog daemon as a real process with a generated config.

The demo, the end-to-end tests and the rollback benchmark all use it. Every program is
started on free loopback ports and stopped by its own pid.
"""

from __future__ import annotations

import json
import secrets
import sys
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from watchdog.client import Client
from watchdog.lab.haproxy import HaproxyLab
from watchdog.lab.procs import ManagedProcess, free_port, free_udp_port, http_ok
from watchdog.lab.prometheus import PrometheusLab, ScrapeJob
from watchdog.lab.standin import StandinProcess

# Rules on HAProxy's own exporter: per-server 5xx share, and the colour's health endpoint.
# The exporter lists code="5xx" from the start, so the share is 0 (not "no data") while the
# colour has traffic and no errors; without traffic it is 0/0, no data, and the rule holds.
LAB_RULES = """\
rules:
  - name: error_rate
    source: prometheus
    query: |
      sum(rate(haproxy_server_http_responses_total{{
        proxy="{{{{ backend }}}}",server="{{{{ server }}}}",code="5xx"}}[{window}]))
      / sum(rate(haproxy_server_http_responses_total{{
        proxy="{{{{ backend }}}}",server="{{{{ server }}}}"}}[{window}]))
    max: 0.05
    for: {error_for}
    no_data: hold
    on_fire: rollback
    annotations: {{summary: "5xx share of {{{{ color }}}} above 5%"}}
  - name: health
    source: http
    path: /web/health
    timeout: 1s
    min: 1
    for: {health_for}
    on_fire: rollback
"""


HEALTH_RULE = """\
  - name: health
    source: http
    path: /web/health
    timeout: 1s
    min: 1
    for: {hold}
    on_fire: rollback
"""


def health_rules(hold: str = "2s") -> str:
    """A rule file with the lab's health rule alone (no Prometheus, no access log): for the
    labs that test what the daemon does, not what it measures."""
    return "rules:\n" + HEALTH_RULE.format(hold=hold)


class LabStack:
    def __init__(
        self,
        workdir: Path,
        *,
        interval: str = "1s",
        scrape: str = "1s",
        steps: list[Any] | None = None,
        bake: str = "3s",
        keep_previous: str = "1h",
        error_for: str = "2s",
        health_for: str = "2s",
        window: str = "5s",
        token: str | None = None,
        extra_rules: str = "",
        access_log: bool = False,
        notify_url: str | None = None,
        site_extra: dict[str, Any] | None = None,
        prometheus: bool = True,
        rules: str | None = None,
        haproxy_nodes: int = 1,
    ) -> None:
        self.workdir = workdir
        self.interval = interval
        self.scrape = scrape
        self.steps = steps if steps is not None else [
            {"weight": 10, "hold": "3s"}, {"weight": 50, "hold": "3s"}, {"weight": 100}]
        self.bake = bake
        self.keep_previous = keep_previous
        self.error_for = error_for
        self.health_for = health_for
        self.window = window
        self.token = token if token is not None else secrets.token_hex(16)
        self.extra_rules = extra_rules
        # Without Prometheus (DESIGN.md §14): no Prometheus runs and the config has no
        # `prometheus:` section; `rules` (a rule file's text) replaces LAB_RULES.
        self.with_prometheus = prometheus
        self.base_rules = rules
        # HAProxy access logs over UDP syslog to the daemon (docs/configuration.md, access_log)
        self.syslog_port = free_udp_port() if access_log else None
        self.notify_url = notify_url
        # More keys of the site's config (`database:`, `prepare:`), merged over the rest.
        self.site_extra = site_extra or {}
        self.api_port = free_port()
        self.blue = StandinProcess("blue", workdir / "blue", version="16.0")
        self.green = StandinProcess("green", workdir / "green", version="17.0")
        self.haproxy: HaproxyLab | None = None
        # More than one: that many HAProxy nodes in front of the site, and the router has
        # `sockets` and `state_files` (DESIGN.md §15); `haproxy` is the first of `haproxies`.
        self.haproxy_nodes = haproxy_nodes
        self.haproxies: list[HaproxyLab] = []
        self.prometheus: PrometheusLab | None = None
        self.daemon: ManagedProcess | None = None
        self.config_path = workdir / "watchdog.yml"
        self.rules_path = workdir / "rules.yml"
        self.token_path = workdir / "api-token"

    # ---------------------------------------------------------------- programs

    def start(self, daemon: bool = True) -> LabStack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.blue.start()
        self.green.start()
        self.haproxy = HaproxyLab(self.workdir / "haproxy", self.blue.port, self.green.port,
                                  syslog_port=self.syslog_port)
        self.haproxies = [self.haproxy] + [
            HaproxyLab(self.workdir / f"haproxy-{index + 1}", self.blue.port, self.green.port)
            for index in range(1, self.haproxy_nodes)]
        for node in self.haproxies:
            node.start()
        if self.with_prometheus:
            self.prometheus = PrometheusLab(
                self.workdir / "prometheus", scrape_interval=self.scrape,
                jobs=[ScrapeJob("haproxy", [f"127.0.0.1:{self.haproxy.port}"])])
            self.prometheus.start()
            self.prometheus.wait_scraped("haproxy")
        self.write_config()
        if daemon:
            self.start_daemon()
        return self

    def write_config(self) -> None:
        assert self.haproxy is not None
        assert self.prometheus is not None or not self.with_prometheus
        self.token_path.write_text(self.token + "\n")
        self.token_path.chmod(0o600)
        base = self.base_rules if self.base_rules is not None else LAB_RULES.format(
            window=self.window, error_for=self.error_for, health_for=self.health_for)
        self.rules_path.write_text(base + self.extra_rules)
        config = {
            "api": {"listen": f"127.0.0.1:{self.api_port}", "token_file": str(self.token_path)},
            "state_dir": str(self.workdir / "state"),
            **({"prometheus": {"url": self.prometheus.url, "timeout": "2s"}}
               if self.prometheus is not None else {}),
            "rule_files": [str(self.rules_path)],
            **({"access_log": {"listen": f"127.0.0.1:{self.syslog_port}", "format": "haproxy"}}
               if self.syslog_port else {}),
            **({"notify": [{"kind": "webhook", "url": self.notify_url, "timeout": "2s"}]}
               if self.notify_url else {}),
            "sites": {"odoo": {
                "router": self._router_config(),
                "colors": {
                    "blue": {"server": "odoo-blue", "url": self.blue.url,
                             "log_file": str(self.blue.log_file)},
                    "green": {"server": "odoo-green", "url": self.green.url,
                              "log_file": str(self.green.log_file)},
                },
                "live": "blue",
                "rollout": {"strategy": "canary", "steps": self.steps,
                            "interval": self.interval, "bake": self.bake,
                            "keep_previous": self.keep_previous,
                            "smoke": ["health", "login", "rpc"]},
                **self.site_extra,
            }},
        }
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def _router_config(self) -> dict[str, Any]:
        assert self.haproxy is not None
        if len(self.haproxies) > 1:
            return {"kind": "haproxy",
                    "sockets": [str(node.admin_socket) for node in self.haproxies],
                    "backend": "odoo",
                    "state_files": [str(node.state_file) for node in self.haproxies],
                    "drain_timeout": "2s"}
        return {"kind": "haproxy", "socket": str(self.haproxy.admin_socket), "backend": "odoo",
                "state_file": str(self.haproxy.state_file), "drain_timeout": "2s"}

    def start_daemon(self, env: dict[str, str] | None = None) -> ManagedProcess:
        """The daemon as a process; `env` is added to ours (the chaos test's
        ODOO_WATCHDOG_CRASH_AT)."""
        self.daemon = ManagedProcess(
            "odoo-watchdog",
            [sys.executable, "-m", "watchdog.cli", "run", "-c", str(self.config_path)],
            log_path=self.workdir / "daemon.log",
            ready=lambda: http_ok(f"{self.api_url}/healthz"),
            env=env,
            ready_timeout=30,
        )
        self.daemon.start()
        return self.daemon

    def stop(self) -> None:
        for proc in (self.daemon, self.prometheus, *self.haproxies):
            if proc is not None:
                proc.stop()
        self.blue.stop()
        self.green.stop()

    def __enter__(self) -> LabStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- talking to it

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def proxy_url(self) -> str:
        assert self.haproxy is not None
        return self.haproxy.url

    def client(self) -> Client:
        return Client(self.api_url, self.token)

    def site(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.api_url}/api/v1/sites/odoo", timeout=5) as resp:
            data: dict[str, Any] = json.loads(resp.read())
        return data

    def standin(self, color: str) -> StandinProcess:
        return self.blue if color == "blue" else self.green
