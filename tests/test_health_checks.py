"""Proxy health checks that real Odoo answers (issue 9, item 1).

Real Odoo (seen on 17 and 18) answers a request without a Host header with 500
(`KeyError: 'HTTP_HOST'`) and logs an ERROR traceback for it. HAProxy's `option httpchk GET
/web/health` alone sends HTTP/1.0 without a Host, so it took every server DOWN. These tests
check every HAProxy config we ship (and the lab's) statically, then load each one in a real
HAProxy 2.6 with the lab's stand-ins behind it, and show that the old directive does take the
servers DOWN against the stand-in, which now answers like Odoo.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from watchdog.lab.haproxy import HaproxyLab, haproxy_binary, runtime_api, state_rows
from watchdog.lab.procs import free_udp_port
from watchdog.lab.standin import StandinProcess

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("deploy/haproxy/haproxy.cfg", "deploy/compose/haproxy.cfg")
OLD_CHECK = "    option httpchk GET /web/health\n"
# A record of Odoo's log at level ERROR: `date time,ms pid ERROR dbname logger: message`.
ERROR_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \d+ ERROR ", re.MULTILINE)


# ---------------------------------------------------------------------- the static checker


@dataclass
class Section:
    kind: str
    name: str
    lines: list[str] = field(default_factory=list)


def sections(text: str) -> list[Section]:
    """The sections of an HAProxy config (keyword lines start at column 0), comments left out."""
    found: list[Section] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        if not line[0].isspace():
            kind, _, name = line.partition(" ")
            found.append(Section(kind, name.strip()))
        elif found:
            found[-1].lines.append(line.strip())
    return found


def _sends_host(send: str) -> bool:
    """Whether one `http-check send ...` line has a `hdr Host <value>`."""
    words = send.split()
    return any(w == "hdr" and i + 2 < len(words) and words[i + 1].lower() == "host"
               for i, w in enumerate(words))


def checks_without_host(text: str) -> list[str]:
    """The backends (and listens) of an HAProxy config whose HTTP health check sends no Host.

    HAProxy's rules: `option httpchk` and the `http-check` rules of the last `defaults`
    section apply to a proxy that sets none of its own; `option httpchk <meth> <uri>` alone
    sends HTTP/1.0 with no header at all; a Host comes from `http-check send ... hdr Host`
    (or the deprecated `\\r\\nHost:` trick after the version on the `option httpchk` line).
    """
    bad: list[str] = []
    defaults = Section("defaults", "")
    for section in sections(text):
        if section.kind == "defaults":
            defaults = section
            continue
        if section.kind not in ("backend", "listen"):
            continue

        def httpchk(lines: list[str]) -> list[str]:
            return [ln for ln in lines if ln.split()[:2] == ["option", "httpchk"]]

        def sends(lines: list[str]) -> list[str]:
            return [ln for ln in lines if ln.split()[:2] == ["http-check", "send"]]

        own_chk = httpchk(section.lines)
        if any(ln.split()[:3] == ["no", "option", "httpchk"] for ln in section.lines):
            continue
        chk = own_chk or httpchk(defaults.lines)
        if not chk or not any(ln.split()[0] == "server" for ln in section.lines):
            continue
        has_own_rules = any(ln.split()[0] == "http-check" for ln in section.lines)
        send = sends(section.lines) if has_own_rules else sends(defaults.lines)
        trick = any("\\r\\nhost:" in ln.lower() for ln in chk)
        if not (trick or any(_sends_host(ln) for ln in send)):
            bad.append(f"{section.kind} {section.name}")
    return bad


def lab_config(tmp_path: Path) -> str:
    return HaproxyLab(tmp_path, 8069, 9069).render()


def shipped_configs() -> list[Path]:
    """Every file under deploy/ that configures an HTTP health check in HAProxy."""
    return sorted(p for p in (ROOT / "deploy").rglob("*")
                  if p.is_file() and "httpchk" in p.read_text(errors="replace"))


def test_every_shipped_haproxy_config_is_found() -> None:
    assert [p.relative_to(ROOT).as_posix() for p in shipped_configs()] == sorted(SHIPPED)


@pytest.mark.parametrize("path", SHIPPED)
def test_shipped_haproxy_config_checks_odoo_with_a_host(path: str) -> None:
    assert checks_without_host((ROOT / path).read_text()) == []


def test_lab_haproxy_config_checks_odoo_with_a_host(tmp_path: Path) -> None:
    text = lab_config(tmp_path)
    assert "option httpchk" in text
    assert checks_without_host(text) == []


def test_the_checker_finds_a_check_without_a_host(tmp_path: Path) -> None:
    old = "backend odoo\n" + OLD_CHECK + "    server a 127.0.0.1:1 check\n"
    assert checks_without_host(old) == ["backend odoo"]
    # The lab's config with the old directive back in place of the fixed check.
    lab = lab_config(tmp_path)
    assert checks_without_host(old_check_config(lab)) == ["backend odoo"]
    # A send line without a Host (HTTP/1.1 at that) is no better.
    no_host = ("backend odoo\n    option httpchk\n"
               "    http-check send meth GET uri /web/health ver HTTP/1.1 hdr X-Probe 1\n"
               "    server a 127.0.0.1:1 check\n")
    assert checks_without_host(no_host) == ["backend odoo"]
    # `option httpchk` inherited from defaults counts; so do the defaults' send rules, unless
    # the backend has http-check rules of its own.
    inherited = ("defaults\n    mode http\n    option httpchk\n"
                 "    http-check send meth GET uri /web/health ver HTTP/1.1 hdr Host odoo\n"
                 "backend ok\n    server a 127.0.0.1:1 check\n"
                 "backend own\n    http-check expect status 200\n"
                 "    server a 127.0.0.1:1 check\n"
                 "listen off\n    no option httpchk\n    server a 127.0.0.1:1 check\n")
    assert checks_without_host(inherited) == ["backend own"]
    # A Host in a comment is not a Host.
    commented = ("backend odoo\n    option httpchk GET /web/health  # hdr Host odoo\n"
                 "    server a 127.0.0.1:1 check\n")
    assert checks_without_host(commented) == ["backend odoo"]


# ---------------------------------------------------------------------- raw HTTP, no Host


def raw_get(port: int, path: str, host: str | None) -> tuple[int, str]:
    """GET `path` as HTTP/1.0 over a plain socket, with or without a Host header (aiohttp's
    clients always send one): the status and the body."""
    head = f"GET {path} HTTP/1.0\r\n" + (f"Host: {host}\r\n" if host else "") + "\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(head.encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    status_line, _, rest = data.decode(errors="replace").partition("\r\n")
    return int(status_line.split()[1]), rest.partition("\r\n\r\n")[2]


@pytest.fixture
def standins(tmp_path: Path) -> Iterator[tuple[StandinProcess, StandinProcess]]:
    """Fresh stand-ins for each test, so that one test's ERROR records are not another's."""
    blue = StandinProcess("blue", tmp_path / "odoo", version="17.0").start()
    green = StandinProcess("green", tmp_path / "odoo", version="18.0").start()
    for standin in (blue, green):
        _READY_PROBES[standin.port] = len(health_lines(standin))
    yield blue, green
    blue.stop()
    green.stop()


def errors_in(standin: StandinProcess) -> list[str]:
    text = standin.log_file.read_text() if standin.log_file.exists() else ""
    return [m.group(0) + text[m.end():].split("\n", 1)[0] for m in ERROR_RECORD.finditer(text)]


def test_standin_answers_a_request_without_host_like_odoo(
    standins: tuple[StandinProcess, StandinProcess],
) -> None:
    for standin in standins:
        status, body = raw_get(standin.port, "/web/health", "localhost")
        assert (status, errors_in(standin)) == (200, [])
        assert '"status": "pass"' in body

        status, body = raw_get(standin.port, "/web/health", None)
        assert status == 500
        assert "<title>500 Internal Server Error</title>" in body
        text = standin.log_file.read_text()
        record = ERROR_RECORD.search(text)
        assert record is not None, text
        entry = text[record.start():]
        first, _, rest = entry.partition("\n")
        # Odoo logs it from odoo.http before it knows the database: dbname `?`.
        assert " ERROR ? odoo.http: Exception during request handling." in first
        traceback = rest.split("\n")
        assert traceback[0] == "Traceback (most recent call last):"
        assert "KeyError: 'HTTP_HOST'" in traceback
        assert len(errors_in(standin)) == 1
        # The access log line still says 500 for it, as werkzeug's does.
        assert '"GET /web/health HTTP/1.0" 500' in text


# ---------------------------------------------------------------------- real HAProxy


class ConfigHaproxy(HaproxyLab):
    """The lab's HAProxy runner with a config of our own instead of the lab's template."""

    def __init__(self, workdir: Path, standins: tuple[StandinProcess, StandinProcess],
                 make: Callable[[HaproxyLab], str]) -> None:
        super().__init__(workdir, standins[0].port, standins[1].port)
        self._make = make

    def render(self) -> str:
        return self._make(self)


def _sub(pattern: str, repl: str, text: str) -> str:
    new, count = re.subn(pattern, repl, text, flags=re.MULTILINE)
    assert count, f"the config has no line matching {pattern!r}: the loopback rewrite is stale"
    return new


def loopback(text: str, lab: HaproxyLab) -> str:
    """A shipped config with its addresses, ports and paths on loopback and under the lab's
    workdir; every check directive (option httpchk, http-check, default-server) verbatim."""
    out = _sub(r"^(\s*log )\S+:5140 ", rf"\g<1>127.0.0.1:{free_udp_port()} ", text)
    out = _sub(r"^(\s*stats socket )\S+ .*$",
               rf"\g<1>{lab.admin_socket} mode 600 level admin", out)
    out = _sub(r"^(\s*server-state-file )\S+", rf"\g<1>{lab.state_file}", out)
    out = re.sub(r"^\s*(user|group) haproxy\n|^\s*daemon\n", "", out, flags=re.MULTILINE)
    out = _sub(r"^(\s*bind ):80\b", rf"\g<1>127.0.0.1:{lab.port}", out)
    out = re.sub(r"^(\s*nameserver \S+ )\S+", rf"\g<1>127.0.0.1:{free_udp_port()}", out,
                 flags=re.MULTILINE)
    out = _sub(r"^(\s*server odoo-blue\s+)\S+", rf"\g<1>127.0.0.1:{lab.blue_port}", out)
    out = _sub(r"^(\s*server odoo-green\s+)\S+", rf"\g<1>127.0.0.1:{lab.green_port}", out)

    def check_lines(config: str) -> list[str]:
        return [ln for ln in config.splitlines()
                if re.match(r"\s*(option httpchk|http-check|default-server)", ln)]

    assert check_lines(out) == check_lines(text) and check_lines(text)
    return out


def old_check_config(config: str) -> str:
    """`config` with its HTTP check put back to the old `option httpchk GET /web/health`."""
    fixed = ("    option httpchk\n"
             "    http-check send meth GET uri /web/health ver HTTP/1.1 hdr Host localhost\n")
    assert config.count(fixed) == 1
    return config.replace(fixed, OLD_CHECK)


def servers(lab: HaproxyLab) -> dict[str, dict[str, str]]:
    """Backend odoo's servers as HAProxy sees them: `show stat` (status, check status and
    code) and `show servers state` (srv_op_state: 2 running, 0 stopped)."""
    header, *rows = runtime_api(lab.admin_socket, "show stat").splitlines()
    names = header.lstrip("# ").split(",")
    stat = {row["svname"]: row for row in (dict(zip(names, ln.split(","), strict=False))
                                            for ln in rows if ln)
            if row["pxname"] == "odoo" and row["svname"].startswith("odoo-")}
    state = state_rows(runtime_api(lab.admin_socket, "show servers state odoo"))
    return {name: {"status": stat[name]["status"], "check": stat[name]["check_status"],
                   "code": stat[name]["check_code"], "op_state": state[name]["srv_op_state"]}
            for name in ("odoo-blue", "odoo-green")}


def wait_for(lab: HaproxyLab, want: dict[str, str], timeout: float) -> dict[str, dict[str, str]]:
    """Poll until both servers match `want` (a few fields of `servers`), or the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        now = servers(lab)
        if all(all(s[k] == v for k, v in want.items()) for s in now.values()):
            return now
        if time.monotonic() > deadline:
            return now
        time.sleep(0.2)


def health_lines(standin: StandinProcess) -> list[str]:
    text = standin.log_file.read_text() if standin.log_file.exists() else ""
    return [ln for ln in text.splitlines() if '"GET /web/health HTTP/' in ln]


# By stand-in port: how many /web/health lines its own readiness probe wrote
# (StandinProcess.start polls /web/health before any proxy runs).
_READY_PROBES: dict[int, int] = {}


def health_checks(standin: StandinProcess) -> list[str]:
    """The stand-in's access lines for /web/health since it was ready: the proxy's checks."""
    return health_lines(standin)[_READY_PROBES[standin.port]:]


UP = {"status": "UP", "check": "L7OK", "code": "200", "op_state": "2"}
DOWN = {"status": "DOWN", "check": "L7STS", "code": "500", "op_state": "0"}


def assert_up_without_errors(lab: HaproxyLab,
                             standins: tuple[StandinProcess, StandinProcess]) -> None:
    # Servers start UP in HAProxy: UP only counts once a check has passed (L7OK, 200), and
    # then again after `rise` more checks, by when a failing one would have gone DOWN.
    first = wait_for(lab, UP, timeout=15)
    assert first == {"odoo-blue": UP, "odoo-green": UP}
    deadline = time.monotonic() + 15
    while min(len(health_checks(s)) for s in standins) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert servers(lab) == {"odoo-blue": UP, "odoo-green": UP}
    for standin in standins:
        checks = health_checks(standin)
        assert len(checks) >= 3, standin.log_file.read_text()
        assert all('HTTP/1.1" 200' in ln for ln in checks), checks
        assert errors_in(standin) == []


@pytest.mark.parametrize("path", SHIPPED)
def test_shipped_haproxy_config_keeps_real_servers_up(
    path: str, tmp_path: Path, standins: tuple[StandinProcess, StandinProcess],
) -> None:
    text = (ROOT / path).read_text()
    lab = ConfigHaproxy(tmp_path / "haproxy", standins, lambda lab: loopback(text, lab))
    lab.prepare()
    valid = subprocess.run([haproxy_binary(), "-c", "-f", str(lab.config_path)],
                           capture_output=True, text=True, check=False)
    assert valid.returncode == 0, valid.stdout + valid.stderr
    with lab:
        assert_up_without_errors(lab, standins)


def test_lab_haproxy_keeps_the_standins_up(
    tmp_path: Path, standins: tuple[StandinProcess, StandinProcess],
) -> None:
    with HaproxyLab(tmp_path / "haproxy", standins[0].port, standins[1].port) as lab:
        assert_up_without_errors(lab, standins)


def test_the_old_check_takes_the_servers_down(
    tmp_path: Path, standins: tuple[StandinProcess, StandinProcess],
) -> None:
    """`option httpchk GET /web/health` alone against the stand-in, which answers like Odoo:
    HTTP/1.0 without a Host, a 500 each time, an ERROR record each time, the servers DOWN."""
    lab = ConfigHaproxy(tmp_path / "haproxy", standins,
                        lambda lab: old_check_config(HaproxyLab.render(lab)))
    with lab:
        # A server starts at `rise` health: its first failed check takes it DOWN.
        now = wait_for(lab, DOWN, timeout=15)
        assert now == {"odoo-blue": DOWN, "odoo-green": DOWN}
        # Through the proxy, every request fails.
        assert raw_get(lab.port, "/web/health", "localhost")[0] == 503
        # And every check (the lab's: one a second) goes on writing an ERROR record.
        deadline = time.monotonic() + 15
        while min(len(health_checks(s)) for s in standins) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        lab.stop()
        for standin in standins:
            checks = health_checks(standin)
            assert len(checks) >= 3 and all('HTTP/1.0" 500' in ln for ln in checks), checks
            assert len(errors_in(standin)) == len(checks)
