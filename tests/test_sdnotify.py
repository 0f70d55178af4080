"""systemd's notify protocol: `SdNotify` against a real AF_UNIX datagram socket (a path and an
abstract name), then the real daemon process speaking it to a socket the test listens on, the way
systemd would for Type=notify with WatchdogSec=1s.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from watchdog.lab.procs import ManagedProcess, http_ok
from watchdog.lab.stack import LabStack
from watchdog.sdnotify import SdNotify


class Listener:
    """What systemd does with NOTIFY_SOCKET: a bound SOCK_DGRAM socket; every datagram is kept
    with the time.monotonic() it arrived."""

    def __init__(self, address: str) -> None:
        self.address = address  # "/path" or "@abstract"
        bind_to = "\0" + address[1:] if address.startswith("@") else address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(bind_to)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append((time.monotonic(), data.decode()))

    def snapshot(self) -> list[tuple[float, str]]:
        with self._lock:
            return list(self.messages)

    def texts(self) -> list[str]:
        return [m for _, m in self.snapshot()]

    def mark(self) -> int:
        return len(self.snapshot())

    def wait_for(self, first_line: str, after: int = 0, timeout: float = 10.0
                 ) -> tuple[int, float, dict[str, str]]:
        """Until a datagram whose first line is `first_line` arrives at index >= after: its
        index, arrival time and fields."""
        deadline = time.monotonic() + timeout
        while True:
            for index, (at, text) in enumerate(self.snapshot()):
                if index >= after and text.split("\n")[0] == first_line:
                    return index, at, fields(text)
            if time.monotonic() > deadline:
                raise AssertionError(f"no {first_line!r} after #{after} in {timeout:g}s; "
                                     f"got {self.texts()!r}")
            time.sleep(0.02)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


def fields(text: str) -> dict[str, str]:
    """`KEY=value` lines of one datagram (systemd's format)."""
    out = {}
    for line in text.split("\n"):
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=value: {line!r} in {text!r}"
        out[key] = value
    return out


@pytest.fixture
def listen() -> Iterator[Callable[[str], Listener]]:
    made: list[Listener] = []

    def make(address: str) -> Listener:
        made.append(Listener(address))
        return made[-1]

    yield make
    for listener in made:
        listener.close()


@pytest.fixture
def listener(tmp_path: Path, listen: Callable[[str], Listener]) -> Listener:
    """A listener on a path socket (the usual NOTIFY_SOCKET) in the test's directory."""
    path = str(tmp_path / "notify.sock")
    assert len(path) < 100, "sun_path holds 108 bytes"
    return listen(path)


@pytest.fixture
def notify(listener: Listener) -> Iterator[SdNotify]:
    """SdNotify with only NOTIFY_SOCKET set, to `listener`; closed after the test (close() is
    idempotent, so a test may close it itself)."""
    notifier = SdNotify({"NOTIFY_SOCKET": listener.address})
    yield notifier
    asyncio.run(notifier.close())


# ------------------------------------------------------------------------------------ SdNotify


def test_sends_one_datagram_per_message_to_a_path_socket(
    listener: Listener, notify: SdNotify,
) -> None:
    assert notify.enabled
    notify.ready("odoo: idle, blue 100% green 0%")
    notify.status("odoo: progressing, blue 90% green 10%")
    notify.stopping()
    listener.wait_for("STOPPING=1")
    assert listener.texts() == [
        "READY=1\nSTATUS=odoo: idle, blue 100% green 0%",
        "STATUS=odoo: progressing, blue 90% green 10%",
        "STOPPING=1",
    ]


def test_ready_without_status_is_one_line(listener: Listener, notify: SdNotify) -> None:
    notify.ready()
    listener.wait_for("READY=1")
    assert listener.texts() == ["READY=1"]


def test_abstract_socket_name(listen: Callable[[str], Listener]) -> None:
    listener = listen(f"@odoo-watchdog-test-{uuid.uuid4().hex}")
    notify = SdNotify({"NOTIFY_SOCKET": listener.address})
    assert notify.send("READY=1", "STATUS=abstract")
    listener.wait_for("READY=1")
    assert listener.texts() == ["READY=1\nSTATUS=abstract"]
    asyncio.run(notify.close())


def test_reloading_carries_monotonic_usec(listener: Listener, notify: SdNotify) -> None:
    before = time.monotonic_ns() // 1000
    notify.reloading()
    after = time.monotonic_ns() // 1000
    _, _, got = listener.wait_for("RELOADING=1")
    assert set(got) == {"RELOADING", "MONOTONIC_USEC"}
    assert before <= int(got["MONOTONIC_USEC"]) <= after


def test_no_socket_sends_nothing_and_never_raises(tmp_path: Path) -> None:
    quiet = SdNotify({})
    assert not quiet.enabled
    assert quiet.send("READY=1") is False
    quiet.ready("x")
    quiet.stopping()
    gone = SdNotify({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    assert gone.enabled
    assert gone.send("READY=1") is False  # ENOENT: a failed notify must not stop the daemon
    asyncio.run(gone.close())


@pytest.mark.parametrize(("env", "interval"), [
    ({"WATCHDOG_USEC": "1000000"}, 0.5),
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
    ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
    ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "not-a-pid"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({}, None),
])
def test_watchdog_interval_is_half_of_watchdog_usec_for_this_pid_only(
    env: dict[str, str], interval: float | None,
) -> None:
    assert SdNotify({"NOTIFY_SOCKET": "@x", **env}).watchdog_interval == interval


async def test_watchdog_pings_with_status_until_closed(listener: Listener) -> None:
    notify = SdNotify({"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "200000"})
    calls = 0

    def status() -> str:
        nonlocal calls
        calls += 1
        return f"tick {calls}"

    notify.start_watchdog(status)
    notify.start_watchdog(status)  # a second start is a no-op, not a second pinger
    await asyncio.sleep(0.55)
    await notify.close()
    count = listener.mark()
    await asyncio.sleep(0.3)
    texts = listener.texts()
    assert len(texts) == count, "pings went on after close()"
    # at 0, 0.1, ... 0.5 s: one pinger (two would double it), every 0.1 s
    assert 5 <= len(texts) <= 7, texts
    assert texts[:3] == ["WATCHDOG=1\nSTATUS=tick 1", "WATCHDOG=1\nSTATUS=tick 2",
                         "WATCHDOG=1\nSTATUS=tick 3"]


async def test_no_watchdog_task_without_watchdog_usec(
    listener: Listener, notify: SdNotify,
) -> None:
    notify.start_watchdog()
    await asyncio.sleep(0.2)
    await notify.close()
    assert listener.texts() == []


# ------------------------------------------------------------------------------------ the daemon


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabStack]:
    """HAProxy, the stand-ins and Prometheus; the daemon is started by each test itself."""
    stack = LabStack(tmp_path_factory.mktemp("sdnotify"))
    stack.start(daemon=False)
    try:
        yield stack
    finally:
        stack.stop()


def daemon_process(lab: LabStack, log_name: str, env: dict[str, str]) -> ManagedProcess:
    return ManagedProcess(
        "odoo-watchdog",
        [sys.executable, "-m", "watchdog.cli", "run", "-c", str(lab.config_path)],
        log_path=lab.workdir / log_name,
        ready=lambda: http_ok(f"{lab.api_url}/healthz"),
        env=env,
        ready_timeout=30,
    )


@pytest.mark.lab
def test_daemon_ready_watchdog_reload_and_stop(
    lab: LabStack, listener: Listener,
) -> None:
    proc = daemon_process(lab, "daemon-notify.log", {
        "NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "1000000"})
    try:
        proc.start()
        # READY=1 once started, with the state of every site (one site here).
        ready_index, ready_at, ready = listener.wait_for("READY=1")
        assert set(ready) == {"READY", "STATUS"}, ready
        assert ready["STATUS"] == "odoo: idle, blue 100% green 0%", ready
        assert not any(t.startswith("WATCHDOG=1") for t in listener.texts()[:ready_index]), \
            "a watchdog ping before READY=1"

        # WATCHDOG=1 every WATCHDOG_USEC / 2 = 0.5 s, each with the status.
        time.sleep(3.3)
        pings = [(at, fields(text)) for at, text in listener.snapshot()
                 if text.startswith("WATCHDOG=1")]
        assert 5 <= len(pings) <= 9, [at - ready_at for at, _ in pings]
        assert all(p["STATUS"].startswith("odoo: ") for _, p in pings), pings
        gaps = [b - a for (a, _), (b, _) in itertools.pairwise(pings)]
        assert 0.4 <= statistics.median(gaps) <= 0.65, gaps
        # systemd kills the service after WATCHDOG_USEC (1 s) without a ping.
        assert max(gaps) < 0.9, gaps
        assert pings[0][0] - ready_at < 0.6

        # SIGHUP: RELOADING=1, then READY=1 again once the reload is done.
        mark = listener.mark()
        proc.signal(signal.SIGHUP)
        reloading_index, _, reloading = listener.wait_for("RELOADING=1", after=mark)
        assert int(reloading["MONOTONIC_USEC"]) > 0
        again_index, _, again = listener.wait_for("READY=1", after=reloading_index + 1)
        assert again["STATUS"].startswith("odoo: idle")
        between = listener.texts()[mark:again_index]
        assert [t.split("\n")[0] for t in between if not t.startswith("WATCHDOG=1")] == [
            "RELOADING=1"], between
        assert http_ok(f"{lab.api_url}/healthz")

        # SIGTERM: STOPPING=1 and exit code 0.
        mark = listener.mark()
        proc.signal(signal.SIGTERM)
        assert proc.proc is not None
        code = proc.proc.wait(timeout=15)
        listener.wait_for("STOPPING=1", after=mark, timeout=2)
        assert code == 0, proc.tail()
        time.sleep(0.7)
        after_stop = listener.texts()
        stopping = max(i for i, t in enumerate(after_stop) if t == "STOPPING=1")
        assert not any(t.startswith("WATCHDOG=1") for t in after_stop[stopping + 1:]), \
            "watchdog pings after STOPPING=1 (the process exited)"
    finally:
        proc.stop()


@pytest.mark.lab
def test_daemon_sends_no_watchdog_pings_when_watchdog_pid_is_another_process(
    lab: LabStack, listener: Listener,
) -> None:
    proc = daemon_process(lab, "daemon-other-pid.log", {
        "NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "1000000",
        "WATCHDOG_PID": str(os.getpid())})  # this test's pid: not the daemon's
    try:
        proc.start()
        listener.wait_for("READY=1")
        time.sleep(1.6)  # three ping periods
        assert not [t for t in listener.texts() if t.startswith("WATCHDOG=1")], listener.texts()
        proc.signal(signal.SIGTERM)
        assert proc.proc is not None
        assert proc.proc.wait(timeout=15) == 0, proc.tail()
        listener.wait_for("STOPPING=1", timeout=2)
    finally:
        proc.stop()
