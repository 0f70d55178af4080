"""`source: logs` from a colour's `syslog` socket: Odoo's `--syslog` records, one datagram each.

Odoo started with `--syslog` logs through `logging.handlers.SysLogHandler('/dev/log')` instead
of its file or stderr (odoo/netsvc.py `init_logger`): each record is ONE datagram,
`<PRI>Odoo Server 17.0:dbname:LEVEL:logger:message` with its traceback after a newline and a
final NUL. PRI is facility * 8 + severity, the severity mapped from the record's level by the
handler (CRITICAL 2 crit, ERROR 3 err, WARNING 4, INFO 6, DEBUG 7; facility user, 1). Nothing in
a message can make a second record or change the severity: a login with a newline and an
Odoo header stays text inside its INFO record.

The daemon binds the socket (`SyslogReceiver.bind`, on the first measurement of a colour): the
socket file gets mode 0660, a stale one from an earlier run is replaced, one that another live
process listens on is an error, and it is removed on close (only if it is still this one's).
Records arrive on the event loop and go to a bounded ring: only those at err or worse (the only
ones a rule counts), for the largest window measured (at least KEEP, 5 minutes), at most
MAX_RECORDS and MAX_BYTES.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import stat
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from watchdog.sources.logcount import clean

__all__ = ["ERR", "KEEP", "MAX_BYTES", "MAX_RECORDS", "SEVERITIES", "SyslogError", "SyslogReceiver",
           "parse"]

#: The lowest (least severe) syslog severity a record needs to count: err.
ERR = 3
SEVERITIES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
MAX_RECORDS = 10_000
#: Seconds of records kept before a larger window is measured (a logs rule's default window).
KEEP = 300.0
MAX_BYTES = 16 * 1024 * 1024
SOCKET_MODE = 0o660

_PRI = re.compile(rb"<(\d{1,3})>")


class SyslogError(RuntimeError):
    """The socket cannot be bound; the message says where and why."""


def parse(data: bytes) -> tuple[int, str] | None:
    """(severity, text) of one datagram, or None when it starts with no `<PRI>` (0 to 191).

    The text is the rest of the datagram, decoded as UTF-8 (bad bytes replaced), without the
    NUL SysLogHandler ends it with: `Odoo Server 17.0:db:ERROR:odoo.http:...`, newlines kept,
    ANSI escape sequences taken out (`logcount.clean`). Odoo's SysLogHandler is not a
    StreamHandler, so Odoo never colours its level there; werkzeug may colour its request
    lines, and a pattern sees them plain as on the other transports.
    """
    match = _PRI.match(data)
    if match is None:
        return None
    pri = int(match.group(1))
    if pri > 191 or (len(match.group(1)) > 1 and match.group(1).startswith(b"0")):
        return None
    body = data[match.end():]
    if body.endswith(b"\0"):
        body = body[:-1]
    return pri & 7, clean(body.decode("utf-8", "replace"))


@dataclass(frozen=True, slots=True)
class Record:
    received: float
    severity: int
    text: str


class SyslogReceiver(asyncio.DatagramProtocol):
    """One colour's socket and the err-or-worse records it received."""

    def __init__(self, path: Path, clock: Callable[[], float]) -> None:
        self.path = path
        self.clock = clock
        self.window = KEEP  # the largest window measured on it, at least KEEP
        self.records: deque[Record] = deque()
        self.bytes = 0
        self.received = 0
        self.malformed = 0
        self.dropped = 0  # err-or-worse records pushed out by MAX_RECORDS / MAX_BYTES
        self._transport: asyncio.BaseTransport | None = None
        self._ident: tuple[int, int] | None = None

    # -- binding ---------------------------------------------------------------------------

    async def bind(self) -> None:
        """Bind the socket and read it on the running loop; SyslogError if it cannot be."""
        sock = self._socket()
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(lambda: self, sock=sock)
        except BaseException:
            sock.close()
            self._unlink()
            raise
        self._transport = transport

    def _socket(self) -> socket.socket:
        path = self.path
        where = f"syslog {path}"
        if not path.parent.is_dir():
            raise SyslogError(f"{where}: folder {path.parent} does not exist")
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise SyslogError(f"{where} exists and is not a socket: not replacing it")
            if _listening(path):
                raise SyslogError(f"{where}: a live socket, something is bound to it "
                                  "(another odoo-watchdog?)")
            os.unlink(path)  # a stale socket file from an earlier run
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(str(path))
            os.chmod(path, SOCKET_MODE)
            st = os.lstat(path)
            self._ident = (st.st_dev, st.st_ino)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise SyslogError(f"{where}: cannot bind: {exc.strerror or exc}") from None
        return sock

    @property
    def bound(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self._unlink()

    def _unlink(self) -> None:
        """Remove the socket file if it is still the one this receiver bound."""
        if self._ident is None:
            return
        with contextlib.suppress(OSError):
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._ident:
                os.unlink(self.path)
        self._ident = None

    # -- asyncio.DatagramProtocol ------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received += 1
        parsed = parse(data)
        if parsed is None:
            self.malformed += 1
            return
        severity, text = parsed
        if severity > ERR:
            return
        now = self.clock()
        self.records.append(Record(now, severity, text))
        self.bytes += len(text)
        self._trim(now)

    def error_received(self, exc: Exception) -> None:  # nothing to answer on a datagram socket
        pass

    # -- counting -----------------------------------------------------------------------------

    def _trim(self, now: float) -> None:
        records = self.records
        horizon = now - self.window - 1.0
        while records and (records[0].received < horizon or len(records) > MAX_RECORDS
                           or self.bytes > MAX_BYTES):
            old = records.popleft()
            self.bytes -= len(old.text)
            if old.received >= horizon:
                self.dropped += 1

    def count(self, window: float, search: Callable[[str], Any] | None) -> int:
        """Err-or-worse records received from `now - window` on (exact, not per second) that
        `search` finds a match in (all of them when `search` is None)."""
        self.window = max(self.window, window)
        now = self.clock()
        self._trim(now)
        first = now - window
        return sum(1 for r in reversed(self.records)
                   if r.received >= first and (search is None or search(r.text)))


def _listening(path: Path) -> bool:
    """Whether some process is bound to the datagram socket at `path` now."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(str(path))
    except OSError:
        return False  # ECONNREFUSED: nobody is bound; the file is stale
    finally:
        probe.close()
    return True
