"""Issue 9, item 3: a failed login whose login holds a newline and an Odoo header writes a line
that looks like an ERROR record. The attack goes through the real stand-in (XML-RPC
`common.authenticate`, which logs `Login failed for db:%s login:%s from %s` with the login raw,
as Odoo's res_users `_login` does), and the count is the one the daemon's logs source gives.

Transports: the stand-in's log file (the stand-in on loopback), and docker (the stand-in run as
PID 1 of a busybox container with the host's Python bound in read-only, `--network host`, logging
to stdout, as the official image runs Odoo). The counts asserted are the ones docs/logs.md
"Log transports and forged records" documents: 0 for every variant the record checks stop, 1
for the residual ones.
"""

from __future__ import annotations

import time
import uuid
import xmlrpc.client
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from watchdog.config import LogsRule
from watchdog.lab.docker import IMAGE, client, docker_unavailable
from watchdog.lab.procs import free_port, http_ok
from watchdog.lab.standin import StandinProcess, set_faults
from watchdog.sources.base import Target
from watchdog.sources.logs import LogsSource

pytestmark = pytest.mark.lab

FORGED = "forged by a login"


def rule(checks: bool = True) -> LogsRule:
    return LogsRule.model_validate({"name": "log_errors", "source": "logs", "window": "5m",
                                    "max": 10, "record_checks": checks})


@dataclass
class Odoo:
    """One stand-in and how to reach it: its URL, its pid in the log, its clock and target."""

    url: str
    pid: int
    local_time: bool  # the stand-in's log stamps: local time (a file) or UTC (the container)
    target: Target
    log: Callable[[], bytes]

    def stamp(self, offset: float = 0.0) -> str:
        now = time.time() + offset
        parts = time.localtime(now) if self.local_time else time.gmtime(now)
        return time.strftime("%Y-%m-%d %H:%M:%S", parts) + f",{int(now % 1 * 1000):03d}"

    def forged(self, pid: int | None = None, offset: float = 0.0, level: str = "ERROR",
               message: str = FORGED, name: str = "odoo.http") -> str:
        return f"{self.stamp(offset)} {self.pid if pid is None else pid} {level} odoo {name}: " \
               f"{message}"

    def attack(self, login: str) -> None:
        """One unauthenticated `common.authenticate` with `login`; returns once logged."""
        marker = uuid.uuid4().hex
        common = xmlrpc.client.ServerProxy(f"{self.url}/xmlrpc/2/common")
        assert common.authenticate("odoo", f"{login} {marker}", "not-the-password", {}) is False
        deadline = time.monotonic() + 10
        while marker.encode() not in self.log():
            assert time.monotonic() < deadline, "the failed login never reached the log"
            time.sleep(0.02)


async def count(source: LogsSource, r: LogsRule, odoo: Odoo) -> tuple[float, str]:
    m = await source.measure(r, odoo.target)
    assert m.error is None, m.error
    assert m.value is not None
    return m.value, m.detail


def target(**where: Any) -> Target:
    return Target(site="odoo", color="green", server="odoo-green", backend="odoo",
                  url="http://127.0.0.1:1", interval=10.0, **where)


# ---------------------------------------------------------------------------------------------
# The two transports
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def file_odoo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Odoo]:
    standin = StandinProcess("green", tmp_path_factory.mktemp("inject-file"))
    with standin:
        assert standin.pid is not None
        log_file = standin.log_file
        yield Odoo(standin.url, standin.pid, True, target(log_file=log_file),
                   log_file.read_bytes)


@pytest.fixture(scope="module")
def docker_odoo() -> Iterator[Odoo]:
    reason = docker_unavailable()
    if reason is not None:
        pytest.skip(f"docker: {reason}")
    cli = client()
    api = cli.api
    root = Path(__file__).resolve().parents[1]
    python = root / ".venv" / "bin" / "python"
    # The host's Python, its libraries and the project, read-only, in the busybox image.
    binds = [p for p in ("/usr", "/lib", "/lib64", "/root/.pyenv", "/opt") if Path(p).is_dir()]
    binds += [str(root)] if not any(str(root).startswith(b + "/") for b in binds) else []
    port = free_port()
    name = f"wd-inject-{uuid.uuid4().hex[:8]}"
    created = api.create_container(
        IMAGE,
        [str(python), "-m", "watchdog.lab.standin", "--host", "127.0.0.1", "--port", str(port),
         "--color", "green", "--log-stdout"],
        name=name,
        environment={"PYTHONPATH": str(root), "PYTHONUNBUFFERED": "1",
                     "PYTHONDONTWRITEBYTECODE": "1"},
        host_config=api.create_host_config(network_mode="host",
                                           binds=[f"{b}:{b}:ro" for b in binds]),
        stop_signal="SIGKILL",
    )
    cid = str(created["Id"])
    try:
        api.start(cid)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while not http_ok(f"{url}/web/health", timeout=0.5):
            if time.monotonic() > deadline:
                pytest.fail(f"the stand-in in {name} did not start: {api.logs(cid)[-2000:]!r}")
            time.sleep(0.1)
        assert b" 1 INFO " in api.logs(cid)  # PID 1 of its container, as Odoo in the image

        def log() -> bytes:
            data: bytes = api.logs(cid, stdout=True, stderr=True)
            return data

        yield Odoo(url, 1, False, target(container=name), log)
    finally:
        api.remove_container(cid, force=True)
        cli.close()


@pytest.fixture(params=["file", "docker"])
def odoo(request: pytest.FixtureRequest) -> Odoo:
    fixture: Odoo = request.getfixturevalue(f"{request.param}_odoo")
    return fixture


@pytest.fixture
async def source() -> AsyncIterator[LogsSource]:
    s = LogsSource()
    yield s
    await s.close()


# ---------------------------------------------------------------------------------------------
# The attack, variant by variant
# ---------------------------------------------------------------------------------------------

# (name, login built from the Odoo under attack, forged lines counted)
VARIANTS: list[tuple[str, Callable[[Odoo], str], int]] = [
    # The issue's login: a time far away, a made-up pid.
    ("as in the issue", lambda o: "x\n2026-12-02 10:00:00,000 4242 ERROR db odoo.http: forged",
     0),
    ("wrong pid, time close", lambda o: "x\n" + o.forged(pid=o.pid + 7919), 0),
    ("right pid, time far", lambda o: "x\n" + o.forged(offset=-1000), 0),
    # The failed-login record is still open (no ` from <address>` yet): its next lines are it.
    ("right pid, time close", lambda o: "x\n" + o.forged(), 0),
    ("right pid, time close, five lines", lambda o: "x" + "".join(
        "\n" + o.forged() for _ in range(5)), 0),
    # A forger who knows the checks ends the first line as Odoo would ...
    ("ended first line, wrong pid", lambda o: "x from 127.0.0.1\n" + o.forged(pid=o.pid + 7919),
     0),
    ("ended first line, right pid, 1000 s early", lambda o: "x from 127.0.0.1\n"
     + o.forged(offset=-1000), 0),
    # ... and with the pid and the clock, is counted: the residual risk.
    ("ended first line, right pid, time close", lambda o: "x from 127.0.0.1\n" + o.forged(), 1),
    # Teaching it a pid of their own with a forged start-up line needs no pid at all.
    ("ended first line, forged start-up line", lambda o: "x from 127.0.0.1\n"
     + o.forged(pid=31337, level="INFO", name="odoo", message="Odoo version 17.0") + "\n"
     + o.forged(pid=31337), 1),
]


@pytest.mark.parametrize(("variant", "login", "counted"), VARIANTS,
                         ids=[v[0] for v in VARIANTS])
async def test_a_forged_record_counts_only_where_documented(
    source: LogsSource, odoo: Odoo, variant: str, login: Callable[[Odoo], str], counted: int
) -> None:
    r = rule()
    before, _ = await count(source, r, odoo)
    odoo.attack(login(odoo))
    after, detail = await count(source, r, odoo)
    assert after - before == counted, f"{variant}: {detail}"
    if not counted:
        assert "not counted (not records Odoo wrote)" in detail, detail


async def test_a_forged_far_future_line_counts_on_a_file_not_on_docker(
    source: LogsSource, odoo: Odoo
) -> None:
    """On a file the only bound on a record's time is the record before it: a later stamp
    passes (Odoo's local time and the daemon's may differ by any zone). Docker stamps lines
    itself."""
    r = rule()
    before, _ = await count(source, r, odoo)
    odoo.attack("x from 127.0.0.1\n" + odoo.forged(offset=1000))
    after, detail = await count(source, r, odoo)
    assert after - before == (1 if odoo.target.log_file else 0), detail


async def test_without_record_checks_the_issues_attack_counts(
    source: LogsSource, odoo: Odoo
) -> None:
    """`record_checks: false` is the old behaviour: five requests, five errors (issue 9)."""
    r = rule(checks=False)
    before, _ = await count(source, r, odoo)
    for _ in range(5):
        odoo.attack("x\n2026-12-02 10:00:00,000 4242 ERROR db odoo.http: forged")
    after, _ = await count(source, r, odoo)
    assert after - before == 5


async def test_real_errors_still_count_after_the_attacks(source: LogsSource, odoo: Odoo) -> None:
    """The stand-in's own ERROR records, tracebacks and INFO lines that say ERROR, among
    failed logins with and without newlines: exactly the real records count."""
    r = rule()
    before, _ = await count(source, r, odoo)
    odoo.attack("x\n" + odoo.forged())
    set_faults(odoo.url, log_errors=4, log_info_mentions_error=3)
    odoo.attack("an ordinary wrong login")
    set_faults(odoo.url, error_rate=1.0)
    for _ in range(2):
        with pytest.raises(Exception):  # noqa: B017 - a 500 from the injected fault
            xmlrpc.client.ServerProxy(f"{odoo.url}/xmlrpc/2/common").version()
    set_faults(odoo.url, error_rate=0.0)
    odoo.attack("y from 127.0.0.1\n" + odoo.forged(pid=odoo.pid + 7919))
    after, detail = await count(source, r, odoo)
    assert after - before == 4 + 2, detail
