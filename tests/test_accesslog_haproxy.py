"""The access-log receiver behind a real HAProxy 2.6, read by a real Prometheus 2.42.

HAProxy (50/50 over two real stand-ins, `option httplog`, `log 127.0.0.1:N len 4096 local0
info`) sends its real access log over UDP to the receiver running in this process; the
receiver's `Metrics` registry is served by prometheus_client for Prometheus to scrape.

1. A client sends a known number of requests: the receiver's counts per colour match the
   colours the client saw (`X-Odoo-Color`) within 1% (UDP may lose lines; loopback should not).
2. Latency is injected into green: the P95 that Prometheus computes from the histogram
   matches the P95 the client measured for green within 10%.

   The latency is 0.7 s, not 0.3 s. With constant latency every request lands in one bucket
   and `histogram_quantile` interpolates linearly inside it: the estimate is
   `lower + 0.95 * (upper - lower)` whatever the true value. With the buckets of
   watchdog/metrics.py, 0.3 s lands in (0.25, 0.5] and reads 0.4875 (+60%); 0.7 s lands in
   (0.5, 0.75] and reads 0.7375 (+4% over ~0.705). It also stays below the lab's health-check
   timeout (1 s), which would otherwise take green out.
3. The shipped `p95_latency` rule (rules/odoo.yml; its window shortened to 10 s and its max
   lowered to 0.5 s below the injected latency), measured through `PrometheusSource` and
   judged by `rules.evaluate`, goes pending and then firing for green, and stays ok for blue.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import start_http_server

from tests.accesslog_helpers import check_counts_per_color
from watchdog.accesslog import AccessLogReceiver
from watchdog.config import DaemonConfig, PrometheusRule, load_rule_file
from watchdog.lab.haproxy import HaproxyLab
from watchdog.lab.load import LoadClient
from watchdog.lab.procs import free_port, free_udp_port
from watchdog.lab.prometheus import PrometheusLab, ScrapeJob
from watchdog.lab.standin import StandinProcess, clear_faults, set_faults
from watchdog.metrics import Metrics
from watchdog.rules import Outcome, RuleStatus, State, evaluate, judge
from watchdog.sources.base import Target
from watchdog.sources.prometheus import PrometheusSource

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parent.parent
REQUESTS = 3000
LATENCY = 0.7
WINDOW = 10  # seconds, the rate() window of the P95 query


def p95(values: list[float]) -> float:
    """The 95th percentile as Prometheus means it: the smallest value >= 95% of them."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


@dataclass
class Rig:
    receiver: AccessLogReceiver
    metrics: Metrics
    haproxy: HaproxyLab
    prometheus: PrometheusLab
    config: DaemonConfig
    blue: StandinProcess
    green: StandinProcess

    def target(self, color: str) -> Target:
        return Target.of("odoo", self.config.sites["odoo"], color)


@pytest.fixture
def exporter_port() -> Iterator[tuple[int, Metrics]]:
    metrics = Metrics()
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=metrics.registry)
    yield port, metrics
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
async def rig(
    tmp_path: Path, standins: tuple[StandinProcess, ...], exporter_port: tuple[int, Metrics]
) -> AsyncIterator[Rig]:
    blue, green = standins
    port, metrics = exporter_port
    for proc in (blue, green):
        clear_faults(proc.url)
    syslog_port = free_udp_port()
    haproxy = HaproxyLab(tmp_path / "haproxy", blue.port, green.port, weights=(50, 50),
                         syslog_port=syslog_port)
    config = DaemonConfig.model_validate({
        "access_log": {"listen": f"127.0.0.1:{syslog_port}", "format": "haproxy"},
        "sites": {"odoo": {
            "router": {"kind": "haproxy", "socket": str(haproxy.admin_socket), "backend": "odoo"},
            "colors": {"blue": {"server": "odoo-blue", "url": blue.url},
                       "green": {"server": "odoo-green", "url": green.url}},
        }},
    })
    receiver = AccessLogReceiver.from_config(config, metrics)
    assert receiver is not None
    prometheus = PrometheusLab(tmp_path / "prometheus", scrape_interval="1s",
                               jobs=[ScrapeJob("watchdog", [f"127.0.0.1:{port}"])])
    await receiver.start()
    try:
        # Both start at once; neither blocks the loop the receiver runs on.
        await asyncio.gather(asyncio.to_thread(haproxy.start),
                             asyncio.to_thread(prometheus.start))
        try:
            yield Rig(receiver, metrics, haproxy, prometheus, config, blue, green)
        finally:
            haproxy.stop()
            prometheus.stop()
    finally:
        await receiver.stop()
        for proc in (blue, green):
            clear_faults(proc.url)


def shipped_rule(name: str, **update: Any) -> PrometheusRule:
    rules, _ = load_rule_file(ROOT / "rules" / "odoo.yml")
    rule = next(r for r in rules if r.name == name)
    assert isinstance(rule, PrometheusRule)
    return PrometheusRule.model_validate({**rule.model_dump(mode="json", by_alias=True), **update})


async def test_counts_p95_and_the_p95_rule_from_haproxy_access_logs(rig: Rig) -> None:
    receiver = rig.receiver
    started = time.monotonic()

    # 1. Counts per colour.
    await check_counts_per_color(receiver, rig.metrics.registry, rig.haproxy.url, REQUESTS)
    print(f"{time.monotonic() - started:.1f}s")
    assert receiver.unparsed <= 2  # HAProxy's own messages (a server DOWN) would count here
    assert receiver.unmapped <= 2  # the lab's readiness probe: a connect without a request

    # 2. Green's P95 from Prometheus against the client's.
    set_faults(rig.green.url, latency=LATENCY)
    phase2 = time.monotonic()
    query = ("histogram_quantile(0.95, sum by (le) (rate(odoo_watchdog_http_request_duration"
             f'_seconds_bucket{{site="odoo",color="green"}}[{WINDOW}s])))')
    async with LoadClient(rig.haproxy.url, "/web/health", concurrency=8,
                          max_seconds=40) as load:
        # The window must hold only slow requests: wait it out, plus a scrape or two.
        await asyncio.sleep(WINDOW + 2.5)
        result = await asyncio.to_thread(rig.prometheus.query, query)
        client_green = [s.latency for s in load.samples if s.color == "green" and not s.failed]
        client_p95 = p95(client_green)
        assert result, "Prometheus has no P95 for green"
        server_p95 = float(result[0]["value"][1])
        print(f"green P95: client {client_p95:.4f}s over {len(client_green)} requests, "
              f"Prometheus {server_p95:.4f}s ({100 * (server_p95 / client_p95 - 1):+.1f}%), "
              f"{time.monotonic() - phase2:.1f}s")
        assert abs(server_p95 - client_p95) <= 0.10 * client_p95

        # 3. The shipped p95_latency rule fires on it (for green, not for blue).
        rule = shipped_rule("p95_latency", max=0.5, **{"for": "2s"})
        rule = rule.model_copy(update={"query": rule.query.replace("[2m]", f"[{WINDOW}s]")})
        assert "[10s]" in rule.query
        source = PrometheusSource(rig.prometheus.url, timeout=5)
        try:
            first = await source.measure(rule, rig.target("green"))
            now = time.monotonic()
            status = evaluate(rule, RuleStatus(), first, now)
            assert status.state is State.PENDING, first
            await asyncio.sleep(2.2)
            second = await source.measure(rule, rig.target("green"))
            status = evaluate(rule, status, second, time.monotonic())
            assert status.state is State.FIRING, second
            assert second.value is not None and second.value > 0.5

            blue = await source.measure(rule, rig.target("blue"))
            assert judge(rule, blue) is Outcome.OK, blue
            assert blue.value is not None and blue.value < 0.25

            error_rate = shipped_rule("error_rate")
            errors = await source.measure(error_rate, rig.target("green"))
            assert errors.value == 0.0 and judge(error_rate, errors) is Outcome.OK, errors
        finally:
            await source.close()
    print(f"total {time.monotonic() - started:.1f}s, {receiver.stats()}")
