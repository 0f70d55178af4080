"""The JSON API, `/metrics` and `/healthz` (docs/api.md), on aiohttp.

Bad input never gets a 500: bad JSON or a wrong field is 400 naming the field (the bodies are
the strict models of watchdog/payloads.py, their errors worded as `odoo-watchdog check` words
a config's: `{"error": "to: input should be 'blue' or 'green' (got 'red')"}`), an unknown
site 404, a command the phase does not allow 409 with the phase. Every POST needs the bearer
token when one is configured, compared in constant time; without it, 401 and nothing changes.
The token is re-read from `api.token_file` on every reload (SIGHUP): `ApiToken`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from watchdog import payloads, rollout, views
from watchdog.alerts import PayloadError
from watchdog.daemon import Daemon, NotOwner, UnknownSite
from watchdog.prepare import DatabaseBusy, HasTraffic, NoDatabase, UnknownBackup
from watchdog.secrets import SecretError, read_secret
from watchdog.store import FINAL_PHASES, HISTORY_ROLLOUTS, HISTORY_TICKS, StoreError

log = structlog.get_logger("odoo_watchdog.api")
DAEMON: web.AppKey[Daemon] = web.AppKey("daemon", Daemon)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiToken:
    """The bearer token every POST needs (`value`; None: no token configured), and the file
    it comes from. `reread()` reads `api.token_file` again, so a token can be rotated without
    a restart: the new one works at once, the old one gets 401. A file that cannot be read
    (missing, unreadable, empty) keeps the token in force: the API is never left open by a
    failed rotation. The path is the one read at start (a changed `api.token_file` in the
    config needs a restart, as every `api` key does). Its value is never logged."""

    def __init__(self, value: str | None, path: Path | None = None,
                 config_dir: Path | None = None) -> None:
        self.value = value
        self.path = path
        self.config_dir = config_dir or Path(".")

    @classmethod
    def from_file(cls, path: Path | None, config_dir: Path) -> ApiToken:
        """The token in `path` (SecretError when it cannot be read), or none without one."""
        if path is None:
            return cls(None)
        return cls(read_secret(path, config_dir, "api.token_file"), path, config_dir)

    def reread(self) -> str | None:
        """Read the file again; None when done, else the problem (the old token stays)."""
        if self.path is None:
            return None
        try:
            value = read_secret(self.path, self.config_dir, "api.token_file")
        except SecretError as exc:
            log.error("api_token_kept", error=str(exc))
            return f"{exc}; the previous API token stays in force"
        changed, self.value = value != self.value, value
        log.info("api_token_reread", changed=changed)
        return None


TOKEN: web.AppKey[ApiToken] = web.AppKey("token", ApiToken)
SESSION: web.AppKey[dict[str, aiohttp.ClientSession]] = web.AppKey("session", dict)
# Set on a request one daemon passes on to another: never passed on a second time.
FORWARDED = "X-Odoo-Watchdog-Forwarded"
OWNER = "X-Odoo-Watchdog-Owner"  # on an answer: the daemon that owns the site
PASS_ON_TIMEOUT = 30.0


class BadRequest(Exception):
    pass


def error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app[TOKEN].value
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
    except NotOwner as exc:  # owned elsewhere: the owner answers (docs/api.md "Several daemons")
        return await pass_on(request, exc)
    except rollout.Conflict as exc:
        return error(409, str(exc), phase=exc.phase.value)
    except (DatabaseBusy, HasTraffic) as exc:
        return error(409, str(exc))
    except NoDatabase as exc:
        return error(400, str(exc))
    except UnknownBackup as exc:
        return error(404, f"no backup {exc.args[0]!r} of this site (odoo-watchdog db list)")
    except StoreError as exc:  # a full disk is no bug: 503, naming the store and its error
        done = "; no traffic was changed" if request.method == "POST" else ""
        return error(503, f"{exc}{done}")
    except Exception:
        log.exception("api_error", path=request.path)
        return error(500, "internal error; see the daemon's log")


async def _session(app: web.Application) -> aiohttp.ClientSession:
    sessions = app[SESSION]
    if "default" not in sessions:
        sessions["default"] = aiohttp.ClientSession()
    return sessions["default"]


async def pass_on(request: web.Request, exc: NotOwner) -> web.StreamResponse:
    """The request, as it came (body, token, X-Actor), to the daemon that owns the site; its
    answer goes back unchanged, with the owner named in X-Odoo-Watchdog-Owner. 503 when no
    daemon owns the site at the moment or its owner cannot be reached; a request already
    passed on once is answered here (two daemons that disagree must not bounce it)."""
    daemon = request.app[DAEMON]
    owner = exc.owner
    if owner is None:
        return error(503, f"no daemon owns site {exc.site} at the moment (its lease expired "
                     "and another daemon takes it within a lease); retry in a few seconds")
    if request.headers.get(FORWARDED):
        return error(503, f"site {exc.site} is not owned by {daemon.ownership.instance} "
                     f"either (passed on by {request.headers[FORWARDED]}); its lease names "
                     f"{owner['instance']}; retry in a few seconds", owner=owner)
    headers = {FORWARDED: daemon.ownership.instance}
    for name in ("Authorization", "X-Actor", "Content-Type"):
        if name in request.headers:
            headers[name] = request.headers[name]
    body = await read_body(request)  # aiohttp keeps it: the handler may have read it
    url = owner["api"].rstrip("/") + request.rel_url.path_qs
    session = await _session(request.app)
    try:
        async with session.request(request.method, url, data=body, headers=headers,
                                   allow_redirects=False,
                                   timeout=aiohttp.ClientTimeout(total=PASS_ON_TIMEOUT)) as r:
            payload = await r.read()
            return web.Response(body=payload, status=r.status,
                                content_type=r.content_type or "application/json",
                                headers={OWNER: owner["instance"]})
    except (aiohttp.ClientError, TimeoutError, OSError) as err:
        return error(503, f"site {exc.site} is owned by {owner['instance']}, which cannot "
                     f"be reached at {owner['api']}: {err or type(err).__name__}", owner=owner)


async def read_body(request: web.Request) -> bytes:
    """The raw body; one that cannot be read (a broken gzip encoding) is the client's fault."""
    try:
        return await request.read()
    except web.HTTPException:
        raise  # 413 for a body over client_max_size
    except Exception as exc:
        raise BadRequest(f"cannot read the body: {type(exc).__name__}") from None


_EMPTY = object()
M = TypeVar("M", bound=BaseModel)


async def read_json(request: web.Request, empty: Any = _EMPTY) -> Any:
    """The decoded JSON body; `empty` stands for a body of nothing but whitespace if given."""
    raw = await read_body(request)
    if empty is not _EMPTY and not raw.strip():
        return empty
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("body is not valid JSON: nested too deeply") from None


async def command_body(request: web.Request, model: type[M]) -> M:
    """A command's body (an empty one is `{}`) as `model`; 400 naming the field if it is not."""
    try:
        return payloads.validate(model, await read_json(request, empty={}))
    except payloads.Invalid as exc:
        raise BadRequest(str(exc)) from None


def actor(request: web.Request) -> str:
    """Who asked, for the audit log: printable ASCII from X-Actor, at most 64 characters."""
    given = request.headers.get("X-Actor", "")
    clean = "".join(ch for ch in given if " " <= ch <= "~").strip()
    return clean[:64] if clean else "api"


async def healthz(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    if not daemon.healthy():
        return error(503, "scheduler not running")
    store = daemon.store.view()
    if not store["ok"]:  # still 200: a restart would not free a disk (docs/api.md)
        return web.json_response({"status": "degraded", "store": store})
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    return web.Response(body=generate_latest(daemon.metrics.registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


async def list_sites(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON]
    return web.json_response({"sites": await daemon.sites_view(), "config": daemon.config_view(),
                              "daemons": daemon.daemons_view()["daemons"]})


async def list_daemons(request: web.Request) -> web.Response:
    return web.json_response(request.app[DAEMON].daemons_view())


async def alertmanager(request: web.Request) -> web.Response:
    """Alertmanager's webhook. 4xx for anything wrong: Alertmanager retries only 5xx, so a
    bad payload is refused once instead of looping."""
    daemon = request.app[DAEMON]
    payload = await read_json(request)
    try:
        receipt = await daemon.receive_alerts(payload)
    except PayloadError as exc:
        daemon.metrics.alerts_received_total.labels("invalid").inc()
        raise BadRequest(str(exc)) from None
    passed = {}
    if daemon.ownership.shared and not request.headers.get(FORWARDED):
        passed = await _pass_alerts(request, payload)
    return web.json_response({"status": "ok", **receipt.as_dict(),
                              **({"passed_on": passed} if passed else {})})


async def _pass_alerts(request: web.Request, payload: Any) -> dict[str, int | str]:
    """The same webhook to each other daemon that owns a site named in it (each acts on its
    own sites only): Alertmanager needs to know one daemon. {instance: status or error}."""
    daemon = request.app[DAEMON]
    alerts = payload.get("alerts") if isinstance(payload, dict) else None
    names = {str(a["labels"]["site"]) for a in alerts or ()
             if isinstance(a, dict) and isinstance(a.get("labels"), dict)
             and "site" in a["labels"]}
    out: dict[str, int | str] = {}
    session = await _session(request.app)
    headers = {FORWARDED: daemon.ownership.instance}
    if "Authorization" in request.headers:
        headers["Authorization"] = request.headers["Authorization"]
    for api, owner in daemon.owners_of(names).items():
        try:
            async with session.post(api + "/api/v1/alertmanager", json=payload, headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=10)) as r:
                out[owner["instance"]] = r.status
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            out[owner["instance"]] = f"cannot reach {api}: {err or type(err).__name__}"
            log.warning("alerts_not_passed_on", owner=owner["instance"], error=str(err))
    return out


async def get_site(request: web.Request) -> web.StreamResponse:
    daemon = request.app[DAEMON]
    name = request.match_info["site"]
    daemon.require_site(name)
    if daemon.ownership.shared and not daemon.owns(name) and not request.headers.get(FORWARDED):
        owner = daemon.ownership.owner(name)
        if owner is not None:  # its owner shows rules and the router; without one, the store
            return await pass_on(request, NotOwner(name, owner))
    return web.json_response(await daemon.site_view(name, events=50))


async def _command(request: web.Request, cmd: rollout.Command, status: int = 200) -> web.Response:
    daemon = request.app[DAEMON]
    name = request.match_info["site"]
    try:
        await daemon.command(name, cmd)
    except rollout.BadCommand as exc:
        raise BadRequest(str(exc)) from None
    return web.json_response(await daemon.site_view(name), status=status)


async def start_rollout(request: web.Request) -> web.Response:
    data = await command_body(request, payloads.StartBody)
    request.app[DAEMON].require_site(request.match_info["site"])  # 404 before anything else
    cmd = rollout.Start(data.to, data.version, data.chosen_strategy, actor(request),
                        id=uuid.uuid4().hex[:12])
    return await _command(request, cmd, status=201)


async def promote(request: web.Request) -> web.Response:
    data = await command_body(request, payloads.PromoteBody)
    return await _command(request, rollout.Promote(data.full, actor(request)))


async def abort(request: web.Request) -> web.Response:
    data = await command_body(request, payloads.AbortBody)
    return await _command(request, rollout.Abort(data.reason, actor(request)))


async def switch(request: web.Request) -> web.Response:
    data = await command_body(request, payloads.SwitchBody)
    request.app[DAEMON].require_site(request.match_info["site"])
    return await _command(request, rollout.Switch(data.to, actor(request)))


async def start_backup(request: web.Request) -> web.Response:
    data = await command_body(request, payloads.BackupBody)
    started = await request.app[DAEMON].backup(request.match_info["site"], data.color,
                                               actor(request))
    return web.json_response(started, status=202)


async def list_backups(request: web.Request) -> web.Response:
    found = await request.app[DAEMON].backups(request.match_info["site"])
    return web.json_response({"backups": found})


async def restore_backup(request: web.Request) -> web.Response:
    data = await command_body(request, payloads.RestoreBody)
    started = await request.app[DAEMON].restore(
        request.match_info["site"], request.match_info["backup"], data.to, force=data.force,
        actor=actor(request))
    return web.json_response(started, status=202)


async def get_rollout(request: web.Request) -> web.Response:
    """A rollout with its history (each tick's weights and rules) and its audit events: the
    one running now, or one the store keeps (docs/ui.md)."""
    daemon = request.app[DAEMON]
    rid = request.match_info["id"]
    stored = await asyncio.to_thread(daemon.store.rollout, rid)
    running = [(name, r.state) for name, r in daemon.sites.items()
               if r.state.rollout is not None and r.state.rollout.id == rid]
    if running:
        name, state = running[0]
        info = views.rollout_view(state, daemon.clock()) or {}
    elif stored is not None:
        name, info = stored["site"], stored["info"]
    else:
        return error(404, f"no rollout {rid!r} (the store keeps the last "
                          f"{HISTORY_ROLLOUTS} of each site)")
    events = await asyncio.to_thread(daemon.store.rollout_events, rid)
    phase = info.get("phase")
    return web.json_response({
        **info, "site": name, "outcome": phase if phase in FINAL_PHASES else None,
        "ticks": stored["history"] if stored else [],
        "ticks_recorded": stored["ticks"] if stored else 0, "ticks_kept": HISTORY_TICKS,
        "events": events})


# The page and its assets (watchdog/ui/, package data): files of this package only, and a
# Content-Security-Policy that lets the browser load nothing from another host.
UI_DIR = Path(__file__).parent / "ui"
UI_ASSETS = {"ui.css": "text/css", "ui.js": "text/javascript"}
UI_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self'; connect-src 'self'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}


def _ui_file(name: str, content_type: str) -> web.Response:
    body = (UI_DIR / name).read_bytes()
    return web.Response(body=body, content_type=content_type, charset="utf-8",
                        headers=UI_HEADERS)


async def ui_index(request: web.Request) -> web.Response:
    return _ui_file("index.html", "text/html")


async def ui_rollout(request: web.Request) -> web.Response:
    return _ui_file("rollout.html", "text/html")


async def ui_asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in UI_ASSETS:
        return error(404, f"no file {name!r}")
    return _ui_file(name, UI_ASSETS[name])


def create_app(daemon: Daemon, token: ApiToken | str | None) -> web.Application:
    # auto_decompress off: a Content-Encoding body is refused as not JSON (400) instead of
    # failing inside aiohttp's parser, which drops the connection; Alertmanager never
    # compresses its webhooks.
    app = web.Application(middlewares=[guard], client_max_size=1024 * 1024,
                          handler_args={"auto_decompress": False})
    app[DAEMON] = daemon
    app[TOKEN] = token if isinstance(token, ApiToken) else ApiToken(token)
    app[SESSION] = {}

    async def close_session(app: web.Application) -> None:
        for session in app[SESSION].values():
            await session.close()

    app.on_cleanup.append(close_session)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/sites", list_sites)
    app.router.add_get("/api/v1/daemons", list_daemons)
    app.router.add_get("/api/v1/sites/{site}", get_site)
    app.router.add_post("/api/v1/sites/{site}/rollouts", start_rollout)
    app.router.add_post("/api/v1/sites/{site}/promote", promote)
    app.router.add_post("/api/v1/sites/{site}/abort", abort)
    app.router.add_post("/api/v1/sites/{site}/switch", switch)
    app.router.add_post("/api/v1/sites/{site}/backups", start_backup)
    app.router.add_get("/api/v1/sites/{site}/backups", list_backups)
    app.router.add_post("/api/v1/sites/{site}/backups/{backup}/restore", restore_backup)
    app.router.add_post("/api/v1/alertmanager", alertmanager)
    app.router.add_get("/api/v1/rollouts/{id}", get_rollout)
    app.router.add_get("/ui", ui_index)
    app.router.add_get("/ui/", ui_index)
    app.router.add_get("/ui/rollouts/{id}", ui_rollout)
    app.router.add_get("/ui/static/{name}", ui_asset)
    return app
