"""`source: traffic` without a lab: the receiver's windows, the source's values, the rule model.

The windows (watchdog/traffic.py) and the source (watchdog/sources/traffic.py) take their time
from the caller, so a fake clock drives them here; the receiver's fast-path notification runs
on a real event loop with real UDP datagrams.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import socket
import time
from pathlib import Path

import pytest

from watchdog.accesslog import NOTIFY_EVERY, AccessLogReceiver
from watchdog.lab.procs import free_udp_port
from watchdog.measurement import Measurement
from watchdog.metrics import Metrics
from watchdog.rulefiles import TrafficRule, load_rule_file
from watchdog.rules import Outcome, RuleStatus, State, evaluate
from watchdog.sources.base import Target
from watchdog.sources.traffic import TrafficSource
from watchdog.traffic import HISTORY, PER_SECOND, TrafficWindow, quantile
from watchdog.yamlsrc import ConfigError


class FakeWindows:
    """The receiver's side the source reads: its clock and its windows."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.windows: dict[tuple[str, str], TrafficWindow] = {}

    def clock(self) -> float:
        return self.now

    def window(self, site: str, color: str) -> TrafficWindow:
        return self.windows.setdefault((site, color), TrafficWindow(rng=random.Random(1).random))

    def feed(self, color: str, per_second: int, seconds: int, *, errors: float = 0.0,
             latency: float = 0.1, seed: int = 0) -> None:
        """`per_second` requests a second for the `seconds` before now."""
        rnd = random.Random(seed)
        window = self.window("odoo", color)
        for second in range(int(self.now) - seconds + 1, int(self.now) + 1):
            for _ in range(per_second):
                status = b"500" if rnd.random() < errors else b"200"
                window.add(second, status, latency * rnd.uniform(0.8, 1.2))


def rule(**fields: object) -> TrafficRule:
    return TrafficRule.model_validate({"name": "r", "source": "traffic", **fields})


def target(color: str = "green", peer_weight: int | None = 90) -> Target:
    peer = "blue" if color == "green" else "green"
    return Target("odoo", color, f"odoo-{color}", "odoo", "http://127.0.0.1:1", 1.0,
                  peer=peer, peer_weight=peer_weight)


# ---------------------------------------------------------------- the window


def test_window_counts_requests_and_5xx_of_the_last_seconds_only() -> None:
    window = TrafficWindow()
    for second in range(100, 110):  # 10 requests a second, 1 of them a 502
        for i in range(10):
            window.add(second, b"502" if i == 0 else b"200", 0.05)
    view = window.view(109.5, 5)  # seconds 105..109
    assert (view.total, view.errors) == (50, 5)
    assert view.error_rate == pytest.approx(0.1)
    assert view.rps == pytest.approx(10.0)
    assert window.view(200.0, 30).total == 0  # all of it is older than 30 s by then


def test_window_slot_reused_when_its_second_comes_round_again() -> None:
    window = TrafficWindow(history=10)
    window.add(5, b"500", 1.0)
    window.add(15, b"200", 0.1)  # the same slot, ten seconds later
    view = window.view(15.0, 10)
    assert (view.total, view.errors, view.durations) == (1, 0, (0.1,))
    window.add(5, b"500", 1.0)  # a late line for a second the slot no longer holds
    assert window.view(15.0, 10).total == 1


def test_window_memory_is_bounded_whatever_the_traffic() -> None:
    window = TrafficWindow()
    for second in range(HISTORY * 2):
        for _ in range(PER_SECOND * 3):
            window.add(second, b"200", 0.01)
    assert window.memory() == HISTORY * PER_SECOND
    view = window.view(HISTORY * 2 - 1, HISTORY)
    assert view.total == HISTORY * PER_SECOND * 3  # the counts stay exact
    assert len(view.durations) == HISTORY * PER_SECOND
    assert set(view.weights) == {3.0}  # each kept duration stands for three requests


def test_reservoir_keeps_a_uniform_sample_of_a_busy_second() -> None:
    window = TrafficWindow(rng=random.Random(7).random)
    for i in range(10_000):  # durations 0..9.999 in order: a biased sample would show it
        window.add(1, b"200", i / 1000)
    kept = window.view(1.0, 1).durations
    assert len(kept) == PER_SECOND
    assert 3.5 < sum(kept) / len(kept) < 6.5  # the mean of 0..10 is 5
    assert sum(1 for v in kept if v > 5) == pytest.approx(50, abs=18)


def test_weighted_quantile_counts_busy_seconds_by_their_requests() -> None:
    # one quiet second of slow requests (10 at 1.0 s), one busy second of fast ones (1,000 at
    # 0.1 s, of which 100 kept): the P50 is fast, as it is over the requests themselves.
    window = TrafficWindow()
    for _ in range(10):
        window.add(1, b"200", 1.0)
    for _ in range(1000):
        window.add(2, b"200", 0.1)
    view = window.view(2.0, 2)
    assert view.quantile(0.5) == 0.1
    assert view.quantile(0.995) == 1.0
    assert quantile((), (), 0.5) is None
    assert quantile((3.0, 1.0, 2.0), (1.0, 1.0, 1.0), 0.5) == 2.0


# ---------------------------------------------------------------- the source


def test_error_rate_p95_and_rps_of_the_target_colour() -> None:
    windows = FakeWindows()
    windows.feed("green", 20, 30, errors=0.1, latency=0.2, seed=3)
    source = TrafficSource(windows)
    m = source.measure_now(rule(measure="error_rate", window="30s", max=0.5), target())
    assert m.value == pytest.approx(0.1, abs=0.04)
    assert m.comparison is not None and dict(m.comparison.samples) == {"green": 600}
    p95 = source.measure_now(rule(measure="p95", window="30s", max=1), target()).value
    assert p95 is not None and 0.2 < p95 <= 0.24
    rps = source.measure_now(rule(measure="rps", window="30s", min=1), target()).value
    assert rps == pytest.approx(20.0)


def test_min_requests_gives_no_data_and_the_rule_holds() -> None:
    windows = FakeWindows()
    windows.feed("green", 1, 10)
    r = rule(measure="error_rate", window="30s", min_requests=50, max=0.02)
    m = TrafficSource(windows).measure_now(r, target())
    assert m.value is None and m.error is None
    assert "10 requests in 30s, fewer than min_requests 50" in m.detail
    assert evaluate(r, RuleStatus(), m, 0.0).state is State.HOLDING


def test_rps_needs_no_minimum_no_request_is_zero() -> None:
    m = TrafficSource(FakeWindows()).measure_now(rule(measure="rps", min=1, min_requests=5),
                                                 target())
    assert m.value == 0.0


def test_relative_to_live_is_the_ratio_of_the_two_colours() -> None:
    windows = FakeWindows()
    windows.feed("green", 10, 30, errors=0.3, seed=1)
    windows.feed("blue", 90, 30, errors=0.3, seed=2)
    r = rule(measure="error_rate", window="30s", relative_to="live", max=1.5)
    both_bad = TrafficSource(windows).measure_now(r, target())
    assert both_bad.value is not None and 0.7 < both_bad.value < 1.3
    assert evaluate(r, RuleStatus(), both_bad, 0.0).state is State.OK  # not the candidate
    windows.windows.clear()
    windows.feed("green", 10, 30, errors=0.3, seed=1)
    windows.feed("blue", 90, 30, errors=0.01, seed=2)
    only_green = TrafficSource(windows).measure_now(r, target())
    assert only_green.value is not None and only_green.value > 5
    assert evaluate(r, RuleStatus(), only_green, 0.0).state is State.FIRING
    assert only_green.comparison is not None
    assert dict(only_green.comparison.samples) == {"green": 300, "blue": 2700}


def test_relative_ratio_of_zero_over_zero_is_one_and_x_over_zero_infinite() -> None:
    windows = FakeWindows()
    windows.feed("green", 10, 30)
    windows.feed("blue", 10, 30)
    r = rule(measure="error_rate", window="30s", relative_to="live", max=2)
    assert TrafficSource(windows).measure_now(r, target()).value == 1.0
    windows.window("odoo", "green").add(int(windows.now), b"503", 0.1)
    assert TrafficSource(windows).measure_now(r, target()).value == math.inf


def test_compared_rules_skip_while_the_live_colour_has_no_weight() -> None:
    windows = FakeWindows()
    windows.feed("green", 10, 30, errors=0.5)
    for r in (rule(measure="error_rate", relative_to="live", max=1.5),
              rule(measure="error_rate", judge={"test": "proportions"})):
        m = TrafficSource(windows).measure_now(r, target(peer_weight=0))
        assert m.skipped and "blue has no traffic" in m.detail
        after = evaluate(r, RuleStatus(State.HOLDING), m, 0.0)
        assert (after.state, after.outcome) == (State.OK, Outcome.SKIPPED)
    # with weight but no requests yet it is no data, which holds: missing data never promotes
    r = rule(measure="error_rate", relative_to="live", max=1.5)
    m = TrafficSource(windows).measure_now(r, target(peer_weight=90))
    assert not m.skipped and m.value is None
    assert evaluate(r, RuleStatus(), m, 0.0).state is State.HOLDING


def test_judge_rules_carry_verdict_p_value_and_samples() -> None:
    windows = FakeWindows()
    windows.feed("green", 10, 60, errors=0.25, seed=5)
    windows.feed("blue", 90, 60, errors=0.02, seed=6)
    r = rule(measure="error_rate", window="1m", judge={"test": "proportions", "max_ratio": 2})
    m = TrafficSource(windows).measure_now(r, target())
    assert m.breach is True and m.comparison is not None
    assert m.comparison.p_value is not None and m.comparison.p_value < 0.01
    assert m.value == m.comparison.ratio and m.value is not None and m.value > 5
    assert evaluate(r, RuleStatus(), m, 0.0).state is State.FIRING
    windows.windows.clear()
    windows.feed("green", 10, 60, latency=0.15, seed=5)
    windows.feed("blue", 90, 60, latency=0.1, seed=6)
    slow = rule(measure="latency", window="1m", judge={"test": "mann_whitney", "max_ratio": 1.2})
    m = TrafficSource(windows).measure_now(slow, target())
    assert m.breach is True and m.value == pytest.approx(1.5, rel=0.1)
    same = rule(measure="latency", window="1m", judge={"test": "mann_whitney", "max_ratio": 1.6})
    assert TrafficSource(windows).measure_now(same, target()).breach is False


def test_no_receiver_is_an_error_not_a_crash() -> None:
    m = TrafficSource(None).measure_now(rule(measure="rps", min=1), target())
    assert m.error is not None and "access_log" in m.error


def test_measurement_verdict_overrides_thresholds() -> None:
    r = rule(measure="error_rate", judge={"test": "proportions"})
    assert evaluate(r, RuleStatus(), Measurement(9.0, breach=False), 0.0).state is State.OK


# ---------------------------------------------------------------- the rule model


def test_rule_file_errors_name_what_is_wrong(tmp_path: Path) -> None:
    path = tmp_path / "rules.yml"
    path.write_text("""\
rules:
  - {name: a, source: traffic, measure: latency, max: 2}
  - {name: b, source: traffic, measure: error_rate, judge: {test: mann_whitney}}
  - {name: c, source: traffic, measure: p95, judge: {test: mann_whitney}, max: 1}
  - {name: d, source: traffic, measure: rps, relative_to: live, max: 2}
  - {name: e, source: traffic, measure: p95, window: 10m, max: 1}
  - {name: f, source: traffic, measure: p95}
  - {name: g, source: traffic, measure: error_rate, judge: {test: proportions, confidence: 1.5}}
""")
    with pytest.raises(ConfigError) as info:
        load_rule_file(path, "rules.yml")
    text = str(info.value)
    for expected in ("rules.yml:2: rule 'a': measure latency is the per-request sample",
                     "rules.yml:3: rule 'b': judge test mann_whitney does not fit measure "
                     "error_rate",
                     "rules.yml:4: rule 'c': a judge takes no min or max",
                     "rules.yml:5: rule 'd': rps relative to live",
                     "rules.yml:6: rule 'e': window",
                     "rules.yml:7: rule 'f': needs a threshold",
                     "rules.yml:8: rule 'g': judge.confidence"):
        assert expected in text, text


def test_threshold_text_says_what_breaches() -> None:
    assert rule(measure="error_rate", judge={"test": "proportions", "max_ratio": 2}) \
        .threshold_text() == "not worse than live by x2 at 0.99 confidence (proportions)"
    assert rule(measure="p95", relative_to="live", max=1.5).threshold_text() \
        == "candidate/live <= 1.5"


# ---------------------------------------------------------------- the receiver


HAPROXY_LINE = ("<134>Dec  3 10:00:00 haproxy[1]: 127.0.0.1:4242 [03/Dec/2026:10:00:00.000] "
                "odoo odoo/odoo-{color} 0/0/0/{ms}/{ms} {status} 120 - - ---- 1/1/0/0/0 0/0 "
                '"GET /web/health HTTP/1.1"')


async def test_receiver_feeds_windows_and_tells_sites_at_most_every_100ms() -> None:
    told: list[tuple[float, str]] = []
    port = free_udp_port()
    receiver = AccessLogReceiver(f"127.0.0.1:{port}", "haproxy",
                                 {"odoo/odoo-green": ("odoo", "green")}, Metrics())
    receiver.on_lines = lambda site: told.append((time.monotonic(), site))
    async with receiver:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            started = time.monotonic()
            while time.monotonic() - started < 1.0:  # a line every 5 ms for a second
                sock.sendto(HAPROXY_LINE.format(color="green", ms=12, status=503).encode(),
                            ("127.0.0.1", port))
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.3)
        finally:
            sock.close()
    view = receiver.window("odoo", "green").view(time.monotonic(), 10)
    assert view.total == receiver.parsed > 100
    assert view.errors == view.total
    assert set(view.durations) == {0.012}
    assert {site for _, site in told} == {"odoo"}
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(told)]
    assert 6 <= len(told) <= 13, told  # about 10 in a second, not one per line
    assert min(gaps) >= NOTIFY_EVERY * 0.9
    assert told[-1][0] - started >= 0.95  # the last lines were told too, not dropped


# ---------------------------------------------------------------- the shipped rules

ROOT = Path(__file__).resolve().parent.parent

SITE = """\
sites:
  odoo:
    router: {kind: haproxy, socket: /run/haproxy/admin.sock, backend: odoo}
    colors:
      blue: {server: odoo-blue, url: "http://127.0.0.1:8069"}
      green: {server: odoo-green, url: "http://127.0.0.1:9069"}
"""


def test_access_log_and_no_prometheus_section_is_a_valid_config(tmp_path: Path) -> None:
    from watchdog.config import load

    config = tmp_path / "watchdog.yml"
    config.write_text(f"rule_files: [{ROOT / 'rules' / 'traffic.yml'}]\n"
                      "access_log: {listen: '127.0.0.1:5140'}\n" + SITE)
    loaded = load(config)
    assert "prometheus" not in config.read_text()
    sources = {r.source for r in loaded.rules}
    assert sources <= {"traffic", "http"} and "traffic" in sources  # nothing reads Prometheus
    judged = {r.judge.test for r in loaded.rules if isinstance(r, TrafficRule) and r.judge}
    assert judged == {"proportions", "mann_whitney"}


def test_traffic_rules_without_access_log_name_what_is_missing(tmp_path: Path) -> None:
    from watchdog.config import load

    config = tmp_path / "watchdog.yml"
    config.write_text(f"rule_files: [{ROOT / 'rules' / 'traffic.yml'}]\n" + SITE)
    with pytest.raises(ConfigError) as info:
        load(config)
    assert "(source: traffic), but the config has no access_log: section" in str(info.value)


def test_latency_judge_needs_the_medians_apart_by_min_difference() -> None:
    # Whole milliseconds, as HAProxy logs them: 2 ms against 1 ms is "twice as slow" and,
    # with hundreds of requests, significant; it is one millisecond.
    windows = FakeWindows()
    for color, ms, n in (("green", 0.002, 10), ("blue", 0.001, 90)):
        window = windows.window("odoo", color)
        for second in range(int(windows.now) - 59, int(windows.now) + 1):
            for _ in range(n):
                window.add(second, b"200", ms)
    floor = rule(measure="latency", window="1m", judge={"test": "mann_whitney", "max_ratio": 1.2})
    m = TrafficSource(windows).measure_now(floor, target())
    assert m.breach is False and m.value == pytest.approx(2.0)
    assert "not more than min_difference 5 ms" in m.detail
    bare = rule(measure="latency", window="1m",
                judge={"test": "mann_whitney", "max_ratio": 1.2, "min_difference": "0s"})
    assert TrafficSource(windows).measure_now(bare, target()).breach is True


def test_min_difference_is_refused_on_a_proportions_judge() -> None:
    with pytest.raises(ValueError, match="min_difference is a latency"):
        rule(measure="error_rate", judge={"test": "proportions", "min_difference": "5ms"})


def test_an_infinite_ratio_survives_the_stored_memory() -> None:
    from watchdog.measurement import Comparison

    stored = Comparison((("green", 3), ("blue", 9)), 0.004, math.inf).as_json()
    assert stored["ratio"] == "inf"
    assert Comparison.from_json(stored).ratio == math.inf
