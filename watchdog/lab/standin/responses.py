"""The bodies the stand-in answers, as Odoo's layers shape them: werkzeug's HTML error pages,
the health JSON, Odoo's JSON-RPC envelope (and the errors of a bad request), XML-RPC method
responses and faults, HTML pages' framing headers and the session cookie.
"""

from __future__ import annotations

import html
import json
import time
import xmlrpc.client
from email.utils import formatdate
from typing import Any

from aiohttp import web

from watchdog.lab.standin.errors import OdooError, ServerError
from watchdog.lab.standin.state import Standin

SESSION_MAX_AGE = 7 * 24 * 3600
JSON_CONTENT_TYPES = ("application/json", "application/json-rpc")

# ---------------------------------------------------------------------------------------------

_ERROR_PAGES = {
    404: (
        "Not Found",
        "The requested URL was not found on the server. If you entered the URL manually please "
        "check your spelling and try again.",
    ),
    405: ("Method Not Allowed", "The method is not allowed for the requested URL."),
    413: (
        "Request Entity Too Large",
        "The data value transmitted exceeds the capacity limit.",
    ),
    500: (
        "Internal Server Error",
        "The server encountered an internal error and was unable to complete your request. "
        "Either the server is overloaded or there is an error in the application.",
    ),
    503: (
        "Service Unavailable",
        "The server is temporarily unable to service your request due to maintenance downtime "
        "or capacity problems. Please try again later.",
    ),
    400: (
        "Bad Request",
        "The browser (or proxy) sent a request that this server could not understand.",
    ),
}


_OLD_DOCTYPE = '<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 3.2 Final//EN">\n'


def error_page(status: int, detail: str | None = None, *, major: int = 17) -> web.Response:
    """Werkzeug's HTML error page, as Odoo's http routes answer it: werkzeug 1.0/2.0 (Odoo 16,
    17) open it with an HTML 3.2 doctype, 2.1 and later (18, 19) with `<!doctype html>`."""
    title, text = _ERROR_PAGES.get(status, (web.Response(status=status).reason, ""))
    description = "<br>".join(html.escape(line) for line in (detail or text).split("\n"))
    head = _OLD_DOCTYPE if major <= 17 else "<!doctype html>\n<html lang=en>\n"
    body = f"{head}<title>{status} {title}</title>\n<h1>{title}</h1>\n<p>{description}</p>\n"
    return web.Response(status=status, text=body, content_type="text/html")


def redirect_response(location: str, status: int = 303, *, major: int = 17) -> web.Response:
    """`werkzeug.utils.redirect`: the Location and werkzeug's little HTML page. (On 16 and 17
    the middleware makes a relative Location absolute, as werkzeug 2.0 did.)"""
    shown = html.escape(location)
    if major <= 17:
        body = (
            f"{_OLD_DOCTYPE}<title>Redirecting...</title>\n<h1>Redirecting...</h1>\n"
            "<p>You should be redirected automatically to target URL: "
            f'<a href="{shown}">{shown}</a>. If not click the link.'
        )
    else:
        body = (
            "<!doctype html>\n<html lang=en>\n<title>Redirecting...</title>\n"
            "<h1>Redirecting...</h1>\n<p>You should be redirected automatically to the target "
            f'URL: <a href="{shown}">{shown}</a>. If not, click the link.\n'
        )
    return web.Response(
        status=status, text=body, content_type="text/html", headers={"Location": location}
    )


def text_response(text: str, status: int) -> web.Response:
    """An Odoo `Response(text, status=...)`: the bare text, as text/html."""
    return web.Response(status=status, text=text, content_type="text/html")


def health_response(payload: dict[str, Any], status: int = 200) -> web.Response:
    """The health routes set their Content-Type header themselves: no charset."""
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
        headers={"Content-Type": "application/json; charset=utf-8"},
    )


def log_odoo_error(state: Standin, err: OdooError) -> None:
    """What Odoo's HTTP layer logs for an exception escaping a route."""
    if err.log_level == "ERROR":
        state.log_exception(err.traceback_text())
    elif err.log_level is not None:
        state.log.write(err.log_level, "odoo.http", err.message)


async def read_jsonrpc(
    request: web.Request, major: int = 17
) -> tuple[Any, dict[str, Any]] | web.Response:
    """(id, params) of a JSON-RPC request, or the error response Odoo gives for a bad one:
    a request that is not JSON (a GET, a form) gets werkzeug's 400 page; a body that does not
    parse, or is not an object, a bare 400 "Invalid JSON data" / "Invalid JSON-RPC data"."""
    ctype = request.content_type
    if ctype not in JSON_CONTENT_TYPES:
        return error_page(
            400,
            f"Request inferred type is compatible with ['http'] but {request.path!r} is "
            "type='json'.",
            major=major,
        )
    try:
        body = json.loads(await request.read())
    except ValueError:
        return text_response("Invalid JSON data", 400)
    if not isinstance(body, dict):
        return text_response("Invalid JSON-RPC data", 400)
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
    """werkzeug's `set_cookie(max_age=..., httponly=True)`: Expires and Max-Age, no SameSite."""
    expires = formatdate(time.time() + SESSION_MAX_AGE, usegmt=True)
    response.set_cookie(
        "session_id", sid, max_age=SESSION_MAX_AGE, expires=expires, httponly=True, path="/"
    )


def html_response(body: str, status: int = 200) -> web.Response:
    resp = web.Response(status=status, text=body, content_type="text/html")
    resp.headers["X-Frame-Options"] = "SAMEORIGIN"
    resp.headers["Content-Security-Policy"] = "frame-ancestors 'self'"
    return resp


def xmlrpc_response(result: Any) -> str:
    """A methodResponse body; marshalling errors become fault 1 like Odoo's."""
    try:
        body = xmlrpc.client.dumps((result,), methodresponse=True, allow_none=False)
    except (TypeError, OverflowError) as exc:
        err = ServerError(f"builtins.{type(exc).__name__}", str(exc))
        body = xmlrpc.client.dumps(err.fault(), methodresponse=True)
    return body


def xmlrpc_fault(error: OdooError) -> str:
    return xmlrpc.client.dumps(error.fault(), methodresponse=True)


def parse_xmlrpc(body: bytes) -> tuple[str, list[Any]]:
    try:
        params, method = xmlrpc.client.loads(body, use_datetime=True)
    except Exception as exc:
        raise ServerError(f"{type(exc).__module__}.{type(exc).__name__}", str(exc)) from exc
    if method is None:
        raise ServerError("builtins.ValueError", "not an XML-RPC methodCall")
    return method, list(params)
