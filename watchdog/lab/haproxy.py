"""HAProxy 2.6 from Debian in front of the two stand-ins, on loopback, in master-worker mode.

The generated config is the shipped `deploy/haproxy/haproxy.cfg` in miniature: an admin stats
socket (and a user-level one, to test refusals), the Prometheus exporter, cookie stickiness,
`option redispatch`, a server-state-file loaded on reload, the health check with a Host header
(Odoo answers 500 without one), and optionally access logs to a syslog port.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from watchdog.lab.procs import LabError, LabProgram, ManagedProcess, find_program, free_port

CONFIG = """\
global
    master-worker
    stats socket {dir}/admin.sock mode 600 level admin
    stats socket {dir}/user.sock mode 600 level user
    stats socket 127.0.0.1:{tcp_port} level admin
    stats timeout 30s
    server-state-file {dir}/haproxy.state
{log_global}
defaults
    mode http
    load-server-state-from-file global
    option redispatch
    retries 3
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 5s
{log_defaults}
frontend odoo
    bind 127.0.0.1:{port}
    http-request use-service prometheus-exporter if {{ path /metrics }}
    default_backend {backend}

backend {backend}
    balance roundrobin
    cookie SERVERID insert indirect nocache
    option httpchk
    http-check send meth GET uri /web/health ver HTTP/1.1 hdr Host localhost
    server odoo-blue 127.0.0.1:{blue_port} weight {blue_weight} cookie blue check inter 1s
    server odoo-green 127.0.0.1:{green_port} weight {green_weight} cookie green check inter 1s

backend static
    balance source
    server static-a 127.0.0.1:{blue_port} weight 1
    server static-b 127.0.0.1:{green_port} weight 1
"""


def haproxy_binary() -> str:
    return find_program("haproxy", "apt-get install -y haproxy")


class HaproxyLab(LabProgram):
    """A real HAProxy: `port` is the frontend, `admin_socket` the runtime API at level admin."""

    def __init__(
        self,
        workdir: Path,
        blue_port: int,
        green_port: int,
        *,
        port: int | None = None,
        backend: str = "odoo",
        weights: tuple[int, int] = (100, 0),
        syslog_port: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.backend = backend
        self.blue_port = blue_port
        self.green_port = green_port
        self.weights = weights
        self.syslog_port = syslog_port
        self.config_path = workdir / "haproxy.cfg"
        self.admin_socket = workdir / "admin.sock"
        self.user_socket = workdir / "user.sock"
        self.state_file = workdir / "haproxy.state"
        self.tcp_port = free_port()
        self.process = ManagedProcess(
            "haproxy",
            [haproxy_binary(), "-db", "-f", str(self.config_path)],
            log_path=workdir / "haproxy.out",
            ready=self._ready,
            ready_timeout=20,
        )

    @property
    def tcp_socket(self) -> str:
        return f"127.0.0.1:{self.tcp_port}"

    def _ready(self) -> bool:
        return self.listening() and self.admin_socket.exists()

    def render(self) -> str:
        log_global = log_defaults = ""
        if self.syslog_port is not None:
            log_global = f"    log 127.0.0.1:{self.syslog_port} len 4096 local0 info"
            log_defaults = "    log global\n    option httplog"
        return CONFIG.format(
            dir=self.workdir, port=self.port, backend=self.backend, tcp_port=self.tcp_port,
            blue_port=self.blue_port, green_port=self.green_port,
            blue_weight=self.weights[0], green_weight=self.weights[1],
            log_global=log_global, log_defaults=log_defaults,
        )

    def prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.render())

    def reload(self, timeout: float = 10.0) -> None:
        """SIGUSR2 to the master: a new worker starts, reads the server-state-file, takes over."""
        before = worker_pid(self.admin_socket)
        self.process.signal(signal.SIGUSR2)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = worker_pid(self.admin_socket)
            if now is not None and now != before:
                return
            time.sleep(0.05)
        raise LabError(f"haproxy did not reload within {timeout:g}s:\n{self.process.tail()}")


def runtime_api(path: Path, command: str, timeout: float = 2.0) -> str:
    """One command on the runtime API socket (one connection per command), synchronously.

    The lab's own reader, independent of the router under test: tests and benchmarks check
    what HAProxy itself says, not what the daemon's code reads back.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(os.fspath(path))
        conn.sendall(command.encode() + b"\n")
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    return data.decode(errors="replace")


def state_rows(answer: str, backend: str = "odoo") -> dict[str, dict[str, str]]:
    """The rows of a `show servers state` answer for `backend`, by server name, as printed."""
    lines = [ln for ln in answer.splitlines() if ln.strip()]
    if len(lines) < 2 or lines[0].strip() != "1":
        raise LabError(f"not a `show servers state` answer: {answer[:300]!r}")
    header = lines[1].lstrip("# ").split()
    rows = (dict(zip(header, line.split(), strict=False)) for line in lines[2:])
    return {row["srv_name"]: row for row in rows if row.get("be_name") == backend}


def colour_servers(path: Path, backend: str = "odoo") -> dict[str, dict[str, int]]:
    """The lab's servers odoo-blue and odoo-green by colour: the weight in force
    (`srv_uweight`) and the admin state bits (`srv_admin_state`, 0x01 = maintenance)."""
    rows = state_rows(runtime_api(path, f"show servers state {backend}"), backend)
    return {color: {"weight": int(rows[f"odoo-{color}"]["srv_uweight"]),
                    "admin": int(rows[f"odoo-{color}"]["srv_admin_state"])}
            for color in ("blue", "green")}


def worker_pid(path: Path) -> int | None:
    """The pid of the worker answering on the runtime API socket (`show info`)."""
    try:
        answer = runtime_api(path, "show info", timeout=1)
    except OSError:
        return None
    for line in answer.splitlines():
        if line.startswith("Pid:"):
            return int(line.split(":", 1)[1])
    return None
