"""Config and rule files: the shipped examples load, and broken files fail with file:line."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from watchdog import reload
from watchdog.config import (
    ConfigError,
    HttpRule,
    LogsRule,
    PrometheusRule,
    check_template,
    load,
    render,
)
from watchdog.durations import DurationError, format_duration, parse_duration
from watchdog.rollout import steps_of
from watchdog.rulefiles import rule_paths

ROOT = Path(__file__).resolve().parent.parent
BROKEN = Path(__file__).resolve().parent / "data" / "broken"

RULES_CONFIG = """\
rule_files: [{rule_file}]
sites:
  odoo:
    router: {{kind: haproxy, socket: /run/haproxy/admin.sock, backend: odoo}}
    colors:
      blue: {{server: odoo-blue, url: http://127.0.0.1:8069}}
      green: {{server: odoo-green, url: http://127.0.0.1:9069}}
"""


def expected_by_file() -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for line in (BROKEN / "expected.txt").read_text().splitlines():
        out[line.split(":", 1)[0]].append(line)
    return out


EXPECTED = expected_by_file()
CASES = sorted(p.name for p in BROKEN.glob("*.yml"))


def test_corpus_is_large_and_every_file_has_expectations() -> None:
    assert len(CASES) >= 15
    assert sorted(EXPECTED) == CASES


def run_check(config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "watchdog.cli", "check", "-c", str(config)],
        cwd=cwd, capture_output=True, text=True, timeout=60, check=False,
    )


@pytest.mark.parametrize("name", CASES)
def test_check_reports_each_broken_file_with_file_and_line(name: str, tmp_path: Path) -> None:
    if name.startswith("rules-"):
        config = tmp_path / "watchdog.yml"
        config.write_text(RULES_CONFIG.format(rule_file=BROKEN / name))
    else:
        config = BROKEN / name
    result = run_check(config, cwd=BROKEN)
    assert result.returncode == 1, result.stdout + result.stderr
    problems = [ln for ln in result.stderr.splitlines() if not ln.startswith("FAILED")]
    assert problems == EXPECTED[name]
    assert "Traceback" not in result.stderr


def test_check_accepts_the_shipped_example_and_summarises(tmp_path: Path) -> None:
    result = run_check(ROOT / "deploy" / "examples" / "watchdog.yml", cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "SUCCESS" in result.stdout
    assert "site odoo: haproxy router, live blue" in result.stdout
    assert "canary 10 -> 50 -> pause -> 100" in result.stdout
    assert "5 rules from 1 file: http 1, logs 2, prometheus 2" in result.stdout


def test_check_reports_problems_of_config_and_rule_file_together(tmp_path: Path) -> None:
    (tmp_path / "r.yml").write_text("rules:\n  - name: x\n    source: http\n    path: /\n")
    (tmp_path / "w.yml").write_text("rule_files: [r.yml]\nsites: {}\n")
    result = run_check(tmp_path / "w.yml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines()[:2] == [
        "r.yml:2: rule 'x': needs a threshold: min, max or both",
        "w.yml:2: sites: needs at least 1 entry, found none",
    ]


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    result = run_check(tmp_path / "nope.yml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("nope.yml:0: file not found")


def test_missing_rule_file_is_named(tmp_path: Path) -> None:
    config = tmp_path / "w.yml"
    config.write_text(RULES_CONFIG.format(rule_file="missing.yml"))
    with pytest.raises(ConfigError) as info:
        load(config)
    assert [p.message for p in info.value.problems] == ["file not found"]
    assert info.value.problems[0].file.endswith("missing.yml")


def test_glob_that_matches_nothing_is_a_warning(tmp_path: Path) -> None:
    config = tmp_path / "w.yml"
    config.write_text(RULES_CONFIG.format(rule_file="rules.d/*.yml"))
    loaded = load(config)
    assert loaded.warnings == ["rule_files pattern 'rules.d/*.yml' matches no file"]


def test_rule_paths_are_relative_to_the_config_sorted_and_each_file_once(
    tmp_path: Path,
) -> None:
    rules_d = tmp_path / "etc" / "rules.d"
    rules_d.mkdir(parents=True)
    for name in ("b.yml", "a.yml", "notes.txt"):
        (rules_d / name).write_text("rules: []\n")
    elsewhere = tmp_path / "abs.yml"
    config = tmp_path / "etc" / "watchdog.yml"
    warnings: list[str] = []
    paths = rule_paths(config, ["rules.d/b.yml", "rules.d/*.yml", str(elsewhere), "none/*.yml"],
                       warnings)
    # A plain path is kept even when missing: loading it names the file.
    assert paths == [rules_d / "b.yml", rules_d / "a.yml", elsewhere]
    assert warnings == ["rule_files pattern 'none/*.yml' matches no file"]
    # The daemon's reload poll watches the same files.
    assert reload.rule_paths is rule_paths


def test_shipped_rules_load_with_their_types_and_defaults() -> None:
    loaded = load(ROOT / "deploy" / "examples" / "watchdog.yml")
    by_name = {r.name: r for r in loaded.rules}
    assert isinstance(by_name["error_rate"], PrometheusRule)
    assert by_name["error_rate"].for_ == 60
    assert by_name["error_rate"].max == 0.01
    assert isinstance(by_name["log_errors"], LogsRule)
    assert by_name["log_errors"].window == 300
    assert isinstance(by_name["health"], HttpRule)
    assert by_name["health"].min == 1
    assert by_name["p95_latency"].no_data == "hold"  # the default
    site = loaded.config.sites["odoo"]
    assert site.rollout.interval == 30
    assert site.rollout.keep_previous == 48 * 3600
    assert isinstance(by_name["broken_deployment_lines"], LogsRule)
    assert by_name["broken_deployment_lines"].max == 0
    assert loaded.origins["health"].line == 72


def test_defaults_of_a_minimal_config(tmp_path: Path) -> None:
    config = tmp_path / "w.yml"
    config.write_text(RULES_CONFIG.format(rule_file="x.yml").replace("rule_files: [x.yml]\n", ""))
    cfg = load(config).config
    assert cfg.api.listen == "127.0.0.1:9721"
    site = cfg.sites["odoo"]
    assert [s.weight for s in steps_of(site.rollout)] == [10, 50, 100]
    assert site.rollout.smoke == ["health", "login"]
    assert site.live == "blue"


def test_bluegreen_strategy_is_one_step_of_100(tmp_path: Path) -> None:
    config = tmp_path / "w.yml"
    config.write_text(
        RULES_CONFIG.format(rule_file="x.yml").replace("rule_files: [x.yml]\n", "")
        + "    rollout: {strategy: bluegreen}\n"
    )
    steps = steps_of(load(config).config.sites["odoo"].rollout)
    assert [s.weight for s in steps] == [100]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30), ("5m", 300), ("2h", 7200), ("1d", 86400), ("1h30m", 5400),
     ("0s", 0), ("1.5s", 1.5)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["30", 30, "5 minutes", "", "1w", "-5s", True, None, "s"])
def test_parse_duration_refuses_what_is_not_a_duration(text: object) -> None:
    with pytest.raises(DurationError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (0.5, "500ms"), (30, "30s"), (90, "1m30s"), (86400, "1d")]
)
def test_format_duration_round_trips(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(format_duration(seconds)) == seconds


def test_render_fills_known_variables() -> None:
    text = 'x{site="{{ site }}",color="{{color}}"}'
    assert render(text, {"site": "odoo", "color": "green"}) == 'x{site="odoo",color="green"}'


def test_template_check_refuses_unknown_and_unbalanced() -> None:
    with pytest.raises(ValueError, match=r"unknown template variable \{\{ job \}\}"):
        check_template("{{ job }}")
    with pytest.raises(ValueError, match="unbalanced"):
        check_template("{{ site ")
    assert check_template('rate(x{a="b"}[1m])') == 'rate(x{a="b"}[1m])'
