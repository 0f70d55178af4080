"""Odoo 19's JSON-2 API (`POST /json/2/<model>/<method>`) and its version probe (`GET
/web/version`, `/json/version`), as `addons/rpc/controllers/` and `odoo/addons/base/models/
ir_http.py` (`_auth_method_bearer`) answer them.

A request: `Authorization: bearer <api key>` (the key's user runs the call; no session is
saved), `X-Odoo-Database: <db>` (optional on a one-database server), `Content-Type:
application/json`, and a JSON object body: `ids` (record methods), `context`, and the method's
own arguments by name (`create`: `vals_list`; `read`: `fields`, `load`; `search`: `domain`,
`offset`, `limit`, `order`; `search_read`: `domain`, `fields`, `offset`, `limit`, `order`,
`load`; `search_count`: `domain`, `limit`; `write`: `vals`; `unlink`: nothing). A recordset
result is answered as its ids: `create` gives `[id, ...]`, `search` `[id, ...]`.

Answers: 200 and the JSON result; errors with their HTTP status and a JSON body `{"name",
"message", "arguments", "context", "debug"}` (`http.serialize_exception`):

- 401 `werkzeug.exceptions.Unauthorized`: no bearer token ("User not authenticated, use the
  \"Authorization\" header") or an unknown or expired key ("Invalid apikey"); with
  `WWW-Authenticate: Bearer`;
- 403 `odoo.exceptions.AccessDenied`: a session cookie but no bearer token ("Missing
  \"Authorization\" or Sec-headers for interactive usage"); `odoo.exceptions.AccessError`:
  a private method;
- 404 `werkzeug.exceptions.NotFound`: an unknown model ("the model 'x' does not exist") or
  method ("The method 'res.partner.x' does not exist");
- 405 `werkzeug.exceptions.MethodNotAllowed`: not a POST;
- 400 `werkzeug.exceptions.BadRequest`: a body that is not JSON, or not an object;
- 422 `werkzeug.exceptions.UnprocessableEntity`: arguments that do not bind to the method
  (Python's `inspect.Signature.bind` texts: "missing a required argument: 'vals_list'", "got an
  unexpected keyword argument 'x'"), `ids` given to a model method; `odoo.exceptions.UserError`
  and `ValidationError` (e.g. a partner without a name);
- 500 any other exception (e.g. the `rpc_read_error` fault's psycopg2 UndefinedColumn), logged
  at ERROR with its traceback.

A body that is not `application/json` gets werkzeug's HTML 400 page, and an `X-Odoo-Database`
naming a database the stand-in does not serve its HTML 404, as Odoo falls back to no database.
On 16-18 none of these routes exist (404).
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from aiohttp import web

from watchdog.lab.standin.errors import (
    AccessDenied,
    AccessError,
    MissingError,
    OdooError,
    ValidationError,
    format_traceback,
)
from watchdog.lab.standin.log import CURRENT_DB
from watchdog.lab.standin.responses import error_page, log_odoo_error
from watchdog.lab.standin.services import read_failure, version_info
from watchdog.lab.standin.state import STATE, Standin

#: method -> (its parameters after self, how many are required, is an @api.model method)
SIGNATURES: dict[str, tuple[tuple[str, ...], int, bool]] = {
    "create": (("vals_list",), 1, True),
    "read": (("fields", "load"), 0, False),
    "search": (("domain", "offset", "limit", "order"), 1, True),
    "search_read": (("domain", "fields", "offset", "limit", "order", "load"), 0, True),
    "search_count": (("domain", "limit"), 1, True),
    "write": (("vals",), 1, False),
    "unlink": ((), 0, False),
}
MODELS = {"res.partner"}
UNAUTHENTICATED = 'User not authenticated, use the "Authorization" header'
INVALID_KEY = "Invalid apikey"
INTERACTIVE = 'Missing "Authorization" or Sec-headers for interactive usage'


def http_status(err: OdooError) -> int:
    """`exceptions.UserError.http_status` and its subclasses' (Odoo 19)."""
    if isinstance(err, AccessDenied | AccessError):
        return 403
    if isinstance(err, MissingError):
        return 404
    if err.fault_code == 1:  # not a UserError: an internal error
        return 500
    return 422


class HttpError(Exception):
    """A werkzeug HTTPException raised in the route: its code and description."""

    names: ClassVar[dict[int, str]] = {
        400: "BadRequest", 401: "Unauthorized", 404: "NotFound", 405: "MethodNotAllowed",
        422: "UnprocessableEntity",
    }

    def __init__(self, code: int, description: str, headers: dict[str, str] | None = None):
        super().__init__(description)
        self.code = code
        self.description = description
        self.headers = headers or {}


def json_response(payload: Any, status: int = 200,
                  headers: dict[str, str] | None = None) -> web.Response:
    """`request.make_json_response`: JSON, `application/json; charset=utf-8`."""
    return web.Response(
        status=status,
        body=json.dumps(payload, ensure_ascii=False).encode(),
        headers={"Content-Type": "application/json; charset=utf-8", **(headers or {})},
    )


def http_error_body(err: HttpError) -> dict[str, Any]:
    name = f"werkzeug.exceptions.{HttpError.names.get(err.code, 'HTTPException')}"
    return {
        "name": name,
        "message": err.description,
        "arguments": [err.description, err.code],
        "context": {},
        "debug": format_traceback(f"{name}: {err.code} {err.description}") + "\n",
    }


def odoo_error_body(err: OdooError) -> dict[str, Any]:
    return {
        "name": err.qualname,
        "message": err.message,
        "arguments": [err.message],
        "context": {},
        "debug": err.traceback_text() + "\n",
    }


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


async def web_json_2(request: web.Request) -> web.Response:
    state = request.app[STATE]
    db = request.headers.get("X-Odoo-Database") or state.settings.db
    if db != state.settings.db or state.faults.db_down:
        # Registry(db) fails: Odoo serves the request without a database, where no
        # auth='bearer' route exists.
        CURRENT_DB.set(db)
        state.app_log("WARNING", "odoo.http", "Database or registry unusable, trying without")
        return error_page(404, major=state.settings.major)
    if request.content_type != "application/json":
        detail = (f"Request inferred type is compatible with ['http'] but {request.path!r} is "
                  "type='json2'.")
        return error_page(400, detail, major=state.settings.major)
    try:
        uid = authenticate_bearer(request, state)
        result = await call(request, state, uid)
    except HttpError as err:
        return json_response(http_error_body(err), err.code, err.headers)
    except OdooError as err:
        log_odoo_error(state, err)
        return json_response(odoo_error_body(err), http_status(err))
    return json_response(result)


def authenticate_bearer(request: web.Request, state: Standin) -> int:
    """`ir.http._auth_method_bearer`: the API key's user."""
    challenge = {"WWW-Authenticate": "Bearer"}
    token = _bearer(request)
    if token is None:
        if state.session_uid(request):
            raise AccessDenied(INTERACTIVE)
        raise HttpError(401, UNAUTHENTICATED, challenge)
    user = state.users.api_key_user(token, state.settings.major)
    if user is None:
        raise HttpError(401, INVALID_KEY, challenge)
    return user.uid


async def call(request: web.Request, state: Standin, uid: int) -> Any:
    """`web_json_2_rpc`: the model, the public method, its arguments bound by name, the call."""
    if request.method != "POST":
        raise HttpError(405, "The method is not allowed for the requested URL.")
    model, method = request.match_info["model"], request.match_info["method"]
    params: dict[str, Any] = {}
    raw = await request.read()
    if raw:
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise HttpError(400, f"could not parse the body as json: {exc}") from exc
        if not isinstance(body, dict):
            raise HttpError(400, "could not parse the body, expecting a json object")
        params = body
    if model not in MODELS:
        raise HttpError(404, f"the model {model!r} does not exist")
    if method.startswith("_"):
        raise AccessError(f"Private methods (such as '{model}.{method}') cannot be called "
                          "remotely.")
    if method not in SIGNATURES:
        raise HttpError(404, f"The method '{model}.{method}' does not exist")
    names, required, api_model = SIGNATURES[method]
    ids = params.pop("ids", [])
    context = params.pop("context", {})
    if api_model and ids:
        raise HttpError(422, f"cannot call {model}.{method} with ids")
    for key in params:
        if key not in names:
            raise HttpError(422, f"got an unexpected keyword argument {key!r}")
    for key in names[:required]:
        if key not in params:
            raise HttpError(422, f"missing a required argument: {key!r}")
    if not isinstance(ids, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in ids
    ):
        raise HttpError(422, f"ids must be a list of integers, got {ids!r}")
    kwargs = {**params, "context": context if isinstance(context, dict) else {}}
    backend = state.backend
    backend.connect(state.settings.db)
    if method == "read" and backend.read_error:
        raise read_failure(backend.log)

    def warn(message: str) -> None:
        backend.log("WARNING", "odoo.models", message)

    def bad_query(message: str) -> None:
        backend.log("ERROR", "odoo.sql_db", message)

    if method == "create":
        vals_list = kwargs.pop("vals_list")
        if isinstance(vals_list, dict):
            vals_list = [vals_list]
        if not isinstance(vals_list, list):
            raise ValidationError(f"Invalid values for create: {vals_list!r}")
        return backend.partners.call("create", [vals_list], kwargs, uid, warn, bad_query)
    args: list[Any] = [] if api_model else [ids]
    return backend.partners.call(method, args, kwargs, uid, warn, bad_query)


async def web_version(request: web.Request) -> web.Response:
    """`GET /web/version` (and `/json/version`): auth='none', no session, no login."""
    info = version_info(request.app[STATE].settings.version)
    return json_response(
        {"version_info": info["server_version_info"], "version": info["server_version"]}
    )
