"""The judge on the lab (issue 14, DESIGN.md §14): 20 healthy canaries with 2% background
errors on both colours at 10 req/s each promote with no false rollback, while a fixed 1%
threshold on the same requests rolls back some of them.

One daemon (a real process, `python -m watchdog.cli run`, no Prometheus running and no
`prometheus:` section) runs 40 sites at once; one HAProxy 2.6 has a backend per site, each
with `odoo-blue` and `odoo-green` on the same two stand-ins, both failing 2% of all requests
at random (`error_rate: 0.02`). The load is 10 req/s per routed site (200 req/s in all), new
users without a cookie, so the weights split it.

- `site00` .. `site19` get the load through the frontend (Host header) and have the judge as
  rules/traffic.yml ships it (`candidate_5xx_vs_live`: proportions, max_ratio 2, confidence
  0.9999, window 1m, min_requests 30, `for: 5s`), `on_fire: rollback`. (At 0.99 and `for: 0s`
  it rolled back 4 of 140 healthy canaries over 7 runs of this test: repeated looks; see the
  comment in rules/traffic.yml.)
- `fixed00` .. `fixed19` are their shadows: backends no request reaches, whose sites the daemon
  rolls out like the others (their weights move in HAProxy and nothing else), with the fixed
  threshold `error_rate max 0.01`, `on_fire: rollback`. A copier in the test sends the daemon
  each access-log line of `siteNN` a second time with the backend renamed `fixedNN`, so
  `fixedNN` judges exactly the requests `siteNN` judges: byte for byte the same lines.

Why shadows and not a `notify` rule beside the judge on the same site: a rule that is not
`ok` holds a rollout whatever its `on_fire` (docs/rules.md), and a 1% threshold on 2%
background is breached most of the time, so a notify rule would keep the healthy canaries
from promoting and the judge's half of the claim could not be shown. Shadow sites keep the
two rules apart and still give each the same traffic.

What makes the comparison fair: both rules read the same candidate's requests (the copier),
over the same window, with the same `min_requests` (the judge asks it of both colours) and the
same `for`, both judged as the lines arrive (at most every 100 ms) by the same fast path, on
the same steps and holds (10% for 40 s, 50% for 40 s, 100% and a 5 s bake). At the 10% step
the candidate gets 1 req/s, so the fixed rule has 30 to 60 requests: a single 5xx is already
1.7-3.3%; the judge sets that against the live colour's requests of the
same window (9 req/s) and finds it no worse. The fixed rule also applies at 100% and in the bake,
where the judge is `skipped` (no live traffic to compare with): the test prints at which step
each fixed-threshold site was rolled back, the 10% step being the like-for-like small sample.
A threshold under the background share is what a fixed rule gets when the background is not
known in advance; the judge needs no such number.

Faults are set and the load starts only once every site has passed preflight (2% of the
smoke checks would fail too, and abort rollouts before any traffic moved), so both colours'
windows start at the same moment and with the same 2%.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from watchdog.client import Client
from watchdog.lab.multisite import LogCopier, MultiSiteHaproxy, RateLoad
from watchdog.lab.procs import ManagedProcess, free_port, free_udp_port, http_ok
from watchdog.lab.standin import StandinProcess, set_faults

pytestmark = pytest.mark.lab

SITES = 20
RATE = 10.0  # requests per second per site
BACKGROUND = 0.02  # each request of either colour fails with this chance
HOLD = "40s"
BAKE = "5s"
JUDGE_RULE = "judge_5xx"
FIXED_RULE = "fixed_5xx_1pct"
FINAL = {"promoted", "rolled_back", "aborted"}

JUDGED = [f"site{i:02d}" for i in range(SITES)]
SHADOWS = [f"fixed{i:02d}" for i in range(SITES)]


SHIPPED = Path(__file__).resolve().parent.parent / "rules" / "traffic.yml"


def shipped_judge() -> dict[str, Any]:
    """The judge as rules/traffic.yml ships it: what the test shows is the default."""
    rules = yaml.safe_load(SHIPPED.read_text())["rules"]
    found: dict[str, Any] = next(r for r in rules if r["name"] == "candidate_5xx_vs_live")
    return found


def rules_text() -> str:
    judge = shipped_judge()
    same = {k: judge[k] for k in ("window", "min_requests", "for")}  # the same looks
    return yaml.safe_dump({"rules": [
        {**judge, "name": JUDGE_RULE, "on_fire": "rollback", "sites": JUDGED},
        {"name": FIXED_RULE, "source": "traffic", "measure": "error_rate", "max": 0.01,
         **same, "on_fire": "rollback", "sites": SHADOWS},
    ]}, sort_keys=False)


def daemon_config(workdir: Path, api_port: int, syslog_port: int, haproxy: MultiSiteHaproxy,
                  blue: StandinProcess, green: StandinProcess, token_path: Path,
                  rules_path: Path) -> dict[str, Any]:
    def site(backend: str) -> dict[str, Any]:
        return {
            "router": {"kind": "haproxy", "socket": str(haproxy.admin_socket),
                       "backend": backend, "drain_timeout": "1s"},
            "colors": {"blue": {"server": "odoo-blue", "url": blue.url},
                       "green": {"server": "odoo-green", "url": green.url}},
            "live": "blue",
            "rollout": {"strategy": "canary", "interval": "1s", "bake": BAKE,
                        "keep_previous": "1h", "smoke": ["health"],
                        "steps": [{"weight": 10, "hold": HOLD}, {"weight": 50, "hold": HOLD},
                                  {"weight": 100}]},
        }

    return {
        "api": {"listen": f"127.0.0.1:{api_port}", "token_file": str(token_path)},
        "state_dir": str(workdir / "state"),
        "rule_files": [str(rules_path)],
        "access_log": {"listen": f"127.0.0.1:{syslog_port}", "format": "haproxy"},
        "sites": {name: site(name) for name in [*JUDGED, *SHADOWS]},
    }


def sites_view(api: str) -> dict[str, dict[str, Any]]:
    with urllib.request.urlopen(f"{api}/api/v1/sites", timeout=10) as resp:
        data = json.loads(resp.read())
    return {view["site"]: view for view in data["sites"]}


async def poll(api: str) -> dict[str, dict[str, Any]]:
    return await asyncio.to_thread(sites_view, api)


def lines_seen(api: str) -> dict[str, float]:
    """The daemon's own count of access-log lines (odoo_watchdog_access_log_lines_total by
    result) and of datagrams the kernel dropped."""
    with urllib.request.urlopen(f"{api}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    seen: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "odoo_watchdog_access_log_lines_total":
                seen[sample.labels["result"]] = sample.value
            elif sample.name == "odoo_watchdog_access_log_kernel_drops_total":
                seen["kernel_drops"] = sample.value
            elif (sample.name == "odoo_watchdog_rule_evaluations_total"
                  and sample.labels["rule"] == JUDGE_RULE):
                key = f"judged_{sample.labels['result']}"
                seen[key] = seen.get(key, 0.0) + sample.value
    return seen


def judge_lines(log_path: Path) -> list[dict[str, Any]]:
    """The daemon's `rule_state` lines of the judge rule that went to firing."""
    found = []
    for line in log_path.read_text(errors="replace").splitlines():
        if '"rule_state"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("rule") == JUDGE_RULE and record.get("state") == "firing":
            found.append(record)
    return found


async def test_judge_promotes_20_healthy_canaries_a_fixed_threshold_rolls_back_some(
        tmp_path: Path) -> None:
    wall = time.monotonic()
    blue = StandinProcess("blue", tmp_path / "blue", version="16.0")
    green = StandinProcess("green", tmp_path / "green", version="17.0")
    syslog_port, api_port = free_udp_port(), free_port()
    copier = await LogCopier(("127.0.0.1", syslog_port),
                             {j: [s] for j, s in zip(JUDGED, SHADOWS, strict=True)}).start()
    haproxy: MultiSiteHaproxy | None = None
    daemon: ManagedProcess | None = None
    load: RateLoad | None = None
    try:
        blue.start()
        green.start()
        haproxy = MultiSiteHaproxy(tmp_path / "haproxy", blue.port, green.port, routed=JUDGED,
                                   shadows=SHADOWS, syslog_ports=[syslog_port, copier.port])
        haproxy.start()
        token = "judge-lab-" + "0" * 22
        token_path, rules_path = tmp_path / "api-token", tmp_path / "rules.yml"
        token_path.write_text(token + "\n")
        token_path.chmod(0o600)
        rules_path.write_text(rules_text())
        config_path = tmp_path / "watchdog.yml"
        config_path.write_text(yaml.safe_dump(daemon_config(
            tmp_path, api_port, syslog_port, haproxy, blue, green, token_path, rules_path),
            sort_keys=False))
        api = f"http://127.0.0.1:{api_port}"
        daemon = ManagedProcess(
            "odoo-watchdog", [sys.executable, "-m", "watchdog.cli", "run", "-c",
                              str(config_path)],
            log_path=tmp_path / "daemon.log", ready=lambda: http_ok(f"{api}/healthz"),
            ready_timeout=30)
        await asyncio.to_thread(daemon.start)
        client = Client(api, token)

        # Every site's rollout at once; traffic and faults once all have passed preflight.
        for name in [*JUDGED, *SHADOWS]:
            await asyncio.to_thread(client.post, f"/api/v1/sites/{name}/rollouts",
                                    {"to": "green", "version": "17.0"})
        deadline = time.monotonic() + 30
        while True:
            views = await poll(api)
            at_ten = [n for n, v in views.items() if v["phase"] == "progressing"
                      and v["actual_weights"] == {"blue": 90, "green": 10}]
            if len(at_ten) == len(views):
                break
            ended = {n: v["rollout"] for n, v in views.items() if v["phase"] in FINAL}
            assert not ended, f"rollouts ended before any load: {ended}"
            assert time.monotonic() < deadline, {n: v["phase"] for n, v in views.items()}
            await asyncio.sleep(0.2)
        for standin in (blue, green):
            await asyncio.to_thread(set_faults, standin.url, error_rate=BACKGROUND)
        load = await RateLoad(haproxy.url, JUDGED, rate=RATE, path="/web/login").start()
        started = time.monotonic()

        # Until every site has ended; what each went through, and the judge's p-values.
        step_at_end: dict[str, int] = {}  # the step (1: 10%, 2: 50%, 3: 100%) it ended at
        min_p: dict[str, float] = {}  # of the judge's p-values read once a second
        deadline = started + 150
        while not all(v["phase"] in FINAL for v in views.values()):
            assert time.monotonic() < deadline, {n: v["phase"] for n, v in views.items()}
            await asyncio.sleep(1.0)
            views = await poll(api)
            for name, view in views.items():
                if view["phase"] in FINAL or view["phase"] == "rolling_back":
                    step_at_end.setdefault(name, (view["rollout"] or {}).get("step", 0))
                for row in view["rules"]:
                    if row["name"] == JUDGE_RULE and row.get("p_value") is not None:
                        min_p[name] = min(min_p.get(name, 1.0), float(row["p_value"]))
        await load.stop()
        sent = load.total()
        seconds = time.monotonic() - started
        await asyncio.sleep(0.5)  # the last lines reach the daemon
        received = await asyncio.to_thread(lines_seen, api)
    finally:
        if load is not None:
            await load.stop()
        copier.close()
        for proc in (daemon, haproxy):
            if proc is not None:
                proc.stop()
        blue.stop()
        green.stop()

    phases = {name: view["phase"] for name, view in views.items()}
    judged_back = sorted(n for n in JUDGED if phases[n] != "promoted")
    fixed_back = sorted(n for n in SHADOWS if phases[n] == "rolled_back")
    by_step = {step: sorted(n for n in fixed_back if step_at_end[n] == step) for step in (1, 2, 3)}
    firing = judge_lines(tmp_path / "daemon.log")
    error_share = sent.errors / max(1, sent.answered)
    print(f"\nload: {sent.sent} requests in {seconds:.0f}s ({sent.sent / seconds:.0f} req/s "
          f"for {RATE * SITES:.0f} wanted), {sent.errors} failed ({error_share:.2%}), "
          f"answered by {dict(sent.colors)}, largest lag behind the schedule "
          f"{load.lag * 1000:.0f} ms, {load.skipped} ticks skipped")
    lines = {k: v for k, v in received.items() if not k.startswith("judged_")}
    judged = {k[7:]: round(v / SITES) for k, v in received.items() if k.startswith("judged_")}
    print(f"log copier: {copier.received} lines received, {copier.copied} copied; the "
          f"daemon's receiver: {lines}; the judge's evaluations per site: {judged}")
    print(f"judge ({shipped_judge()['judge']}, for {shipped_judge()['for']}): "
          f"{SITES - len(judged_back)} of {SITES} "
          f"promoted, {len(judged_back)} not: {[(n, phases[n]) for n in judged_back]}; "
          f"smallest p-value seen per site: min {min(min_p.values(), default=1.0):.3g}, "
          f"median {sorted(min_p.values())[len(min_p) // 2] if min_p else 1.0:.3g}")
    for record in firing:
        print(f"  judge fired on {record.get('site')}: {record.get('detail')}")
    print(f"fixed threshold (error_rate max 1%): {len(fixed_back)} of {SITES} rolled back "
          f"(at 10%: {len(by_step[1])}, at 50%: {len(by_step[2])}, at 100%/bake: "
          f"{len(by_step[3])}); {SITES - len(fixed_back)} promoted")
    print(f"run time {time.monotonic() - wall:.0f}s")

    # The load was what the claim says: 10 req/s a site, about 2% failed, both colours.
    assert sent.sent >= 0.9 * RATE * SITES * seconds, sent.sent
    assert 0.01 < error_share < 0.03, error_share
    assert sent.colors["green"] > 0 and sent.colors["blue"] > 0
    # Each request reached the daemon twice (its site's line and the shadow's copy).
    assert received.get("kernel_drops") == 0, received
    parsed = received["received"] - received["unparsed"] - received["unmapped"]
    assert parsed >= 2 * sent.answered - 10, (received, sent.answered)
    # The judge: every healthy canary promoted, none rolled back.
    assert not firing, [(r.get("site"), r.get("detail")) for r in firing]
    assert judged_back == [], {n: views[n]["rollout"] for n in judged_back}
    # The fixed threshold on the same requests rolled some back (the point).
    assert fixed_back, phases
