"""What every prepare step shares: the result it ends with and how it reports progress."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# A progress line for the site's events ("backup: 412 MB written"), at most every few seconds.
Progress = Callable[[str], None]


def quiet(_: str) -> None:
    """A Progress that drops its lines (tests, the CLI's own runs)."""


class StepFailed(Exception):
    """A step that cannot go on; the message says what was found and what to do.

    `exit_code` and `output` (the last lines) when a command failed."""

    def __init__(self, message: str, *, exit_code: int | None = None,
                 output: tuple[str, ...] = (), data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.output = output
        self.data = data or {}


@dataclass(frozen=True)
class StepResult:
    """How one step ended, as the audit log and `status` show it."""

    step: str
    ok: bool
    detail: str
    started: float
    ended: float
    exit_code: int | None = None
    output: tuple[str, ...] = ()  # the last lines of a command's output
    data: dict[str, Any] = field(default_factory=dict)  # e.g. {"method": "template"}

    @property
    def duration(self) -> float:
        return max(0.0, self.ended - self.started)
