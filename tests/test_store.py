"""The state store: round trips, one transaction per decision, events in order."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from watchdog.config import RolloutConfig
from watchdog.rollout import Event, Phase, Preflight, Start, Tick, command, initial, tick
from watchdog.store import Store, StoreError, state_from_json, state_to_json


def progressing_state() -> tuple[object, tuple[Event, ...]]:
    cfg = RolloutConfig.model_validate({"steps": [{"weight": 10, "hold": "1m"}, "pause",
                                                  {"weight": 100}]})
    d1 = command(initial("odoo", "blue"), Start("green", "17.0", id="r1"), 100.0, cfg)
    d2 = tick(d1.state, Tick(101.0, {}, d1.state.weights, Preflight(True, "ok")))
    return d2.state, d1.events + d2.events


def test_state_round_trips_through_json() -> None:
    state, _ = progressing_state()
    again = state_from_json(state_to_json(state))  # type: ignore[arg-type]
    assert again == state
    assert again.rollout is not None and again.rollout.phase is Phase.PROGRESSING


def test_save_and_load_survive_a_new_store_on_the_same_file(tmp_path: Path) -> None:
    state, events = progressing_state()
    store = Store(tmp_path)
    store.save(state, events, at=123.0)  # type: ignore[arg-type]
    store.close()
    reopened = Store(tmp_path)
    assert reopened.load("odoo") == state
    assert reopened.load("shop") is None
    logged = reopened.events("odoo")
    assert [e["kind"] for e in logged] == ["started", "preflight_passed", "step"]
    assert logged[-1]["weights"] == {"blue": 90, "green": 10}
    assert logged[0]["at"] == 123.0
    mode = sqlite3.connect(tmp_path / "state.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_events_returns_the_newest_in_order(tmp_path: Path) -> None:
    store = Store(tmp_path)
    state = initial("odoo", "blue")
    for i in range(60):
        store.record("odoo", Event("drift", f"n{i}", "idle", "idle", state.weights))
    last = store.events("odoo", limit=50)
    assert len(last) == 50
    assert [e["message"] for e in last[:2]] == ["n10", "n11"]
    assert last[-1]["message"] == "n59"


def test_a_failed_write_stores_neither_state_nor_events(tmp_path: Path) -> None:
    store = Store(tmp_path)
    first = initial("odoo", "blue")
    store.save(first, [Event("initialized", "x", "idle", "idle", first.weights)])
    state, events = progressing_state()
    broken = Event("step", "bad", "a", "b", {"blue": 1}, value=float("nan"))
    store._db.execute("CREATE TRIGGER no_nan BEFORE INSERT ON events WHEN NEW.message = 'bad' "
                      "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    with pytest.raises(StoreError, match="refused"):
        store.save(state, (*events, broken))  # type: ignore[arg-type]
    assert store.load("odoo") == first
    assert [e["kind"] for e in store.events("odoo")] == ["initialized"]


def test_unwritable_state_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot open the state store"):
        Store(blocker / "state")
