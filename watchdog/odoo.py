"""Odoo-specific probes: the smoke checks a candidate passes before it gets any traffic.

- `health`: `GET /web/health` answers 200 with `{"status": "pass"}` (Odoo 16+).
- `login`: `GET /web/login` answers 200 (the login page renders: database and assets load).
- `rpc`: XML-RPC `common.version()` on `/xmlrpc/2/common` returns a version (the RPC
  dispatcher that integrations and the mobile apps use works); on 19, where every XML-RPC
  call logs a deprecation warning, `GET /web/version` instead. The series comes from
  `server_version_info` ([17, 0, 0, "final", 0, ""]); `server_version` is only shown, since a
  packaged build reports it with its date ("18.0-20250421") and a SaaS one as "saas~17.4".

The checks that log in, measure or fetch named pages are in `watchdog.smoke`.

Odoo keeps no connection open (16, 17 answer HTTP/1.0, 18, 19 `Connection: close`) and needs a
Host header (without one it answers 500): aiohttp sends one and opens a connection a request.
"""

from __future__ import annotations

import json
import xmlrpc.client
from collections.abc import Sequence
from xml.parsers.expat import ExpatError

import aiohttp

SMOKE_TIMEOUT = 10.0


async def check_health(session: aiohttp.ClientSession, url: str) -> tuple[bool, str]:
    try:
        async with session.get(url + "/web/health", allow_redirects=False,
                               timeout=aiohttp.ClientTimeout(total=SMOKE_TIMEOUT)) as resp:
            body = await resp.text()
            if resp.status != 200:
                return False, f"/web/health answered {resp.status}"
            try:
                status = json.loads(body).get("status")
            except (ValueError, AttributeError):
                return False, "/web/health did not answer JSON"
            if status != "pass":
                return False, f"/web/health says status {status!r}"
            return True, "/web/health pass"
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return False, f"/web/health unreachable: {type(exc).__name__}: {exc}"


async def check_login(session: aiohttp.ClientSession, url: str) -> tuple[bool, str]:
    try:
        async with session.get(url + "/web/login", allow_redirects=False,
                               timeout=aiohttp.ClientTimeout(total=SMOKE_TIMEOUT)) as resp:
            await resp.read()
            if resp.status != 200:
                return False, f"/web/login answered {resp.status}"
            return True, "/web/login 200"
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return False, f"/web/login unreachable: {type(exc).__name__}: {exc}"


async def check_rpc(session: aiohttp.ClientSession, url: str) -> tuple[bool, str]:
    """Odoo's RPC layer answers, without any credentials: on 19 `GET /web/version` (its RPC
    controller's version probe: XML-RPC and JSON-RPC there log a deprecation warning on every
    call), before 19 (no such route: 404) XML-RPC `common.version()`."""
    try:
        async with session.get(url + "/web/version", allow_redirects=False,
                               timeout=aiohttp.ClientTimeout(total=SMOKE_TIMEOUT)) as resp:
            text = await resp.text()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, OSError):
        status = 0  # XML-RPC below says what is wrong
    if status == 200:
        try:
            answer = json.loads(text)
        except ValueError:
            return False, "/web/version did not answer JSON"
        info = answer.get("version_info") if isinstance(answer, dict) else None
        if not isinstance(info, list) or len(info) < 2:
            return False, "/web/version gave no version_info"
        return True, f"/web/version {_shown(info, answer.get('version'))}"
    return await check_xmlrpc(session, url)


def _shown(info: list[object], version: object) -> str:
    series = f"{info[0]}.{info[1]}"
    version = version or series
    return series if version == series else f"{series} ({version})"


async def check_xmlrpc(session: aiohttp.ClientSession, url: str) -> tuple[bool, str]:
    """XML-RPC `common.version()`: Odoo's RPC dispatcher answers, without any credentials."""
    body = ("<?xml version='1.0'?><methodCall><methodName>version</methodName>"
            "<params></params></methodCall>")
    try:
        async with session.post(url + "/xmlrpc/2/common", data=body,
                                headers={"Content-Type": "text/xml"}, allow_redirects=False,
                                timeout=aiohttp.ClientTimeout(total=SMOKE_TIMEOUT)) as resp:
            text = await resp.text()
            if resp.status != 200:
                return False, f"/xmlrpc/2/common answered {resp.status}"
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return False, f"/xmlrpc/2/common unreachable: {type(exc).__name__}: {exc}"
    try:
        answer = xmlrpc.client.loads(text)[0][0]
    except (xmlrpc.client.Fault, ValueError, IndexError, ExpatError) as exc:
        return False, f"/xmlrpc/2/common version() failed: {str(exc)[:120]}"
    if not isinstance(answer, dict):
        return False, "/xmlrpc/2/common version() did not answer a struct"
    info = answer.get("server_version_info")
    if not isinstance(info, list) or len(info) < 2:
        return False, "/xmlrpc/2/common version() gave no server_version_info"
    return True, f"XML-RPC version {_shown(info, answer.get('server_version'))}"


CHECKS = {"health": check_health, "login": check_login, "rpc": check_rpc}


async def smoke(url: str, checks: Sequence[str]) -> tuple[bool, str]:
    """Run `checks` against one colour; ok only if all pass. The detail lists each result."""
    results = []
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        for name in checks:
            ok, detail = await CHECKS[name](session, url)
            results.append((ok, detail))
    failed = [d for ok, d in results if not ok]
    if failed:
        return False, "; ".join(failed)
    return True, ", ".join(d for _, d in results) or "no checks"


async def check_health_url(url: str) -> tuple[bool, str]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        return await check_health(session, url)
