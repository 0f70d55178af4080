"""What the daemon stores so a restart keeps rule and alert state: the pieces, without a daemon."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from watchdog.alerts import AlertBook, rfc3339
from watchdog.rollout import initial
from watchdog.rulemanager import status_from_json, status_to_json
from watchdog.rules import Outcome, RuleStatus, State
from watchdog.store import Store

T0 = 1_796_000_000.0  # 2026-12-01


def payload(status: str, ends_at: str, fingerprint: str = "fp1") -> dict[str, Any]:
    return {"version": "4", "status": status, "alerts": [{
        "status": status, "fingerprint": fingerprint, "startsAt": "2026-12-01T08:00:00Z",
        "endsAt": ends_at, "annotations": {"summary": "slow"},
        "labels": {"alertname": "Slow", "site": "odoo", "color": "green",
                   "severity": "critical"}}]}


def test_rfc3339_reads_alertmanagers_times_with_nanoseconds_and_the_zero_time() -> None:
    assert rfc3339("2026-12-01T08:00:00Z") == pytest.approx(1_796_112_000.0)
    assert rfc3339("2026-12-01T08:00:00.123456789Z") == pytest.approx(1_796_112_000.123456)
    assert rfc3339("2026-12-01T09:00:00+01:00") == pytest.approx(1_796_112_000.0)
    assert rfc3339("0001-01-01T00:00:00Z") is None  # Go's zero time: no end
    assert rfc3339("") is None
    assert rfc3339("yesterday") is None


def test_an_alert_counts_until_its_ends_at_passes() -> None:
    book = AlertBook()
    book.receive(payload("firing", "2026-12-01T08:05:00Z"), {"odoo"}, {})
    ends = rfc3339("2026-12-01T08:05:00Z")
    assert ends is not None
    assert list(book.views("odoo", "green", "rollback", ends - 1)) == ["alert:Slow"]
    assert book.views("odoo", "green", "rollback", ends) == {}
    assert book.expire("odoo", ends - 1) is False
    assert book.expire("other", ends + 1) is False  # another site's alerts are its own
    assert book.expire("odoo", ends + 1) is True
    assert book.firing["odoo"] == {}


def test_an_alert_without_an_end_counts_until_resolved() -> None:
    book = AlertBook()
    book.receive(payload("firing", "0001-01-01T00:00:00Z"), {"odoo"}, {})
    assert book.expire("odoo", T0 + 10 * 365 * 86400) is False
    book.receive(payload("resolved", "2026-12-01T08:06:00Z"), {"odoo"}, {})
    assert book.views("odoo", "green", "rollback", T0) == {}


def test_firing_alerts_come_back_from_memory_except_those_ended_meanwhile() -> None:
    book = AlertBook()
    book.receive(payload("firing", "0001-01-01T00:00:00Z", "open"), {"odoo"}, {})
    book.receive(payload("firing", "2026-12-01T08:05:00Z", "ending"), {"odoo"}, {})
    stored = book.memory("odoo")
    assert {a["fingerprint"] for a in stored} == {"open", "ending"}

    ends = rfc3339("2026-12-01T08:05:00Z")
    assert ends is not None
    before_end = AlertBook()
    assert before_end.restore("odoo", stored, ends - 1) == 2
    after_end = AlertBook()
    assert after_end.restore("odoo", stored, ends + 1) == 1
    view = after_end.views("odoo", "green", "pause", ends + 1)["alert:Slow"]
    assert view.state is State.FIRING and view.on_fire == "pause"
    # A duplicate of what was restored is still a duplicate after the restart.
    receipt = after_end.receive(payload("firing", "0001-01-01T00:00:00Z", "open"), {"odoo"}, {})
    assert receipt.duplicates == 1


def test_a_rule_status_survives_its_json_form() -> None:
    status = RuleStatus(State.PENDING, T0, T0, Outcome.BREACH, 0.25, "0.25 > 0.05", T0 + 1)
    assert status_from_json(status_to_json(status)) == status
    odd = RuleStatus(State.HOLDING, None, T0, Outcome.NO_DATA, float("nan"), "", T0)
    assert status_from_json(status_to_json(odd)).value is None  # JSON has no NaN


def test_the_store_keeps_rules_and_alerts_apart_and_across_a_reopen(tmp_path: Path) -> None:
    store = Store(tmp_path, clock=lambda: T0)
    assert store.load_memory("odoo") == {"rules": [], "alerts": []}
    store.save_memory("odoo", rules=[{"rule": "health", "color": "blue", "state": "pending"}])
    store.save_memory("odoo", alerts=[{"fingerprint": "fp1"}])
    store.save_memory("odoo", rules=None, alerts=None)  # nothing given: nothing changes
    store.close()
    again = Store(tmp_path)
    assert again.load_memory("odoo") == {
        "rules": [{"rule": "health", "color": "blue", "state": "pending"}],
        "alerts": [{"fingerprint": "fp1"}]}
    assert again.load_memory("other") == {"rules": [], "alerts": []}
    again.close()


def test_the_store_stamps_rows_with_the_injected_clock(tmp_path: Path) -> None:
    store = Store(tmp_path, clock=lambda: T0)
    store.save(initial("odoo", "blue"))
    row = store._db.execute("SELECT updated_at FROM sites").fetchone()
    assert row[0] == T0
    store.close()
