"""The stand-in's log: Odoo-format lines to a file (reopened when moved away) and/or stdout.

`dbname` is what Odoo's formatter reads from the current thread (odoo/netsvc.py): `?` where no
request set it (start-up, shutdown), the database a request or an RPC call opened (Registry(db)
sets it, even for a database that does not exist), and `None` where `dispatch_rpc` reset it
before a `common` / `db` call that opens no database (`version()`, `db.list`). The stand-in keeps
it per request in CURRENT_DB, which the middleware and the RPC services set as Odoo would.
"""

from __future__ import annotations

import contextvars
import logging
import logging.handlers
import os
import sys
import threading
import time
from pathlib import Path
from typing import IO

#: The dbname of the request being served (Odoo keeps it on the thread); `?` outside requests.
CURRENT_DB: contextvars.ContextVar[str] = contextvars.ContextVar("odoo_dbname", default="?")


class OdooLog:
    """Writes `%(asctime)s %(pid)s %(levelname)s %(dbname)s %(name)s: %(message)s %(perf_info)s`.

    Like Odoo (16+), every line ends with `" " + perf_info`: the werkzeug access lines carry
    "query_count query_time remaining_time", all others an empty perf_info (a trailing space).
    The file is reopened when it is moved away (Odoo uses a WatchedFileHandler). Each record is
    written and flushed at once.

    With `syslog` (Odoo's `--syslog`, the socket Odoo knows as /dev/log), records go there
    instead of the file and stdout, as odoo/netsvc.py `init_logger` does: through
    `logging.handlers.SysLogHandler` (so `<PRI>` from the level, facility user, a final NUL),
    one datagram per record, formatted `<release>:%(dbname)s:%(levelname)s:%(name)s:%(message)s`
    where `release` is `Odoo Server <version>`, with the traceback after a newline and no
    perf_info.
    """

    def __init__(self, path: Path | None, to_stdout: bool, *, syslog: Path | None = None,
                 release: str = "Odoo Server 17.0") -> None:
        self.path = path
        self.to_stdout = to_stdout
        self.syslog = syslog
        self.release = release
        self._lock = threading.Lock()
        self._stream: IO[str] | None = None
        self._ident: tuple[int, int] | None = None
        self._handler: logging.handlers.SysLogHandler | None = None
        if syslog is not None:
            self._handler = logging.handlers.SysLogHandler(str(syslog))
            self._handler.setFormatter(logging.Formatter("%(message)s"))

    def write(
        self,
        level: str,
        name: str,
        message: str,
        *,
        dbname: str | None = None,
        perf_info: str = "",
        exc_text: str | None = None,
    ) -> None:
        if dbname is None:
            dbname = CURRENT_DB.get()
        if self._handler is not None:
            self._send(level, f"{self.release}:{dbname}:{level}:{name}:{message}", exc_text)
            return
        now = time.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        msecs = int(now % 1 * 1000)
        text = f"{stamp},{msecs:03d} {os.getpid()} {level} {dbname} {name}: {message} {perf_info}"
        if exc_text:
            text += "\n" + exc_text.rstrip("\n")
        self._emit(text + "\n")

    def _open(self) -> IO[str]:
        assert self.path is not None
        if self._stream is not None:
            try:
                st = os.stat(self.path)
                if (st.st_dev, st.st_ino) == self._ident:
                    return self._stream
            except FileNotFoundError:
                pass
            self._stream.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._stream = open(self.path, "a", encoding="utf-8")
        st = os.fstat(self._stream.fileno())
        self._ident = (st.st_dev, st.st_ino)
        return self._stream

    def _emit(self, text: str) -> None:
        with self._lock:
            if self.path is not None:
                stream = self._open()
                stream.write(text)
                stream.flush()
            if self.to_stdout:
                sys.stdout.write(text)
                sys.stdout.flush()

    def _send(self, level: str, text: str, exc_text: str | None) -> None:
        """One datagram, as Odoo's SysLogHandler sends it (its format appends the traceback
        after a newline, logging.Formatter.format)."""
        assert self._handler is not None
        if exc_text:
            text += "\n" + exc_text.rstrip("\n")
        record = logging.makeLogRecord({"msg": text, "levelname": level,
                                        "levelno": logging.getLevelName(level)})
        self._handler.handle(record)

    def close(self) -> None:
        with self._lock:
            if self._stream is not None:
                self._stream.close()
                self._stream = None
            if self._handler is not None:
                self._handler.close()
