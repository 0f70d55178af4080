"""The rollout history in the state store (store.save_tick, DESIGN.md §16): each tick's weights
and rule rows per rollout, read back in order; bounded per rollout (the newest HISTORY_TICKS
ticks) and per site (the newest HISTORY_ROLLOUTS rollouts), pruned in the tick's own
transaction; an ended rollout's last tick is written once, a restart does not add another; a
store that cannot write raises StoreError and counts it as "history". A real SQLite file, a
fake clock."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from watchdog import store as store_module
from watchdog.rollout import Event
from watchdog.store import HISTORY_ROLLOUTS, HISTORY_TICKS, Store, StoreError


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def info(rid: str, phase: str = "progressing", started: float = 1_700_000_000.0) -> dict[str, Any]:
    return {"id": rid, "from": "blue", "to": "green", "version": "17.0", "strategy": "canary",
            "phase": phase, "step": 1, "steps": 3, "started_at": started, "finished_at": None}


def rules(value: float, state: str = "ok") -> list[dict[str, Any]]:
    return [{"name": "error_rate", "color": "green", "value": value, "threshold": "<= 0.05",
             "state": state, "outcome": "ok" if state == "ok" else "breach"},
            {"name": "health", "color": "green", "value": 1.0, "threshold": ">= 1",
             "state": "ok", "outcome": "ok"}]


def count(store: Store, table: str, rid: str) -> int:
    key = "id" if table == "rollouts" else "rollout_id"
    with sqlite3.connect(store.path) as db:
        return int(db.execute(f"SELECT count(*) FROM {table} WHERE {key} = ?",  # noqa: S608
                              (rid,)).fetchone()[0])


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[Store]:
    s = Store(tmp_path / "state", clock, busy_timeout=0.05)
    yield s
    s.close()


def test_the_bound_is_stated() -> None:
    assert (HISTORY_TICKS, HISTORY_ROLLOUTS) == (5000, 50)


def test_ticks_come_back_in_order_with_weights_and_rules(store: Store, clock: Clock) -> None:
    for i, split in enumerate([{"blue": 90, "green": 10}, {"blue": 50, "green": 50}]):
        clock.now += 1
        assert store.save_tick("odoo", info("r1"), split, rules(0.01 * i))
    got = store.rollout("r1")
    assert got is not None
    assert got["site"] == "odoo" and got["ticks"] == 2 and got["info"]["version"] == "17.0"
    assert [t["weights"] for t in got["history"]] == [{"blue": 90, "green": 10},
                                                      {"blue": 50, "green": 50}]
    assert [t["at"] for t in got["history"]] == [1_700_000_001.0, 1_700_000_002.0]
    assert got["history"][1]["rules"][0] == {
        "name": "error_rate", "color": "green", "value": 0.01, "threshold": "<= 0.05",
        "state": "ok", "outcome": "ok"}
    assert store.rollout("nope") is None


def test_a_value_that_is_not_finite_is_stored_as_no_value(store: Store) -> None:
    store.save_tick("odoo", info("r1"), {"blue": 100, "green": 0},
                    [{"name": "x", "color": "green", "value": float("nan"), "threshold": "",
                      "state": "holding", "outcome": "no_data"}])
    got = store.rollout("r1")
    assert got is not None and got["history"][0]["rules"][0]["value"] is None


def test_a_rollout_keeps_its_newest_ticks_only(store: Store, clock: Clock,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "HISTORY_TICKS", 10)
    for i in range(25):
        clock.now += 1
        store.save_tick("odoo", info("r1"), {"blue": 100 - i, "green": i}, rules(float(i)))
    got = store.rollout("r1")
    assert got is not None
    assert got["ticks"] == 25  # how many were recorded, the pruned too
    assert [t["weights"]["green"] for t in got["history"]] == list(range(15, 25))
    assert [t["rules"][0]["value"] for t in got["history"]] == [float(i) for i in range(15, 25)]
    assert count(store, "ticks", "r1") == 10
    assert count(store, "tick_rules", "r1") == 20  # two rules a tick


def test_a_site_keeps_its_newest_rollouts_only(store: Store, clock: Clock,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "HISTORY_ROLLOUTS", 3)
    for i in range(5):
        clock.now += 10
        for _ in range(2):
            store.save_tick("odoo", info(f"a{i}", started=clock.now), {"blue": 100}, rules(0.0))
    for i in range(2):  # another site's rollouts count apart
        store.save_tick("erp", info(f"b{i}", started=clock.now + i), {"blue": 100}, rules(0.0))
    store.save_tick("odoo", info("a4", started=clock.now), {"blue": 100}, rules(0.0))
    kept = [rid for rid in ("a0", "a1", "a2", "a3", "a4", "b0", "b1")
            if store.rollout(rid) is not None]
    assert kept == ["a2", "a3", "a4", "b0", "b1"]
    for gone in ("a0", "a1"):
        assert (count(store, "rollouts", gone), count(store, "ticks", gone),
                count(store, "tick_rules", gone)) == (0, 0, 0)
    assert count(store, "ticks", "a4") == 3


def test_an_ended_rollout_gets_one_last_tick_even_across_a_restart(
        tmp_path: Path, store: Store, clock: Clock) -> None:
    assert store.wants_history("r1", active=True)
    store.save_tick("odoo", info("r1"), {"blue": 0, "green": 100}, rules(0.0))
    clock.now += 1
    assert store.wants_history("r1", active=False)
    assert store.save_tick("odoo", info("r1", "promoted"), {"blue": 0, "green": 100}, rules(0.0))
    assert not store.wants_history("r1", active=False)
    again = Store(tmp_path / "state", clock)  # a restart: the daemon asks once more
    try:
        assert again.wants_history("r1", active=False)
        assert not again.save_tick("odoo", info("r1", "promoted"), {"blue": 0, "green": 100},
                                   rules(0.0))
        assert not again.wants_history("r1", active=False)
    finally:
        again.close()
    got = store.rollout("r1")
    assert got is not None and got["ticks"] == 2 and got["info"]["phase"] == "promoted"


def test_events_of_a_rollout_only_oldest_first(store: Store, clock: Clock) -> None:
    for rid, kind in [("r1", "started"), ("r2", "started"), ("r1", "step"), (None, "reload")]:
        clock.now += 1
        store.record("odoo", Event(kind, f"{kind} of {rid}", "idle", "progressing",
                                   {"blue": 90, "green": 10}, rollout_id=rid))
    got = store.rollout_events("r1")
    assert [(e["kind"], e["message"], e["site"]) for e in got] == [
        ("started", "started of r1", "odoo"), ("step", "step of r1", "odoo")]
    assert got[0]["weights"] == {"blue": 90, "green": 10}
    assert [e["kind"] for e in store.rollout_events("r1", limit=1)] == ["step"]


@contextlib.contextmanager
def locked(db: Path) -> Iterator[None]:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def test_a_store_that_cannot_write_raises_and_counts_history(store: Store) -> None:
    failed: list[str] = []
    store.on_error = failed.append
    with locked(store.path), pytest.raises(StoreError, match="database is locked"):
        store.save_tick("odoo", info("r1"), {"blue": 100, "green": 0}, rules(0.0))
    assert failed == ["history"]
    assert not store.ok
    assert store.rollout("r1") is None
    assert store.save_tick("odoo", info("r1"), {"blue": 100, "green": 0}, rules(0.0))
    assert store.ok
