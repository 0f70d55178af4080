"""Who blocks the migration: a pg_locks watcher for the time `migrate` runs (DESIGN.md §12).

`-u` runs with `lock_timeout = 15s`, and each DDL of the upgrade waits behind the live colour's
open transactions and running crons (ODOO.md "Module upgrades"). While the command runs, this
watcher asks PostgreSQL every `interval` which sessions of the migrated database wait on a
lock (`pg_locks` not granted, `waitstart` from PG 14) and who holds it (`pg_blocking_pids`),
and reports a wait longer than `lock_wait` once per episode, naming the blockers, so that a
person can decide. It only reads: it never cancels or terminates a session.

Without the `pg_read_all_stats` role (or a superuser), PostgreSQL hides the query text and
state of other roles' sessions: the watcher still names their pid and application_name.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from watchdog.steps.base import Progress, quiet
from watchdog.steps.pg import Server

QUERY_CHARS = 160  # of a blocker's query in events
APPLICATION = "odoo-watchdog-locks"

OnBlocked = Callable[[float, list["Blocker"]], None]


@dataclass(frozen=True)
class Blocker:
    """A session holding a lock that a session of the migrated database waits for."""

    pid: int  # 0: a prepared transaction (pg_blocking_pids says 0 for those)
    application_name: str
    client: str  # "10.0.0.5:51234", "local" (unix socket) or "" (unknown, hidden)
    state: str  # pg_stat_activity.state: active, idle in transaction, ...
    query: str  # its current or last query, on one line, truncated
    xact_start: datetime | None
    state_change: datetime | None
    database: str
    blocks: int  # the pid of the waiting session

    @property
    def since(self) -> datetime | None:
        """Since when it holds its locks: its transaction's start, else its state's."""
        return self.xact_start or self.state_change

    def describe(self) -> str:
        if self.pid == 0:
            return f"a prepared transaction (blocks pid {self.blocks}); see pg_prepared_xacts"
        since = self.since.isoformat(timespec="seconds") if self.since else "unknown"
        parts = [self.application_name or "no application_name", self.client or "client ?",
                 self.state or "state ?", f"since {since}"]
        if self.database:
            parts.append(f"database {self.database}")
        return (f"pid {self.pid} ({', '.join(parts)}; blocks pid {self.blocks}): "
                f"{self.query or '(query not visible)'}")


@dataclass(frozen=True)
class Wait:
    """A session of the database waiting on a lock, for `seconds`, behind `blockers`."""

    pid: int
    seconds: float
    blockers: tuple[Blocker, ...]


# One row per (waiting session, blocker); a waiting session with no blocker left gets one row
# with NULLs. clock_timestamp(): the statement's own time, not its transaction's.
WAITS_SQL = """
WITH waiting AS (
    SELECT a.pid, min(coalesce(l.waitstart, clock_timestamp())) AS since
    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE NOT l.granted AND a.datname = %(db)s AND a.pid <> pg_backend_pid()
    GROUP BY a.pid
)
SELECT w.pid, extract(epoch FROM clock_timestamp() - w.since)::float8,
       bp.pid, coalesce(b.application_name, ''),
       CASE WHEN b.client_addr IS NOT NULL THEN host(b.client_addr) || ':' || b.client_port
            WHEN b.client_port = -1 THEN 'local' ELSE '' END,
       coalesce(b.state, ''), coalesce(b.query, ''), b.xact_start, b.state_change,
       coalesce(b.datname, '')
FROM waiting w
LEFT JOIN LATERAL unnest(pg_blocking_pids(w.pid)) AS bp(pid) ON true
LEFT JOIN pg_stat_activity b ON b.pid = bp.pid
ORDER BY w.pid, bp.pid
"""


def one_line(query: str, chars: int = QUERY_CHARS) -> str:
    text = " ".join(query.split())
    return text if len(text) <= chars else text[: chars - 1] + "…"


async def lock_waits(conn: psycopg.AsyncConnection[Any], database: str) -> list[Wait]:
    """The sessions of `database` that wait on a lock now, each with its blockers."""
    async with conn.cursor() as cur:
        await cur.execute(WAITS_SQL, {"db": database})
        rows = await cur.fetchall()
    seconds: dict[int, float] = {}
    blockers: dict[int, list[Blocker]] = {}
    for (pid, waited, bpid, app, client, state, query, xact, changed, dbname) in rows:
        seconds[pid] = max(0.0, float(waited or 0.0))
        found = blockers.setdefault(pid, [])
        if bpid is not None:
            found.append(Blocker(int(bpid), app, client, state, one_line(query), xact, changed,
                                 dbname, int(pid)))
    return [Wait(pid, seconds[pid], tuple(blockers[pid])) for pid in seconds]


class LockWatcher:
    """Polls `lock_waits` until cancelled and reports waits longer than `lock_wait`.

    An episode (some session waiting longer than `lock_wait`) is reported once, through
    `on_blocked(seconds, blockers)` and `progress`, and again when its set of blockers
    changes; its end through `on_blocked(0.0, [])`. `blocked_max`: the longest wait seen."""

    def __init__(self, server: Server, database: str, *, lock_wait: float,
                 on_blocked: OnBlocked | None = None, progress: Progress = quiet,
                 interval: float = 0.5, step: str = "migrate") -> None:
        self.server = server
        self.database = database
        self.lock_wait = lock_wait
        self.on_blocked = on_blocked
        self.progress = progress
        self.interval = interval
        self.step = step
        self.blocked_max = 0.0
        self.blockers: tuple[Blocker, ...] = ()  # of the episode in progress, else ()
        self._reported: frozenset[int] | None = None
        self._failing = False

    async def run(self) -> None:
        conn: psycopg.AsyncConnection[Any] | None = None
        try:
            while True:
                try:
                    if conn is None or conn.closed:
                        conn = await self.server.connect(self.database,
                                                         application_name=APPLICATION)
                    self.observe(await lock_waits(conn, self.database))
                    self._failing = False
                except psycopg.Error as exc:
                    if not self._failing:  # once per outage, not every half second
                        first = str(exc).strip().splitlines()[:1]
                        self.progress(f"{self.step}: cannot watch locks on {self.server.label}: "
                                      f"{type(exc).__name__} {' '.join(first)}; retrying")
                    self._failing = True
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            await conn.close()
                    conn = None
                    await asyncio.sleep(max(self.interval, 2.0))
                    continue
                await asyncio.sleep(self.interval)
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(conn.close())

    def observe(self, waits: Sequence[Wait]) -> None:
        """One poll's waits: start, change or end the episode (no I/O but the callbacks)."""
        if waits:
            self.blocked_max = max(self.blocked_max, max(w.seconds for w in waits))
        long = [w for w in waits if w.seconds > self.lock_wait]
        if not long:
            self.finish()
            return
        blockers: dict[int, Blocker] = {}
        for wait in long:
            for b in wait.blockers:
                blockers.setdefault(b.pid, b)
        pids = frozenset(blockers)
        if pids == self._reported:
            return
        self._reported = pids
        self.blockers = tuple(blockers.values())
        seconds = max(w.seconds for w in long)
        self.progress(f"{self.step}: {len(long)} session(s) of {self.database} waiting on a "
                      f"lock for {seconds:.0f} s (lock_wait {self.lock_wait:g} s), held by "
                      f"{len(blockers) or 'no longer any'} session(s); nothing is cancelled")
        for b in self.blockers:
            self.progress(f"{self.step}: blocked by {b.describe()}")
        if self.on_blocked is not None:
            self.on_blocked(seconds, list(self.blockers))

    def finish(self) -> None:
        """End the episode in progress, if any (also when the command is over)."""
        if self._reported is None:
            return
        self._reported = None
        self.blockers = ()
        self.progress(f"{self.step}: no longer blocked on a lock")
        if self.on_blocked is not None:
            self.on_blocked(0.0, [])

