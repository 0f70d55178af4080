"""What the file-based routers (nginx, Traefik) share: a file they own and rewrite whole.

A change of split is one atomic replacement of the file, then (nginx) the commands that make
the proxy load it, then a read-back of the file; a failed apply puts the previous file back,
so the file on disk always matches a config the proxy accepted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from watchdog.routers.base import RouterError, Weights, check_writable, write_atomic

__all__ = ["OwnedFile"]

# After the new file is written: None when the proxy took it, else what went wrong.
Apply = Callable[[], Awaitable[str | None]]


class OwnedFile:
    """One file of one site's router: `what` names it in errors (`upstream file`)."""

    def __init__(self, path: Path, site_name: str, what: str) -> None:
        self.path = path
        self.site_name = site_name
        self.what = what
        self._lock = asyncio.Lock()

    def read_text(self) -> str:
        try:
            return self.path.read_text()
        except FileNotFoundError:
            raise RouterError(
                f"site {self.site_name!r}: {self.what} {self.path} does not exist "
                "(it is written on the first change of the split)"
            ) from None
        except OSError as exc:
            raise RouterError(f"cannot read {self.path}: {exc.strerror or exc}") from None

    def check_writable(self) -> None:
        check_writable(self.path)

    async def replace(
        self,
        data: bytes,
        wanted: Weights,
        read_back: Callable[[], Awaitable[Weights]],
        apply: Apply | None = None,
        cannot_express: bool = False,
    ) -> Weights:
        """Write `data`, `apply` it, read the split back; RouterError on any failure.

        One change at a time per file: the read-back must see this change, not the next.
        `cannot_express`: the file format may not hold every split (nginx's integer weights).
        """
        async with self._lock:
            previous = self._previous() if apply is not None else None
            mode = self._mode()
            # fsync can take a while on a busy disk: not on the event loop
            await asyncio.to_thread(self._write, data, mode)
            problem = await apply() if apply is not None else None
            if problem is not None:
                restored = await asyncio.to_thread(self._restore, previous, mode)
                raise RouterError(f"{problem}; {restored}")
            got = await read_back()
        if got != wanted:
            raise RouterError(
                f"{self.path}: wrote {wanted} but read back {got}; the file was changed "
                "by someone else meanwhile" + (", or cannot express this split"
                                               if cannot_express else "")
            )
        return got

    def _previous(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RouterError(f"cannot read {self.path}: {exc.strerror or exc}") from None

    def _mode(self) -> int:
        try:
            return self.path.stat().st_mode & 0o777
        except OSError:
            return 0o644

    def _write(self, data: bytes, mode: int) -> None:
        try:
            write_atomic(self.path, data, mode)
        except OSError as exc:
            raise RouterError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def _restore(self, previous: bytes | None, mode: int) -> str:
        """Put the previous file back; say what was done, for the error message."""
        try:
            if previous is None:
                self.path.unlink(missing_ok=True)
                return "the new file was removed (there was none before)"
            write_atomic(self.path, previous, mode)
        except OSError as exc:
            return f"AND restoring the previous file failed: {exc.strerror or exc}"
        return "previous file restored"
