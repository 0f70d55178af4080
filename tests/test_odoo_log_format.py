"""Odoo's log lines as Odoo writes them, plain and coloured, through a file and through docker.

The lines are made here by Python's logging with Odoo's own format and formatters, rebuilt from
odoo/netsvc.py (16.0-19.0): the format string
`%(asctime)s %(pid)s %(levelname)s %(dbname)s %(name)s: %(message)s %(perf_info)s`
(`perf_info` empty but for werkzeug: a trailing space), `DBFormatter` (pid, and the dbname
the thread carries) and, on a TTY or with ODOO_PY_COLORS, `ColoredFormatter`, which sets
`record.levelname = COLOR_PATTERN % (30 + fg, 40 + bg, levelname)` with
`COLOR_PATTERN = "\\033[1;%dm\\033[1;%dm%s\\033[0m"` and LEVEL_COLOR_MAPPING below. A record
with `exc_info` is its line followed by `Traceback (most recent call last):` and the rest
(logging.Formatter.format). The docker tests print those bytes from a busybox container,
with a TTY (`docker run -t`: the pty ends lines with `\\r\\n`) and without.
"""

from __future__ import annotations

import io
import logging
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from watchdog.config import LogsRule
from watchdog.lab.docker import IMAGE, client, docker_unavailable
from watchdog.rulefiles import load_rule_file
from watchdog.rules import RuleStatus, State, evaluate
from watchdog.sources.base import Target
from watchdog.sources.logcount import Records, clean
from watchdog.sources.logs import LogsSource

ROOT = Path(__file__).resolve().parent.parent

# --- odoo/netsvc.py, as released ------------------------------------------------------------

BLACK, RED, GREEN, YELLOW, BLUE, MAGENTA, CYAN, WHITE, _NOTHING, DEFAULT = range(10)
RESET_SEQ = "\033[0m"
COLOR_SEQ = "\033[1;%dm"
COLOR_PATTERN = f"{COLOR_SEQ}{COLOR_SEQ}%s{RESET_SEQ}"
LEVEL_COLOR_MAPPING = {
    logging.DEBUG: (BLUE, DEFAULT),
    logging.INFO: (GREEN, DEFAULT),
    logging.WARNING: (YELLOW, DEFAULT),
    logging.ERROR: (RED, DEFAULT),
    logging.CRITICAL: (WHITE, RED),
}
FORMAT = "%(asctime)s %(pid)s %(levelname)s %(dbname)s %(name)s: %(message)s %(perf_info)s"
PID = 4242


class DBFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        record.pid = PID  # os.getpid() in Odoo
        record.dbname = getattr(threading.current_thread(), "dbname", "?")
        if not hasattr(record, "perf_info"):
            record.perf_info = ""  # Odoo's record factory
        return super().format(record)


class ColoredFormatter(DBFormatter):
    def format(self, record: logging.LogRecord) -> str:
        fg_color, bg_color = LEVEL_COLOR_MAPPING.get(record.levelno, (GREEN, DEFAULT))
        record.levelname = COLOR_PATTERN % (30 + fg_color, 40 + bg_color, record.levelname)
        return super().format(record)


class Odoo:
    """Loggers of Odoo's names writing through one handler, as init_logger sets it up."""

    def __init__(self, stream: Any, coloured: bool) -> None:
        self.handler = logging.StreamHandler(stream)
        self.handler.setFormatter(ColoredFormatter(FORMAT) if coloured else DBFormatter(FORMAT))

    def log(self, name: str, level: int, msg: str, *args: object, db: str = "odoo",
            exc_info: bool = False) -> None:
        logger = logging.Logger(name)  # not registered: the test's own
        logger.addHandler(self.handler)
        thread = threading.current_thread()
        thread.dbname = db  # type: ignore[attr-defined]
        try:
            logger.log(level, msg, *args, exc_info=exc_info)
        finally:
            del thread.dbname  # type: ignore[attr-defined]

    def startup(self) -> None:
        self.log("odoo", logging.INFO, "Odoo version %s", "17.0-20250101", db="?")

    def request_error(self) -> None:
        """odoo/http.py: an exception in a request, logged with its traceback."""
        try:
            environ: dict[str, str] = {}
            environ["HTTP_HOST"]  # the 500 of a request without Host
        except KeyError:
            self.log("odoo.http", logging.ERROR, "Exception during request handling.",
                     exc_info=True)

    def cron_exception(self) -> None:
        """ir_cron._process_jobs: `_logger.warning('Exception in cron:', exc_info=True)`."""
        try:
            raise ValueError("cron went wrong")
        except ValueError:
            self.log("odoo.addons.base.models.ir_cron", logging.WARNING, "Exception in cron:",
                     exc_info=True)

    def everyday(self) -> None:
        """Lines that must never count as errors or as a broken deployment."""
        self.log("werkzeug", logging.INFO, '127.0.0.1 - - [%s] "GET /web/health HTTP/1.1" 200 - ',
                 "26/Nov/2026 10:00:00")
        self.log("odoo.addons.report", logging.INFO, "Nightly report: ERROR count is 0, no ERROR")
        self.log("odoo.modules.loading", logging.INFO, "invalid module names, ignored: quoted")
        self.log("odoo.http", logging.WARNING,
                 "said: odoo.modules.loading: invalid module names, ignored: x")
        self.log("odoo.addons.base.models.ir_cron", logging.WARNING,
                 "Skipping database %s because of modules to install/upgrade/remove.", "odoo")
        self.log("odoo.modules.graph", logging.WARNING, "module %s: in a dependency loop, skipped",
                 "loopy")
        self.log("odoo.modules.graph", logging.INFO, "module %s: Unmet dependencies: %s", "a",
                 "b")

    def broken_deployment(self) -> None:
        """The three WARNINGs of rules/odoo.yml broken_deployment_lines, in their wordings."""
        # odoo/modules/graph.py (16.0-18.0) and module_graph.py (19.0)
        self.log("odoo.modules.graph", logging.WARNING, "module %s: not installable, skipped",
                 "sale_custom", db="?")
        self.log("odoo.modules.module_graph", logging.WARNING,
                 "module %s: not installable, skipped", "sale_custom", db="?")
        # odoo/modules/loading.py _check_module_names
        self.log("odoo.modules.loading", logging.WARNING, "invalid module names, ignored: %s",
                 ", ".join(["sael", "stcok"]))
        # odoo/addons/base/models/ir_cron.py _process_jobs (the runner sets the thread's dbname)
        self.log("odoo.addons.base.models.ir_cron", logging.WARNING,
                 "Skipping database %s as its base version is not %s.", "odoo", "17.0.1.3")


def odoo_text(coloured: bool, *calls: str) -> str:
    out = io.StringIO()
    odoo = Odoo(out, coloured)
    for call in calls:
        getattr(odoo, call)()
    return out.getvalue()


# --- helpers ----------------------------------------------------------------------------------


def errors_rule(window: str = "1h", pattern: str | None = None) -> LogsRule:
    data: dict[str, Any] = {"name": "log_errors", "source": "logs", "window": window, "max": 10}
    if pattern is not None:
        data["pattern"] = pattern
    return LogsRule.model_validate(data)


def shipped_rule(name: str) -> LogsRule:
    rules, _ = load_rule_file(ROOT / "rules" / "odoo.yml")
    (rule,) = [r for r in rules if r.name == name]
    assert isinstance(rule, LogsRule)
    return rule


def file_target(path: Path) -> Target:
    return Target(site="odoo", color="green", server="odoo-green", backend="odoo",
                  url="http://127.0.0.1:1", interval=10.0, log_file=path)


def docker_target(container: str) -> Target:
    return Target(site="odoo", color="green", server="odoo-green", backend="odoo",
                  url="http://127.0.0.1:1", interval=10.0, container=container)


async def file_value(source: LogsSource, rule: LogsRule, path: Path) -> float:
    m = await source.measure(rule, file_target(path))
    assert m.error is None, m.error
    assert m.value is not None
    return m.value


def append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


@pytest.fixture
async def source() -> AsyncIterator[LogsSource]:
    src = LogsSource()
    yield src
    await src.close()


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "odoo.log"
    path.write_text("")
    return path


# --- the bytes Odoo writes --------------------------------------------------------------------


def test_the_coloured_levels_are_odoos_bytes() -> None:
    text = odoo_text(True, "startup", "request_error", "cron_exception")
    assert "\x1b[1;32m\x1b[1;49mINFO\x1b[0m ? odoo: Odoo version 17.0-20250101 \n" in text
    assert "\x1b[1;31m\x1b[1;49mERROR\x1b[0m odoo odoo.http: Exception during request" in text
    assert "\x1b[1;33m\x1b[1;49mWARNING\x1b[0m odoo odoo.addons.base.models.ir_cron: " in text
    critical = io.StringIO()
    Odoo(critical, True).log("odoo.service.server", logging.CRITICAL, "Failed to initialize")
    assert f" {PID} \x1b[1;37m\x1b[1;41mCRITICAL\x1b[0m odoo odoo.service.server: " in (
        critical.getvalue())
    # A record with a traceback: its line (the empty perf_info's space), then the traceback.
    assert re.search(r"Exception during request handling\. \nTraceback \(most recent call "
                     r"last\):\n  File .*\n(?:.*\n)+?KeyError: 'HTTP_HOST'\n", text)


def test_clean_makes_the_coloured_text_the_plain_text() -> None:
    calls = ("startup", "everyday", "request_error", "broken_deployment", "cron_exception")
    plain, coloured = odoo_text(False, *calls), odoo_text(True, *calls)
    assert "\x1b" in coloured and plain != coloured

    def unstamped(text: str) -> str:  # the two texts were written some microseconds apart
        return re.sub(r"(?m)^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", "", text)

    assert unstamped(clean(coloured)) == unstamped(plain)
    assert clean(coloured.replace("\n", "\r\n")) == clean(coloured)  # a TTY's line ends
    assert clean(plain) is plain


def test_records_count_once_whatever_line_of_them_matches() -> None:
    lines = clean(odoo_text(True, "request_error", "request_error")).rstrip("\n").split("\n")
    header = [i for i, line in enumerate(lines) if "Exception during" in line]
    anywhere = [i for i, line in enumerate(lines) if re.search(r"HTTP_HOST|Traceback|File", line)]
    assert Records().pick(lines, anywhere, set()) == header
    tail = [i for i, line in enumerate(lines) if line.startswith("KeyError")]
    assert Records().pick(lines, tail, set()) == header
    # Lines without a header before any record was read: their record began before.
    assert Records().pick(lines[1:], [i - 1 for i in anywhere if i], set()) == [header[1] - 1]


# --- through a file -----------------------------------------------------------------------


@pytest.mark.parametrize("coloured", [False, True], ids=["plain", "coloured"])
async def test_a_file_counts_errors_and_tracebacks_once_coloured_or_not(
    source: LogsSource, log: Path, coloured: bool
) -> None:
    rule = errors_rule()
    tail = errors_rule(pattern=r"^KeyError: 'HTTP_HOST'$")  # a traceback's last line
    frames = errors_rule(pattern=r'^  File "')  # every frame of a traceback
    for r in (rule, tail, frames):
        assert await file_value(source, r, log) == 0
    append(log, odoo_text(coloured, "startup", "everyday", "request_error", "everyday",
                          "request_error", "cron_exception", "broken_deployment"))
    assert await file_value(source, rule, log) == 2  # the two ERROR records, not a frame
    assert await file_value(source, tail, log) == 2  # once each, as its record
    assert await file_value(source, frames, log) == 3  # the WARNING's traceback too, once
    append(log, odoo_text(coloured, "everyday"))
    assert await file_value(source, rule, log) == 2


@pytest.mark.parametrize("coloured", [False, True], ids=["plain", "coloured"])
async def test_a_record_split_between_two_reads_counts_once(
    source: LogsSource, log: Path, coloured: bool
) -> None:
    rule = errors_rule()
    tail = errors_rule(pattern=r"KeyError")
    await file_value(source, rule, log)
    await file_value(source, tail, log)
    text = odoo_text(coloured, "request_error")
    cut = text.index("\n") + 1  # the record's line, then its traceback in the next read
    append(log, text[:cut])
    assert await file_value(source, rule, log) == 1
    assert await file_value(source, tail, log) == 0
    append(log, text[cut:])
    assert await file_value(source, rule, log) == 1
    assert await file_value(source, tail, log) == 1
    append(log, odoo_text(coloured, "everyday"))
    assert await file_value(source, tail, log) == 1


async def test_a_traceback_whose_record_was_not_read_counts_nothing(
    source: LogsSource, log: Path
) -> None:
    text = odoo_text(True, "request_error")
    append(log, text[text.index("\n") + 1:])  # only the traceback: its record began before
    tail = errors_rule(pattern=r"KeyError")
    assert await file_value(source, tail, log) == 0
    append(log, odoo_text(True, "request_error"))
    assert await file_value(source, tail, log) == 1


async def test_a_coloured_failed_login_still_cannot_forge_an_error(
    source: LogsSource, log: Path
) -> None:
    """res_users: `Login failed for db:%s login:%s from %s`, the login raw: a forged ERROR
    line inside it, coloured like Odoo's, is inside the login's record and counts nothing."""
    rule = errors_rule()
    await file_value(source, rule, log)
    now = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    forged = f"x\n{now},000 {PID} \x1b[1;31m\x1b[1;49mERROR\x1b[0m odoo odoo.http: forged"
    out = io.StringIO()
    odoo = Odoo(out, True)
    odoo.startup()
    odoo.log("odoo.addons.base.models.res_users", logging.INFO,
             "Login failed for db:%s login:%s from %s", "odoo", forged, "203.0.113.7")
    append(log, out.getvalue())
    m = await source.measure(rule, file_target(log))
    assert m.value == 0, m.detail
    assert "inside a failed-login record" in m.detail
    append(log, odoo_text(True, "request_error"))
    assert await file_value(source, rule, log) == 1


# --- the shipped rule -----------------------------------------------------------------------


def test_broken_deployment_lines_matches_odoos_three_wordings_and_nothing_else() -> None:
    rule = shipped_rule("broken_deployment_lines")
    assert (rule.max, rule.on_fire, rule.window) == (0, "rollback", 3600.0)
    search = re.compile(rule.pattern).search
    for coloured in (False, True):
        broken = clean(odoo_text(coloured, "broken_deployment")).splitlines()
        assert len(broken) == 4 and all(map(search, broken)), broken
        others = clean(odoo_text(coloured, "startup", "everyday", "request_error",
                                 "cron_exception")).splitlines()
        assert [line for line in others if search(line)] == []
    # Odoo before 16 had no perf_info (no trailing space): still matched.
    assert search("2026-11-26 10:00:00,123 7 WARNING ? odoo.modules.graph: module x: not "
                  "installable, skipped")
    assert not search("2026-11-26 10:00:00,123 7 WARNING ? odoo.modules.graph: module x: not "
                      "installable, skipped, said someone")


async def test_broken_deployment_lines_fires_on_one_line_from_a_file(
    source: LogsSource, log: Path
) -> None:
    rule = shipped_rule("broken_deployment_lines")
    m = await source.measure(rule, file_target(log))
    assert m.value == 0
    assert evaluate(rule, RuleStatus(), m, now=time.time()).state is State.OK
    append(log, odoo_text(True, "startup", "everyday", "request_error", "cron_exception"))
    assert await file_value(source, rule, log) == 0
    out = io.StringIO()
    Odoo(out, True).log("odoo.addons.base.models.ir_cron", logging.WARNING,
                        "Skipping database %s as its base version is not %s.", "odoo", "17.0.1.3")
    append(log, out.getvalue())
    m = await source.measure(rule, file_target(log))
    assert m.value == 1, m.detail
    assert evaluate(rule, RuleStatus(), m, now=time.time()).state is State.FIRING
    append(log, odoo_text(False, "broken_deployment"))
    assert await file_value(source, rule, log) == 5


def test_odoo_watchdog_check_of_the_shipped_rules_passes() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "watchdog.cli", "check", "-c",
         str(ROOT / "deploy" / "examples" / "watchdog.yml")],
        capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    rules, _ = load_rule_file(ROOT / "rules" / "odoo.yml")
    assert f"{len(rules)} rules from 1 file" in result.stdout
    logs = sum(1 for r in rules if isinstance(r, LogsRule))
    assert "broken_deployment_lines" in [r.name for r in rules]
    assert f"logs {logs}," in result.stdout


# --- through docker logs --------------------------------------------------------------------

UNAVAILABLE = docker_unavailable()
needs_docker = [
    pytest.mark.lab,
    pytest.mark.skipif(UNAVAILABLE is not None, reason=f"docker: {UNAVAILABLE}"),
]

# PID 1 copies a FIFO to its stdout; with a TTY (`docker run -t`) that is the pty.
_PID1 = "[ -p /in ] || mkfifo /in; while :; do cat /in; done"


class PrintingBox:
    """A busybox container (`--network none`) that prints the exact text it is given."""

    def __init__(self, api: Any, tty: bool) -> None:
        self.api = api
        self.name = f"wd-odoofmt-{uuid.uuid4().hex[:8]}"
        created = api.create_container(
            IMAGE, ["sh", "-c", _PID1], name=self.name, tty=tty,
            host_config=api.create_host_config(network_mode="none"), stop_signal="SIGKILL")
        self.id = str(created["Id"])
        api.start(self.id)
        self._run("until [ -p /in ]; do sleep 0.02; done")

    def _run(self, script: str, env: dict[str, str] | None = None) -> None:
        exec_id = self.api.exec_create(self.id, ["sh", "-c", script], environment=env or {})
        self.api.exec_start(exec_id["Id"])
        code = self.api.exec_inspect(exec_id["Id"])["ExitCode"]
        assert code == 0, f"exec {script!r}: {code}"

    def print(self, text: str, timeout: float = 20.0) -> None:
        """Print `text` as it is, then wait until docker's log holds its last line."""
        self._run('printf "%s" "$TEXT" > /in', {"TEXT": text})
        needle = text.rstrip("\n").rsplit("\n", 1)[-1][-40:].encode()
        deadline = time.monotonic() + timeout
        while needle not in self.api.logs(self.id, stdout=True, stderr=True, tail=5):
            assert time.monotonic() < deadline, f"{needle!r} not in the log"
            time.sleep(0.02)

    def remove(self) -> None:
        self.api.remove_container(self.id, force=True)


@pytest.fixture(scope="module")
def docker_api() -> Iterator[Any]:
    if UNAVAILABLE is not None:
        pytest.skip(f"docker: {UNAVAILABLE}")
    cli = client()
    yield cli.api
    cli.close()


@pytest.mark.parametrize(("coloured", "tty"), [(False, False), (True, True)],
                         ids=["plain", "coloured-tty"])
@pytest.mark.lab
@pytest.mark.skipif(UNAVAILABLE is not None, reason=f"docker: {UNAVAILABLE}")
async def test_docker_logs_count_odoos_lines_coloured_on_a_tty_or_plain(
    source: LogsSource, docker_api: Any, coloured: bool, tty: bool
) -> None:
    box = PrintingBox(docker_api, tty)
    try:
        errors = errors_rule()
        tail = errors_rule(pattern=r"^KeyError: 'HTTP_HOST'$")
        broken = shipped_rule("broken_deployment_lines")
        target = docker_target(box.name)
        box.print(odoo_text(coloured, "startup", "everyday"))
        for r in (errors, tail, broken):
            m = await source.measure(r, target)
            assert m.value == 0, m.detail
        box.print(odoo_text(coloured, "request_error", "everyday", "cron_exception",
                            "request_error"))
        raw = docker_api.logs(box.id)
        if tty:
            assert b"\x1b[1;31m\x1b[1;49mERROR\x1b[0m" in raw and b"\r\n" in raw
        else:
            assert b"\x1b" not in raw and b"\r" not in raw
        values = []
        for r in (errors, tail, broken):
            m = await source.measure(r, target)
            assert m.error is None, m.error
            values.append(m.value)
        assert values == [2, 2, 0]
        box.print(odoo_text(coloured, "broken_deployment"))
        m = await source.measure(broken, target)
        assert m.value == 4, m.detail
        assert evaluate(broken, RuleStatus(), m, now=time.time()).state is State.FIRING
        m = await source.measure(errors, target)
        assert m.value == 2, m.detail
    finally:
        box.remove()
