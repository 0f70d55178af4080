"""Several daemons on one PostgreSQL store (DESIGN.md §15), for the tests and the benchmark.

A LabStack (two Odoo stand-ins behind a real HAProxy 2.6; no Prometheus) and a PostgreSQL 15
lab cluster; N daemon processes, each with its own config (API port, instance name, state_dir)
and the same `store: {kind: postgresql}`. Each daemon reaches HAProxy's runtime API through a
`SocketTap` of its own: a unix socket that passes every byte on to HAProxy's admin socket and
records each command that changes a server (weight, state) with the daemon that sent it and
when. The tests read those records to prove that a daemon which lost its lease sent nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from watchdog.lab.postgres import PostgresLab
from watchdog.lab.procs import LabError, ManagedProcess, free_port, http_ok
from watchdog.lab.stack import LabStack, health_rules

HEALTH_RULES = health_rules("1s")


@dataclass(frozen=True)
class Sent:
    """One command a daemon sent to HAProxy that changes a server."""

    at: float  # time.monotonic() in the test process when it passed the tap
    daemon: str
    command: str


class SocketTap:
    """A unix socket in front of HAProxy's admin socket that records server changes."""

    def __init__(self, name: str, path: Path, upstream: Path, sent: list[Sent],
                 lock: threading.Lock) -> None:
        self.name = name
        self.path = path
        self.upstream = upstream
        self.sent = sent
        self.lock = lock
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None

    def start(self) -> SocketTap:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        future.result(timeout=5)
        return self

    async def _listen(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, path=os.fspath(self.path))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(os.fspath(self.upstream))
        except OSError:
            writer.close()
            return

        async def client_to_haproxy() -> None:
            while data := await reader.read(65536):
                self._note(data.decode(errors="replace"))
                up_writer.write(data)
                await up_writer.drain()
            if up_writer.can_write_eof():
                up_writer.write_eof()

        async def haproxy_to_client() -> None:
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()

        # HAProxy closes when it has answered (non-interactive mode): then so does the tap,
        # whether or not the client half-closed its side.
        sending = asyncio.ensure_future(client_to_haproxy())
        try:
            await haproxy_to_client()
        except (OSError, ConnectionError):
            pass
        finally:
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError, ConnectionError):
                await sending
            for w in (writer, up_writer):
                w.close()

    def _note(self, text: str) -> None:
        now = time.monotonic()
        for command in text.replace("\n", ";").split(";"):
            command = command.strip()
            if command.startswith("set server") or command.startswith("set weight"):
                with self.lock:
                    self.sent.append(Sent(now, self.name, command))

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=2)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=2)


class Cluster:
    """`daemons` daemon processes for one lab site on one PostgreSQL store."""

    def __init__(self, workdir: Path, postgres: PostgresLab, *, daemons: int = 3,
                 lease: str = "2s", interval: str = "0.5s", steps: list[Any] | None = None,
                 bake: str = "1s", database: str | None = None) -> None:
        self.workdir = workdir
        self.postgres = postgres
        self.count = daemons
        self.lease = lease
        self.interval = interval
        self.database = database or f"wdstore_{os.getpid()}_{free_port()}"
        self.lab = LabStack(workdir / "lab", interval=interval, bake=bake, prometheus=False,
                            rules=HEALTH_RULES,
                            steps=steps or [{"weight": 10, "hold": "2s"},
                                            {"weight": 50, "hold": "2s"}, {"weight": 100}])
        self.sent: list[Sent] = []
        self._lock = threading.Lock()
        self.taps: list[SocketTap] = []
        self.procs: list[ManagedProcess | None] = []
        self.ports = [free_port() for _ in range(daemons)]
        self.names = [f"d{i}" for i in range(daemons)]
        self.dsn_file = workdir / "store-dsn"

    # ---------------------------------------------------------------- programs

    def start(self) -> Cluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.lab.start(daemon=False)
        self.postgres.psql(f'CREATE DATABASE "{self.database}"')
        self.dsn_file.write_text(self.postgres.dsn(self.database) + "\n")
        self.dsn_file.chmod(0o600)
        assert self.lab.haproxy is not None
        for i, name in enumerate(self.names):
            tap = SocketTap(name, self.workdir / f"tap-{name}.sock",
                            self.lab.haproxy.admin_socket, self.sent, self._lock)
            self.taps.append(tap.start())
            self._write_config(i)
            self.procs.append(None)
        for i in range(self.count):
            self.start_daemon(i)
        return self

    def config_path(self, i: int) -> Path:
        return self.workdir / f"{self.names[i]}.yml"

    def _write_config(self, i: int) -> None:
        config = yaml.safe_load(self.lab.config_path.read_text())
        config["api"]["listen"] = f"127.0.0.1:{self.ports[i]}"
        config["state_dir"] = str(self.workdir / f"state-{self.names[i]}")
        config["store"] = {"kind": "postgresql", "dsn_file": str(self.dsn_file),
                           "lease": self.lease, "instance": self.names[i]}
        for site in config["sites"].values():
            site["router"]["socket"] = str(self.taps[i].path)
        self.config_path(i).write_text(yaml.safe_dump(config, sort_keys=False))

    def start_daemon(self, i: int) -> ManagedProcess:
        proc = ManagedProcess(
            self.names[i],
            [sys.executable, "-m", "watchdog.cli", "run", "-c", str(self.config_path(i))],
            log_path=self.workdir / f"{self.names[i]}.log",
            ready=lambda: http_ok(f"{self.url(i)}/healthz"),
            ready_timeout=30,
        )
        proc.start()
        self.procs[i] = proc
        return proc

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None:
            proc.kill()
            self.procs[i] = None

    def signal(self, i: int, sig: signal.Signals) -> None:
        proc = self.procs[i]
        if proc is None:
            raise LabError(f"daemon {self.names[i]} is not running")
        proc.signal(sig)

    def stop(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc is not None:
                with contextlib.suppress(Exception):
                    proc.signal(signal.SIGCONT)
                proc.stop()
                self.procs[i] = None
        for tap in self.taps:
            tap.stop()
        self.lab.stop()
        with contextlib.suppress(LabError):
            self.postgres.psql(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- talking to it

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i]}"

    def running(self) -> list[int]:
        return [i for i, p in enumerate(self.procs) if p is not None and p.running()]

    def get(self, i: int, path: str) -> Any:
        with urllib.request.urlopen(self.url(i) + path, timeout=5) as resp:
            return json.loads(resp.read())

    def post(self, i: int, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        request = urllib.request.Request(
            self.url(i) + path, data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json",
                     "Authorization": f"Bearer {self.lab.token}"})
        try:
            with urllib.request.urlopen(request, timeout=15) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def owners(self, site: str = "odoo") -> dict[str, str | None]:
        """Each running daemon's answer to 'who owns the site' (its own view)."""
        out: dict[str, str | None] = {}
        for i in self.running():
            with contextlib.suppress(OSError, ValueError):
                for row in self.get(i, "/api/v1/sites")["sites"]:
                    if row["site"] == site:
                        owner = row.get("owner")
                        out[self.names[i]] = owner["instance"] if owner else None
        return out

    def owner(self, site: str = "odoo") -> str | None:
        """The owner as the store says (the lease row whose expiry is in the future)."""
        answer = self.postgres.psql(
            f"SELECT owner FROM leases WHERE site = '{site}' AND expires_at > now()",  # noqa: S608
            dbname=self.database).strip()
        return answer or None

    def index(self, name: str) -> int:
        return self.names.index(name)

    def sent_by(self, name: str, since: float = 0.0) -> list[Sent]:
        with self._lock:
            return [s for s in self.sent if s.daemon == name and s.at >= since]
