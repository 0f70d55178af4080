"""The rule manager without a daemon: a reload keeps surviving rules' state and deletes the
series of removed ones; the memory it hands the store changes only when a restart would care;
`restart_needed` names what a running daemon cannot take."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from prometheus_client import generate_latest

from watchdog.config import LoadedConfig, StoreConfig, load
from watchdog.measurement import Measurement
from watchdog.metrics import Metrics
from watchdog.rulemanager import RuleManager, restart_needed
from watchdog.rules import Outcome, RuleStatus, State, evaluate

T0 = 1_796_000_000.0


def rule(name: str, for_: str = "30s") -> dict[str, Any]:
    return {"name": name, "source": "http", "path": "/web/health", "min": 1, "for": for_}


def write(tmp_path: Path, rules: list[dict[str, Any]], listen: str = "127.0.0.1:9721",
          interval: str = "10s") -> LoadedConfig:
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"rules": rules}))
    config = {
        "api": {"listen": listen}, "state_dir": "state", "rule_files": ["rules.yml"],
        "sites": {"odoo": {
            "router": {"kind": "haproxy", "socket": "/run/haproxy/admin.sock",
                       "backend": "odoo"},
            "colors": {"blue": {"server": "odoo-blue", "url": "http://127.0.0.1:8069"},
                       "green": {"server": "odoo-green", "url": "http://127.0.0.1:9069"}},
            "rollout": {"interval": interval}}},
    }
    path = tmp_path / "watchdog.yml"
    path.write_text(yaml.safe_dump(config))
    return load(path)


def manager(loaded: LoadedConfig) -> tuple[RuleManager, Metrics, list[tuple[Any, ...]]]:
    posted: list[tuple[Any, ...]] = []
    metrics = Metrics()
    return (RuleManager(loaded, {}, metrics, lambda *a, **k: posted.append(a), lambda: T0),
            metrics, posted)


def pending(since: float) -> RuleStatus:
    return RuleStatus(State.PENDING, since, since, Outcome.BREACH, 0.0, "HTTP 503", since)


def exported(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_a_reload_keeps_a_surviving_rules_state_and_drops_a_removed_rules_series(
    tmp_path: Path,
) -> None:
    mgr, metrics, _ = manager(write(tmp_path, [rule("health"), rule("login")]))
    for name in ("health", "login"):
        mgr.statuses.setdefault("odoo", {})[(name, "blue")] = pending(T0)
        metrics.rule_state.labels("odoo", name, "blue").set(1)
    assert 'rule="login"' in exported(metrics)

    mgr.update(write(tmp_path, [rule("health", for_="1m")]), ["odoo"])

    assert mgr.statuses["odoo"] == {("health", "blue"): pending(T0)}  # since kept
    assert 'rule="login"' not in exported(metrics)
    assert 'rule="health"' in exported(metrics)
    assert [r.name for r in mgr.rules_for("odoo")] == ["health"]
    assert mgr.rules_for("odoo")[0].for_ == 60.0


def test_the_views_carry_each_rules_threshold(tmp_path: Path) -> None:
    mgr, _, _ = manager(write(tmp_path, [rule("health")]))
    mgr.statuses["odoo"] = {("health", "green"): pending(T0), ("health", "blue"): RuleStatus()}
    views = mgr.views("odoo", "green")
    assert list(views) == ["health"]
    assert views["health"].state is State.PENDING
    assert views["health"].threshold == ">= 1"


def test_memory_changes_only_when_a_state_or_its_start_moves(tmp_path: Path) -> None:
    mgr, _, _ = manager(write(tmp_path, [rule("health")]))
    statuses = mgr.statuses.setdefault("odoo", {})
    statuses[("health", "blue")] = pending(T0)
    first = mgr.memory("odoo")
    assert first is not None and first[0]["state"] == "pending" and first[0]["since"] == T0
    statuses[("health", "blue")] = RuleStatus(State.PENDING, T0, T0, Outcome.BREACH, 0.0,
                                              "HTTP 502", T0 + 5)
    assert mgr.memory("odoo") is None  # same state, same since: no write
    statuses[("health", "blue")] = RuleStatus(State.FIRING, T0, T0 + 30, Outcome.BREACH)
    again = mgr.memory("odoo")
    assert again is not None and again[0]["state"] == "firing"


def test_restore_takes_back_rules_still_in_force_only(tmp_path: Path) -> None:
    loaded = write(tmp_path, [rule("health")])
    mgr, _, _ = manager(loaded)
    mgr.statuses["odoo"] = {("health", "blue"): pending(T0)}
    stored = mgr.memory("odoo")
    assert stored is not None
    stored.append({"rule": "gone", "color": "blue", "state": "firing"})
    stored.append({"rule": "health", "color": "red", "state": "firing"})

    fresh, _, _ = manager(loaded)
    assert fresh.restore("odoo", stored) == 1
    assert fresh.statuses["odoo"] == {("health", "blue"): pending(T0)}
    assert fresh.memory("odoo") is None  # what was restored is what is stored


def test_measuring_a_restored_pending_rule_fires_at_the_original_deadline(
    tmp_path: Path,
) -> None:
    loaded = write(tmp_path, [rule("health", for_="20s")])
    mgr, _, _ = manager(loaded)
    mgr.restore("odoo", [{"rule": "health", "color": "blue", "state": "pending", "since": T0,
                          "changed_at": T0, "outcome": "breach", "value": 0.0}])
    before = mgr.statuses["odoo"][("health", "blue")]
    health = mgr.rules_for("odoo")[0]
    down = Measurement(0.0, None, "HTTP 503")
    assert evaluate(health, before, down, T0 + 19).state is State.PENDING
    assert evaluate(health, before, down, T0 + 20).state is State.FIRING


def test_restart_needed_names_what_a_running_daemon_does_not_take(tmp_path: Path) -> None:
    old = write(tmp_path, [rule("health")]).config
    assert restart_needed(old, write(tmp_path, [rule("health", "1m")], interval="5s").config) == []
    changed = write(tmp_path, [rule("health")], listen="127.0.0.1:9722").config
    assert restart_needed(old, changed) == ["api changed: restart the daemon to apply it"]
    moved = old.model_copy(update={"store": StoreConfig(kind="postgresql", dsn_file=Path("d"))})
    assert restart_needed(old, moved) == ["store changed: restart the daemon to apply it"]
