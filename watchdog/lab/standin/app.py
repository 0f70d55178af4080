"""The stand-in as an aiohttp app: its routes, the lab's own control routes (`/__lab__/`), the
middleware that injects faults and writes the access log and metrics, and the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.exposition import generate_latest

from watchdog.lab.standin.errors import OdooError, ServerError, format_traceback
from watchdog.lab.standin.faults import FaultError, validate_faults
from watchdog.lab.standin.responses import (
    error_page,
    jsonrpc_response,
    log_odoo_error,
    xmlrpc_fault,
)
from watchdog.lab.standin.routes import (
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

DESCRIPTION = (
    "The Odoo stand-in: an aiohttp app that speaks Odoo 17's HTTP and RPC surface on loopback."
)
LAB_PREFIX = "/__lab__/"
_JSON_ROUTES = {
    "/web/webclient/version_info",
    "/web/session/authenticate",
    "/web/session/get_session_info",
    "/jsonrpc",
}
_NO_DB_ROUTES = {"/web/health", "/websocket/health", "/web/webclient/version_info"}

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
    state.log_exception(format_traceback(exc_line))
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
                state.log_exception(traceback.format_exc())
                response = error_page(500)
        status = response.status
        return response
    except asyncio.CancelledError:  # the client went away: nothing was answered
        cancelled = True
        raise
    finally:
        if not cancelled:
            _record(request, state, status, time.perf_counter() - t0)


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
    app = web.Application(middlewares=[odoo_middleware, require_host])
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
        description=DESCRIPTION,
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
