"""The demo's fourth act: a rollback decided from the access log, with no Prometheus at all.

A fresh lab (`LabStack(prometheus=False, access_log=True)`): two stand-ins behind a real
HAProxy 2.6 that sends its access log over syslog/UDP to the daemon, and no Prometheus process
and no `prometheus:` section in the daemon's config. The rules are those of rules/traffic.yml
as shipped (DESIGN.md §14, docs/traffic.md): the candidate's 5xx share against live's
(two-proportion judge), its latency against live's (Mann-Whitney judge), an absolute 5xx safety
net and /web/health. The canary blue -> green stays at 10% under load through the proxy until
every rule is ok, then green starts answering 30% HTTP 500; the act prints the rule that fired
with the p-value and the samples of the site's JSON at that moment, and the time from the fault
to green at weight 0 as HAProxy's runtime API reports it (polled every 20 ms), then the rules of
the live colour, which skip the comparison while green has no traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import yaml

from watchdog.lab.haproxy import colour_servers
from watchdog.lab.load import LoadClient
from watchdog.lab.stack import LabStack
from watchdog.lab.standin import set_faults

RULES_FILE = Path(__file__).resolve().parents[2] / "rules" / "traffic.yml"
FAULT = 0.3  # share of green's answers that become HTTP 500
# Green's clean requests in the absolute net's window before the fault: with 100 of them the
# net (5xx share > 20% over 1m) needs some 200 failed ones, about 20 s, while the judge fires
# in about 7 s. With 50 the net could cross 20% first (a CI run: 20.18% after 5 s).
CLEAN_BEFORE = 100
POLL = 0.02  # seconds between runtime API reads
# Both stand-ins answer this much later than bare, like a light Odoo page. Bare, they answer in
# about 1 ms and HAProxy logs whole ms, so a candidate whose median is 2 ms against 1 ms is
# "twice as slow" to the latency judge (max_ratio 1.2), and a colour with 10% of the traffic on
# this 2-core machine often is: measured, 2 false rollbacks in 5 runs of this act without it.
SERVICE_TIME = 0.02
TRAFFIC_RULES = ("candidate_5xx_vs_live", "candidate_latency_vs_live", "error_rate")


def _say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def _row_text(row: dict[str, Any]) -> str:
    samples = ", ".join(f"{c} {n}" for c, n in (row.get("samples") or {}).items())
    parts = [f"{row['name']} on {row['color']}: {row['state']}"]
    if row.get("p_value") is not None:
        parts.append(f"p={row['p_value']:.2g}")
    ratio = row.get("ratio")
    if ratio is not None:  # a number, or "inf" (x / 0) as the JSON writes it
        parts.append(f"ratio {ratio:.3g}" if isinstance(ratio, float | int) else f"ratio {ratio}")
    elif row.get("value") is not None:
        parts.append(f"value {row['value']:.3g}")
    if samples:
        parts.append(f"requests in window: {samples}")
    return ", ".join(parts)


def _ready(site: dict[str, Any]) -> bool:
    """Green at 10% in HAProxy and every traffic rule ok on it with data (not holding)."""
    if site["phase"] in ("rolled_back", "aborted", "promoted"):
        raise RuntimeError(f"the canary ended {site['phase']} before the fault")
    rows = {r["name"]: r for r in site.get("rules", []) if r["color"] == "green"}
    clean = (rows.get("error_rate", {}).get("samples") or {}).get("green", 0)
    return ((site.get("actual_weights") or {}).get("green") == 10
            and all(name in rows and rows[name]["state"] == "ok"
                    and rows[name]["outcome"] == "ok" for name in TRAFFIC_RULES)
            and clean >= CLEAN_BEFORE)


def _decided_on_lines(log_path: Path) -> list[str]:
    """The rules named by the daemon's `decided_on_lines` log events (the fast path)."""
    names: list[str] = []
    with contextlib.suppress(OSError):
        for line in log_path.read_text(errors="replace").splitlines():
            if '"decided_on_lines"' not in line:
                continue
            with contextlib.suppress(ValueError):
                names.extend(json.loads(line).get("rules", []))
    return names


def _rule_text(rule: dict[str, Any]) -> str:
    """One line of what a shipped rule reads and when it breaches, from the file itself."""
    if rule["source"] != "traffic":
        return f"{rule['source']} {rule.get('path', '')} for {rule.get('for', '0s')}"
    judge = rule.get("judge")
    what = (", ".join(f"{k} {v}" for k, v in judge.items()) if judge
            else " and ".join(f"{k} {rule[k]}" for k in ("min", "max") if k in rule))
    return (f"{rule['measure']}, {what}, window {rule.get('window', '1m')}, min_requests "
            f"{rule.get('min_requests', 20)}, for {rule.get('for', '0s')}")


async def traffic_act(workdir: Path, watcher_cls: Any) -> int:
    """Run the act; 0 when the fault was rolled back by a traffic rule."""
    _say("")
    _say("ROLLOUT 4: a new lab WITHOUT Prometheus: blue -> green, the rollback decided from "
         "HAProxy's access log")
    lab = LabStack(workdir, access_log=True, prometheus=False, rules=RULES_FILE.read_text(),
                   interval="1s", steps=[{"weight": 10, "hold": "5m"}, {"weight": 100}],
                   bake="3s")
    load: LoadClient | None = None
    try:
        await asyncio.to_thread(lab.start)
        assert lab.daemon is not None and lab.haproxy is not None
        _say(f"  blue pid {lab.blue.pid}, green pid {lab.green.pid}, HAProxy pid "
             f"{lab.haproxy.pid} (access log over UDP to 127.0.0.1:{lab.syslog_port}), daemon "
             f"pid {lab.daemon.pid}")
        _say("  Prometheus: not started; the daemon's config has no prometheus: section")
        _say(f"  rules: {RULES_FILE.name} as shipped (windows as in the file, not shortened: "
             "none needs to be for this act)")
        for rule in yaml.safe_load(RULES_FILE.read_text())["rules"]:
            _say(f"    {rule['name']:<26} {_rule_text(rule)}")
        for standin in (lab.blue, lab.green):
            await asyncio.to_thread(set_faults, standin.url, latency=SERVICE_TIME)
        _say(f"  both stand-ins answer {SERVICE_TIME * 1000:.0f} ms later than bare, like a "
             "light Odoo page (bare they answer in ~1 ms, and HAProxy logs whole ms: docs/"
             "traffic.md)")
        load = await LoadClient(lab.proxy_url, "/web/login", concurrency=4, delay=0.01,
                                max_seconds=120).start()
        _say("  constant load through HAProxy: 4 concurrent users, new connection per request")
        watcher = watcher_cls(lab)
        watcher.poll()
        await load.wait_count(100)
        lab.client().post("/api/v1/sites/odoo/rollouts", {"to": "green", "version": "17.0"})
        deadline = time.monotonic() + 40
        while not _ready(site := watcher.poll()):
            if time.monotonic() > deadline:
                _say("green never had every traffic rule ok at 10%: the demo failed")
                return 1
            await asyncio.sleep(0.25)
        _say("  green serves 10%; the traffic rules on it, from the site's JSON:")
        for row in site["rules"]:
            if row["color"] == "green" and row["name"] in TRAFFIC_RULES:
                _say(f"    {_row_text(row)}")
                _say(f"      {row['detail']}")

        _say(f"FAULT: green starts answering {FAULT:.0%} of requests with HTTP 500")
        mark = load.mark()
        await asyncio.to_thread(set_faults, lab.green.url, error_rate=FAULT)
        fault_at = time.monotonic()
        fired: dict[str, Any] | None = None
        zero_at: float | None = None
        while time.monotonic() - fault_at < 30:
            if zero_at is None and colour_servers(lab.haproxy.admin_socket)["green"]["weight"] == 0:
                zero_at = time.monotonic()
            if fired is None:  # the row of the first rule seen firing, as it fired
                view = await asyncio.to_thread(lab.site)
                fired = next((r for r in view.get("rules", []) if r["color"] == "green"
                              and r["state"] == "firing"), None)
            if zero_at is not None and fired is not None:
                break
            await asyncio.sleep(POLL)
        if zero_at is None:
            _say("no rollback within 30s of the fault: the demo failed")
            return 1
        between = [s for s in load.window(mark).samples if fault_at <= s.at <= zero_at]
        site = await watcher.until({"rolled_back"}, 20)
        event = next(e for e in reversed(site["events"]) if e["kind"] == "rolling_back")
        fast = _decided_on_lines(lab.workdir / "daemon.log")
        await asyncio.sleep(1.5)  # a tick on the live colour, so its rules show
        live_rows = [r for r in lab.site().get("rules", []) if r["color"] == "blue"
                     and r["name"] in TRAFFIC_RULES]

        _say("")
        _say("SUMMARY of rollout 4 (no Prometheus running)")
        _say(f"  rule that fired: {event['rule']} ({event['threshold']})")
        if fired is not None:
            _say(f"    as it fired: {_row_text(fired)}")
            _say(f"    detail: {fired['detail']}")
        _say(f"  decided on the access-log lines as they arrived (daemon log "
             f"decided_on_lines: {', '.join(sorted(set(fast))) or 'none: decided at a tick'})")
        _say(f"  fault -> green at weight 0 in HAProxy: {zero_at - fault_at:.2f}s (runtime API, "
             f"polled every {POLL * 1000:.0f} ms)")
        _say(f"  requests that failed between the fault and the rollback: "
             f"{sum(1 for s in between if s.failed)} of {len(between)}")
        for row in live_rows:
            _say(f"  now on the live colour: {row['name']} {row['outcome']}"
                 + (f" ({row['detail']})" if row["outcome"] == "skipped" else ""))
        _say(f"  final: {site['phase']}, live {site['live']}, weights blue "
             f"{site['weights']['blue']}% / green {site['weights']['green']}%")
        return 0
    finally:
        if load is not None:
            await load.stop()
        await asyncio.to_thread(lab.stop)
