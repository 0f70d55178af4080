"""Durations as operators write them in config and rule files: `500ms`, `30s`, `5m`, `2h`, `1d`.

Compound forms like Prometheus' `1h30m` are accepted too. A bare number is refused: `for: 60`
could mean seconds or minutes, and guessing wrong delays a rollback.
"""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")


class DurationError(ValueError):
    pass


def parse_duration(text: object) -> float:
    """Seconds in `text`, or DurationError saying what is accepted."""
    if isinstance(text, bool) or not isinstance(text, str):
        raise DurationError(
            f"invalid duration {text!r}: write a number with a unit, e.g. 500ms, 30s, 5m, 2h, 1d"
        )
    value = text.strip()
    if not _WHOLE.fullmatch(value):
        raise DurationError(
            f"invalid duration {text!r}: write a number with a unit, e.g. 500ms, 30s, 5m, 2h, 1d"
        )
    return sum(float(num) * _UNITS[unit] for num, unit in _PART.findall(value))


def format_duration(seconds: float) -> str:
    """The shortest exact way to write `seconds` back (`90` -> `1m30s`, `0.5` -> `500ms`)."""
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if seconds == 0:
        return "0s"
    millis = round(seconds * 1000)
    if millis % 1000:
        if millis < 1000:
            return f"{millis}ms"
        return f"{seconds:g}s"
    whole = millis // 1000
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            count, whole = divmod(whole, size)
            out.append(f"{count}{unit}")
    return "".join(out)
