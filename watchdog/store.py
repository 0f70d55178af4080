"""Durable state and the audit log, in SQLite (one daemon, under `state_dir`) or PostgreSQL
(several daemons sharing the sites, `store_pg.py`; DESIGN.md §15).

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
another program holds locked, a database server that is gone) is reported, not fatal: `save`
raises StoreError (so the daemon moves no traffic without its record), the store remembers
since when and why it fails (`view()`), and audit events that could not be written (`record`)
wait in memory, at most PENDING_LIMIT of them, to be written first in the next transaction that
succeeds, with their own times. docs/rollouts.md "Crash safety" says what the daemon does
meanwhile.

Several daemons on one PostgreSQL store share the sites with a lease per site (`acquire`,
`renew`, `release`): an owner and an epoch that goes up at each change of owner, timed by the
database's clock. A write given `fence=` commits only if, in its own transaction, the lease is
still that owner's and epoch's and unexpired; else it raises LeaseLost and stores nothing.
SQLite has the same tables and calls (its clock is the store's), for one daemon and the tests.

The logic is written once, in SqlStore; a backend gives the connection, its Dialect (the few
words in which SQLite and PostgreSQL differ), its error types, its migrations and how it words
a failure. Schema versions: table `meta` holds `schema_version`; at open the store migrates up
to len(MIGRATIONS) in one transaction, and refuses a database newer than it knows.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from watchdog.rollout import Event, Phase, Rollout, SiteState, Step, StepOutcome
from watchdog.secrets import SecretError, read_secret

if TYPE_CHECKING:
    from watchdog.config import DaemonConfig

T = TypeVar("T")

# Version 1: the tables of the first release (a file made by it has no schema_version: it
# migrates from 0, and these statements, all "IF NOT EXISTS", leave its tables and rows be).
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

# Version 2: per-site leases and the daemons that share the store (times: the store's clock).
SCHEMA_V2 = """
CREATE TABLE leases (
    site TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    api TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE daemons (
    instance TEXT PRIMARY KEY,
    api TEXT NOT NULL,
    expires_at REAL NOT NULL
);
"""


def statements(script: str) -> tuple[str, ...]:
    """A script's statements, one by one (executescript would commit the transaction)."""
    return tuple(s.strip() for s in script.split(";") if s.strip())


META = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
SET_META = ("INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value")

INSERT_EVENT = (
    "INSERT INTO events (at, site, rollout_id, kind, phase_from, phase_to, weights, rule, value, "
    "threshold, actor, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

# A column given as NULL keeps what is stored: rules and alerts are saved apart.
SAVE_MEMORY = (
    "INSERT INTO memory (site, rules, alerts, updated_at) "
    "VALUES (?, coalesce(?, '[]'), coalesce(?, '[]'), ?) "
    "ON CONFLICT(site) DO UPDATE SET rules = coalesce(?, memory.rules), "
    "alerts = coalesce(?, memory.alerts), "
    "updated_at = excluded.updated_at"
)

# What a retry writes when no audit event waits: a write the disk must take (a COMMIT with
# nothing in it succeeds on a full disk and would prove nothing). Its args: the time.
PROBE = ("INSERT INTO meta (key, value) VALUES ('last_write', ?) "
         "ON CONFLICT(key) DO UPDATE SET value = excluded.value")

# Leases. {now} is the store's clock, {later} is it plus the `?` given (seconds), {left} is
# the seconds from now to expires_at: the Dialect says each in its own words.
ACQUIRE = (
    "INSERT INTO leases (site, owner, api, epoch, expires_at) VALUES (?, ?, ?, 1, {later}) "
    "ON CONFLICT(site) DO UPDATE SET owner = excluded.owner, api = excluded.api, "
    "epoch = CASE WHEN leases.owner = excluded.owner AND leases.expires_at > {now} "
    "THEN leases.epoch ELSE leases.epoch + 1 END, expires_at = excluded.expires_at "
    "WHERE leases.owner = excluded.owner OR leases.expires_at <= {now} "
    "RETURNING epoch"
)
RELEASE = ("UPDATE leases SET expires_at = {now} "
           "WHERE site = ? AND owner = ? AND epoch = ? AND expires_at > {now}")
OWNERS = "SELECT site, owner, api, epoch, {left} FROM leases ORDER BY site"
HEARTBEAT = ("INSERT INTO daemons (instance, api, expires_at) VALUES (?, ?, {later}) "
             "ON CONFLICT(instance) DO UPDATE SET api = excluded.api, "
             "expires_at = excluded.expires_at")
DAEMONS = "SELECT instance, api, {left} FROM daemons WHERE expires_at > {now} ORDER BY instance"
FENCE = "SELECT owner, epoch, expires_at > {now} FROM leases WHERE site = ?{share}"

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
    """Text any store can hold whatever arrived (a lone surrogate or a NUL, which PostgreSQL
    refuses in text, becomes U+FFFD)."""
    if value is None:
        return None
    return value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")


FINAL_PHASES = frozenset(p.value for p in (Phase.PROMOTED, Phase.ROLLED_BACK, Phase.ABORTED))


def _finite(value: Any) -> float | None:
    """A number SQLite and JSON can hold (NaN and infinities are no data)."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _event_row(at: float, site: str, e: Event) -> tuple[Any, ...]:
    return (at, site, _text(e.rollout_id), e.kind, e.phase_from, e.phase_to,
            json.dumps(e.weights), _text(e.rule), _finite(e.value), _text(e.threshold),
            _text(e.actor), _text(e.message))


class StoreError(RuntimeError):
    pass


class LeaseLost(StoreError):
    """A fenced write refused: the site's lease is not this daemon's any more (taken over, or
    expired). Not a failure of the store: nothing is counted or queued, `ok` stays."""


@dataclass(frozen=True)
class Lease:
    """A site owned by `owner` at `epoch`, until `deadline` on this process's monotonic clock:
    time.monotonic() taken before the statement was sent, plus the ttl (the database's
    expires_at is at least that late, so the daemon gives it up first)."""

    site: str
    owner: str
    epoch: int
    deadline: float

    def valid(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) < self.deadline


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


@dataclass(frozen=True)
class Dialect:
    """What differs between the SQL of two backends; the shared statements are written in
    SQLite's words (`?` placeholders) with {now}, {later}, {left}, {share}, {seq} and {rest}."""

    placeholder: str  # "?" or "%s"
    begin: str  # a write transaction that takes the write lock at once where that matters
    now: str  # the store's clock, as the type of expires_at
    later: str  # that plus `?` seconds
    left: str  # seconds from now to expires_at (negative once passed), a float
    share: str  # appended to the fence's SELECT: lock the lease row until commit
    seq: str  # the column that orders rows as they were inserted (a tie-break)
    rest: str  # "every row after the first ?": LIMIT -1 OFFSET ? or OFFSET ?
    schema_lock: str | None = None  # taken in the migration's transaction

    @functools.cache  # noqa: B019  (a few dialects, a few dozen statements: bounded)
    def sql(self, text: str) -> str:
        out = (text.replace("{now}", self.now).replace("{later}", self.later)
               .replace("{left}", self.left).replace("{share}", self.share)
               .replace("{seq}", self.seq).replace("{rest}", self.rest))
        return out if self.placeholder == "?" else out.replace("?", self.placeholder)


SQLITE = Dialect(placeholder="?", begin="BEGIN IMMEDIATE", now="wd_now()",
                 later="(wd_now() + ?)", left="(expires_at - wd_now())", share="",
                 seq="rowid", rest="LIMIT -1 OFFSET ?")

Run = Callable[[str, Sequence[Any]], list[Any]]  # a statement (SQLite's words), its rows


class SqlStore:
    """The store's logic, once: a backend subclass gives `dialect`, `errors`, `MIGRATIONS`,
    `kind`, `path` (what messages and the API show), and the few methods below that touch its
    connection. Every method is safe to call from worker threads (one lock for the state's
    connection; a backend may give the leases a lock and connection of their own)."""

    dialect: ClassVar[Dialect]
    errors: ClassVar[tuple[type[BaseException], ...]]  # a failure of the store
    MIGRATIONS: ClassVar[tuple[tuple[str, ...], ...]]  # version N: MIGRATIONS[N - 1]
    kind: ClassVar[str]
    path: Path | str

    def __init__(self, clock: Callable[[], float],
                 on_error: Callable[[str], None] | None) -> None:
        self.clock = clock
        # Called with the operation (save, record, memory, flush, load, read, history, lease)
        # of each failure, from the thread that failed: the daemon counts them in a metric.
        self.on_error = on_error
        self._lock = threading.Lock()
        self.ok = True  # the last write succeeded
        self.error: str | None = None  # why the writes fail, while they do
        self.since: float | None = None  # when they began to fail
        self.flushed = 0  # audit events the last write that found some waiting took along
        self._pending: deque[tuple[float, str, Event]] = deque()
        self._lost: dict[str, int] = {}  # per site: events dropped from a full queue
        self._history_done: set[str] = set()  # ended rollouts whose last tick is stored

    # ---------------------------------------------------------------- what a backend gives

    def _run(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """One statement (in the backend's words) on the state's connection: its rows."""
        raise NotImplementedError

    def _run_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError

    def _rollback(self) -> None:
        """End a transaction that may be open, never raising."""
        raise NotImplementedError

    def _start(self) -> bool:
        """Make the state's connection ready (reconnect after a lost one): True when it is
        one used before, which may have gone stale since."""
        return False

    def _stale(self, exc: BaseException) -> bool:
        """`exc` says the connection is gone (a server restarted while it was idle): the
        operation, which has not committed, may be tried once more on a new one."""
        return False

    def _reason(self, exc: BaseException) -> str:
        return str(exc) or type(exc).__name__

    def _lease_session(self) -> AbstractContextManager[Run]:
        """The connection leases are taken on, held for one operation; errors of the store
        from it are worded and counted by `_leased`."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # ---------------------------------------------------------------- helpers

    def _x(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        return self._run(self.dialect.sql(sql), args)

    def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._run_many(self.dialect.sql(sql), rows)

    def _migrate(self) -> None:
        """Create the tables, or bring them up to this code's version, in one transaction
        (with the dialect's schema lock: two daemons starting at once migrate once). The
        caller words the failures; a newer database is a StoreError of its own."""
        know = len(self.MIGRATIONS)
        self._start()
        try:  # up to date: no write lock to take (another program may hold it a while)
            if self._x("SELECT value FROM meta WHERE key = 'schema_version'") == [(str(know),)]:
                return
        except self.errors:
            self._rollback()  # no table meta yet; a real failure comes again below
        try:
            self._x(self.dialect.begin)
            if self.dialect.schema_lock is not None:
                self._x(self.dialect.schema_lock)
            self._x(META)
            rows = self._x("SELECT value FROM meta WHERE key = 'schema_version'")
            try:
                have = int(rows[0][0]) if rows else 0
            except ValueError:
                raise StoreError(f"state store {self.path}: its schema_version "
                                 f"{rows[0][0]!r} is not a number") from None
            if have > know:
                raise StoreError(f"state store schema version {have} is newer than this "
                                 f"odoo-watchdog (knows {know}): upgrade odoo-watchdog")
            for version in range(have + 1, know + 1):
                for statement in self.MIGRATIONS[version - 1]:
                    self._x(statement)
            if have != know:
                self._x(SET_META, ("schema_version", str(know)))
            self._x("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def schema_version(self) -> int:
        rows = self._read("read", "SELECT value FROM meta WHERE key = 'schema_version'", ())
        return int(rows[0][0]) if rows else 0

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
        self.error = self._reason(exc)
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

    def _check_fence(self, fence: Lease) -> None:
        """In the open transaction: the lease is still `fence`'s (locked until commit where
        the dialect can), else LeaseLost."""
        rows = self._x(FENCE, (fence.site,))
        if rows and rows[0][0] == fence.owner and int(rows[0][1]) == fence.epoch \
                and bool(rows[0][2]):
            return
        if not rows:
            now = "no lease is stored"
        else:
            now = f"now owner {rows[0][0]} epoch {rows[0][1]}" + (
                "" if rows[0][2] else ", expired")
        raise LeaseLost(f"site {fence.site}: the lease of epoch {fence.epoch} is no longer "
                        f"this daemon's ({now})")

    def _write(self, op: str, body: Callable[[], object], fence: Lease | None = None,
               site: str | None = None) -> None:
        """One transaction (the caller holds the lock): the fence first, then the waiting
        audit events, then `body`. On success the waiting events are gone and the store is ok
        again. A connection found stale before the commit is tried once more."""
        if fence is not None:
            if site is not None and fence.site != site:
                raise ValueError(f"a lease of site {fence.site} cannot fence a write of {site}")
            if not fence.valid():
                raise LeaseLost(f"site {fence.site}: the lease of epoch {fence.epoch} is no "
                                "longer this daemon's (it was not renewed in time)")
        for attempt in (1, 2):
            reused = committing = False
            try:
                reused = self._start()
                self._x(self.dialect.begin)
                if fence is not None:
                    self._check_fence(fence)
                if self._pending or self._lost:
                    self._many(INSERT_EVENT, self._waiting_rows())
                body()
                committing = True
                self._x("COMMIT")
            except BaseException as exc:
                self._rollback()
                if isinstance(exc, self.errors):
                    if attempt == 1 and reused and not committing and self._stale(exc):
                        continue
                    raise self._failed(op, exc) from None
                raise
            break
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
                    self._write("flush", lambda: self._x(PROBE, (str(self.clock()),)))
            except StoreError:
                return False
            return True

    # ---------------------------------------------------------------- reading and writing

    def _read(self, op: str, query: str, args: Sequence[Any]) -> list[Any]:
        with self._lock:
            for attempt in (1, 2):
                reused = False
                try:
                    reused = self._start()
                    return self._x(query, args)
                except self.errors as exc:
                    if attempt == 1 and reused and self._stale(exc):
                        continue
                    self._count(op)
                    raise StoreError(f"state store {self.path} cannot read: "
                                     f"{self._reason(exc)}") from None
            raise AssertionError("unreachable")

    def load(self, site: str) -> SiteState | None:
        rows = self._read("load", "SELECT state FROM sites WHERE site = ?", (site,))
        return state_from_json(rows[0][0]) if rows else None

    def save(self, state: SiteState, events: tuple[Event, ...] | list[Event] = (),
             at: float | None = None, *, fence: Lease | None = None) -> None:
        """The state and its events in one transaction: both are stored, or neither. With
        `fence`, only while that lease is still this daemon's (else LeaseLost)."""
        now = self.clock() if at is None else at
        text = state_to_json(state)
        rows = [_event_row(now, state.site, e) for e in events]

        def body() -> None:
            self._x("INSERT INTO sites (site, state, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT(site) DO UPDATE SET state = excluded.state, "
                    "updated_at = excluded.updated_at", (state.site, text, now))
            self._many(INSERT_EVENT, rows)

        with self._lock:
            self._write("save", body, fence, state.site)

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
                self._write("record", lambda: self._x(INSERT_EVENT, row))
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
                    alerts: list[dict[str, Any]] | None = None,
                    fence: Lease | None = None) -> None:
        """Replace the stored rule states and/or firing alerts of a site."""
        if rules is None and alerts is None:
            return
        texts = [None if v is None else json.dumps(v, sort_keys=True, allow_nan=False)
                 for v in (rules, alerts)]
        with self._lock:
            self._write("memory", lambda: self._x(
                SAVE_MEMORY, (site, *texts, self.clock(), *texts)), fence, site)

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
                  rules: list[dict[str, Any]], at: float | None = None, *,
                  fence: Lease | None = None) -> bool:
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
            wrote = False
            rows = self._x("SELECT ticks, info FROM rollouts WHERE id = ?", (rid,))
            row = rows[0] if rows else None
            if ended and row is not None and json.loads(row[1]).get("phase") in FINAL_PHASES:
                return  # its end is stored (a restart ticks it once more)
            n = (row[0] if row is not None else 0) + 1
            started = rollout.get("started_at")
            self._x("INSERT INTO rollouts (id, site, started_at, updated_at, info, ticks) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                    "updated_at = excluded.updated_at, info = excluded.info, "
                    "ticks = excluded.ticks",
                    (rid, site, now if started is None else float(started), now, info, n))
            self._x("INSERT INTO ticks (rollout_id, n, at, weights) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(rollout_id, n) DO UPDATE SET at = excluded.at, "
                    "weights = excluded.weights", (rid, n, now, json.dumps(weights)))
            self._many(
                "INSERT INTO tick_rules (rollout_id, n, rule, color, value, threshold, state, "
                "outcome) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(rollout_id, n, rule, color) DO UPDATE SET value = excluded.value, "
                "threshold = excluded.threshold, state = excluded.state, "
                "outcome = excluded.outcome",
                [(rid, n, _text(str(r["name"])), str(r["color"]), _finite(r.get("value")),
                  _text(str(r.get("threshold") or "")), str(r.get("state") or ""),
                  r.get("outcome")) for r in rules])
            if n > HISTORY_TICKS:
                for table in ("ticks", "tick_rules"):
                    self._x(f"DELETE FROM {table} WHERE rollout_id = ? AND n <= ?",  # noqa: S608
                            (rid, n - HISTORY_TICKS))
            if row is None:  # a new rollout: the site's oldest beyond HISTORY_ROLLOUTS go
                old = [r[0] for r in self._x(
                    "SELECT id FROM rollouts WHERE site = ? ORDER BY started_at DESC, "
                    "{seq} DESC {rest}", (site, HISTORY_ROLLOUTS))]
                for table, key in (("ticks", "rollout_id"), ("tick_rules", "rollout_id"),
                                   ("rollouts", "id")):
                    self._many(f"DELETE FROM {table} WHERE {key} = ?",  # noqa: S608
                               [(o,) for o in old])
            wrote = True

        with self._lock:
            self._write("history", body, fence, site)
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

    # ---------------------------------------------------------------- leases and daemons

    def _leased(self, call: Callable[[Run], T]) -> T:
        """One lease operation: a failure of the store is a StoreError counted as "lease";
        it says nothing about writing state, so `ok` stays as it is."""
        try:
            with self._lease_session() as run:
                return call(run)
        except self.errors as exc:
            self._count("lease")
            raise StoreError(f"state store {self.path} cannot keep the leases: "
                             f"{self._reason(exc)}") from None

    def heartbeat(self, instance: str, api: str, ttl: float) -> None:
        """This daemon is alive, at `api`, for `ttl` seconds more."""
        self._leased(lambda run: run(HEARTBEAT, (instance, api, ttl)))

    def daemons(self) -> list[dict[str, Any]]:
        """The daemons whose heartbeat has not expired: {"instance", "api", "expires_in"}."""
        rows = self._leased(lambda run: run(DAEMONS, ()))
        return [{"instance": i, "api": a, "expires_in": float(left)} for i, a, left in rows]

    def acquire(self, site: str, instance: str, api: str, ttl: float) -> Lease | None:
        """Take the site when it has no lease or its lease expired (the epoch goes up by
        one), or renew it when it is ours and unexpired (the same epoch); None while another
        daemon's lease runs. One statement: two daemons never both get it."""
        def call(run: Run) -> Lease | None:
            sent = time.monotonic()
            rows = run(ACQUIRE, (site, instance, api, ttl))
            return Lease(site, instance, int(rows[0][0]), sent + ttl) if rows else None
        return self._leased(call)

    def renew(self, leases: Sequence[Lease], ttl: float) -> dict[str, Lease | None]:
        """Extend, in one statement, each lease that is still ours and unexpired; None for
        each that is not (taken over, or expired)."""
        if not leases:
            return {}

        def call(run: Run) -> dict[str, Lease | None]:
            sent = time.monotonic()
            values = ", ".join("(?, ?, ?)" for _ in leases)  # placeholders only
            rows = run("UPDATE leases SET expires_at = {later} WHERE expires_at > {now} AND "  # noqa: S608
                       f"(site, owner, epoch) IN (VALUES {values}) RETURNING site, epoch",
                       (ttl, *(v for lease in leases
                               for v in (lease.site, lease.owner, lease.epoch))))
            kept = {(s, int(e)) for s, e in rows}
            return {lease.site: (Lease(lease.site, lease.owner, lease.epoch, sent + ttl)
                                 if (lease.site, lease.epoch) in kept else None)
                    for lease in leases}
        return self._leased(call)

    def release(self, lease: Lease) -> None:
        """Give the site up now (a graceful hand-over) if it is still ours; else nothing."""
        self._leased(lambda run: run(RELEASE, (lease.site, lease.owner, lease.epoch)))

    def owners(self) -> dict[str, dict[str, Any]]:
        """Every lease: site -> {"instance", "api", "epoch", "expires_in" (seconds, negative
        once expired)}."""
        rows = self._leased(lambda run: run(OWNERS, ()))
        return {site: {"instance": owner, "api": api, "epoch": int(epoch),
                       "expires_in": float(left)} for site, owner, api, epoch, left in rows}


class Store(SqlStore):
    """The SQLite store: one file in WAL mode, `state_dir/state.db`, for one daemon."""

    dialect = SQLITE
    errors = (sqlite3.Error, OSError)
    MIGRATIONS = (statements(SCHEMA), statements(SCHEMA_V2))
    kind = "sqlite"
    path: Path

    def __init__(self, state_dir: Path, clock: Callable[[], float] = time.time, *,
                 busy_timeout: float = 5.0,
                 on_error: Callable[[str], None] | None = None) -> None:
        super().__init__(clock, on_error)
        self.path = state_dir / "state.db"
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.create_function("wd_now", 0, lambda: float(self.clock()))
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            self._migrate()
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the state store {self.path}: {exc}") from None

    def _run(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        return self._db.execute(sql, args).fetchall()

    def _run_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._db.executemany(sql, rows)

    def _rollback(self) -> None:
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # SQLite already rolled back (a full disk can do that)

    def _reason(self, exc: BaseException) -> str:
        """SQLite's words, and what the filesystem says when that explains them."""
        text = str(exc) or type(exc).__name__
        try:
            fs = os.statvfs(self.path.parent)
        except OSError:
            return text
        if fs.f_flag & os.ST_RDONLY:
            return f"{text} (its filesystem is mounted read-only)"
        free = fs.f_bavail * fs.f_frsize
        if free < LOW_SPACE:
            return f"{text} (no space left on its filesystem: {free} bytes free)"
        return text

    def _lease_session(self) -> AbstractContextManager[Run]:
        return _sqlite_session(self)

    def close(self) -> None:
        with self._lock:
            self._db.close()


@contextlib.contextmanager
def _sqlite_session(store: Store) -> Iterator[Run]:
    """SQLite's leases share the one connection and its lock (each statement on its own)."""
    with store._lock:
        yield store._x


def read_dsn(config: DaemonConfig, base: Path) -> str:
    """The conninfo in `store.dsn_file` (comment lines ignored); StoreError naming the key and
    the file, never the content, when there is not exactly one line."""
    if config.store.dsn_file is None:
        raise StoreError("store.dsn_file: kind postgresql needs a file holding the conninfo")
    try:
        text = read_secret(config.store.dsn_file, base, "store.dsn_file")
    except SecretError as exc:
        raise StoreError(str(exc)) from None
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and not ln.strip().startswith("#")]
    if len(lines) != 1:
        raise StoreError(f"store.dsn_file {config.store.dsn_file}: give one conninfo line "
                         "(host=... dbname=... or postgresql://...)")
    return lines[0]


def open_store(config: DaemonConfig, base: Path, clock: Callable[[], float] = time.time, *,
               on_error: Callable[[str], None] | None = None) -> SqlStore:
    """The store the config names: SQLite in `base / state_dir`, or PostgreSQL at the
    conninfo in `store.dsn_file` (relative to `base`, the config's folder). StoreError when it
    cannot be opened, naming it without its password."""
    if config.store.kind == "postgresql":
        from watchdog.store_pg import PgStore

        return PgStore(read_dsn(config, base), clock, on_error=on_error)
    return Store(base / config.state_dir, clock, on_error=on_error)
