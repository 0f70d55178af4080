"""A stand-in run as a separate process (`python -m watchdog.lab.standin`), stopped by its pid."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from watchdog.lab.procs import LabProgram, ManagedProcess, free_port, http_ok


class StandinProcess(LabProgram):
    """One stand-in run as `python -m watchdog.lab.standin` on loopback, stopped by its pid."""

    def __init__(
        self,
        color: str,
        workdir: Path,
        port: int | None = None,
        version: str = "17.0",
        *,
        log_stdout: bool = False,
        password_cost: float | None = None,
        syslog: Path | None = None,
        db: str | None = None,
        users: list[str] | None = None,
        totp_users: list[str] | None = None,
        expired_api_keys: list[str] | None = None,
        users_file: Path | None = None,
        data_dir: Path | None = None,
        db_secret: str | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        """`syslog`: log as Odoo's `--syslog` to this unix datagram socket, instead of
        `log_file` (which then stays unwritten, as Odoo's does). `users` ("LOGIN:PASSWORD[:KEY]"
        each), `totp_users`, `expired_api_keys` ("LOGIN:KEY"), `users_file`, `data_dir` and
        `db_secret` are the command line's --user, --totp-user, --expired-api-key, --users,
        --data-dir and --db-secret; `extra_args` go to the command line as given."""
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
        self.syslog = syslog
        if syslog is not None:
            argv += ["--syslog", str(syslog)]
        if password_cost is not None:  # None: the stand-in's default, Odoo's ~0.35 s
            argv += ["--password-cost", str(password_cost)]
        self.data_dir = data_dir
        if db is not None:
            argv += ["--db", db]
        for spec in users or []:
            argv += ["--user", spec]
        for login in totp_users or []:
            argv += ["--totp-user", login]
        for spec in expired_api_keys or []:
            argv += ["--expired-api-key", spec]
        if users_file is not None:
            argv += ["--users", str(users_file)]
        if data_dir is not None:
            argv += ["--data-dir", str(data_dir)]
        if db_secret is not None:
            argv += ["--db-secret", db_secret]
        argv += list(extra_args or [])
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

    def prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"StandinProcess(color={self.color!r}, url={self.url!r}, pid={self.pid})"
