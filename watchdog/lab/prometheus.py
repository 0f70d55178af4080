"""Prometheus 2.42 from Debian, run on a free loopback port with a generated config."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from watchdog.lab.procs import (
    LabError,
    LabProgram,
    ManagedProcess,
    find_program,
    free_port,
    http_ok,
)


@dataclass
class ScrapeJob:
    name: str
    targets: list[str]  # host:port
    metrics_path: str = "/metrics"
    labels: dict[str, str] = field(default_factory=dict)
    bearer_token: str | None = None


def prometheus_binary() -> str:
    return find_program("prometheus", "apt-get install -y prometheus")


class PrometheusLab(LabProgram):
    """A real Prometheus whose scrape jobs and rule files the caller sets."""

    def __init__(
        self,
        workdir: Path,
        *,
        scrape_interval: str = "1s",
        port: int | None = None,
        jobs: list[ScrapeJob] | None = None,
        rule_files: list[Path] | None = None,
        alertmanagers: list[str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.scrape_interval = scrape_interval
        self.jobs = list(jobs or [])
        self.rule_files = list(rule_files or [])
        self.alertmanagers = list(alertmanagers or [])
        self.config_path = workdir / "prometheus.yml"
        self.process = ManagedProcess(
            "prometheus",
            [
                prometheus_binary(),
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=2h",
                "--log.level=warn",
            ],
            log_path=workdir / "prometheus.log",
            ready=lambda: http_ok(f"{self.url}/-/ready"),
            ready_timeout=60,
        )

    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "evaluation_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,
            },
            "scrape_configs": [self._job(job) for job in self.jobs],
        }
        if self.rule_files:
            config["rule_files"] = [str(p) for p in self.rule_files]
        if self.alertmanagers:
            config["alerting"] = {
                "alertmanagers": [{"static_configs": [{"targets": self.alertmanagers}]}]
            }
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    @staticmethod
    def _job(job: ScrapeJob) -> dict[str, Any]:
        out: dict[str, Any] = {
            "job_name": job.name,
            "metrics_path": job.metrics_path,
            "static_configs": [{"targets": job.targets, "labels": job.labels}],
        }
        if job.bearer_token:
            out["authorization"] = {"credentials": job.bearer_token}
        return out

    def prepare(self) -> None:
        self.write_config()

    def reload(self) -> None:
        """Write the config again and ask Prometheus to load it (`/-/reload`)."""
        self.write_config()
        req = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            if resp.status != 200:
                raise LabError(f"prometheus reload answered {resp.status}")

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query, for tests and the demo (the daemon uses its own source)."""
        qs = urllib.parse.urlencode({"query": promql})
        url = f"{self.url}/api/v1/query?{qs}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read())
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_for(
        self, promql: str, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 30
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = self.query(promql)
            if predicate(result):
                return result
            time.sleep(0.25)
        raise LabError(f"timed out after {timeout:g}s waiting on {promql!r}; last: {result!r}")

    def wait_scraped(self, job: str, timeout: float = 30) -> None:
        """Until every target of `job` has been scraped successfully at least once."""
        want = len(next(j for j in self.jobs if j.name == job).targets)
        self.wait_for(
            f'up{{job="{job}"}} == 1', lambda r: len(r) >= want, timeout=timeout
        )
