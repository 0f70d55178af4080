"""The smoke checks of a preflight: run each check the site lists, time it, report it.

Checks (docs/rollouts.md, "Smoke checks"): `health`, `login`, `rpc` (`watchdog.odoo`),
`workflow` (`smoke_workflow`), `latency` and `http` (`smoke_http`), `sessions`
(`smoke_sessions`). Each gives a `CheckResult` (ok, failed, warn or skipped, its duration, what
it found); the preflight passes when none failed. `warn` and `skipped` pass: `sessions: warn`
that finds sessions are not shared, `sessions` with only an API key.

The smoke user comes from `smoke_settings.credentials_file`: JSON `{"db", "login", "password"}`
or `{"db", "login", "api_key"}` (both secrets may be given: the password for the logins, the key
for JSON-2 on 19). It is read at daemon start and on reload (`SmokeCredentials`), and no
password or key ever reaches a message: every detail is passed through `redact`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiohttp

from watchdog import odoo
from watchdog.config import SiteConfig, SmokeSettings
from watchdog.secrets import SecretError, read_secret
from watchdog.smoke_http import run_http, run_latency
from watchdog.smoke_rpc import Credentials, OdooVersion, RpcError, probe_version, redact
from watchdog.smoke_sessions import run_sessions
from watchdog.smoke_workflow import run_workflow

__all__ = [
    "CheckResult",
    "Credentials",
    "SmokeCredentials",
    "SmokeReport",
    "load_credentials",
    "run_smoke",
]

Status = Literal["ok", "failed", "warn", "skipped"]
_KEYS = {"db", "login", "password", "api_key"}


# ---------------------------------------------------------------------- credentials


def load_credentials(path: Path, config_dir: Path, key: str) -> Credentials:
    """The credentials file (SecretError names the key and the file, never the content)."""
    text = read_secret(path, config_dir, key)
    full = path if path.is_absolute() else config_dir / path
    try:
        data = json.loads(text)
    except ValueError:
        raise SecretError(f"{key} {full}: not JSON; give {{\"db\": ..., \"login\": ..., "
                          "\"password\": ...}} or {\"db\": ..., \"login\": ..., "
                          "\"api_key\": ...}") from None
    if not isinstance(data, dict):
        raise SecretError(f"{key} {full}: give a JSON object with db, login and password "
                          "or api_key")
    unknown = sorted(str(k) for k in data if k not in _KEYS)
    if unknown:
        raise SecretError(f"{key} {full}: unknown key {unknown[0][:40]!r} (keys: db, login, "
                          "password, api_key)")
    values: dict[str, str] = {}
    for name in _KEYS:
        value = data.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            raise SecretError(f"{key} {full}: {name} must be a non-empty string")
        values[name] = value
    missing = [n for n in ("db", "login") if n not in values]
    if missing:
        raise SecretError(f"{key} {full}: {missing[0]} is missing")
    if "password" not in values and "api_key" not in values:
        raise SecretError(f"{key} {full}: give password or api_key")
    return Credentials(values["db"], values["login"], values.get("password"),
                       values.get("api_key"))


def site_credentials(name: str, site: SiteConfig, config_dir: Path) -> Credentials | None:
    file = site.smoke_settings.credentials_file
    if file is None:
        return None
    return load_credentials(file, config_dir, f"sites.{name}.smoke_settings.credentials_file")


class SmokeCredentials:
    """Each site's smoke user, read at start and on reload (as the daemon's other secrets)."""

    def __init__(self) -> None:
        self._sites: dict[str, Credentials] = {}

    def configure(self, name: str, site: SiteConfig, config_dir: Path) -> None:
        """Read the site's credentials_file; SecretError keeps what was there before."""
        creds = site_credentials(name, site, config_dir)
        if creds is None:
            self._sites.pop(name, None)
        else:
            self._sites[name] = creds

    def get(self, name: str) -> Credentials | None:
        return self._sites.get(name)


# ---------------------------------------------------------------------- results


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    seconds: float
    detail: str

    def shown(self) -> str:
        took = (f"{self.seconds * 1000:.0f} ms" if self.seconds < 1
                else f"{self.seconds:.2f} s")
        word = {"ok": "ok", "failed": "FAILED", "warn": "WARNING", "skipped": "skipped"}
        return f"{self.name} {word[self.status]} {took} ({self.detail})"

    def view(self) -> dict[str, Any]:
        return {"check": self.name, "status": self.status, "seconds": round(self.seconds, 3),
                "detail": self.detail}


@dataclass(frozen=True)
class SmokeReport:
    results: tuple[CheckResult, ...]
    sessions_shared: bool | None = None  # for odoo_watchdog_sessions_shared{site}

    @property
    def ok(self) -> bool:
        return all(r.status != "failed" for r in self.results)

    def detail(self) -> str:
        return "; ".join(r.shown() for r in self.results) or "no checks"

    def view(self) -> list[dict[str, Any]]:
        return [r.view() for r in self.results]


# ---------------------------------------------------------------------- running them


@dataclass
class _Run:
    session: aiohttp.ClientSession
    site: SiteConfig
    live: str
    candidate: str
    rollout_id: str
    creds: Credentials | None
    versions: dict[str, OdooVersion | RpcError] = dataclasses.field(default_factory=dict)
    sessions_shared: bool | None = None

    def url(self, color: str) -> str:
        return self.site.colors[color].url

    @property
    def settings(self) -> SmokeSettings:
        return self.site.smoke_settings

    def creds_for(self, color: str) -> Credentials:
        """The smoke user on a colour: its database is the colour's own when the site names
        one per colour (database.names), else the file's."""
        assert self.creds is not None
        db = self.site.database
        names: dict[str, str] = {str(k): v for k, v in db.names.items()} if db else {}
        if names.get(color):
            return dataclasses.replace(self.creds, db=names[color])
        return self.creds

    async def version(self, color: str) -> OdooVersion:
        if color not in self.versions:
            try:
                self.versions[color] = await probe_version(self.session, self.url(color))
            except RpcError as exc:
                self.versions[color] = exc
        found = self.versions[color]
        if isinstance(found, RpcError):
            raise found
        return found


Outcome = tuple[Status, str]


async def _health(run: _Run) -> Outcome:
    ok, detail = await odoo.check_health(run.session, run.url(run.candidate))
    return ("ok" if ok else "failed"), detail


async def _login(run: _Run) -> Outcome:
    ok, detail = await odoo.check_login(run.session, run.url(run.candidate))
    return ("ok" if ok else "failed"), detail


async def _rpc(run: _Run) -> Outcome:
    ok, detail = await odoo.check_rpc(run.session, run.url(run.candidate))
    return ("ok" if ok else "failed"), detail


async def _workflow(run: _Run) -> Outcome:
    if run.creds is None:
        return "failed", "no credentials (smoke_settings.credentials_file)"
    try:
        version = await run.version(run.candidate)
    except RpcError as exc:
        return "failed", f"the candidate's version: {exc}"
    ok, detail = await run_workflow(run.session, run.url(run.candidate),
                                    run.creds_for(run.candidate), version, run.rollout_id)
    return ("ok" if ok else "failed"), detail


async def _latency(run: _Run) -> Outcome:
    ok, detail = await run_latency(run.session, run.url(run.candidate), run.settings.latency)
    return ("ok" if ok else "failed"), detail


async def _sessions(run: _Run) -> Outcome:
    if run.creds is None:
        return "failed", "no credentials (smoke_settings.credentials_file)"
    versions: list[OdooVersion | None] = []
    for color in (run.live, run.candidate):
        try:
            versions.append(await run.version(color))
        except RpcError:
            versions.append(None)
    result = await run_sessions(
        run.session, run.settings.sessions, run.url(run.live), run.url(run.candidate),
        run.creds_for(run.live), run.creds_for(run.candidate).db, versions[0], versions[1],
        run.live, run.candidate)
    run.sessions_shared = result.shared
    status: Status = result.status  # type: ignore[assignment]
    return status, result.detail


CHECKS: dict[str, Callable[[_Run], Awaitable[Outcome]]] = {
    "health": _health, "login": _login, "rpc": _rpc, "workflow": _workflow,
    "latency": _latency, "sessions": _sessions,
}


async def _timed(name: str, run: _Run, check: Callable[[], Awaitable[Outcome]],
                 secrets: tuple[str, ...]) -> CheckResult:
    start = time.monotonic()
    try:
        status, detail = await check()
    except Exception as exc:  # a bug in a check fails that check, with no secret shown
        status, detail = "failed", f"{type(exc).__name__}: {exc}"
    return CheckResult(name, status, time.monotonic() - start, redact(detail, secrets))


async def run_smoke(site: SiteConfig, live: str, candidate: str, rollout_id: str,
                    credentials: Credentials | None = None,
                    checks: list[str] | None = None) -> SmokeReport:
    """Every check of `checks` (default: the site's rollout.smoke) on the candidate, in order;
    each `http` entry runs every named check of smoke_settings.http, each under its name."""
    wanted = list(site.rollout.smoke if checks is None else checks)
    secrets = credentials.secrets if credentials is not None else ()
    results: list[CheckResult] = []
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        run = _Run(session, site, live, candidate, rollout_id, credentials)
        for name in wanted:
            if name == "http":
                for spec in site.smoke_settings.http:
                    async def one(spec: Any = spec) -> Outcome:
                        ok, detail = await run_http(session, run.url(candidate), spec)
                        return ("ok" if ok else "failed"), detail
                    results.append(await _timed(spec.name, run, one, secrets))
                continue
            check = CHECKS[name]

            async def listed(check: Callable[[_Run], Awaitable[Outcome]] = check) -> Outcome:
                return await check(run)
            results.append(await _timed(name, run, listed, secrets))
    return SmokeReport(tuple(results), run.sessions_shared)
