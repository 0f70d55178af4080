"""`odoo-watchdog backtest` (DESIGN.md §16): the pure replay with a fake series, then a real
Prometheus 2.42 whose history `promtool tsdb create-blocks-from openmetrics` wrote, with a
fault at a known time."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from watchdog.backtest import (
    MAX_POINTS,
    BacktestError,
    Interval,
    RangeClient,
    plan_chunks,
    replay,
    rfc3339,
    run_backtest,
)
from watchdog.cli import main
from watchdog.config import load
from watchdog.lab.procs import free_port
from watchdog.lab.prometheus import PrometheusLab
from watchdog.measurement import Measurement
from watchdog.rulefiles import PrometheusRule

STEP = 30.0
RATIO = ('sum(rate(lab_responses_total{{server="{{{{ server }}}}",code="5xx"}}[{w}]))'
         ' / sum(rate(lab_responses_total{{server="{{{{ server }}}}"}}[{w}]))')


def rule(**kw: object) -> PrometheusRule:
    data: dict[str, object] = {"name": "r", "source": "prometheus", "query": "up", "max": 1.0,
                               "for": "60s", "no_data": "hold"}
    data.update(kw)
    return PrometheusRule.model_validate(data)


def series(values: list[float | None]) -> list[Measurement]:
    return [Measurement.no_data("empty result") if v is None else Measurement(v)
            for v in values]


# --- the pure replay -------------------------------------------------------------------------

def test_replay_pending_then_firing_after_for_holds_on_no_data_and_one_ok_clears() -> None:
    r = rule(on_fire="rollback")
    values: list[float | None] = [0, 0, 2, 3, 2, 2, 2, 2, 5, None, None, 2, 0, 0, 2, 0]
    times = [i * 10.0 for i in range(len(values))]
    intervals, counts = replay(r, times, series(values))
    # breach from t=20; `for: 60s` reached at t=80; no data at 90, 100 holds it firing;
    # the ok at 120 clears; a lone breach at 140 is pending until the ok at 150.
    assert intervals == [
        Interval("pending", 20.0, 80.0, 3.0, "hold"),
        Interval("firing", 80.0, 120.0, 5.0, "rollback"),
        Interval("pending", 140.0, 150.0, 2.0, "hold"),
    ]
    assert counts == {"ok": 5, "breach": 9, "no_data": 2}


def test_replay_no_data_policies_and_min_thresholds() -> None:
    values: list[float | None] = [0.5, None, None, None, 0.5]
    times = [i * 30.0 for i in range(len(values))]
    breach = rule(no_data="breach", **{"for": "60s"}, on_fire="pause")
    assert replay(breach, times, series(values))[0] == [
        Interval("pending", 30.0, 90.0, None, "hold"),
        Interval("firing", 90.0, 120.0, None, "pause")]
    # under hold an ok rule only holds: never pending, never firing
    assert replay(rule(no_data="hold"), times, series(values))[0] == []
    low = rule(max=None, min=10.0, **{"for": "0s"})
    assert replay(low, times[:4], series([12, 3, 1, 12]))[0] == [
        Interval("firing", 30.0, 90.0, 1.0, "rollback")]


def test_the_quiet_shortcut_changes_nothing() -> None:
    rng = random.Random(15)
    for policy in ("ok", "hold", "breach"):
        r = rule(no_data=policy, **{"for": "90s"})
        values = [None if rng.random() < 0.1 else rng.choice([0.0, 0.5, 2.0, 7.0])
                  for _ in range(3000)]
        times = [i * 30.0 for i in range(len(values))]
        assert (replay(r, times, series(values), quiet_shortcut=True)
                == replay(r, times, series(values), quiet_shortcut=False))


def test_plan_chunks_stays_under_the_point_limit() -> None:
    chunks = plan_chunks(0.0, 30.0, 20160)
    assert chunks == [(0, 11000), (11000, 9160)]
    assert plan_chunks(0.0, 30.0, 7, max_points=3) == [(0, 3), (3, 3), (6, 1)]


# --- a real Prometheus with a written history ---------------------------------------------

@dataclass
class History:
    prometheus: PrometheusLab
    now: float
    fault_start: float  # green's 5xx jump
    fault_end: float
    begin: float  # first sample


def _openmetrics(path: Path, begin: float, end: float, fault: tuple[float, float]) -> None:
    """Two colours, 10 requests/s each and 1 % of 5xx; green's 5xx run at 5/s during fault."""
    lines = ["# TYPE lab_responses counter"]
    for server in ("odoo-blue", "odoo-green"):
        for code in ("2xx", "5xx"):
            total, t = 0.0, begin
            while t <= end:
                lines.append(f'lab_responses_total{{server="{server}",code="{code}"}} '
                             f"{total:.1f} {t:.0f}")
                rate = 9.9 if code == "2xx" else 0.1
                if code == "5xx" and server == "odoo-green" and fault[0] <= t < fault[1]:
                    rate = 5.0
                total += rate * 15
                t += 15
    lines.append("# EOF")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    workdir = tmp_path_factory.mktemp("backtest-prom")
    now = math.floor(time.time() / STEP) * STEP
    begin, end = now - 3 * 86400, now - 60
    fault_start = now - 2 * 86400
    fault_end = fault_start + 600
    source = workdir / "history.om"
    _openmetrics(source, begin, end, (fault_start, fault_end))
    subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", "-q", str(source),
                    str(workdir / "tsdb")], check=True, capture_output=True, timeout=120)
    lab = PrometheusLab(workdir, jobs=[])
    # the lab keeps 2h; this history is 3 days old
    lab.process.argv = [a.replace("retention.time=2h", "retention.time=30d")
                        for a in lab.process.argv]
    with lab:
        yield History(lab, now, fault_start, fault_end, begin)


def write_config(tmp: Path, prometheus_url: str, rules: str) -> Path:
    (tmp / "rules.yml").write_text(rules)
    config = tmp / "watchdog.yml"
    config.write_text(f"""\
prometheus: {{url: "{prometheus_url}"}}
rule_files: [rules.yml]
sites:
  shop:
    router: {{kind: haproxy, socket: /run/haproxy/admin.sock, backend: odoo}}
    colors:
      blue: {{server: odoo-blue, url: http://127.0.0.1:8069}}
      green: {{server: odoo-green, url: http://127.0.0.1:9069}}
  quiet:
    router: {{kind: haproxy, socket: /run/haproxy/admin.sock, backend: odoo}}
    colors:
      blue: {{server: odoo-blue, url: http://127.0.0.1:8069}}
      green: {{server: odoo-green, url: http://127.0.0.1:9069}}
""")
    return config


RULES = f"""\
rules:
  - name: error_ratio
    source: prometheus
    query: '{RATIO.format(w="2m")}'
    max: 0.05
    for: 2m
    on_fire: rollback
    sites: [shop]
  - name: errors_per_second
    source: prometheus
    query: 'sum(rate(lab_responses_total{{server="{{{{ server }}}}",code="5xx"}}[1m]))'
    max: 50
    on_fire: pause
    sites: [shop]
  - name: by_code
    source: prometheus
    query: 'rate(lab_responses_total{{server="{{{{ server }}}}"}}[1m])'
    max: 1000
    no_data: ok
    sites: [shop]
  - name: smoke
    source: http
    path: /web/health
    max: 1
"""


@pytest.fixture
def config(tmp_path: Path, history: History) -> Path:
    return write_config(tmp_path, history.prometheus.url, RULES)


def test_a_fault_two_days_ago_fires_once_for_green_only(config: Path, history: History) -> None:
    loaded = load(config)
    result = run_backtest(loaded, "shop", history.now - 3 * 86400 + 600, history.now, STEP)
    by = {(r.name, r.color): r for r in result.replays}
    assert sorted(by) == sorted((n, c) for n in ("error_ratio", "errors_per_second", "by_code")
                                for c in ("blue", "green"))
    green = by[("error_ratio", "green")]
    assert [i.state for i in green.intervals] == ["pending", "firing"]
    pending, firing = green.intervals
    window, for_ = 120.0, 120.0
    # the first step whose 2m rate sees the jump is pending; firing `for` later
    assert history.fault_start <= pending.start <= history.fault_start + 2 * STEP
    assert firing.start == pending.end == pending.start + for_
    # it stays firing through the fault and clears once the window has slid past it
    assert history.fault_end <= firing.end <= history.fault_end + window + STEP
    assert firing.action == "rollback"
    assert firing.peak is not None and 0.3 < firing.peak <= 0.51
    assert by[("error_ratio", "blue")].intervals == []
    assert all(r.intervals == [] for r in result.replays if r.name != "error_ratio")
    # more than one series at a step is an error, as live; no_data: ok lets it pass quietly
    codes = by[("by_code", "green")]
    assert codes.outcomes.get("error", 0) > 0.9 * len(codes.times)
    assert "series, expected one" in codes.errors[0]
    # before the history began: no data (error_ratio holds, never fires)
    early = run_backtest(loaded, "shop", history.begin - 3600, history.begin - 600, STEP,
                         ["blue"])
    assert all(r.outcomes.get("no_data") == len(r.times) for r in early.replays)


def test_chunks_give_the_same_result_as_one_query(config: Path, history: History) -> None:
    loaded = load(config)
    start, end = history.fault_start - 3 * 3600, history.fault_start + 3 * 3600
    one = run_backtest(loaded, "shop", start, end, STEP, ["green"])
    many = run_backtest(loaded, "shop", start, end, STEP, ["green"], max_points=97)
    assert one.requests == 3  # 721 steps: one query per rule
    assert many.requests == 3 * math.ceil(721 / 97)
    assert [r.intervals for r in many.replays] == [r.intervals for r in one.replays]
    assert [list(r.values) for r in many.replays[:2]] == [list(r.values) for r in one.replays[:2]]
    assert one.replays[0].intervals  # the fault is in the window


def test_prometheus_refuses_more_than_max_points_so_chunks_are_needed(history: History) -> None:
    query = 'sum(rate(lab_responses_total{server="odoo-blue"}[1m]))'
    base = history.now - 2 * 86400
    url = f"{history.prometheus.url}/api/v1/query_range"
    too_many = requests.post(url, data={"query": query, "start": base, "step": 1,
                                        "end": base + MAX_POINTS + 1}, timeout=30)
    assert too_many.status_code == 400
    assert "exceeded maximum resolution of 11,000 points" in too_many.json()["error"]
    client = RangeClient(history.prometheus.url, 30)
    [item] = client.query_range(query, base, base + MAX_POINTS - 1, 1)
    assert len(item["values"]) == MAX_POINTS


def test_json_has_design_shape(config: Path, history: History,
                               capsys: pytest.CaptureFixture[str]) -> None:
    start = rfc3339(history.fault_start - 1800)
    end = rfc3339(history.fault_start + 1800)
    code = main(["backtest", "-c", str(config), "shop", "--from", start, "--to", end,
                 "--color", "green", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert set(out) == {"site", "from", "to", "step", "rules"}
    assert (out["site"], out["from"], out["to"], out["step"]) == ("shop", start, end, "30s")
    assert [(r["name"], r["color"]) for r in out["rules"]] == [
        ("error_ratio", "green"), ("errors_per_second", "green"), ("by_code", "green")]
    for entry in out["rules"]:
        assert set(entry) == {"name", "color", "intervals"}
    intervals = out["rules"][0]["intervals"]
    assert [i["state"] for i in intervals] == ["pending", "firing"]
    for interval in intervals:
        assert set(interval) == {"state", "start", "end", "peak", "action"}
        assert interval["start"].endswith("Z") and interval["end"].endswith("Z")
    assert intervals[1]["action"] == "rollback"
    assert intervals[0]["start"] == rfc3339(history.fault_start + STEP) or \
        intervals[0]["start"] == rfc3339(history.fault_start)


def test_text_timeline_summary_and_html(config: Path, history: History, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    chart = tmp_path / "bt.html"
    code = main(["backtest", "-c", str(config), "shop", "--from", "2d1h", "--to", "1d",
                 "--html", str(chart)])
    text = capsys.readouterr().out
    assert code == 0
    assert "error_ratio: <= 0.05, for 2m, no_data hold, on_fire rollback" in text
    firing = [ln for ln in text.splitlines() if " firing " in ln]
    assert len(firing) == 1 and firing[0].split()[0] == "green" and "-> rollback" in firing[0]
    summary = text.split("summary:")[1]
    assert "would have rolled back: error_ratio (green) at " in summary
    assert "never fired: error_ratio (blue); errors_per_second (blue, green); " \
           "by_code (blue, green)" in summary
    page = chart.read_text()
    assert page.count("<svg") == 3 and "<script" not in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert 'fill="#d62728" fill-opacity' in page  # the firing interval is shaded


@pytest.mark.parametrize(("args", "message"), [
    (["shop", "--from", "yesterday"], "--from 'yesterday': write a duration"),
    (["shop", "--from", "2024-05-01T10:00:00"], "needs its zone"),
    (["shop", "--from", "1d", "--to", "2d"], "is not before --to"),
    (["shop", "--from", "1d", "--step", "30"], "--step: invalid duration '30'"),
    (["nowhere", "--from", "1d"], "no site 'nowhere'"),
    (["quiet", "--from", "1d"], "site 'quiet' has no rule with source: prometheus"),
])
def test_bad_input_is_one_line_and_exit_2(config: Path, args: list[str], message: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["backtest", "-c", str(config), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert message in err


def test_unreachable_prometheus_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"http://127.0.0.1:{free_port()}", RULES)
    done = subprocess.run([sys.executable, "-m", "watchdog.cli", "backtest", "-c", str(config),
                           "shop", "--from", "1h"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        done.stderr.strip()] and "unreachable (connection refused)" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_a_query_prometheus_refuses_is_an_error_at_every_step(tmp_path: Path,
                                                              history: History) -> None:
    config = write_config(tmp_path, history.prometheus.url, """\
rules:
  - {name: broken, source: prometheus, query: 'sum(rate(x[1m])', max: 1, no_data: breach}
""")
    with pytest.raises(BacktestError, match="no site"):
        run_backtest(load(config), "elsewhere", 0, 1, STEP)
    result = run_backtest(load(config), "shop", history.now - 600, history.now, STEP, ["blue"])
    [r] = result.replays
    assert r.outcomes == {"error": 21} and "parse error" in r.errors[0]
    assert [i.state for i in r.intervals] == ["firing"]  # no_data: breach, for 0s
