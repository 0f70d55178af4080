"""Notifications: the JSON webhook and Slack bodies, retries, and never on the caller's path."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from watchdog.client import read_token
from watchdog.config import NotifyTarget
from watchdog.lab.procs import free_port
from watchdog.notify import QUEUE_SIZE, Notifier, Target, resolve
from watchdog.secrets import SecretError


@dataclass
class Receiver:
    """A real HTTP receiver on loopback that records what it gets and can misbehave."""

    url: str = ""
    got: list[dict[str, Any]] = field(default_factory=list)
    fail_first: int = 0
    delay: float = 0.0
    status: int = 200
    calls: int = 0


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver()

    async def hook(request: web.Request) -> web.Response:
        state.calls += 1
        if state.delay:
            await asyncio.sleep(state.delay)
        if state.calls <= state.fail_first:
            return web.Response(status=503)
        state.got.append(await request.json())
        return web.Response(status=state.status)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    state.url = f"http://127.0.0.1:{port}/hook"
    yield state
    await runner.cleanup()


async def wait_for(check: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_webhook_gets_json_with_site_kind_text_and_details(receiver: Receiver) -> None:
    notifier = Notifier([Target("webhook", receiver.url, 2.0)])
    notifier.start()
    try:
        notifier.post("odoo", "rolling_back", "odoo: rolling back", rule="error_rate")
        await wait_for(lambda: receiver.got)
    finally:
        await notifier.close()
    body = receiver.got[0]
    assert (body["site"], body["kind"], body["text"], body["rule"]) == (
        "odoo", "rolling_back", "odoo: rolling back", "error_rate")
    assert abs(body["at"] - time.time()) < 10


async def test_slack_gets_its_text_shape(receiver: Receiver) -> None:
    notifier = Notifier([Target("slack", receiver.url, 2.0)])
    notifier.start()
    try:
        notifier.post("odoo", "promoted", "odoo: promoted")
        await wait_for(lambda: receiver.got)
    finally:
        await notifier.close()
    assert receiver.got == [{"text": "*odoo-watchdog* odoo: promoted"}]


async def test_a_failing_receiver_is_retried_then_succeeds(receiver: Receiver) -> None:
    receiver.fail_first = 2
    notifier = Notifier([Target("webhook", receiver.url, 2.0)])
    notifier.start()
    try:
        notifier.post("odoo", "step", "odoo: step 2/3")
        await wait_for(lambda: receiver.got, timeout=15)
    finally:
        await notifier.close()
    assert receiver.calls == 3
    assert notifier.sent == 1 and notifier.failed == 0


async def test_a_refusing_receiver_is_not_retried(receiver: Receiver) -> None:
    receiver.status = 400
    notifier = Notifier([Target("webhook", receiver.url, 2.0)])
    notifier.start()
    try:
        notifier.post("odoo", "step", "x")
        await wait_for(lambda: notifier.failed == 1)
    finally:
        await notifier.close()
    assert receiver.calls == 1


async def test_a_slow_receiver_never_delays_the_caller(receiver: Receiver) -> None:
    receiver.delay = 5.0
    notifier = Notifier([Target("webhook", receiver.url, 0.5)])
    notifier.start()
    try:
        start = time.monotonic()
        for i in range(50):
            notifier.post("odoo", "step", f"n{i}")
        assert time.monotonic() - start < 0.05  # post() only queues
    finally:
        await notifier.close()


def test_queue_is_bounded_and_drops_the_oldest() -> None:
    async def run() -> Notifier:
        notifier = Notifier([Target("webhook", "http://127.0.0.1:9/none", 0.1)])  # not started
        for i in range(QUEUE_SIZE + 5):
            notifier.post("odoo", "step", f"n{i}")
        return notifier

    notifier = asyncio.run(run())
    assert notifier.queue.qsize() == QUEUE_SIZE
    assert notifier.dropped == 5
    assert notifier.queue.get_nowait().text == "n5"


def test_url_file_secrets_are_read_and_a_missing_one_is_named(tmp_path: Path) -> None:
    secret = tmp_path / "slack-url"
    secret.write_text("http://127.0.0.1:9000/secret\n")
    targets = resolve([NotifyTarget(kind="slack", url_file=Path("slack-url"))], tmp_path)
    assert targets == [Target("slack", "http://127.0.0.1:9000/secret", 5.0)]
    with pytest.raises(ValueError, match=r"url_file .*missing: No such file"):
        resolve([NotifyTarget(kind="slack", url_file=tmp_path / "missing")], tmp_path)


@pytest.mark.parametrize(("make", "says"), [
    (lambda p: p.write_text("  \n"), "{path} is empty"),
    (lambda p: p.mkdir(), "{path}: Is a directory"),
    (lambda p: None, "{path}: No such file or directory"),
])
def test_secret_files_name_the_key_and_the_path_when_they_cannot_be_used(
    tmp_path: Path, make: Any, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One reader for notify's url_file and the API's token_file (watchdog.secrets)."""
    monkeypatch.delenv("ODOO_WATCHDOG_TOKEN", raising=False)  # it would win over the file
    path = tmp_path / "secret"
    make(path)
    with pytest.raises(SecretError) as caught:
        resolve([NotifyTarget(kind="webhook", url_file=Path("secret"))], tmp_path)
    assert str(caught.value) == "notify webhook: url_file " + says.format(path=path)
    with pytest.raises(SecretError) as caught:
        read_token(Path("secret"), tmp_path)
    assert str(caught.value) == "api.token_file " + says.format(path=path)


@pytest.mark.lab
async def test_the_daemon_notifies_a_rollout_start_each_step_and_the_promotion(
    receiver: Receiver, tmp_path: Path
) -> None:
    from watchdog.lab.load import LoadClient
    from watchdog.lab.stack import LabStack

    lab = LabStack(tmp_path, steps=[{"weight": 50, "hold": "1s"}, {"weight": 100}], bake="1s",
                   notify_url=receiver.url)
    await asyncio.to_thread(lab.start)
    try:
        # Traffic, or the error_rate rule has no data and (rightly) holds the rollout.
        async with LoadClient(lab.proxy_url, concurrency=2, delay=0.02):
            await asyncio.to_thread(lab.client().post, "/api/v1/sites/odoo/rollouts",
                                    {"to": "green", "version": "17.0"})
            await wait_for(lambda: any(b["kind"] == "promoted" for b in receiver.got), 40)
    finally:
        await asyncio.to_thread(lab.stop)
    kinds = [b["kind"] for b in receiver.got]
    assert kinds[:1] == ["started"]
    assert kinds.count("step") == 2
    assert "promoted" in kinds
    promoted = next(b for b in receiver.got if b["kind"] == "promoted")
    assert promoted["site"] == "odoo" and promoted["weights"] == {"blue": 0, "green": 100}
    assert "green is live (17.0)" in promoted["text"]
