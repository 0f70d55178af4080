"""Fixtures that start the lab's real programs on loopback and stop them by pid."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from watchdog.lab.haproxy import HaproxyLab
from watchdog.lab.procs import free_port
from watchdog.lab.prometheus import PrometheusLab, ScrapeJob
from watchdog.lab.standin import StandinProcess, clear_faults


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
