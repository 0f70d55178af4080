"""The `workflow` smoke check: Odoo does real work, not only answer.

As the smoke user: remove what an earlier, interrupted check left (partners whose name starts
with exactly `odoo-watchdog smoke ` and that this user created), create a `res.partner` named
`odoo-watchdog smoke <rollout id>`, read it back (the name must match), unlink it. The unlink
is attempted whatever the read gave. XML-RPC on 16-18, JSON-2 with the API key on 19 (the
version decides: `smoke_rpc.authenticate`).
"""

from __future__ import annotations

from typing import Any

import aiohttp

from watchdog.smoke_rpc import (
    Credentials,
    Json2Client,
    OdooVersion,
    RpcError,
    XmlRpcClient,
    authenticate,
)

__all__ = ["PREFIX", "run_workflow"]

PREFIX = "odoo-watchdog smoke "
MODEL = "res.partner"


def _uid_of(value: Any) -> int | None:
    """create_uid as search_read gives it: [id, name], an id, or False."""
    if isinstance(value, list | tuple) and value:
        value = value[0]
    return value if isinstance(value, int) and not isinstance(value, bool) else None


async def remove_leftovers(client: XmlRpcClient | Json2Client, keep: int = 0) -> list[int]:
    """Partners an earlier check left: named with PREFIX (exact, case-sensitive; `=like` has
    no wildcard in it) and created by the smoke user (but not `keep`, this check's own).
    Archived ones count too."""
    found = await client.search_read(
        MODEL, [["name", "=like", PREFIX + "%"], ["create_uid", "=", client.uid]],
        ["name", "create_uid"], {"active_test": False})
    ids = [int(rec["id"]) for rec in found
           if isinstance(rec, dict) and isinstance(rec.get("id"), int)
           and str(rec.get("name") or "").startswith(PREFIX)
           and _uid_of(rec.get("create_uid")) == client.uid and rec["id"] != keep]
    if ids:
        await client.unlink(MODEL, ids)
    return ids


async def run_workflow(session: aiohttp.ClientSession, url: str, creds: Credentials,
                       version: OdooVersion, rollout_id: str) -> tuple[bool, str]:
    """(ok, detail). RpcError/AuthFailed messages are safe to show (no secret).

    Over XML-RPC the login gives the uid, so leftovers go first. A JSON-2 call carries only the
    API key: the uid is the new partner's create_uid, so there leftovers go once it is read
    back (the partner count ends the same)."""
    try:
        client = await authenticate(session, url, creds, version)
    except RpcError as exc:
        return False, str(exc)
    how = f"{client.protocol} on {version.series}"
    name = f"{PREFIX}{rollout_id}"
    leftovers: list[int] = []
    try:
        if client.uid:
            leftovers = await remove_leftovers(client)
        partner = await client.create(MODEL, {"name": name})
    except RpcError as exc:
        return False, f"{how}: {exc}"
    problem = None
    try:
        records = await client.read(MODEL, [partner], ["name", "create_uid"])
        got = records[0].get("name") if records and isinstance(records[0], dict) else None
        if got != name:
            problem = (f"partner {partner} read back as {str(got)[:80]!r}, not {name!r}"
                       if records else f"partner {partner} was created but reads back as nothing")
        elif not client.uid:
            client.uid = _uid_of(records[0].get("create_uid")) or 0
            if client.uid:
                leftovers = await remove_leftovers(client, keep=partner)
    except RpcError as exc:
        problem = f"reading partner {partner} back failed: {exc}"
    try:
        await client.unlink(MODEL, [partner])
    except RpcError as exc:
        left = (f"unlinking partner {partner} failed: {exc} (the next check removes it as a "
                "leftover)")
        return False, f"{how}: " + (f"{problem}; {left}" if problem else left)
    if problem:
        return False, f"{how}: {problem} (unlinked)"
    removed = f", {len(leftovers)} leftover(s) of an earlier check removed" if leftovers else ""
    return True, f"partner created, read back and unlinked over {how}{removed}"
