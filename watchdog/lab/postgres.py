"""PostgreSQL 15 from Debian's packages, for the lab: a cluster of its own in a temporary
directory, on 127.0.0.1 and a unix socket in that directory, started and stopped by pid.

The server refuses to run as root, so when the lab runs as root (CI, the demo) the cluster is
made and run as the `postgres` user that Debian's package creates; its directory is a fresh
`mkdtemp` under /tmp that user owns (pytest's own temporary folders are root's, mode 0700).
Durability is traded for speed (`fsync=off`): a lab cluster never outlives its test.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from watchdog.lab.procs import LabError, LabProgram, ManagedProcess, find_program, free_port

BIN = "/usr/lib/postgresql/15/bin"
INSTALL = "apt-get install -y postgresql-15"
SUPERUSER = "postgres"


def _server_user() -> str | None:
    """The user to run the server as: `postgres` when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SUPERUSER)
    except KeyError:
        raise LabError(f"running as root needs the {SUPERUSER} user: {INSTALL}") from None
    return SUPERUSER


class PostgresLab(LabProgram):
    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.user = _server_user()
        self.postgres = find_program("postgres", INSTALL, path=BIN)
        self.initdb = find_program("initdb", INSTALL, path=BIN)
        self.cluster = Path(tempfile.mkdtemp(prefix="odoo-watchdog-pg-"))
        self.data = self.cluster / "data"
        self.process = ManagedProcess(
            "postgres",
            [self.postgres, "-D", str(self.data), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.cluster}",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=50"],
            log_path=workdir / "postgres.log", ready=self.accepting, user=self.user,
            cwd=self.cluster,
        )

    @property
    def socket_dir(self) -> Path:
        return self.cluster

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            shutil.chown(self.cluster, self.user, self.user)
        if (self.data / "PG_VERSION").exists():
            return
        result = subprocess.run(
            [self.initdb, "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
             "--locale=C", "--no-sync"],
            capture_output=True, text=True, timeout=120, user=self.user, cwd=self.cluster,
            check=False,
        )
        if result.returncode != 0:
            raise LabError(f"initdb failed ({result.returncode}): {result.stderr.strip()}")

    def accepting(self) -> bool:
        """The server answers queries (not only its port: it listens before recovery ends)."""
        if not self.listening():
            return False
        return self.psql("SELECT 1", check=False).strip() == "1"

    def psql(self, sql: str, dbname: str = "postgres", *, check: bool = True) -> str:
        """One statement through Debian's `psql`, its unaligned output; LabError on failure
        when `check`."""
        psql = find_program("psql", INSTALL, path=BIN)
        result = subprocess.run(
            [psql, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
             "-p", str(self.port), "-U", SUPERUSER, "-d", dbname, "-c", sql],
            capture_output=True, text=True, timeout=30, check=False,
            env={**os.environ, "PGCONNECT_TIMEOUT": "2"},
        )
        if check and result.returncode != 0:
            raise LabError(f"psql {sql!r} failed: {result.stderr.strip()}")
        return result.stdout

    def stop(self, grace: float = 10.0) -> None:
        """Stop the server by pid (SIGTERM is PostgreSQL's "smart" shutdown), then delete the
        cluster."""
        super().stop(grace)
        shutil.rmtree(self.cluster, ignore_errors=True)
