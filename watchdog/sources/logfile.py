"""`source: logs` from a colour's `log_file`: kept open between ticks, read from a cursor.

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
    matching records placed by Odoo's `YYYY-MM-DD HH:MM:SS` prefix, read as local time, provided
    the newest such stamp agrees with the file's mtime within two minutes; otherwise the
    backlog is left out (said in the detail). Counts are exact for every line written after the
    source first opened the file.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watchdog.sources.logcount import (
    EpochCache,
    ReadResult,
    RecordChecks,
    Records,
    SecondRing,
    decode,
    plain_hits,
)

__all__ = ["BACKLOG_BYTES", "ROTATE_WAIT", "FileCursor", "FileReader"]

BACKLOG_BYTES = 16 << 20  # what the first tick of a file reads, at most
READ_CHUNK = 4 << 20
MAX_LINE = 1 << 20  # a longer line without newline is scanned as it is
ROTATE_WAIT = 30.0  # seconds a rotated-away file is still read
TRUST_SKEW = 120.0  # file backlog: newest Odoo stamp vs the file's mtime
_ODOO_TS = re.compile(r"(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)")


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
    checks: RecordChecks | None = field(default_factory=RecordChecks)  # None: every line
    records: Records = field(default_factory=Records)  # a record (and its traceback) once

    def close(self) -> None:
        for f in [*self.rotated, *([self.current] if self.current else [])]:
            with contextlib.suppress(OSError):
                os.close(f.fd)
        self.rotated = []
        self.current = None



class FileReader:
    """Reads a FileCursor's file from where the last tick stopped. `clock`: wall-clock
    seconds, which place the lines read; `timeout`: a tick stops reading after 80% of it."""

    def __init__(self, clock: Callable[[], float], timeout: float) -> None:
        self.clock = clock
        self.timeout = timeout

    def read(
        self, cursor: FileCursor, search: Callable[[str], Any], window: float
    ) -> ReadResult:
        result = ReadResult()
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
            self._drain(old, search, arrived, result, deadline, cursor)
            if now >= old.until:
                with contextlib.suppress(OSError):
                    os.close(old.fd)
                cursor.rotated.remove(old)
        current = cursor.current
        if current is not None:
            self._drain(current, search, arrived, result, deadline, cursor)
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
        self._drain(opened, search, arrived, result, deadline, cursor)
        return result

    def _backlog(
        self, cursor: FileCursor, opened: _Open, st: os.stat_result,
        search: Callable[[str], Any], window: float, result: ReadResult, now: float,
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
        text = decode(data[:-1])
        all_lines, found = plain_hits(search, text, cursor.checks, cursor.records)
        hits = [all_lines[i] for i in found]
        result.read += len(all_lines)
        local = EpochCache(local=True)
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
        result: ReadResult, deadline: float, cursor: FileCursor,
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
            lines, hits = plain_hits(search, decode(data), cursor.checks, cursor.records)
            arrived(len(lines), len(hits))

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

