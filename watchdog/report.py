"""The rollout report (DESIGN.md §16, docs/report.md): one rollout of `GET /api/v1/rollouts/{id}`
as one self-contained file.

HTML: the daemon's own rollout page (watchdog/ui/rollout.html) with its CSS, its JS and the
rollout's JSON inlined, so the picture is drawn by the same code as /ui/rollouts/{id} (ui.js
reads the embedded JSON instead of fetching it). The file names no other file or host, and a
Content-Security-Policy in it lets the browser run only that script and style.

PNG: one matplotlib figure (the optional extra `report`): the weights over time, then each
rule's value against its threshold, the audit events as vertical lines.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

UI_DIR = Path(__file__).parent / "ui"
MISSING_MATPLOTLIB = ("a PNG report needs matplotlib: pip install 'odoo-watchdog[report]' "
                      "(or write FILE.html)")
FORMATS = (".html", ".htm", ".png")


class ReportError(Exception):
    pass


# ---------------------------------------------------------------- HTML


def _json_for_script(data: Any) -> str:
    """JSON that cannot end its <script> element (`<`, `>`, `&` as \\u escapes) and holds no
    `//` either (`/` as `\\/`), so no URL of a message reads as a reference."""
    text = json.dumps(data, ensure_ascii=False, sort_keys=True)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("/", "\\/")):
        text = text.replace(char, escaped)
    return text


def _inline(text: str, tag: str) -> str:
    if f"</{tag}" in text.lower():
        raise ReportError(f"cannot inline watchdog/ui: it contains </{tag}")
    return text


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_html(rollout: dict[str, Any], written_at: float | None = None) -> str:
    """The rollout page as one file: rollout.html with ui.css, ui.js and `rollout` inlined."""
    page = (UI_DIR / "rollout.html").read_text()
    css = _inline((UI_DIR / "ui.css").read_text(), "style")
    js = _inline((UI_DIR / "ui.js").read_text(), "script")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(written_at))
    policy = (f"default-src 'none'; script-src {_sha256(js)}; style-src {_sha256(css)}; "
              "img-src data:; base-uri 'none'; form-action 'none'")
    swaps = [
        ('<meta charset="utf-8">',
         f'<meta charset="utf-8">\n<meta http-equiv="Content-Security-Policy" content="{policy}">'),
        ('<link rel="stylesheet" href="/ui/static/ui.css">', f"<style>{css}</style>"),
        ('<script src="/ui/static/ui.js" defer></script>',
         f'<script type="application/json" id="rollout-data">{_json_for_script(rollout)}'
         f"</script>\n<script>{js}</script>"),
        ('<a href="/ui">odoo-watchdog</a>', "odoo-watchdog"),
        ('<p class="status" id="status">loading…</p>',
         f'<p class="status" id="status">report written {_escape(stamp)}</p>'),
        ("It reads <code>/api/v1/rollouts/{id}</code>.",
         "It is <code>odoo-watchdog report</code>'s copy of "
         f"<code>GET /api/v1/rollouts/{_escape(str(rollout.get('id', '')))}</code>."),
    ]
    for old, new in swaps:
        if page.count(old) != 1:
            raise ReportError(f"watchdog/ui/rollout.html has changed: no single {old!r}")
        page = page.replace(old, new)
    return page


# ---------------------------------------------------------------- PNG

# ">= 0.5 and <= 0.01" -> [(">=", 0.5), ("<=", 0.01)]: the numbers a threshold text compares to.
THRESHOLD = re.compile(r"(>=|<=|>|<)\s*(-?[0-9.]+(?:e[-+]?[0-9]+)?)", re.IGNORECASE)
STATE_COLORS = {"ok": "#2e7d32", "pending": "#ef6c00", "firing": "#c62828", "holding": "#757575"}
WEIGHT_COLORS = {"blue": "#1565c0", "green": "#2e7d32"}


def thresholds(text: str | None) -> list[tuple[str, float]]:
    out = []
    for op, number in THRESHOLD.findall(text or ""):
        try:
            out.append((op, float(number)))
        except ValueError:
            continue
    return out


def rule_series(ticks: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (rule, colour), in the order first seen: its points [(at, value|None, state)] and
    its last threshold text."""
    series: dict[tuple[str, str], dict[str, Any]] = {}
    for tick in ticks:
        for r in tick["rules"]:
            s = series.setdefault((r["name"], r["color"]), {"points": [], "threshold": None})
            value = r["value"] if isinstance(r["value"], int | float) else None
            s["points"].append((tick["at"], value, r["state"]))
            s["threshold"] = r["threshold"]
    return series


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ReportError(MISSING_MATPLOTLIB) from None


def render_png(rollout: dict[str, Any], path: Path) -> None:
    """One figure: weights (%) on top, then a panel per rule; events as vertical lines."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    def dt(at: float) -> datetime:
        return datetime.fromtimestamp(at)

    ticks = rollout.get("ticks") or []
    events = rollout.get("events") or []
    series = rule_series(ticks)
    panels = 1 + len(series)
    fig, axes = plt.subplots(panels, 1, sharex=True, squeeze=False,
                             figsize=(11, 1.2 + 2.1 * panels), dpi=100)
    try:
        top = axes[0][0]
        colors = sorted({c for t in ticks for c in t["weights"]})
        for color in colors:
            top.step([dt(t["at"]) for t in ticks], [t["weights"].get(color, 0) for t in ticks],
                     where="post", label=color, color=WEIGHT_COLORS.get(color))
        top.set_ylim(-3, 103)
        top.set_ylabel("weight (%)")
        if colors:
            top.legend(loc="center left", fontsize="small")
        outcome = rollout.get("outcome") or rollout.get("phase") or "running"
        top.set_title(f"rollout {rollout.get('id')}: {rollout.get('site')} "
                      f"{rollout.get('from')} → {rollout.get('to')} "
                      f"{rollout.get('version') or ''} ({rollout.get('strategy')}), {outcome}",
                      fontsize="medium")
        for row, ((name, color), s) in zip(axes[1:], series.items(), strict=True):
            ax = row[0]
            shown = [(dt(at), v, state) for at, v, state in s["points"] if v is not None]
            ax.plot([p[0] for p in shown], [p[1] for p in shown], color="#455a64", lw=1)
            ax.scatter([p[0] for p in shown], [p[1] for p in shown], s=9, zorder=3,
                       c=[STATE_COLORS.get(p[2], "#000000") for p in shown])
            for op, value in thresholds(s["threshold"]):
                ax.axhline(value, color="#c62828", ls="--", lw=1, label=f"{op} {value:g}")
            ax.set_title(f"{name} ({color}), threshold {s['threshold'] or 'none'}",
                         fontsize="small", loc="left")
            if not shown:
                ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center")
        for row in axes:
            for e in events:
                row[0].axvline(dt(e["at"]), color="#9e9e9e", lw=0.8, ls=":")
            row[0].grid(True, alpha=0.3)
        for e in events:
            x = mdates.date2num(dt(e["at"]))  # type: ignore[no-untyped-call]
            top.annotate(e["kind"], (x, 1.0),
                         xycoords=("data", "axes fraction"), rotation=90, fontsize=7,
                         va="top", ha="right", xytext=(-1, -2), textcoords="offset points",
                         color="#616161")
        axes[-1][0].xaxis.set_major_formatter(
            mdates.DateFormatter("%H:%M:%S"))  # type: ignore[no-untyped-call]
        fig.tight_layout()
        tmp = path.with_name(path.name + ".tmp")
        fig.savefig(tmp, format="png")
        tmp.replace(path)
    finally:
        plt.close(fig)


# ---------------------------------------------------------------- either


def write_report(rollout: dict[str, Any], path: Path) -> None:
    """FILE.html (or .htm) or FILE.png, written whole or not at all."""
    suffix = path.suffix.lower()
    if suffix == ".png":
        render_png(rollout, path)
        return
    if suffix not in FORMATS:
        raise ReportError(f"{path}: the report is FILE.html or FILE.png")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_html(rollout), encoding="utf-8")
    tmp.replace(path)
