"""`source: logs`: lines matching a rule's `pattern` in the last `window`, from a colour's
container (through the docker SDK) or from its `log_file`; or, for a colour with `syslog`, the
records Odoo's `--syslog` sent to the daemon's socket at err or worse (`logsyslog.py`).

The value is the number of matching records in the window. Each (rule, colour) keeps a cursor,
so every tick reads only what was written since the last one: no line is counted twice and none
is skipped, however many lines arrive per tick. Memory is bounded whatever the volume: a window
is a ring of per-second counts, never a list of lines.

Counting
    Each line is first made plain (`logcount.clean`: the ANSI colours Odoo's ColoredFormatter
    puts around the level on a TTY, any other escape sequence, a TTY's `\r`). A record (a line
    with an Odoo header and the lines after it without one: its traceback) counts once when
    `pattern` finds a match in any of its lines (`re.search`, Python syntax, the line without
    its newline); a line without a header never counts on its own (`logcount.Records`). The
    default pattern matches Odoo's level field (`2026-11-26 10:00:00,123 4242 ERROR db
    odoo.http: ...`), so an INFO line whose message says "ERROR" does not count. A record is
    placed in the second of its first line's docker timestamp (containers) or of its arrival
    (files, see below); the value counts the seconds from `floor(now - window)` to now, so the
    window is exact to the second.

Forged records
    With `record_checks` (the default), a matching line counts only if it is a record Odoo
    wrote, not a line forged inside a failed login's raw login: `RecordChecks` in
    `logcount.py`, and README.md "Log transports and forged records" for what it stops.

The transports are `logfile.py` (rotation, truncation, the first read of a file) and
`logdocker.py` (docker's `since` boundary, tails); both count with `logcount.py`. This module
keeps one cursor per rule and colour and turns its count into a Measurement.

Syslog
    A colour's `syslog` socket is read on the event loop, not in a worker: every record is one
    datagram, so there are no lines and no cursor. It counts when its `<PRI>` severity is err
    or worse (the logging level, which no message text sets), and with a pattern other than
    the default when `pattern` is found in the record's whole text; `record_checks` does not
    apply. The config's sockets are all bound at the first measurement of any rule and kept
    until `close` (docs/rules.md, docs/logs.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watchdog.config import DaemonConfig
from watchdog.durations import format_duration
from watchdog.measurement import Measurement
from watchdog.rulefiles import DEFAULT_LOG_PATTERN, LogsRule
from watchdog.sources.base import Target, register
from watchdog.sources.logcount import ReadResult, SecondRing, docker_lines, plain_lines
from watchdog.sources.logdocker import DockerCursor, DockerReader
from watchdog.sources.logfile import FileCursor, FileReader
from watchdog.sources.logsyslog import SyslogError, SyslogReceiver

__all__ = [
    "DockerCursor",
    "FileCursor",
    "LogsRule",
    "LogsSource",
    "SecondRing",
    "docker_lines",
    "plain_lines",
]

WORKERS = 4
DEFAULT_TIMEOUT = 10.0
IDLE_STATE = 3600.0  # a cursor not measured for this long (and 2 windows) is dropped


@dataclass
class _State:
    cursor: FileCursor | DockerCursor
    lock: threading.Lock = field(default_factory=threading.Lock)
    used: float = 0.0
    window: float = 0.0



class LogsSource:
    kind = "logs"

    def __init__(
        self,
        *,
        docker_host: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.time,
        workers: int = WORKERS,
        syslog: Sequence[Path] = (),
    ) -> None:
        """`docker_host`: a docker base URL (`unix:///var/run/docker.sock`); None reads
        DOCKER_HOST like the docker CLI. `clock`: wall-clock seconds (tests pass a fake one).
        `syslog`: the config's syslog sockets, every one bound at the first measurement of
        any logs rule (the colour not measured yet keeps its records, and its Odoo finds a
        socket), kept until `close`; a socket of another path is bound when first measured."""
        self.docker_host = docker_host
        self.timeout = timeout
        self.clock = clock
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="logs")
        self._states: dict[tuple[Any, ...], _State] = {}
        self._states_lock = threading.Lock()
        self._files = FileReader(clock, timeout)
        self._docker = DockerReader(docker_host, timeout, clock)
        self._patterns: dict[str, Callable[[str], Any]] = {}
        # syslog sockets by path: used on the event loop only, bound on first use
        self._receivers: dict[str, SyslogReceiver] = {}
        self._receivers_used: dict[str, float] = {}
        self._binding = asyncio.Lock()
        self._configured = tuple(dict.fromkeys(str(p) for p in syslog))

    # -- the Source protocol ---------------------------------------------------------------

    async def measure(self, rule: LogsRule, target: Target) -> Measurement:
        started = time.time()
        if self._configured:
            await self._bind_configured()
        if target.syslog is not None:
            return await self._measure_syslog(rule, target.syslog, started)
        if target.container:
            where = f"container {target.container}"
            key: tuple[Any, ...] = ("docker", target.container)
        elif target.log_file is not None:
            where = f"file {target.log_file}"
            key = ("file", str(target.log_file))
        else:
            return Measurement.failed(
                f"site {target.site} colour {target.color} has neither container nor log_file "
                "nor syslog", started, time.time())
        key = (rule.name, rule.pattern, rule.window, rule.record_checks, target.site,
               target.color, *key)
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(self._pool, self._measure_sync, rule, target, key, where,
                                     started),
                timeout=self.timeout + 1.0,
            )
        except TimeoutError:
            return Measurement.failed(f"{where}: logs not read in {self.timeout:g}s",
                                      started, time.time())
        except Exception as exc:  # a source never raises into the tick
            return Measurement.failed(f"{where}: {type(exc).__name__}: {exc}",
                                      started, time.time())

    async def close(self) -> None:
        receivers = list(self._receivers.values())
        self._receivers.clear()
        for receiver in receivers:
            receiver.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._states_lock:
            states = list(self._states.values())
            self._states.clear()
        for state in states:
            if state.lock.acquire(timeout=self.timeout):
                try:
                    state.cursor.close()
                finally:
                    state.lock.release()
        self._docker.close()

    # -- on the event loop: a colour's syslog socket --------------------------------------------

    async def _measure_syslog(self, rule: LogsRule, path: Path, started: float) -> Measurement:
        where = f"syslog {path}"
        try:
            receiver = await self._receiver(path)
        except SyslogError as exc:
            return Measurement.failed(str(exc), started, time.time())
        except OSError as exc:
            return Measurement.failed(f"{where}: {exc.strerror or exc}", started, time.time())
        default = rule.pattern == DEFAULT_LOG_PATTERN
        search = None if default else self._search(rule.pattern)
        count = receiver.count(rule.window, search)
        records = "record" if count == 1 else "records"
        which = "at err or worse" if default else "at err or worse matching pattern"
        detail = (f"{count} {records} {which} in {format_duration(rule.window)} "
                  f"({receiver.received:,} received, {receiver.malformed:,} malformed) "
                  f"from {where}")
        if receiver.dropped:
            detail += (f"; {receiver.dropped:,} older records dropped for room (the count is "
                       "at least this)")
        self._forget_idle_receivers()
        return Measurement(float(count), None, detail, started, time.time())

    async def _receiver(self, path: Path) -> SyslogReceiver:
        key = str(path)
        async with self._binding:
            receiver = self._receivers.get(key)
            if receiver is None or not receiver.bound:
                receiver = SyslogReceiver(path, self.clock)
                await receiver.bind()
                self._receivers[key] = receiver
            self._receivers_used[key] = time.monotonic()
            return receiver

    async def _bind_configured(self) -> None:
        """Bind each of the config's sockets not bound yet; a failure shows when its colour
        is measured (which tries again)."""
        for key in self._configured:
            receiver = self._receivers.get(key)
            if receiver is None or not receiver.bound:
                with contextlib.suppress(SyslogError, OSError):
                    await self._receiver(Path(key))

    def _forget_idle_receivers(self) -> None:
        now = time.monotonic()
        for key, receiver in list(self._receivers.items()):
            if key in self._configured:
                continue
            if now - self._receivers_used.get(key, now) > max(IDLE_STATE, 2 * receiver.window):
                receiver.close()
                del self._receivers[key]
                self._receivers_used.pop(key, None)

    # -- in a worker thread ------------------------------------------------------------------

    def _measure_sync(
        self, rule: LogsRule, target: Target, key: tuple[Any, ...], where: str, started: float
    ) -> Measurement:
        state = self._state(rule, target, key)
        if not state.lock.acquire(timeout=self.timeout):
            return Measurement.failed(f"{where}: the previous read is still running",
                                      started, time.time())
        try:
            search = self._search(rule.pattern)
            cursor = state.cursor
            if isinstance(cursor, DockerCursor):
                result = self._docker.read(cursor, search, rule.window)
            else:
                try:
                    result = self._files.read(cursor, search, rule.window)
                except OSError as exc:
                    result = ReadResult(error=f"cannot read: {exc.strerror or exc}")
            if cursor.checks is not None:
                result.notes.extend(cursor.checks.take_notes())
            now = self.clock()
            state.used = time.monotonic()
            if result.error is not None:
                return Measurement.failed(f"{where}: {result.error}", started, time.time())
            count = cursor.ring.total(now, rule.window)
            lines = "line" if count == 1 else "lines"
            detail = (f"{count} matching {lines} in {format_duration(rule.window)} "
                      f"({result.read:,} read) from {where}")
            if result.notes:
                detail += "; " + "; ".join(result.notes)
            return Measurement(float(count), None, detail, started, time.time())
        finally:
            state.lock.release()
            self._forget_idle()

    def _state(self, rule: LogsRule, target: Target, key: tuple[Any, ...]) -> _State:
        with self._states_lock:
            state = self._states.get(key)
            if state is None:
                ring = SecondRing(rule.window)
                cursor: FileCursor | DockerCursor
                if target.container:
                    cursor = DockerCursor(target.container, ring)
                else:
                    assert target.log_file is not None
                    cursor = FileCursor(Path(target.log_file), ring)
                if not rule.record_checks:
                    cursor.checks = None
                state = self._states[key] = _State(cursor, used=time.monotonic(),
                                                   window=rule.window)
            return state

    def _forget_idle(self) -> None:
        now = time.monotonic()
        with self._states_lock:
            idle = [k for k, s in self._states.items()
                    if now - s.used > max(IDLE_STATE, 2 * s.window)]
            for k in idle:
                state = self._states[k]
                if state.lock.acquire(blocking=False):
                    try:
                        state.cursor.close()
                    finally:
                        state.lock.release()
                    del self._states[k]

    def _search(self, pattern: str) -> Callable[[str], Any]:
        search = self._patterns.get(pattern)
        if search is None:
            search = self._patterns[pattern] = re.compile(pattern).search
        return search

    def _client(self) -> Any:
        """The docker client (bench/bench_logs.py times dockerd's answers through it)."""
        return self._docker.client()



@register("logs", LogsRule)
def _factory(config: DaemonConfig) -> LogsSource:
    return LogsSource(syslog=[spec.syslog for site in config.sites.values()
                              for spec in site.colors.values() if spec.syslog is not None])
