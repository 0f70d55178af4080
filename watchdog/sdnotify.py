"""systemd's notify protocol without libsystemd: datagrams to `$NOTIFY_SOCKET`.

READY=1 once the first reconcile is done, RELOADING=1/READY=1 around a reload, STOPPING=1 on
the way out, STATUS= one line per site, and WATCHDOG=1 every `WATCHDOG_USEC / 2` from the
event loop itself: if the loop hangs, the pings stop and systemd restarts the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable


class SdNotify:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET") or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        applies = not pid or (pid.isdigit() and int(pid) == os.getpid())
        self.watchdog_interval = (int(usec) / 1_000_000 / 2
                                  if usec.isdigit() and int(usec) > 0 and applies else None)
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """One datagram; False (never an exception) when there is no socket or it fails."""
        if self.address is None:
            return False
        target = self.address
        if target.startswith("@"):
            target = "\0" + target[1:]  # an abstract socket name
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.sendto("\n".join(lines).encode(), target)
            return True
        except OSError:
            return False

    def ready(self, status: str = "") -> None:
        self.send("READY=1", *( [f"STATUS={status}"] if status else []))

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd (253+) tell this reload from an earlier one.
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def start_watchdog(self, status: Callable[[], str] | None = None) -> None:
        if self.watchdog_interval is None or self._task is not None:
            return
        self._task = asyncio.create_task(self._pings(self.watchdog_interval, status))

    async def _pings(self, interval: float, status: Callable[[], str] | None) -> None:
        while True:
            lines = ["WATCHDOG=1"]
            if status is not None:
                lines.append(f"STATUS={status()}")
            self.send(*lines)
            await asyncio.sleep(interval)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
