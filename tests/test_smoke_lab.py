"""Helpers for the smoke checks' tests (in-process stand-ins on real loopback ports), and the
version probe and `rpc` check on each Odoo version 16-19."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from watchdog import odoo
from watchdog.config import SiteConfig
from watchdog.lab.standin import StandinSettings, create_app
from watchdog.lab.standin.state import STATE, Standin
from watchdog.smoke_rpc import FAILED_LOGINS, probe_version

pytestmark = pytest.mark.lab

SMOKE_LOGIN = "smoke"
SMOKE_PASSWORD = "s3cret-Pa55word"  # a test user's
SMOKE_KEY = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Lab:
    url: str
    state: Standin

    def partners(self) -> int:
        return self.state.backend.partners.count(active_test=False)

    def uid(self, login: str = SMOKE_LOGIN) -> int:
        user = self.state.users.by_login(login)
        assert user is not None
        return user.uid


@asynccontextmanager
async def standin(version: str = "17.0", **settings: Any) -> AsyncIterator[Lab]:
    """A stand-in in this process on a free loopback port; password checks cost nothing
    unless `password_cost` says otherwise. The smoke user has a password and an API key."""
    settings.setdefault("password_cost", 0.0)
    settings.setdefault("users", [f"{SMOKE_LOGIN}:{SMOKE_PASSWORD}:{SMOKE_KEY}"])
    app = create_app(StandinSettings(version=version, **settings))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield Lab(str(server.make_url("")).rstrip("/"), app[STATE])
    finally:
        await server.close()


@pytest.fixture(autouse=True)
def forget_failed_logins() -> None:
    FAILED_LOGINS.clear()


def site_config(blue: str, green: str, smoke: list[str], **settings: Any) -> SiteConfig:
    return SiteConfig.model_validate({
        "router": {"kind": "haproxy", "socket": "/nonexistent", "backend": "odoo"},
        "colors": {"blue": {"server": "b", "url": blue}, "green": {"server": "g", "url": green}},
        "rollout": {"smoke": smoke},
        "smoke_settings": settings,
    })


def credentials_file(tmp_path: Path, **values: str) -> Path:
    path = tmp_path / "smoke.json"
    path.write_text(json.dumps(values))
    return path


def new_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())


@pytest.mark.parametrize(("version", "series", "via"), [
    ("16.0", "16.0", "XML-RPC"), ("17.0", "17.0", "XML-RPC"), ("18.0", "18.0", "XML-RPC"),
    ("19.0", "19.0", "/web/version")])
async def test_the_version_comes_from_web_version_on_19_and_xmlrpc_before(
        version: str, series: str, via: str) -> None:
    async with standin(version) as lab, new_session() as session:
        found = await probe_version(session, lab.url)
    assert (found.series, found.via, found.json2) == (series, via, version == "19.0")


async def test_rpc_on_19_asks_web_version_and_logs_no_deprecation_warning(
        tmp_path: Path) -> None:
    log = tmp_path / "odoo.log"
    async with standin("19.0", log_file=log) as lab, new_session() as session:
        ok, detail = await odoo.check_rpc(session, lab.url)
    assert ok, detail
    assert detail.startswith("/web/version 19.0")
    assert "deprecat" not in log.read_text().lower()


async def test_rpc_before_19_is_xmlrpc_version() -> None:
    async with standin("18.0") as lab, new_session() as session:
        ok, detail = await odoo.check_rpc(session, lab.url)
    assert ok, detail
    assert detail.startswith("XML-RPC version 18.0")
