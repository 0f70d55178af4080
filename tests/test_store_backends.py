"""One store, two backends (DESIGN.md §15): the same calls behave the same on SQLite (a file
in tmp_path) and on a real PostgreSQL 15 (the lab's cluster, a database per test). Schema
versions: a file of the first release migrates with its rows kept, a newer database is
refused, two daemons opening an empty database at once migrate it once. PostgreSQL restarted
under a store: writes fail with StoreError while it is down (audit lines wait), and the same
store writes again by itself once it is back; a restart between two calls is not even seen."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from watchdog import store as store_module
from watchdog.config import DaemonConfig
from watchdog.lab.postgres import PostgresLab
from watchdog.lab.procs import free_port
from watchdog.rollout import Event, initial
from watchdog.store import SCHEMA, SqlStore, Store, StoreError, open_store
from watchdog.store_pg import PgStore

KNOWS = len(Store.MIGRATIONS)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Backend:
    """A fresh database of one kind: `open()` a store on it (as many as wanted, all closed
    at the end), `sql()` run a statement of the test's own on it (the backend's words)."""

    kind: str
    open_store: Callable[..., SqlStore]
    sql: Callable[[str], list[Any]]
    opened: list[SqlStore] = field(default_factory=list)

    def open(self, clock: Callable[[], float] = time.time, **kw: Any) -> SqlStore:
        s = self.open_store(clock, **kw)
        self.opened.append(s)
        return s


def _sqlite(folder: Path) -> Backend:
    def run(statement: str) -> list[Any]:
        with contextlib.closing(sqlite3.connect(folder / "state.db", isolation_level=None)) as db:
            return db.execute(statement).fetchall()
    return Backend("sqlite", lambda clock, **kw: Store(folder, clock, **kw), run)


def pg_database(postgres: PostgresLab, name: str) -> str:
    postgres.psql(f"CREATE DATABASE {name}")
    return postgres.dsn(name)


def _postgres(postgres: PostgresLab, name: str) -> Backend:
    dsn = pg_database(postgres, name)

    def run(statement: str) -> list[Any]:
        with psycopg.connect(dsn, autocommit=True) as conn:
            cur = conn.execute(statement)
            return cur.fetchall() if cur.description is not None else []
    return Backend("postgresql", lambda clock, **kw: PgStore(dsn, clock, **kw), run)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path,
            pg_names: Callable[[str], str]) -> Iterator[Backend]:
    if request.param == "sqlite":
        b = _sqlite(tmp_path / "state")
    else:
        b = _postgres(request.getfixturevalue("postgres"), pg_names("store"))
    yield b
    for s in b.opened:
        s.close()


def info(rid: str, phase: str = "progressing", started: float = 1_700_000_000.0) -> dict[str, Any]:
    return {"id": rid, "phase": phase, "step": 1, "steps": 3, "started_at": started}


def rules(value: float) -> list[dict[str, Any]]:
    return [{"name": "error_rate", "color": "green", "value": value, "threshold": "<= 0.05",
             "state": "ok", "outcome": "ok"}]


def drift(message: str) -> Event:
    return Event("drift", message, "progressing", "progressing", {"blue": 90, "green": 10})


# ---------------------------------------------------------------- the same on both


def test_state_events_and_memory_round_trip_across_a_reopen(backend: Backend) -> None:
    first = backend.open()
    moved = initial("odoo", "green")
    first.save(moved, [Event("switched", "to green \x00 é", "idle", "idle", moved.weights,
                             value=float("nan"))], at=123.5)
    assert first.record("odoo", drift("by hand"), at=124.0)
    first.save_memory("odoo", rules=[{"name": "r", "since": 1.5}])
    first.save_memory("odoo", alerts=[{"alertname": "Down"}])  # rules kept
    again = backend.open()
    assert again.load("odoo") == moved and again.load("shop") is None
    got = again.events("odoo")
    assert [(e["kind"], e["at"], e["value"]) for e in got] == [
        ("switched", 123.5, None), ("drift", 124.0, None)]
    assert got[0]["message"] == "to green \ufffd é" and got[0]["weights"] == moved.weights
    assert again.load_memory("odoo") == {"rules": [{"name": "r", "since": 1.5}],
                                         "alerts": [{"alertname": "Down"}]}
    assert again.load_memory("shop") == {"rules": [], "alerts": []}
    assert again.view() == {"ok": True, "error": None, "since": None,
                            "path": str(again.path), "pending": 0}
    assert again.schema_version() == KNOWS


def test_history_is_kept_pruned_and_read_back_the_same(
        backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "HISTORY_TICKS", 3)
    monkeypatch.setattr(store_module, "HISTORY_ROLLOUTS", 2)
    clock = Clock()
    s = backend.open(clock)
    for i in range(5):
        clock.now += 1
        assert s.save_tick("odoo", info("r1"), {"blue": 100 - i, "green": i}, rules(i / 100))
    got = s.rollout("r1")
    assert got is not None and got["ticks"] == 5 and got["site"] == "odoo"
    assert [t["weights"]["green"] for t in got["history"]] == [2, 3, 4]
    assert [t["at"] for t in got["history"]] == [clock.now - 2, clock.now - 1, clock.now]
    assert got["history"][0]["rules"] == [{"name": "error_rate", "color": "green",
                                           "value": 0.02, "threshold": "<= 0.05",
                                           "state": "ok", "outcome": "ok"}]
    # The same start time for all: the newest inserted stay (SQLite's rowid, PostgreSQL's seq).
    for rid in ("r2", "r3"):
        s.save_tick("odoo", info(rid), {"blue": 100}, rules(0.0))
    assert [r for r in ("r1", "r2", "r3") if s.rollout(r) is not None] == ["r2", "r3"]
    assert s.save_tick("odoo", info("r3", "promoted"), {"blue": 0, "green": 100}, rules(0.0))
    assert not backend.open(clock).save_tick("odoo", info("r3", "promoted"),
                                             {"blue": 0, "green": 100}, rules(0.0))
    s.record("odoo", Event("step", "of r3", "a", "b", {"blue": 1}, rollout_id="r3"))
    assert [(e["site"], e["message"]) for e in s.rollout_events("r3")] == [("odoo", "of r3")]


def test_a_database_newer_than_the_code_is_refused(backend: Backend) -> None:
    backend.open().close()
    backend.sql(f"UPDATE meta SET value = '{KNOWS + 1}' WHERE key = 'schema_version'")  # noqa: S608
    with pytest.raises(StoreError) as caught:
        backend.open()
    assert str(caught.value) == (f"state store schema version {KNOWS + 1} is newer than this "
                                 f"odoo-watchdog (knows {KNOWS}): upgrade odoo-watchdog")


# ---------------------------------------------------------------- migrations


def test_a_file_of_the_first_release_migrates_with_its_rows(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    folder.mkdir()
    old = sqlite3.connect(folder / "state.db", isolation_level=None)
    old.executescript(SCHEMA)  # exactly what the first release made (no schema_version)
    old.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")  # its probe
    old.execute("INSERT INTO meta VALUES ('last_write', '1.0')")
    blue = initial("odoo", "blue")
    old.execute("INSERT INTO sites VALUES ('odoo', ?, 1.0)", (store_module.state_to_json(blue),))
    old.execute("INSERT INTO events (at, site, kind, phase_from, phase_to, weights, actor, "
                "message) VALUES (2.0, 'odoo', 'initialized', 'idle', 'idle', '{}', 'daemon', "
                "'from v1')")
    old.close()
    s = Store(folder)
    try:
        assert s.schema_version() == KNOWS == 2
        assert s.load("odoo") == blue
        assert [e["message"] for e in s.events("odoo")] == ["from v1"]
        assert s.acquire("odoo", "a", "http://a", 10) is not None  # v2's tables are there
        s.record("odoo", drift("after"))
        assert [e["id"] for e in s.events("odoo")] == [1, 2]  # AUTOINCREMENT goes on
    finally:
        s.close()
    Store(folder).close()  # opening again changes nothing
    with sqlite3.connect(folder / "state.db") as db:
        assert dict(db.execute("SELECT key, value FROM meta")) == {
            "last_write": "1.0", "schema_version": "2"}


def test_an_up_to_date_file_opens_while_another_program_holds_its_write_lock(
        tmp_path: Path) -> None:
    Store(tmp_path, busy_timeout=0.05).close()
    other = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        s = Store(tmp_path, busy_timeout=0.05)  # migrates nothing: no write lock needed
        assert s.schema_version() == KNOWS and s.load("odoo") is None
        s.close()
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_two_daemons_opening_an_empty_postgresql_at_once_migrate_it_once(
        postgres: PostgresLab, pg_names: Callable[[str], str]) -> None:
    dsn = pg_database(postgres, pg_names("race"))
    stores: list[PgStore] = []
    errors: list[BaseException] = []
    go = threading.Barrier(4)

    def start() -> None:
        go.wait()
        try:
            stores.append(PgStore(dsn))
        except BaseException as exc:  # shown by the assertion
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert errors == [] and len(stores) == 4
        assert all(s.schema_version() == KNOWS for s in stores)
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT count(*) FROM meta").fetchone() == (1,)
    finally:
        for s in stores:
            s.close()


# ---------------------------------------------------------------- open_store


def config(**store: Any) -> DaemonConfig:
    return DaemonConfig.model_validate({"state_dir": "state", "store": store, "sites": {"odoo": {
        "router": {"kind": "haproxy", "socket": "/run/haproxy.sock", "backend": "odoo"},
        "colors": {"blue": {"server": "b", "url": "http://127.0.0.1:1"},
                   "green": {"server": "g", "url": "http://127.0.0.1:2"}}}}})


def test_open_store_sqlite_in_state_dir(tmp_path: Path) -> None:
    s = open_store(config(), tmp_path)
    try:
        assert isinstance(s, Store) and s.path == tmp_path / "state" / "state.db"
        assert s.kind == "sqlite"
    finally:
        s.close()


def test_open_store_postgresql_from_dsn_file_without_showing_the_password(
        tmp_path: Path, postgres: PostgresLab, pg_names: Callable[[str], str]) -> None:
    name = pg_names("open")
    pg_database(postgres, name)
    (tmp_path / "store.dsn").write_text(
        f"# the daemons' store\npostgresql://postgres:s3cret@127.0.0.1:{postgres.port}/{name}\n")
    s = open_store(config(kind="postgresql", dsn_file="store.dsn"), tmp_path)
    try:
        assert isinstance(s, PgStore) and s.kind == "postgresql"
        assert s.view()["path"] == f"postgresql://127.0.0.1:{postgres.port}/{name}"
        s.save(initial("odoo", "blue"))
        assert s.load("odoo") == initial("odoo", "blue")
    finally:
        s.close()
    port = free_port()  # nothing listens there
    (tmp_path / "gone.dsn").write_text(
        f"host=127.0.0.1 port={port} dbname=wd user=postgres password=s3cret connect_timeout=2")
    with pytest.raises(StoreError) as caught:
        open_store(config(kind="postgresql", dsn_file="gone.dsn"), tmp_path)
    text = str(caught.value)
    assert text.startswith(f"cannot open the state store postgresql://127.0.0.1:{port}/wd: "), text
    assert "refused" in text and "s3cret" not in text, text
    with pytest.raises(StoreError, match=r"store.dsn_file .*missing.dsn"):
        open_store(config(kind="postgresql", dsn_file="missing.dsn"), tmp_path)


# ---------------------------------------------------------------- PostgreSQL restarted


@pytest.fixture(scope="module")
def own_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresLab]:
    """A cluster this module may restart (the session's is shared with other tests)."""
    pg = PostgresLab(tmp_path_factory.mktemp("postgres-restart"))
    pg.start()
    yield pg
    pg.stop()


def down(pg: PostgresLab) -> None:
    """Fast shutdown (SIGINT: sessions are ended; SIGTERM would wait for our store's)."""
    pg.process.signal(signal.SIGINT)
    assert pg.process.proc is not None
    pg.process.proc.wait(15)


def test_postgresql_down_fails_writes_and_the_same_store_recovers_when_it_is_back(
        own_postgres: PostgresLab) -> None:
    dsn = pg_database(own_postgres, "restart_a")
    failed: list[str] = []
    s = PgStore(dsn, on_error=failed.append)
    try:
        s.save(initial("odoo", "blue"))
        lease = s.acquire("odoo", "a", "http://a", 30)
        assert lease is not None
        down(own_postgres)
        started = time.monotonic()
        with pytest.raises(StoreError) as caught:
            s.save(initial("odoo", "green"), [Event("switched", "x", "idle", "idle", {})])
        assert time.monotonic() - started < 5
        assert str(caught.value).startswith(
            f"state store postgresql://127.0.0.1:{own_postgres.port}/restart_a cannot write: ")
        assert not s.ok and s.view()["error"] and s.since is not None
        assert s.record("odoo", drift("while down"), at=1000.0) is False
        assert s.flush() is False
        with pytest.raises(StoreError, match="cannot keep the leases"):
            s.renew([lease], 30)
        assert failed[0] == "save" and "record" in failed and "flush" in failed
        assert "lease" in failed
        own_postgres.process.start()
        s.save(initial("odoo", "green"), [Event("switched", "to green", "idle", "idle", {})])
        assert s.ok and s.pending == 0 and s.flushed == 1
        assert [e["message"] for e in s.events("odoo")] == ["while down", "to green"]
        assert s.load("odoo") == initial("odoo", "green")
        renewed = s.renew([lease], 30)["odoo"]
        assert renewed is not None and renewed.epoch == lease.epoch
    finally:
        s.close()


def test_a_postgresql_restart_between_two_calls_is_not_a_failure(
        own_postgres: PostgresLab) -> None:
    dsn = pg_database(own_postgres, "restart_b")
    failed: list[str] = []
    s = PgStore(dsn, on_error=failed.append)
    try:
        s.save(initial("odoo", "blue"))
        lease = s.acquire("odoo", "a", "http://a", 30)
        assert lease is not None
        down(own_postgres)
        own_postgres.process.start()
        s.save(initial("odoo", "green"), fence=lease)  # the stale connection is replaced
        assert s.load("odoo") == initial("odoo", "green")
        assert s.renew([lease], 30)["odoo"] is not None
        assert failed == [] and s.ok
    finally:
        s.close()
