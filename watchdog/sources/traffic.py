"""`source: traffic` (DESIGN.md §14): the proxy's requests as the daemon's own access-log
receiver saw them, read in-process; no Prometheus in between.

The receiver keeps, per site and colour, a `watchdog.traffic.TrafficWindow` of the last 300
seconds. A rule reads `window` of it:

- `error_rate`: the 5xx share; `p50`, `p95`, `p99`: quantiles of the response time (of the
  sampled durations, each second weighted by its requests); `rps`: requests per second.
- `min_requests`: fewer requests than that in the window is `no_data` (for each colour the rule
  reads). `rps` takes no minimum: no request at all is the value 0.
- `relative_to: live`: the value is candidate / live of the same measure over the same window
  (0 / 0 is 1: the same; x / 0 is infinity: worse than any ratio).
- `judge:`: `watchdog.judge`, Mann-Whitney U on the durations (`latency`) or the two-proportion
  test (`error_rate`); the value is the ratio, the verdict the judge's.

A rule that compares two colours is `skipped` while the other colour has weight 0 (a 100% step,
the bake, a site at rest): there is nothing to compare, and it must not hold the rollout. When
that colour has weight but too few requests, it is `no_data`, which holds: missing data never
promotes.

The measurement is synchronous and cheap (sums over at most 300 slots, a judge on at most
30,000 durations a colour), so the daemon also runs it as the lines arrive (`measure_now`).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import replace
from typing import Protocol

from watchdog import judge
from watchdog.config import DaemonConfig
from watchdog.measurement import Comparison, Measurement
from watchdog.rulefiles import TrafficRule
from watchdog.sources.base import Target, register
from watchdog.traffic import TrafficWindow, WindowView

__all__ = ["TrafficSource", "Windows"]

NO_DURATIONS = "no durations in the log lines to compare"


class Windows(Protocol):
    """What the source reads of the receiver (`watchdog.accesslog.AccessLogReceiver`)."""

    def clock(self) -> float: ...

    def window(self, site: str, color: str) -> TrafficWindow: ...


class TrafficSource:
    kind = "traffic"

    def __init__(self, windows: Windows | None = None) -> None:
        self.windows = windows

    async def measure(self, rule: TrafficRule, target: Target) -> Measurement:
        return self.measure_now(rule, target)

    def measure_now(self, rule: TrafficRule, target: Target) -> Measurement:
        started = time.time()
        if self.windows is None:
            return Measurement.failed("no access-log receiver runs: source traffic needs the "
                                      "config's access_log: section", started, time.time())
        now = self.windows.clock()
        own = self.windows.window(target.site, target.color).view(now, rule.window)
        if rule.compares:
            return _compared(rule, target, own, self.windows, now, started)
        value = _value(rule.measure, own)
        samples = ((target.color, own.total),)
        if rule.measure != "rps" and own.total < rule.min_requests:
            return _no_data(_few(target.color, own, rule), samples, started)
        if value is None:
            return _no_data(f"{target.color}: no durations in the log lines of the last "
                            f"{rule.window:g}s", samples, started)
        return Measurement(value, None, f"{_show(rule.measure, value)} over {own.total} "
                           f"requests in {rule.window:g}s", started, time.time(),
                           comparison=Comparison(samples))

    async def close(self) -> None:
        return None


def _compared(rule: TrafficRule, target: Target, own: WindowView, windows: Windows, now: float,
              started: float) -> Measurement:
    peer = target.peer
    if peer is None or target.peer_weight == 0:
        return Measurement.skip(f"{peer or 'the live colour'} has no traffic (weight 0): "
                                "nothing to compare with", started, time.time())
    other = windows.window(target.site, peer).view(now, rule.window)
    samples = ((target.color, own.total), (peer, other.total))
    short = [_few(c, v, rule) for c, v in ((target.color, own), (peer, other))
             if v.total < rule.min_requests]
    if short:
        return _no_data("; ".join(short), samples, started)
    if rule.judge is not None:
        spec = rule.judge
        if spec.test == "mann_whitney":
            if not own.durations or not other.durations:
                return _no_data(NO_DURATIONS, samples, started)
            verdict = judge.mann_whitney(own.durations, other.durations,
                                         confidence=spec.confidence, max_ratio=spec.max_ratio)
            if verdict.breach:
                verdict = _big_enough(verdict, own.durations, other.durations,
                                      spec.min_difference)
        else:
            verdict = judge.proportions(own.errors, own.total, other.errors, other.total,
                                        confidence=spec.confidence, max_ratio=spec.max_ratio)
        return Measurement(verdict.ratio, None, verdict.detail, started, time.time(),
                           breach=verdict.breach,
                           comparison=Comparison(samples, verdict.p_value, verdict.ratio))
    mine, theirs = _value(rule.measure, own), _value(rule.measure, other)
    if mine is None or theirs is None:
        return _no_data(NO_DURATIONS, samples, started)
    ratio = _ratio(mine, theirs)
    return Measurement(ratio, None, f"{target.color} {_show(rule.measure, mine)} / {peer} "
                       f"{_show(rule.measure, theirs)} = {ratio:.3g} over {own.total}/"
                       f"{other.total} requests in {rule.window:g}s", started, time.time(),
                       comparison=Comparison(samples, None, ratio))


def _big_enough(verdict: judge.Verdict, mine: tuple[float, ...], theirs: tuple[float, ...],
                floor: float) -> judge.Verdict:
    """A significant slow-down counts only when the medians differ by more than `floor`
    (`judge.min_difference`): logged durations are whole milliseconds."""
    gap = statistics.median(mine) - statistics.median(theirs)
    if gap > floor:
        return verdict
    return replace(verdict, breach=False, detail=f"{verdict.detail}; but the medians differ by "
                   f"{gap * 1000:.0f} ms, not more than min_difference {floor * 1000:.0f} ms")


def _no_data(detail: str, samples: tuple[tuple[str, int], ...], started: float) -> Measurement:
    """Nothing to judge, with the requests that were there (for `samples` in the API)."""
    return Measurement.no_data(detail, started, time.time(), Comparison(samples))


def _value(measure: str, view: WindowView) -> float | None:
    if measure == "error_rate":
        return view.error_rate
    if measure == "rps":
        return view.rps
    return view.quantile(int(measure[1:]) / 100)


def _ratio(mine: float, theirs: float) -> float:
    if theirs == 0:
        return 1.0 if mine == 0 else math.inf
    return mine / theirs


def _few(color: str, view: WindowView, rule: TrafficRule) -> str:
    return (f"{color}: {view.total} requests in {rule.window:g}s, fewer than min_requests "
            f"{rule.min_requests}")


def _show(measure: str, value: float) -> str:
    if measure == "error_rate":
        return f"5xx share {value:.2%}"
    if measure == "rps":
        return f"{value:.3g} req/s"
    return f"{measure} {value * 1000:.0f} ms"


@register("traffic", TrafficRule)
def _factory(config: DaemonConfig) -> TrafficSource:
    return TrafficSource()  # the daemon hands it its receiver (Daemon.__init__)
