"""The prometheus source against a real Prometheus 2.42 scraping a real exporter."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Exporter
from watchdog.config import PrometheusRule
from watchdog.lab.prometheus import PrometheusLab
from watchdog.measurement import Measurement
from watchdog.rules import Outcome, RuleStatus, State, evaluate, judge
from watchdog.sources.base import Target
from watchdog.sources.prometheus import PrometheusSource

pytestmark = pytest.mark.lab

GREEN = Target(site="odoo", color="green", server="odoo-green", backend="odoo",
               url="http://127.0.0.1:9069", interval=1.0)


def rule(query: str, **extra: object) -> PrometheusRule:
    return PrometheusRule.model_validate(
        {"name": "error_rate", "source": "prometheus", "query": query, "max": 0.05, **extra}
    )


ERROR_RATIO = rule('lab_error_ratio{site="{{ site }}",color="{{ color }}"}', **{"for": "3s"})


async def wait_for_value(source: PrometheusSource, value: float, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = await source.measure(ERROR_RATIO, GREEN)
        if m.value == value:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"Prometheus never returned {value}")


async def test_rule_goes_ok_pending_firing_and_back_to_ok(
    prometheus: PrometheusLab, exporter: Exporter
) -> None:
    source = PrometheusSource(prometheus.url, timeout=5)
    gauge = exporter.gauge.labels(site="odoo", color="green")
    try:
        gauge.set(0.01)
        await wait_for_value(source, 0.01)
        status = evaluate(ERROR_RATIO, RuleStatus(), await source.measure(ERROR_RATIO, GREEN),
                          time.monotonic())
        assert status.state is State.OK

        gauge.set(0.5)  # 50% errors: above max 0.05
        seen: dict[State, float] = {}
        deadline = time.monotonic() + 20
        while State.FIRING not in seen and time.monotonic() < deadline:
            m = await source.measure(ERROR_RATIO, GREEN)
            status = evaluate(ERROR_RATIO, status, m, time.monotonic())
            seen.setdefault(status.state, time.monotonic())
            await asyncio.sleep(0.25)
        assert State.PENDING in seen and State.FIRING in seen
        assert seen[State.FIRING] - seen[State.PENDING] >= 3.0  # `for: 3s`
        assert status.value == 0.5

        gauge.set(0.0)
        deadline = time.monotonic() + 15
        while status.state is not State.OK and time.monotonic() < deadline:
            m = await source.measure(ERROR_RATIO, GREEN)
            status = evaluate(ERROR_RATIO, status, m, time.monotonic())
            await asyncio.sleep(0.25)
        assert status.state is State.OK  # one ok clears a firing rule
    finally:
        await source.close()


async def test_empty_result_is_no_data(prometheus: PrometheusLab) -> None:
    source = PrometheusSource(prometheus.url, timeout=5)
    try:
        m = await source.measure(rule('lab_error_ratio{site="{{ site }}",color="purple"}'), GREEN)
    finally:
        await source.close()
    assert m.value is None and m.error is None
    assert judge(ERROR_RATIO, m) is Outcome.NO_DATA


async def test_nan_is_no_data(prometheus: PrometheusLab) -> None:
    source = PrometheusSource(prometheus.url, timeout=5)
    try:
        scalar = await source.measure(rule("NaN"), GREEN)
        vector = await source.measure(rule("vector(0) / vector(0)"), GREEN)
    finally:
        await source.close()
    assert judge(ERROR_RATIO, scalar) is Outcome.NO_DATA
    assert judge(ERROR_RATIO, vector) is Outcome.NO_DATA


async def test_scalar_result_is_a_value(prometheus: PrometheusLab) -> None:
    source = PrometheusSource(prometheus.url, timeout=5)
    try:
        m = await source.measure(rule("scalar(vector(0.25))"), GREEN)
    finally:
        await source.close()
    assert m.value == 0.25


async def test_two_series_is_an_error_naming_their_labels(
    prometheus: PrometheusLab, exporter: Exporter
) -> None:
    exporter.gauge.labels(site="shop", color="blue").set(0.0)
    exporter.gauge.labels(site="shop", color="green").set(0.0)
    source = PrometheusSource(prometheus.url, timeout=5)
    try:
        deadline = time.monotonic() + 15
        while True:
            m = await source.measure(rule('lab_error_ratio{site="shop"}'), GREEN)
            if m.error is not None or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    finally:
        await source.close()
    assert m.error is not None
    assert "query returned 2 series, expected one" in m.error
    assert 'color="blue"' in m.error and 'color="green"' in m.error
    assert judge(ERROR_RATIO, m) is Outcome.ERROR


async def test_bad_promql_is_an_error_with_prometheus_reason(prometheus: PrometheusLab) -> None:
    source = PrometheusSource(prometheus.url, timeout=5)
    try:
        m = await source.measure(rule("sum(rate(x[1m])"), GREEN)
    finally:
        await source.close()
    assert m.error is not None
    assert "HTTP Status Code 400" in m.error
    assert "parse error" in m.error


async def test_stopped_prometheus_is_an_error_not_a_crash(tmp_path: Path) -> None:
    lab = PrometheusLab(tmp_path, jobs=[])
    lab.start()
    source = PrometheusSource(lab.url, timeout=2)
    try:
        assert (await source.measure(rule("vector(1)"), GREEN)).value == 1.0
        lab.stop()
        m = await source.measure(rule("vector(1)"), GREEN)
    finally:
        lab.stop()
        await source.close()
    assert m.error == f"prometheus {lab.url}: unreachable (connection refused)"
    assert judge(ERROR_RATIO, m) is Outcome.ERROR


async def test_a_restarted_prometheus_answers_on_a_new_connection(tmp_path: Path) -> None:
    """The kept-alive connections die with Prometheus; the first query after its restart
    gets an answer, not an error about the old connection."""
    lab = PrometheusLab(tmp_path, jobs=[])
    lab.start()
    source = PrometheusSource(lab.url, timeout=2)
    try:
        assert (await asyncio.gather(*(source.measure(rule(f"vector({i})"), GREEN)
                                       for i in range(8))))[7].value == 7.0
        lab.stop()
        lab.start()
        after = await asyncio.gather(*(source.measure(rule(f"vector({i})"), GREEN)
                                       for i in range(8)))
    finally:
        lab.stop()
        await source.close()
    assert [(m.value, m.error) for m in after] == [(float(i), None) for i in range(8)]


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server that accepts connections and never answers: a hung Prometheus."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


async def test_hung_prometheus_times_out_with_the_configured_timeout(silent_server: str) -> None:
    source = PrometheusSource(silent_server, timeout=1.0)
    try:
        start = time.monotonic()
        m = await source.measure(rule("vector(1)"), GREEN)
        took = time.monotonic() - start
    finally:
        await source.close()
    assert m.error == f"prometheus {silent_server}: no answer in 1s"
    assert 0.9 <= took < 3.0


async def test_same_query_in_one_tick_is_sent_once(prometheus: PrometheusLab) -> None:
    source = PrometheusSource(prometheus.url, timeout=5)
    calls = 0
    real = source.query

    async def counting(query: str) -> Measurement:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.1)
        return await real(query)

    source.query = counting  # type: ignore[method-assign]
    try:
        results = await asyncio.gather(*(source.measure(rule("vector(2)"), GREEN)
                                         for _ in range(5)))
    finally:
        await source.close()
    assert [m.value for m in results] == [2.0] * 5
    assert calls == 1


async def test_a_hung_prometheus_fails_a_whole_tick_in_about_one_timeout(
    silent_server: str,
) -> None:
    """40 queries on 8 connections: those waiting for a connection count that wait in their
    timeout, so a silent Prometheus fails the whole tick in one timeout, not five."""
    source = PrometheusSource(silent_server, timeout=1.0)
    try:
        start = time.monotonic()
        results = await asyncio.gather(*(source.measure(rule(f"vector({i})"), GREEN)
                                         for i in range(40)))
        took = time.monotonic() - start
    finally:
        await source.close()
    assert all(m.error is not None and "no answer in 1s" in m.error for m in results)
    assert took < 3.0


async def test_a_tick_of_many_distinct_queries_gets_each_its_own_answer(
    prometheus: PrometheusLab,
) -> None:
    source = PrometheusSource(prometheus.url, timeout=5)
    try:
        results = await asyncio.gather(*(source.measure(rule(f"vector({i})"), GREEN)
                                         for i in range(200)))
    finally:
        await source.close()
    assert [m.value for m in results] == [float(i) for i in range(200)]
