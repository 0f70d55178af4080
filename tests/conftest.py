"""Fixtures that start the lab's real programs on loopback and stop them by pid."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from watchdog.lab.haproxy import HaproxyLab, colour_servers
from watchdog.lab.postgres import PostgresLab
from watchdog.lab.procs import free_port
from watchdog.lab.prometheus import PrometheusLab, ScrapeJob
from watchdog.lab.standin import StandinProcess, clear_faults

if TYPE_CHECKING:
    from watchdog.lab.stack import LabStack
    from watchdog.steps.pg import Server


@dataclass
class Exporter:
    """A prometheus_client HTTP server in this process whose gauge the test sets."""

    port: int
    registry: CollectorRegistry
    gauge: Gauge

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture(scope="session")
def exporter() -> Iterator[Exporter]:
    registry = CollectorRegistry()
    gauge = Gauge("lab_error_ratio", "Share of failed requests, set by the test",
                  ["site", "color"], registry=registry)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield Exporter(port, registry, gauge)
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture(scope="session")
def prometheus(
    tmp_path_factory: pytest.TempPathFactory, exporter: Exporter
) -> Iterator[PrometheusLab]:
    """Prometheus 2.42 scraping the test exporter every second."""
    lab = PrometheusLab(
        tmp_path_factory.mktemp("prometheus"),
        scrape_interval="1s",
        jobs=[ScrapeJob("exporter", [exporter.target])],
    )
    lab.start()
    try:
        lab.wait_scraped("exporter")
        yield lab
    finally:
        lab.stop()


@pytest.fixture
def lab_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(scope="session")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandinProcess]:
    """One Odoo stand-in process (green, 17.0) for the session; faults cleared per test."""
    proc = StandinProcess("green", tmp_path_factory.mktemp("standin"), version="17.0")
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def green(standin: StandinProcess) -> Iterator[StandinProcess]:
    clear_faults(standin.url)
    yield standin
    clear_faults(standin.url)


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresLab]:
    """One PostgreSQL 15 cluster for the session; each test makes databases of its own names
    (`pg_names` gives fresh ones) and `pg_server` the steps' view of the server."""
    pg = PostgresLab(tmp_path_factory.mktemp("postgres"))
    pg.start()
    yield pg
    pg.stop()


_PG_NAMES = iter(range(1, 1_000_000))


@pytest.fixture(scope="module")
def odoo_docker() -> Iterator[Any]:
    """A docker SDK client of the lab's dockerd, with the lab's Odoo image tags imported
    (watchdog/lab/odoo_image.py). Tests using it skip themselves when docker is missing."""
    from watchdog.lab.docker import client
    from watchdog.lab.odoo_image import build_images

    cli = client()
    build_images(cli)
    yield cli
    cli.close()


@pytest.fixture
def pg_names() -> Callable[[str], str]:
    """`pg_names("blue")` -> a database name no other test of the session uses."""
    return lambda stem: f"t{next(_PG_NAMES)}_{stem}"


@pytest.fixture
def pg_server(postgres: PostgresLab) -> Server:
    from watchdog.steps.pg import Server

    return Server.parse(f"host=127.0.0.1 port={postgres.port} user=postgres")


@pytest.fixture(scope="session")
def standins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[StandinProcess, ...]]:
    """Blue (16.0) and green (17.0) stand-ins behind the lab's proxies."""
    workdir = tmp_path_factory.mktemp("standins")
    blue = StandinProcess("blue", workdir, version="16.0").start()
    green = StandinProcess("green", workdir, version="17.0").start()
    yield blue, green
    blue.stop()
    green.stop()


@pytest.fixture(scope="session")
def haproxy(
    tmp_path_factory: pytest.TempPathFactory, standins: tuple[StandinProcess, ...]
) -> Iterator[HaproxyLab]:
    """HAProxy 2.6 fronting the two stand-ins, runtime API at level admin."""
    blue, green = standins
    lab = HaproxyLab(tmp_path_factory.mktemp("haproxy"), blue.port, green.port)
    lab.start()
    yield lab
    lab.stop()


# ---------------------------------------------------------------- a lab's daemon and HAProxy
# Helpers (not fixtures) for tests that drive a LabStack: `from tests.conftest import ...`.

FORCED_MAINT = 0x01  # HAProxy's srv_admin_state bit: maintenance set from the runtime API
FORCED_DRAIN = 0x08  # and drain


async def site(lab: LabStack) -> dict[str, Any]:
    """The daemon's view of site odoo (GET /api/v1/sites/odoo), off the event loop."""
    return await asyncio.to_thread(lab.site)


def step_of(view: dict[str, Any]) -> tuple[str, int]:
    """(phase, 1-based step; 0 without a rollout) of a site's view."""
    ro = view["rollout"]
    return view["phase"], (ro["step"] if ro else 0)


async def post(lab: LabStack, action: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST /api/v1/sites/odoo/<action> with the lab's token, off the event loop."""
    result: dict[str, Any] = await asyncio.to_thread(
        lab.client().post, f"/api/v1/sites/odoo/{action}", body)
    return result


def haproxy_servers(lab: LabStack) -> dict[str, dict[str, int]]:
    """`show servers state odoo` by colour: the weight in force and the admin state, read
    from HAProxy's runtime API itself, never from the daemon."""
    assert lab.haproxy is not None
    return colour_servers(lab.haproxy.admin_socket)


def daemon_metrics(lab: LabStack) -> str:
    """The daemon's /metrics, as text."""
    with urllib.request.urlopen(f"{lab.api_url}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


# ---------------------------------------------------------------- the daemon in this process
# For a test module that defines a module-scoped `lab` (a LabStack started with daemon=False):
# the Daemon on the lab's config in the module's event loop, the API in front of it, and a
# connection of the test's own to HAProxy's runtime API. The watchdog modules are imported
# when a fixture is used, so that a conftest import never depends on the daemon's code.

from typing import TYPE_CHECKING  # noqa: E402  (an appended block: its imports are here)

import pytest_asyncio  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from typing import Any

    from aiohttp.test_utils import TestClient

    from watchdog.daemon import Daemon
    from watchdog.lab.stack import LabStack
    from watchdog.routers import Router


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def daemon(lab: LabStack) -> AsyncIterator[Daemon]:
    """The daemon on the module's lab config, started in the module's event loop."""
    from watchdog.config import load
    from watchdog.daemon import Daemon

    d = Daemon(load(lab.config_path))
    await d.start()
    try:
        yield d
    finally:
        await d.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def api(daemon: Daemon, lab: LabStack) -> AsyncIterator[TestClient[Any, Any]]:
    """An HTTP client of the daemon's API (with the lab's token configured) on loopback."""
    from aiohttp.test_utils import TestClient, TestServer

    from watchdog.api import create_app

    client: TestClient[Any, Any] = TestClient(TestServer(create_app(daemon, lab.token),
                                                         host="127.0.0.1"))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def router(lab: LabStack) -> AsyncIterator[Router]:
    """Our own connection to HAProxy's runtime API, to see what it really does."""
    from watchdog import routers
    from watchdog.config import load

    r = routers.create("odoo", load(lab.config_path).config.sites["odoo"])
    try:
        yield r
    finally:
        await r.close()
