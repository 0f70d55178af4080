"""Several daemons on one PostgreSQL 15 store (DESIGN.md §15): leases, takeover, fencing.

Real parts: a PostgreSQL 15 lab cluster, HAProxy 2.6 in front of two Odoo stand-ins, and two
or three `odoo-watchdog run` processes (watchdog/lab/cluster.py). Each daemon talks to HAProxy
through a tap of its own that records every server change it sends, so "the old owner sent
nothing" is read off the wire, not off the daemon's word. The lease is 2 s, the tick 0.5 s.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.polling import wait
from watchdog.lab.cluster import Cluster
from watchdog.lab.haproxy import colour_servers
from watchdog.lab.postgres import PostgresLab
from watchdog.metrics import Metrics
from watchdog.ownership import Leases

pytestmark = pytest.mark.lab

LEASE = 2.0
STEPS = [{"weight": 10, "hold": "2s"}, {"weight": 50, "hold": "2s"}, {"weight": 100}]
SPLITS = {(100, 0), (90, 10), (50, 50), (0, 100)}  # blue, green of every step (and live)


class Sampler:
    """HAProxy's split read from its own admin socket every 20 ms, in a thread."""

    def __init__(self, cluster: Cluster) -> None:
        assert cluster.lab.haproxy is not None
        self.socket = cluster.lab.haproxy.admin_socket
        self.seen: set[tuple[int, int]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                servers = colour_servers(self.socket)
            except Exception:  # HAProxy busy for a moment: sample again
                time.sleep(0.02)
                continue
            live = {c: (0 if s["admin"] & 0x01 else s["weight"]) for c, s in servers.items()}
            total = live["blue"] + live["green"]
            if total:
                self.seen.add((round(100 * live["blue"] / total), 100 - round(
                    100 * live["blue"] / total)))
            time.sleep(0.02)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


@pytest.fixture
def cluster(tmp_path: Path, postgres: PostgresLab) -> Iterator[Cluster]:
    with Cluster(tmp_path, postgres, daemons=3, lease=f"{LEASE:g}s", steps=STEPS) as c:
        wait(lambda: c.owner() is not None, timeout=10, what="a first owner")
        yield c


def phase(c: Cluster, i: int) -> str:
    return str(c.get(i, "/api/v1/sites/odoo")["phase"])


def start_rollout(c: Cluster, via: int) -> dict[str, Any]:
    status, body = c.post(via, "/api/v1/sites/odoo/rollouts", {"to": "green"})
    assert status == 201, body
    return body


def step_events(c: Cluster) -> list[tuple[str, str]]:
    rows = c.postgres.psql("SELECT rollout_id, message FROM events WHERE kind = 'step' "
                           "ORDER BY id", dbname=c.database)
    return [tuple(line.split("|", 1)) for line in rows.splitlines() if line]  # type: ignore[misc]


def test_exactly_one_owner_and_every_daemon_agrees(cluster: Cluster) -> None:
    owner = cluster.owner()
    assert owner in cluster.names
    seen = wait(lambda: (o := cluster.owners()) and len(o) == 3
                 and set(o.values()) == {owner} and o, timeout=5, what="all agree")
    assert set(seen.values()) == {owner}
    daemons = wait(lambda: (d := cluster.get(0, "/api/v1/daemons")["daemons"])
                   and len(d) == 3 and d, timeout=5, what="three daemons up")
    assert sorted(d["instance"] for d in daemons) == cluster.names
    assert sum(d["sites"] for d in daemons) == 1


def cli(c: Cluster, i: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "watchdog.cli", *args, "-c",
                           str(c.config_path(i))], capture_output=True, text=True, timeout=30,
                          check=False)


def test_a_command_sent_to_any_daemon_is_carried_out_by_the_owner(cluster: Cluster) -> None:
    owner = cluster.owner()
    assert owner is not None
    other = next(i for i, n in enumerate(cluster.names) if n != owner)
    wait(lambda: len(cluster.get(other, "/api/v1/daemons")["daemons"]) == 3, timeout=5,
         what="three daemons up")
    shown = cli(cluster, other, "status")  # the CLI asks a daemon that does not own the site
    assert shown.returncode == 0, shown.stderr
    assert "3 daemons up:" in shown.stdout
    assert f"owned by {owner}" in shown.stdout
    deployed = cli(cluster, other, "deploy", "odoo", "--to", "green")  # passed on to the owner
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    body = cluster.get(other, "/api/v1/sites/odoo")
    assert body["rollout"]["to"] == "green"
    assert body["owner"]["instance"] == owner
    wait(lambda: cluster.sent_by(owner), timeout=10, what="the owner's first weight change")
    assert cluster.sent_by(cluster.names[other]) == []  # the daemon asked sent nothing itself


def test_kill_9_of_the_owner_mid_rollout_another_takes_over_and_finishes(
        cluster: Cluster) -> None:
    owner = cluster.owner()
    assert owner is not None
    with Sampler(cluster) as sampler:
        start_rollout(cluster, via=cluster.index(owner))
        wait(lambda: cluster.get(cluster.index(owner), "/api/v1/sites/odoo")["weights"]
              ["green"] == 10, timeout=15, what="the first step")
        killed = time.monotonic()
        cluster.kill(cluster.index(owner))
        new = wait(lambda: (o := cluster.owner()) not in (None, owner) and o, timeout=3 * LEASE,
                    what="another owner")
        took = time.monotonic() - killed
        assert took < 2 * LEASE + 0.5, f"takeover took {took:.2f}s"
        survivor = cluster.index(new)
        wait(lambda: phase(cluster, survivor) == "promoted", timeout=30, what="promotion")
    assert sampler.seen <= SPLITS, f"splits outside the steps: {sampler.seen - SPLITS}"
    assert (0, 100) in sampler.seen
    steps = [m for _, m in step_events(cluster)]
    assert len(steps) == len(set(steps)), f"a step was entered twice: {steps}"


def test_a_stopped_owner_is_fenced_out_and_sends_nothing_after_it_wakes(
        cluster: Cluster) -> None:
    owner = cluster.owner()
    assert owner is not None
    index = cluster.index(owner)
    start_rollout(cluster, via=index)
    wait(lambda: cluster.sent_by(owner), timeout=10, what="the first step on the wire")
    stopped = time.monotonic()
    cluster.signal(index, signal.SIGSTOP)
    new = wait(lambda: (o := cluster.owner()) not in (None, owner) and o, timeout=3 * LEASE,
                what="a takeover while the owner sleeps")
    time.sleep(max(0.0, 3 * LEASE - (time.monotonic() - stopped)))
    woke = time.monotonic()
    cluster.signal(index, signal.SIGCONT)
    new_index = cluster.index(new)
    wait(lambda: phase(cluster, new_index) == "promoted", timeout=30, what="promotion")
    promoted = time.monotonic()
    # Up to the promotion (after it, an idle site may be handed back to the daemon it
    # prefers, which may be the one that slept): the old owner sent nothing at all, and the
    # new owner did the steps.
    assert [s for s in cluster.sent_by(owner, since=woke) if s.at < promoted] == [], \
        "the fenced-out owner touched HAProxy"
    assert [s for s in cluster.sent_by(new, since=stopped) if s.at < promoted]
    log = (cluster.workdir / f"{owner}.log").read_text()
    assert "lease_lost" in log or "lease_refused" in log


def test_postgresql_away_holds_every_decision_and_the_rollout_resumes(
        tmp_path: Path) -> None:
    pg = PostgresLab(tmp_path / "pg")
    pg.start()
    try:
        with Cluster(tmp_path / "c", pg, daemons=2, lease=f"{LEASE:g}s",
                     steps=[{"weight": 10, "hold": "2s"}, {"weight": 100}]) as c:
            owner = wait(c.owner, timeout=10, what="an owner")
            i = c.index(owner)
            start_rollout(c, via=i)
            wait(lambda: c.get(i, "/api/v1/sites/odoo")["weights"]["green"] == 10,
                  timeout=10, what="the first step")
            # The database goes away (fast shutdown: its sessions are cut; its data stays).
            pg.process.signal(signal.SIGINT)
            wait(lambda: not pg.process.running(), timeout=20, what="PostgreSQL stopped")
            pg.process.stop()
            gone = time.monotonic()
            time.sleep(3 * LEASE)
            away = [s for s in c.sent if s.at > gone + LEASE]
            assert away == [], f"weights changed while the store was away: {away}"
            assert colour_servers(c.lab.haproxy.admin_socket)["green"]["weight"] == 10  # type: ignore[union-attr]
            pg.process.start()
            wait(pg.accepting, timeout=20, what="PostgreSQL back")
            done = wait(lambda: any(phase(c, j) == "promoted" for j in c.running()) or None,
                         timeout=30, what="promotion after the store is back")
            assert done
    finally:
        pg.stop()


async def test_sites_spread_over_the_daemons_that_are_up(postgres: PostgresLab) -> None:
    """Three lease keepers in one process on the real store, 30 sites: each site has one
    owner, each keeper about a third; when one stops, the others take its sites."""
    from watchdog.store_pg import PgStore

    database = f"wdspread_{int(time.time() * 1000) % 10**9}"
    postgres.psql(f'CREATE DATABASE "{database}"')
    sites = [f"s{n:02d}" for n in range(30)]
    stores = [PgStore(postgres.dsn(database)) for _ in range(3)]
    owned: dict[str, set[str]] = {}

    def keeper(n: int) -> Leases:
        name = f"k{n}"
        owned[name] = set()

        async def on_acquired(site: str, lease: Any) -> None:
            owned[name].add(site)

        async def on_lost(site: str, why: str) -> None:
            owned[name].discard(site)

        return Leases(stores[n], name, f"http://127.0.0.1:{9000 + n}", 2.0, sites, Metrics(),
                      on_acquired=on_acquired, on_lost=on_lost, idle=lambda s: True)

    keepers = [keeper(n) for n in range(3)]
    try:
        for _ in range(4):
            for k in keepers:
                await k.round()
        counts = sorted(len(v) for v in owned.values())
        assert sum(counts) == 30
        assert all(set(a).isdisjoint(b) for a in owned.values() for b in owned.values()
                   if a is not b)
        assert counts == [10, 10, 10], f"uneven spread: {counts}"
        gone = keepers.pop()  # k2 stops without a word: its leases expire
        await asyncio.sleep(2.2)
        for _ in range(3):
            for k in keepers:
                await k.round()
        assert len(owned["k0"] | owned["k1"]) == 30
        assert owned["k0"].isdisjoint(owned["k1"])
        assert sorted(len(v) for k, v in owned.items() if k != "k2") == [15, 15]
        assert gone.instance == "k2"
    finally:
        for s in stores:
            s.close()
        postgres.psql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
