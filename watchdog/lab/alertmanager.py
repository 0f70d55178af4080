"""Alertmanager 0.25 from Debian (`prometheus-alertmanager`), on loopback, clustering off,
routing every alert at once to one webhook (the daemon's) with a Bearer token from a file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from watchdog.lab.procs import LabProgram, ManagedProcess, find_program, free_port, http_ok


def alertmanager_binary() -> str:
    return find_program(
        "alertmanager",
        "apt-get install -y prometheus-alertmanager",
        names=("prometheus-alertmanager", "alertmanager"),
    )


class AlertmanagerLab(LabProgram):
    def __init__(self, workdir: Path, webhook_url: str, *, token_file: Path | None = None,
                 port: int | None = None, group_wait: str = "0s") -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.webhook_url = webhook_url
        self.token_file = token_file
        self.group_wait = group_wait
        self.config_path = workdir / "alertmanager.yml"
        self.process = ManagedProcess(
            "alertmanager",
            [alertmanager_binary(), f"--config.file={self.config_path}",
             f"--storage.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}",
             "--cluster.listen-address=", "--log.level=warn"],
            log_path=workdir / "alertmanager.log",
            ready=lambda: http_ok(f"{self.url}/-/ready"),
            ready_timeout=30,
        )

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def write_config(self) -> None:
        webhook: dict[str, Any] = {"url": self.webhook_url, "send_resolved": True,
                                   "max_alerts": 0}
        if self.token_file is not None:
            webhook["http_config"] = {"authorization": {"type": "Bearer",
                                                        "credentials_file": str(self.token_file)}}
        config = {
            "route": {"receiver": "watchdog", "group_by": ["alertname", "site", "color"],
                      "group_wait": self.group_wait, "group_interval": "1s",
                      "repeat_interval": "1h"},
            "receivers": [{"name": "watchdog", "webhook_configs": [webhook]}],
        }
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def prepare(self) -> None:
        self.write_config()
