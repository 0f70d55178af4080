"""Per-site leases and fenced writes (DESIGN.md §15), the same on SQLite and on a real
PostgreSQL 15: a lease is taken (epoch 1), renewed (same epoch), refused to another daemon
while it runs, taken over with epoch + 1 once it expired, handed over by release; renew does
many in one call and drops the lost; heartbeats list the living daemons. A write fenced by a
lease that is not ours any more is refused in its own transaction (LeaseLost): the new owner's
state stays, and the store is not "failing". Two daemons hammering one site never share an
epoch. SQLite's leases run on the store's clock (a fake one here, moved by the test);
PostgreSQL's on the database's (its stores get a frozen clock: only real time expires them)."""

from __future__ import annotations

import contextlib
import dataclasses
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_store_backends import Backend, Clock, _postgres, _sqlite
from watchdog.rollout import Event, initial
from watchdog.store import Lease, LeaseLost, SqlStore, StoreError

TTL = 0.4  # seconds: PostgreSQL's tests wait it out for real
EPS = 1e-3  # expires_in is a difference of two epoch times: float rounding


class Leasing:
    """Stores on one fresh database and a way to let time pass for its leases."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.clock = Clock()

    def open(self, **kw: Any) -> SqlStore:
        return self.backend.open(self.clock, **kw)

    def pass_time(self, seconds: float) -> None:
        if self.backend.kind == "sqlite":
            self.clock.now += seconds
        else:
            time.sleep(seconds)


@pytest.fixture(params=["sqlite", "postgresql"])
def leasing(request: pytest.FixtureRequest, tmp_path: Path,
            pg_names: Callable[[str], str]) -> Iterator[Leasing]:
    if request.param == "sqlite":
        backend = _sqlite(tmp_path / "state")
    else:
        backend = _postgres(request.getfixturevalue("postgres"), pg_names("lease"))
    yield Leasing(backend)
    for s in backend.opened:
        s.close()


def must(lease: Lease | None) -> Lease:
    assert lease is not None
    return lease


def test_acquire_renew_refuse_take_over_and_release(leasing: Leasing) -> None:
    a, b = leasing.open(), leasing.open()
    la = must(a.acquire("odoo", "a", "http://a:8", TTL))
    assert (la.site, la.owner, la.epoch) == ("odoo", "a", 1) and la.valid()
    assert la.deadline <= time.monotonic() + TTL
    assert must(a.acquire("odoo", "a", "http://a:8", TTL)).epoch == 1  # ours: renewed
    assert b.acquire("odoo", "b", "http://b:8", TTL) is None  # a's runs
    shown = b.owners()["odoo"]
    assert (shown["instance"], shown["api"], shown["epoch"]) == ("a", "http://a:8", 1)
    assert 0 < shown["expires_in"] <= TTL + EPS

    leasing.pass_time(TTL + 0.05)
    assert b.owners()["odoo"]["expires_in"] < 0
    lb = must(b.acquire("odoo", "b", "http://b:8", TTL))
    assert (lb.owner, lb.epoch) == ("b", 2)
    assert a.renew([la], TTL) == {"odoo": None}
    assert a.acquire("odoo", "a", "http://a:8", TTL) is None
    assert a.owners()["odoo"]["instance"] == "b"

    b.release(lb)  # a graceful hand-over: a takes it at once, a new epoch
    assert b.owners()["odoo"]["expires_in"] <= 0
    la3 = must(a.acquire("odoo", "a", "http://a:8", TTL))
    assert la3.epoch == 3
    b.release(lb)  # not b's any more: nothing happens
    assert a.owners()["odoo"]["instance"] == "a" and a.owners()["odoo"]["expires_in"] > 0

    leasing.pass_time(TTL + 0.05)  # ours, but expired: taking it again is a new epoch
    assert must(a.acquire("odoo", "a", "http://a:8", TTL)).epoch == 4


def test_renew_extends_all_in_one_call_and_drops_the_lost(leasing: Leasing) -> None:
    a, b = leasing.open(), leasing.open()
    held = [must(a.acquire(site, "a", "http://a", TTL)) for site in ("erp", "odoo", "shop")]
    a.release(held[2])
    assert must(b.acquire("shop", "b", "http://b", TTL)).epoch == 2
    leasing.pass_time(TTL * 0.6)
    before = time.monotonic()
    got = a.renew(held, TTL)
    assert got["shop"] is None
    for lease in (got["erp"], got["odoo"]):
        assert lease is not None and lease.owner == "a" and lease.epoch == 1
        assert before < lease.deadline - TTL <= time.monotonic()
    leasing.pass_time(TTL * 0.6)  # past the first expiry: the renewal holds
    assert b.acquire("odoo", "b", "http://b", TTL) is None
    assert {site: o["instance"] for site, o in b.owners().items()} == {
        "erp": "a", "odoo": "a", "shop": "b"}
    assert a.renew([], TTL) == {}


def test_a_fenced_write_after_a_takeover_is_refused_and_stores_nothing(
        leasing: Leasing) -> None:
    failed: list[str] = []
    a, b = leasing.open(on_error=failed.append), leasing.open()
    la = must(a.acquire("odoo", "a", "http://a", TTL))
    a.save(initial("odoo", "blue"), [Event("initialized", "by a", "idle", "idle", {})],
           fence=la)
    a.save_memory("odoo", rules=[{"name": "r"}], fence=la)
    assert a.save_tick("odoo", {"id": "r1", "phase": "progressing"}, {"blue": 100}, [],
                       fence=la)

    leasing.pass_time(TTL + 0.05)
    lb = must(b.acquire("odoo", "b", "http://b", TTL))
    theirs = initial("odoo", "green")
    b.save(theirs, [Event("switched", "by b", "idle", "idle", {})], fence=lb)
    # a still believes it owns the site (a clock that ran slow): the database says no.
    believed = dataclasses.replace(la, deadline=time.monotonic() + 60)
    lost = r"site odoo: the lease of epoch 1 is no longer this daemon's \(now owner b epoch 2\)"
    with pytest.raises(LeaseLost, match=lost):
        a.save(initial("odoo", "blue"), [Event("switched", "by a again", "idle", "idle", {})],
               fence=believed)
    with pytest.raises(LeaseLost, match=lost):
        a.save_memory("odoo", rules=[{"name": "changed"}], fence=believed)
    with pytest.raises(LeaseLost, match=lost):
        a.save_tick("odoo", {"id": "r1", "phase": "progressing"}, {"blue": 50}, [],
                    fence=believed)
    # And a lease whose deadline passed here is refused without asking the database.
    with pytest.raises(LeaseLost, match="not renewed in time"):
        a.save(initial("odoo", "blue"), fence=dataclasses.replace(la, deadline=0.0))
    with pytest.raises(ValueError, match="cannot fence a write of shop"):
        a.save(initial("shop", "blue"), fence=believed)

    assert a.load("odoo") == theirs
    assert [e["message"] for e in a.events("odoo")] == ["by a", "by b"]
    assert a.load_memory("odoo")["rules"] == [{"name": "r"}]
    history = a.rollout("r1")
    assert history is not None and history["ticks"] == 1
    assert a.view() == {"ok": True, "error": None, "since": None, "path": str(a.path),
                        "pending": 0}
    assert failed == []
    assert a.record("odoo", Event("drift", "audit lines are not fenced", "idle", "idle", {}))

    leasing.pass_time(TTL + 0.05)  # b's lease ran out and nobody took it
    with pytest.raises(LeaseLost, match=r"\(now owner b epoch 2, expired\)"):
        b.save(theirs, fence=dataclasses.replace(lb, deadline=time.monotonic() + 60))


def test_heartbeats_list_the_living_daemons(leasing: Leasing) -> None:
    a, b = leasing.open(), leasing.open()
    b.heartbeat("b:2", "http://b:8", TTL * 3)
    a.heartbeat("a:1", "http://a:8", TTL)
    a.heartbeat("a:1", "http://a:9", TTL)  # a new address replaces the old
    got = b.daemons()
    assert [(d["instance"], d["api"]) for d in got] == [("a:1", "http://a:9"),
                                                       ("b:2", "http://b:8")]
    assert 0 < got[0]["expires_in"] <= TTL + EPS < got[1]["expires_in"] <= TTL * 3 + EPS
    leasing.pass_time(TTL + 0.05)
    assert [d["instance"] for d in a.daemons()] == ["b:2"]


def test_two_daemons_hammering_one_site_never_share_an_epoch(
        leasing: Leasing) -> None:
    """Real time for both backends, and a lease so short that it changes hands often."""
    stores = [leasing.backend.open(time.time) for _ in range(2)]
    seen: list[list[tuple[int, str]]] = [[], [], [], []]
    failures: list[BaseException] = []
    go = threading.Barrier(4)

    def hammer(n: int) -> None:
        store, me, pause = stores[n % 2], f"d{n}", random.Random(n)
        go.wait()
        try:
            for _ in range(150):
                lease = store.acquire("odoo", me, f"http://{me}", 0.002)
                if lease is not None:
                    seen[n].append((lease.epoch, me))
                time.sleep(pause.uniform(0, 0.004))  # sometimes longer than the lease
        except BaseException as exc:  # shown by the assertion
            failures.append(exc)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == []
    owner: dict[int, str] = {}
    for mine in seen:
        epochs = [e for e, _ in mine]
        assert epochs == sorted(epochs)  # each daemon sees epochs only go up
        for epoch, me in mine:
            assert owner.setdefault(epoch, me) == me, f"epoch {epoch}: {owner[epoch]} and {me}"
    top = max(owner)
    assert sorted(owner) == list(range(1, top + 1))  # every epoch went to someone, once
    print(f"\n{top} epochs, {sum(map(len, seen))} acquisitions")
    assert top >= 5 and len(set(owner.values())) >= 2, owner  # it did change hands
    assert stores[0].owners()["odoo"]["epoch"] == top


def test_a_lease_call_that_fails_is_a_store_error_counted_as_lease_not_a_write_failure(
        tmp_path: Path) -> None:
    failed: list[str] = []
    store = _sqlite(tmp_path).open_store(Clock(), busy_timeout=0.05, on_error=failed.append)
    try:
        db = sqlite3.connect(store.path, isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(StoreError, match="cannot keep the leases: database is locked"):
                store.acquire("odoo", "a", "http://a", 10)
            with pytest.raises(StoreError, match="cannot keep the leases"):
                store.heartbeat("a", "http://a", 10)
        finally:
            db.execute("ROLLBACK")
            db.close()
        assert failed == ["lease", "lease"] and store.ok and store.error is None
        assert must(store.acquire("odoo", "a", "http://a", 10)).epoch == 1
    finally:
        store.close()


def test_postgresql_leases_do_not_wait_for_the_state_connection(
        postgres: Any, pg_names: Callable[[str], str]) -> None:
    backend = _postgres(postgres, pg_names("lease_conn"))
    store = backend.open(Clock())
    try:
        lease = must(store.acquire("odoo", "a", "http://a", 5))
        with contextlib.ExitStack() as held:
            held.enter_context(store._lock)  # a slow history write holds the state connection
            started = time.monotonic()
            renewed = store.renew([lease], 5)["odoo"]
            store.heartbeat("a", "http://a", 5)
            assert time.monotonic() - started < 1.0
        assert renewed is not None and renewed.epoch == 1
    finally:
        store.close()
