"""Durable state and the audit log: SQLite in WAL mode under `state_dir`.

Each site's whole state (live colour, desired weights, current rollout with its phase, step and
step start) is one row, written in the same transaction as the events that explain the change,
and committed before the router is touched. A daemon killed at any moment restarts from here
and makes the router match the stored split: never an unknown split.

Beside it, in table `memory`, what the rules and Alertmanager had told the daemon: each rule's
state (pending since when, firing) and the firing alerts, so a restart does not restart a `for`
clock or forget an alert until Alertmanager repeats it.

A store that cannot write (a full disk, a read-only filesystem, an I/O error, a database
another program holds locked) is reported, not fatal: `save` raises StoreError (so the daemon
moves no traffic without its record), the store remembers since when and why it fails
(`view()`), and audit events that could not be written (`record`) wait in memory, at most
PENDING_LIMIT of them, to be written first in the next transaction that succeeds, with their
own times. docs/rollouts.md "Crash safety" says what the daemon does meanwhile.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from watchdog.rollout import Event, Phase, Rollout, SiteState, Step, StepOutcome

SCHEMA = """
CREATE TABLE IF NOT EXISTS sites (
    site TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    site TEXT NOT NULL,
    rollout_id TEXT,
    kind TEXT NOT NULL,
    phase_from TEXT NOT NULL,
    phase_to TEXT NOT NULL,
    weights TEXT NOT NULL,
    rule TEXT,
    value REAL,
    threshold TEXT,
    actor TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_site ON events (site, id);
CREATE TABLE IF NOT EXISTS memory (
    site TEXT PRIMARY KEY,
    rules TEXT NOT NULL DEFAULT '[]',
    alerts TEXT NOT NULL DEFAULT '[]',
    updated_at REAL NOT NULL
);
"""


INSERT_EVENT = (
    "INSERT INTO events (at, site, rollout_id, kind, phase_from, phase_to, weights, rule, value, "
    "threshold, actor, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


# A column given as NULL keeps what is stored: rules and alerts are saved apart.
SAVE_MEMORY = (
    "INSERT INTO memory (site, rules, alerts, updated_at) "
    "VALUES (?, coalesce(?, '[]'), coalesce(?, '[]'), ?) "
    "ON CONFLICT(site) DO UPDATE SET rules = coalesce(?, rules), alerts = coalesce(?, alerts), "
    "updated_at = excluded.updated_at"
)

# What a retry writes when no audit event waits: a write the disk must take (a COMMIT with
# nothing in it succeeds on a full disk and would prove nothing).
PROBE = ("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
         "INSERT INTO meta (key, value) VALUES ('last_write', ?) "
         "ON CONFLICT(key) DO UPDATE SET value = excluded.value")
PENDING_LIMIT = 1000  # audit events kept in memory while the store cannot write
LOW_SPACE = 64 * 1024  # bytes free under which "no space left" is said


def _text(value: str | None) -> str | None:
    """Text SQLite can store whatever arrived (a lone surrogate becomes U+FFFD)."""
    if value is None:
        return None
    return value.encode("utf-8", "replace").decode("utf-8")


def _event_row(at: float, site: str, e: Event) -> tuple[Any, ...]:
    return (at, site, _text(e.rollout_id), e.kind, e.phase_from, e.phase_to,
            json.dumps(e.weights), _text(e.rule), e.value, _text(e.threshold), _text(e.actor),
            _text(e.message))


class StoreError(RuntimeError):
    pass


def _reason(exc: BaseException, folder: Path) -> str:
    """SQLite's words, and what the filesystem says when that explains them."""
    text = str(exc) or type(exc).__name__
    try:
        fs = os.statvfs(folder)
    except OSError:
        return text
    if fs.f_flag & os.ST_RDONLY:
        return f"{text} (its filesystem is mounted read-only)"
    free = fs.f_bavail * fs.f_frsize
    if free < LOW_SPACE:
        return f"{text} (no space left on its filesystem: {free} bytes free)"
    return text


def state_to_json(state: SiteState) -> str:
    return json.dumps(asdict(state), sort_keys=True, allow_nan=False)


def state_from_json(text: str) -> SiteState:
    data = json.loads(text)
    rollout = data.get("rollout")
    if rollout is not None:
        rollout["steps"] = tuple(Step(**s) for s in rollout["steps"])
        rollout["phase"] = Phase(rollout["phase"])
        rollout["prepare"] = tuple(rollout.get("prepare", ()))
        rollout["prepared"] = tuple(
            StepOutcome(**{**o, "output": tuple(o.get("output", ()))})
            for o in rollout.get("prepared", ()))
        data["rollout"] = Rollout(**rollout)
    return SiteState(**data)


class Store:
    """One SQLite file; every method is safe to call from worker threads (one lock)."""

    def __init__(self, state_dir: Path, clock: Callable[[], float] = time.time, *,
                 busy_timeout: float = 5.0,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.path = state_dir / "state.db"
        self.clock = clock
        # Called with the operation (save, record, memory, flush, load, read) of each failure,
        # from the thread that failed: the daemon counts them in a metric.
        self.on_error = on_error
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the state store {self.path}: {exc}") from None
        self._lock = threading.Lock()
        self.ok = True  # the last write succeeded
        self.error: str | None = None  # why the writes fail, while they do
        self.since: float | None = None  # when they began to fail
        self.flushed = 0  # audit events the last write that found some waiting took along
        self._pending: deque[tuple[float, str, Event]] = deque()
        self._lost: dict[str, int] = {}  # per site: events dropped from a full queue

    # ---------------------------------------------------------------- health

    @property
    def pending(self) -> int:
        """Audit events waiting in memory for the store to write again."""
        return len(self._pending)

    def view(self) -> dict[str, Any]:
        """The store's health as the API shows it."""
        return {"ok": self.ok, "error": self.error, "since": self.since,
                "path": str(self.path), "pending": len(self._pending)}

    def message(self) -> str:
        """What a refused command says: the store, and why it cannot write."""
        return f"state store {self.path} cannot write: {self.error or 'unknown error'}"

    def _count(self, op: str) -> None:
        if self.on_error is not None:
            self.on_error(op)

    def _failed(self, op: str, exc: BaseException) -> StoreError:
        """A write failed (the caller holds the lock): remember it, count it, and word it."""
        if self.ok:
            self.since = self.clock()
        self.ok = False
        self.error = _reason(exc, self.path.parent)
        self._count(op)
        return StoreError(self.message())

    def _queue(self, at: float, site: str, event: Event) -> None:
        if len(self._pending) >= PENDING_LIMIT:
            _, lost_site, _ = self._pending.popleft()
            self._lost[lost_site] = self._lost.get(lost_site, 0) + 1
        self._pending.append((at, site, event))

    def _waiting_rows(self) -> list[tuple[Any, ...]]:
        rows = [_event_row(at, site, e) for at, site, e in self._pending]
        now = self.clock()
        for site, count in sorted(self._lost.items()):
            rows.append(_event_row(now, site, Event(
                "store_lost", f"{count} audit events were lost while the state store could "
                f"not write (at most {PENDING_LIMIT} are kept in memory)", "", "", {})))
        return rows

    def _write(self, op: str, body: Callable[[], object]) -> None:
        """One transaction (the caller holds the lock): the waiting audit events first, then
        `body`. On success the waiting events are gone and the store is ok again."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            if self._pending or self._lost:
                self._db.executemany(INSERT_EVENT, self._waiting_rows())
            body()
            self._db.execute("COMMIT")
        except BaseException as exc:
            if self._db.in_transaction:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # SQLite already rolled back (a full disk can do that)
            if isinstance(exc, (sqlite3.Error, OSError)):
                raise self._failed(op, exc) from None
            raise
        if self._pending:
            self.flushed = len(self._pending)
        self._pending.clear()
        self._lost.clear()
        self.ok, self.error, self.since = True, None, None

    def flush(self) -> bool:
        """Try to write again (the waiting audit events, or a probe when none waits): True
        when the store writes, False (never an exception) when it still cannot."""
        with self._lock:
            if self.ok and not self._pending:
                return True
            try:
                if self._pending or self._lost:
                    self._write("flush", lambda: None)
                else:
                    def probe() -> None:
                        self._db.execute(PROBE[0])
                        self._db.execute(PROBE[1], (str(self.clock()),))
                    self._write("flush", probe)
            except StoreError:
                return False
            return True

    # ---------------------------------------------------------------- reading and writing

    def _read(self, op: str, query: str, args: tuple[Any, ...]) -> list[Any]:
        with self._lock:
            try:
                return self._db.execute(query, args).fetchall()
            except sqlite3.Error as exc:
                self._count(op)
                raise StoreError(f"state store {self.path} cannot read: "
                                 f"{_reason(exc, self.path.parent)}") from None

    def load(self, site: str) -> SiteState | None:
        rows = self._read("load", "SELECT state FROM sites WHERE site = ?", (site,))
        return state_from_json(rows[0][0]) if rows else None

    def save(self, state: SiteState, events: tuple[Event, ...] | list[Event] = (),
             at: float | None = None) -> None:
        """The state and its events in one transaction: both are stored, or neither."""
        now = self.clock() if at is None else at
        text = state_to_json(state)
        rows = [_event_row(now, state.site, e) for e in events]

        def body() -> None:
            self._db.execute(
                "INSERT INTO sites (site, state, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(site) DO UPDATE SET state = excluded.state, "
                "updated_at = excluded.updated_at",
                (state.site, text, now),
            )
            self._db.executemany(INSERT_EVENT, rows)

        with self._lock:
            self._write("save", body)

    def record(self, site: str, event: Event, at: float | None = None) -> bool:
        """An event that changes no state (drift repaired, router error, reload). True when
        written; False when the store cannot write: then it waits in memory (never an
        exception), and while the store is known to fail it is queued without a try, so that
        a locked database does not make each audit line wait its busy timeout."""
        now = self.clock() if at is None else at
        row = _event_row(now, site, event)
        with self._lock:
            if not self.ok:
                self._queue(now, site, event)
                self._count("record")
                return False
            try:
                self._write("record", lambda: self._db.execute(INSERT_EVENT, row))
            except StoreError:
                self._queue(now, site, event)
                return False
        return True

    def events(self, site: str, limit: int = 50) -> list[dict[str, Any]]:
        """The newest `limit` events of a site, oldest first."""
        rows = self._read(
            "read",
            "SELECT id, at, rollout_id, kind, phase_from, phase_to, weights, rule, value, "
            "threshold, actor, message FROM events WHERE site = ? ORDER BY id DESC LIMIT ?",
            (site, limit))
        keys = ("id", "at", "rollout_id", "kind", "phase_from", "phase_to", "weights", "rule",
                "value", "threshold", "actor", "message")
        out = []
        for row in reversed(rows):
            item = dict(zip(keys, row, strict=True))
            item["weights"] = json.loads(item["weights"])
            out.append(item)
        return out

    def save_memory(self, site: str, *, rules: list[dict[str, Any]] | None = None,
                    alerts: list[dict[str, Any]] | None = None) -> None:
        """Replace the stored rule states and/or firing alerts of a site."""
        if rules is None and alerts is None:
            return
        texts = [None if v is None else json.dumps(v, sort_keys=True, allow_nan=False)
                 for v in (rules, alerts)]
        with self._lock:
            self._write("memory", lambda: self._db.execute(
                SAVE_MEMORY, (site, *texts, self.clock(), *texts)))

    def load_memory(self, site: str) -> dict[str, list[dict[str, Any]]]:
        """{"rules": [...], "alerts": [...]} as last saved; empty lists when none."""
        rows = self._read("load", "SELECT rules, alerts FROM memory WHERE site = ?", (site,))
        if not rows:
            return {"rules": [], "alerts": []}
        return {"rules": json.loads(rows[0][0]), "alerts": json.loads(rows[0][1])}

    def close(self) -> None:
        with self._lock:
            self._db.close()
