"""`odoo-watchdog router` and `check --connect`: through the real HAProxy and nginx."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from watchdog.config import SiteConfig
from watchdog.lab.haproxy import HaproxyLab
from watchdog.lab.nginx import NginxLab
from watchdog.lab.procs import free_port
from watchdog.lab.standin import StandinProcess
from watchdog.routers.haproxy import HaproxyRouter
from watchdog.routers.nginx import render_upstream

pytestmark = pytest.mark.lab

CONFIG = """\
api: {{listen: "127.0.0.1:{api_port}"}}
sites:
  odoo:
    router: {{kind: haproxy, socket: "{socket}", backend: odoo}}
    colors:
      blue: {{server: odoo-blue, url: "http://127.0.0.1:{blue}"}}
      green: {{server: odoo-green, url: "http://127.0.0.1:{green}"}}
"""


@pytest.fixture
def config(tmp_path: Path, haproxy: HaproxyLab) -> Path:
    path = tmp_path / "watchdog.yml"
    path.write_text(CONFIG.format(api_port=free_port(), socket=haproxy.admin_socket,
                                  blue=haproxy.blue_port, green=haproxy.green_port))
    return path


async def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "watchdog.cli", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )


async def haproxy_weights(haproxy: HaproxyLab) -> dict[str, int]:
    site = SiteConfig.model_validate({
        "router": {"kind": "haproxy", "socket": str(haproxy.admin_socket), "backend": "odoo"},
        "colors": {"blue": {"server": "odoo-blue", "url": "http://127.0.0.1:1"},
                   "green": {"server": "odoo-green", "url": "http://127.0.0.1:2"}},
    })
    return await HaproxyRouter("odoo", site).get_weights()


async def test_router_sets_and_prints_the_split(config: Path, haproxy: HaproxyLab) -> None:
    result = await cli("router", "odoo", "-c", str(config), "--set", "blue=70,green=30")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("site odoo: blue=70,green=30 (was ")
    assert await haproxy_weights(haproxy) == {"blue": 70, "green": 30}
    shown = await cli("router", "odoo", "-c", str(config))
    assert shown.returncode == 0
    assert "blue   odoo-blue                 70%" in shown.stdout
    assert "green  odoo-green                30%" in shown.stdout


async def test_router_takes_one_colour_and_gives_the_rest_to_the_other(
    config: Path, haproxy: HaproxyLab
) -> None:
    result = await cli("router", "odoo", "-c", str(config), "--set", "green=25")
    assert result.returncode == 0, result.stderr
    assert await haproxy_weights(haproxy) == {"blue": 75, "green": 25}


@pytest.mark.parametrize(
    ("split", "message"),
    [("blue=70,green=20", "weights must sum to 100"), ("blue=seventy", "expected COLOR=PERCENT"),
     ("red=100", "unknown colour 'red'")],
)
async def test_router_refuses_bad_splits_without_touching_haproxy(
    config: Path, haproxy: HaproxyLab, split: str, message: str
) -> None:
    await cli("router", "odoo", "-c", str(config), "--set", "blue=100,green=0")
    result = await cli("router", "odoo", "-c", str(config), "--set", split)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert await haproxy_weights(haproxy) == {"blue": 100, "green": 0}


async def test_router_names_an_unknown_site(config: Path) -> None:
    result = await cli("router", "shop", "-c", str(config))
    assert result.returncode == 2
    assert "no site 'shop'" in result.stderr


@pytest.fixture
async def daemon_in_rollout() -> AsyncIterator[str]:
    """An HTTP endpoint answering GET /api/v1/sites/odoo as the daemon does mid-rollout
    (docs/api.md). It stands in for the daemon until the rollout engine lands."""
    async def site(request: web.Request) -> web.Response:
        if request.match_info["site"] != "odoo":
            return web.json_response({"error": "no such site"}, status=404)
        return web.json_response({"site": "odoo", "phase": "progressing"})

    app = web.Application()
    app.router.add_get("/api/v1/sites/{site}", site)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_router_refuses_while_the_daemon_owns_a_rollout_unless_forced(
    config: Path, haproxy: HaproxyLab, daemon_in_rollout: str
) -> None:
    await cli("router", "odoo", "-c", str(config), "--set", "blue=100,green=0")
    refused = await cli("router", "odoo", "-c", str(config), "--url", daemon_in_rollout,
                        "--set", "blue=50,green=50")
    assert refused.returncode == 1
    assert "owns a rollout of odoo (phase progressing)" in refused.stderr
    assert await haproxy_weights(haproxy) == {"blue": 100, "green": 0}
    forced = await cli("router", "odoo", "-c", str(config), "--url", daemon_in_rollout,
                       "--set", "blue=50,green=50", "--force")
    assert forced.returncode == 0, forced.stderr
    assert await haproxy_weights(haproxy) == {"blue": 50, "green": 50}


def test_router_reports_an_unreachable_socket(config: Path, tmp_path: Path) -> None:
    text = config.read_text().replace("admin.sock", "missing.sock")
    config.write_text(text)
    result = asyncio.run(cli("router", "odoo", "-c", str(config)))
    assert result.returncode == 1
    assert "cannot connect to HAProxy runtime API" in result.stderr
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------------ check --connect

TWO_SITES = CONFIG + """\
  shop:
    router:
      kind: nginx
      upstream_file: "{upstream_file}"
      upstream: odoo
      test: '{test}'
    colors:
      blue: {{server: "127.0.0.1:{blue}", url: "http://127.0.0.1:{blue}"}}
      green: {{server: "127.0.0.1:{green}", url: "http://127.0.0.1:{green}"}}
"""


@pytest.fixture(scope="module")
def nginx(
    tmp_path_factory: pytest.TempPathFactory, standins: tuple[StandinProcess, ...]
) -> Iterator[NginxLab]:
    blue, green = standins
    workdir = tmp_path_factory.mktemp("check-nginx")
    upstream_file = workdir / "odoo-upstream.conf"
    servers = {"blue": f"127.0.0.1:{blue.port}", "green": f"127.0.0.1:{green.port}"}
    upstream_file.write_text(render_upstream("shop", "odoo", servers, {"blue": 100, "green": 0}))
    lab = NginxLab(workdir / "nginx", upstream_file)
    lab.start()
    yield lab
    lab.stop()


def two_sites(path: Path, haproxy: HaproxyLab, nginx: NginxLab, *, socket: Path | None = None,
              test: str | None = None) -> Path:
    path.write_text(TWO_SITES.format(
        api_port=free_port(), socket=socket or haproxy.admin_socket, blue=haproxy.blue_port,
        green=haproxy.green_port, upstream_file=nginx.upstream_file,
        test=test or nginx.test_command))
    return path


async def test_check_connect_passes_when_every_router_can_switch(
    tmp_path: Path, haproxy: HaproxyLab, nginx: NginxLab
) -> None:
    config = two_sites(tmp_path / "watchdog.yml", haproxy, nginx)
    result = await cli("check", "-c", str(config), "--connect")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"SUCCESS: {config} is valid")
    assert "every router answers and can switch (2 sites)" in result.stdout


async def test_check_connect_reports_each_router_problem_on_one_line_at_its_site(
    tmp_path: Path, haproxy: HaproxyLab, nginx: NginxLab
) -> None:
    missing = tmp_path / "missing.conf"
    config = two_sites(tmp_path / "watchdog.yml", haproxy, nginx, socket=haproxy.user_socket,
                       test=f"{nginx.binary} -t -c {missing}")
    text = config.read_text().splitlines()
    haproxy_line = text.index(next(line for line in text if "kind: haproxy" in line)) + 1
    nginx_line = text.index("    router:") + 1
    result = await cli("check", "-c", str(config), "--connect")
    assert result.returncode == 1
    assert result.stdout == ""
    problems = result.stderr.splitlines()
    assert problems[-1] == "FAILED: 2 problems"
    assert problems[0].startswith(
        f"{config}:{haproxy_line}: site 'odoo': haproxy router: HAProxy runtime API "
        f"{haproxy.user_socket} is at level 'user'")
    assert problems[1].startswith(f"{config}:{nginx_line}: site 'shop': nginx router: ")
    assert f'open() "{missing}" failed' in problems[1]  # nginx's own words
    assert len(problems) == 3
    assert "Traceback" not in result.stderr


async def test_check_without_connect_does_not_touch_the_routers(
    tmp_path: Path, haproxy: HaproxyLab, nginx: NginxLab
) -> None:
    config = two_sites(tmp_path / "watchdog.yml", haproxy, nginx,
                       socket=tmp_path / "no-such.sock")
    result = await cli("check", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert "every router answers" not in result.stdout
