"""`source: logs`: lines matching a rule's `pattern` in the last `window`, from a colour's
container (through the docker SDK) or from its `log_file`.

The value is the number of matching lines in the window. Each (rule, colour) keeps a cursor, so
every tick reads only what was written since the last one: no line is counted twice and none is
skipped, however many lines arrive per tick. Memory is bounded whatever the volume: a window is a
ring of per-second counts, never a list of lines.

Counting
    A line counts when `pattern` finds a match in it (`re.search`, Python syntax, the line
    without its newline). The default pattern matches Odoo's level field
    (`2026-11-26 10:00:00,123 4242 ERROR db odoo.http: ...`), so an INFO line whose message
    says "ERROR" does not count, and a traceback counts once: its continuation lines carry no
    level field. A line is placed in the second of its own docker timestamp (containers) or of
    its arrival (files, see below); the value counts the seconds from `floor(now - window)` to
    now, so the window is exact to the second.

Containers: the `since` boundary
    Docker's `since` is inclusive (a line stamped exactly `since` is returned) and, through the
    SDK, nanoseconds are not: a datetime is floored to the second and a float is sent as its
    shortest repr (dockerd reads `seconds.nanoseconds`), while docker stamps lines to the
    nanosecond. So the cursor is not a time but a line: the container id, the timestamp of
    the last line read (`timestamps=True`: fixed-width RFC 3339 with nanoseconds, UTC) and how
    many lines carried exactly that timestamp. Each read asks `since` the earlier of that
    line and 100 ms before the previous read began, in whole microseconds (a float whose repr
    is exact), so the cursor's line is always in the answer, and so is a line stamped before
    the previous read but written to the log after it: docker copies stdout and stderr in two
    goroutines, so its log is not in timestamp order (seen here by 1.8 ms under load). The
    read then skips, in the answer's order, everything up to and including the cursor's line.
    A line is thus recognised by its place in the log, not by its time.
    The first read of a container (and of a re-created one) asks for the last `window`, at
    most `TAIL_FIRST_MAX` lines.
    Docker decodes a container's whole json log to answer `since` alone (seconds for a large
    log, even for an empty answer), so every read also asks for a `tail`: the lines expected
    at the last read's rate and a quarter more, grown (up to all lines) until the answer holds
    the cursor's line or is shorter than the tail, i.e. complete.
    A container restarted keeps its id and its log: the cursor goes on. A container re-created
    under the same name has a new id: the count starts again with the new container's lines
    of the last window (errors of the container that was replaced are not this one's). A
    missing container or an unreachable dockerd is an `error` measurement, never an exception.

Files: rotation, truncation, first read
    The file is kept open between ticks. When the path names a new file (rotation by rename)
    the old one is read to its end, kept open for `ROTATE_WAIT` seconds for lines the writer
    puts there before it reopens, and the new file is read from its start. When the file is
    shorter than the cursor, or its first bytes changed (copytruncate, then rewritten past the
    cursor), it is read again from its start. A path that has gone away between a rename and
    the writer's next line is not an error: the window still counts what was read.
    Lines are placed by arrival time (the tick that read them, not a timestamp in the text:
    Odoo writes local time without a zone, and a daemon in another zone would silently count
    nothing). On the first tick only, the last `BACKLOG_BYTES` of the file are read and their
    matching lines placed by Odoo's `YYYY-MM-DD HH:MM:SS` prefix, read as local time, provided
    the newest such stamp agrees with the file's mtime within two minutes; otherwise the
    backlog is left out (said in the detail). Counts are exact for every line written after the
    source first opened the file.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import itertools
import math
import operator
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watchdog.config import DaemonConfig
from watchdog.durations import format_duration
from watchdog.measurement import Measurement
from watchdog.rulefiles import LogsRule
from watchdog.sources.base import Target, register

__all__ = [
    "BACKLOG_BYTES",
    "ROTATE_WAIT",
    "DockerCursor",
    "FileCursor",
    "LogsSource",
    "SecondRing",
    "docker_lines",
    "plain_lines",
]

WORKERS = 4
DEFAULT_TIMEOUT = 10.0
BACKLOG_BYTES = 16 << 20  # what the first tick of a file reads, at most
READ_CHUNK = 4 << 20
MAX_LINE = 1 << 20  # a longer line without newline is scanned as it is
ROTATE_WAIT = 30.0  # seconds a rotated-away file is still read
TAIL_FIRST = 10_000  # docker: the first read's tail, grown while the answer is full
TAIL_MIN = 1_000  # docker: later reads ask for this many lines and 1.25 times the expected
TAIL_FIRST_MAX = 200_000  # the first read of a container never asks for more lines
TAIL_ALL = 4_000_000  # a larger tail asks for all lines instead
REREAD_US = 100_000  # docker: microseconds asked for before the cursor's line
IDLE_STATE = 3600.0  # a cursor not measured for this long (and 2 windows) is dropped
TRUST_SKEW = 120.0  # file backlog: newest Odoo stamp vs the file's mtime

# Docker's `timestamps=True` prefix: RFC3339NanoFixed in UTC, always 30 characters and a space.
TS_LEN = 30
_DOCKER_TS = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z")
_ODOO_TS = re.compile(r"(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)")
_content = operator.itemgetter(slice(TS_LEN + 1, None))


# ---------------------------------------------------------------------------------------------
# The window
# ---------------------------------------------------------------------------------------------


class SecondRing:
    """Counts per whole second for the last `window` seconds: `ceil(window) + 2` slots."""

    __slots__ = ("counts", "seconds", "size")

    def __init__(self, window: float) -> None:
        self.size = math.ceil(window) + 2
        self.seconds = [-1] * self.size
        self.counts = [0] * self.size

    def add(self, second: int, count: int = 1) -> None:
        i = second % self.size
        held = self.seconds[i]
        if held == second:
            self.counts[i] += count
        elif held < second:
            self.seconds[i] = second
            self.counts[i] = count
        # else: older than anything the ring can still hold, so outside any window

    def total(self, now: float, window: float) -> int:
        """Lines in the seconds from floor(now - window) on."""
        first = math.floor(now - window)
        return sum(c for s, c in zip(self.seconds, self.counts, strict=True) if s >= first)

    def clear(self) -> None:
        self.seconds = [-1] * self.size
        self.counts = [0] * self.size


# ---------------------------------------------------------------------------------------------
# Scanning: C-level iteration over lines, Python only for the lines that match
# ---------------------------------------------------------------------------------------------


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def plain_lines(search: Callable[[str], Any], text: str) -> tuple[int, list[str]]:
    """(lines read, matching lines) of complete lines `text` (no final newline)."""
    lines = text.split("\n")
    return len(lines), list(filter(search, lines))


def docker_lines(search: Callable[[str], Any], text: str) -> tuple[int, list[str]]:
    """Like plain_lines for docker's `timestamp line` output (final newline allowed); the
    pattern sees each line without its timestamp, the matches keep theirs."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    hits = itertools.compress(lines, map(search, map(_content, lines)))
    return len(lines), list(hits)


class _EpochCache:
    """`YYYY-MM-DD?HH:MM:SS` -> epoch seconds, UTC or local; lines of one second share it."""

    def __init__(self, local: bool) -> None:
        self.local = local
        self.cache: dict[str, int | None] = {}

    def __call__(self, stamp: str) -> int | None:
        cached = self.cache.get(stamp, -1)
        if cached != -1:
            return cached
        value: int | None
        try:
            fields = (int(stamp[0:4]), int(stamp[5:7]), int(stamp[8:10]),
                      int(stamp[11:13]), int(stamp[14:16]), int(stamp[17:19]))
            if self.local:
                value = int(time.mktime((*fields, 0, 0, -1)))
            else:
                value = calendar.timegm((*fields, 0, 0, 0))
        except (ValueError, OverflowError):
            value = None
        if len(self.cache) > 4096:
            self.cache.clear()
        self.cache[stamp] = value
        return value


_utc_second = _EpochCache(local=False)


# ---------------------------------------------------------------------------------------------
# Cursors (one per rule and colour)
# ---------------------------------------------------------------------------------------------


@dataclass
class _Open:
    fd: int
    ident: tuple[int, int]
    offset: int = 0
    head: bytes = b""
    carry: bytes = b""
    until: float = math.inf  # a rotated-away file is read until then


@dataclass
class FileCursor:
    path: Path
    ring: SecondRing
    current: _Open | None = None
    rotated: list[_Open] = field(default_factory=list)
    started: bool = False  # False until the first tick has looked at the file

    def close(self) -> None:
        for f in [*self.rotated, *([self.current] if self.current else [])]:
            with contextlib.suppress(OSError):
                os.close(f.fd)
        self.rotated = []
        self.current = None


@dataclass
class DockerCursor:
    container: str
    ring: SecondRing
    container_id: str | None = None
    last_ts: bytes | None = None  # docker timestamp of the last line read
    at_last: int = 0  # lines read with exactly that timestamp
    floor_us: int = 0  # without a line read yet: every line stamped from then on is new
    read_us: int = 0  # when the previous read began (0: none yet)
    rate: float = 0.0  # lines per second in the previous read: the next tail's guess

    def reset(self, container_id: str) -> None:
        self.container_id = container_id
        self.last_ts = None
        self.at_last = 0
        self.floor_us = self.read_us = 0
        self.rate = 0.0
        self.ring.clear()

    def close(self) -> None:
        pass


@dataclass
class _State:
    cursor: FileCursor | DockerCursor
    lock: threading.Lock = field(default_factory=threading.Lock)
    used: float = 0.0
    window: float = 0.0


@dataclass
class _Result:
    read: int = 0
    notes: list[str] = field(default_factory=list)
    error: str | None = None


class _Unavailable(Exception):
    """The container or dockerd cannot be read: the measurement's error text."""


# ---------------------------------------------------------------------------------------------
# The source
# ---------------------------------------------------------------------------------------------


class LogsSource:
    kind = "logs"

    def __init__(
        self,
        *,
        docker_host: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.time,
        workers: int = WORKERS,
    ) -> None:
        """`docker_host`: a docker base URL (`unix:///var/run/docker.sock`); None reads
        DOCKER_HOST like the docker CLI. `clock`: wall-clock seconds (tests pass a fake one)."""
        self.docker_host = docker_host
        self.timeout = timeout
        self.clock = clock
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="logs")
        self._states: dict[tuple[Any, ...], _State] = {}
        self._states_lock = threading.Lock()
        self._docker: Any = None
        self._docker_lock = threading.Lock()
        self._patterns: dict[str, Callable[[str], Any]] = {}

    # -- the Source protocol ---------------------------------------------------------------

    async def measure(self, rule: LogsRule, target: Target) -> Measurement:
        started = time.time()
        if target.container:
            where = f"container {target.container}"
            key: tuple[Any, ...] = ("docker", target.container)
        elif target.log_file is not None:
            where = f"file {target.log_file}"
            key = ("file", str(target.log_file))
        else:
            return Measurement.failed(
                f"site {target.site} colour {target.color} has neither container nor log_file",
                started, time.time())
        key = (rule.name, rule.pattern, rule.window, target.site, target.color, *key)
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
        client, self._docker = self._docker, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

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
                result = self._read_docker(cursor, search, rule.window)
            else:
                try:
                    result = self._read_file(cursor, search, rule.window)
                except OSError as exc:
                    result = _Result(error=f"cannot read: {exc.strerror or exc}")
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

    # -- files -------------------------------------------------------------------------------

    def _read_file(
        self, cursor: FileCursor, search: Callable[[str], Any], window: float
    ) -> _Result:
        result = _Result()
        now = self.clock()
        deadline = time.monotonic() + self.timeout * 0.8
        second = math.floor(now)
        path = cursor.path
        first_tick, cursor.started = not cursor.started, True

        def arrived(lines: int, hits: int) -> None:
            result.read += lines
            if hits:
                cursor.ring.add(second, hits)

        for old in list(cursor.rotated):
            self._drain(old, search, arrived, result, deadline)
            if now >= old.until:
                with contextlib.suppress(OSError):
                    os.close(old.fd)
                cursor.rotated.remove(old)
        current = cursor.current
        if current is not None:
            self._drain(current, search, arrived, result, deadline)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                result.notes.append(f"{path} is gone (rotated?), reading the old file")
                return result
            except OSError as exc:
                result.notes.append(f"cannot stat {path}: {exc.strerror}")
                return result
            if (st.st_dev, st.st_ino) == current.ident:
                return result
            # Rotated by rename: the old file is read to its end, and for a while longer.
            current.until = now + ROTATE_WAIT
            cursor.rotated.append(current)
            cursor.current = None
            result.notes.append("file rotated")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if cursor.rotated:
                result.notes.append(f"{path} is gone (rotated?), reading the old file")
                return result
            result.error = "no such file"
            return result
        except OSError as exc:
            result.error = f"cannot open: {exc.strerror}"
            return result
        st = os.fstat(fd)
        opened = _Open(fd, (st.st_dev, st.st_ino))
        cursor.current = opened
        if first_tick and st.st_size > 0:
            self._backlog(cursor, opened, st, search, window, result, now)
        # else a file that appeared since the first tick: all of it is new.
        self._drain(opened, search, arrived, result, deadline)
        return result

    def _backlog(
        self, cursor: FileCursor, opened: _Open, st: os.stat_result,
        search: Callable[[str], Any], window: float, result: _Result, now: float,
    ) -> None:
        """The first tick: the file's last lines, placed by their own Odoo timestamps."""
        start = max(0, st.st_size - BACKLOG_BYTES)
        data = os.pread(opened.fd, st.st_size - start, start)
        opened.head = os.pread(opened.fd, 128, 0)
        cut = data.rfind(b"\n") + 1
        opened.offset = start + cut
        opened.carry = b""
        if start > 0:  # from the first whole line
            data = data[data.find(b"\n") + 1:cut]
        else:
            data = data[:cut]
        if not data:
            return
        lines, hits = plain_lines(search, _decode(data[:-1]))
        result.read += lines
        local = _EpochCache(local=True)
        newest = None
        for line in reversed(data[-65536:].decode("utf-8", "replace").split("\n")):
            match = _ODOO_TS.match(line)
            if match:
                newest = local(match.group(0))
                break
        if newest is None or abs(st.st_mtime - newest) > TRUST_SKEW:
            if hits:
                result.notes.append(
                    f"{len(hits)} matching lines before the source started left out: "
                    "their timestamps do not agree with the file's mtime")
            return
        floor_now = math.floor(now)
        first = math.floor(now - window)
        for line in hits:
            match = _ODOO_TS.match(line)
            second = local(match.group(0)) if match else None
            if second is not None and second >= first:
                cursor.ring.add(min(second, floor_now))

    def _drain(
        self, f: _Open, search: Callable[[str], Any], arrived: Callable[[int, int], None],
        result: _Result, deadline: float,
    ) -> None:
        """Read `f` from its offset to its end; rewritten from the start when truncated."""
        st = os.fstat(f.fd)
        rewritten = st.st_size < f.offset
        if not rewritten and f.head:
            rewritten = os.pread(f.fd, len(f.head), 0) != f.head
        if rewritten:
            f.offset, f.carry, f.head = 0, b"", b""
            result.notes.append("file truncated, read from its start")
        if len(f.head) < 128:
            f.head = os.pread(f.fd, 128, 0)
        def scan(data: bytes) -> None:
            lines, hits = plain_lines(search, _decode(data))
            arrived(lines, len(hits))

        while True:
            if time.monotonic() > deadline:
                behind = os.fstat(f.fd).st_size - f.offset
                result.notes.append(f"{behind:,} bytes left for the next tick")
                return
            data = os.pread(f.fd, READ_CHUNK, f.offset)
            if not data:
                return
            f.offset += len(data)
            if f.carry:
                data = f.carry + data
                f.carry = b""
            cut = data.rfind(b"\n")
            if cut < 0:
                if len(data) > MAX_LINE:
                    scan(data)
                else:
                    f.carry = data
                continue
            f.carry = data[cut + 1:]
            scan(data[:cut])
            if len(f.carry) > MAX_LINE:
                scan(f.carry)
                f.carry = b""

    # -- docker ------------------------------------------------------------------------------

    def _client(self) -> Any:
        with self._docker_lock:
            if self._docker is None:
                import docker

                timeout = max(1, math.ceil(self.timeout))
                if self.docker_host:
                    self._docker = docker.DockerClient(
                        base_url=self.docker_host, version="auto", timeout=timeout)
                else:
                    self._docker = docker.from_env(version="auto", timeout=timeout)
            return self._docker

    def _read_docker(
        self, cursor: DockerCursor, search: Callable[[str], Any], window: float
    ) -> _Result:
        import docker.errors
        import requests

        result = _Result()
        host = self.docker_host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        try:
            self._read_container(cursor, search, window, result)
        except _Unavailable as exc:
            result.error = str(exc)
        except docker.errors.NotFound:
            result.error = "no such container"
        except docker.errors.APIError as exc:
            result.error = f"dockerd: {exc.explanation or exc}"
        except (requests.Timeout, TimeoutError):
            result.error = f"dockerd at {host} gave no answer in {self.timeout:g}s"
        except (requests.ConnectionError, docker.errors.DockerException, OSError) as exc:
            result.error = f"dockerd at {host} is unreachable ({_reason(exc)})"
        return result

    def _read_container(
        self, cursor: DockerCursor, search: Callable[[str], Any], window: float, result: _Result
    ) -> None:
        api = self._client().api
        info = api.inspect_container(cursor.container)
        cid = str(info["Id"])
        now = self.clock()
        floor_window = max(1, math.floor(now - window))
        if cursor.container_id != cid:
            if cursor.container_id is not None:
                result.notes.append(f"container re-created (now {cid[:12]})")
            cursor.reset(cid)
        read_us = int(time.time() * 1_000_000)  # docker stamps lines by the real clock
        window_us = floor_window * 1_000_000
        first = cursor.read_us == 0
        if cursor.last_ts is not None:
            # Before the cursor's line; and 100 ms before the previous read began, for a line
            # that was stamped before that read but reached the log after it. In whole
            # microseconds: the float's shortest repr is then exactly that decimal, which
            # dockerd reads as seconds.nanoseconds.
            since_us = min(_micros(cursor.last_ts), cursor.read_us - REREAD_US)
        elif not first:
            since_us = cursor.floor_us
        else:
            since_us = window_us
        since_us = max(since_us, window_us)
        if first:
            tail, tail_max = TAIL_FIRST, TAIL_FIRST_MAX
        else:
            elapsed = max(0.0, (read_us - cursor.read_us) / 1e6)
            expected = cursor.rate * (elapsed + REREAD_US / 1e6)
            tail, tail_max = TAIL_MIN + int(1.25 * expected), 0
        while True:
            data: bytes = api.logs(cid, stdout=True, stderr=True, timestamps=True,
                                   since=since_us / 1e6, tail=tail if tail else "all")
            entries = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
            complete = not tail or entries < tail
            if cursor.last_ts is None:
                if complete or (tail_max and tail >= tail_max):
                    if not complete:
                        result.notes.append(f"backlog limited to the last {tail:,} lines")
                    start = 0
                    break
            else:
                found = _after_marker(data, cursor.last_ts, cursor.at_last)
                if found is not None and (complete or cursor.at_last == 1
                                          or data[:TS_LEN] < cursor.last_ts):
                    start = found
                    break
                if complete:
                    # The cursor's line is gone (docker rotated the log away, or more than a
                    # window passed): everything stamped after it is new.
                    start = _first_after(data, cursor.last_ts)
                    break
            tail = _grow(data, tail, since_us)
            if tail_max:
                tail = min(tail, tail_max)
            elif tail >= TAIL_ALL:
                tail = 0
        new = data[start:]
        new_lines = new.count(b"\n") + (1 if new and not new.endswith(b"\n") else 0)
        if not first and read_us > cursor.read_us:
            cursor.rate = new_lines / ((read_us - cursor.read_us) / 1e6)
        else:
            cursor.rate = new_lines / max(window, 1.0)
        cursor.read_us = read_us
        if not new:
            if cursor.last_ts is None:
                cursor.floor_us = max(since_us, read_us - REREAD_US)
            return
        lines, hits = docker_lines(search, _decode(new))
        result.read += lines
        floor_now = math.floor(now)
        ring = cursor.ring
        for line in hits:
            second = _utc_second(line[:19])
            if second is not None and second >= floor_window:
                ring.add(min(second, floor_now))
        last_start = new.rfind(b"\n", 0, len(new) - 1) + 1
        stamp = new[last_start:last_start + TS_LEN]
        if not _DOCKER_TS.fullmatch(stamp):
            raise _Unavailable(f"dockerd answered a line without a timestamp: {stamp[:40]!r}")
        cursor.last_ts = stamp
        cursor.at_last = _count_at_line_start(data, stamp)


def _grow(data: bytes, tail: int, since_us: int) -> int:
    """The tail to ask for after a full answer of `tail` lines: as many as the answer's own
    density needs to reach back to `since`, and a quarter more; at least twice and at most
    sixteen times `tail`. (A short burst after a quiet spell makes that estimate overshoot, and
    dockerd decodes every line of the tail: hence the cap.)"""
    first = data[:TS_LEN]
    last = data[data.rfind(b"\n", 0, len(data) - 1) + 1:][:TS_LEN]
    grown = 2 * tail
    if _DOCKER_TS.fullmatch(first) and _DOCKER_TS.fullmatch(last):
        span = _micros(last) - _micros(first)
        if span > 0:
            grown = max(grown, int(1.25 * tail * (_micros(last) - since_us) / span))
    return min(grown, 16 * tail) + TAIL_MIN


def _micros(stamp: bytes) -> int:
    """Epoch microseconds (floored) of a docker timestamp."""
    second = _utc_second(stamp[:19].decode())
    if second is None:
        raise _Unavailable(f"dockerd answered a bad timestamp: {stamp!r}")
    return second * 1_000_000 + int(stamp[20:26])


def _line_starts(data: bytes, stamp: bytes) -> list[int]:
    """Offsets of the lines of docker output that begin with `stamp`."""
    needle = stamp + b" "
    out = []
    pos = data.find(needle)
    while pos >= 0:
        if pos == 0 or data[pos - 1] == 10:
            out.append(pos)
        pos = data.find(needle, pos + 1)
    return out


def _count_at_line_start(data: bytes, stamp: bytes) -> int:
    return len(_line_starts(data, stamp))


def _after_marker(data: bytes, stamp: bytes, nth: int) -> int | None:
    """The offset just after the `nth` line stamped `stamp`, or None when there is no such."""
    starts = _line_starts(data, stamp)
    if len(starts) < nth or nth < 1:
        return None
    end = data.find(b"\n", starts[nth - 1])
    return len(data) if end < 0 else end + 1


def _first_after(data: bytes, stamp: bytes) -> int:
    """The offset of the first line stamped later than `stamp` (fixed width: bytes compare)."""
    pos = 0
    while pos < len(data):
        if data[pos:pos + TS_LEN] > stamp:
            return pos
        end = data.find(b"\n", pos)
        if end < 0:
            break
        pos = end + 1
    return len(data)


def _reason(exc: BaseException) -> str:
    text = str(exc)
    for marker in ("Connection refused", "No such file or directory", "timed out",
                   "Permission denied"):
        if marker in text:
            return marker.lower()
    return text if len(text) <= 200 else text[:197] + "..."


@register("logs", LogsRule)
def _factory(config: DaemonConfig) -> LogsSource:
    return LogsSource()
