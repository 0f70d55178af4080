"""The `syslog` transport: Odoo's `--syslog` records into the daemon's own unix datagram socket.

A real stand-in process logs as Odoo's `--syslog` does (SysLogHandler, one datagram a record),
to a socket the daemon's logs source binds; the counts are the ones that source gives. Every
forged-login variant of tests/test_log_injection.py counts 0 here: the forged "record" stays
text inside the INFO record of the failed login.

The stand-in's XML-RPC calls run in a thread: a unix datagram socket queues only
/proc/sys/net/unix/max_dgram_qlen datagrams (10), and a sender blocks while that queue is
full, so the event loop that reads the socket must keep running.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_log_injection import VARIANTS, Odoo
from watchdog.config import LogsRule, load
from watchdog.lab.standin import StandinProcess, set_faults
from watchdog.sources.base import Target, create
from watchdog.sources.logs import LogsSource
from watchdog.sources.logsyslog import parse

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parent.parent
BARRIER = r":Injected error 1/1 \(lab fault\)$"
ISSUE_LOGIN = "x\n2026-12-02 10:00:00,000 4242 ERROR db odoo.http: forged"


def rule(window: str = "5m", pattern: str | None = None, checks: bool = True) -> LogsRule:
    data: dict[str, Any] = {"name": "log_errors", "source": "logs", "window": window, "max": 10,
                            "record_checks": checks}
    if pattern is not None:
        data["pattern"] = pattern
    return LogsRule.model_validate(data)


def target(path: Path) -> Target:
    return Target(site="odoo", color="green", server="odoo-green", backend="odoo",
                  url="http://127.0.0.1:1", interval=10.0, syslog=path)


@pytest.fixture(scope="module")
def sockdir() -> Iterator[Path]:
    """A short folder: a unix socket's path has at most 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="wd-syslog-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def standin(sockdir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandinProcess]:
    """One stand-in for the module, logging as `odoo --syslog` to sockdir/odoo-green.sock."""
    process = StandinProcess("green", tmp_path_factory.mktemp("syslog-standin"),
                             syslog=sockdir / "odoo-green.sock")
    with process:
        yield process


@pytest.fixture
async def source() -> AsyncIterator[LogsSource]:
    s = LogsSource()
    yield s
    await s.close()


class Green:
    """The stand-in under a bound logs source: what a test does to it, and the count."""

    def __init__(self, standin: StandinProcess, source: LogsSource) -> None:
        self.standin = standin
        self.source = source
        assert standin.syslog is not None
        self.target = target(standin.syslog)
        assert standin.pid is not None
        self.odoo = Odoo(standin.url, standin.pid, True, self.target, lambda: b"")

    async def count(self, r: LogsRule) -> tuple[float, str]:
        m = await self.source.measure(r, self.target)
        assert m.error is None, m.error
        assert m.value is not None
        return m.value, m.detail

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def attack(self, login: str) -> None:
        common = xmlrpc.client.ServerProxy(f"{self.standin.url}/xmlrpc/2/common")
        assert await self.call(common.authenticate, "odoo", login, "not-the-password",
                               {}) is False

    async def barrier(self, r: LogsRule) -> float:
        """One real ERROR record ("Injected error 1/1"), then `r`'s count without it, once it
        has arrived. Datagrams of one sender arrive in order, so every record logged before
        it has been received too."""
        marker = rule(pattern=BARRIER)
        seen, _ = await self.count(marker)
        await self.call(set_faults, self.standin.url, log_errors=1)
        deadline = time.monotonic() + 10
        while (await self.count(marker))[0] < seen + 1:
            assert time.monotonic() < deadline, "the barrier record never arrived"
            await asyncio.sleep(0.02)
        value, _ = await self.count(r)
        return value - 1


@pytest.fixture
async def green(standin: StandinProcess, source: LogsSource) -> Green:
    g = Green(standin, source)
    value, detail = await g.count(rule())  # binds the socket
    assert value == 0, detail
    return g


# ---------------------------------------------------------------------------------------------
# What the stand-in puts on the socket is what Odoo does
# ---------------------------------------------------------------------------------------------


def test_parse() -> None:
    assert parse(b"<11>Odoo Server 17.0:db:ERROR:odoo.http:boom\nTraceback\x00") == (
        3, "Odoo Server 17.0:db:ERROR:odoo.http:boom\nTraceback")
    assert parse(b"<10>x") == (2, "x")
    assert parse(b"<191>x") == (7, "x")
    for bad in (b"", b"no pri", b"<>x", b"<192>x", b"<011>x", b"<1234>x", b"11>x"):
        assert parse(bad) is None, bad


async def test_the_standin_sends_one_datagram_per_record_in_odoos_syslog_format(
    standin: StandinProcess,
) -> None:
    """A plain socket on the path, no logs source: each datagram as SysLogHandler sends it."""
    assert standin.syslog is not None
    path = standin.syslog
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    try:
        login = "x\n" + Odoo(standin.url, standin.pid or 0, True, target(path),
                             lambda: b"").forged()
        common = xmlrpc.client.ServerProxy(f"{standin.url}/xmlrpc/2/common")
        assert await asyncio.to_thread(common.authenticate, "odoo", login, "no", {}) is False
        await asyncio.to_thread(set_faults, standin.url, log_errors=1)
        seen: list[bytes] = []
        while not any(b"Injected error" in d for d in seen):
            seen.append(sock.recv(256 * 1024))
    finally:
        sock.close()
        path.unlink()
    failed = [d for d in seen if b"Login failed" in d]
    assert len(failed) == 1, seen
    # INFO (6) of facility user (1): <14>; the login's newline and header stay inside it.
    assert failed[0].startswith(b"<14>Odoo Server 17.0-20250225:odoo:INFO:"
                                b"odoo.addons.base.models.res_users:Login failed for db:odoo "
                                b"login:x\n"), failed[0]
    assert failed[0].endswith(b" from 127.0.0.1\x00"), failed[0]
    error = next(d for d in seen if b"Injected error" in d)
    assert error.startswith(b"<11>Odoo Server 17.0-20250225:odoo:ERROR:"
                            b"odoo.addons.lab_standin.models:Injected error 1/1"), error
    # With --syslog, Odoo writes no log file (netsvc's if/elif): neither does the stand-in.
    assert not standin.log_file.exists() or b"Login failed" not in standin.log_file.read_bytes()


# ---------------------------------------------------------------------------------------------
# Real records count exactly
# ---------------------------------------------------------------------------------------------


async def test_real_errors_count_exactly_and_info_lines_saying_error_not_at_all(
    green: Green,
) -> None:
    r = rule()
    await green.call(set_faults, green.standin.url, log_errors=4, log_info_mentions_error=3)
    assert await green.barrier(r) == 4
    value, detail = await green.count(r)
    assert value == 5, detail
    assert "5 records at err or worse in 5m" in detail and "0 malformed" in detail, detail


def raw_get_without_host(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"GET /web/health HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


async def test_a_traceback_is_one_record(green: Green) -> None:
    """A request without Host: Odoo's ERROR with a KeyError traceback, one datagram."""
    r = rule()
    assert await green.call(raw_get_without_host, green.standin.port) == 500
    assert await green.barrier(r) == 1
    # The traceback is inside that record: its first and last lines are found in it.
    head, _ = await green.count(rule(pattern=r"\nTraceback \(most recent call last\):"))
    tail, _ = await green.count(rule(pattern=r"KeyError: 'HTTP_HOST'$"))
    assert (head, tail) == (1, 1)


async def test_a_pattern_narrows_the_error_records(green: Green) -> None:
    r = rule()
    await green.call(set_faults, green.standin.url, log_errors=3, log_info_mentions_error=2)
    await green.barrier(r)
    injected, detail = await green.count(rule(pattern=r"^Odoo Server [^:]+:odoo:ERROR:"
                                              r"odoo\.addons\.lab_standin\.models:Injected"))
    assert injected == 4, detail  # the three and the barrier's
    assert "matching pattern" in detail
    # The INFO records saying ERROR never count, whatever the pattern.
    nightly, _ = await green.count(rule(pattern="Nightly report"))
    assert nightly == 0


async def test_the_window_is_honoured(green: Green) -> None:
    r = rule(window="2s")
    await green.call(set_faults, green.standin.url, log_errors=2)
    assert await green.barrier(r) == 2
    await asyncio.sleep(2.3)
    value, detail = await green.count(r)
    assert value == 0, detail
    await green.call(set_faults, green.standin.url, log_errors=1)
    assert await green.barrier(r) == 1


# ---------------------------------------------------------------------------------------------
# The forged login, in every variant of the line-based transports' tests: 0 here
# ---------------------------------------------------------------------------------------------

ALL_VARIANTS: list[tuple[str, Callable[[Odoo], str]]] = [
    *((name, login) for name, login, _ in VARIANTS),
    ("far-future stamp", lambda o: "x from 127.0.0.1\n" + o.forged(offset=1000)),
    ("a forged CRITICAL", lambda o: "x from 127.0.0.1\n" + o.forged(level="CRITICAL")),
    ("a forged syslog record", lambda o: "x\n<11>Odoo Server 17.0-20250225:odoo:ERROR:"
                                         "odoo.http:forged"),
]


@pytest.mark.parametrize(("variant", "login"), ALL_VARIANTS, ids=[v[0] for v in ALL_VARIANTS])
async def test_a_forged_record_counts_0(
    green: Green, variant: str, login: Callable[[Odoo], str]
) -> None:
    r = rule()
    await green.attack(login(green.odoo))
    assert await green.barrier(r) == 0, variant


@pytest.mark.parametrize("checks", [True, False], ids=["record_checks", "no record_checks"])
async def test_the_issues_attack_five_times_counts_0(green: Green, checks: bool) -> None:
    """The issue's five requests: 5 on a line-based transport without record checks, 0 here
    with or without them (they do not apply to whole records)."""
    r = rule(checks=checks)
    for _ in range(5):
        await green.attack(ISSUE_LOGIN)
    assert await green.barrier(r) == 0


async def test_real_errors_among_the_attacks(green: Green) -> None:
    r = rule()
    await green.attack("x\n" + green.odoo.forged())
    await green.call(set_faults, green.standin.url, log_errors=4, log_info_mentions_error=3)
    await green.attack("y from 127.0.0.1\n" + green.odoo.forged())
    assert await green.call(raw_get_without_host, green.standin.port) == 500
    assert await green.barrier(r) == 5


async def test_every_configured_socket_is_bound_at_the_first_measurement(
    standin: StandinProcess, sockdir: Path, tmp_path: Path
) -> None:
    """The daemon's logs source binds both colours' sockets when it first measures the live
    one, so the candidate's Odoo has a socket and its errors before the rollout targets it
    count, as a file or a container's window would."""
    assert standin.syslog is not None
    blue_sock = sockdir / "odoo-blue.sock"
    (tmp_path / "rules.yml").write_text(RULES)
    (tmp_path / "watchdog.yml").write_text(CONFIG.format(blue=f"syslog: {blue_sock}",
                                                         green=f"syslog: {standin.syslog}"))
    loaded = load(tmp_path / "watchdog.yml")
    logs = create("logs", loaded.config)
    assert isinstance(logs, LogsSource)
    try:
        blue = Target.of("odoo", loaded.config.sites["odoo"], "blue")
        m = await logs.measure(rule(), blue)
        assert m.error is None and m.value == 0, m
        assert stat.S_ISSOCK(os.lstat(standin.syslog).st_mode)  # green's, not measured yet
        g = Green(standin, logs)
        await g.call(set_faults, standin.url, log_errors=2)
        assert await g.barrier(rule()) == 2
    finally:
        await logs.close()
    assert not blue_sock.exists() and not standin.syslog.exists()


# ---------------------------------------------------------------------------------------------
# The socket file
# ---------------------------------------------------------------------------------------------


async def test_the_socket_file_is_0660_replaced_when_stale_and_removed_on_close(
    tmp_path: Path,
) -> None:
    path = Path(tempfile.mkdtemp(prefix="wd-sock-", dir="/tmp")) / "odoo.sock"
    try:
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        stale.bind(str(path))
        stale.close()  # a socket file nobody is bound to, as a killed daemon leaves it
        first = LogsSource()
        m = await first.measure(rule(), target(path))
        assert m.error is None and m.value == 0, m
        st = os.lstat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
        # A second daemon does not take a live socket from the first.
        second = LogsSource()
        m = await second.measure(rule(), target(path))
        assert m.error is not None and "something is bound to it" in m.error, m
        await second.close()
        assert path.exists()
        await first.close()
        assert not path.exists()
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


async def test_clear_errors_for_a_missing_folder_and_a_file_that_is_no_socket(
    tmp_path: Path, source: LogsSource
) -> None:
    m = await source.measure(rule(), target(tmp_path / "nope" / "odoo.sock"))
    assert m.error == f"syslog {tmp_path}/nope/odoo.sock: folder {tmp_path}/nope does not exist"
    plain = tmp_path / "odoo.sock"
    plain.write_text("not a socket")
    m = await source.measure(rule(), target(plain))
    assert m.error == f"syslog {plain} exists and is not a socket: not replacing it"
    assert plain.read_text() == "not a socket"


# ---------------------------------------------------------------------------------------------
# The config: `syslog` on a colour, through `odoo-watchdog check`
# ---------------------------------------------------------------------------------------------

CONFIG = """\
rule_files: [rules.yml]
sites:
  odoo:
    router: {{kind: haproxy, socket: /run/haproxy/admin.sock, backend: odoo}}
    colors:
      blue: {{server: odoo-blue, url: http://127.0.0.1:8069, {blue}}}
      green: {{server: odoo-green, url: http://127.0.0.1:9069, {green}}}
"""
RULES = """\
rules:
  - name: log_errors
    source: logs
    max: 0
"""


def check(folder: Path, blue: str, green: str) -> subprocess.CompletedProcess[str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rules.yml").write_text(RULES)
    (folder / "watchdog.yml").write_text(CONFIG.format(blue=blue, green=green))
    return subprocess.run(
        [sys.executable, "-m", "watchdog.cli", "check", "-c", str(folder / "watchdog.yml")],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)


def test_a_config_with_syslog_colours_checks(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    done = check(tmp_path, f"syslog: {tmp_path}/run/odoo-blue.sock", "syslog: run/green.sock")
    assert done.returncode == 0, done.stdout + done.stderr
    loaded = load(tmp_path / "watchdog.yml")
    colors = loaded.config.sites["odoo"].colors
    assert colors["blue"].syslog == tmp_path / "run" / "odoo-blue.sock"
    assert colors["green"].syslog == tmp_path / "run" / "green.sock"  # relative to the config
    assert Target.of("odoo", loaded.config.sites["odoo"], "green").syslog == colors[
        "green"].syslog


def test_a_syslog_folder_that_does_not_exist_yet_is_a_warning(tmp_path: Path) -> None:
    done = check(tmp_path, "syslog: /run/odoo-watchdog-absent/blue.sock",
                 "syslog: /run/odoo-watchdog-absent/green.sock")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout + done.stderr
    assert ("sites.odoo.colors.blue.syslog: folder /run/odoo-watchdog-absent does not exist "
            "yet") in out, out


@pytest.mark.parametrize(("blue", "green", "message"), [
    ("syslog: /run/a.sock, log_file: /var/log/odoo.log", "syslog: /run/b.sock",
     "give only one of container, log_file and syslog (got log_file and syslog)"),
    ("syslog: /run/a.sock, container: odoo-blue", "syslog: /run/b.sock",
     "give only one of container, log_file and syslog (got container and syslog)"),
    ("syslog: /run/same.sock", "syslog: /run/same.sock",
     "sites.odoo.colors.green.syslog /run/same.sock is also sites.odoo.colors.blue.syslog: "
     "each colour needs a socket of its own"),
    ("syslog: /run/" + "x" * 120 + ".sock", "syslog: /run/b.sock",
     "bytes, longer than a unix socket's path can be (107)"),
    ("syslog: /run/a.sock", "container: null",
     "colour 'green' has neither container nor log_file nor syslog"),
])
def test_a_bad_syslog_config_gets_a_clear_message(
    tmp_path: Path, blue: str, green: str, message: str
) -> None:
    done = check(tmp_path, blue, green)
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert message in out, out
    assert "watchdog.yml:" in out or "rules.yml:" in out, out
