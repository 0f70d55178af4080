"""`source: logs` from a colour's container, through the docker SDK, read from a cursor.

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

"""

from __future__ import annotations

import contextlib
import math
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from watchdog.sources.logcount import (
    TS_LEN,
    ReadResult,
    RecordChecks,
    Records,
    SecondRing,
    clean,
    decode,
    docker_clock,
    docker_hits,
    utc_second,
)

__all__ = ["DockerCursor", "DockerReader"]

TAIL_FIRST = 10_000  # docker: the first read's tail, grown while the answer is full
TAIL_MIN = 1_000  # docker: later reads ask for this many lines and 1.25 times the expected
TAIL_FIRST_MAX = 200_000  # the first read of a container never asks for more lines
TAIL_ALL = 4_000_000  # a larger tail asks for all lines instead
REREAD_US = 100_000  # docker: microseconds asked for before the cursor's line
STARTUP_WINDOW = 120  # seconds after a container's start in which its start-up lines are read
_DOCKER_TS = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z")


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
    checks: RecordChecks | None = field(default_factory=RecordChecks)  # None: every line
    started_at: str | None = None  # State.StartedAt whose start-up lines were read
    records: Records = field(default_factory=Records)  # a record (and its traceback) once

    def reset(self, container_id: str) -> None:
        self.container_id = container_id
        self.last_ts = None
        self.at_last = 0
        self.floor_us = self.read_us = 0
        self.rate = 0.0
        self.ring.clear()
        self.started_at = None
        self.records = Records()
        if self.checks is not None:
            self.checks = RecordChecks()

    def close(self) -> None:
        pass



class _Unavailable(Exception):
    """The container or dockerd cannot be read: the measurement's error text."""



class DockerReader:
    """Reads a DockerCursor's container from where the last tick stopped, through one client.

    `docker_host`: a docker base URL (`unix:///var/run/docker.sock`); None reads DOCKER_HOST
    like the docker CLI. `clock`: wall-clock seconds, which bound the window."""

    def __init__(self, docker_host: str | None, timeout: float,
                 clock: Callable[[], float]) -> None:
        self.docker_host = docker_host
        self.timeout = timeout
        self.clock = clock
        self._client: Any = None
        self._lock = threading.Lock()

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                import docker

                timeout = max(1, math.ceil(self.timeout))
                if self.docker_host:
                    self._client = docker.DockerClient(
                        base_url=self.docker_host, version="auto", timeout=timeout)
                else:
                    self._client = docker.from_env(version="auto", timeout=timeout)
            return self._client

    def read(
        self, cursor: DockerCursor, search: Callable[[str], Any], window: float
    ) -> ReadResult:
        import docker.errors
        import requests

        result = ReadResult()
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
        self, cursor: DockerCursor, search: Callable[[str], Any], window: float, result: ReadResult
    ) -> None:
        api = self.client().api
        info = api.inspect_container(cursor.container)
        cid = str(info["Id"])
        now = self.clock()
        floor_window = max(1, math.floor(now - window))
        if cursor.container_id != cid:
            if cursor.container_id is not None:
                result.notes.append(f"container re-created (now {cid[:12]})")
            cursor.reset(cid)
        started = str(info.get("State", {}).get("StartedAt") or "")
        if cursor.checks is not None and started and started != cursor.started_at:
            self._startup(api, cid, started, cursor.checks)
            cursor.started_at = started
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
        lines, counted = docker_hits(search, decode(new), cursor.checks, cursor.records)
        result.read += len(lines)
        floor_now = math.floor(now)
        ring = cursor.ring
        for i in counted:
            second = utc_second(lines[i][:19])
            if second is not None and second >= floor_window:
                ring.add(min(second, floor_now))
        last_start = new.rfind(b"\n", 0, len(new) - 1) + 1
        stamp = new[last_start:last_start + TS_LEN]
        if not _DOCKER_TS.fullmatch(stamp):
            raise _Unavailable(f"dockerd answered a line without a timestamp: {stamp[:40]!r}")
        cursor.last_ts = stamp
        cursor.at_last = _count_at_line_start(data, stamp)


    def _startup(self, api: Any, cid: str, started: str, checks: RecordChecks) -> None:
        """Teach `checks` the pids of the start-up lines of the container's latest start
        (its first `STARTUP_WINDOW` seconds), which a first read of the last window misses
        when the container has run for longer."""
        second = utc_second(started[:19])
        if second is None or started.startswith("0001-"):
            return
        data: bytes = api.logs(cid, stdout=True, stderr=True, timestamps=True,
                               since=second, until=second + STARTUP_WINDOW)
        text = clean(decode(data))
        lines = text.split("\n")
        checks.learn(text, [line[TS_LEN + 1:] for line in lines], docker_clock(lines))

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()


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
    second = utc_second(stamp[:19].decode())
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

