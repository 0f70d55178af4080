"""`odoo-watchdog report ROLLOUT -o FILE.html|FILE.png` (DESIGN.md §16, docs/report.md): a
rollout of the daemon's API as one self-contained file."""

from __future__ import annotations

import argparse
import sys
import urllib.parse
from pathlib import Path
from typing import Any

from watchdog.cli_ops import _fail, client_from, common_options
from watchdog.client import ApiError
from watchdog.report import FORMATS, ReportError, require_matplotlib, write_report


def cmd_report(args: argparse.Namespace) -> int:
    path = Path(args.output)
    try:  # before asking the daemon: a wrong name or a missing extra is a usage error
        if path.suffix.lower() not in FORMATS:
            raise ReportError(f"{path}: the report is FILE.html or FILE.png")
        if path.suffix.lower() == ".png":
            require_matplotlib()
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    client = client_from(args)
    try:
        rollout = client.get(f"/api/v1/rollouts/{urllib.parse.quote(args.rollout, safe='')}")
    except ApiError as exc:
        return _fail(exc.args[0])
    try:
        write_report(rollout, path)
    except (ReportError, OSError) as exc:
        return _fail(str(exc))
    rules = {(r["name"], r["color"]) for t in rollout["ticks"] for r in t["rules"]}
    print(f"{path}: rollout {rollout['id']} ({rollout.get('outcome') or rollout['phase']}), "
          f"{len(rollout['ticks'])} ticks, {len(rules)} rules, {len(rollout['events'])} events")
    return 0


def add_report_command(sub: Any) -> None:
    p = sub.add_parser("report", help="a rollout's picture as one file (HTML or PNG)")
    p.add_argument("rollout", help="the rollout's id")
    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="FILE.html (self-contained) or FILE.png (needs the report extra)")
    common_options(p)
    p.set_defaults(func=cmd_report)
