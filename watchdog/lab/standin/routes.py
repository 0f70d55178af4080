"""The Odoo routes of the stand-in: health, login and web client pages, sessions, JSON-RPC
and XML-RPC, each answering as Odoo 16-19 do (`odoo/addons/web/controllers/*.py`,
`odoo/addons/base/controllers/rpc.py`, `odoo/http.py`), per version where they differ:

- `/web/health?db_server_status=1`: 18 checks PostgreSQL (500 `{"status": "fail", ...}` when
  it is down); 16 and 17 have no such parameter, ignore it and log a WARNING that they did;
- XML-RPC faults: answered with HTTP 200 on every version; 16 and 17 log nothing, 18 and 19
  let the exception reach the HTTP layer, which logs it (ERROR and a traceback, or a WARNING
  for a UserError, AccessError or AccessDenied);
- PostgreSQL down: the http routes fall back to no database (`/web/login` sends the browser
  back to itself with a new session, `/web` is a 500), `common.version()` still answers.

The session every save-session route gets, the CSRF check of unsafe methods, the redirects'
absolute Locations and the connection handling are the middleware's (`app`).
"""

from __future__ import annotations

import functools
import html
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from watchdog.lab.standin.errors import (
    AccessDenied,
    AccessError,
    OdooError,
    ServerError,
    db_unreachable,
    format_traceback,
)
from watchdog.lab.standin.responses import (
    error_page,
    health_response,
    html_response,
    jsonrpc_response,
    log_odoo_error,
    parse_xmlrpc,
    read_jsonrpc,
    redirect_response,
    require,
    set_session_cookie,
    xmlrpc_fault,
    xmlrpc_response,
)
from watchdog.lab.standin.services import version_info
from watchdog.lab.standin.state import STATE, Standin
from watchdog.lab.standin.users import COOLDOWN_MESSAGE

#: Odoo 19's notice (addons/rpc/controllers/__init__.py); `%s` is the logger's name.
RPC_DEPRECATION_NOTICE = (
    "The /xmlrpc, /xmlrpc/2 and /jsonrpc endpoints are deprecated in Odoo 19 and scheduled "
    "for removal in Odoo 20. Please report the problem to the client making the request.\n"
    "Mute this logger: --log-handler %s:ERROR\n"
    "https://www.odoo.com/documentation/19.0/developer/reference/external_api.html"
    "#migrating-from-xml-rpc-json-rpc"
)

#: The request's session id (the middleware gives every save-session route one).
SESSION_KEY: web.RequestKey[str] = web.RequestKey("odoo_session", str)
#: Set when a route answered an Odoo error: Odoo then saves no session (no new cookie).
ERROR_KEY: web.RequestKey[bool] = web.RequestKey("odoo_error", bool)


def request_session(request: web.Request) -> str:
    assert SESSION_KEY in request, f"{request.path} is not a save-session route"
    return request[SESSION_KEY]


async def http_params(request: web.Request) -> dict[str, str]:
    """An http route's arguments: the query string and the form, without the CSRF token."""
    params = {k: v for k, v in request.query.items()}
    if request.method not in ("GET", "HEAD", "OPTIONS", "TRACE"):
        form = await request.post()
        params.update({k: str(v) for k, v in form.items()})
    params.pop("csrf_token", None)
    return params


def ignore_args(state: Standin, fname: str, params: dict[str, str], accepted: set[str]) -> None:
    """Odoo's route wrapper drops the arguments the endpoint does not take, with a WARNING."""
    ignored = set(params) - accepted
    if ignored:
        state.app_log("WARNING", "odoo.http", f"<function {fname}> called ignoring args {ignored}")


async def web_health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    params = await http_params(request)
    honours_db_check = state.settings.major >= 18
    accepted = {"db_server_status"} if honours_db_check else set()
    ignore_args(state, "odoo.addons.web.controllers.home.health", params, accepted)
    payload: dict[str, Any] = {"status": "pass"}
    # 18 tests the raw parameter for truth: any non-empty value asks for the db check.
    if honours_db_check and params.get("db_server_status"):
        if state.faults.db_down:
            state.app_log("INFO", "odoo.sql_db", "Connection to the database failed")
            return health_response({"status": "fail", "db_server_status": False}, 500)
        payload["db_server_status"] = True
    return health_response(payload)


async def websocket_health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    params = await http_params(request)
    ignore_args(state, "odoo.addons.bus.controllers.websocket.health", params, set())
    return health_response({"status": "pass"})


def login_page(
    state: Standin,
    sid: str,
    *,
    login: str = "",
    error: str | None = None,
    redirect: str | None = None,
) -> str:
    alert = (
        f'\n<p class="alert alert-danger" role="alert">{html.escape(error)}</p>' if error else ""
    )
    hidden_redirect = (
        f'\n<input type="hidden" name="redirect" value="{html.escape(redirect)}"/>'
        if redirect
        else ""
    )
    csrf = state.csrf_token(sid)
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
    major = state.settings.major
    sid = request_session(request)
    params = await http_params(request)
    redirect = params.get("redirect") or None
    if state.faults.db_down:
        # The registry could not open a cursor, so the request went on without a database
        # and the session lost its own; ensure_db() gives the browser a new session on the
        # configured database and sends it back here: a 302 to this very URL, not a 500.
        resp = redirect_response(str(request.url), 302, major=major)
        set_session_cookie(resp, state.new_session())
        return resp
    if request.method == "POST":
        login = params.get("login", "")
        password = params.get("password", "")
        try:
            uid = await state.backend.authenticate(
                state.settings.db, login, password, request.remote or "", interactive=True
            )
        except AccessDenied as err:
            message = err.message if err.message == COOLDOWN_MESSAGE else "Wrong login/password"
            page = login_page(state, sid, login=login, error=message, redirect=redirect)
            return html_response(page)
        state.sessions.discard(sid)  # a login rotates the session
        user = state.users.by_uid(uid)
        if user is not None and user.totp:  # auth_totp: the second factor first
            query = urllib.parse.urlencode({"redirect": redirect} if redirect else {})
            resp = redirect_response(
                "/web/login/totp" + (f"?{query}" if query else ""), 303, major=major
            )
            set_session_cookie(resp, state.new_session(pre_uid=uid))
            return resp
        resp = redirect_response(redirect or state.settings.home, 303, major=major)
        set_session_cookie(resp, state.new_session(uid))
        return resp
    if redirect and state.session_uid(request):
        return redirect_response(redirect, 303, major=major)
    return html_response(login_page(state, sid, redirect=redirect))


async def web_client(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.faults.db_down:
        # /web is the one path Odoo lets the registry error through: a 500 and a traceback.
        log_odoo_error(state, db_unreachable())
        return error_page(500, major=state.settings.major)
    if not state.session_uid(request):
        full_path = f"{request.path}?{request.query_string}"
        query = urllib.parse.urlencode({"redirect": full_path})
        return redirect_response(f"/web/login?{query}", 303, major=state.settings.major)
    body = (
        "<!DOCTYPE html>\n<html>\n<head>\n<title>Odoo</title>\n</head>\n"
        f'<body class="o_web_client"><script>var odoo = {{"debug": "", '
        f'"version": "{html.escape(state.settings.version)}"}};</script></body>\n</html>\n'
    )
    resp = web.Response(text=body, content_type="text/html")
    resp.headers["X-Frame-Options"] = "DENY"
    return resp


async def root(request: web.Request) -> web.Response:
    settings = request.app[STATE].settings
    query = f"?{request.query_string}" if request.query_string else ""
    return redirect_response(f"{settings.home}{query}", 303, major=settings.major)


async def session_logout(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.sessions.logout(request_session(request))
    location = request.query.get("redirect") or state.settings.home
    return redirect_response(location, 303, major=state.settings.major)


JsonRoute = Callable[[web.Request, Standin, Any, dict[str, Any]], Awaitable[web.Response]]


def json_route(route: JsonRoute) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An Odoo `type='json'` route: `route(request, state, req_id, params)` gets the request
    read as JSON-RPC (a bad one is answered as Odoo does), and an OdooError it raises is
    logged and answered in the JSON-RPC envelope."""

    @functools.wraps(route)
    async def handler(request: web.Request) -> web.Response:
        state = request.app[STATE]
        parsed = await read_jsonrpc(request, state.settings.major)
        if isinstance(parsed, web.Response):
            return parsed
        req_id, params = parsed
        try:
            return await route(request, state, req_id, params)
        except OdooError as err:
            log_odoo_error(state, err)
            request[ERROR_KEY] = True
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
    uid = await state.backend.authenticate(
        params["db"], params["login"], params["password"], request.remote or "",
        interactive=True,
    )
    state.sessions.discard(request_session(request))  # a login rotates the session
    user = state.users.by_uid(uid)
    if user is not None and user.totp:
        # The session waits for the TOTP code (pre_uid), so its uid is not the user's: Odoo's
        # "workaround for the mobile apps" answers {"uid": None} instead of the session info.
        resp = jsonrpc_response(req_id, result={"uid": None})
        set_session_cookie(resp, state.new_session(pre_uid=uid))
        return resp
    resp = jsonrpc_response(req_id, result=state.session_info(request, uid))
    set_session_cookie(resp, state.new_session(uid))
    return resp


@json_route
async def session_get_info(
    request: web.Request, state: Standin, req_id: Any, params: dict[str, Any]
) -> web.Response:
    uid = state.session_uid(request)
    if not uid:
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
    return jsonrpc_response(req_id, result=state.session_info(request, uid))


def rpc_deprecation(state: Standin, logger: str) -> None:
    """19's `rpc` addon logs this WARNING on every /xmlrpc, /xmlrpc/2 and /jsonrpc call
    (addons/rpc/controllers/__init__.py, RPC_DEPRECATION_NOTICE % the logger's name)."""
    if state.settings.major >= 19:
        state.app_log("WARNING", logger, RPC_DEPRECATION_NOTICE % logger)


@json_route
async def jsonrpc_endpoint(
    request: web.Request, state: Standin, req_id: Any, params: dict[str, Any]
) -> web.Response:
    rpc_deprecation(state, "odoo.addons.rpc.controllers.jsonrpc")
    require("RPC.jsonrpc", params, "service", "method", "args")
    args = params["args"]
    if not isinstance(args, list):
        raise ServerError("builtins.TypeError", "args must be a list")
    result = await state.backend.dispatch(
        str(params["service"]), str(params["method"]), args, request.remote or ""
    )
    return jsonrpc_response(req_id, result=result)


async def xmlrpc_endpoint(request: web.Request) -> web.Response:
    """/xmlrpc/2/<service>: faults are answered with HTTP 200. 16 and 17 log none of them;
    18 and 19 re-raise them to the HTTP layer, which logs each one as it logs an exception
    escaping any route (`Exception during request handling.` and a traceback at ERROR)."""
    state = request.app[STATE]
    rpc_deprecation(state, "odoo.addons.rpc.controllers.xmlrpc")
    try:
        method, params = parse_xmlrpc(await request.read())
        result = await state.backend.dispatch(
            request.match_info["service"], method, params, request.remote or ""
        )
        body = xmlrpc_response(result)
    except OdooError as err:
        if state.settings.major >= 18:
            log_odoo_error(state, err)
        body = xmlrpc_fault(err)
    return web.Response(text=body, content_type="text/xml")
