"""A measurement is data: what a source saw for one rule and one colour at one time.

Sources only fetch (this record); `rules.py` only judges it. Keeping the record plain means the
daemon can store it, show it in the API and replay it into the evaluator in tests.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Measurement:
    value: float | None  # None: the source answered, but with nothing to judge (no data)
    error: str | None = None  # the source could not be asked (unreachable, bad answer)
    detail: str = ""  # a short human explanation: "HTTP 503 in 12 ms", "2 series: ..."
    started: float = 0.0  # wall-clock seconds
    finished: float = 0.0
    latency: float | None = None  # for http probes: how long the colour took to answer

    @classmethod
    def no_data(cls, detail: str, started: float = 0.0, finished: float = 0.0) -> Measurement:
        return cls(None, None, detail, started, finished)

    @classmethod
    def failed(cls, error: str, started: float = 0.0, finished: float = 0.0) -> Measurement:
        return cls(None, error, error, started, finished)
