"""Start and stop the lab's real programs on loopback, each tracked by its own pid.

Every program runs in its own process group so that stopping it also stops anything it
forked (nginx workers, HAProxy's master/worker pair). Stopping is by pid: SIGTERM, then
SIGKILL after a grace period. Nothing here ever kills by name.

`ManagedProcess` starts one program, waits until it is ready and stops it by pid; `LabProgram`
is the base of the lab's wrappers around one (HAProxy, nginx, Prometheus, Alertmanager, the
Odoo stand-in): url, pid, start/stop and `with`, around a config written in `prepare()`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self


class LabError(RuntimeError):
    """A lab program could not be started or did not become ready."""


def find_program(
    name: str, install: str, *, names: Sequence[str] = (), path: str | None = None
) -> str:
    """The program `name` (or the first of `names`) found on PATH, or on `path` when given;
    LabError saying how to `install` it when there is none."""
    for candidate in names or (name,):
        found = shutil.which(candidate, path=path)
        if found is not None:
            return found
    raise LabError(f"{name} is not installed: {install}")


def tail_file(path: Path, lines: int, missing: str) -> str:
    """The last `lines` lines of the file at `path`, or `missing` when it cannot be read."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return missing
    return "\n".join(text.splitlines()[-lines:])


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port on loopback that nothing is bound to right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """True when a GET on url answers 2xx."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= int(resp.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class ManagedProcess:
    """One long-running program of the lab.

    `start()` launches it in a new process group with stdout/stderr to a log file, then
    polls `ready()` until it answers or the program exits. `stop()` ends it by pid.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        ready: Callable[[], bool] | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        ready_timeout: float = 30.0,
        user: str | None = None,
    ) -> None:
        self.name = name
        self._user = user  # run as this user (PostgreSQL refuses root); None: as we are
        self.argv = list(argv)
        self.log_path = log_path
        self._ready = ready
        self._env = env
        self._cwd = cwd
        self._ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> ManagedProcess:
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        if self._env:
            env.update(self._env)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self._cwd,
                start_new_session=True,
                user=self._user,
            )
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        if self._ready is None:
            return
        deadline = time.monotonic() + self._ready_timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise LabError(
                    f"{self.name} exited with code {self.proc.returncode} before it was ready; "
                    f"its output:\n{self.tail()}"
                )
            if self._ready():
                return
            time.sleep(0.05)
        self.stop()
        raise LabError(
            f"{self.name} was not ready after {self._ready_timeout:.0f}s:\n{self.tail()}"
        )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM to the process group led by our pid, SIGKILL if it does not go."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=grace)
        # Children that outlived the leader (a forked worker) share its group id.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL at once: the crash case."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)

    def tail(self, lines: int = 30) -> str:
        return tail_file(self.log_path, lines, "(no output)")

    def __enter__(self) -> ManagedProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LabProgram:
    """A lab program on 127.0.0.1:`port`, run by one ManagedProcess (`process`).

    A subclass sets `port` and `process` in its `__init__` and writes what the program reads
    at start (its config) in `prepare()`. This gives it `url`, `pid`, `running()`, `start()`
    (prepare, launch, wait until ready), `stop()` and `kill()` by pid, and use in `with`.
    """

    port: int
    process: ManagedProcess

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def running(self) -> bool:
        return self.process.running()

    def listening(self) -> bool:
        """True when something accepts TCP connections on 127.0.0.1:`port`."""
        return port_open("127.0.0.1", self.port)

    def prepare(self) -> None:
        """Write what the program needs before it starts; nothing by default."""

    def start(self) -> Self:
        self.prepare()
        self.process.start()
        return self

    def stop(self, grace: float = 5.0) -> None:
        self.process.stop(grace)

    def kill(self) -> None:
        self.process.kill()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
