"""Chaos: the daemon killed with SIGKILL at its crash points and at random moments of rollouts.

A LabStack (two Odoo stand-ins behind a real HAProxy 2.6, Prometheus scraping it, the daemon as
a process, 1 s ticks, short steps) runs rollouts under constant load. The daemon is started
with ODOO_WATCHDOG_CRASH_AT naming a point (watchdog/crashpoints.py): after a decision is saved,
after a new split is committed and before the router call, after the router call, in the middle
of each prepare step. It kills itself there; the test also kills it itself (kill -9) at random
delays. After every kill the test asserts, reading HAProxy's runtime API and the state file
itself:

- every split HAProxy applied, sampled every 20 ms through the whole rollout, and the split in
  the store at the kill, is one of the rollout's steps' splits or the live colour's 100%;
- the kill was where the point says: after_commit leaves HAProxy on the split before the
  stored one, after_router leaves it on the stored one;
- restarted (without the variable), the daemon makes HAProxy match the store and its own view
  within two ticks, and the rollout ends in a final phase by itself, with no colour left
  draining.

The counts (rollouts, kills per point, resumes) are printed at the end of the module (-s).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FORCED_DRAIN, haproxy_servers
from tests.polling import until
from watchdog import crashpoints
from watchdog.client import ApiError
from watchdog.lab.load import LoadClient
from watchdog.lab.postgres import PostgresLab
from watchdog.lab.procs import LabError
from watchdog.lab.stack import LabStack
from watchdog.lab.standin import clear_faults, set_faults
from watchdog.store import state_from_json

pytestmark = pytest.mark.lab

ENV = crashpoints.ENV
TICK = 1.0  # the lab's interval
DRAIN = 2.0  # the lab's router drain_timeout
FINAL = {"promoted", "rolled_back", "aborted"}
CANARY = [{"weight": 10, "hold": "1s"}, {"weight": 50, "hold": "1s"}, {"weight": 100}]
LONG_FIRST = [{"weight": 10, "hold": "60s"}, {"weight": 100}]
SEED = int(os.environ.get("CHAOS_SEED", "0")) or random.randrange(1, 10**6)


# ---------------------------------------------------------------- counts


@dataclass
class Tally:
    rollouts: int = 0
    kills: Counter[str] = field(default_factory=Counter)
    resumed: Counter[str] = field(default_factory=Counter)
    restart_match: list[float] = field(default_factory=list)  # s from ready to HAProxy == store

    def table(self) -> str:
        rows = [f"{'kill':<26} {'kills':>5} {'resumed':>7}"]
        rows += [f"{point:<26} {n:>5} {self.resumed[point]:>7}"
                 for point, n in sorted(self.kills.items())]
        worst = max(self.restart_match, default=0.0)
        rows.append(f"rollouts run {self.rollouts}, kills {sum(self.kills.values())}, resumed "
                    f"{sum(self.resumed.values())}; HAProxy matched the store at most "
                    f"{worst:.2f}s after a restart (random seed {SEED})")
        return "\n".join(rows)


TALLY = Tally()


@pytest.fixture(scope="module", autouse=True)
def counts() -> Iterator[Tally]:
    yield TALLY
    print("\n\nchaos counts\n" + TALLY.table())


# ---------------------------------------------------------------- HAProxy and the store


def weights(lab: LabStack) -> dict[str, int]:
    """The weights HAProxy applies, from its runtime API (never from the daemon)."""
    return {color: s["weight"] for color, s in haproxy_servers(lab).items()}


def stored(lab: LabStack) -> dict[str, Any]:
    """The site's state in the daemon's state file, read-only (the daemon may be dead)."""
    path = lab.workdir / "state" / "state.db"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        row = db.execute("SELECT state FROM sites WHERE site = 'odoo'").fetchone()
    finally:
        db.close()
    state = state_from_json(row[0])
    return {"phase": state.phase.value, "weights": dict(state.weights), "live": state.live}


def stored_events(lab: LabStack, rollout_id: str) -> list[tuple[str, str]]:
    """A rollout's events (kind, message) in the state file, all of them."""
    path = lab.workdir / "state" / "state.db"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        rows = db.execute("SELECT kind, message FROM events WHERE site = 'odoo' AND "
                          "rollout_id = ? ORDER BY id", (rollout_id,)).fetchall()
    finally:
        db.close()
    return [(str(k), str(m)) for k, m in rows]


def splits_of(live: str, steps: list[Any]) -> list[dict[str, int]]:
    """The splits a rollout from `live` may apply: live at 100%, then each step's."""
    cand = "green" if live == "blue" else "blue"
    out = [{live: 100, cand: 0}]
    for step in steps:
        if isinstance(step, dict) and "weight" in step:
            out.append({live: 100 - step["weight"], cand: step["weight"]})
    return out


class Sampler:
    """Every distinct split HAProxy applies, read every 20 ms in the background."""

    def __init__(self, lab: LabStack) -> None:
        self.lab = lab
        self.seen: list[dict[str, int]] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            now = await asyncio.to_thread(weights, self.lab)
            if not self.seen or self.seen[-1] != now:
                self.seen.append(now)
            await asyncio.sleep(0.02)

    async def __aenter__(self) -> Sampler:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


# ---------------------------------------------------------------- the daemon


async def view(lab: LabStack) -> dict[str, Any]:
    return await asyncio.to_thread(lab.site)


def describe(v: dict[str, Any]) -> str:
    return f"phase {v['phase']}, weights {v['weights']}\n" + "\n".join(
        f"  {e['kind']}: {e['message']}" for e in v.get("events", [])[-14:])


async def post(lab: LabStack, action: str, body: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = await asyncio.to_thread(
        lab.client().post, f"/api/v1/sites/odoo/{action}", body)
    return result


async def restart(lab: LabStack, crash: str | None = None) -> None:
    """Stop the daemon (SIGTERM) if it runs, start it again, with `crash` armed if given."""
    if lab.daemon is not None and lab.daemon.running():
        await asyncio.to_thread(lab.daemon.stop)
    await asyncio.to_thread(lab.start_daemon, {ENV: crash} if crash else None)


async def died(lab: LabStack, timeout: float) -> int:
    """Until the daemon's process has exited; its return code."""
    assert lab.daemon is not None and lab.daemon.proc is not None
    proc = lab.daemon.proc
    try:
        return await asyncio.to_thread(proc.wait, timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the daemon did not crash within {timeout:g}s:\n"
                             f"{describe(await view(lab))}") from None


async def final(lab: LabStack, timeout: float = 40.0) -> dict[str, Any]:
    last: dict[str, Any] = {}

    async def probe() -> dict[str, Any] | None:
        nonlocal last
        last = await view(lab)
        return last if last["phase"] in FINAL else None

    try:
        return await until(probe, timeout, "a final phase", every=0.1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}:\n{describe(last)}") from None


async def calm(lab: LabStack, steps: list[Any]) -> None:
    """Between rollouts (the daemon running unarmed): blue live at 100%, none draining, and
    the next rollout's steps in the config."""
    v = await view(lab)
    if v["phase"] not in FINAL | {"idle"}:
        v = await final(lab)
    if v["live"] != "blue" or v["weights"] != {"blue": 100, "green": 0}:
        await post(lab, "switch", {"to": "blue"})
    await until(lambda: asyncio.to_thread(lambda: weights(lab) == {"blue": 100, "green": 0}
                                          or None), 5, "blue at 100% after the switch")
    if lab.steps != steps:
        lab.steps = steps
        lab.write_config()


async def after_kill(lab: LabStack, label: str, allowed: list[dict[str, int]],
                     at_death: dict[str, int], then: str | None = None) -> None:
    """A kill: the checks while the daemon is dead, then the restart (armed at `then`, or
    not), after which HAProxy, the store and the daemon's view agree within two ticks."""
    TALLY.kills[label] += 1
    in_store = await asyncio.to_thread(stored, lab)
    assert in_store["weights"] in allowed, (label, in_store, allowed)
    assert at_death in allowed, (label, at_death, allowed)
    await restart(lab, then)
    ready = time.monotonic()

    async def matched() -> float | None:
        before = await asyncio.to_thread(stored, lab)
        proxy = await asyncio.to_thread(weights, lab)
        try:
            daemon = (await view(lab))["weights"]
        except OSError:  # armed at the next point, it may already be dead again
            assert then is not None and lab.daemon is not None and not lab.daemon.running()
            daemon = proxy
        after = await asyncio.to_thread(stored, lab)
        same = before["weights"] == proxy == daemon == after["weights"]
        return time.monotonic() - ready if same else None

    took = await until(matched, 2 * TICK + 3, f"{label}: HAProxy matching the store")
    TALLY.restart_match.append(took)
    assert took <= 2 * TICK, f"{label}: HAProxy matched the store {took:.2f}s after the restart"


async def ended(lab: LabStack, labels: list[str], allowed: list[dict[str, int]],
                sampler: Sampler, ends: set[str] = FINAL) -> dict[str, Any]:
    """The rollout ends by itself in a final phase, no colour left draining, and HAProxy
    applied nothing but the rollout's splits: then each of its kills counts as resumed."""
    end = await final(lab)
    assert end["phase"] in ends, f"{labels}: ended {end['phase']}\n{describe(end)}"
    await no_drain_left(lab, ", ".join(labels))
    bad = [split for split in sampler.seen if split not in allowed]
    assert not bad, f"{labels}: HAProxy applied {bad}, not a split of the rollout {allowed}"
    TALLY.resumed.update(labels)
    return end


async def no_drain_left(lab: LabStack, label: str) -> None:
    """A colour a crash left draining gets a new drain and then maint."""
    async def probe() -> bool | None:
        servers = await asyncio.to_thread(haproxy_servers, lab)
        return True if not any(s["admin"] & FORCED_DRAIN for s in servers.values()) else None

    await until(probe, DRAIN + 2 * TICK + 2, f"{label}: no colour left draining")


def log_size(lab: LabStack) -> int:
    path = lab.workdir / "daemon.log"
    return path.stat().st_size if path.exists() else 0


def crashed_at(lab: LabStack, point: str, since: int) -> bool:
    """The daemon's output since byte `since` has its line for a crash at `point`."""
    with open(lab.workdir / "daemon.log", "rb") as out:
        out.seek(since)
        return f"crash point {point} reached".encode() in out.read()


async def deploy(lab: LabStack) -> None:
    """Start a rollout to green; the daemon may die before it answers (after_save:1 is the
    start's own save)."""
    TALLY.rollouts += 1
    try:
        await post(lab, "rollouts", {"to": "green", "version": "17.0"})
    except ApiError as exc:
        if exc.status != 0 or lab.daemon is None:
            raise
        # The kernel closes a dying process's sockets before its parent can reap it: the
        # client may see the connection closed a moment before the daemon stops "running".
        for _ in range(40):
            if not lab.daemon.running():
                return
            await asyncio.sleep(0.05)
        raise


async def armed_rollout(lab: LabStack, crashes: list[str], steps: list[Any], *,
                        trigger: Callable[[], Any] | None = None,
                        ends: set[str] = FINAL) -> dict[str, Any]:
    """A rollout with the daemon armed at `crashes[0]`; it kills itself there; the checks;
    restarted armed at the next one (and so on), then unarmed; the rollout's end."""
    await calm(lab, steps)
    since = log_size(lab)
    await restart(lab, crashes[0])
    allowed = splits_of("blue", steps)
    async with Sampler(lab) as sampler:
        await deploy(lab)
        if trigger is not None:
            await trigger()
        for i, crash in enumerate(crashes):
            point = crashpoints.parse(crash).point
            code = await died(lab, 30)
            at_death = await asyncio.to_thread(weights, lab)
            in_store = await asyncio.to_thread(stored, lab)
            assert code == -signal.SIGKILL, f"{crash}: the daemon exited {code}"
            assert crashed_at(lab, point, since), f"{crash}: no crash line in its output"
            if point == "after_commit":  # stored, and HAProxy not yet told
                assert in_store["weights"] != at_death, (crash, in_store, at_death)
            if point == "after_router":  # HAProxy told
                assert in_store["weights"] == at_death, (crash, in_store, at_death)
            since = log_size(lab)
            await after_kill(lab, point, allowed, at_death,
                             crashes[i + 1] if i + 1 < len(crashes) else None)
        return await ended(lab, [crashpoints.parse(c).point for c in crashes], allowed,
                           sampler, ends)


# ---------------------------------------------------------------- the points themselves


def test_points_parse_and_a_typo_is_refused() -> None:
    assert crashpoints.parse("after_commit") == crashpoints.CrashPoint("after_commit")
    assert crashpoints.parse("after_router:3") == crashpoints.CrashPoint("after_router", 3)
    assert crashpoints.parse("in_step:clone:2") == crashpoints.CrashPoint("in_step:clone", 2)
    assert crashpoints.parse("in_step:migrate+0.5") == crashpoints.CrashPoint(
        "in_step:migrate", 1, 0.5)
    for bad in ("after_comit", "in_step:nothing", "after_save:0", "after_save+soon", ""):
        with pytest.raises(ValueError, match=ENV):
            crashpoints.parse(bad)


def test_unset_a_hook_costs_nothing_measurable() -> None:
    assert crashpoints.armed() is None  # this test process runs without the variable
    n = 200_000
    started = time.perf_counter()
    for _ in range(n):
        crashpoints.hit("after_commit")
    per_call = (time.perf_counter() - started) / n
    assert per_call < 1e-6, f"{per_call * 1e9:.0f} ns a hook"


def test_the_nth_hit_kills_with_sigkill_and_a_line_on_stderr() -> None:
    code = ("from watchdog import crashpoints as c\n"
            "for i in range(5):\n"
            "    c.hit('after_router'); c.hit('after_commit'); print(i, flush=True)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30, env={**os.environ, ENV: "after_commit:3"}, check=False)
    assert done.returncode == -signal.SIGKILL
    assert done.stdout.split() == ["0", "1"]  # killed at the third hit, before printing 2
    assert "crash point after_commit reached (time 3): SIGKILL" in done.stderr
    delayed = subprocess.run(
        [sys.executable, "-c", "import time\nfrom watchdog import crashpoints as c\n"
         "c.hit('after_save'); print('goes on', flush=True); time.sleep(10)"],
        capture_output=True, text=True, timeout=30, env={**os.environ, ENV: "after_save+0.3"},
        check=False)
    assert delayed.returncode == -signal.SIGKILL and delayed.stdout == "goes on\n"


# ---------------------------------------------------------------- a lab for the canaries


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabStack]:
    stack = LabStack(tmp_path_factory.mktemp("chaos"), steps=CANARY, bake="1s")
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def load(lab: LabStack) -> LoadClient:
    # Light and constant: the error_rate rule needs traffic on the candidate to pass.
    return LoadClient(lab.proxy_url, "/web/login", concurrency=2, delay=0.02, max_seconds=300)


async def test_a_kill_at_each_crash_point_of_a_canary_resumes_to_promoted(
        lab: LabStack) -> None:
    # A typo in the variable stops the start (a test must not pass by never crashing).
    with pytest.raises(LabError, match="names no crash point"):
        await restart(lab, "after_comit")
    await restart(lab)
    async with load(lab) as traffic:
        first = traffic.mark()
        # after_save:1 the start is saved, its preflight never ran; after_commit:N the
        # Nth split (10, 50, 100% with blue to drain) stored, HAProxy not told; after_router:N
        # told, not read back (at 100%: blue left draining).
        for crash in ("after_save:1", "after_commit:1", "after_commit:3", "after_router:3"):
            end = await armed_rollout(lab, [crash], CANARY, ends={"promoted"})
            assert end["live"] == "green" and weights(lab) == {"blue": 0, "green": 100}
        window = traffic.window(first)
    assert "crash_point_armed" in lab.workdir.joinpath("daemon.log").read_text()
    assert window.total > 200 and window.failed == [], window.failed[:5]


async def test_random_kill_9_during_canaries_always_resumes(lab: LabStack) -> None:
    rng = random.Random(SEED)
    label = "random kill -9"
    await restart(lab)
    async with load(lab):
        for _ in range(2):
            await calm(lab, CANARY)
            allowed = splits_of("blue", CANARY)
            kills: list[str] = []
            async with Sampler(lab) as sampler:
                await deploy(lab)
                for _kill in range(4):
                    await asyncio.sleep(rng.uniform(0.05, 2.0))
                    if (await view(lab))["phase"] in FINAL:
                        break
                    assert lab.daemon is not None
                    lab.daemon.kill()
                    await after_kill(lab, label, allowed, await asyncio.to_thread(weights, lab))
                    kills.append(label)
                end = await ended(lab, kills, allowed, sampler)
            assert end["phase"] == "promoted", describe(end)
    assert TALLY.kills[label] >= 2


async def test_kills_at_the_rollback_and_abort_commits_still_end_on_the_live_colour(
        lab: LabStack) -> None:
    await restart(lab)
    async with load(lab):
        async def at_10() -> None:
            await until(lambda: asyncio.to_thread(
                lambda: weights(lab) == {"blue": 90, "green": 10} or None), 20, "green at 10%")

        async def abort() -> None:
            await at_10()
            with contextlib.suppress(ApiError):  # the daemon dies before it answers
                await post(lab, "abort", {"reason": "chaos"})

        # The abort's split (blue 100%, green to drain) sent, not read back: green left
        # draining.
        end = await armed_rollout(lab, ["after_router:2"], LONG_FIRST, trigger=abort,
                                  ends={"aborted"})
        assert end["weights"] == {"blue": 100, "green": 0}

        async def fault() -> None:
            await at_10()
            await asyncio.to_thread(set_faults, lab.green.url, down=True)

        # The rollback stored (rolling_back, blue 100%), HAProxy still at 10%. (Last with
        # this lab: green's 503s stay in the 5 s rate window a while.)
        try:
            end = await armed_rollout(lab, ["after_commit:2"], LONG_FIRST, trigger=fault,
                                      ends={"rolled_back"})
        finally:
            await asyncio.to_thread(clear_faults, lab.green.url)
        assert end["weights"] == {"blue": 100, "green": 0}
        assert any(e["kind"] == "rolling_back" for e in end["events"]), describe(end)


# ---------------------------------------------------------------- prepare steps, with a database


@pytest.fixture
def db_lab(tmp_path: Path, postgres: PostgresLab,
           pg_names: Callable[[str], str]) -> Iterator[LabStack]:
    from tests.test_database_e2e import initdb, upgrade_command

    work = tmp_path / "dblab"
    work.mkdir()
    dsn = work / "pg.dsn"
    dsn.write_text(f"host=127.0.0.1 port={postgres.port} user=postgres\n")
    names = {"blue": pg_names("blue"), "green": pg_names("green")}
    initdb(postgres, names["blue"], work / "fs-blue", partners=50)
    database = {"strategy": "separate", "dsn_file": str(dsn), "names": names,
                "filestore": {"blue": str(work / "fs-blue"), "green": str(work / "fs-green")},
                "backup": {"dir": str(work / "backups"), "keep": 2}, "lock_wait": "5s"}
    prepare = ["backup", "clone",
               {"deploy": {"command": [sys.executable, "-c", "import time; time.sleep(0.2)"],
                           "timeout": "30s"}},
               {"migrate": {"command": upgrade_command(postgres, "--major", "--fault", "slow",
                                                       "--slow-seconds", "0.3"),
                            "timeout": "1m"}},
               "gate"]
    stack = LabStack(work, steps=[{"weight": 50, "hold": "1s"}, {"weight": 100}], bake="1s",
                     site_extra={"database": database, "prepare": prepare})
    stack.names = names  # type: ignore[attr-defined]
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


async def test_a_kill_in_the_middle_of_each_prepare_step_resumes(
        db_lab: LabStack, postgres: PostgresLab) -> None:
    lab = db_lab
    steps = lab.steps
    # backup:2 the dump written, the filestore not archived (a .partial directory);
    # clone:2 the temporary database filled, not swapped in; deploy:2 the command exited,
    # the health check not run; gate: checked, not reported. Each restart is armed at the
    # next point (the step killed runs again first), the last one not.
    chain = ["in_step:backup:2", "in_step:clone:2", "in_step:deploy:2", "in_step:gate"]
    async with load(lab):
        end = await armed_rollout(lab, chain, steps, ends={"promoted"})
        told = stored_events(lab, end["rollout"]["id"])
        for crash in chain:
            step = crashpoints.parse(crash).point.split(":")[1]
            again = [m for _, m in told if "runs again from its start" in m and step in m]
            assert again, (step, told)
            assert any(k == "prepare_step" and f" {step} passed in " in m for k, m in told)
        leftovers(lab, postgres)
        # migrate+0.5: the upgrade runs; the restart aborts (half-upgraded, never re-run).
        end = await armed_rollout(lab, ["in_step:migrate+0.5"], steps, ends={"aborted"})
        told = stored_events(lab, end["rollout"]["id"])
        assert any(k == "aborted" and "half-upgraded" in m for k, m in told), told
        assert weights(lab) == {"blue": 100, "green": 0}
        leftovers(lab, postgres)


def leftovers(lab: LabStack, postgres: PostgresLab) -> None:
    """No temporary database of a clone or restore, no half-written backup."""
    names = lab.names  # type: ignore[attr-defined]
    dbs = set(postgres.psql("SELECT datname FROM pg_database").split())
    assert not any(d.startswith(names["green"] + "_") for d in dbs), dbs
    partial = [p.name for p in (lab.workdir / "backups").rglob(".*.partial")]
    assert not partial, partial


def test_every_kill_of_this_module_resumed() -> None:
    """Last: the counts above, whole. (Skipped when the tests that kill were deselected.)"""
    if not TALLY.kills:
        pytest.skip("no chaos test ran before this one")
    assert TALLY.resumed == TALLY.kills, TALLY.table()
    ran = {point for point in TALLY.kills if point != "random kill -9"}
    whole = any(p.startswith("after_") for p in ran) and any(p.startswith("in_step:")
                                                            for p in ran)
    if whole:  # the whole module ran: every point was killed at least once
        assert ran >= {"after_save", "after_commit", "after_router",
                       *(f"in_step:{s}" for s in ("backup", "clone", "deploy", "migrate",
                                                  "gate"))}, TALLY.table()
