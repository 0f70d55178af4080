"""The Odoo routes of the stand-in: health, login and web client pages, sessions, JSON-RPC
and XML-RPC, each answering as Odoo 17 does (`odoo/addons/web/controllers/*.py`,
`odoo/addons/base/controllers/rpc.py`).
"""

from __future__ import annotations

import functools
import html
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from watchdog.lab.standin.errors import (
    AccessDenied,
    AccessError,
    OdooError,
    ServerError,
    format_traceback,
)
from watchdog.lab.standin.responses import (
    health_response,
    html_response,
    jsonrpc_response,
    log_odoo_error,
    parse_xmlrpc,
    read_jsonrpc,
    require,
    set_session_cookie,
    xmlrpc_fault,
    xmlrpc_response,
)
from watchdog.lab.standin.services import version_info
from watchdog.lab.standin.state import STATE, Standin


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


JsonRoute = Callable[[web.Request, Standin, Any, dict[str, Any]], Awaitable[web.Response]]


def json_route(route: JsonRoute) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An Odoo `type='json'` route: `route(request, state, req_id, params)` gets the request
    read as JSON-RPC (a bad one is answered as Odoo does), and an OdooError it raises is
    logged and answered in the JSON-RPC envelope."""

    @functools.wraps(route)
    async def handler(request: web.Request) -> web.Response:
        state = request.app[STATE]
        parsed = await read_jsonrpc(request)
        if isinstance(parsed, web.Response):
            return parsed
        req_id, params = parsed
        try:
            return await route(request, state, req_id, params)
        except OdooError as err:
            log_odoo_error(state, err)
            return jsonrpc_response(req_id, error=err.json_error())

    return handler


@json_route
async def webclient_version_info(
    request: web.Request, state: Standin, req_id: Any, params: dict[str, Any]
) -> web.Response:
    return jsonrpc_response(req_id, result=version_info(state.settings.version))


@json_route
async def session_authenticate(
    request: web.Request, state: Standin, req_id: Any, params: dict[str, Any]
) -> web.Response:
    require("Session.authenticate", params, "db", "login", "password")
    if params["db"] != state.settings.db and not state.faults.db_down:
        raise AccessError("Database not found.")
    uid = state.backend.authenticate(
        params["db"], params["login"], params["password"], request.remote or ""
    )
    resp = jsonrpc_response(req_id, result=state.session_info(request))
    set_session_cookie(resp, state.new_session(uid))
    return resp


@json_route
async def session_get_info(
    request: web.Request, state: Standin, req_id: Any, params: dict[str, Any]
) -> web.Response:
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


@json_route
async def jsonrpc_endpoint(
    request: web.Request, state: Standin, req_id: Any, params: dict[str, Any]
) -> web.Response:
    require("RPC.jsonrpc", params, "service", "method", "args")
    args = params["args"]
    if not isinstance(args, list):
        raise ServerError("builtins.TypeError", "args must be a list")
    result = state.backend.dispatch(
        str(params["service"]), str(params["method"]), args, request.remote or ""
    )
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
