"""A measurement is data: what a source saw for one rule and one colour at one time.

Sources only fetch (this record); `rules.py` only judges it. Keeping the record plain means the
daemon can store it, show it in the API and replay it into the evaluator in tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Comparison:
    """What a rule that compares two colours saw (`source: traffic`, relative_to or judge):
    each colour's requests in the window, and for a judge its one-sided p-value and the ratio
    candidate / live it weighed."""

    samples: tuple[tuple[str, int], ...]  # (colour, requests in the window)
    p_value: float | None = None
    ratio: float | None = None

    def as_json(self) -> dict[str, object]:
        return {"samples": dict(self.samples), "p_value": self.p_value, "ratio": _finite(
            self.ratio)}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Comparison:
        samples = data.get("samples")
        pairs = tuple((str(k), int(v)) for k, v in samples.items()
                      if isinstance(v, int)) if isinstance(samples, dict) else ()
        p, ratio = data.get("p_value"), data.get("ratio")
        return cls(pairs, float(p) if isinstance(p, int | float) else None,
                   math.inf if ratio == "inf"
                   else float(ratio) if isinstance(ratio, int | float) else None)


def _finite(value: float | None) -> float | str | None:
    """JSON has no infinity: a ratio over a live colour with no errors is "inf"."""
    if value is None or math.isfinite(value):
        return value
    return "inf" if value > 0 else None


@dataclass(frozen=True)
class Measurement:
    value: float | None  # None: the source answered, but with nothing to judge (no data)
    error: str | None = None  # the source could not be asked (unreachable, bad answer)
    detail: str = ""  # a short human explanation: "HTTP 503 in 12 ms", "2 series: ..."
    started: float = 0.0  # wall-clock seconds
    finished: float = 0.0
    latency: float | None = None  # for http probes: how long the colour took to answer
    # A judge's own verdict (source: traffic, `judge:`): breach or not, whatever the value.
    breach: bool | None = None
    # The rule does not apply now (it compares with a live colour that has no traffic).
    skipped: bool = False
    comparison: Comparison | None = None

    @classmethod
    def skip(cls, detail: str, started: float = 0.0, finished: float = 0.0) -> Measurement:
        return cls(None, None, detail, started, finished, skipped=True)

    @classmethod
    def no_data(cls, detail: str, started: float = 0.0, finished: float = 0.0,
                comparison: Comparison | None = None) -> Measurement:
        return cls(None, None, detail, started, finished, comparison=comparison)

    @classmethod
    def failed(cls, error: str, started: float = 0.0, finished: float = 0.0) -> Measurement:
        return cls(None, error, error, started, finished)
