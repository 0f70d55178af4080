"""The nginx router against a real nginx in front of two real Odoo stand-ins.

Shares are measured, not assumed: a LoadClient sends constant traffic through nginx (a new
connection per request, no cookies) and counts which colour answered (`X-Odoo-Color`). After
each `set_weights` the test waits until nginx's old workers are gone, i.e. the reload has
taken effect, then counts the next 1,000 answers.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from watchdog import routers
from watchdog.config import SiteConfig
from watchdog.lab.load import LoadClient, Window
from watchdog.lab.nginx import NginxLab, nginx_binary
from watchdog.lab.standin import StandinProcess
from watchdog.routers import RouterError, WeightsError
from watchdog.routers.nginx import NginxRouter, render_upstream

pytestmark = pytest.mark.lab

STEPS = [(100, 0), (90, 10), (50, 50), (0, 100), (100, 0)]
TOLERANCE = 5.0  # percentage points


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("nginx-router")


@pytest.fixture(scope="module")
def blue(workdir: Path) -> Iterator[StandinProcess]:
    proc = StandinProcess("blue", workdir / "blue").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def green(workdir: Path) -> Iterator[StandinProcess]:
    proc = StandinProcess("green", workdir / "green").start()
    yield proc
    proc.stop()


def servers(blue: StandinProcess, green: StandinProcess) -> dict[str, str]:
    return {"blue": f"127.0.0.1:{blue.port}", "green": f"127.0.0.1:{green.port}"}


@pytest.fixture(scope="module")
def lab(workdir: Path, blue: StandinProcess, green: StandinProcess) -> Iterator[NginxLab]:
    conf_d = workdir / "conf.d"
    conf_d.mkdir()
    upstream_file = conf_d / "odoo-upstream.conf"
    upstream_file.write_text(
        render_upstream("odoo", "odoo", servers(blue, green), {"blue": 50, "green": 50})
    )
    nginx = NginxLab(workdir / "nginx", upstream_file)
    nginx.start()
    yield nginx
    nginx.stop()


def site(lab: NginxLab, blue: StandinProcess, green: StandinProcess, **router: str) -> SiteConfig:
    colors = servers(blue, green)
    if "green_server" in router:
        colors["green"] = router.pop("green_server")
    return SiteConfig.model_validate({
        "router": {
            "kind": "nginx",
            "upstream_file": str(router.pop("upstream_file", lab.upstream_file)),
            "upstream": router.pop("upstream", "odoo"),
            "test": router.pop("test", lab.test_command),
            "reload": router.pop("reload", lab.reload_command),
            "timeout": router.pop("timeout", "10s"),
        },
        "colors": {
            "blue": {"server": colors["blue"], "url": blue.url},
            "green": {"server": colors["green"], "url": green.url},
        },
    })


@pytest.fixture
def router(lab: NginxLab, blue: StandinProcess, green: StandinProcess) -> NginxRouter:
    made = routers.create("odoo", site(lab, blue, green))
    assert isinstance(made, NginxRouter)
    return made


async def apply(router: NginxRouter, lab: NginxLab, blue: int, green: int) -> None:
    """set_weights, then wait until nginx's old workers are gone: the new split is live."""
    before = lab.worker_pids()
    assert await router.set_weights({"blue": blue, "green": green}) == {
        "blue": blue, "green": green}
    await asyncio.to_thread(lab.wait_workers_replaced, before)


async def measure(load: LoadClient, count: int) -> Window:
    start = load.mark()
    await load.wait_count(count, timeout=30)
    return load.window(start)


def assert_split(window: Window, blue: int, green: int) -> None:
    shares = {"blue": window.share("blue"), "green": window.share("green")}
    assert not window.failed, window.failed[:3]
    for color, wanted in (("blue", blue), ("green", green)):
        assert abs(shares[color] - wanted) <= TOLERANCE, (
            f"{color} got {shares[color]:.1f}% of {window.total} answers, set {wanted}%")


async def test_traffic_follows_every_step_with_no_failed_request(
    router: NginxRouter, lab: NginxLab
) -> None:
    assert len(STEPS) >= 3 and (0, 100) in STEPS  # a canary split and a full switch
    observed: list[str] = []
    async with LoadClient(lab.url, concurrency=8, max_seconds=60) as load:
        await load.wait_count(50, timeout=10)
        first = load.mark()
        for blue, green in STEPS:
            await apply(router, lab, blue, green)
            window = await measure(load, 1000)
            observed.append(f"{blue}/{green}: blue {window.share('blue'):.1f}% of {window.total}")
            assert_split(window, blue, green)
            assert await router.get_weights() == {"blue": blue, "green": green}
        whole = load.window(first)
    print("\n" + "\n".join(observed))
    assert whole.total >= 1000 * len(STEPS)
    assert whole.failed == [], f"{len(whole.failed)} of {whole.total} failed: {whole.failed[:3]}"


async def test_colour_at_0_is_written_down_not_weight_0(
    router: NginxRouter, lab: NginxLab, blue: StandinProcess, green: StandinProcess
) -> None:
    await apply(router, lab, 0, 100)
    text = lab.upstream_file.read_text()
    assert f"server 127.0.0.1:{blue.port} down;" in text
    assert f"server 127.0.0.1:{green.port} weight=100;" in text
    assert "weight=0" not in text
    assert text.startswith("# Managed by odoo-watchdog for site 'odoo'")
    assert "upstream odoo {" in text
    async with LoadClient(lab.url, concurrency=4, max_seconds=20) as load:
        assert_split(await measure(load, 200), 0, 100)


async def test_bad_weights_are_refused_before_anything_is_touched(
    router: NginxRouter, lab: NginxLab
) -> None:
    await apply(router, lab, 90, 10)
    before = lab.upstream_file.read_bytes()
    inode = lab.upstream_file.stat().st_ino
    workers = lab.worker_pids()
    with pytest.raises(WeightsError, match="sum to 100"):
        await router.set_weights({"blue": 90, "green": 20})
    with pytest.raises(WeightsError, match="unknown colour 'red'"):
        await router.set_weights({"blue": 90, "red": 10})
    assert lab.upstream_file.read_bytes() == before
    assert lab.upstream_file.stat().st_ino == inode  # not even rewritten with the same bytes
    assert lab.worker_pids() == workers  # no reload
    async with LoadClient(lab.url, concurrency=8, max_seconds=20) as load:
        assert_split(await measure(load, 500), 90, 10)


async def test_config_that_fails_nginx_t_is_refused_and_the_file_restored(
    lab: NginxLab, blue: StandinProcess, green: StandinProcess, router: NginxRouter
) -> None:
    await apply(router, lab, 90, 10)
    before = lab.upstream_file.read_bytes()
    workers = lab.worker_pids()
    # nginx accepts this address in our config schema but refuses it in `nginx -t`.
    bad = NginxRouter("odoo", site(lab, blue, green, green_server="127.0.0.1:99999"))
    async with LoadClient(lab.url, concurrency=8, max_seconds=20) as load:
        with pytest.raises(RouterError) as caught:
            await bad.set_weights({"blue": 10, "green": 90})
        window = await measure(load, 500)
    message = str(caught.value)
    assert f"failed for {lab.upstream_file}" in message
    assert lab.test_command in message
    assert 'invalid port in upstream "127.0.0.1:99999"' in message  # nginx's own words
    assert "previous file restored" in message
    assert lab.upstream_file.read_bytes() == before
    assert lab.worker_pids() == workers
    assert_split(window, 90, 10)
    assert await router.get_weights() == {"blue": 90, "green": 10}


async def test_failed_reload_restores_the_previous_file(
    lab: NginxLab, blue: StandinProcess, green: StandinProcess, router: NginxRouter,
    tmp_path: Path,
) -> None:
    await apply(router, lab, 90, 10)
    before = lab.upstream_file.read_bytes()
    missing = tmp_path / "missing.conf"
    reload = f"{nginx_binary()} -s reload -c {missing}"
    bad = NginxRouter("odoo", site(lab, blue, green, reload=reload))
    async with LoadClient(lab.url, concurrency=8, max_seconds=20) as load:
        with pytest.raises(RouterError) as caught:
            await bad.set_weights({"blue": 10, "green": 90})
        window = await measure(load, 500)
    message = str(caught.value)
    assert message.startswith(f"{reload} failed for {lab.upstream_file}: exit code 1: ")
    assert f'open() "{missing}" failed' in message
    assert message.endswith("previous file restored")
    assert lab.upstream_file.read_bytes() == before
    assert_split(window, 90, 10)


async def test_reload_that_hangs_is_killed_after_the_timeout_and_the_file_restored(
    lab: NginxLab, blue: StandinProcess, green: StandinProcess, router: NginxRouter,
    tmp_path: Path,
) -> None:
    await apply(router, lab, 90, 10)
    before = lab.upstream_file.read_bytes()
    bad = NginxRouter("odoo", site(lab, blue, green, reload="sleep 30", timeout="300ms"))
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(RouterError, match=r"sleep 30 failed .*no answer within 0.3s"):
        await bad.set_weights({"blue": 10, "green": 90})
    assert loop.time() - started < 5
    assert lab.upstream_file.read_bytes() == before


async def test_failed_first_write_leaves_no_file(
    lab: NginxLab, blue: StandinProcess, green: StandinProcess, tmp_path: Path
) -> None:
    path = tmp_path / "new-upstream.conf"
    reload = f"{nginx_binary()} -s reload -c {tmp_path / 'missing.conf'}"
    bad = NginxRouter("odoo", site(lab, blue, green, upstream_file=str(path), reload=reload))
    with pytest.raises(RouterError, match="the new file was removed"):
        await bad.set_weights({"blue": 100, "green": 0})
    assert sorted(os.listdir(tmp_path)) == []  # neither the file nor a temp file


async def test_get_weights_of_a_missing_file_says_so(
    lab: NginxLab, blue: StandinProcess, green: StandinProcess, tmp_path: Path
) -> None:
    path = tmp_path / "nowhere.conf"
    router = NginxRouter("odoo", site(lab, blue, green, upstream_file=str(path)))
    with pytest.raises(RouterError, match=f"upstream file {path} does not exist"):
        await router.get_weights()


async def test_get_weights_refuses_a_file_that_is_not_ours(
    lab: NginxLab, blue: StandinProcess, green: StandinProcess, tmp_path: Path
) -> None:
    path = tmp_path / "upstream.conf"
    router = NginxRouter("odoo", site(lab, blue, green, upstream_file=str(path)))
    path.write_text("upstream erp {\n    server 127.0.0.1:1 weight=1;\n}\n")
    with pytest.raises(RouterError, match=r"defines upstream erp.*configured for upstream 'odoo'"):
        await router.get_weights()
    path.write_text(f"upstream odoo {{\n    server 127.0.0.1:{blue.port} weight=3;\n"
                    "    server 127.9.9.9:8069 weight=1;\n}\n")
    with pytest.raises(RouterError, match=r"server 127\.9\.9\.9:8069, which is no colour"):
        await router.get_weights()
    path.write_text("# nothing here\n")
    with pytest.raises(RouterError, match="no `upstream odoo"):
        await router.get_weights()


async def test_get_weights_reads_a_hand_written_block_as_percentages(
    lab: NginxLab, blue: StandinProcess, green: StandinProcess, tmp_path: Path
) -> None:
    path = tmp_path / "upstream.conf"
    router = NginxRouter("odoo", site(lab, blue, green, upstream_file=str(path)))
    path.write_text(f"upstream odoo {{  # by hand\n    keepalive 8;\n"
                    f"    server 127.0.0.1:{blue.port} weight=3 max_fails=2;\n"
                    f"    server 127.0.0.1:{green.port};\n}}\n")
    assert await router.get_weights() == {"blue": 75, "green": 25}


async def test_check_passes_on_a_working_setup_and_names_the_problem_otherwise(
    lab: NginxLab, blue: StandinProcess, green: StandinProcess, router: NginxRouter,
    tmp_path: Path,
) -> None:
    await router.check()
    broken = NginxRouter("odoo", site(lab, blue, green,
                                      test=f"{nginx_binary()} -t -c {tmp_path / 'no.conf'}"))
    with pytest.raises(RouterError, match=r"-t -c .*no\.conf failed: exit code 1: .*open\(\)"):
        await broken.check()
    nowhere = NginxRouter("odoo", site(lab, blue, green,
                                       upstream_file=str(tmp_path / "no" / "up.conf")))
    with pytest.raises(RouterError, match=r"directory of .* does not exist"):
        await nowhere.check()


async def test_shipped_server_block_passes_nginx_t_with_the_routers_file(
    blue: StandinProcess, green: StandinProcess, lab: NginxLab, tmp_path: Path
) -> None:
    upstream_file = tmp_path / "odoo-upstream.conf"
    example = (Path(__file__).parent.parent / "deploy" / "nginx" / "odoo.conf").read_text()
    shipped_path = "/etc/nginx/odoo-watchdog/odoo-upstream.conf"
    assert f"include {shipped_path};" in example
    (tmp_path / "odoo.conf").write_text(example.replace(shipped_path, str(upstream_file)))
    temp = " ".join(f"{kind}_temp_path {tmp_path}/{kind};"
                    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
        "worker_shutdown_timeout 60s;\nevents {}\n"
        f"http {{ access_log off; {temp} include {tmp_path}/odoo.conf; }}\n")
    upstream_file.write_text(
        render_upstream("odoo", "odoo", servers(blue, green), {"blue": 90, "green": 10}))
    test = f"{nginx_binary()} -t -c {tmp_path}/nginx.conf -p {tmp_path}/"
    router = NginxRouter("odoo", site(lab, blue, green, upstream_file=str(upstream_file),
                                      test=test))
    await router.check()
    assert await router.get_weights() == {"blue": 90, "green": 10}
