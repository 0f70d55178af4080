"""Backtesting: replay a site's Prometheus rules over Prometheus' history (DESIGN.md §16).

Two halves, kept apart so the first is tested with a fake series:

- `replay()` is pure: a rule and one measurement per step in, the intervals in which the rule
  would have been pending or firing out. It drives the daemon's own evaluator
  (`watchdog.rules.evaluate`) with a `RuleStatus` carried from step to step and `now` = the
  step's time, so `for` and `no_data` mean exactly what they mean live.
- `RangeClient` and `fetch_steps()` ask Prometheus' `/api/v1/query_range` (plain HTTP through
  `requests`) in chunks that stay under Prometheus' limit of 11,000 points per series
  ("exceeded maximum resolution of 11,000 points per timeseries"), and turn each step's vector
  into a `Measurement` the way the live source does: an empty vector or NaN is no data, more
  than one series is an error.

`run_backtest()` puts them together for every `source: prometheus` rule of a site and each
colour asked for; the rule's templates are rendered per colour exactly as the live source does.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests

from watchdog.config import LoadedConfig
from watchdog.measurement import Measurement
from watchdog.rulefiles import PrometheusRule
from watchdog.rules import Outcome, RuleStatus, State, evaluate, judge
from watchdog.schema import render
from watchdog.sources.base import Target

__all__ = [
    "MAX_POINTS",
    "Backtest",
    "BacktestError",
    "Interval",
    "RangeClient",
    "Replay",
    "Steps",
    "fetch_steps",
    "plan_chunks",
    "replay",
    "rfc3339",
    "run_backtest",
]

# Prometheus refuses a range query when (end - start) / step > 11,000 (web/api/v1/api.go);
# a chunk of 11,000 points spans 10,999 steps and stays under it.
MAX_POINTS = 11_000
# A range query over days costs Prometheus more than an instant query: the configured
# (instant-query) timeout, but never less than this.
MIN_TIMEOUT = 60.0
WORKERS = 4


class BacktestError(Exception):
    """A problem that stops the whole backtest (Prometheus unreachable, nothing to replay)."""


@dataclass(frozen=True)
class Interval:
    """One stretch of steps in one state. `end` is the first step no longer in that state,
    or the end of the range when the rule was still in it there."""

    state: str  # "pending" | "firing"
    start: float
    end: float
    peak: float | None  # the value furthest past the threshold in the stretch
    action: str  # firing: the rule's on_fire; pending: "hold" (a rollout never advances)

    def as_json(self) -> dict[str, Any]:
        return {"state": self.state, "start": rfc3339(self.start), "end": rfc3339(self.end),
                "peak": _json_number(self.peak), "action": self.action}


@dataclass
class Replay:
    """What one rule did for one colour over the range."""

    name: str
    color: str
    query: str
    rule: PrometheusRule
    intervals: list[Interval]
    times: array[float]  # every step's time
    values: array[float]  # every step's value (NaN: no data or error)
    outcomes: dict[str, int] = field(default_factory=dict)  # Outcome value -> steps
    errors: list[str] = field(default_factory=list)  # distinct error texts, the first few

    @property
    def fired(self) -> list[Interval]:
        return [i for i in self.intervals if i.state == "firing"]

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "color": self.color,
                "intervals": [i.as_json() for i in self.intervals]}


@dataclass
class Backtest:
    site: str
    start: float
    end: float
    step: float
    replays: list[Replay]
    requests: int = 0  # query_range requests sent

    def as_json(self) -> dict[str, Any]:
        from watchdog.durations import format_duration

        return {"site": self.site, "from": rfc3339(self.start), "to": rfc3339(self.end),
                "step": format_duration(self.step),
                "rules": [r.as_json() for r in self.replays]}


def rfc3339(ts: float) -> str:
    """UTC, second precision unless the time has a fraction (then milliseconds)."""
    moment = datetime.fromtimestamp(ts, UTC)
    if abs(ts - round(ts)) < 5e-4:
        return moment.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _json_number(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return value
    return "+Inf" if value > 0 else "-Inf"


# --- the pure replay ---------------------------------------------------------------------

def _excess(rule: PrometheusRule, value: float) -> float:
    """How far `value` is past the rule's threshold (larger: worse)."""
    over = value - rule.max if rule.max is not None else -math.inf
    under = rule.min - value if rule.min is not None else -math.inf
    return max(over, under)


def replay(rule: PrometheusRule, times: Sequence[float],
           measurements: Iterable[Measurement], *, quiet_shortcut: bool = True
           ) -> tuple[list[Interval], dict[str, int]]:
    """The pending and firing intervals of `rule` over one measurement per step.

    Every step goes through `watchdog.rules.evaluate`, with one exception that cannot change
    the result: a step whose outcome is `ok` while the rule is already `ok` leaves the rule
    `ok` (evaluate would only restamp the value and time), so with `quiet_shortcut` it is
    counted and not evaluated. Returns the intervals and the steps per outcome.
    """
    status = RuleStatus()
    intervals: list[Interval] = []
    counts: dict[str, int] = {}
    open_state: State | None = None
    open_start = 0.0
    peak: float | None = None
    now = 0.0
    for now, measurement in zip(times, measurements, strict=True):
        if quiet_shortcut and status.state is State.OK:
            outcome = judge(rule, measurement)
            if outcome is Outcome.OK or outcome is Outcome.SKIPPED:
                counts[outcome.value] = counts.get(outcome.value, 0) + 1
                continue
        status = evaluate(rule, status, measurement, now)
        assert status.outcome is not None
        counts[status.outcome.value] = counts.get(status.outcome.value, 0) + 1
        state = status.state if status.state in (State.PENDING, State.FIRING) else None
        if state is not open_state:
            if open_state is not None:
                intervals.append(_interval(rule, open_state, open_start, now, peak))
            open_state, open_start, peak = state, now, None
        if state is not None and status.outcome is Outcome.BREACH:
            value = measurement.value
            if value is not None and not math.isnan(value) and (
                    peak is None or _excess(rule, value) > _excess(rule, peak)):
                peak = value
    if open_state is not None:
        intervals.append(_interval(rule, open_state, open_start, now, peak))
    return intervals, counts


def _interval(rule: PrometheusRule, state: State, start: float, end: float,
              peak: float | None) -> Interval:
    action = rule.on_fire if state is State.FIRING else "hold"
    return Interval(state.label, start, end, peak, action)


# --- fetching ------------------------------------------------------------------------------

def plan_chunks(start: float, step: float, count: int, max_points: int = MAX_POINTS
                ) -> list[tuple[int, int]]:
    """(first step index, number of steps) of each range query: at most `max_points` each."""
    if max_points < 1:
        raise ValueError("max_points must be at least 1")
    return [(first, min(max_points, count - first)) for first in range(0, count, max_points)]


def _reason(exc: BaseException) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "timed out"):
        if marker in text:
            return marker.lower()
    return text if len(text) <= 200 else text[:197] + "..."


class RangeClient:
    """`/api/v1/query_range` over plain HTTP (requests), no retries, no proxy from the
    environment (the same choices as the live source)."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.trust_env = False
        self.sent = 0

    def query_range(self, query: str, start: float, end: float, step: float
                    ) -> list[dict[str, Any]]:
        """The matrix; BacktestError when Prometheus cannot be asked, QueryError when it
        answers that the query is wrong."""
        self.sent += 1
        try:
            resp = self.session.post(
                f"{self.url}/api/v1/query_range",
                data={"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}",
                      "step": f"{step:g}"},
                timeout=self.timeout)
        except requests.Timeout:
            raise BacktestError(f"prometheus {self.url}: no answer in {self.timeout:g}s") from None
        except requests.ConnectionError as exc:
            raise BacktestError(f"prometheus {self.url}: unreachable ({_reason(exc)})") from None
        except requests.RequestException as exc:
            raise BacktestError(f"prometheus {self.url}: {_reason(exc)}") from None
        try:
            body = resp.json()
        except ValueError:
            raise BacktestError(f"prometheus {self.url}: HTTP {resp.status_code}, "
                                "not a Prometheus API answer") from None
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error", f"HTTP {resp.status_code}") if isinstance(body, dict) \
                else f"HTTP {resp.status_code}"
            if resp.status_code in (400, 422):
                raise QueryError(str(error))
            raise BacktestError(f"prometheus {self.url}: {error}")
        data = body.get("data", {})
        if data.get("resultType") != "matrix":
            raise QueryError(f"query returned a {data.get('resultType')}, not an instant vector")
        result: list[dict[str, Any]] = data.get("result", [])
        return result

    def close(self) -> None:
        self.session.close()


class QueryError(Exception):
    """Prometheus refused this one query (bad PromQL): every step of the rule is an error."""


def _labels(metric: dict[str, str]) -> str:
    if not metric:
        return "{}"
    return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(metric.items())) + "}"


class Steps:
    """One measurement per step, kept compact: the values in an array, and only the steps
    that are not a plain value (no data, NaN, an error) as Measurements. Iterating yields a
    Measurement per step, made when asked for."""

    def __init__(self, count: int) -> None:
        self.values = array("d", [math.nan]) * count
        self.special: dict[int, Measurement] = {}

    def __len__(self) -> int:
        return len(self.values)

    def __iter__(self) -> Iterator[Measurement]:
        special = self.special
        for i, value in enumerate(self.values):
            found = special.get(i)
            yield found if found is not None else Measurement(value)

    def errors(self, limit: int = 3) -> list[str]:
        return list(dict.fromkeys(m.error for m in self.special.values() if m.error))[:limit]


def fetch_steps(client: RangeClient, query: str, start: float, step: float, count: int,
                max_points: int = MAX_POINTS) -> Steps:
    """One measurement per step t = start + i * step (i < count), asked in chunks."""
    steps = Steps(count)
    values, special = steps.values, steps.special
    seen = bytearray(count)  # series with a value at each step (capped at 2)
    names: dict[int, list[str]] = {}
    first_label: dict[int, str] = {}
    empty = Measurement.no_data("empty result")
    for first, size in plan_chunks(start, step, count, max_points):
        chunk_start = start + first * step
        try:
            matrix = client.query_range(query, chunk_start, chunk_start + (size - 1) * step, step)
        except QueryError as exc:
            failed = Measurement.failed(f"prometheus: {exc}")
            for i in range(first, first + size):
                special[i] = failed
            continue
        for item in matrix:
            label = _labels(item.get("metric", {}))
            for ts, raw in item.get("values", ()):
                i = round((float(ts) - start) / step)
                if not first <= i < first + size:
                    continue
                if seen[i]:
                    names.setdefault(i, [first_label.get(i, "{}")]).append(label)
                    seen[i] = 2
                    continue
                seen[i] = 1
                if len(matrix) > 1:
                    first_label[i] = label
                value = _number(raw, label)
                if isinstance(value, Measurement):
                    special[i] = value
                else:
                    values[i] = value
    for i in range(count):
        if not seen[i] and i not in special:
            special[i] = empty
    for i, shown in names.items():
        more = f" and {len(shown) - 3} more" if len(shown) > 3 else ""
        special[i] = Measurement.failed(
            f"query returned {len(shown)} series, expected one: {'; '.join(shown[:3])}"
            f"{more} (aggregate with sum() or filter by labels)")
        values[i] = math.nan
    return steps


def _number(raw: Any, series: str) -> float | Measurement:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return Measurement.failed(f"not a number: {raw!r:.40}")
    if math.isnan(value):
        return Measurement.no_data(f"NaN from {series}")
    return value


# --- the whole site ------------------------------------------------------------------------

def steps_between(start: float, end: float, step: float) -> int:
    """How many steps start, start + step, ... fall at or before end."""
    if step <= 0:
        raise BacktestError("the step must be longer than 0s")
    if end <= start:
        raise BacktestError(f"--from {rfc3339(start)} is not before --to {rfc3339(end)}")
    return math.floor((end - start) / step + 1e-9) + 1


def prometheus_rules(loaded: LoadedConfig, site: str) -> list[PrometheusRule]:
    if site not in loaded.config.sites:
        known = ", ".join(sorted(loaded.config.sites))
        raise BacktestError(f"no site {site!r} in {loaded.path} (sites: {known})")
    rules = [r for r in loaded.rules_for(site) if isinstance(r, PrometheusRule)]
    if not rules:
        raise BacktestError(f"site {site!r} has no rule with source: prometheus to backtest")
    return rules


def run_backtest(
    loaded: LoadedConfig, site: str, start: float, end: float, step: float,
    colors: Sequence[str] | None = None, *, max_points: int = MAX_POINTS,
    client: RangeClient | None = None, quiet_shortcut: bool = True, workers: int = WORKERS,
    progress: Callable[[str], None] | None = None,
) -> Backtest:
    """Every Prometheus rule of `site`, for each colour of `colors` (default both)."""
    rules = prometheus_rules(loaded, site)
    site_config = loaded.config.sites[site]
    wanted = list(colors) if colors else list(site_config.colors)
    for color in wanted:
        if color not in site_config.colors:
            raise BacktestError(f"site {site!r} has no colour {color!r}")
    count = steps_between(start, end, step)
    times = array("d", (start + i * step for i in range(count)))
    own = client is None
    if client is None:
        prom = loaded.config.prometheus
        client = RangeClient(prom.url, max(prom.timeout, MIN_TIMEOUT))
    jobs = [(rule, color, render(rule.query,
                                 Target.of(site, site_config, color).variables()))
            for rule in rules for color in wanted]
    range_client = client

    def one(job: tuple[PrometheusRule, str, str]) -> Replay:
        rule, color, query = job
        measurements = fetch_steps(range_client, query, start, step, count, max_points)
        intervals, counts = replay(rule, times, measurements, quiet_shortcut=quiet_shortcut)
        values, errors = measurements.values, measurements.errors()
        if progress is not None:
            progress(f"{rule.name} ({color}): {len(intervals)} intervals")
        return Replay(rule.name, color, query, rule, intervals, times, values, counts, errors)

    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            replays = list(pool.map(one, jobs))
    finally:
        if own:
            client.close()
    return Backtest(site, start, times[-1], step, replays, client.sent)
