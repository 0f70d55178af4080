"""The `deploy` step run by the daemon as a real process: green is a container of the lab's
Odoo image (watchdog/lab/odoo_image.py) on `--network host`, recreated on the rollout's
`--version` tag; `kill -9` of the daemon while the new container is coming up leaves, after
the restart, the previous container running under its name.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.polling import wait
from watchdog.lab.docker import docker_unavailable
from watchdog.lab.odoo_image import image
from watchdog.lab.procs import free_port, http_ok
from watchdog.lab.stack import LabStack
from watchdog.steps.deploy import ASIDE

UNAVAILABLE = docker_unavailable()
pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(UNAVAILABLE is not None, reason=f"docker: {UNAVAILABLE}"),
]


def remove(cli: Any, name: str) -> None:
    import docker.errors

    with contextlib.suppress(docker.errors.NotFound):
        cli.api.remove_container(name, force=True, v=True)


@pytest.fixture
def green_lab(tmp_path: Path, odoo_docker: Any) -> Iterator[Callable[[float], LabStack]]:
    """A LabStack whose green colour is the container `name`, :16.0 on a free port, and whose
    site deploys `odoo-watchdog-odoo:{{ version }}` before the preflight."""
    name = f"wdtest-e2e-deploy-{os.getpid()}"
    port = free_port()
    labs: list[LabStack] = []
    remove(odoo_docker, name)
    remove(odoo_docker, name + ASIDE)
    box = odoo_docker.containers.run(
        image("16.0"), name=name, detach=True, network_mode="host",
        environment={"ODOO_PORT": str(port)}, labels={"com.example.color": "green"},
        restart_policy={"Name": "unless-stopped"})
    wait(lambda: http_ok(f"http://127.0.0.1:{port}/web/health"), 20, "the :16.0 container up")

    def make(timeout: float) -> LabStack:
        lab = LabStack(tmp_path / "lab", site_extra={
            # blue's container is never deployed to (the rollouts go to green): the config
            # wants one on each colour when deploy recreates containers.
            "colors": {"blue": {"server": "odoo-blue", "url": "http://127.0.0.1:1",
                                "container": name + "-blue-unused"},
                       "green": {"server": "odoo-green", "url": f"http://127.0.0.1:{port}",
                                 "container": name}},
            "rollout": {"strategy": "canary", "interval": "1s", "smoke": ["health"],
                        "steps": [{"weight": 10, "hold": "1h"}, {"weight": 100}]},
            "prepare": [{"deploy": {"image": "odoo-watchdog-odoo:{{ version }}",
                                    "timeout": f"{timeout}s", "pull": False}}],
        })
        labs.append(lab)
        lab.start(daemon=False)
        # blue's url: the real stand-in (known only once it runs)
        raw = lab.config_path.read_text().replace("http://127.0.0.1:1", lab.blue.url)
        lab.config_path.write_text(raw)
        lab.start_daemon()
        return lab

    try:
        yield make
    finally:
        for lab in labs:
            lab.stop()
        remove(odoo_docker, name)
        remove(odoo_docker, name + ASIDE)
    assert box.id


def container(cli: Any, name: str) -> dict[str, Any] | None:
    import docker.errors

    try:
        return dict(cli.api.inspect_container(name))
    except docker.errors.NotFound:
        return None


def image_of(cli: Any, attrs: dict[str, Any]) -> str:
    tags: list[str] = cli.api.inspect_image(attrs["Image"])["RepoTags"]
    return tags[0] if tags else attrs["Image"]


def events(lab: LabStack) -> list[tuple[str, str]]:
    return [(e["kind"], e["message"]) for e in lab.site().get("events", [])]


def test_deploy_recreates_green_on_the_versions_tag_then_the_preflight_runs(
        green_lab: Callable[[float], LabStack], odoo_docker: Any) -> None:
    lab = green_lab(20.0)
    name = lab.site_extra["colors"]["green"]["container"]
    lab.client().post("/api/v1/sites/odoo/rollouts", {"to": "green", "version": "17.0"})
    view = wait(lambda: (v := lab.site())["phase"] in ("progressing", "aborted") and v, 40,
                "past preparing")
    assert view["phase"] == "progressing", events(lab)[-6:]
    passed = [m for k, m in events(lab) if k == "prepare_step" and " deploy passed in " in m]
    assert passed and f"{name} recreated from odoo-watchdog-odoo:17.0" in passed[0]
    attrs = container(odoo_docker, name)
    assert attrs is not None and attrs["State"]["Running"]
    assert image_of(odoo_docker, attrs) == image("17.0")
    assert container(odoo_docker, name + ASIDE) is None
    lab.client().post("/api/v1/sites/odoo/abort", {"reason": "test done"})


def test_kill_9_during_a_deploy_leaves_the_previous_container_running(
        green_lab: Callable[[float], LabStack], odoo_docker: Any) -> None:
    lab = green_lab(6.0)
    name = lab.site_extra["colors"]["green"]["container"]
    before = container(odoo_docker, name)
    assert before is not None
    # :broken never answers /web/health: the step waits, with the old container aside.
    lab.client().post("/api/v1/sites/odoo/rollouts", {"to": "green", "version": "broken"})
    wait(lambda: container(odoo_docker, name + ASIDE) is not None
         and container(odoo_docker, name) is not None, 30, "the new container coming up")
    assert lab.daemon is not None and lab.daemon.proc is not None
    os.kill(lab.daemon.proc.pid, signal.SIGKILL)
    lab.daemon.proc.wait(timeout=10)
    lab.start_daemon()
    view = wait(lambda: (v := lab.site())["phase"] == "aborted" and v, 40,
                "the rollout aborted after the restart")
    assert view["weights"] == {"blue": 100, "green": 0}
    after = container(odoo_docker, name)
    assert after is not None and after["Id"] == before["Id"], "the previous container"
    assert after["State"]["Running"]
    assert image_of(odoo_docker, after) == image("16.0")
    assert container(odoo_docker, name + ASIDE) is None
    kinds = events(lab)
    assert any((k == "cleanup" and "wdprev" in m) or "put back" in m for k, m in kinds), kinds
