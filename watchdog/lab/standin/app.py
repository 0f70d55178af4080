"""The stand-in as an aiohttp app: its routes, the lab's own control routes (`/__lab__/`), the
middleware that injects faults and writes the access log and metrics, and the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
import traceback
from dataclasses import asdict
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http import HttpVersion10
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.exposition import generate_latest

from watchdog.lab.standin.errors import OdooError, ServerError, format_traceback
from watchdog.lab.standin.faults import FaultError, validate_faults
from watchdog.lab.standin.json2 import web_json_2, web_version
from watchdog.lab.standin.log import CURRENT_DB
from watchdog.lab.standin.responses import (
    error_page,
    jsonrpc_response,
    log_odoo_error,
    set_session_cookie,
    xmlrpc_fault,
)
from watchdog.lab.standin.routes import (
    ERROR_KEY,
    SESSION_KEY,
    jsonrpc_endpoint,
    root,
    session_authenticate,
    session_get_info,
    session_logout,
    web_client,
    web_health,
    web_login,
    webclient_version_info,
    websocket_health,
    xmlrpc_endpoint,
)
from watchdog.lab.standin.state import STATE, Standin, StandinSettings

LAB_PREFIX = "/__lab__/"
_JSON_ROUTES = {
    "/web/webclient/version_info",
    "/web/session/authenticate",
    "/web/session/get_session_info",
    "/jsonrpc",
}
_NO_DB_ROUTES = {"/web/health", "/websocket/health", "/web/webclient/version_info"}
#: The routes that keep a session (`save_session=True`, Odoo's default): a request without a
#: known session gets a new one, and its cookie.
_SESSION_ROUTES = {
    "/",
    "/web",
    "/web/login",
    "/web/session/logout",
    "/web/webclient/version_info",
    "/web/session/authenticate",
    "/web/session/get_session_info",
}
#: type='http' routes: an unsafe method needs a CSRF token of the session.
_CSRF_ROUTES = {"/", "/web", "/web/login", "/web/session/logout", "/web/health",
                "/websocket/health", "/web/version", "/json/version"}
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS", "TRACE")
#: The Server header of the official images' werkzeug and Python.
_SERVER = {16: "Werkzeug/1.0.1 Python/3.9.2", 17: "Werkzeug/2.0.2 Python/3.10.12"}
_SERVER_LATER = "Werkzeug/3.0.1 Python/3.12.3"
_DOCS_SERIES = {16: "16.0", 17: "17.0", 18: "18.0"}
_MISSING_CSRF = """\
No CSRF validation token provided for path %r

Odoo URLs are CSRF-protected by default (when accessed with unsafe
HTTP methods). See
https://www.odoo.com/documentation/%s/developer/reference/addons/http.html#csrf
for more details.

* if this endpoint is accessed through Odoo via py-QWeb form, embed a CSRF
  token in the form, Tokens are available via `request.csrf_token()`
  can be provided through a hidden input and must be POST-ed named
  `csrf_token` e.g. in your form add:
      <input type="hidden" name="csrf_token" t-att-value="request.csrf_token()"/>

* if the form is generated or posted in javascript, the token value is
  available as `csrf_token` on `web.core` and as the `csrf_token`
  value in the default js-qweb execution context

* if the form is accessed by an external third party (e.g. REST API
  endpoint, payment gateway callback) you will need to disable CSRF
  protection (and implement your own protection if necessary) by
  passing the `csrf=False` parameter to the `route` decorator.
"""

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
            #: res.partner rows (archived ones too): "partner count unchanged afterwards".
            "partners": len(state.backend.partners.records),
            "sessions_dir": str(state.sessions.directory) if state.sessions.directory else None,
        }
    )


# ---------------------------------------------------------------------------------------------
# Middleware: faults, access log, metrics
# ---------------------------------------------------------------------------------------------


def injected_error(request: web.Request, state: Standin, req_id: Any) -> web.Response:
    exc_line = f"RuntimeError: lab fault: injected server error on {request.method} {request.path}"
    CURRENT_DB.set(state.settings.db)  # as an exception in a request on the database
    state.log_exception(format_traceback(exc_line))
    if request.path in _JSON_ROUTES:
        err = ServerError("builtins.RuntimeError", exc_line.split(": ", 1)[1])
        return jsonrpc_response(req_id, error=err.json_error(), status=500)
    if request.path.startswith("/xmlrpc/"):
        err = ServerError("builtins.RuntimeError", exc_line.split(": ", 1)[1])
        return web.Response(status=500, text=xmlrpc_fault(err), content_type="text/xml")
    return error_page(500, major=state.settings.major)


def access_log(
    request: web.Request, state: Standin, status: int, elapsed: float, version: str
) -> None:
    """werkzeug's line: the request line as the client sent it, then Odoo's perf info."""
    queries = 0 if request.path in _NO_DB_ROUTES else 3
    query_time = 0.0004 * queries
    perf = f"{queries} {query_time:.3f} {max(elapsed - query_time, 0.0):.3f}"
    stamp = time.strftime("%d/%b/%Y %H:%M:%S")
    message = (
        f'{request.remote or "-"} - - [{stamp}] "{request.method} {request.raw_path} {version}" '
        f"{status} -"
    )
    state.log.write("INFO", "werkzeug", message, perf_info=perf)


def no_keep_alive(request: web.Request, state: Standin, response: web.StreamResponse) -> None:
    """Odoo's werkzeug server keeps no connection open: 16 and 17 (werkzeug 1.0, 2.0) answer
    HTTP/1.0, 18 and 19 (werkzeug 3) HTTP/1.1 with `Connection: close`. And werkzeug before
    2.1 made every Location absolute."""
    settings = state.settings
    location = response.headers.get("Location", "")
    if settings.absolute_redirects and location.startswith("/"):
        response.headers["Location"] = f"{request.scheme}://{request.host}{location}"
    response.force_close()
    if settings.http10:
        # aiohttp writes the status line with the request's version (a cached property of
        # the request): make it 1.0 to answer as HTTP/1.0.
        request._version = HttpVersion10
        request._cache["version"] = HttpVersion10


@web.middleware
async def odoo_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith(LAB_PREFIX):
        response: web.StreamResponse = await handler(request)
        return response
    state = request.app[STATE]
    CURRENT_DB.set("?")  # Odoo clears the thread's dbname as each request starts
    version = f"HTTP/{request.version.major}.{request.version.minor}"
    t0 = time.perf_counter()
    status = 500
    cancelled = False
    try:
        faults = state.faults
        if faults.latency > 0:
            await asyncio.sleep(faults.latency)
        if faults.down:
            response = error_page(503, major=state.settings.major)
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
            except OdooError as err:  # an http route that let an Odoo error escape
                log_odoo_error(state, err)
                response = error_page(500, major=state.settings.major)
            except Exception:
                state.log_exception(traceback.format_exc())
                response = error_page(500, major=state.settings.major)
        no_keep_alive(request, state, response)
        status = response.status
        return response
    except asyncio.CancelledError:  # the client went away: nothing was answered
        cancelled = True
        raise
    finally:
        if not cancelled:
            _record(request, state, status, time.perf_counter() - t0, version)


def csrf_warning(state: Standin, path: str, token: str | None) -> str:
    if token is None:
        series = _DOCS_SERIES.get(state.settings.major, "master")
        return _MISSING_CSRF % (path, series)
    return f"CSRF validation failed on path {path!r}"


@web.middleware
async def odoo_request(request: web.Request, handler: Handler) -> web.StreamResponse:
    """What Odoo's Request does around a route, once it has a Host: the database (the one
    configured: a "monodb"), the session, the CSRF check of type='http' routes, PostgreSQL
    being down, and werkzeug's page for a path or method no route takes."""
    if request.path.startswith(LAB_PREFIX):
        response: web.StreamResponse = await handler(request)
        return response
    state = request.app[STATE]
    settings = state.settings
    CURRENT_DB.set(settings.db)  # Registry(db) names the database, even when it cannot connect
    if state.faults.db_down:
        state.app_log("INFO", "odoo.sql_db", "Connection to the database failed")
    new_sid = None
    routed = request.match_info.http_exception is None
    if routed and request.path in _SESSION_ROUTES:
        sid = state.session_id(request)
        if sid is None:
            sid = new_sid = state.new_session()
        request[SESSION_KEY] = sid
    if routed and request.path in _CSRF_ROUTES and request.method not in _SAFE_METHODS:
        form = await request.post()
        token = form.get("csrf_token", request.query.get("csrf_token"))
        token = None if token is None else str(token)
        if not state.csrf_valid(state.session_id(request), token):
            state.app_log("WARNING", "odoo.http", csrf_warning(state, request.path, token))
            response = error_page(
                400, "Session expired (invalid CSRF token)", major=settings.major
            )
            if new_sid is not None:
                set_session_cookie(response, new_sid)
            return response
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # no route for this path, or not for this method
        response = error_page(exc.status, major=settings.major)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
    # An error answer saves no session (Odoo's handle_error skips post_dispatch).
    saved = "session_id" in response.cookies or request.get(ERROR_KEY)
    if new_sid is not None and not saved:
        set_session_cookie(response, new_sid)
    return response


# Real Odoo (seen on 17 and 18) reads the Host in Request._get_session_and_dbname
# (`environ['HTTP_HOST']`) before any route: without one, every request is a 500 and an ERROR
# with this traceback, dbname `?` (the line numbers are illustrative).
_NO_HOST_FRAMES = (
    ("http.py", 2189, "__call__", "request._post_init()"),
    ("http.py", 1427, "_post_init", "self.session, self.db = self._get_session_and_dbname()"),
    ("http.py", 1443, "_get_session_and_dbname", "host = self.httprequest.environ['HTTP_HOST']"),
)


@web.middleware
async def require_host(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A request without a Host header: 500 and Odoo's ERROR traceback, as real Odoo answers."""
    if "Host" in request.headers or request.path.startswith(LAB_PREFIX):
        return await handler(request)
    request.app[STATE].log.write(
        "ERROR", "odoo.http", "Exception during request handling.", dbname="?",
        exc_text=format_traceback("KeyError: 'HTTP_HOST'", _NO_HOST_FRAMES),
    )
    return error_page(500)


def _record(
    request: web.Request, state: Standin, status: int, elapsed: float, version: str
) -> None:
    state.requests.labels(color=state.settings.color, code=str(status)).inc()
    state.duration.labels(color=state.settings.color).observe(elapsed)
    access_log(request, state, status, elapsed, version)


async def add_colour_headers(request: web.Request, response: web.StreamResponse) -> None:
    settings = request.app[STATE].settings
    response.headers["X-Odoo-Color"] = settings.color
    response.headers["X-Odoo-Version"] = settings.version
    if not request.path.startswith(LAB_PREFIX):
        response.headers["Server"] = _SERVER.get(settings.major, _SERVER_LATER)


def create_app(settings: StandinSettings) -> web.Application:
    """The stand-in as an aiohttp app (its own metrics registry, sessions and data)."""
    state = Standin(settings)
    app = web.Application(middlewares=[odoo_middleware, require_host, odoo_request])
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
    r.add_route("*", "/web", web_client)
    if settings.major >= 18:  # 18 moved the web client to /odoo; 17 has no such route (404)
        r.add_route("*", "/odoo", web_client)
    r.add_route("*", "/", root)
    r.add_route("*", "/web/session/logout", session_logout)
    # type='json' routes take any method: a GET is refused by the JSON dispatcher (400).
    r.add_route("*", "/web/webclient/version_info", webclient_version_info)
    r.add_route("*", "/web/session/authenticate", session_authenticate)
    r.add_route("*", "/web/session/get_session_info", session_get_info)
    r.add_route("*", "/jsonrpc", jsonrpc_endpoint)
    r.add_post("/xmlrpc/2/{service}", xmlrpc_endpoint)
    if settings.major >= 19:  # the `rpc` addon of 19: JSON-2 and the version probe
        r.add_route("*", "/json/2/{model}/{method}", web_json_2)
        r.add_route("GET", "/web/version", web_version)
        r.add_route("GET", "/json/version", web_version)
    r.add_route("GET", "/__lab__/faults", lab_faults)
    r.add_route("POST", "/__lab__/faults", lab_faults)
    r.add_route("DELETE", "/__lab__/faults", lab_faults)
    r.add_get("/__lab__/metrics", lab_metrics)
    r.add_get("/__lab__/info", lab_info)
    return app
