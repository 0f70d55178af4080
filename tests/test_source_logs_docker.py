"""The logs source against a real dockerd: containers of the lab's busybox image (`--network
none`) write Odoo-format lines, and the counts must be exact.

Needs a dockerd and the image `odoo-watchdog-busybox:lab` (`.ci/setup-docker.sh`, run by
`make test`); without them these tests are skipped, saying why. The test that stops dockerd
starts a private one of its own and stops only that one.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from watchdog.config import LogsRule
from watchdog.lab.docker import (
    BUSYBOX,
    IMAGE,
    Dockerd,
    LogContainer,
    client,
    docker_unavailable,
    ensure_image,
    odoo_line,
)
from watchdog.measurement import Measurement
from watchdog.rules import RuleStatus, State, evaluate
from watchdog.sources.base import Target, measure_all
from watchdog.sources.logs import LogsSource

UNAVAILABLE = docker_unavailable()
pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(UNAVAILABLE is not None, reason=f"docker: {UNAVAILABLE}"),
]

# Lines stamped when they are written, as Odoo's are: the source drops a line whose own stamp is
# more than a few seconds from docker's (RecordChecks in watchdog/sources/logcount.py).


def ERROR() -> str:
    return odoo_line("ERROR", "Exception during request handling.")


def CRITICAL() -> str:
    return odoo_line("CRITICAL", "Failed to initialize database `odoo`.", name="odoo.service")


def INFO_SAYS_ERROR() -> str:
    return odoo_line("INFO", "Nightly report: ERROR count is 0, no ERROR found",
                     name="odoo.addons.report")


def INFO() -> str:
    return odoo_line("INFO", '127.0.0.1 - - "GET /web/health HTTP/1.1" 200 - 1 0.001 0.002',
                     name="werkzeug")


def rule(window: str = "5m", max_: float = 10) -> LogsRule:
    return LogsRule.model_validate(
        {"name": "log_errors", "source": "logs", "window": window, "max": max_})


def target(container: str) -> Target:
    return Target(site="odoo", color="green", server="odoo-green", backend="odoo",
                  url="http://127.0.0.1:1", interval=10.0, container=container)


async def value(source: LogsSource, r: LogsRule, container: str) -> float:
    m = await source.measure(r, target(container))
    assert m.error is None, m.error
    assert m.value is not None
    return m.value


def read_count(m: Measurement) -> int:
    return int(m.detail.split("(")[1].split(" read")[0].replace(",", ""))


@pytest.fixture(scope="module")
def docker_client() -> Iterator[Any]:
    cli = client()
    yield cli
    cli.close()


@pytest.fixture
def container(docker_client: Any) -> Iterator[LogContainer]:
    box = LogContainer(docker_client).start()
    try:
        yield box
    finally:
        box.remove()


@pytest.fixture
async def source() -> AsyncIterator[LogsSource]:
    src = LogsSource()
    yield src
    await src.close()


# ---------------------------------------------------------------------------------------------


async def test_counts_are_exact_for_0_10_and_10000_lines_per_tick(
    source: LogsSource, container: LogContainer
) -> None:
    r = rule()
    assert await value(source, r, container.name) == 0

    container.emit([(INFO(), 20)])  # 0 matching lines in this tick
    m = await source.measure(r, target(container.name))
    assert (m.value, read_count(m)) == (0, 21)  # 20 and the sentinel

    container.emit([(ERROR(), 10), (INFO_SAYS_ERROR(), 10)])
    m = await source.measure(r, target(container.name))
    assert (m.value, read_count(m)) == (10, 21)
    assert m.detail.startswith("10 matching lines in 5m (21 read) from container ")

    container.emit([(ERROR(), 5_000), (INFO(), 5_000), (CRITICAL(), 5_000),
                    (INFO_SAYS_ERROR(), 5_000)])
    m = await source.measure(r, target(container.name))
    assert (m.value, read_count(m)) == (10_010, 20_001)

    m = await source.measure(r, target(container.name))  # nothing new: nothing counted twice
    assert (m.value, read_count(m)) == (10_010, 0)

    status = evaluate(r, RuleStatus(), m, now=time.time())
    assert status.state is State.FIRING  # max 10, for 0s


async def test_info_lines_that_mention_error_do_not_count(
    source: LogsSource, container: LogContainer
) -> None:
    r = rule()
    await value(source, r, container.name)
    container.emit([(INFO_SAYS_ERROR(), 50), (odoo_line("WARNING", "ERROR ERROR"), 5),
                    (odoo_line("INFO", "CRITICAL: nothing"), 5), (ERROR(), 1)])
    assert await value(source, r, container.name) == 1


async def test_a_traceback_counts_once(source: LogsSource, container: LogContainer) -> None:
    r = rule()
    await value(source, r, container.name)
    frames = [
        "Traceback (most recent call last):",
        '  File "/usr/lib/python3/dist-packages/odoo/http.py", line 2190, in __call__',
        "    response = request._serve_db()",
        "psycopg2.errors.SerializationFailure: ERROR 40001 could not serialize access",
    ]
    batches = []
    for _ in range(3):
        batches.append((ERROR(), 1))
        batches.extend((frame, 1) for frame in frames)
    container.emit(batches)
    assert await value(source, r, container.name) == 3


async def test_lines_written_while_reading_on_both_streams_are_counted_exactly(
    source: LogsSource, docker_client: Any
) -> None:
    """A writer alternates stdout and stderr (docker copies them in two goroutines, so the log
    is not in timestamp order) while the source reads as fast as it can."""
    batches, per_batch = 300, 100
    script = f"""
i=0
while [ $i -lt {batches} ]; do
  ts=$(date +"%Y-%m-%d %H:%M:%S")  # stamped as written, as Odoo's lines are
  awk -v b=$i -v ts="$ts" 'BEGIN {{ for (j = 0; j < {per_batch}; j++) {{
    l = ts ",000 4242 ERROR odoo odoo.http: batch " b " line " j
    if (j % 2) print l > "/dev/stderr"; else print l }} }}'
  usleep 1000
  i=$((i+1))
done
echo "2026-11-27 10:00:00,000 4242 INFO odoo lab: writer-done"
sleep 3600
"""
    api = docker_client.api
    name = f"wd-logs-{uuid.uuid4().hex[:8]}"
    created = api.create_container(IMAGE, ["sh", "-c", script], name=name,
                                   host_config=api.create_host_config(network_mode="none"))
    try:
        r = rule()
        api.start(created["Id"])
        seen = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            seen.append(await value(source, r, name))
            if b"writer-done" in api.logs(created["Id"], tail=2):
                break
        final = await value(source, r, name)
        assert final == batches * per_batch
        assert seen == sorted(seen) and len(seen) > 3  # it read while the writer wrote
        stamps = [line[:30] for line in api.logs(created["Id"], timestamps=True).splitlines()]
        assert stamps != sorted(stamps), "expected docker's log out of timestamp order"
    finally:
        api.remove_container(created["Id"], force=True)


async def test_a_restart_in_the_middle_of_the_window(
    source: LogsSource, container: LogContainer
) -> None:
    r = rule()
    await value(source, r, container.name)
    container.emit([(ERROR(), 5), (INFO(), 5)])
    assert await value(source, r, container.name) == 5
    container.emit([(ERROR(), 2)])  # written, not read yet
    container.restart()
    container.emit([(ERROR(), 3), (INFO(), 3)])
    m = await source.measure(r, target(container.name))
    assert m.value == 10, m.detail
    assert "re-created" not in m.detail  # same container, same log
    container.restart()
    assert await value(source, r, container.name) == 10


async def test_a_removed_container_is_an_error_and_a_recreated_one_is_read_again(
    source: LogsSource, docker_client: Any
) -> None:
    r = rule()
    name = f"wd-logs-{uuid.uuid4().hex[:8]}"
    first = LogContainer(docker_client, name).start()
    try:
        await value(source, r, name)
        first.emit([(ERROR(), 4)])
        assert await value(source, r, name) == 4
    finally:
        first.remove()

    m = await source.measure(r, target(name))
    assert m.value is None and m.error is not None
    assert "no such container" in m.error and name in m.error
    status = evaluate(r, RuleStatus(), m, now=100.0)
    assert status.state is State.HOLDING  # no_data: hold

    with LogContainer(docker_client, name) as second:
        second.emit([(ERROR(), 2), (INFO(), 2)])
        m = await source.measure(r, target(name))
        assert m.value == 2, m.detail  # the old container's errors are not the new one's
        assert "re-created" in m.detail
        second.emit([(ERROR(), 1)])
        assert await value(source, r, name) == 3


async def test_a_container_that_never_existed_is_an_error(source: LogsSource) -> None:
    m = await source.measure(rule(), target("wd-logs-no-such-container"))
    assert m.error is not None and "no such container" in m.error


async def test_measure_all_runs_docker_rules_with_the_others(
    source: LogsSource, container: LogContainer
) -> None:
    container.emit([(ERROR(), 3)])
    rules = [rule(), LogsRule.model_validate(
        {"name": "log_warnings", "source": "logs", "max": 0,
         "pattern": r"^\S+ \S+ \d+ WARNING "})]
    results = await measure_all({"logs": source}, rules, target(container.name))
    assert [m.value for m in results] == [3, 0]


@pytest.mark.skipif(shutil.which("dockerd") is None or not BUSYBOX.is_file(),
                    reason="needs dockerd and busybox-static to run a private dockerd")
async def test_dockerd_stopped_is_an_error_and_the_rule_holds(tmp_path: Path) -> None:
    """A dockerd of this test's own: stopping it touches no one else's containers."""
    dockerd = Dockerd(tmp_path)
    try:
        dockerd.start()
        cli = dockerd.client()
        ensure_image(cli)
        box = LogContainer(cli).start()
        source = LogsSource(docker_host=dockerd.base_url, timeout=5)
        r = rule()
        try:
            await value(source, r, box.name)
            box.emit([(ERROR(), 3), (INFO(), 3)])
            m = await source.measure(r, target(box.name))
            assert m.value == 3
            status = evaluate(r, RuleStatus(), m, now=100.0)
            assert status.state is State.OK

            dockerd.stop()
            started = time.monotonic()
            m = await source.measure(r, target(box.name))
            assert time.monotonic() - started < 5
            assert m.value is None and m.error is not None
            assert "unreachable" in m.error and dockerd.base_url in m.error, m.error
            status = evaluate(r, status, m, now=110.0)
            assert status.state is State.HOLDING
            assert status.state is not State.OK  # a rollout does not advance on it

            # The same dockerd again: the container is stopped, its log is still there.
            dockerd.start()
            m = await source.measure(r, target(box.name))
            assert m.value == 3, m.detail
            assert evaluate(r, status, m, now=120.0).state is State.OK
            box.remove()
        finally:
            await source.close()
            cli.close()
    finally:
        dockerd.cleanup()


def test_the_lab_image_is_busybox_without_network(docker_client: Any) -> None:
    api = docker_client.api
    info = api.inspect_image(IMAGE)
    assert info["Config"]["Cmd"] == ["/bin/sh"]
    out = docker_client.containers.run(IMAGE, ["sh", "-c", "ls /sys/class/net"],
                                       network_mode="none", remove=True)
    assert out.split() == [b"lo"]

