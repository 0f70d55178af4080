"""The CLI's client commands: status, deploy, promote, abort, switch (over the daemon's API)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from watchdog.client import ApiError, Client, read_token
from watchdog.config import ConfigError, LoadedConfig, load
from watchdog.durations import format_duration
from watchdog.secrets import SecretError

DEFAULT_API = "http://127.0.0.1:9721"


def api_url(url: str | None, loaded: LoadedConfig | None) -> str:
    """`--url` if given, else the config's api.listen (a wildcard address is reached on
    127.0.0.1), else the default listen address."""
    if url:
        return url.rstrip("/")
    if loaded is None:
        return DEFAULT_API
    host, port = loaded.config.api.host_port
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def client_from(args: argparse.Namespace) -> Client:
    """The API from --url or the config's api.listen; the token from env or token_file."""
    loaded = None
    if getattr(args, "config", None):
        try:
            loaded = load(Path(args.config))
        except ConfigError as exc:
            raise SystemExit(_fail("\n".join(str(p) for p in exc.problems))) from None
    token_file = loaded.config.api.token_file if loaded is not None else None
    try:
        token = read_token(token_file, loaded.path.parent if loaded is not None else Path())
    except SecretError as exc:
        print(f"warning: {exc}; sending no token", file=sys.stderr)
        token = None
    return Client(api_url(getattr(args, "url", None), loaded), token)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def _call(args: argparse.Namespace, path: str, payload: dict[str, Any]) -> int:
    client = client_from(args)
    try:
        site = client.post(path, payload)
    except ApiError as exc:
        return _fail(exc.args[0])
    print(render_site(site))
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    payload: dict[str, Any] = {"to": args.to}
    if args.version:
        payload["version"] = args.version
    if args.strategy:
        payload["strategy"] = args.strategy
    return _call(args, f"/api/v1/sites/{args.site}/rollouts", payload)


def cmd_promote(args: argparse.Namespace) -> int:
    return _call(args, f"/api/v1/sites/{args.site}/promote", {"full": bool(args.full)})


def cmd_abort(args: argparse.Namespace) -> int:
    return _call(args, f"/api/v1/sites/{args.site}/abort", {"reason": args.reason or ""})


def cmd_switch(args: argparse.Namespace) -> int:
    return _call(args, f"/api/v1/sites/{args.site}/switch", {"to": args.color})


def cmd_status(args: argparse.Namespace) -> int:
    client = client_from(args)
    while True:
        try:
            daemons: list[dict[str, Any]] = []
            if args.site:
                sites = [client.get(f"/api/v1/sites/{args.site}")]
            else:
                answer = client.get("/api/v1/sites")
                sites, daemons = answer["sites"], answer.get("daemons") or []
        except ApiError as exc:
            return _fail(exc.args[0])
        if args.json:
            print(json.dumps(sites if not args.site else sites[0], indent=2, sort_keys=True))
            return 0
        text = "\n\n".join(render_site(s, len(daemons) > 1) for s in sites)
        if len(daemons) > 1:  # several daemons share the store: who is up, who owns what
            text = render_daemons(daemons) + "\n\n" + text
        if not args.watch:
            print(text)
            return 0
        sys.stdout.write("\x1b[H\x1b[2J" + time.strftime("%H:%M:%S ") + client.url + "\n\n"
                         + text + "\n")
        sys.stdout.flush()
        try:
            time.sleep(1.0)
        except KeyboardInterrupt:
            return 0


def _weights(w: dict[str, int] | None) -> str:
    if not w:
        return "unknown"
    return f"blue {w['blue']}% / green {w['green']}%"


def _ago(seconds: float | None) -> str:
    return "-" if seconds is None else format_duration(round(seconds))


def render_daemons(daemons: list[dict[str, Any]]) -> str:
    """The daemons whose heartbeat is current, one line each."""
    lines = [f"{len(daemons)} daemons up:"]
    for d in daemons:
        lines.append(f"  {d['instance']} at {d['api']}: {d.get('sites', 0)} sites")
    return "\n".join(lines)


def render_site(site: dict[str, Any], owners: bool = False) -> str:
    """The site's lines; `owners`: name the daemon that owns it (several share the store)."""
    ro = site.get("rollout")
    owner = site.get("owner") if owners else None
    lines = [f"site {site['site']}: {site['phase']}, live {site['live']}, "
             f"weights {_weights(site['weights'])}"
             + (f", owned by {owner['instance']}" if owner else "")]
    actual = site.get("actual_weights")
    if actual is not None and actual != site["weights"]:
        lines.append(f"  router reports {_weights(actual)} (being put back)")
    if site.get("router", {}).get("error"):
        lines.append(f"  router error: {site['router']['error']}")
    store = site.get("store") or {}
    if store and not store.get("ok", True):
        since = (time.strftime(" since %H:%M:%S", time.localtime(store["since"]))
                 if store.get("since") else "")
        lines.append(f"  state store {store.get('path')} cannot write{since}: "
                     f"{store.get('error')}")
        lines.append(f"    no traffic change until it can; a changed split is still put back; "
                     f"{store.get('pending', 0)} audit events wait in memory")
    if ro:
        version = f" {ro['version']}" if ro.get("version") else ""
        lines.append(f"  rollout {ro['id']}: {ro['from']} -> {ro['to']}{version}, "
                     f"{ro['strategy']}, step {ro['step']}/{ro['steps']}"
                     + (f" ({ro['step_label']})" if ro.get("step_label") else "")
                     + (f", next in {_ago(ro['next_step_in'])}"
                        if ro.get("next_step_in") is not None else "")
                     + (f", paused by {ro['paused_by']}" if ro.get("paused_by") else ""))
        if ro.get("reason"):
            lines.append(f"  reason: {ro['reason']}")
        for row in ro.get("prepare") or []:
            took = f" {row['seconds']:.1f}s" if row.get("seconds") is not None else ""
            code = (f" exit {row['exit_code']}" if row.get("exit_code") is not None else "")
            detail = f": {row['detail']}" if row.get("detail") else ""
            lines.append(f"  prepare {row['step']:<8} {row['state']}{took}{code}{detail}")
    if site.get("previous"):
        left = site["previous"]["until"] - time.time()
        lines.append(f"  {site['previous']['color']} kept for failback for {_ago(left)}")
    rules = site.get("rules") or []
    if rules:
        lines.append(f"  {'rule':<20}{'colour':<8}{'state':<9}{'value':>12}  {'threshold':<16}"
                     f"{'for':<6}{'on fire':<9}")
        for r in rules:
            value = ("inf" if r.get("ratio") == "inf" else "no data") if r["value"] is None \
                else f"{r['value']:.4g}"
            lines.append(f"  {r['name']:<20}{r['color']:<8}{r['state']:<9}{value:>12}  "
                         f"{r['threshold']:<16}{format_duration(r['for']):<6}{r['on_fire']:<9}")
            if r.get("samples"):  # source: traffic: what it compared, and the judge's p
                seen = ", ".join(f"{c} {n}" for c, n in r["samples"].items())
                judged = f", p={r['p_value']:.3g}" if r.get("p_value") is not None else ""
                lines.append(f"    requests: {seen}{judged}")
    servers = site.get("router", {}).get("servers") or {}
    if servers:  # after the rules: the proxy's own checks, which can hold a rollout too
        lines.append("  proxy checks: " + ", ".join(
            f"{color} {s['state']}" + (f" ({s['check']})" if s.get("check") else "")
            for color, s in servers.items()))
    for event in site.get("events", [])[-5:]:
        stamp = time.strftime("%H:%M:%S", time.localtime(event["at"]))
        lines.append(f"  {stamp} {event['kind']}: {event['message']}")
    return "\n".join(lines)


def common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", metavar="FILE", help="daemon config (API and token)")
    p.add_argument("--url", help="the daemon's API, e.g. http://127.0.0.1:9721")


def add_client_commands(sub: Any) -> None:
    common = common_options

    status = sub.add_parser("status", help="every site's phase, weights and rules")
    status.add_argument("site", nargs="?")
    status.add_argument("--json", action="store_true", help="the API's JSON")
    status.add_argument("--watch", action="store_true", help="redraw every second")
    common(status)
    status.set_defaults(func=cmd_status)

    deploy = sub.add_parser("deploy", help="start a rollout")
    deploy.add_argument("site")
    deploy.add_argument("--to", required=True, choices=["blue", "green"])
    deploy.add_argument("--version", default="")
    deploy.add_argument("--strategy", choices=["canary", "bluegreen"])
    common(deploy)
    deploy.set_defaults(func=cmd_deploy)

    promote = sub.add_parser("promote", help="continue a paused rollout")
    promote.add_argument("site")
    promote.add_argument("--full", action="store_true", help="straight to 100%%")
    common(promote)
    promote.set_defaults(func=cmd_promote)

    abort = sub.add_parser("abort", help="stop a rollout; traffic back to live")
    abort.add_argument("site")
    abort.add_argument("--reason", default="")
    common(abort)
    abort.set_defaults(func=cmd_abort)

    switch = sub.add_parser("switch", help="move all traffic to a colour, outside a rollout")
    switch.add_argument("site")
    switch.add_argument("color", choices=["blue", "green"])
    common(switch)
    switch.set_defaults(func=cmd_switch)
