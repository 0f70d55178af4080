"""Run one argv command for a step: never a shell, its output kept, stopped cleanly.

The command runs in a process group of its own. When its time is over, or the step is
cancelled (`abort`), the group gets SIGTERM, then SIGKILL after `grace` seconds: Odoo's
`--stop-after-init` and pg_dump both stop on SIGTERM, and nothing outlives the step. If the
daemon itself dies (`kill -9`), the kernel sends the command SIGTERM (PR_SET_PDEATHSIG), so
no orphan keeps writing into a database the next start cleans up.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import signal
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

TAIL = 20  # lines of output kept for the audit log and `status`


@dataclass(frozen=True)
class Finished:
    argv: tuple[str, ...]
    exit_code: int | None  # None: killed after its timeout
    tail: tuple[str, ...]
    timed_out: bool = False


class CommandError(Exception):
    """The program cannot be started (not found, not executable)."""


async def run(argv: Sequence[str], *, timeout: float | None = None,
              env: Mapping[str, str] | None = None, cwd: Path | None = None,
              on_line: Callable[[str], None] | None = None, grace: float = 10.0,
              tail: int = TAIL) -> Finished:
    """Run `argv` to its end (or its `timeout`); stdout and stderr together, line by line.

    Cancelling the awaiting task stops the command (SIGTERM, then SIGKILL) and re-raises."""
    if not argv:
        raise CommandError("an empty command")
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=dict(env) if env is not None else None,
            cwd=cwd, start_new_session=True, limit=1024 * 1024, preexec_fn=die_with_parent)
    except OSError as exc:
        raise CommandError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    lines: deque[str] = deque(maxlen=tail)

    async def read() -> None:
        assert proc.stdout is not None
        while True:
            try:
                raw = await proc.stdout.readline()
            except ValueError:  # a line longer than `limit`: keep its start
                raw = await proc.stdout.read(64 * 1024)
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            lines.append(line)
            if on_line is not None:
                on_line(line)

    reader = asyncio.ensure_future(read())
    try:
        await asyncio.wait_for(asyncio.shield(reader), timeout)
        code = await proc.wait()
        return Finished(tuple(argv), code, tuple(lines))
    except TimeoutError:
        await stop(proc, grace)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader, 2)
        return Finished(tuple(argv), None, tuple(lines), timed_out=True)
    except asyncio.CancelledError:
        await asyncio.shield(stop(proc, grace))
        raise
    finally:
        if not reader.done():
            reader.cancel()


async def stop(proc: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM to the command's process group, SIGKILL if it is still there after `grace`."""
    if proc.returncode is not None:
        return
    _signal(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        _signal(proc.pid, signal.SIGKILL)
        await proc.wait()


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the process that started it dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


PR_SET_PDEATHSIG = 1


def has_error_line(lines: Sequence[str]) -> str | None:
    """The first Odoo log line at level ERROR or CRITICAL (ANSI colours stripped), if any.

    Odoo's format: `2024-01-01 10:00:00,123 4321 ERROR dbname odoo.modules...: text`."""
    for line in lines:
        clean = _ANSI.sub("", line)
        parts = clean.split(None, 4)
        if len(parts) >= 4 and parts[3] in ("ERROR", "CRITICAL"):
            return clean
    return None


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def strip_colours(line: str) -> str:
    """The line without the ANSI colours Odoo adds on a terminal."""
    return _ANSI.sub("", line)
