"""`odoo-watchdog db backup|list|restore`: backups by hand, through the daemon's API.

The daemon does the work (it holds the database settings and the DSN; the CLI never sees
them); these commands start a job and, with `--wait`, follow the site's events until it ends,
printing its progress lines. Exit status: 0 done, 1 failed or refused, 2 still running when
`--timeout` ran out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from watchdog.cli_ops import client_from
from watchdog.client import ApiError, Client
from watchdog.steps.backup import size as _size

POLL = 0.5  # seconds between two reads of the site's events while waiting


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def cmd_backup(args: argparse.Namespace) -> int:
    client = client_from(args)
    payload: dict[str, Any] = {"color": args.color} if args.color else {}
    try:
        started = client.post(f"/api/v1/sites/{args.site}/backups", payload)
    except ApiError as exc:
        return _fail(exc.args[0])
    backup_id = started["id"]
    print(f"backup {backup_id} of {args.site} ({started['color']}) started")
    if not args.wait:
        print(f"  follow it: odoo-watchdog status {args.site}; then odoo-watchdog db list "
              f"{args.site}")
        return 0
    return _follow(client, args.site, args.timeout,
                   lambda e: backup_id in e["message"] and e["kind"] == "backup_done",
                   lambda e: backup_id in e["message"] and e["kind"] == "backup_failed",
                   "backup:")


def cmd_restore(args: argparse.Namespace) -> int:
    client = client_from(args)
    try:
        client.post(f"/api/v1/sites/{args.site}/backups/{args.backup}/restore",
                    {"to": args.to, "force": bool(args.force)})
    except ApiError as exc:
        return _fail(exc.args[0])
    print(f"restore of {args.backup} into {args.site}'s {args.to} started")
    if not args.wait:
        print(f"  follow it: odoo-watchdog status {args.site}")
        return 0
    return _follow(client, args.site, args.timeout,
                   lambda e: args.backup in e["message"] and e["kind"] == "restore_done",
                   lambda e: args.backup in e["message"] and e["kind"] == "restore_failed",
                   "restore:")


def cmd_list(args: argparse.Namespace) -> int:
    client = client_from(args)
    try:
        found = client.get(f"/api/v1/sites/{args.site}/backups")["backups"]
    except ApiError as exc:
        return _fail(exc.args[0])
    if args.json:
        print(json.dumps(found, indent=2, sort_keys=True))
        return 0
    print(render_backups(args.site, found))
    return 0


def render_backups(site: str, found: list[dict[str, Any]]) -> str:
    if not found:
        return f"no backups of {site} yet (odoo-watchdog db backup {site})"
    rows = [("ID", "COLOR", "DATABASE", "CREATED", "SIZE", "VERIFIED")]
    rows += [(b["id"], b["color"], b["database"], b["created"], _size(b["bytes"]),
              "yes" if b["verified"] else "NO") for b in found]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                     .rstrip() for row in rows)



def _follow(client: Client, site: str, timeout: float,
            done: Callable[[dict[str, Any]], bool], failed: Callable[[dict[str, Any]], bool],
            prefix: str) -> int:
    """Print the job's progress events until one says it ended."""
    seen: set[tuple[float, str, str]] = set()
    since = time.time() - 5.0  # the daemon's clock and ours: the same machine, small skew
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            view = client.get(f"/api/v1/sites/{site}")
        except ApiError as exc:
            return _fail(exc.args[0])
        for event in view.get("events", []):
            key = (event["at"], event["kind"], event["message"])
            if key in seen or event["at"] < since:
                continue
            seen.add(key)
            if event["kind"] == "progress" and event["message"].startswith(prefix):
                print(f"  {event['message']}")
            elif failed(event):
                return _fail(event["message"])
            elif done(event):
                print(event["message"])
                return 0
        time.sleep(POLL)
    print(f"still running after {timeout:.0f}s; follow it with odoo-watchdog status {site}",
          file=sys.stderr)
    return 2


def add_db_commands(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    db = sub.add_parser("db", help="back up, list and restore a site's database")
    inner = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)

    backup = inner.add_parser("backup", help="back up a colour's database and filestore")
    backup.add_argument("site")
    backup.add_argument("--color", choices=["blue", "green"],
                        help="whose database (default: the live colour's)")
    backup.add_argument("--wait", action="store_true", help="follow it until it ends")
    backup.add_argument("--timeout", type=float, default=3600.0,
                        help="seconds --wait waits (default 3600)")
    common(backup)
    backup.set_defaults(func=cmd_backup)

    listing = inner.add_parser("list", help="the site's backups, newest first")
    listing.add_argument("site")
    listing.add_argument("--json", action="store_true", help="the API's JSON")
    common(listing)
    listing.set_defaults(func=cmd_list)

    restore = inner.add_parser("restore", help="restore a backup into a colour")
    restore.add_argument("site")
    restore.add_argument("backup", help="the backup's id (odoo-watchdog db list)")
    restore.add_argument("--to", required=True, choices=["blue", "green"])
    restore.add_argument("--force", action="store_true",
                         help="even while that colour has traffic, ending its sessions")
    restore.add_argument("--wait", action="store_true", help="follow it until it ends")
    restore.add_argument("--timeout", type=float, default=3600.0,
                         help="seconds --wait waits (default 3600)")
    common(restore)
    restore.set_defaults(func=cmd_restore)
