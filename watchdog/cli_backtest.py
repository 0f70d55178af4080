"""`odoo-watchdog backtest`: what a site's Prometheus rules would have done over last week.

`odoo-watchdog backtest -c FILE SITE --from 7d [--to now] [--step 30s] [--color C] [--json]
[--html FILE]` (DESIGN.md §16, docs/backtest.md). The replay is `watchdog.backtest`; this
module parses the times, prints the timeline, the JSON or writes the HTML chart. Any problem
is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from watchdog.backtest import Backtest, BacktestError, Interval, Replay, rfc3339, run_backtest
from watchdog.config import ConfigError, load
from watchdog.durations import DurationError, format_duration, parse_duration

__all__ = ["add_backtest_command", "cmd_backtest", "parse_time", "render_html", "render_text"]


def parse_time(text: str, now: float, what: str) -> float:
    """`now`, a duration back from now (`7d`, `90m`) or an RFC 3339 time with its zone."""
    value = text.strip()
    if value == "now":
        return now
    try:
        return now - parse_duration(value)
    except DurationError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BacktestError(
            f"{what} {text!r}: write a duration back from now (7d, 12h, 30m) or an RFC 3339 "
            "time such as 2024-05-01T10:00:00Z") from None
    if moment.tzinfo is None:
        raise BacktestError(f"{what} {text!r}: an RFC 3339 time needs its zone (Z or +02:00)")
    return moment.timestamp()


def cmd_backtest(args: argparse.Namespace) -> int:
    try:
        return _backtest(args)
    except BacktestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _backtest(args: argparse.Namespace) -> int:
    now = float(int(time.time()))  # whole seconds: readable times
    start = parse_time(args.start, now, "--from")
    end = parse_time(args.end, now, "--to")
    try:
        step = parse_duration(args.step)
    except DurationError as exc:
        raise BacktestError(f"--step: {exc}") from None
    if step <= 0:
        raise BacktestError("--step must be longer than 0s")
    path = Path(args.config)
    if not path.is_file():
        raise BacktestError(f"config {path}: no such file")
    try:
        loaded = load(path)
    except ConfigError as exc:
        first = exc.problems[0] if exc.problems else "invalid"
        more = len(exc.problems) - 1
        raise BacktestError(f"{first}" + (f" (and {more} more problems: odoo-watchdog check)"
                                          if more > 0 else "")) from None
    colors = [args.color] if args.color else None
    result = run_backtest(loaded, args.site, start, end, step, colors)
    if args.html:
        Path(args.html).write_text(render_html(result), encoding="utf-8")
    if args.json:
        print(json.dumps(result.as_json(), indent=2))
    else:
        print(render_text(result))
        if args.html:
            print(f"chart written to {args.html}")
    return 0


# --- text ----------------------------------------------------------------------------------

def _rule_head(replay: Replay) -> str:
    rule = replay.rule
    return (f"{rule.name}: {rule.threshold_text()}, for {format_duration(rule.for_)}, "
            f"no_data {rule.no_data}, on_fire {rule.on_fire}")


def _value(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _line(replay: Replay, interval: Interval) -> str:
    length = format_duration(round(interval.end - interval.start))
    action = f"-> {interval.action}" if interval.state == "firing" else "(rollout holds)"
    return (f"  {replay.color:<6} {interval.state:<8} {rfc3339(interval.start)} .. "
            f"{rfc3339(interval.end)}  {length:>8}  peak {_value(interval.peak):>9}  {action}")


def render_text(result: Backtest) -> str:
    """The timeline per rule and colour, then the summary."""
    steps = len(result.replays[0].times) if result.replays else 0
    lines = [f"backtest of {result.site}: {rfc3339(result.start)} .. {rfc3339(result.end)}, "
             f"step {format_duration(result.step)} ({steps} steps, "
             f"{result.requests} range queries)", ""]
    by_rule: dict[str, list[Replay]] = {}
    for replay in result.replays:
        by_rule.setdefault(replay.name, []).append(replay)
    for replays in by_rule.values():
        lines.append(_rule_head(replays[0]))
        for replay in replays:
            for interval in replay.intervals:
                lines.append(_line(replay, interval))
            if not replay.intervals:
                lines.append(f"  {replay.color:<6} never pending or firing")
            missing = replay.outcomes.get("no_data", 0) + replay.outcomes.get("error", 0)
            if missing:
                lines.append(f"  {replay.color:<6} {missing} of {steps} steps "
                             "without a usable value "
                             f"(no_data {replay.rule.no_data})"
                             + (f": {replay.errors[0]}" if replay.errors else ""))
        lines.append("")
    lines.append("summary:")
    for action in ("rollback", "pause", "notify"):
        hits = [(r, i) for r in result.replays for i in r.fired if i.action == action]
        if not hits:
            continue
        verb = {"rollback": "rolled back", "pause": "paused", "notify": "notified"}[action]
        lines.append(f"  would have {verb}: " + "; ".join(
            f"{r.name} ({r.color}) at {rfc3339(i.start)}" for r, i in hits))
    if not any(r.fired for r in result.replays):
        lines.append("  no rule would have fired")
    never: dict[str, list[str]] = {}
    for replay in result.replays:
        if not replay.fired:
            never.setdefault(replay.name, []).append(replay.color)
    if never:
        lines.append("  never fired: " + "; ".join(
            f"{name} ({', '.join(colors)})" for name, colors in never.items()))
    return "\n".join(lines)


# --- html ----------------------------------------------------------------------------------

COLOR_INK = {"blue": "#1f6fd1", "green": "#1e9e4a"}
WIDTH, HEIGHT, PAD_L, PAD_R, PAD_T, PAD_B = 900, 220, 60, 12, 12, 28
MAX_POINTS_DRAWN = 1200  # per line: buckets keep each one's lowest and highest value


def _downsample(times: Sequence[float], values: Sequence[float]
                ) -> list[list[tuple[float, float]]]:
    """Runs of points with data (a gap breaks the line), at most ~MAX_POINTS_DRAWN in all."""
    bucket = max(1, math.ceil(len(times) / (MAX_POINTS_DRAWN / 2)))
    runs: list[list[tuple[float, float]]] = []
    current: list[tuple[float, float]] = []
    for first in range(0, len(times), bucket):
        chunk = [(times[i], values[i]) for i in range(first, min(first + bucket, len(times)))
                 if math.isfinite(values[i])]
        if not chunk:
            if current:
                runs.append(current)
                current = []
            continue
        low = min(chunk, key=lambda p: p[1])
        high = max(chunk, key=lambda p: p[1])
        current.extend(sorted({low, high}))
    if current:
        runs.append(current)
    return runs


def _svg(result: Backtest, replays: list[Replay]) -> str:
    rule = replays[0].rule
    finite = [v for r in replays for v in r.values if math.isfinite(v)]
    bounds = [b for b in (rule.min, rule.max) if b is not None]
    low = min(finite + bounds) if finite or bounds else 0.0
    high = max(finite + bounds) if finite or bounds else 1.0
    if high == low:
        high, low = high + 1.0, low - 1.0 if low != 0 else 0.0
    span_t = max(result.end - result.start, 1e-9)

    def x(t: float) -> float:
        return PAD_L + (t - result.start) / span_t * (WIDTH - PAD_L - PAD_R)

    def y(v: float) -> float:
        return PAD_T + (high - v) / (high - low) * (HEIGHT - PAD_T - PAD_B)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
             f'width="100%" role="img" aria-label="{html.escape(rule.name)}">',
             f'<rect x="{PAD_L}" y="{PAD_T}" width="{WIDTH - PAD_L - PAD_R}" '
             f'height="{HEIGHT - PAD_T - PAD_B}" fill="#fafafa" stroke="#ccc"/>']
    for replay in replays:
        for interval in replay.intervals:
            fill = "#d62728" if interval.state == "firing" else "#ff9f1c"
            x0, x1 = x(interval.start), x(interval.end)
            parts.append(
                f'<rect x="{x0:.1f}" y="{PAD_T}" width="{max(x1 - x0, 1.0):.1f}" '
                f'height="{HEIGHT - PAD_T - PAD_B}" fill="{fill}" fill-opacity="0.25">'
                f'<title>{html.escape(replay.color)} {interval.state} {rfc3339(interval.start)}'
                f' .. {rfc3339(interval.end)} peak {_value(interval.peak)}</title></rect>')
    for bound in bounds:
        parts.append(f'<line x1="{PAD_L}" x2="{WIDTH - PAD_R}" y1="{y(bound):.1f}" '
                     f'y2="{y(bound):.1f}" stroke="#d62728" stroke-dasharray="6 4"/>'
                     f'<text x="{WIDTH - PAD_R - 4}" y="{y(bound) - 3:.1f}" font-size="11" '
                     f'text-anchor="end" fill="#d62728">threshold {bound:g}</text>')
    for replay in replays:
        ink = COLOR_INK.get(replay.color, "#555")
        for run in _downsample(replay.times, replay.values):
            points = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in run)
            parts.append(f'<polyline points="{points}" fill="none" stroke="{ink}" '
                         f'stroke-width="1.2"><title>{html.escape(replay.color)}</title>'
                         '</polyline>')
    for v in (low, high):
        parts.append(f'<text x="{PAD_L - 4}" y="{y(v) + 4:.1f}" font-size="11" '
                     f'text-anchor="end">{v:.3g}</text>')
    for t, anchor in ((result.start, "start"), (result.end, "end")):
        parts.append(f'<text x="{x(t):.1f}" y="{HEIGHT - 8}" font-size="11" '
                     f'text-anchor="{anchor}">{rfc3339(t)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(result: Backtest) -> str:
    """One self-contained page: per rule a chart (value per colour, threshold dashed,
    pending shaded amber and firing red) and the intervals as a table."""
    by_rule: dict[str, list[Replay]] = {}
    for replay in result.replays:
        by_rule.setdefault(replay.name, []).append(replay)
    title = f"backtest of {result.site}, {rfc3339(result.start)} .. {rfc3339(result.end)}"
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p>step {format_duration(result.step)}; blue and green lines are the colours' "
            "values, the dashed line the threshold; amber: pending, red: firing.</p>"]
    for name, replays in by_rule.items():
        body.append(f"<section><h2>{html.escape(_rule_head(replays[0]))}</h2>")
        body.append(_svg(result, replays))
        rows = [f"<tr><td>{html.escape(r.color)}</td><td>{i.state}</td>"
                f"<td>{rfc3339(i.start)}</td><td>{rfc3339(i.end)}</td>"
                f"<td>{_value(i.peak)}</td><td>{html.escape(i.action)}</td></tr>"
                for r in replays for i in r.intervals]
        if rows:
            body.append("<table><tr><th>colour</th><th>state</th><th>start</th><th>end</th>"
                        "<th>peak</th><th>action</th></tr>" + "".join(rows) + "</table>")
        else:
            body.append(f"<p>{html.escape(name)} was never pending or firing.</p>")
        body.append("</section>")
    style = ("body{font-family:system-ui,sans-serif;margin:1em;max-width:960px}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;"
             "padding:2px 6px}h2{font-size:15px;margin-top:1.5em}")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{style}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")


def add_backtest_command(sub: Any) -> None:
    p = sub.add_parser("backtest", help="replay a site's Prometheus rules over past data")
    p.add_argument("site", help="site name from the config")
    p.add_argument("-c", "--config", required=True, metavar="FILE", help="daemon config")
    p.add_argument("--from", dest="start", required=True, metavar="WHEN",
                   help="a duration back from now (7d) or an RFC 3339 time")
    p.add_argument("--to", dest="end", default="now", metavar="WHEN",
                   help="a duration back from now or an RFC 3339 time (default: now)")
    p.add_argument("--step", default="30s", help="time between two evaluations (default 30s)")
    p.add_argument("--color", choices=["blue", "green"], help="one colour (default: both)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the timeline")
    p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML chart")
    p.set_defaults(func=cmd_backtest)
