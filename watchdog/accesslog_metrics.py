"""The access-log metrics: plain counters on the hot path, a prometheus_client Collector at
scrape time.

`AccessLogCollector` (registered on the daemon's registry by `watchdog.metrics.Metrics`, as
`Metrics.access_log`) exports:

- `odoo_watchdog_http_requests_total{site,color,code}` (counter) and
  `odoo_watchdog_http_request_duration_seconds{site,color}` (histogram, with
  `watchdog.metrics.HTTP_BUCKETS`): what the `error_rate` and `p95_latency` rules read.
- `odoo_watchdog_access_log_lines_total{result}`: the datagrams the receivers `received`,
  and of them the `unparsed` ones (not an access-log line) and the `unmapped` ones (a line
  for a server no site knows).
- `odoo_watchdog_access_log_kernel_drops_total`: datagrams the kernel dropped because the
  receiver's socket buffer was full, read from /proc/net/udp at scrape time (no sample where
  that is unknown).

A line costs the receiver a dict update and a bisect into a `Series`, which the collector
reads when Prometheus scrapes: a prometheus_client `inc()` and `observe()` take a lock each
(about 3 µs a line for a counter and a histogram, two thirds of the receiver's time), and
nothing is lost or stale between two scrapes. The series live in the collector, not in a
receiver, so the counters only ever go up, whichever receiver fed them.

The hot path and the scrape run on the same event loop in the daemon; where a scrape runs on
another thread (prometheus_client's own HTTP server, in the lab tests) each container is
copied in one step under the GIL, so a scrape never fails; it may at worst see a line in the
buckets and not yet in the sum.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Protocol

from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["DURATION", "FAMILIES", "KERNEL_DROPS", "LINES", "REQUESTS", "AccessLogCollector",
           "LineCounts", "Series"]

REQUESTS = "odoo_watchdog_http_requests_total"
DURATION = "odoo_watchdog_http_request_duration_seconds"
LINES = "odoo_watchdog_access_log_lines_total"
KERNEL_DROPS = "odoo_watchdog_access_log_kernel_drops_total"
# name -> (type, help, label names): the contract, as the dashboards and rules read it.
FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    REQUESTS: ("counter", "Requests seen in the proxy access logs", ("site", "color", "code")),
    DURATION: ("histogram", "Response time seen in the proxy access logs", ("site", "color")),
    LINES: ("counter", "Access-log datagrams received, and of them those that were not an "
            "access-log line (unparsed) or were for no known colour (unmapped)", ("result",)),
    KERNEL_DROPS: ("counter", "Access-log datagrams the kernel dropped: the receiver's socket "
                   "buffer was full", ()),
}


class LineCounts(Protocol):
    """What the collector reads of a receiver: its counts since it was made."""

    received: int
    unparsed: int
    unmapped: int

    def kernel_drops_total(self) -> int | None: ...


class Series:
    """What one (site, colour) saw since the daemon started: the receiver adds to it directly.

    `codes` counts by status as the proxy logged it (HAProxy's b"-1" is exported as 499);
    `buckets[i]` counts the durations in (bounds[i-1], bounds[i]], not cumulated, and the last
    one those above every bound (+Inf): `buckets[bisect_left(bounds, seconds)] += 1`.
    """

    __slots__ = ("bounds", "buckets", "codes", "color", "site", "sum")

    def __init__(self, site: str, color: str, bounds: list[float]) -> None:
        self.site = site
        self.color = color
        self.bounds = bounds
        self.codes: defaultdict[bytes, int] = defaultdict(int)
        self.buckets = [0] * (len(bounds) + 1)
        self.sum = 0.0


class AccessLogCollector(Collector):
    """The access-log families of one registry, read from the `Series` of every (site,
    colour) and the counts of every receiver `attach`ed to it."""

    def __init__(self, buckets: Sequence[float]) -> None:
        bounds = sorted(float(b) for b in buckets if b != math.inf)
        if not bounds or len(set(bounds)) != len(bounds):
            raise ValueError(f"histogram buckets must be distinct, finite values (got {buckets})")
        if bounds[-1] >= 1e6:
            raise ValueError("histogram buckets of a million seconds and more are not supported")
        self.bounds = bounds
        # `le` as prometheus_client writes it (Go's float format); repr is that below 1e6.
        self._le = [repr(b) for b in bounds] + ["+Inf"]
        self._series: dict[tuple[str, str], Series] = {}
        self._sources: list[LineCounts] = []

    def series(self, site: str, color: str) -> Series:
        """The counts of (site, colour), made on first use."""
        series = self._series.get((site, color))
        if series is None:
            series = self._series[site, color] = Series(site, color, self.bounds)
        return series

    def attach(self, source: LineCounts) -> None:
        """Export `source`'s line counts (added to those of the receivers attached before)."""
        self._sources.append(source)

    def describe(self) -> Iterator[Metric]:
        """The families, without samples: the registry checks their names for clashes."""
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        requests, durations, lines, drops = self._families()
        for series in list(self._series.values()):
            labels = [series.site, series.color]
            by_code: dict[str, int] = {}
            for status, count in list(series.codes.items()):
                code = "499" if status == b"-1" else status.decode()
                by_code[code] = by_code.get(code, 0) + count
            for code in sorted(by_code):
                requests.add_metric([*labels, code], by_code[code])
            cumulated = itertools.accumulate(list(series.buckets))
            durations.add_metric(labels, list(zip(self._le, cumulated, strict=True)), series.sum)
        sources = list(self._sources)
        if sources:
            for result in ("received", "unparsed", "unmapped"):
                lines.add_metric([result], sum(getattr(s, result) for s in sources))
            known = [d for d in (s.kernel_drops_total() for s in sources) if d is not None]
            if known:
                drops.add_metric([], sum(known))
        yield from (requests, durations, lines, drops)

    def _families(self) -> tuple[CounterMetricFamily, HistogramMetricFamily,
                                 CounterMetricFamily, CounterMetricFamily]:
        def counter(name: str) -> CounterMetricFamily:
            _, doc, labels = FAMILIES[name]
            return CounterMetricFamily(name, doc, labels=labels)

        _, doc, labels = FAMILIES[DURATION]
        return (counter(REQUESTS), HistogramMetricFamily(DURATION, doc, labels=labels),
                counter(LINES), counter(KERNEL_DROPS))
