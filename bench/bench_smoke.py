"""The whole preflight, timed as the daemon runs it, beside the runbook's phase 3 as it runs it.

The lab: two Odoo stand-ins (`StandinProcess`, separate processes on 127.0.0.1), live `blue`
17.0 and candidate `green` 17.0, sharing one `--data-dir` (so sessions are shared, as two Odoo
workers on one data_dir and database), each with a smoke user `smoke` with a password
(`--user smoke:PASSWORD`). The stand-in's password check costs 0.35 s, as Odoo 17's pbkdf2
(passlib pbkdf2_sha512, 600,000 rounds): it is in the numbers.

odoo-watchdog: `watchdog.preflight.run`, the function the daemon's tick calls, with a SiteConfig
built as the tests build it (`rollout.smoke: [health, login, rpc, workflow, latency,
sessions]`, `smoke_settings: {credentials_file: smoke.json, latency: {requests: 20}}`) and the
smoke user read from that file by `watchdog.smoke.SmokeCredentials` (as at daemon start). One
new rollout id per run (the workflow names its partner after it). Each run: the live colour's
/web/health, then every check on the candidate; each check's own duration comes from the
preflight's report. Green's partner count is checked unchanged after all runs.

The runbook (runbook.md), timed as run, each command a subprocess (no shell), only the host and
port translated (localhost:9069 -> the candidate stand-in on 127.0.0.1):
- phase 2's `sleep 30` ("Waiting for green environment to start"), before phase 3 can start:
  really slept once (it is `sleep 30` every time), or with --quick counted as 30 s unslept;
- phase 3's smoke tests: `curl -f .../web/login` and `curl -f .../web/database/manager`;
- auto_cutover.sh step 4: 10 x `curl -o /dev/null -s -w '%{time_total}\\n' .../web/health`,
  each added up with `echo "$TOTAL_TIME + $TIME" | bc`, then `scale=3; $TOTAL_TIME / 10` and
  `$AVG_TIME > 0.5` through bc.
Phase 3's `python3 scripts/health_check.py --target green --comprehensive` is not in the
runbook (nothing to run), and its step 11 "critical workflow validation" is a comment.

    .venv/bin/python bench/bench_smoke.py [--runs 10] [--quick]

Measured on 2 cores (AMD EPYC, 24 GB RAM), Python 3.11.7, Linux 6.18, on 2026-12-03 (the
full run, `--runs 10`, the sleep really slept; the whole run 41 s):

    10 runs of each side; stand-ins 17.0 -> 17.0 on one data_dir; password check 0.35 s

                                            median     min     max  proves
    ------------------------------------------------------------------------------------------------
    odoo-watchdog: preflight.run, whole     782 ms  753 ms  1.15 s  works: login, write, sessions
      live /web/health (+ overhead)           3 ms    1 ms    4 ms  live colour healthy (baseline)
      health                                  2 ms    2 ms    4 ms  /web/health 200 {status: pass}
      login                                   2 ms    1 ms    3 ms  /web/login 200: db and page load
      rpc                                     4 ms    3 ms   16 ms  XML-RPC common.version() answers
      workflow                              370 ms  366 ms  722 ms  partner created, read, unlinked
      latency                                32 ms   15 ms   41 ms  p95 of 20 GET /web/login < 500ms
      sessions                              366 ms  361 ms  380 ms  a live session valid on green
    ------------------------------------------------------------------------------------------------
    runbook: sleep 30 (slept once)          30.0 s  30.0 s  30.0 s  nothing: waits, up or not
    runbook: curl -f /web/login              12 ms   10 ms   15 ms  /web/login < 400 (exit 0)
    runbook: curl -f /web/database/manager   13 ms   10 ms   15 ms  db manager < 400 (exit 22)
    runbook: 10 x curl /web/health + bc     154 ms  147 ms  172 ms  mean of 10 /web/health < 0.5 s
    runbook phase 3, sum of medians         30.2 s                  Odoo answers; no login, no write
    runbook phase 3 without the sleep       178 ms
    ------------------------------------------------------------------------------------------------
    goal: the whole preflight under 2 s: PASS (median 0.782 s, max 1.148 s)

    Preflight runs: 1.148, 0.787, 0.781, 0.781, 0.753, 0.765, 0.773, 0.784, 0.800, 0.793 s. Green's
    partners: 4 before, 4 after (unchanged).
    The last preflight's detail: green: health ok 4 ms (/web/health pass); login ok 2 ms (/web/login
    200); rpc ok 9 ms (XML-RPC version 17.0 (17.0-20250225)); workflow ok 369 ms (partner created,
    read back and unlinked over XML-RPC on 17.0); latency ok 41 ms (p95 3 ms < 500 ms over 20 GET
    /web/login); sessions ok 364 ms (a session made on blue is valid on green: users stay logged in)
    The stand-in's password check costs 0.35 s as Odoo's pbkdf2 and is in the numbers: the
    workflow's XML-RPC authenticate (and, on the first run, its first call's res.users.check, cached
    after), the sessions check's web login on live.
    Runbook: with its sleep, 30.2 s, 39x the preflight's median; without it 178 ms, proving that
    Odoo answers, not that it works. The latency loop said AVG_TIME .001 s, over 0.5: 0. curl -f
    exits 22 on a status >= 400; the stand-in has no /web/database/manager (404), so under the
    script's `set -e` phase 3 would stop there (real Odoo with list_db answers 200). Not run:
    health_check.py (not in the runbook), step 11 (a comment).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from watchdog import preflight
from watchdog.config import SiteConfig
from watchdog.lab.standin import StandinProcess
from watchdog.rollout import Phase, Rollout, Step
from watchdog.smoke import Credentials, SmokeCredentials

CHECKS = ["health", "login", "rpc", "workflow", "latency", "sessions"]
LATENCY_REQUESTS = 20
GOAL = 2.0  # seconds, the whole preflight (median)
RUNBOOK_SLEEP = 30.0  # phase 2: `sleep 30`
LOOP_REQUESTS = 10  # auto_cutover.sh: `for i in {1..10}`
SMOKE_LOGIN = "smoke"
SMOKE_PASSWORD = secrets.token_urlsafe(18)  # a lab user's, made per run, loopback only
PASSWORD_COST = 0.35  # the stand-in's default, as Odoo's pbkdf2

PROVES_PREFLIGHT = "works: login, write, sessions"
PROVES = {
    "live health": "live colour healthy (baseline)",
    "health": "/web/health 200 {status: pass}",
    "login": "/web/login 200: db and page load",
    "rpc": "XML-RPC common.version() answers",
    "workflow": "partner created, read, unlinked",
    "latency": f"p95 of {LATENCY_REQUESTS} GET /web/login < 500ms",
    "sessions": "a live session valid on green",
}
LABELS = {"live health": "live /web/health (+ overhead)"}
WIDTH = 96  # the table and notes fit the module docstring (line length 100)


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


@dataclass
class Spread:
    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def cells(self) -> str:
        return (f"{fmt(self.median):>8}{fmt(min(self.values)):>8}"
                f"{fmt(max(self.values)):>8}")


def fmt(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.1f} s"


# ---------------------------------------------------------------------- odoo-watchdog


def site_config(blue: str, green: str) -> SiteConfig:
    return SiteConfig.model_validate({
        "router": {"kind": "haproxy", "socket": "/nonexistent", "backend": "odoo"},
        "colors": {"blue": {"server": "b", "url": blue}, "green": {"server": "g", "url": green}},
        "rollout": {"smoke": CHECKS},
        "smoke_settings": {"credentials_file": "smoke.json",
                           "latency": {"requests": LATENCY_REQUESTS}},
    })


def rollout(number: int) -> Rollout:
    return Rollout(f"bench-smoke-{number}", "blue", "green", "17.0", "canary", (Step(100),),
                   0.0, 0.0, Phase.PREFLIGHT, time.time())


def partners(url: str) -> int:
    with urllib.request.urlopen(f"{url}/__lab__/info", timeout=5) as resp:  # noqa: S310
        return int(json.load(resp)["partners"])


async def time_preflight(site: SiteConfig, creds: Credentials, runs: int
                         ) -> tuple[Spread, dict[str, Spread], str]:
    whole = Spread()
    checks: dict[str, Spread] = {name: Spread() for name in ["live health", *CHECKS]}
    detail = ""
    for number in range(1, runs + 1):
        started = time.monotonic()
        result = await preflight.run(site, rollout(number), None, creds)
        took = time.monotonic() - started
        if not result.ok:
            raise RuntimeError(f"the preflight failed on run {number}: {result.detail}")
        whole.add(took)
        seen = {c["check"]: float(c["seconds"]) for c in result.checks()}
        for name in CHECKS:
            checks[name].add(seen[name])
        # The live colour's /web/health is run by preflight.run before the report's checks.
        checks["live health"].add(max(0.0, took - sum(seen.values())))
        detail = result.detail
        say(f"preflight run {number}/{runs}: {took:.3f} s ("
            + ", ".join(f"{n} {seen[n] * 1000:.0f} ms" for n in CHECKS) + ")")
    return whole, checks, detail


# ---------------------------------------------------------------------- the runbook


def run(argv: list[str], stdin: str | None = None) -> tuple[float, int, str]:
    started = time.monotonic()
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False,
                          timeout=60)
    return time.monotonic() - started, done.returncode, done.stdout.strip()


def latency_loop(green: str) -> tuple[float, str]:
    """auto_cutover.sh step 4 as it runs: curl then bc, 10 times; the average and the test."""
    started = time.monotonic()
    total = "0"
    for _ in range(LOOP_REQUESTS):
        _, code, one = run(["curl", "-o", "/dev/null", "-s", "-w", "%{time_total}\n",
                            f"{green}/web/health"])
        if code != 0:
            raise RuntimeError(f"curl of {green}/web/health exited {code}")
        _, _, total = run(["bc"], f"{total} + {one}\n")
    _, _, avg = run(["bc"], f"scale=3; {total} / {LOOP_REQUESTS}\n")
    _, _, over = run(["bc", "-l"], f"{avg} > 0.5\n")
    took = time.monotonic() - started
    return took, f"AVG_TIME {avg} s, over 0.5: {over}"


@dataclass
class RunbookTimes:
    login: Spread = field(default_factory=Spread)
    manager: Spread = field(default_factory=Spread)
    loop: Spread = field(default_factory=Spread)
    login_exit: set[int] = field(default_factory=set)
    manager_exit: set[int] = field(default_factory=set)
    loop_said: str = ""
    sleep: float = RUNBOOK_SLEEP
    slept: bool = False


def time_runbook(green: str, runs: int, quick: bool) -> RunbookTimes:
    times = RunbookTimes()
    if quick:
        say(f"runbook: `sleep {RUNBOOK_SLEEP:g}` counted as {RUNBOOK_SLEEP:g} s, not slept "
            "(--quick)")
    else:
        say(f"runbook: `sleep {RUNBOOK_SLEEP:g}` (phase 2, before phase 3), really slept")
        times.sleep, _, _ = run(["sleep", f"{RUNBOOK_SLEEP:g}"])
        times.slept = True
    for number in range(1, runs + 1):
        took, code, _ = run(["curl", "-f", f"{green}/web/login"])
        times.login.add(took)
        times.login_exit.add(code)
        took, code, _ = run(["curl", "-f", f"{green}/web/database/manager"])
        times.manager.add(took)
        times.manager_exit.add(code)
        took, times.loop_said = latency_loop(green)
        times.loop.add(took)
        say(f"runbook run {number}/{runs}: curl /web/login {times.login.values[-1] * 1000:.0f}"
            f" ms, curl /web/database/manager {times.manager.values[-1] * 1000:.0f} ms, "
            f"latency loop {took * 1000:.0f} ms ({times.loop_said})")
    return times


# ---------------------------------------------------------------------- the table


def machine() -> str:
    model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (f"{os.cpu_count()} cores ({model}{mem}), Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}")


def exits(codes: set[int]) -> str:
    return ",".join(str(c) for c in sorted(codes))


def row(label: str, cells: str, proves: str) -> str:
    return f"{label:<38}{cells}  {proves}".rstrip()


def table(runs: int, whole: Spread, checks: dict[str, Spread], detail: str,
          rb: RunbookTimes, partners_before: int, partners_after: int) -> None:
    rule = "-" * WIDTH
    checks_only = rb.login.median + rb.manager.median + rb.loop.median
    total = rb.sleep + checks_only
    verdict = "PASS" if whole.median < GOAL else "FAIL"
    sleep_how = "slept once" if rb.slept else "counted, --quick"
    lines = [
        f"machine: {machine()}",
        f"{runs} runs of each side; stand-ins 17.0 -> 17.0 on one data_dir; password check "
        f"{PASSWORD_COST:g} s",
        "",
        row("", f"{'median':>8}{'min':>8}{'max':>8}", "proves"),
        rule,
        row("odoo-watchdog: preflight.run, whole", whole.cells(), PROVES_PREFLIGHT),
        *(row(f"  {LABELS.get(name, name)}", spread.cells(), PROVES[name])
          for name, spread in checks.items()),
        rule,
        row(f"runbook: sleep 30 ({sleep_how})", Spread([rb.sleep]).cells(),
            "nothing: waits, up or not"),
        row("runbook: curl -f /web/login", rb.login.cells(),
            f"/web/login < 400 (exit {exits(rb.login_exit)})"),
        row("runbook: curl -f /web/database/manager", rb.manager.cells(),
            f"db manager < 400 (exit {exits(rb.manager_exit)})"),
        row("runbook: 10 x curl /web/health + bc", rb.loop.cells(),
            "mean of 10 /web/health < 0.5 s"),
        row("runbook phase 3, sum of medians", f"{fmt(total):>8}{'':>16}",
            "Odoo answers; no login, no write"),
        row("runbook phase 3 without the sleep", f"{fmt(checks_only):>8}{'':>16}", ""),
        rule,
        f"goal: the whole preflight under {GOAL:g} s: {verdict} (median {whole.median:.3f} s, "
        f"max {max(whole.values):.3f} s)",
    ]
    notes = [
        f"Preflight runs: {', '.join(f'{v:.3f}' for v in whole.values)} s. Green's partners: "
        f"{partners_before} before, {partners_after} after"
        f"{' (unchanged)' if partners_before == partners_after else ' (CHANGED)'}.",
        f"The last preflight's detail: {detail}",
        f"The stand-in's password check costs {PASSWORD_COST:g} s as Odoo's pbkdf2 and is in "
        "the numbers: the workflow's XML-RPC authenticate (and, on the first run, its first "
        "call's res.users.check, cached after), the sessions check's web login on live.",
        f"Runbook: with its sleep, {total:.1f} s, {total / whole.median:.0f}x the preflight's "
        f"median; without it {fmt(checks_only)}, proving that Odoo answers, not that it works. "
        f"The latency loop said {rb.loop_said}. curl -f exits 22 on a status >= 400"
        + ("; the stand-in has no /web/database/manager (404), so under the script's `set -e` "
           "phase 3 would stop there (real Odoo with list_db answers 200)"
           if rb.manager_exit != {0} else "")
        + ". Not run: health_check.py (not in the runbook), step 11 (a comment).",
    ]
    print()
    print("\n".join(lines))
    print()
    for note in notes:
        print(textwrap.fill(note, WIDTH))


# ---------------------------------------------------------------------- main


async def bench(runs: int, quick: bool, workdir: Path) -> int:
    data = workdir / "data"
    user = f"{SMOKE_LOGIN}:{SMOKE_PASSWORD}"
    blue = StandinProcess("blue", workdir, version="17.0", users=[user], data_dir=data)
    green = StandinProcess("green", workdir, version="17.0", users=[user], data_dir=data)
    started: list[StandinProcess] = []
    try:
        for lab in (blue, green):
            say(f"starting the {lab.color} stand-in (17.0) on {lab.url}")
            started.append(lab)
            await asyncio.to_thread(lab.start)
            say(f"{lab.color} stand-in pid {lab.pid}")
        (workdir / "smoke.json").write_text(json.dumps(
            {"db": "odoo", "login": SMOKE_LOGIN, "password": SMOKE_PASSWORD}))
        (workdir / "smoke.json").chmod(0o600)
        site = site_config(blue.url, green.url)
        store = SmokeCredentials()
        store.configure("odoo", site, workdir)
        creds = store.get("odoo")
        assert creds is not None
        before = await asyncio.to_thread(partners, green.url)
        whole, checks, detail = await time_preflight(site, creds, runs)
        after = await asyncio.to_thread(partners, green.url)
        rb = await asyncio.to_thread(time_runbook, green.url, runs, quick)
    finally:
        for lab in reversed(started):
            say(f"stopping the {lab.color} stand-in (pid {lab.pid})")
            await asyncio.to_thread(lab.stop)
    table(runs, whole, checks, detail, rb, before, after)
    return 0 if whole.median < GOAL and before == after else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="runs of each side (default 10)")
    parser.add_argument("--quick", action="store_true",
                        help="count the runbook's `sleep 30` as 30 s without sleeping")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    missing = [p for p in ("curl", "bc", "sleep") if shutil.which(p) is None]
    if missing:
        print(f"missing programs: {', '.join(missing)}", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="bench-smoke-"))
    try:
        return asyncio.run(bench(args.runs, args.quick, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
