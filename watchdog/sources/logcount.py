"""Counting for `source: logs`: the per-second window, and scanning lines at C speed.

Both transports (files, docker) hand their new bytes here; only matching lines are seen by
Python code, and a window is a ring of per-second counts, never a list of lines.

Lines as Odoo writes them
    Odoo's format is `%(asctime)s %(pid)s %(levelname)s %(dbname)s %(name)s: %(message)s`
    (16+ add ` %(perf_info)s`, empty but for werkzeug's lines: a trailing space), odoo/netsvc.py
    `init_logger`. On a TTY (or with ODOO_PY_COLORS set, also into `--logfile`) its
    `ColoredFormatter` wraps the level name in `COLOR_PATTERN % (30 + fg, 40 + bg, levelname)`,
    `COLOR_PATTERN = "\033[1;%dm\033[1;%dm%s\033[0m"` with LEVEL_COLOR_MAPPING's (fg, bg):
    `\x1b[1;31m\x1b[1;49mERROR\x1b[0m`, `\x1b[1;37m\x1b[1;41mCRITICAL\x1b[0m`,
    `\x1b[1;33m\x1b[1;49mWARNING\x1b[0m`, `\x1b[1;32m\x1b[1;49mINFO\x1b[0m`; werkzeug and the
    perf filter colour parts of the message the same way, and a TTY ends each line with `\r\n`.
    `clean` takes the escape sequences (CSI) and those carriage returns out before anything is
    matched, so patterns, record checks and records see the plain line.
    A record with a traceback is its first line followed by `Traceback (most recent call
    last):` and the rest (logging.Formatter.format appends `exc_text` after a newline): lines
    without an Odoo header. `Records` makes a record count once, whichever of its lines match,
    and never a continuation line on its own.
"""

from __future__ import annotations

import calendar
import itertools
import math
import operator
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SKEW", "TS_LEN", "EpochCache", "ReadResult", "RecordChecks", "Records", "SecondRing",
           "clean", "decode", "docker_clock", "docker_hits", "docker_lines", "plain_hits",
           "plain_lines", "utc_second"]

# Docker's `timestamps=True` prefix: RFC3339NanoFixed in UTC, always 30 characters and a space.
TS_LEN = 30
_content = operator.itemgetter(slice(TS_LEN + 1, None))


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



def decode(data: bytes) -> str:
    return data.decode("utf-8", "replace")


# ANSI escape sequences (CSI: ESC [ parameters intermediates final), and the carriage return a
# TTY puts before each newline.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\r+(?=\n|\Z)")


def clean(text: str) -> str:
    """`text` without ANSI escape sequences and without the `\r` before each newline (a
    TTY's `\r\n`): what Odoo's ColoredFormatter writes, made plain. Plain text is returned
    as it is, at the cost of two scans for bytes it does not hold."""
    if "\x1b" not in text and "\r" not in text:
        return text
    return _ANSI.sub("", text)


def plain_lines(search: Callable[[str], Any], text: str) -> tuple[int, list[str]]:
    """(lines read, matching lines) of complete lines `text` (no final newline), each line
    on its own (no records)."""
    lines = clean(text).split("\n")
    return len(lines), list(filter(search, lines))


def plain_hits(
    search: Callable[[str], Any], text: str, checks: RecordChecks | None,
    records: Records | None = None,
) -> tuple[list[str], list[int]]:
    """(lines, indices of the lines that count) of complete lines `text`, made plain
    (`clean`). With `records`, a record counts once (the index of its first line, or of the
    first matching line of a record begun in an earlier read)."""
    text = clean(text)
    lines = text.split("\n")
    hits = list(itertools.compress(range(len(lines)), map(search, lines)))
    if checks is not None:
        hits = checks.select(text, lines, hits, records=records)
    elif records is not None:
        hits = records.pick(lines, hits, set())
    return lines, hits


def docker_hits(
    search: Callable[[str], Any], text: str, checks: RecordChecks | None,
    records: Records | None = None,
) -> tuple[list[str], list[int]]:
    """Like plain_hits for docker's `timestamp line` output (final newline allowed): the
    pattern, the checks and the records see each line without its timestamp."""
    text = clean(text)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    contents = list(map(_content, lines))
    hits = list(itertools.compress(range(len(lines)), map(search, contents)))
    if checks is not None:
        hits = checks.select(text, contents, hits, docker_clock(lines), records=records)
    elif records is not None:
        hits = records.pick(contents, hits, set())
    return lines, hits


def docker_clock(lines: Sequence[str]) -> Callable[[int], float]:
    """Docker's stamp of line i of `lines` (`timestamp line`), in epoch seconds; NaN when the
    line has none."""
    def docker_time(i: int) -> float:
        line = lines[i]
        second = utc_second(line[:19])
        return math.nan if second is None else second + int(line[20:26]) / 1e6

    return docker_time


def docker_lines(search: Callable[[str], Any], text: str) -> tuple[int, list[str]]:
    """Like plain_lines for docker's `timestamp line` output (final newline allowed); the
    pattern sees each line without its timestamp, the matches keep theirs."""
    lines = clean(text).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    hits = itertools.compress(lines, map(search, map(_content, lines)))
    return len(lines), list(hits)


class EpochCache:
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


utc_second = EpochCache(local=False)


@dataclass
class ReadResult:
    """What one read of a file or container found, besides the counts in its ring."""

    read: int = 0
    notes: list[str] = field(default_factory=list)
    error: str | None = None


# ---------------------------------------------------------------------------------------------
# Records: a line with an Odoo header and the lines after it that have none (its traceback)
# ---------------------------------------------------------------------------------------------

_RECORD_START = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \d+ [A-Z]+ ")

NO_RECORD, OPEN, DONE = 0, 1, 2


class Records:
    """Which record each matching line belongs to, so that a record counts once.

    A record starts at a line with an Odoo header (`YYYY-MM-DD HH:MM:SS,mmm PID LEVEL `, the
    line made plain) and goes on over the lines without one: the traceback Odoo logs after the
    record's message, or a message with newlines. A record counts once, as its first line,
    when its first line or any line of it matches; a line without a header never counts on
    its own. One `Records` per cursor: a record may go on in the next read (`state`: no
    record seen yet, the last record not decided yet, or decided: counted or left out). Lines
    without a header before the first record a cursor reads belong to a record begun before
    what it read (outside the window, or before the file's first bytes read) and count
    nothing.
    """

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = NO_RECORD

    def pick(self, lines: Sequence[str], hits: Sequence[int], inside: set[int]) -> list[int]:
        """From `hits` (matching lines of `lines`, in order), one index per record: its first
        line, or for the record open at the last read (its first line read then) the first
        matching line. A matching line in `inside` (a failed-login record's text, see
        RecordChecks) is left out before, so it never makes the login's record count."""
        start = _RECORD_START.match
        out: list[int] = []
        last_rep = -2  # the record (index of its first line, -1: open at the last read) taken
        scanned = -1  # lines[scanned + 1 : i] were seen to have no header, for record `owner`
        owner = -1
        open_state = self.state
        for i in hits:
            if i in inside:
                continue
            if start(lines[i]):
                rec = i
            else:
                k = i - 1
                low = max(scanned, -1)
                while k > low and not start(lines[k]):
                    k -= 1
                rec = k if k > low else owner
                scanned, owner = i, rec
            if rec == last_rep:
                continue
            if rec < 0:
                if open_state != OPEN:
                    continue
                open_state = DONE
                out.append(i)
            else:
                out.append(rec)
            last_rep = rec
        # The record still open after these lines: the last one that starts here, if any.
        k = len(lines) - 1
        while k >= 0 and not start(lines[k]):
            k -= 1
        if k >= 0:
            self.state = DONE if last_rep == k else OPEN
        else:
            self.state = open_state
        return out


# ---------------------------------------------------------------------------------------------
# Record checks: a line that looks like an Odoo record but was written inside another record
# ---------------------------------------------------------------------------------------------

SKEW = 2.0  # seconds: how far a record's own stamp may be from its reference (see RecordChecks)
MAX_SPAN = 1000  # lines a failed-login record may run over before it is taken as ended
TZ_STEP = 900  # every UTC offset is a whole number of quarter hours

_HEADER = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) (\d+) [A-Z]+ ")
_LOGIN_MARK = "odoo.addons.base.models.res_users: Login failed for db:"
_LOGIN_START = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \d+ INFO \S+ "
    r"odoo\.addons\.base\.models\.res_users: Login failed for db:\S* login:")
_LOGIN_END = re.compile(r" from \S+ ?$")
_STARTUP_MARKS = ("odoo: Odoo version ", "odoo.service.server: ")  # long needles: fast scans
_STARTUP = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (\d+) INFO \S+ (?:odoo: Odoo version "
    r"|odoo\.service\.server: (?:HTTP service \(werkzeug\) running on "
    r"|Evented Service \(\w+\) running on |Worker \w+ \(\d+\) alive))")


def _odoo_time(match: re.Match[str]) -> float | None:
    second = utc_second(match.group(1))
    return None if second is None else second + int(match.group(2)) / 1000


class RecordChecks:
    """Which matching lines are records Odoo wrote, on a line-based transport.

    Odoo writes a failed login as `Login failed for db:%s login:%s from %s` with the login
    raw, so a login holding a newline and an Odoo header writes a line that looks like a
    record of its own. One `RecordChecks` per cursor (its state runs from read to read):

    1. A failed-login record (logger `odoo.addons.base.models.res_users`) whose first line does
       not end with ` from <address>` goes on over the next lines up to the one that does
       (Odoo writes that address last), at most `MAX_SPAN` lines: none of those lines starts
       a record, counts, or teaches a pid.
    2. Once a start-up line (`odoo: Odoo version`, `HTTP service (werkzeug) running on`,
       `Evented Service (...) running on`, `Worker WorkerHTTP (pid) alive`) has given this Odoo's
       pids, a record counts only if it carries one of them.
    3. A record's own stamp must be within `SKEW` seconds of a time the writer cannot set:
       docker's stamp of the line (modulo a whole number of quarter hours: Odoo writes local
       time), or, in a file, no more than `SKEW` before the last record that passed.

    A line without an Odoo header that the pattern matches (a custom pattern) is held to
    check 1 only.
    """

    __slots__ = ("dropped", "in_login", "last_ts", "pids", "tz_offset")

    def __init__(self) -> None:
        self.pids: set[int] = set()
        self.tz_offset: int | None = None  # docker: its stamp minus Odoo's, from start-up lines
        self.in_login = 0  # lines so far of a failed-login record still open at the last read
        self.last_ts: float | None = None  # files: the last record that passed, Odoo time
        self.dropped = {"login": 0, "pid": 0, "time": 0}

    def learn(self, text: str, lines: Sequence[str],
              docker_time: Callable[[int], float] | None = None) -> None:
        """Pids (and docker's offset) from the start-up lines of `lines`, which are read
        out of turn: the failed-login record open at the last read is left as it was."""
        open_login = self.in_login
        self.in_login = 0
        inside = self._spans(text, lines)
        self._learn(text, lines, inside, docker_time)
        self.in_login = open_login

    def select(
        self, text: str, lines: Sequence[str], hits: Sequence[int],
        docker_time: Callable[[int], float] | None = None, records: Records | None = None,
    ) -> list[int]:
        """The indices among `hits` (matching lines of `lines`, the lines of `text`) that
        count. `docker_time(i)`: docker's stamp of line i in epoch seconds (containers).
        With `records`, the hits are first taken one per record (`Records.pick`), and the
        checks judge each record by its first line."""
        inside = self._spans(text, lines)
        if records is not None:
            self.dropped["login"] += sum(1 for i in hits if i in inside)
            hits = records.pick(lines, hits, inside)
        known = set(self.pids)
        learned = self._learn(text, lines, inside, docker_time)  # (index, pid), in order
        step = 0
        out: list[int] = []
        for i in hits:
            while step < len(learned) and learned[step][0] < i:
                known.add(learned[step][1])
                step += 1
            if i in inside:
                self.dropped["login"] += 1
                continue
            match = _HEADER.match(lines[i])
            if match is None:
                out.append(i)
                continue
            if known and int(match.group(3)) not in known:
                self.dropped["pid"] += 1
                continue
            stamp = _odoo_time(match)
            if stamp is None:
                self.dropped["time"] += 1
                continue
            if docker_time is not None:
                if self.tz_offset is not None:
                    off = abs(docker_time(i) - stamp - self.tz_offset)
                else:  # any whole number of quarter hours
                    off = (docker_time(i) - stamp) % TZ_STEP
                    off = min(off, TZ_STEP - off)
                if not off <= SKEW:
                    self.dropped["time"] += 1
                    continue
            else:
                before = self._before(lines, i, inside)
                if before is not None and stamp < before - SKEW:
                    self.dropped["time"] += 1
                    continue
            out.append(i)
        if docker_time is None:
            last = self._before(lines, len(lines), inside)
            if last is not None:
                self.last_ts = last
        return out

    def take_notes(self) -> list[str]:
        """What was left out since the last call, for the measurement's detail."""
        d = self.dropped
        parts = []
        if d["login"]:
            parts.append(f"{d['login']} inside a failed-login record")
        if d["pid"]:
            parts.append(f"{d['pid']} with a pid this Odoo does not use")
        if d["time"]:
            parts.append(f"{d['time']} stamped over {SKEW:g}s from "
                         "their arrival or the record before")
        self.dropped = {"login": 0, "pid": 0, "time": 0}
        if not parts:
            return []
        return ["matching lines not counted (not records Odoo wrote): " + ", ".join(parts)]

    # -- internals -----------------------------------------------------------------------------

    def _spans(self, text: str, lines: Sequence[str]) -> set[int]:
        """Indices of the lines that are the rest of a failed-login record."""
        inside: set[int] = set()
        n = len(lines)
        k = 0
        if self.in_login:
            k = self._walk(lines, 0, self.in_login, inside)
        if _LOGIN_MARK not in text:
            return inside
        for j in itertools.compress(range(k, n), map(_LOGIN_START.match, lines[k:])):
            if j < k or j in inside or _LOGIN_END.search(lines[j]):
                continue
            k = self._walk(lines, j + 1, 1, inside)
        return inside

    def _walk(self, lines: Sequence[str], start: int, run: int, inside: set[int]) -> int:
        """Mark lines from `start` as inside a failed-login record (`run` lines so far) up to
        its end; the index after the record, with `in_login` set when it is still open."""
        k = start
        n = len(lines)
        while k < n:
            inside.add(k)
            run += 1
            ended = _LOGIN_END.search(lines[k]) is not None or run > MAX_SPAN
            k += 1
            if ended:
                self.in_login = 0
                return k
        self.in_login = run
        return k

    def _learn(
        self, text: str, lines: Sequence[str], inside: set[int],
        docker_time: Callable[[int], float] | None,
    ) -> list[tuple[int, int]]:
        """(index, pid) of the start-up lines that taught a new pid."""
        if not any(mark in text for mark in _STARTUP_MARKS):
            return []
        learned = []
        for i in itertools.compress(range(len(lines)), map(_STARTUP.match, lines)):
            if i in inside:
                continue
            match = _STARTUP.match(lines[i])
            assert match is not None
            pid = int(match.group(1))
            if pid not in self.pids:
                learned.append((i, pid))
            stamp = utc_second(lines[i][:19])
            if docker_time is not None and stamp is not None:
                lag = docker_time(i) - stamp
                if lag == lag:
                    self.tz_offset = round(lag / TZ_STEP) * TZ_STEP
        self.pids.update(pid for _, pid in learned)
        return learned

    def _before(self, lines: Sequence[str], i: int, inside: set[int]) -> float | None:
        """Odoo time of the last record before line i that is not inside a failed-login
        record and carries a known pid (or any pid while none is known)."""
        pids = self.pids
        k = i - 1
        while k >= max(0, i - MAX_SPAN):
            if k not in inside:
                match = _HEADER.match(lines[k])
                if match is not None and (not pids or int(match.group(3)) in pids):
                    return _odoo_time(match)
            k -= 1
        return self.last_ts if k < 0 else None
