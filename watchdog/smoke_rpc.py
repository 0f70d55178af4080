"""Talking to Odoo as its smoke user: the version, logging in, and calling the ORM.

- The version: `GET /web/version` (19: `{"version_info": [19, 0, ...], "version": "19.0"}`,
  `odoo/addons/base/controllers/rpc.py`); 16-18 have no such route (404), so XML-RPC
  `common.version()` says (`server_version_info`).
- Logging in with a password: `/web/session/authenticate` (JSON-RPC), because it tells the
  cases apart that XML-RPC's `common.authenticate` answers all with `False`: a wrong password
  (`odoo.exceptions.AccessDenied` "Access Denied"), Odoo's login cooldown (AccessDenied "Too many
  login failures, please wait a bit before trying again.", `res_users._assert_can_auth`) and a
  user with two-factor authentication (a result with no uid: the password was right, the second
  factor is missing, and RPC with a password is refused for such a user: `_rpc_api_keys_only`).
- With an API key on 16-18: XML-RPC `common.authenticate(db, login, key, {})`: a uid or False
  (wrong, revoked or, from 18, expired: keys of internal users last 90 days at most).
- Calls: XML-RPC `object.execute_kw(db, uid, secret, model, method, args, kwargs)` on 16-18;
  JSON-2 on 19: `POST /json/2/<model>/<method>` with `Authorization: bearer <api key>`,
  `X-Odoo-Database` and named arguments; errors have real HTTP codes and a body
  `{name, message, ...}` (or, in older builds, a bare JSON string).

One failed login is never retried, in this run or a later one with the same credentials
(`FAILED_LOGINS`): ten failures start Odoo's cooldown, which then refuses the right password too.
Nothing here puts a password or key into a message; `redact` scrubs what Odoo sends back.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import xmlrpc.client
from dataclasses import dataclass, field
from typing import Any
from xml.parsers.expat import ExpatError

import aiohttp

__all__ = [
    "FAILED_LOGINS",
    "AuthFailed",
    "Credentials",
    "Json2Client",
    "OdooVersion",
    "RpcError",
    "XmlRpcClient",
    "authenticate",
    "logout",
    "probe_version",
    "redact",
    "shown",
    "web_authenticate",
]

RPC_TIMEOUT = 10.0
COOLDOWN_TEXT = "Too many login failures"
# How long a failed login keeps this daemon from trying the same credentials again.
FAILED_LOGIN_MEMORY = 300.0


@dataclass(frozen=True)
class Credentials:
    """The smoke user, from smoke_settings.credentials_file. repr() never shows a secret."""

    db: str
    login: str
    password: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.password, self.api_key) if s)

    def fingerprint(self) -> str:
        """Tells credentials apart without keeping a secret: a sha256 of all of them."""
        raw = json.dumps([self.db, self.login, self.password, self.api_key])
        return hashlib.sha256(raw.encode()).hexdigest()

    def who(self) -> str:
        return f"login {shown(self.login)} on db {shown(self.db)}"


class RpcError(Exception):
    """A call that did not work; the message is safe to show (no secret in it)."""


class AuthFailed(RpcError):
    """Logging in did not work: wrong credentials, two-factor, expired key, cooldown."""


@dataclass(frozen=True)
class OdooVersion:
    major: int
    minor: int
    server_version: str
    via: str  # "/web/version" or "XML-RPC"

    @property
    def series(self) -> str:
        return f"{self.major}.{self.minor}"

    def shown(self) -> str:
        if self.server_version in ("", self.series):
            return self.series
        return f"{self.series} ({self.server_version})"

    @property
    def json2(self) -> bool:
        """Odoo 19 and later: JSON-2, and XML-RPC/JSON-RPC deprecated (a warning a call)."""
        return self.major >= 19


def shown(text: str) -> str:
    """A login or database name as it may be shown: plain when harmless, else quoted (a
    newline in a login must not start a forged log record)."""
    return text if re.fullmatch(r"[\w.@+\-]{1,128}", text) else repr(text[:128])


def redact(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _timeout() -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=RPC_TIMEOUT)


def _unreachable(path: str, exc: BaseException) -> RpcError:
    return RpcError(f"{path} unreachable: {type(exc).__name__}: {exc}")


# ---------------------------------------------------------------------- failed logins


class FailedLogins:
    """Credentials that failed to log in lately, on either colour: not tried again (each
    failure feeds Odoo's cooldown). Changed credentials (another file content) are tried."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[float, str]] = {}

    def get(self, url: str, creds: Credentials, now: float | None = None) -> str | None:
        key = creds.fingerprint()
        seen = self._seen.get(key)
        if seen is None:
            return None
        if (now if now is not None else time.monotonic()) - seen[0] > FAILED_LOGIN_MEMORY:
            del self._seen[key]
            return None
        return seen[1]

    def add(self, url: str, creds: Credentials, message: str) -> None:
        self._seen[creds.fingerprint()] = (time.monotonic(), message)

    def clear(self) -> None:
        self._seen.clear()


FAILED_LOGINS = FailedLogins()


def _known_failure(url: str, creds: Credentials) -> None:
    earlier = FAILED_LOGINS.get(url, creds)
    if earlier is not None:
        raise AuthFailed(f"not logging in again with credentials that failed less than "
                         f"{FAILED_LOGIN_MEMORY / 60:.0f} min ago (each failure counts towards "
                         f"Odoo's login cooldown): {earlier}")


def _failed(url: str, creds: Credentials, message: str) -> AuthFailed:
    FAILED_LOGINS.add(url, creds, message)
    return AuthFailed(message)


# ---------------------------------------------------------------------- the version


async def probe_version(session: aiohttp.ClientSession, url: str) -> OdooVersion:
    """The colour's Odoo version: `GET /web/version` (19), else XML-RPC `common.version()`."""
    try:
        async with session.get(url + "/web/version", allow_redirects=False,
                               timeout=_timeout()) as resp:
            text = await resp.text()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise _unreachable("/web/version", exc) from None
    if status == 200:
        try:
            answer = json.loads(text)
        except ValueError:
            raise RpcError("/web/version did not answer JSON") from None
        if isinstance(answer, dict):
            info = answer.get("version_info") or answer.get("server_version_info")
            version = _version(info, str(answer.get("version") or answer.get("server_version")
                                          or ""), "/web/version")
            if version is not None:
                return version
        raise RpcError("/web/version gave no version_info")
    return await xmlrpc_version(session, url)


async def xmlrpc_version(session: aiohttp.ClientSession, url: str) -> OdooVersion:
    answer = await _xmlrpc(session, url, "common", "version", ())
    if not isinstance(answer, dict):
        raise RpcError("/xmlrpc/2/common version() did not answer a struct")
    version = _version(answer.get("server_version_info"),
                       str(answer.get("server_version") or ""), "XML-RPC")
    if version is None:
        raise RpcError("/xmlrpc/2/common version() gave no server_version_info")
    return version


def _version(info: Any, server_version: str, via: str) -> OdooVersion | None:
    if not isinstance(info, list) or len(info) < 2:
        return None
    try:
        major = int(str(info[0]).removeprefix("saas~"))
        minor = int(info[1])
    except ValueError:
        return None
    return OdooVersion(major, minor, server_version, via)


# ---------------------------------------------------------------------- XML-RPC


async def _xmlrpc(session: aiohttp.ClientSession, url: str, service: str, method: str,
                  params: tuple[Any, ...], secrets: tuple[str, ...] = ()) -> Any:
    path = f"/xmlrpc/2/{service}"
    body = xmlrpc.client.dumps(params, method, allow_none=False)
    try:
        async with session.post(url + path, data=body.encode(), allow_redirects=False,
                                headers={"Content-Type": "text/xml"},
                                timeout=_timeout()) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise RpcError(f"{path} answered {resp.status}")
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise _unreachable(path, exc) from None
    try:
        return xmlrpc.client.loads(text)[0][0]
    except xmlrpc.client.Fault as fault:
        raise RpcError(redact(f"{method}: {_fault_text(fault)}", secrets)) from None
    except (ValueError, IndexError, ExpatError) as exc:
        raise RpcError(f"{path} {method}: not an XML-RPC answer ({str(exc)[:80]})") from None


def _fault_text(fault: xmlrpc.client.Fault) -> str:
    """The last line of a traceback (the exception), or the whole short message."""
    text = str(fault.faultString).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    last = lines[-1] if lines else f"fault {fault.faultCode}"
    return last[:300]


class XmlRpcClient:
    """`object.execute_kw` as the smoke user (16-18, and any version that still has it)."""

    def __init__(self, session: aiohttp.ClientSession, url: str, creds: Credentials,
                 uid: int, secret: str) -> None:
        self.session = session
        self.url = url
        self.creds = creds
        self.uid = uid
        self._secret = secret
        self.protocol = "XML-RPC"

    async def call(self, model: str, method: str, args: list[Any],
                   kwargs: dict[str, Any] | None = None) -> Any:
        params = (self.creds.db, self.uid, self._secret, model, method, args, kwargs or {})
        return await _xmlrpc(self.session, self.url, "object", "execute_kw", params,
                             self.creds.secrets)

    async def search_read(self, model: str, domain: list[Any], fields: list[str],
                          context: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {"fields": fields}
        if context:
            kwargs["context"] = context
        result = await self.call(model, "search_read", [domain], kwargs)
        return list(result) if isinstance(result, list) else []

    async def create(self, model: str, values: dict[str, Any]) -> int:
        result = await self.call(model, "create", [values])
        if isinstance(result, list) and result:
            result = result[0]
        if not isinstance(result, int):
            raise RpcError(f"{model}.create gave {str(result)[:60]!r}, not an id")
        return result

    async def read(self, model: str, ids: list[int], fields: list[str]) -> list[dict[str, Any]]:
        result = await self.call(model, "read", [ids], {"fields": fields})
        return list(result) if isinstance(result, list) else []

    async def unlink(self, model: str, ids: list[int]) -> None:
        await self.call(model, "unlink", [ids])


# ---------------------------------------------------------------------- JSON-2 (19)


class Json2Client:
    """`POST /json/2/<model>/<method>` with the API key as bearer (Odoo 19)."""

    def __init__(self, session: aiohttp.ClientSession, url: str, creds: Credentials,
                 api_key: str) -> None:
        self.session = session
        self.url = url
        self.creds = creds
        self.uid = 0
        self._key = api_key
        self.protocol = "JSON-2"

    async def call(self, model: str, method: str, body: dict[str, Any]) -> Any:
        path = f"/json/2/{model}/{method}"
        headers = {"Authorization": f"bearer {self._key}", "X-Odoo-Database": self.creds.db,
                   "Content-Type": "application/json; charset=utf-8",
                   "User-Agent": "odoo-watchdog"}
        try:
            async with self.session.post(self.url + path, data=json.dumps(body).encode(),
                                         headers=headers, allow_redirects=False,
                                         timeout=_timeout()) as resp:
                text = await resp.text()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _unreachable(path, exc) from None
        try:
            answer = json.loads(text) if text.strip() else None
        except ValueError:
            answer = None
            if status == 200:
                raise RpcError(f"{path} did not answer JSON") from None
        if status == 200:
            return answer
        message = redact(_json2_error(answer, text), self.creds.secrets)
        if status == 401:
            raise _failed(self.url, self.creds,
                          f"the API key was refused for {self.creds.who()} ({path} answered "
                          f"401: {message}): it is wrong, revoked or expired (API keys of "
                          "internal users expire, 90 days at most from Odoo 18); make a new "
                          "one in the smoke user's preferences")
        raise RpcError(f"{path} answered {status}: {message}")

    async def search_read(self, model: str, domain: list[Any], fields: list[str],
                          context: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"domain": domain, "fields": fields}
        if context:
            body["context"] = context
        result = await self.call(model, "search_read", body)
        return list(result) if isinstance(result, list) else []

    async def create(self, model: str, values: dict[str, Any]) -> int:
        result = await self.call(model, "create", {"vals_list": [values]})
        if isinstance(result, list) and result:
            result = result[0]
        if not isinstance(result, int):
            raise RpcError(f"{model}.create gave {str(result)[:60]!r}, not an id")
        return result

    async def read(self, model: str, ids: list[int], fields: list[str]) -> list[dict[str, Any]]:
        result = await self.call(model, "read", {"ids": ids, "fields": fields})
        return list(result) if isinstance(result, list) else []

    async def unlink(self, model: str, ids: list[int]) -> None:
        await self.call(model, "unlink", {"ids": ids})


def _json2_error(answer: Any, text: str) -> str:
    """A JSON-2 error body: `{name, message, ...}`, or a bare JSON string."""
    if isinstance(answer, dict):
        name = str(answer.get("name") or "").rsplit(".", 1)[-1]
        message = str(answer.get("message") or "").strip()
        return f"{name}: {message}" if name and message else (message or name or "no message")
    if isinstance(answer, str):
        return answer.strip()[:300] or "no message"
    return text.strip()[:200] or "no body"


# ---------------------------------------------------------------------- logging in


@dataclass(frozen=True)
class WebLogin:
    uid: int
    session_id: str


async def web_authenticate(session: aiohttp.ClientSession, url: str,
                           creds: Credentials) -> WebLogin:
    """`/web/session/authenticate` with the password: the uid and the new session's id."""
    if not creds.password:
        raise AuthFailed("logging in through /web/session/authenticate needs a password in "
                         "credentials_file (an API key only works over RPC)")
    _known_failure(url, creds)
    path = "/web/session/authenticate"
    payload = {"jsonrpc": "2.0", "method": "call", "id": 1,
               "params": {"db": creds.db, "login": creds.login, "password": creds.password}}
    try:
        async with session.post(url + path, data=json.dumps(payload).encode(),
                                headers={"Content-Type": "application/json"},
                                allow_redirects=False, timeout=_timeout()) as resp:
            text = await resp.text()
            status = resp.status
            cookie = resp.cookies.get("session_id")
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise _unreachable(path, exc) from None
    if status != 200:
        raise RpcError(f"{path} answered {status}")
    try:
        answer = json.loads(text)
    except ValueError:
        raise RpcError(f"{path} did not answer JSON") from None
    if not isinstance(answer, dict):
        raise RpcError(f"{path} did not answer a JSON-RPC object")
    error = answer.get("error")
    if isinstance(error, dict):
        raw = error.get("data")
        data: dict[str, Any] = raw if isinstance(raw, dict) else {}
        name = str(data.get("name") or "")
        message = redact(str(data.get("message") or error.get("message") or ""),
                         creds.secrets).strip()
        if COOLDOWN_TEXT.lower() in message.lower():
            raise _failed(url, creds, f"too many failed logins for {creds.who()}: Odoo's login "
                          "cooldown refuses it for now (base.login_cooldown_after failures, "
                          "then base.login_cooldown_duration seconds): stop; no further login "
                          "is tried")
        if name.endswith("AccessDenied"):
            raise _failed(url, creds, f"authentication failed for {creds.who()} (wrong "
                          "password, or no such active user)")
        raise RpcError(f"{path}: {name.rsplit('.', 1)[-1] or 'error'}: {message[:200]}")
    result = answer.get("result")
    uid = result.get("uid") if isinstance(result, dict) else None
    if not isinstance(uid, int) or isinstance(uid, bool) or uid <= 0:
        raise _failed(url, creds, f"{creds.who()}: {path} gave no uid although the password "
                      "was accepted: the user has two-factor authentication; give the smoke "
                      "user none, or an API key (api_key in credentials_file)")
    return WebLogin(uid, cookie.value if cookie is not None else "")


async def authenticate(session: aiohttp.ClientSession, url: str, creds: Credentials,
                       version: OdooVersion) -> XmlRpcClient | Json2Client:
    """A client for the ORM as the smoke user on this version, logged in (AuthFailed says
    why not): JSON-2 with the API key on 19, XML-RPC with the password or the key before."""
    if version.json2:
        if not creds.api_key:
            raise AuthFailed(f"Odoo {version.series} is called through JSON-2, which needs an "
                             "API key: add api_key to credentials_file (XML-RPC, which takes "
                             "a password, logs a deprecation warning on every call on 19)")
        _known_failure(url, creds)
        return Json2Client(session, url, creds, creds.api_key)
    if creds.password:
        login = await web_authenticate(session, url, creds)
        await logout(session, url, login.session_id)
        return XmlRpcClient(session, url, creds, login.uid, creds.password)
    assert creds.api_key
    _known_failure(url, creds)
    uid = await _xmlrpc(session, url, "common", "authenticate",
                        (creds.db, creds.login, creds.api_key, {}), creds.secrets)
    if not isinstance(uid, int) or isinstance(uid, bool) or uid <= 0:
        expiry = (" or expired (API keys of internal users expire, 90 days at most from Odoo 18)"
                  if version.major >= 18 else "")
        raise _failed(url, creds, f"authentication failed for {creds.who()} with the API key: "
                      f"it is wrong or revoked{expiry}, or Odoo's login cooldown is on")
    return XmlRpcClient(session, url, creds, uid, creds.api_key)


async def logout(session: aiohttp.ClientSession, url: str, session_id: str) -> None:
    """Best effort: end the session a login made (it is not needed over XML-RPC)."""
    if not session_id:
        return
    payload = {"jsonrpc": "2.0", "method": "call", "id": 2, "params": {}}
    try:
        async with session.post(url + "/web/session/destroy", data=json.dumps(payload).encode(),
                                headers={"Content-Type": "application/json",
                                         "Cookie": f"session_id={session_id}"},
                                allow_redirects=False, timeout=_timeout()) as resp:
            await resp.read()
    except (aiohttp.ClientError, TimeoutError, OSError):
        pass
