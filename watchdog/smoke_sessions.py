"""The `sessions` smoke check: do users stay logged in when the proxy moves them to the candidate?

Log in on the live colour (`/web/session/authenticate`, with the password), present that
`session_id` cookie to the candidate (`/web/session/get_session_info`): the same uid back means
the colours share sessions. Odoo 16-19 keep sessions as files under `<data_dir>/sessions`; two
processes share them only with that directory, the database name and `database.secret` in
common. 16 -> 17 and 18 -> 19 keep sessions; 17 -> 18 logs everyone out (the session format
changed); going back 19 -> 18 logs out those who logged in on 19. The check finds out by trying,
and names the likely cause when it can tell.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import aiohttp

from watchdog.smoke_rpc import (
    RPC_TIMEOUT,
    Credentials,
    OdooVersion,
    RpcError,
    logout,
    web_authenticate,
)

__all__ = ["SessionsResult", "likely_cause", "run_sessions"]


@dataclass(frozen=True)
class SessionsResult:
    status: str  # ok | failed | warn | skipped
    detail: str
    shared: bool | None  # None: not found out


def likely_cause(live: OdooVersion | None, candidate: OdooVersion | None,
                 live_db: str, candidate_db: str) -> str:
    if live is not None and candidate is not None:
        if live.major <= 17 < candidate.major or candidate.major <= 17 < live.major:
            return (f"Odoo {live.series} -> {candidate.series}: the session format changed in "
                    "18, so every user is logged out on the switch whatever the colours share")
        if candidate.major < live.major:
            return (f"going back from {live.series} to {candidate.series} logs out the users "
                    f"who logged in on {live.series}")
    if live_db != candidate_db:
        return (f"the colours use different database names ({live_db}, {candidate_db}); "
                "sessions need the same name")
    return ("the colours do not share data_dir/sessions, the database name or database.secret "
            "(a separate database copied by Odoo's duplicate has a new secret)")


async def _session_uid(session: aiohttp.ClientSession, url: str, session_id: str) -> int | None:
    """The uid the colour sees for this session cookie; None when it does not know it."""
    path = "/web/session/get_session_info"
    payload = {"jsonrpc": "2.0", "method": "call", "id": 1, "params": {}}
    try:
        async with session.post(url + path, data=json.dumps(payload).encode(),
                                headers={"Content-Type": "application/json",
                                         "Cookie": f"session_id={session_id}"},
                                allow_redirects=False,
                                timeout=aiohttp.ClientTimeout(total=RPC_TIMEOUT)) as resp:
            text = await resp.text()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise RpcError(f"{path} unreachable: {type(exc).__name__}: {exc}") from None
    if status != 200:
        raise RpcError(f"{path} answered {status}")
    try:
        answer = json.loads(text)
    except ValueError:
        raise RpcError(f"{path} did not answer JSON") from None
    result = answer.get("result") if isinstance(answer, dict) else None
    uid = result.get("uid") if isinstance(result, dict) else None
    return uid if isinstance(uid, int) and not isinstance(uid, bool) else None


async def run_sessions(session: aiohttp.ClientSession, mode: str, live_url: str,
                       candidate_url: str, live_creds: Credentials, candidate_db: str,
                       live: OdooVersion | None, candidate: OdooVersion | None,
                       live_name: str, candidate_name: str) -> SessionsResult:
    """`mode` is smoke_settings.sessions: warn (a warning), require (a failure) or off."""
    if mode == "off":
        return SessionsResult("skipped", "off in smoke_settings", None)
    if not live_creds.password:
        return SessionsResult("warn", "skipped: it logs in with a password and "
                              "credentials_file has only an API key", None)
    bad = "failed" if mode == "require" else "warn"
    try:
        login = await web_authenticate(session, live_url, live_creds)
    except RpcError as exc:
        return SessionsResult(bad, f"logging in on live {live_name}: {exc}", None)
    if not login.session_id:
        return SessionsResult(bad, f"live {live_name} set no session_id cookie on login", None)
    try:
        seen = await _session_uid(session, candidate_url, login.session_id)
    except RpcError as exc:
        return SessionsResult(bad, f"{candidate_name}: {exc}", None)
    finally:
        await logout(session, live_url, login.session_id)
    if seen == login.uid:
        return SessionsResult("ok", f"a session made on {live_name} is valid on "
                              f"{candidate_name}: users stay logged in", True)
    cause = likely_cause(live, candidate, live_creds.db, candidate_db)
    return SessionsResult(bad, f"{candidate_name} does not know a session made on {live_name}: "
                          f"users will be logged out when they move to {candidate_name}; "
                          f"likely cause: {cause}", False)
