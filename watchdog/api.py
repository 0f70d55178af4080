"""The JSON API, `/metrics` and `/healthz` (DESIGN.md section 7), on aiohttp.

Bad input never gets a 500: bad JSON or a wrong field is 400 naming the field, an unknown
site 404, a command the phase does not allow 409 with the phase. Every POST needs the bearer
token when one is configured, compared in constant time; without it, 401 and nothing changes.
"""

from __future__ import annotations

import hmac
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from watchdog import rollout
from watchdog.alerts import PayloadError
from watchdog.config import COLORS
from watchdog.daemon import Daemon, UnknownSite

log = structlog.get_logger("odoo_watchdog.api")
DAEMON: web.AppKey[Daemon] = web.AppKey("daemon", Daemon)
TOKEN: web.AppKey[str | None] = web.AppKey("token", str)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadRequest(Exception):
    pass


def error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app[TOKEN]
    if request.method == "POST" and token is not None:
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {token}"
        # surrogateescape: a header with bytes that are not UTF-8 is simply a wrong token.
        if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                                   expected.encode("utf-8", "surrogateescape")):
            return error(401, "missing or wrong bearer token")
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except BadRequest as exc:
        return error(400, str(exc))
    except UnknownSite as exc:
        return error(404, f"no site {exc.args[0]!r}")
    except rollout.Conflict as exc:
        return error(409, str(exc), phase=exc.phase.value)
    except Exception:
        log.exception("api_error", path=request.path)
        return error(500, "internal error; see the daemon's log")


async def read_body(request: web.Request) -> bytes:
    """The raw body; one that cannot be read (a broken gzip encoding) is the client's fault."""
    try:
        return await request.read()
    except web.HTTPException:
        raise  # 413 for a body over client_max_size
    except Exception as exc:
        raise BadRequest(f"cannot read the body: {type(exc).__name__}") from None


async def body(request: web.Request, fields: dict[str, type | tuple[type, ...]],
               required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The JSON object of a POST, checked field by field."""
    raw = await read_body(request)
    if not raw.strip():
        data: Any = {}
    else:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"body is not valid JSON: {exc}") from None
        except RecursionError:
            raise BadRequest("body is not valid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object")
    for key in data:
        if key not in fields:
            raise BadRequest(f"unknown field {key!r} (allowed: {', '.join(fields) or 'none'})")
    for key in required:
        if key not in data:
            raise BadRequest(f"missing field {key!r}")
    for key, kind in fields.items():
        if key in data and (not isinstance(data[key], kind) or (
                isinstance(data[key], bool) and kind is not bool)):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise BadRequest(f"field {key!r} must be {_kind_name(names)}")
    return data


def _kind_name(name: str) -> str:
    return {"str": "a string", "bool": "true or false"}.get(name, name)


def actor(request: web.Request) -> str:
    """Who asked, for the audit log: printable ASCII from X-Actor, at most 64 characters."""
    given = request.headers.get("X-Actor", "")
    clean = "".join(ch for ch in given if " " <= ch <= "~").strip()
    return clean[:64] if clean else "api"


def color_field(data: dict[str, Any], key: str = "to") -> str:
    value = data[key]
    if value not in COLORS:
        raise BadRequest(f"field {key!r} must be blue or green, got {value!r}")
    return str(value)


async def healthz(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    if not daemon.healthy():
        return error(503, "scheduler not running")
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    return web.Response(body=generate_latest(daemon.metrics.registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


async def list_sites(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    return web.json_response({"sites": await daemon.sites_view(), "config": daemon.config_view()})


async def alertmanager(request: web.Request) -> web.Response:
    """Alertmanager's webhook. 4xx for anything wrong: Alertmanager retries only 5xx, so a
    bad payload is refused once instead of looping."""
    raw = await read_body(request)
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRequest("body is not valid JSON") from None
    try:
        receipt = await request.app[DAEMON].receive_alerts(payload)
    except PayloadError as exc:
        request.app[DAEMON].metrics.alerts_received_total.labels("invalid").inc()
        raise BadRequest(str(exc)) from None
    return web.json_response({"status": "ok", **receipt.as_dict()})


async def get_site(request: web.Request) -> web.Response:
    return web.json_response(await request.app[DAEMON].site_view(request.match_info["site"],
                                                                 events=50))


async def _command(request: web.Request, cmd: rollout.Command, status: int = 200) -> web.Response:
    daemon = request.app[DAEMON]
    name = request.match_info["site"]
    try:
        await daemon.command(name, cmd)
    except rollout.BadCommand as exc:
        raise BadRequest(str(exc)) from None
    return web.json_response(await daemon.site_view(name), status=status)


async def start_rollout(request: web.Request) -> web.Response:
    data = await body(request, {"to": str, "version": str, "strategy": str}, required=("to",))
    strategy = data.get("strategy")
    if strategy is not None and strategy not in ("canary", "bluegreen"):
        raise BadRequest(f"field 'strategy' must be canary or bluegreen, got {strategy!r}")
    request.app[DAEMON].require_site(request.match_info["site"])  # 404 before anything else
    cmd = rollout.Start(color_field(data), data.get("version", ""), strategy, actor(request),
                        id=uuid.uuid4().hex[:12])
    return await _command(request, cmd, status=201)


async def promote(request: web.Request) -> web.Response:
    data = await body(request, {"full": bool})
    return await _command(request, rollout.Promote(bool(data.get("full", False)),
                                                   actor(request)))


async def abort(request: web.Request) -> web.Response:
    data = await body(request, {"reason": str})
    return await _command(request, rollout.Abort(data.get("reason", ""), actor(request)))


async def switch(request: web.Request) -> web.Response:
    data = await body(request, {"to": str}, required=("to",))
    request.app[DAEMON].require_site(request.match_info["site"])
    return await _command(request, rollout.Switch(color_field(data), actor(request)))


def create_app(daemon: Daemon, token: str | None) -> web.Application:
    # auto_decompress off: a Content-Encoding body is refused as not JSON (400) instead of
    # failing inside aiohttp's parser, which drops the connection; Alertmanager never
    # compresses its webhooks.
    app = web.Application(middlewares=[guard], client_max_size=1024 * 1024,
                          handler_args={"auto_decompress": False})
    app[DAEMON] = daemon
    app[TOKEN] = token
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/sites", list_sites)
    app.router.add_get("/api/v1/sites/{site}", get_site)
    app.router.add_post("/api/v1/sites/{site}/rollouts", start_rollout)
    app.router.add_post("/api/v1/sites/{site}/promote", promote)
    app.router.add_post("/api/v1/sites/{site}/abort", abort)
    app.router.add_post("/api/v1/sites/{site}/switch", switch)
    app.router.add_post("/api/v1/alertmanager", alertmanager)
    return app
