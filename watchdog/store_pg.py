"""The state store in PostgreSQL (`store: {kind: postgresql, dsn_file: ...}`, DESIGN.md §15):
the same tables, calls and failure handling as the SQLite store (the logic is
`store.SqlStore`'s), shared by several daemons that own the sites by lease.

Two synchronous psycopg connections (the daemon calls the store through asyncio.to_thread):
one for the state, history and audit log, one of their own for leases and heartbeats, each
with its own lock, so a slow history write never queues a renewal behind it. Times of leases
are the database's (`clock_timestamp()`), never a daemon's: two hosts' clocks need not agree.

A vanished server never holds a thread for long: connect_timeout, TCP keepalives,
tcp_user_timeout and a statement_timeout bound every call. A connection that broke (the server
restarted) is replaced on the next call; one found broken at the start of an operation, before
anything was committed, is replaced and the operation tried once more, so a restart between two
ticks is not even a failure. Autocommit connections with explicit BEGIN/COMMIT and no prepared
statements: nothing relies on session state a transaction pooler would lose (but
`statement_timeout` is sent as a startup option, which PgBouncer must be told to ignore).

The conninfo is a secret: messages and `view()["path"]` show postgresql://host:port/dbname.
"""

from __future__ import annotations

import contextlib
import getpass
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

import psycopg
from psycopg import conninfo as _conninfo
from psycopg.pq import TransactionStatus

from watchdog.store import (
    SCHEMA,
    Dialect,
    Run,
    SqlStore,
    StoreError,
    statements,
)

# Today's tables in PostgreSQL's types: REAL is 4 bytes there (DOUBLE PRECISION is SQLite's
# REAL), AUTOINCREMENT is BIGSERIAL, WITHOUT ROWID does not exist, and `seq` stands in for
# SQLite's rowid as the rollouts' insertion order.
SCHEMA_V1 = (SCHEMA.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY")
             .replace(" REAL", " DOUBLE PRECISION").replace(") WITHOUT ROWID;", ");")
             .replace("    id TEXT PRIMARY KEY,\n    site TEXT NOT NULL,\n    started_at",
                      "    id TEXT PRIMARY KEY,\n    seq BIGSERIAL NOT NULL,\n"
                      "    site TEXT NOT NULL,\n    started_at"))
SCHEMA_V2 = """
CREATE TABLE leases (
    site TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    api TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE daemons (
    instance TEXT PRIMARY KEY,
    api TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
"""

SCHEMA_LOCK = 0x6F646F6F_7764  # pg_advisory_xact_lock key of the migrations ("odoowd")

POSTGRESQL = Dialect(
    placeholder="%s", begin="BEGIN", now="clock_timestamp()",
    later="(clock_timestamp() + ? * interval '1 second')",
    left="extract(epoch FROM expires_at - clock_timestamp())::float8",
    share=" FOR SHARE", seq="seq", rest="OFFSET ?",
    schema_lock=f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")

CONNECT_TIMEOUT = 5  # seconds (libpq takes whole seconds)
STATEMENT_TIMEOUT = 5.0  # seconds a statement may run (or wait on a lock)
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 5, 2, 3  # a silent peer: gone in ~11 s
TCP_USER_TIMEOUT = 10.0  # seconds unacknowledged data may wait before the kernel gives up


def describe(dsn: str) -> str:
    """postgresql://host:port/dbname of a conninfo: what may be shown (no user, no password);
    StoreError when it is not a conninfo."""
    try:
        params = _conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise StoreError("store.dsn_file: not a libpq conninfo (host=... port=... dbname=... "
                         "or postgresql://user@host:port/dbname)") from None
    host = params.get("host") or params.get("hostaddr") or "localhost"
    db = params.get("dbname") or params.get("user") or getpass.getuser()
    return f"postgresql://{host}:{params.get('port') or 5432}/{db}"


def _words(exc: BaseException) -> str:
    """PostgreSQL's or libpq's message on one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


class PgStore(SqlStore):
    dialect = POSTGRESQL
    errors = (psycopg.Error, OSError)
    MIGRATIONS = (statements(SCHEMA_V1), statements(SCHEMA_V2))
    kind = "postgresql"
    path: str

    def __init__(self, dsn: str, clock: Callable[[], float] = time.time, *,
                 on_error: Callable[[str], None] | None = None,
                 statement_timeout: float = STATEMENT_TIMEOUT,
                 connect_timeout: int = CONNECT_TIMEOUT) -> None:
        super().__init__(clock, on_error)
        self.path = describe(dsn)
        params = _conninfo.conninfo_to_dict(dsn)
        options = " ".join(filter(None, [
            str(params.get("options") or ""),
            f"-c statement_timeout={int(statement_timeout * 1000)}",
            f"-c idle_in_transaction_session_timeout={int(statement_timeout * 6000)}"]))
        defaults: dict[str, Any] = {"connect_timeout": connect_timeout, "keepalives": 1,
                    "keepalives_idle": KEEPALIVE_IDLE,
                    "keepalives_interval": KEEPALIVE_INTERVAL,
                    "keepalives_count": KEEPALIVE_COUNT,
                    "tcp_user_timeout": int(TCP_USER_TIMEOUT * 1000),
                    "application_name": "odoo-watchdog"}
        self._conninfo = _conninfo.make_conninfo(
            "", **{**defaults, **params, "options": options})
        self._conn: psycopg.Connection[Any] | None = None
        self._lease_conn: psycopg.Connection[Any] | None = None
        self._lease_lock = threading.Lock()
        try:
            self._migrate()
        except self.errors as exc:
            self.close()
            raise StoreError(f"cannot open the state store {self.path}: "
                             f"{self._reason(exc)}") from None
        except StoreError:
            self.close()
            raise

    # ---------------------------------------------------------------- connections

    def _connect(self) -> psycopg.Connection[Any]:
        # prepare_threshold=None: no server-side prepared statements (a pooler may hand each
        # transaction another backend).
        return psycopg.connect(self._conninfo, autocommit=True, prepare_threshold=None)

    @staticmethod
    def _usable(conn: psycopg.Connection[Any] | None) -> bool:
        return conn is not None and not conn.closed and not conn.broken

    def _start(self) -> bool:
        if self._usable(self._conn):
            return True
        _close(self._conn)
        self._conn = None
        self._conn = self._connect()
        return False

    def _stale(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg.OperationalError) and not self._usable(self._conn)

    def _state(self) -> psycopg.Connection[Any]:
        if self._conn is None:
            raise psycopg.OperationalError("not connected")
        return self._conn

    def _run(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        cur = self._state().execute(sql, args)
        return cur.fetchall() if cur.description is not None else []

    def _run_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._state().cursor() as cur:
            cur.executemany(sql, rows)

    def _rollback(self) -> None:
        conn = self._conn
        if not self._usable(conn) or conn is None:
            return
        if conn.info.transaction_status != TransactionStatus.IDLE:
            with contextlib.suppress(psycopg.Error):
                conn.execute("ROLLBACK")

    def _reason(self, exc: BaseException) -> str:
        return _words(exc)

    # ---------------------------------------------------------------- leases

    def _lease_session(self) -> AbstractContextManager[Run]:
        return self._lease_run()

    @contextlib.contextmanager
    def _lease_run(self) -> Iterator[Run]:
        """The lease connection under its lock. Each lease statement is one autocommit
        statement that may be repeated (acquire, renew, release and heartbeat are
        idempotent), so one that fails on a connection found stale is sent once more."""
        with self._lease_lock:
            def run(sql: str, args: Sequence[Any]) -> list[Any]:
                text = self.dialect.sql(sql)
                for attempt in (1, 2):
                    conn = self._lease_conn
                    reused = conn is not None and self._usable(conn)
                    if conn is None or not reused:
                        _close(conn)
                        self._lease_conn = None
                        self._lease_conn = conn = self._connect()
                    try:
                        cur = conn.execute(text, args)
                        return cur.fetchall() if cur.description is not None else []
                    except psycopg.OperationalError:
                        if attempt == 1 and reused and not self._usable(conn):
                            continue
                        raise
                raise AssertionError("unreachable")
            yield run

    def close(self) -> None:
        with self._lock:
            _close(self._conn)
            self._conn = None
        with self._lease_lock:
            _close(self._lease_conn)
            self._lease_conn = None


def _close(conn: psycopg.Connection[Any] | None) -> None:
    if conn is not None:
        with contextlib.suppress(psycopg.Error, OSError):
            conn.close()
