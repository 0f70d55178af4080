"""Chaos with three daemons on one PostgreSQL 15 store: 50 rollouts, each with a kill -9 of a
random daemon at a random moment (DESIGN.md §15).

A Cluster (watchdog/lab/cluster.py): three `odoo-watchdog run` processes, a real HAProxy 2.6
in front of two Odoo stand-ins, a 2 s lease and a 0.5 s tick. Rollouts go blue → green →
blue ..., each started through a random daemon (passed on to the owner). At a random delay
into it a random daemon is killed with SIGKILL and started again at once. Asserted:

- every split HAProxy applied, sampled every 20 ms from its own admin socket through all 50,
  is a step's split (100/0, 90/10, 50/50, 10/90 or 0/100): never a split no step has;
- no double advance: in the audit log each rollout enters each of its steps once and is
  promoted once, whoever owned it when;
- every rollout ends in a final phase (promoted: the stand-ins are healthy), and the epochs of
  the lease only grow.

`CHAOS_ROLLOUTS` changes the count (default 50), `CHAOS_SEED` repeats a run; the tally is
printed at the end (-s).
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.polling import wait
from tests.test_ha import LEASE, SPLITS, Sampler
from watchdog.lab.cluster import Cluster
from watchdog.lab.postgres import PostgresLab

pytestmark = pytest.mark.lab

ROLLOUTS = int(os.environ.get("CHAOS_ROLLOUTS", "50"))
SEED = int(os.environ.get("CHAOS_SEED", "0")) or random.randrange(1, 10**6)
FINAL = {"promoted", "rolled_back", "aborted"}
# Rollouts alternate: blue at 10% of a rollout back to blue is the split 10/90.
BOTH_WAYS = SPLITS | {(10, 90)}
CHAOS_STEPS = [{"weight": 10, "hold": "1s"}, {"weight": 50, "hold": "1s"}, {"weight": 100}]


def stored(c: Cluster) -> dict[str, object]:
    """The site's state as committed (the store is the truth whoever owns it)."""
    text = c.postgres.psql("SELECT state FROM sites WHERE site = 'odoo'", dbname=c.database)
    return dict(json.loads(text))


def start(c: Cluster, to: str, rng: random.Random) -> str:
    """Start a rollout through a random running daemon; its id. A 503 (no owner for the
    moment: a takeover in progress) is asked again."""
    deadline = time.monotonic() + 6 * LEASE
    while True:
        via = rng.choice(c.running())
        status, body = c.post(via, "/api/v1/sites/odoo/rollouts", {"to": to})
        if status == 201:
            return str(body["rollout"]["id"])
        if time.monotonic() > deadline:
            raise AssertionError(f"no rollout started through {c.names[via]}: {status} {body}")
        time.sleep(0.2)


def test_fifty_rollouts_with_a_random_daemon_killed_in_each(tmp_path: Path,
                                                           postgres: PostgresLab) -> None:
    rng = random.Random(SEED)
    kills: Counter[str] = Counter()
    ends: Counter[str] = Counter()
    takeovers: list[float] = []
    with Cluster(tmp_path, postgres, daemons=3, lease=f"{LEASE:g}s", steps=CHAOS_STEPS,
                 bake="0.5s") as c, Sampler(c) as sampler:
        wait(c.owner, timeout=10, what="a first owner")
        color = "green"
        ids = []
        for n in range(ROLLOUTS):
            rid = start(c, color, rng)
            ids.append(rid)
            time.sleep(rng.uniform(0.0, 3.0))
            victim = rng.randrange(3)
            owner = c.owner()
            was_owner = owner == c.names[victim]
            kills["owner" if was_owner else "other"] += 1
            killed = time.monotonic()
            c.kill(victim)
            if was_owner:
                wait(lambda owner=owner: c.owner() not in (None, owner), timeout=4 * LEASE,
                     what=f"a takeover (rollout {n + 1}, seed {SEED})")
                takeovers.append(time.monotonic() - killed)
            c.start_daemon(victim)
            state = wait(lambda rid=rid: (s := stored(c)) and s["rollout"]["id"] == rid  # type: ignore[index]
                         and s["rollout"]["phase"] in FINAL and s,  # type: ignore[index]
                         timeout=30, what=f"rollout {n + 1} to end (seed {SEED})")
            ends[str(state["rollout"]["phase"])] += 1  # type: ignore[index]
            color = "blue" if color == "green" else "green"
        print(f"\nchaos, three daemons: {ROLLOUTS} rollouts, kills {dict(kills)}, ends "
              f"{dict(ends)}; takeover after killing the owner: max "
              f"{max(takeovers, default=0):.2f}s, median "
              f"{sorted(takeovers)[len(takeovers) // 2] if takeovers else 0:.2f}s "
              f"(lease {LEASE:g}s, seed {SEED})")
        assert sampler.seen <= BOTH_WAYS, f"outside the steps: {sampler.seen - BOTH_WAYS}"
        assert ends["promoted"] == ROLLOUTS, ends
        assert max(takeovers, default=0.0) < 2 * LEASE + 1.0
        rows = c.postgres.psql("SELECT rollout_id, kind, message FROM events WHERE kind IN "
                               "('step', 'promoted') ORDER BY id", dbname=c.database)
        seen: Counter[tuple[str, str, str]] = Counter()
        for line in rows.splitlines():
            rid, kind, message = line.split("|", 2)
            seen[(rid, kind, message)] += 1
        doubled = [k for k, v in seen.items() if v > 1]
        assert doubled == [], f"entered twice: {doubled[:5]}"
        for rid in ids:
            assert sum(v for (r, k, _), v in seen.items()
                   if r == rid and k == "step") == len(CHAOS_STEPS)
            assert sum(v for (r, k, _), v in seen.items() if r == rid and k == "promoted") == 1
        taken = c.postgres.psql("SELECT message FROM events WHERE kind = 'lease_acquired'",
                                dbname=c.database)
        epochs = [int(m) for m in re.findall(r"lease epoch (\d+)", taken)]
        assert len(epochs) > kills["owner"]  # the first owner, and one per takeover at least
        assert len(set(epochs)) == len(epochs), "two daemons took the same epoch"
