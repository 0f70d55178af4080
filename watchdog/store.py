"""Durable state and the audit log: SQLite in WAL mode under `state_dir`.

Each site's whole state (live colour, desired weights, current rollout with its phase, step and
step start) is one row, written in the same transaction as the events that explain the change,
and committed before the router is touched. A daemon killed at any moment restarts from here
and makes the router match the stored split: never an unknown split.

Beside it, in table `memory`, what the rules and Alertmanager had told the daemon: each rule's
state (pending since when, firing) and the firing alerts, so a restart does not restart a `for`
clock or forget an alert until Alertmanager repeats it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
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

    def __init__(self, state_dir: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = state_dir / "state.db"
        self.clock = clock
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the state store {self.path}: {exc}") from None
        self._lock = threading.Lock()

    def load(self, site: str) -> SiteState | None:
        with self._lock:
            row = self._db.execute("SELECT state FROM sites WHERE site = ?", (site,)).fetchone()
        return state_from_json(row[0]) if row else None

    def save(self, state: SiteState, events: tuple[Event, ...] | list[Event] = (),
             at: float | None = None) -> None:
        """The state and its events in one transaction: both are stored, or neither."""
        now = self.clock() if at is None else at
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "INSERT INTO sites (site, state, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT(site) DO UPDATE SET state = excluded.state, "
                    "updated_at = excluded.updated_at",
                    (state.site, state_to_json(state), now),
                )
                self._db.executemany(INSERT_EVENT,
                                     [_event_row(now, state.site, e) for e in events])
                self._db.execute("COMMIT")
            except BaseException as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"cannot write the state store {self.path}: {exc}") from None
                raise

    def record(self, site: str, event: Event, at: float | None = None) -> None:
        """An event that changes no state (drift repaired, router error, reload)."""
        with self._lock:
            self._db.execute(INSERT_EVENT,
                             _event_row(self.clock() if at is None else at, site, event))

    def events(self, site: str, limit: int = 50) -> list[dict[str, Any]]:
        """The newest `limit` events of a site, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, at, rollout_id, kind, phase_from, phase_to, weights, rule, value, "
                "threshold, actor, message FROM events WHERE site = ? ORDER BY id DESC LIMIT ?",
                (site, limit),
            ).fetchall()
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
            try:
                self._db.execute(SAVE_MEMORY, (site, *texts, self.clock(), *texts))
            except sqlite3.Error as exc:
                raise StoreError(f"cannot write the state store {self.path}: {exc}") from None

    def load_memory(self, site: str) -> dict[str, list[dict[str, Any]]]:
        """{"rules": [...], "alerts": [...]} as last saved; empty lists when none."""
        with self._lock:
            row = self._db.execute("SELECT rules, alerts FROM memory WHERE site = ?",
                                   (site,)).fetchone()
        if row is None:
            return {"rules": [], "alerts": []}
        return {"rules": json.loads(row[0]), "alerts": json.loads(row[1])}

    def close(self) -> None:
        with self._lock:
            self._db.close()
