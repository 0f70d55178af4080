"""A stand-in run as a separate process (`python -m watchdog.lab.standin`), stopped by its pid."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from watchdog.lab.procs import ManagedProcess, free_port, http_ok


class StandinProcess:
    """One stand-in run as `python -m watchdog.lab.standin` on loopback, stopped by its pid."""

    def __init__(
        self,
        color: str,
        workdir: Path,
        port: int | None = None,
        version: str = "17.0",
        *,
        log_stdout: bool = False,
    ) -> None:
        self.color = color
        self.workdir = Path(workdir)
        self.port = port if port is not None else free_port()
        self.version = version
        self.log_file = self.workdir / f"odoo-{color}.log"
        self.output_file = self.workdir / f"standin-{color}.out"
        argv = [
            sys.executable,
            "-m",
            "watchdog.lab.standin",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--color",
            color,
            "--version",
            version,
            "--log-file",
            str(self.log_file),
        ]
        if log_stdout:
            argv.append("--log-stdout")
        project_root = str(Path(__file__).resolve().parents[3])
        pythonpath = os.pathsep.join(p for p in (project_root, os.environ.get("PYTHONPATH")) if p)
        self.process = ManagedProcess(
            f"odoo-standin-{color}",
            argv,
            log_path=self.output_file,
            ready=lambda: http_ok(f"{self.url}/web/health", timeout=0.5),
            env={"PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1"},
            ready_timeout=10.0,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def running(self) -> bool:
        return self.process.running()

    def start(self) -> StandinProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process.start()
        return self

    def stop(self, grace: float = 5.0) -> None:
        self.process.stop(grace)

    def kill(self) -> None:
        self.process.kill()

    def __enter__(self) -> StandinProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"StandinProcess(color={self.color!r}, url={self.url!r}, pid={self.pid})"
