"""The `deploy` step against the lab's real dockerd: containers of the lab's Odoo image
(watchdog/lab/odoo_image.py: busybox httpd answering /web/health per version) on `--network
host`, recreated from one tag to another, with the previous container put back when the new one
does not come up, and after a simulated crash.

Needs a dockerd and busybox-static (`.ci/setup-docker.sh`, run by `make test`); without them
these tests are skipped, saying why. Every container a test makes is removed by name at its end
(with its anonymous volumes), also when it fails.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from watchdog.lab.docker import docker_unavailable
from watchdog.lab.odoo_image import build_images, image
from watchdog.lab.procs import free_port
from watchdog.steps.base import StepFailed
from watchdog.steps.deploy import (
    ASIDE,
    cleanup_deploy_leftovers,
    create_config,
    deploy,
    deploy_command,
)

UNAVAILABLE = docker_unavailable()
pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(UNAVAILABLE is not None, reason=f"docker: {UNAVAILABLE}"),
]

HEALTHCHECK = {  # as a compose file gives one (the official image has none)
    "test": ["CMD-SHELL", "wget -q -O /dev/null http://127.0.0.1:$ODOO_PORT/web/health"],
    "interval": 250_000_000, "timeout": 2_000_000_000, "retries": 3,
}


def _remove(cli: Any, name: str) -> None:
    """Remove the container and its volumes (the one a deploy took over is named to docker)."""
    import docker.errors

    try:
        mounts = cli.api.inspect_container(name)["Mounts"]
        cli.api.remove_container(name, force=True, v=True)
    except docker.errors.NotFound:
        return
    for mount in mounts:
        if mount["Type"] == "volume":
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                cli.api.remove_volume(mount["Name"])


def _exists(cli: Any, name: str) -> bool:
    import docker.errors

    try:
        cli.api.inspect_container(name)
    except docker.errors.NotFound:
        return False
    return True


def health(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/web/health", timeout=2) as resp:
            body: dict[str, Any] = json.loads(resp.read())
            return body
    except OSError:
        return None


def wait_health(port: int, version: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = health(port)
        if body and body.get("lab_version") == version:
            return
        time.sleep(0.1)
    raise AssertionError(f"/web/health on {port} never said {version}: {health(port)}")


class Old:
    """The candidate's container before the deploy: :16.0 on --network host."""

    def __init__(self, cli: Any, name: str, port: int, addons: Path) -> None:
        self.cli, self.name, self.port, self.addons = cli, name, port, addons
        self.id = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, restart: str = "unless-stopped", healthcheck: bool = True) -> Old:
        box = self.cli.containers.run(
            image("16.0"), name=self.name, detach=True, network_mode="host",
            environment={"ODOO_PORT": str(self.port), "WD_SITE_MARK": "kept"},
            labels={"com.example.site": "odoo", "com.example.color": "green"},
            volumes={str(self.addons): {"bind": "/mnt/extra-addons", "mode": "ro"}},
            restart_policy={"Name": restart}, healthcheck=HEALTHCHECK if healthcheck else None)
        self.id = box.id
        wait_health(self.port, "16.0")
        return self

    def attrs(self) -> dict[str, Any]:
        return dict(self.cli.api.inspect_container(self.name))

    def assert_back(self) -> None:
        """The very same :16.0 container runs under its name and answers; nothing is left."""
        attrs = self.attrs()
        assert attrs["Id"] == self.id
        assert attrs["State"]["Running"] is True
        wait_health(self.port, "16.0")
        assert not _exists(self.cli, self.name + ASIDE)
        names = [c.name for c in self.cli.containers.list(all=True)]
        assert [n for n in names if n.startswith(self.name)] == [self.name]


@pytest.fixture
def old(odoo_docker: Any, tmp_path: Path) -> Iterator[Callable[..., Old]]:
    made: list[str] = []

    def make(restart: str = "unless-stopped", healthcheck: bool = True) -> Old:
        name = f"wdtest-deploy-{uuid.uuid4().hex[:8]}"
        made.append(name)
        addons = tmp_path / "addons"
        addons.mkdir(exist_ok=True)
        return Old(odoo_docker, name, free_port(), addons).start(restart, healthcheck)

    try:
        yield make
    finally:
        for name in made:
            _remove(odoo_docker, name + ASIDE)
            _remove(odoo_docker, name)


def _volume(attrs: dict[str, Any], target: str) -> str:
    return next(m["Name"] for m in attrs["Mounts"] if m["Destination"] == target)


async def test_deploy_recreates_the_container_on_the_new_tag_keeping_its_settings(
        odoo_docker: Any, old: Callable[..., Old]) -> None:
    box = old()
    before = box.attrs()
    lines: list[str] = []
    result = await deploy(box.name, image("17.0"), url=box.url, timeout=30, grace=1,
                          progress=lines.append)
    after = box.attrs()
    assert after["Id"] != box.id and after["Name"] == "/" + box.name
    assert after["Config"]["Image"] == image("17.0")
    assert after["Image"] == odoo_docker.api.inspect_image(image("17.0"))["Id"]
    assert result.image_id == after["Image"] and result.previous_image_id == before["Image"]
    assert result.container_id == after["Id"] and not result.pulled
    # set for the old container: kept; from the old image: the new image's
    env = after["Config"]["Env"]
    assert f"ODOO_PORT={box.port}" in env and "WD_SITE_MARK=kept" in env
    assert "ODOO_VERSION=17.0" in env and "ODOO_VERSION=16.0" not in env
    labels = after["Config"]["Labels"]
    assert labels["com.example.site"] == "odoo" and labels["com.example.color"] == "green"
    assert labels["org.opencontainers.image.version"] == "17.0"
    assert after["HostConfig"]["NetworkMode"] == "host"
    assert after["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert after["Config"]["Healthcheck"] == before["Config"]["Healthcheck"]
    assert after["Config"]["User"] == "odoo"
    assert after["Config"]["Entrypoint"] == ["/entrypoint.sh"] and after["Config"]["Cmd"] == [
        "odoo"]
    binds = [(m["Source"], m["RW"]) for m in after["Mounts"] if m["Type"] == "bind"]
    assert binds == [(str(box.addons), False)]
    # the image's VOLUME /var/lib/odoo is the same volume: what 16.0 wrote is still there
    assert _volume(after, "/var/lib/odoo") == _volume(before, "/var/lib/odoo")
    starts = odoo_docker.containers.get(box.name).exec_run(["cat", "/var/lib/odoo/lab-starts"])
    assert starts.output.decode().split() == ["16.0", "17.0"]
    # healthy both ways, and nothing left aside
    assert after["State"]["Health"]["Status"] == "healthy"
    assert health(box.port) == {"status": "pass", "lab_version": "17.0"}
    assert "docker health healthy" in result.health and "/web/health pass" in result.health
    assert not _exists(odoo_docker, box.name + ASIDE)
    assert any("is healthy" in line for line in lines)


async def test_a_tag_that_never_becomes_healthy_puts_the_previous_container_back(
        old: Callable[..., Old]) -> None:
    box = old()
    started = time.monotonic()
    with pytest.raises(StepFailed) as failed:
        await deploy(box.name, image("broken"), url=box.url, timeout=3, grace=1)
    assert time.monotonic() - started < 20
    message = str(failed.value)
    assert "not healthy within 3 s" in message and "/web/health answered 404" in message
    assert "docker health" in message
    assert "previous one is back" in message and "answers /web/health again" in message
    assert any("Failed to load registry" in line for line in failed.value.output)
    assert failed.value.data["phase"] == "health" and failed.value.data["previous_healthy"]
    box.assert_back()


async def test_a_container_that_exits_fails_at_once_and_the_previous_one_is_back(
        old: Callable[..., Old]) -> None:
    box = old(restart="no")
    started = time.monotonic()
    with pytest.raises(StepFailed) as failed:
        await deploy(box.name, image("crash"), url=box.url, timeout=60, grace=1)
    assert time.monotonic() - started < 20  # not the 60 s of the timeout
    assert "exited with code 1" in str(failed.value)
    assert any("CRITICAL" in line and "lab crash" in line for line in failed.value.output)
    box.assert_back()
    assert box.attrs()["HostConfig"]["RestartPolicy"]["Name"] == "no"


async def test_a_missing_image_that_cannot_be_pulled_fails_clearly(
        old: Callable[..., Old]) -> None:
    box = old()
    since = box.attrs()["State"]["StartedAt"]
    missing = "odoo-watchdog-odoo:no-such-tag"
    started = time.monotonic()
    with pytest.raises(StepFailed) as failed:
        await deploy(box.name, missing, url=box.url, timeout=30, grace=1)
    assert time.monotonic() - started < 25
    message = str(failed.value)
    assert f"image {missing} is not on this host and pulling it failed" in message
    assert "the container was not touched" in message
    with pytest.raises(StepFailed) as refused:
        await deploy(box.name, missing, url=box.url, timeout=30, pull=False)
    assert "pull: false" in str(refused.value)
    box.assert_back()  # never stopped
    assert box.attrs()["State"]["StartedAt"] == since


async def test_cleanup_after_a_crash_puts_the_previous_container_back(
        odoo_docker: Any, old: Callable[..., Old]) -> None:
    box = old()
    # kill -9 of the daemon after the new container started: the old one aside and stopped
    odoo_docker.api.rename(box.name, box.name + ASIDE)
    odoo_docker.api.stop(box.name + ASIDE, timeout=1)
    odoo_docker.containers.run(image("broken"), name=box.name, detach=True,
                                 network_mode="host",
                                 environment={"ODOO_PORT": str(box.port)})
    done = await cleanup_deploy_leftovers(box.name)
    assert done == [f"removed container {box.name} (the unfinished new one)",
                    f"renamed {box.name}{ASIDE} back to {box.name} and started it"]
    box.assert_back()
    assert await cleanup_deploy_leftovers(box.name) == []
    # a crash right after the rename: only the aside one, still running
    odoo_docker.api.rename(box.name, box.name + ASIDE)
    assert await cleanup_deploy_leftovers(box.name) == [
        f"renamed {box.name}{ASIDE} back to {box.name} and started it"]
    box.assert_back()


async def test_a_deploy_run_again_after_a_crash_puts_back_then_deploys(
        odoo_docker: Any, old: Callable[..., Old]) -> None:
    box = old()
    odoo_docker.api.rename(box.name, box.name + ASIDE)
    odoo_docker.api.stop(box.name + ASIDE, timeout=1)
    lines: list[str] = []
    await deploy(box.name, image("17.0"), url=box.url, timeout=30, grace=1,
                 progress=lines.append)
    assert any("did not finish" in line for line in lines)
    assert box.attrs()["Config"]["Image"] == image("17.0")
    wait_health(box.port, "17.0")
    assert not _exists(odoo_docker, box.name + ASIDE)


async def test_cancelling_a_deploy_puts_the_previous_container_back(
        old: Callable[..., Old]) -> None:
    import asyncio

    box = old()
    task = asyncio.ensure_future(deploy(box.name, image("broken"), url=box.url, timeout=60,
                                        grace=1))
    deadline = time.monotonic() + 20
    while health(box.port) is not None or not _exists(box.cli, box.name + ASIDE):
        assert time.monotonic() < deadline, "the deploy never replaced the container"
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # the broken one is up and being waited for
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    box.assert_back()


async def test_a_container_run_with_rm_is_refused(odoo_docker: Any) -> None:
    name = f"wdtest-deploy-{uuid.uuid4().hex[:8]}"
    try:
        odoo_docker.containers.run(image("16.0"), name=name, detach=True,
                                     network_mode="none", auto_remove=True)
        with pytest.raises(StepFailed) as refused:
            await deploy(name, image("17.0"), url="http://127.0.0.1:9", timeout=5)
        assert "--rm" in str(refused.value)
        assert odoo_docker.api.inspect_container(name)["State"]["Running"]
    finally:
        _remove(odoo_docker, name)


async def test_deploy_of_a_missing_container_says_so() -> None:
    with pytest.raises(StepFailed) as failed:
        await deploy(f"wdtest-none-{uuid.uuid4().hex[:8]}", image("17.0"),
                     url="http://127.0.0.1:9", timeout=5)
    assert "does not exist" in str(failed.value)


# ---------------------------------------------------------------- {command: [...]}


@pytest.fixture
def command_container(odoo_docker: Any) -> Iterator[tuple[str, int]]:
    name = f"wdtest-deploycmd-{uuid.uuid4().hex[:8]}"
    try:
        yield name, free_port()
    finally:
        _remove(odoo_docker, name)


async def test_deploy_command_runs_the_command_then_waits_for_health(
        command_container: tuple[str, int]) -> None:
    name, port = command_container
    # what a colour run by compose or a script does: start it detached, return at once
    argv = ["docker", "run", "-d", "--name", name, "--network", "host", "-e",
            f"ODOO_PORT={port}", image("17.0")]
    result = await deploy_command(argv, url=f"http://127.0.0.1:{port}", timeout=30)
    assert result.exit_code == 0 and result.health == "/web/health pass"
    assert health(port) == {"status": "pass", "lab_version": "17.0"}


async def test_deploy_command_failures_say_what_happened(
        command_container: tuple[str, int]) -> None:
    _, port = command_container
    script = "import sys; print('restarting odoo-green'); print('unit failed'); sys.exit(3)"
    with pytest.raises(StepFailed) as failed:
        await deploy_command([sys.executable, "-c", script], url=f"http://127.0.0.1:{port}",
                             timeout=10)
    assert failed.value.exit_code == 3
    assert failed.value.output == ("restarting odoo-green", "unit failed")
    assert "exited 3" in str(failed.value) and "cannot undo" in str(failed.value)
    # exits 0, but nothing answers on the colour's port
    started = time.monotonic()
    with pytest.raises(StepFailed) as unhealthy:
        await deploy_command([sys.executable, "-c", "print('ok')"],
                             url=f"http://127.0.0.1:{port}", timeout=2, interval=0.2)
    assert time.monotonic() - started < 10
    assert "not healthy within 2 s" in str(unhealthy.value)
    assert "/web/health unreachable" in str(unhealthy.value)


# ---------------------------------------------------------------- on user networks, as compose


def test_the_new_containers_networks_keep_their_aliases_and_address() -> None:
    """Read from `docker inspect` of a container on two user networks (as compose makes
    them), the create body joins the primary one with its aliases and fixed address, and
    the other one after creation; the old container's own id alias is not carried over.
    Pure: the lab runs containers on --network host or none only, never a bridge."""
    old_id = "3f9c2a1b7d04" + "0" * 52
    attrs = {
        "Id": old_id,
        "Config": {"Image": image("16.0"), "Env": [], "Labels": {}},
        "HostConfig": {"NetworkMode": "odoo_internal"},
        "NetworkSettings": {"Networks": {
            "odoo_internal": {"Aliases": ["odoo-green", old_id[:12]],
                              "IPAMConfig": {"IPv4Address": "172.30.117.10"}},
            "odoo_extra": {"Aliases": ["odoo-green-extra", old_id[:12]]},
        }},
        "Mounts": [],
    }
    body, later = create_config(attrs, {"Env": [], "Labels": {}}, image("17.0"), None)
    primary = body["NetworkingConfig"]["EndpointsConfig"]["odoo_internal"]
    assert primary["Aliases"] == ["odoo-green"]
    assert primary["IPAMConfig"] == {"IPv4Address": "172.30.117.10"}
    assert body["HostConfig"]["NetworkMode"] == "odoo_internal"
    assert later == {"odoo_extra": {"Aliases": ["odoo-green-extra"]}}


def test_build_images_is_idempotent(odoo_docker: Any) -> None:
    names = build_images(odoo_docker)
    ids = [odoo_docker.api.inspect_image(n)["Id"] for n in names]
    assert build_images(odoo_docker) == names
    assert [odoo_docker.api.inspect_image(n)["Id"] for n in names] == ids
    assert len(set(ids)) == len(names) == 4


async def test_deploy_keeps_an_anonymous_volume_given_with_mount(
        odoo_docker: Any, old: Callable[..., Old]) -> None:
    import docker.types

    box = old()
    api = odoo_docker.api
    _remove(odoo_docker, box.name)  # the same settings again, with a --mount volume
    created = api.create_container(
        image("16.0"), name=box.name, environment={"ODOO_PORT": str(box.port)},
        host_config=api.create_host_config(network_mode="host", mounts=[
            docker.types.Mount("/mnt/extra", None, type="volume")]))
    api.start(created["Id"])
    wait_health(box.port, "16.0")
    wrote = api.exec_create(created["Id"], ["sh", "-c", "echo kept > /mnt/extra/f"],
                            user="root")
    assert api.exec_start(wrote) == b"" and api.exec_inspect(wrote)["ExitCode"] == 0
    before = _volume(api.inspect_container(box.name), "/mnt/extra")
    await deploy(box.name, image("17.0"), url=box.url, timeout=30, grace=1)
    after = api.inspect_container(box.name)
    assert _volume(after, "/mnt/extra") == before
    out = odoo_docker.containers.get(box.name).exec_run(["cat", "/mnt/extra/f"]).output
    assert out == b"kept\n"


async def test_the_steps_command_replaces_the_images_and_the_entrypoint_stays(
        odoo_docker: Any, old: Callable[..., Old]) -> None:
    box = old(healthcheck=False)  # its healthcheck would probe $ODOO_PORT
    port = free_port()
    await deploy(box.name, image("17.0"), url=f"http://127.0.0.1:{port}", timeout=30, grace=1,
                 command=["odoo", f"--http-port={port}"])
    config = box.attrs()["Config"]
    assert config["Entrypoint"] == ["/entrypoint.sh"]
    assert config["Cmd"] == ["odoo", f"--http-port={port}"]
    assert health(port) == {"status": "pass", "lab_version": "17.0"}
    assert health(box.port) is None  # ODOO_PORT is still set, the argument wins


async def test_a_command_set_for_the_container_is_kept_on_the_new_image(
        odoo_docker: Any) -> None:
    """As compose's `command: [--logfile=..., --proxy-mode]`: set for the container, not by
    its image, so it follows the container onto the new tag like its env."""
    name, port = f"wdtest-deploy-cmd-{uuid.uuid4().hex[:8]}", free_port()
    argv = ["odoo", f"--http-port={port}", "--proxy-mode"]
    try:
        odoo_docker.containers.run(image("16.0"), argv, name=name, detach=True,
                                     network_mode="host")
        wait_health(port, "16.0")
        await deploy(name, image("17.0"), url=f"http://127.0.0.1:{port}", timeout=30, grace=1)
        assert odoo_docker.api.inspect_container(name)["Config"]["Cmd"] == argv
        wait_health(port, "17.0")
    finally:
        _remove(odoo_docker, name + ASIDE)
        _remove(odoo_docker, name)


async def test_no_dockerd_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(StepFailed) as failed:
        await deploy("odoo-green", image("17.0"), url="http://127.0.0.1:9", timeout=5,
                     base_url=f"unix://{tmp_path}/no-docker.sock")
    assert str(failed.value).startswith("deploy: no dockerd answers (")
    assert "{command: [...]}" in str(failed.value)


async def test_a_container_docker_cannot_start_puts_the_previous_one_back(
        old: Callable[..., Old]) -> None:
    from watchdog.lab.docker import IMAGE

    box = old()
    with pytest.raises(StepFailed) as failed:
        await deploy(box.name, IMAGE, url=box.url, timeout=30, grace=1,
                     command=["/no/such/program"])
    assert f"docker could not start {box.name}" in str(failed.value)
    assert "previous one is back" in str(failed.value)
    assert failed.value.data["phase"] == "start"
    box.assert_back()
