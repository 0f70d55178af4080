"""The Odoo stand-in: an aiohttp app that speaks Odoo 17's HTTP and RPC surface on loopback.

Real Odoo cannot be installed in the lab, so this answers what the watchdog, the load clients
and the demo ask of an Odoo worker: `/web/health` (and `?db_server_status=1`), `/web/login`,
`/web/webclient/version_info`, `/web/session/authenticate`, `/xmlrpc/2/common|object|db`,
`/jsonrpc`, `/websocket/health`; it writes Odoo-format log lines, and faults can be injected
while it runs through `/__lab__/faults`. Every response says which colour answered
(`X-Odoo-Color`, `X-Odoo-Version`). The RPC services live in `standin_rpc.py`.

Run one: `python -m watchdog.lab.standin --port 8069 --color green --log-file odoo.log`, or
`StandinProcess("green", workdir).start()` from Python.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import html
import json
import os
import random
import secrets
import sys
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO, Any

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

from watchdog.lab.procs import ManagedProcess, free_port, http_ok
from watchdog.lab.standin_rpc import (
    ADMIN_PARTNER_ID,
    ADMIN_UID,
    AccessDenied,
    AccessError,
    OdooBackend,
    OdooError,
    ServerError,
    format_traceback,
    parse_xmlrpc,
    version_info,
    xmlrpc_fault,
    xmlrpc_response,
)

__all__ = [
    "FaultError",
    "Faults",
    "StandinProcess",
    "StandinSettings",
    "aclear_faults",
    "aget_faults",
    "aset_faults",
    "clear_faults",
    "create_app",
    "get_faults",
    "main",
    "set_faults",
]

LAB_PREFIX = "/__lab__/"
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SESSION_MAX_AGE = 7 * 24 * 3600
MAX_SESSIONS = 10_000
JSON_CONTENT_TYPES = ("application/json", "application/json-rpc")
_JSON_ROUTES = {
    "/web/webclient/version_info",
    "/web/session/authenticate",
    "/web/session/get_session_info",
    "/jsonrpc",
}
_NO_DB_ROUTES = {"/web/health", "/websocket/health", "/web/webclient/version_info"}


@dataclass
class StandinSettings:
    color: str = "blue"
    version: str = "17.0"
    db: str = "odoo"
    login: str = "admin"
    password: str = "admin"  # noqa: S105 (the lab's throwaway admin)
    log_file: Path | None = None
    log_stdout: bool = False

    @property
    def major(self) -> int:
        digits = "".join(ch for ch in self.version.split(".")[0] if ch.isdigit())
        return int(digits) if digits else 0

    @property
    def home(self) -> str:
        """Where Odoo sends a logged-in user: /odoo from 18 on (and 17.2+ SaaS), /web before."""
        return "/odoo" if self.major >= 18 else "/web"


# ---------------------------------------------------------------------------------------------
# Odoo-format log lines
# ---------------------------------------------------------------------------------------------


class OdooLog:
    """Writes `%(asctime)s %(pid)s %(levelname)s %(dbname)s %(name)s: %(message)s %(perf_info)s`.

    Like Odoo (16+), every line ends with `" " + perf_info`: the werkzeug access lines carry
    "query_count query_time remaining_time", all others an empty perf_info (a trailing space).
    The file is reopened when it is moved away (Odoo uses a WatchedFileHandler). Each record is
    written and flushed at once.
    """

    def __init__(self, path: Path | None, to_stdout: bool) -> None:
        self.path = path
        self.to_stdout = to_stdout
        self._lock = threading.Lock()
        self._stream: IO[str] | None = None
        self._ident: tuple[int, int] | None = None

    def write(
        self,
        level: str,
        name: str,
        message: str,
        *,
        dbname: str = "?",
        perf_info: str = "",
        exc_text: str | None = None,
    ) -> None:
        now = time.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        msecs = int(now % 1 * 1000)
        text = f"{stamp},{msecs:03d} {os.getpid()} {level} {dbname} {name}: {message} {perf_info}"
        if exc_text:
            text += "\n" + exc_text.rstrip("\n")
        self._emit(text + "\n")

    def _open(self) -> IO[str]:
        assert self.path is not None
        if self._stream is not None:
            try:
                st = os.stat(self.path)
                if (st.st_dev, st.st_ino) == self._ident:
                    return self._stream
            except FileNotFoundError:
                pass
            self._stream.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._stream = open(self.path, "a", encoding="utf-8")
        st = os.fstat(self._stream.fileno())
        self._ident = (st.st_dev, st.st_ino)
        return self._stream

    def _emit(self, text: str) -> None:
        with self._lock:
            if self.path is not None:
                stream = self._open()
                stream.write(text)
                stream.flush()
            if self.to_stdout:
                sys.stdout.write(text)
                sys.stdout.flush()

    def close(self) -> None:
        with self._lock:
            if self._stream is not None:
                self._stream.close()
                self._stream = None


# ---------------------------------------------------------------------------------------------
# Faults
# ---------------------------------------------------------------------------------------------


@dataclass
class Faults:
    error_rate: float = 0.0
    latency: float = 0.0
    down: bool = False
    db_down: bool = False
    log_errors: int = 0
    log_info_mentions_error: int = 0


_FAULT_KINDS: dict[str, tuple[str, float]] = {
    # name -> (kind, maximum)
    "error_rate": ("ratio", 1.0),
    "latency": ("seconds", 600.0),
    "down": ("bool", 0),
    "db_down": ("bool", 0),
    "log_errors": ("count", 100_000),
    "log_info_mentions_error": ("count", 100_000),
}


class FaultError(ValueError):
    """A fault setting was refused (the stand-in answered 400), or a helper got a bad URL."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def validate_faults(data: Any) -> dict[str, Any]:
    """The settings in `data`, checked: unknown keys and wrong types raise FaultError."""
    if not isinstance(data, dict):
        raise FaultError("the body must be a JSON object of fault settings")
    clean: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _FAULT_KINDS:
            known = ", ".join(_FAULT_KINDS)
            raise FaultError(f"unknown fault {key!r} (known: {known})", key)
        kind, maximum = _FAULT_KINDS[key]
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        if kind == "bool":
            if not isinstance(value, bool):
                raise FaultError(f"{key} must be true or false, got {value!r}", key)
            clean[key] = value
        elif kind == "count":
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
                raise FaultError(
                    f"{key} must be an integer from 0 to {int(maximum)}, got {value!r}", key
                )
            clean[key] = value
        else:
            if not is_number or not 0 <= value <= maximum or value != value:
                raise FaultError(
                    f"{key} must be a number from 0 to {maximum:g}, got {value!r}", key
                )
            clean[key] = float(value)
    return clean


# ---------------------------------------------------------------------------------------------
# The app's state
# ---------------------------------------------------------------------------------------------


class Standin:
    """Everything one stand-in app holds: settings, faults, sessions, metrics, log, backend."""

    def __init__(self, settings: StandinSettings) -> None:
        self.settings = settings
        self.faults = Faults()
        self.log = OdooLog(settings.log_file, settings.log_stdout)
        self.backend = OdooBackend(
            db=settings.db,
            login=settings.login,
            password=settings.password,
            version=settings.version,
            log=self.app_log,
        )
        self.sessions: OrderedDict[str, int] = OrderedDict()
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "odoo_standin_http_requests_total",
            "HTTP requests answered by the Odoo stand-in.",
            ["color", "code"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "odoo_standin_http_request_duration_seconds",
            "Time to answer an HTTP request.",
            ["color"],
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )
        self.started = time.time()

    def app_log(self, level: str, name: str, message: str) -> None:
        self.log.write(level, name, message, dbname=self.settings.db)

    def apply_faults(self, settings: dict[str, Any]) -> None:
        for key, value in settings.items():
            setattr(self.faults, key, value)
        self.backend.db_down = self.faults.db_down
        # One-shots: write the lines now, then the setting returns to 0.
        burst = self.faults.log_errors
        for i in range(1, burst + 1):
            self.app_log(
                "ERROR", "odoo.addons.lab_standin.models", f"Injected error {i}/{burst} (lab fault)"
            )
        infos = self.faults.log_info_mentions_error
        for i in range(1, infos + 1):
            self.app_log(
                "INFO",
                "odoo.addons.lab_standin.models",
                f"Nightly report {i}/{infos}: ERROR count is 0, no ERROR found in the last run",
            )
        self.faults.log_errors = 0
        self.faults.log_info_mentions_error = 0

    def reset_faults(self) -> None:
        self.faults = Faults()
        self.backend.db_down = False

    def new_session(self, uid: int) -> str:
        sid = secrets.token_urlsafe(63)
        self.sessions[sid] = uid
        while len(self.sessions) > MAX_SESSIONS:
            self.sessions.popitem(last=False)
        return sid

    def session_uid(self, request: web.Request) -> int | None:
        sid = request.cookies.get("session_id")
        return self.sessions.get(sid) if sid else None

    def session_info(self, request: web.Request) -> dict[str, Any]:
        """A trimmed `ir.http.session_info()` as /web/session/authenticate returns it."""
        s = self.settings
        ver = version_info(s.version)
        translations = hashlib.sha1(f"{s.version}-en_US".encode()).hexdigest()  # noqa: S324
        return {
            "uid": ADMIN_UID,
            "is_system": True,
            "is_admin": True,
            "is_public": False,
            "is_internal_user": True,
            "user_context": {"lang": "en_US", "tz": "Europe/Brussels", "uid": ADMIN_UID},
            "db": s.db,
            "user_settings": {"id": 1, "user_id": {"id": ADMIN_UID}},
            "server_version": ver["server_version"],
            "server_version_info": ver["server_version_info"],
            "support_url": "https://www.odoo.com/buy",
            "name": "Administrator",
            "username": s.login,
            "partner_display_name": "Administrator",
            "partner_id": ADMIN_PARTNER_ID,
            "web.base.url": f"{request.scheme}://{request.host}",
            "active_ids_limit": 20000,
            "profile_session": None,
            "profile_collectors": None,
            "profile_params": None,
            "max_file_upload_size": 128 * 1024 * 1024,
            "home_action_id": False,
            "cache_hashes": {"translations": translations},
            "currencies": {"1": {"symbol": "€", "position": "after", "digits": [69, 2]}},
            "bundle_params": {"lang": "en_US"},
            "user_companies": {
                "current_company": 1,
                "allowed_companies": {
                    "1": {
                        "id": 1,
                        "name": "My Company",
                        "sequence": 10,
                        "child_ids": [],
                        "parent_id": False,
                    }
                },
                "disallowed_ancestor_companies": {},
            },
            "show_effect": True,
            "display_switch_company_menu": False,
            "user_id": [ADMIN_UID],
        }


STATE: web.AppKey[Standin] = web.AppKey("odoo_standin", Standin)

# ---------------------------------------------------------------------------------------------
# Response helpers
# ---------------------------------------------------------------------------------------------

_ERROR_PAGES = {
    500: (
        "Internal Server Error",
        "The server encountered an internal error and was unable to complete your request. "
        "Either the server is overloaded or there is an error in the application.",
    ),
    503: (
        "Service Unavailable",
        "The server is temporarily unable to service your request due to maintenance downtime "
        "or capacity problems.  Please try again later.",
    ),
    400: (
        "Bad Request",
        "The browser (or proxy) sent a request that this server could not understand.",
    ),
}


def error_page(status: int, detail: str | None = None) -> web.Response:
    """Werkzeug's HTML error page, as Odoo's http routes answer it."""
    title, text = _ERROR_PAGES[status]
    body = (
        f"<!doctype html>\n<html lang=en>\n<title>{status} {title}</title>\n"
        f"<h1>{title}</h1>\n<p>{html.escape(detail or text)}</p>\n"
    )
    return web.Response(status=status, text=body, content_type="text/html")


def health_response(payload: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", "Cache-Control": "no-store"},
    )


def jsonrpc_response(
    req_id: Any, *, result: Any = None, error: dict[str, Any] | None = None, status: int = 200
) -> web.Response:
    """Odoo's JSON-RPC envelope: errors answer HTTP 200 too; `result` is left out when None."""
    payload: dict[str, Any] = {"jsonrpc": "2.0", "id": req_id}
    if error is not None:
        payload["error"] = error
    if result is not None:
        payload["result"] = result
    return web.Response(
        status=status,
        body=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )


def log_odoo_error(state: Standin, err: OdooError) -> None:
    """What Odoo's HTTP layer logs for an exception escaping a route."""
    if err.log_level == "ERROR":
        state.log.write(
            "ERROR",
            "odoo.http",
            "Exception during request handling.",
            dbname=state.settings.db,
            exc_text=err.traceback_text(),
        )
    elif err.log_level is not None:
        state.log.write(err.log_level, "odoo.http", err.message, dbname=state.settings.db)


async def read_jsonrpc(request: web.Request) -> tuple[Any, dict[str, Any]] | web.Response:
    """(id, params) of a JSON-RPC request, or the error response Odoo gives for a bad one."""
    ctype = request.content_type
    if ctype not in JSON_CONTENT_TYPES:
        return error_page(
            400,
            f"Request inferred type is compatible with ['http'] but {request.path!r} is "
            "type='json'. Please verify the Content-Type request header and try again.",
        )
    try:
        body = json.loads(await request.read() or b"null")
    except ValueError as exc:
        err = ServerError(
            "werkzeug.exceptions.BadRequest", f"400 Bad Request: Invalid JSON data: {exc}"
        )
        return jsonrpc_response(None, error=err.json_error())
    if not isinstance(body, dict):
        err = ServerError(
            "werkzeug.exceptions.BadRequest", "400 Bad Request: Invalid JSON-RPC data"
        )
        return jsonrpc_response(None, error=err.json_error())
    params = body.get("params") or {}
    if not isinstance(params, dict):
        err = ServerError("builtins.TypeError", "params must be an object")
        return jsonrpc_response(body.get("id"), error=err.json_error())
    return body.get("id"), params


def require(name: str, params: dict[str, Any], *names: str) -> None:
    missing = [n for n in names if n not in params]
    if missing:
        quoted = " and ".join(repr(m) for m in missing)
        raise ServerError(
            "builtins.TypeError",
            f"{name}() missing {len(missing)} required positional argument"
            f"{'s' if len(missing) > 1 else ''}: {quoted}",
        )


def set_session_cookie(response: web.StreamResponse, sid: str) -> None:
    response.set_cookie(
        "session_id", sid, max_age=SESSION_MAX_AGE, httponly=True, path="/", samesite="Lax"
    )


# ---------------------------------------------------------------------------------------------
# Odoo routes
# ---------------------------------------------------------------------------------------------


async def web_health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    payload: dict[str, Any] = {"status": "pass"}
    # Odoo 17 tests the raw parameter for truth: any non-empty value asks for the db check.
    if request.query.get("db_server_status"):
        if state.faults.db_down:
            state.app_log("INFO", "odoo.sql_db", "Connection to the database failed")
            return health_response({"status": "fail", "db_server_status": False}, 500)
        payload["db_server_status"] = True
    return health_response(payload)


async def websocket_health(request: web.Request) -> web.Response:
    return health_response({"status": "pass"})


def login_page(
    state: Standin, *, login: str = "", error: str | None = None, redirect: str | None = None
) -> str:
    alert = (
        f'\n<p class="alert alert-danger" role="alert">{html.escape(error)}</p>' if error else ""
    )
    hidden_redirect = (
        f'\n<input type="hidden" name="redirect" value="{html.escape(redirect)}"/>'
        if redirect
        else ""
    )
    csrf = f"{secrets.token_hex(20)}o{int(time.time()) + 31536000}"
    parts = [
        '<!DOCTYPE html>\n<html lang="en-US">\n<head>\n<meta charset="utf-8"/>',
        "<title>Login | Odoo</title>",
        '<meta name="generator" content="Odoo"/>\n</head>',
        '<body class="bg-100">\n<main class="o_database_list">',
        '<form class="oe_login_form" role="form" method="post" action="/web/login"'
        " onsubmit=\"this.action = '/web/login' + location.hash\">",
        f'<input type="hidden" name="csrf_token" value="{csrf}"/>',
        '<div class="mb-3 field-db"><label for="db" class="col-form-label">Database</label>',
        f'<input type="text" name="db" value="{html.escape(state.settings.db)}" id="db"'
        ' class="form-control" readonly="readonly"/></div>',
        '<div class="mb-3 field-login"><label for="login" class="form-label">Email</label>',
        '<input type="text" placeholder="Email" name="login" id="login" required="required"'
        ' autofocus="autofocus" autocapitalize="off" class="form-control"'
        f' value="{html.escape(login)}"/></div>',
        '<div class="mb-3"><label for="password" class="form-label">Password</label>',
        '<input type="password" placeholder="Password" name="password" id="password"'
        ' required="required" autocomplete="current-password" maxlength="4096"'
        f' class="form-control"/></div>{alert}',
        '<div class="clearfix oe_login_buttons text-center gap-1 d-grid mb-1 pt-3">',
        '<button type="submit" class="btn btn-primary">Log in</button>',
        f"</div>{hidden_redirect}\n</form>",
        '<div class="text-center small mt-4 pt-3 border-top">'
        '<a href="https://www.odoo.com?utm_source=db&amp;utm_medium=auth" target="_blank">'
        "Powered by <span>Odoo</span></a></div>",
        "</main>\n</body>\n</html>\n",
    ]
    return "\n".join(parts)


def html_response(body: str, status: int = 200) -> web.Response:
    resp = web.Response(status=status, text=body, content_type="text/html")
    resp.headers["X-Frame-Options"] = "SAMEORIGIN"
    resp.headers["Content-Security-Policy"] = "frame-ancestors 'self'"
    return resp


async def web_login(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    redirect = request.query.get("redirect")
    if state.faults.db_down:
        state.backend.connect(state.settings.db)  # raises: PostgreSQL is unreachable
    if request.method == "POST":
        form = await request.post()
        login = str(form.get("login", ""))
        password = str(form.get("password", ""))
        redirect = str(form.get("redirect", "")) or redirect
        try:
            uid = state.backend.authenticate(
                state.settings.db, login, password, request.remote or ""
            )
        except AccessDenied:
            return html_response(
                login_page(state, login=login, error="Wrong login/password", redirect=redirect)
            )
        resp = web.Response(status=303, headers={"Location": redirect or state.settings.home})
        set_session_cookie(resp, state.new_session(uid))
        return resp
    if redirect and state.session_uid(request):
        return web.Response(status=303, headers={"Location": redirect})
    resp = html_response(login_page(state, redirect=redirect))
    if "session_id" not in request.cookies:
        set_session_cookie(resp, secrets.token_urlsafe(63))
    return resp


async def web_client(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if not state.session_uid(request):
        query = urllib.parse.urlencode({"redirect": request.path_qs})
        return web.Response(status=303, headers={"Location": f"/web/login?{query}"})
    body = (
        "<!DOCTYPE html>\n<html>\n<head>\n<title>Odoo</title>\n</head>\n"
        f'<body class="o_web_client"><script>var odoo = {{"debug": "", '
        f'"version": "{html.escape(state.settings.version)}"}};</script></body>\n</html>\n'
    )
    resp = web.Response(text=body, content_type="text/html")
    resp.headers["X-Frame-Options"] = "DENY"
    return resp


async def root(request: web.Request) -> web.Response:
    return web.Response(status=303, headers={"Location": request.app[STATE].settings.home})


async def session_logout(request: web.Request) -> web.Response:
    state = request.app[STATE]
    sid = request.cookies.get("session_id")
    if sid:
        state.sessions.pop(sid, None)
    location = request.query.get("redirect") or state.settings.home
    return web.Response(status=303, headers={"Location": location})


async def webclient_version_info(request: web.Request) -> web.Response:
    parsed = await read_jsonrpc(request)
    if isinstance(parsed, web.Response):
        return parsed
    req_id, _params = parsed
    return jsonrpc_response(req_id, result=version_info(request.app[STATE].settings.version))


async def session_authenticate(request: web.Request) -> web.Response:
    state = request.app[STATE]
    parsed = await read_jsonrpc(request)
    if isinstance(parsed, web.Response):
        return parsed
    req_id, params = parsed
    try:
        require("Session.authenticate", params, "db", "login", "password")
        if params["db"] != state.settings.db and not state.faults.db_down:
            raise AccessError("Database not found.")
        uid = state.backend.authenticate(
            params["db"], params["login"], params["password"], request.remote or ""
        )
    except OdooError as err:
        log_odoo_error(state, err)
        return jsonrpc_response(req_id, error=err.json_error())
    resp = jsonrpc_response(req_id, result=state.session_info(request))
    set_session_cookie(resp, state.new_session(uid))
    return resp


async def session_get_info(request: web.Request) -> web.Response:
    state = request.app[STATE]
    parsed = await read_jsonrpc(request)
    if isinstance(parsed, web.Response):
        return parsed
    req_id, _params = parsed
    if not state.session_uid(request):
        state.app_log("INFO", "odoo.http", "Session expired")
        error = {
            "code": 100,
            "message": "Odoo Session Expired",
            "data": {
                "name": "odoo.http.SessionExpiredException",
                "debug": format_traceback("odoo.http.SessionExpiredException: Session expired")
                + "\n",
                "message": "Session expired",
                "arguments": ["Session expired"],
                "context": {},
            },
        }
        return jsonrpc_response(req_id, error=error)
    return jsonrpc_response(req_id, result=state.session_info(request))


async def jsonrpc_endpoint(request: web.Request) -> web.Response:
    state = request.app[STATE]
    parsed = await read_jsonrpc(request)
    if isinstance(parsed, web.Response):
        return parsed
    req_id, params = parsed
    try:
        require("RPC.jsonrpc", params, "service", "method", "args")
        args = params["args"]
        if not isinstance(args, list):
            raise ServerError("builtins.TypeError", "args must be a list")
        result = state.backend.dispatch(
            str(params["service"]), str(params["method"]), args, request.remote or ""
        )
    except OdooError as err:
        log_odoo_error(state, err)
        return jsonrpc_response(req_id, error=err.json_error())
    return jsonrpc_response(req_id, result=result)


async def xmlrpc_endpoint(request: web.Request) -> web.Response:
    """/xmlrpc/2/<service>: faults are answered with HTTP 200 and are not logged, like Odoo."""
    state = request.app[STATE]
    try:
        method, params = parse_xmlrpc(await request.read())
        result = state.backend.dispatch(
            request.match_info["service"], method, params, request.remote or ""
        )
        body = xmlrpc_response(result)
    except OdooError as err:
        body = xmlrpc_fault(err)
    return web.Response(text=body, content_type="text/xml")


# ---------------------------------------------------------------------------------------------
# Lab control (not Odoo)
# ---------------------------------------------------------------------------------------------


async def lab_faults(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if request.method == "POST":
        try:
            data = json.loads(await request.read() or b"{}")
        except ValueError as exc:
            return web.json_response({"error": f"body is not valid JSON: {exc}"}, status=400)
        try:
            clean = validate_faults(data)
        except FaultError as exc:
            return web.json_response({"error": str(exc), "field": exc.field}, status=400)
        state.apply_faults(clean)
    elif request.method == "DELETE":
        state.reset_faults()
    return web.json_response(asdict(state.faults))


async def lab_metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[STATE].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def lab_info(request: web.Request) -> web.Response:
    state = request.app[STATE]
    s = state.settings
    return web.json_response(
        {
            "color": s.color,
            "version": s.version,
            "db": s.db,
            "pid": os.getpid(),
            "uptime": round(time.time() - state.started, 3),
            "faults": asdict(state.faults),
        }
    )


# ---------------------------------------------------------------------------------------------
# Middleware: faults, access log, metrics
# ---------------------------------------------------------------------------------------------


def injected_error(request: web.Request, state: Standin, req_id: Any) -> web.Response:
    exc_line = f"RuntimeError: lab fault: injected server error on {request.method} {request.path}"
    state.log.write(
        "ERROR",
        "odoo.http",
        "Exception during request handling.",
        dbname=state.settings.db,
        exc_text=format_traceback(exc_line),
    )
    if request.path in _JSON_ROUTES:
        err = ServerError("builtins.RuntimeError", exc_line.split(": ", 1)[1])
        return jsonrpc_response(req_id, error=err.json_error(), status=500)
    if request.path.startswith("/xmlrpc/"):
        err = ServerError("builtins.RuntimeError", exc_line.split(": ", 1)[1])
        return web.Response(status=500, text=xmlrpc_fault(err), content_type="text/xml")
    return error_page(500)


def access_log(request: web.Request, state: Standin, status: int, elapsed: float) -> None:
    queries = 0 if request.path in _NO_DB_ROUTES else 3
    query_time = 0.0004 * queries
    perf = f"{queries} {query_time:.3f} {max(elapsed - query_time, 0.0):.3f}"
    stamp = time.strftime("%d/%b/%Y %H:%M:%S")
    version = f"HTTP/{request.version.major}.{request.version.minor}"
    message = (
        f'{request.remote or "-"} - - [{stamp}] "{request.method} {request.raw_path} {version}" '
        f"{status} -"
    )
    state.log.write("INFO", "werkzeug", message, dbname=state.settings.db, perf_info=perf)


@web.middleware
async def odoo_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith(LAB_PREFIX):
        response: web.StreamResponse = await handler(request)
        return response
    state = request.app[STATE]
    t0 = time.perf_counter()
    status = 500
    cancelled = False
    try:
        faults = state.faults
        if faults.latency > 0:
            await asyncio.sleep(faults.latency)
        if faults.down:
            response = error_page(503)
        elif faults.error_rate > 0 and random.random() < faults.error_rate:
            req_id = None
            if request.path in _JSON_ROUTES:
                with contextlib.suppress(ValueError, aiohttp.ClientError):
                    body = json.loads(await request.read() or b"null")
                    req_id = body.get("id") if isinstance(body, dict) else None
            response = injected_error(request, state, req_id)
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                status = exc.status
                raise
            except OdooError as err:  # an http route that let an Odoo error escape
                log_odoo_error(state, err)
                response = error_page(500)
            except Exception:
                state.log.write(
                    "ERROR",
                    "odoo.http",
                    "Exception during request handling.",
                    dbname=state.settings.db,
                    exc_text=traceback.format_exc(),
                )
                response = error_page(500)
        status = response.status
        return response
    except asyncio.CancelledError:  # the client went away: nothing was answered
        cancelled = True
        raise
    finally:
        if not cancelled:
            _record(request, state, status, time.perf_counter() - t0)


def _record(request: web.Request, state: Standin, status: int, elapsed: float) -> None:
    state.requests.labels(color=state.settings.color, code=str(status)).inc()
    state.duration.labels(color=state.settings.color).observe(elapsed)
    access_log(request, state, status, elapsed)


async def add_colour_headers(request: web.Request, response: web.StreamResponse) -> None:
    settings = request.app[STATE].settings
    response.headers["X-Odoo-Color"] = settings.color
    response.headers["X-Odoo-Version"] = settings.version


def create_app(settings: StandinSettings) -> web.Application:
    """The stand-in as an aiohttp app (its own metrics registry, sessions and data)."""
    state = Standin(settings)
    app = web.Application(middlewares=[odoo_middleware])
    app[STATE] = state
    app.on_response_prepare.append(add_colour_headers)

    async def on_startup(_app: web.Application) -> None:
        state.log.write("INFO", "odoo", f"Odoo version {settings.version}")
        state.log.write(
            "INFO", "odoo", f"lab stand-in: color {settings.color}, database {settings.db}"
        )

    async def on_shutdown(_app: web.Application) -> None:
        state.log.write("INFO", "odoo.service.server", "Initiating shutdown")
        state.log.write(
            "INFO",
            "odoo.service.server",
            "Hit CTRL-C again or send a second signal to force the shutdown.",
        )

    async def on_cleanup(_app: web.Application) -> None:
        state.log.close()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)

    r = app.router
    r.add_route("*", "/web/health", web_health)
    r.add_route("*", "/websocket/health", websocket_health)
    r.add_route("*", "/web/login", web_login)
    r.add_get("/web", web_client)
    r.add_get("/odoo", web_client)
    r.add_get("/", root)
    r.add_route("*", "/web/session/logout", session_logout)
    r.add_post("/web/webclient/version_info", webclient_version_info)
    r.add_post("/web/session/authenticate", session_authenticate)
    r.add_post("/web/session/get_session_info", session_get_info)
    r.add_post("/jsonrpc", jsonrpc_endpoint)
    r.add_post("/xmlrpc/2/{service}", xmlrpc_endpoint)
    r.add_route("GET", "/__lab__/faults", lab_faults)
    r.add_route("POST", "/__lab__/faults", lab_faults)
    r.add_route("DELETE", "/__lab__/faults", lab_faults)
    r.add_get("/__lab__/metrics", lab_metrics)
    r.add_get("/__lab__/info", lab_info)
    return app


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m watchdog.lab.standin",
        description=(__doc__ or "Odoo stand-in").split("\n")[0],
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8069)
    parser.add_argument("--color", default="blue")
    parser.add_argument("--version", default="17.0", help='the Odoo version to claim, e.g. "18.0"')
    parser.add_argument("--db", default="odoo")
    parser.add_argument("--login", default="admin")
    parser.add_argument("--password", default="admin")
    parser.add_argument("--log-file", type=Path, default=None)
    parser.add_argument("--log-stdout", action="store_true")
    args = parser.parse_args(argv)
    settings = StandinSettings(
        color=args.color,
        version=args.version,
        db=args.db,
        login=args.login,
        password=args.password,
        log_file=args.log_file,
        log_stdout=args.log_stdout,
    )
    app = create_app(settings)

    async def announce(_app: web.Application) -> None:
        app[STATE].log.write(
            "INFO",
            "odoo.service.server",
            f"HTTP service (werkzeug) running on {args.host}:{args.port}",
        )

    app.on_startup.append(announce)
    # SIGTERM/SIGINT end run_app gracefully, and main returns: exit status 0.
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        print=None,
        access_log=None,
        shutdown_timeout=2.0,
        handle_signals=True,
    )


# ---------------------------------------------------------------------------------------------
# A stand-in as a separate process, and the fault helpers
# ---------------------------------------------------------------------------------------------


class StandinProcess:
    """One stand-in run as `python -m watchdog.lab.standin` on loopback, stopped by its pid."""

    def __init__(
        self,
        color: str,
        workdir: Path,
        port: int | None = None,
        version: str = "17.0",
        *,
        log_stdout: bool = False,
    ) -> None:
        self.color = color
        self.workdir = Path(workdir)
        self.port = port if port is not None else free_port()
        self.version = version
        self.log_file = self.workdir / f"odoo-{color}.log"
        self.output_file = self.workdir / f"standin-{color}.out"
        argv = [
            sys.executable,
            "-m",
            "watchdog.lab.standin",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--color",
            color,
            "--version",
            version,
            "--log-file",
            str(self.log_file),
        ]
        if log_stdout:
            argv.append("--log-stdout")
        project_root = str(Path(__file__).resolve().parents[2])
        pythonpath = os.pathsep.join(p for p in (project_root, os.environ.get("PYTHONPATH")) if p)
        self.process = ManagedProcess(
            f"odoo-standin-{color}",
            argv,
            log_path=self.output_file,
            ready=lambda: http_ok(f"{self.url}/web/health", timeout=0.5),
            env={"PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1"},
            ready_timeout=10.0,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def running(self) -> bool:
        return self.process.running()

    def start(self) -> StandinProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process.start()
        return self

    def stop(self, grace: float = 5.0) -> None:
        self.process.stop(grace)

    def kill(self) -> None:
        self.process.kill()

    def __enter__(self) -> StandinProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"StandinProcess(color={self.color!r}, url={self.url!r}, pid={self.pid})"


_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _faults_url(url: str) -> str:
    host = urllib.parse.urlsplit(url).hostname
    if host not in _LOOPBACK:
        raise FaultError(f"the lab only talks to loopback, not {url!r}")
    return url.rstrip("/") + "/__lab__/faults"


def _raise_refusal(status: int, text: str) -> None:
    try:
        data = json.loads(text)
        message, field = str(data.get("error", text)), data.get("field")
    except (ValueError, AttributeError):
        message, field = text, None
    raise FaultError(f"the stand-in refused the faults ({status}): {message}", field)


def _sync_call(
    method: str, url: str, payload: dict[str, Any] | None, timeout: float
) -> dict[str, Any]:
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(
        _faults_url(url), data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            result: dict[str, Any] = json.loads(resp.read())
            return result
    except urllib.error.HTTPError as exc:
        with exc:  # closes the connection
            text = exc.read().decode(errors="replace")
        _raise_refusal(exc.code, text)
        raise  # unreachable


def set_faults(url: str, timeout: float = 5.0, **faults: Any) -> dict[str, Any]:
    """Merge fault settings into the stand-in at `url`; returns its faults afterwards."""
    return _sync_call("POST", url, faults, timeout)


def get_faults(url: str, timeout: float = 5.0) -> dict[str, Any]:
    return _sync_call("GET", url, None, timeout)


def clear_faults(url: str, timeout: float = 5.0) -> None:
    _sync_call("DELETE", url, None, timeout)


async def _async_call(
    session: aiohttp.ClientSession, method: str, url: str, payload: dict[str, Any] | None
) -> dict[str, Any]:
    async with session.request(method, _faults_url(url), json=payload) as resp:
        text = await resp.text()
        if resp.status != 200:
            _raise_refusal(resp.status, text)
        result: dict[str, Any] = json.loads(text)
        return result


async def aset_faults(session: aiohttp.ClientSession, url: str, **faults: Any) -> dict[str, Any]:
    return await _async_call(session, "POST", url, faults)


async def aget_faults(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    return await _async_call(session, "GET", url, None)


async def aclear_faults(session: aiohttp.ClientSession, url: str) -> None:
    await _async_call(session, "DELETE", url, None)


FAULT_NAMES = tuple(f.name for f in fields(Faults))

if __name__ == "__main__":
    main()
