"""Durable state and the audit log: SQLite in WAL mode under `state_dir`.

Each site's whole state (live colour, desired weights, current rollout with its phase, step and
step start) is one row, written in the same transaction as the events that explain the change,
and committed before the router is touched. A daemon killed at any moment restarts from here
and makes the router match the stored split: never an unknown split.

Beside it, in table `memory`, what the rules and Alertmanager had told the daemon: each rule's
state (pending since when, firing) and the firing alerts, so a restart does not restart a `for`
clock or forget an alert until Alertmanager repeats it.

Tables `rollouts`, `ticks` and `tick_rules` hold what the rollout pictures need (/ui, GET
/api/v1/rollouts/{id}): per rollout, each tick's weights and each rule's value, threshold,
state and outcome, bounded by HISTORY_TICKS per rollout and HISTORY_ROLLOUTS per site.

A store that cannot write (a full disk, a read-only filesystem, an I/O error, a database
another program holds locked) is reported, not fatal: `save` raises StoreError (so the daemon
moves no traffic without its record), the store remembers since when and why it fails
(`view()`), and audit events that could not be written (`record`) wait in memory, at most
PENDING_LIMIT of them, to be written first in the next transaction that succeeds, with their
own times. docs/rollouts.md "Crash safety" says what the daemon does meanwhile.
"""

from __future__ import annotations

import json
import math
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
CREATE TABLE IF NOT EXISTS rollouts (
    id TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    started_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    info TEXT NOT NULL,
    ticks INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS rollouts_by_site ON rollouts (site, started_at);
CREATE TABLE IF NOT EXISTS ticks (
    rollout_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    at REAL NOT NULL,
    weights TEXT NOT NULL,
    PRIMARY KEY (rollout_id, n)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tick_rules (
    rollout_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    rule TEXT NOT NULL,
    color TEXT NOT NULL,
    value REAL,
    threshold TEXT NOT NULL,
    state TEXT NOT NULL,
    outcome TEXT,
    PRIMARY KEY (rollout_id, n, rule, color)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_by_rollout ON events (rollout_id, id);
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
# The history of the rollout pictures (/ui/rollouts/{id}, GET /api/v1/rollouts/{id}): one row
# per tick and one per rule and tick, the newest HISTORY_TICKS ticks of each rollout (a 5 s
# tick: about 7 hours; older ticks are pruned as new ones come), the newest HISTORY_ROLLOUTS
# rollouts of each site (an older one loses its ticks and its row; its audit events stay).
HISTORY_TICKS = 5000
HISTORY_ROLLOUTS = 50
HISTORY_EVENTS = 2000  # audit events of one rollout that GET /api/v1/rollouts/{id} returns
PENDING_LIMIT = 1000  # audit events kept in memory while the store cannot write
LOW_SPACE = 64 * 1024  # bytes free under which "no space left" is said


def _text(value: str | None) -> str | None:
    """Text SQLite can store whatever arrived (a lone surrogate becomes U+FFFD)."""
    if value is None:
        return None
    return value.encode("utf-8", "replace").decode("utf-8")


FINAL_PHASES = frozenset(p.value for p in (Phase.PROMOTED, Phase.ROLLED_BACK, Phase.ABORTED))


def _finite(value: Any) -> float | None:
    """A number SQLite and JSON can hold (NaN and infinities are no data)."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


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
        self._history_done: set[str] = set()  # ended rollouts whose last tick is stored

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
        return self._events("site", site, "rollout_id", limit)

    def _events(self, by: str, value: str, other: str, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` events whose column `by` (site or rollout_id) is `value`, oldest
        first, each with the `other` of the two columns."""
        keys = ("id", "at", other, "kind", "phase_from", "phase_to", "weights", "rule",
                "value", "threshold", "actor", "message")
        rows = self._read(
            "read", f"SELECT {', '.join(keys)} FROM events WHERE {by} = ? "  # noqa: S608
            "ORDER BY id DESC LIMIT ?", (value, limit))
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

    # ---------------------------------------------------------------- rollout history

    def wants_history(self, rollout_id: str, active: bool) -> bool:
        """Whether this tick of the rollout is worth a row: every tick while it is active,
        and one after it has ended (its final phase and weights), not more."""
        return active or rollout_id not in self._history_done

    def save_tick(self, site: str, rollout: dict[str, Any], weights: dict[str, int],
                  rules: list[dict[str, Any]], at: float | None = None) -> bool:
        """One tick of a rollout: its view (`views.rollout_view`, which has "id" and
        "phase"), the weights, and each rule's row (`views.rule_row`: "name", "color",
        "value", "threshold", "state", "outcome"). Prunes beyond HISTORY_TICKS and
        HISTORY_ROLLOUTS in the same transaction. False when nothing was written because the
        ended rollout's last tick is stored already; StoreError (counted as "history") when
        the store cannot write."""
        rid = str(rollout["id"])
        now = self.clock() if at is None else at
        ended = rollout.get("phase") in FINAL_PHASES
        info = json.dumps(rollout, sort_keys=True, allow_nan=False)
        wrote = False

        def body() -> None:
            nonlocal wrote
            row = self._db.execute("SELECT ticks, info FROM rollouts WHERE id = ?",
                                   (rid,)).fetchone()
            if ended and row is not None and json.loads(row[1]).get("phase") in FINAL_PHASES:
                return  # its end is stored (a restart ticks it once more)
            n = (row[0] if row is not None else 0) + 1
            started = rollout.get("started_at")
            self._db.execute(
                "INSERT INTO rollouts (id, site, started_at, updated_at, info, ticks) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                "updated_at = excluded.updated_at, info = excluded.info, ticks = excluded.ticks",
                (rid, site, now if started is None else float(started), now, info, n))
            self._db.execute("INSERT OR REPLACE INTO ticks (rollout_id, n, at, weights) "
                             "VALUES (?, ?, ?, ?)", (rid, n, now, json.dumps(weights)))
            self._db.executemany(
                "INSERT OR REPLACE INTO tick_rules (rollout_id, n, rule, color, value, "
                "threshold, state, outcome) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(rid, n, _text(str(r["name"])), str(r["color"]), _finite(r.get("value")),
                  _text(str(r.get("threshold") or "")), str(r.get("state") or ""),
                  r.get("outcome")) for r in rules])
            if n > HISTORY_TICKS:
                for table in ("ticks", "tick_rules"):
                    self._db.execute(f"DELETE FROM {table} WHERE rollout_id = ? AND n <= ?",  # noqa: S608
                                     (rid, n - HISTORY_TICKS))
            if row is None:  # a new rollout: the site's oldest beyond HISTORY_ROLLOUTS go
                old = [r[0] for r in self._db.execute(
                    "SELECT id FROM rollouts WHERE site = ? ORDER BY started_at DESC, "
                    "rowid DESC LIMIT -1 OFFSET ?", (site, HISTORY_ROLLOUTS))]
                for table, key in (("ticks", "rollout_id"), ("tick_rules", "rollout_id"),
                                   ("rollouts", "id")):
                    self._db.executemany(f"DELETE FROM {table} WHERE {key} = ?",  # noqa: S608
                                         [(o,) for o in old])
            wrote = True

        with self._lock:
            self._write("history", body)
        if ended:
            self._history_done.add(rid)
        return wrote

    def rollout(self, rollout_id: str) -> dict[str, Any] | None:
        """A stored rollout: {"site", "info" (its last view), "ticks" (how many were
        recorded, pruned ones too), "history": [{"at", "weights", "rules": [...]}]}, its
        ticks oldest first; None when none of that id is stored."""
        rows = self._read("read", "SELECT site, info, ticks FROM rollouts WHERE id = ?",
                          (rollout_id,))
        if not rows:
            return None
        ticks = self._read("read", "SELECT n, at, weights FROM ticks WHERE rollout_id = ? "
                           "ORDER BY n", (rollout_id,))
        rules = self._read("read", "SELECT n, rule, color, value, threshold, state, outcome "
                           "FROM tick_rules WHERE rollout_id = ? ORDER BY n, rule, color",
                           (rollout_id,))
        by_tick: dict[int, list[dict[str, Any]]] = {}
        for n, name, color, value, threshold, state, outcome in rules:
            by_tick.setdefault(n, []).append(
                {"name": name, "color": color, "value": value, "threshold": threshold,
                 "state": state, "outcome": outcome})
        history = [{"at": at, "weights": json.loads(weights), "rules": by_tick.get(n, [])}
                   for n, at, weights in ticks]
        site, info, count = rows[0]
        return {"site": site, "info": json.loads(info), "ticks": count, "history": history}

    def rollout_events(self, rollout_id: str,
                       limit: int = HISTORY_EVENTS) -> list[dict[str, Any]]:
        """The audit events of a rollout (the newest `limit`), oldest first."""
        return self._events("rollout_id", rollout_id, "site", limit)

    def close(self) -> None:
        with self._lock:
            self._db.close()
