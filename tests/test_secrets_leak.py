"""Secrets stay secret, with the daemon as a real process (LabStack) and real PostgreSQL 15.

The daemon is taken through a bad database DSN (a role whose password PostgreSQL really
checks, given a wrong one: the `gate` step fails), a failed login smoke check (a wrong password
in `smoke_settings.credentials_file`) and a failing rollout (the candidate goes down at 10%:
rolled back), with a webhook notification target on loopback capturing every POST. Then every
line of the daemon's output, every event (the API's and the store's files byte for byte),
every API answer the test got and every notification body is searched for the API token, the
smoke passwords and the DSN password: none may appear. Each secret is shown to be really used
(the token accepted, the DSN's password refused by PostgreSQL's password check, the smoke
password accepted by the stand-in's login), so an empty search means something.

The API token is re-read from `api.token_file` on SIGHUP: the new one works at once, the old
one gets 401; a file that cannot be read keeps the token in force and says so.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import daemon_metrics
from tests.polling import wait
from watchdog.client import ApiError, Client
from watchdog.lab.postgres import PostgresLab
from watchdog.lab.procs import free_port
from watchdog.lab.stack import LabStack
from watchdog.lab.standin import StandinProcess, set_faults

pytestmark = pytest.mark.lab

LOGIN = "smoke"


def secret(kind: str) -> str:
    """A distinctive secret: a marker and 24 random hex digits, nothing that JSON escapes."""
    return f"wdleak{kind}{secrets.token_hex(12)}"


def leaks(haystack: bytes, found: dict[str, str]) -> list[str]:
    """The names of the secrets in `haystack`: whole, or any 12 characters of their random
    part (a truncated or split copy counts)."""
    out = []
    for name, value in found.items():
        core = value[-24:]
        pieces = [value.encode()] + [core[i:i + 12].encode() for i in range(0, 13, 4)]
        if any(piece in haystack for piece in pieces):
            out.append(name)
    return out


def test_the_search_finds_a_secret_wherever_it_is(tmp_path: Path) -> None:
    """The search below can fail: whole, inside JSON, cut short, in a binary file."""
    token, other = secret("Tok"), secret("Pw")
    assert leaks(json.dumps({"error": f"bad {token}"}).encode(), {"token": token}) == ["token"]
    assert leaks(f"password={other[:-6]}...".encode(), {"pw": other}) == ["pw"]
    blob = tmp_path / "x.bin"
    blob.write_bytes(b"\x00\x01" + token.encode() + b"\xff")
    assert leaks(blob.read_bytes(), {"token": token, "pw": other}) == ["token"]
    assert leaks(b"nothing here", {"token": token, "pw": other}) == []


# ---------------------------------------------------------------- a webhook receiver


class Receiver:
    """A webhook target on loopback keeping every POST body as it came."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        got = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                got.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def kinds(self) -> list[str]:
        return [json.loads(b)["kind"] for b in self.bodies]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    got = Receiver()
    yield got
    got.close()


# ---------------------------------------------------------------- the daemon's answers


class Recorder:
    """The API as the test sees it: every answer (and every error's text) kept."""

    def __init__(self, lab: LabStack) -> None:
        self.lab = lab
        self.answers: list[str] = []

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             token: str | None = None) -> tuple[int, Any]:
        client = Client(self.lab.api_url, token if token is not None else self.lab.token)
        try:
            got = client.request(method, path, body)
        except ApiError as exc:
            self.answers.append(f"{exc.status} {exc}")
            return exc.status, str(exc)
        self.answers.append(json.dumps(got))
        return 200, got

    def site(self) -> dict[str, Any]:
        status, got = self.call("GET", "/api/v1/sites/odoo")
        assert status == 200, got
        view: dict[str, Any] = got
        return view

    def config(self) -> dict[str, Any]:
        status, got = self.call("GET", "/api/v1/sites")
        assert status == 200, got
        view: dict[str, Any] = got["config"]
        return view

    def wait_phase(self, phases: tuple[str, ...], timeout: float,
                   since: int = 0) -> dict[str, Any]:
        """The site once its phase is one of `phases` with an event newer than id `since`."""
        last: dict[str, Any] = {}

        def probe() -> dict[str, Any] | None:
            nonlocal last
            last = self.site()
            newest = max((e["id"] for e in last.get("events", [])), default=0)
            return last if last["phase"] in phases and newest > since else None

        try:
            return wait(probe, timeout, f"phase {phases}", every=0.2)
        except AssertionError as exc:
            shown = "\n".join(f"  {e['kind']}: {e['message']}" for e in last.get("events", []))
            raise AssertionError(f"{exc}: phase {last.get('phase')}\n{shown}") from None


def newest_event(view: dict[str, Any]) -> int:
    return max((e["id"] for e in view.get("events", [])), default=0)


def messages(view: dict[str, Any], kind: str, since: int = 0) -> list[str]:
    return [e["message"] for e in view.get("events", []) if e["kind"] == kind and e["id"] > since]


def sighup(lab: LabStack) -> None:
    assert lab.daemon is not None and lab.daemon.pid is not None
    os.kill(lab.daemon.pid, signal.SIGHUP)


def reload_and_wait(rec: Recorder, what: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """SIGHUP, then the config view once `what` holds of it (the reload is done)."""
    sighup(rec.lab)
    return wait(lambda: (lambda c: c if what(c) else None)(rec.config()), 15,
                "the reload done", every=0.1)


# ---------------------------------------------------------------- token rotation


def test_the_token_rotates_on_sighup_and_an_unreadable_file_keeps_it(
        tmp_path: Path, receiver: Receiver) -> None:
    old, new, third = secret("Old"), secret("New"), secret("Third")
    lab = LabStack(tmp_path, token=old, notify_url=receiver.url)
    lab.start()
    try:
        rec = Recorder(lab)
        abort = "/api/v1/sites/odoo/abort"  # idle: 409 once past the token check, else 401
        assert rec.call("POST", abort, {}, token=old)[0] == 409
        assert rec.call("POST", abort, {}, token=new)[0] == 401

        lab.token_path.write_text(new + "\n")
        before = rec.config()["last_reload_at"]
        reload_and_wait(rec, lambda c: c["last_reload_at"] > before)
        assert rec.call("POST", abort, {}, token=new)[0] == 409, "the new token works at once"
        assert rec.call("POST", abort, {}, token=old)[0] == 401, "the old one is refused"
        assert not rec.config()["errors"]

        # A file that cannot be read: the token in force stays, the API stays closed.
        lab.token_path.unlink()
        config = reload_and_wait(rec, lambda c: bool(c["errors"]))
        assert any("api.token_file" in e and "No such file" in e and "previous API token" in e
                   for e in config["errors"]), config
        assert config["last_reload_successful"] is False
        assert "odoo_watchdog_config_last_reload_successful 0.0" in daemon_metrics(lab)
        assert rec.call("POST", abort, {}, token=new)[0] == 409
        assert rec.call("POST", abort, {}, token="")[0] == 401, "never open without a token"
        assert rec.call("POST", abort, {}, token=old)[0] == 401
        wait(lambda: "reload_failed" in receiver.kinds(), 10, "a reload_failed notification")
        told = [json.loads(b)["text"] for b in receiver.bodies
                if json.loads(b)["kind"] == "reload_failed"]
        assert any("API token not changed" in t for t in told), told
        lab.token_path.write_text("  \n")  # empty: the same
        reload_and_wait(rec, lambda c: any("is empty" in e for e in c["errors"]))
        assert rec.call("POST", abort, {}, token=new)[0] == 409

        # A broken config does not hold a rotation back: the token is not part of it.
        good = lab.config_path.read_text()
        lab.config_path.write_text(good + "\nnot_a_key: 1\n")
        lab.token_path.write_text(third + "\n")
        config = reload_and_wait(rec, lambda c: any("not_a_key" in e for e in c["errors"]))
        assert not any("api.token_file" in e for e in config["errors"]), config
        assert rec.call("POST", abort, {}, token=third)[0] == 409
        assert rec.call("POST", abort, {}, token=new)[0] == 401
        lab.config_path.write_text(good)
        reload_and_wait(rec, lambda c: not c["errors"])
        assert "odoo_watchdog_config_last_reload_successful 1.0" in daemon_metrics(lab)
        assert lab.daemon is not None
        log = lab.daemon.log_path.read_bytes()
        assert b"api_token_kept" in log and b"api_token_reread" in log
        shown = log + "\n".join(rec.answers).encode() + b"".join(receiver.bodies)
        assert leaks(shown, {"old": old, "new": new, "third": third}) == []
    finally:
        lab.stop()


# ---------------------------------------------------------------- nothing leaks


@pytest.fixture
def password_role(postgres: PostgresLab) -> Iterator[tuple[str, str]]:
    """A role whose password PostgreSQL checks (the lab cluster trusts everyone else): a
    scram-sha-256 line for it alone at the top of pg_hba.conf, taken out afterwards."""
    role, password = f"wdleak_{secrets.token_hex(4)}", secret("PgRight")
    postgres.psql(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    hba = Path(postgres.psql("SHOW hba_file").strip())
    kept = hba.read_text()
    hba.write_text(f"host all {role} 127.0.0.1/32 scram-sha-256\n" + kept)
    postgres.psql("SELECT pg_reload_conf()")
    try:
        yield role, password
    finally:
        hba.write_text(kept)
        postgres.psql("SELECT pg_reload_conf()")
        postgres.psql(f"DROP ROLE IF EXISTS {role}")


def connects(postgres: PostgresLab, role: str, password: str) -> str:
    try:
        psycopg.connect(host="127.0.0.1", port=postgres.port, user=role, password=password,
                        dbname="postgres", connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        return str(exc)
    return "ok"


def test_no_secret_in_logs_events_answers_or_notifications(
        tmp_path: Path, receiver: Receiver, postgres: PostgresLab,
        password_role: tuple[str, str]) -> None:
    role, right_pg = password_role
    found = {"token": secret("Tok"), "dsn password": secret("PgWrong"),
             "smoke password": secret("Smoke"), "wrong smoke password": secret("SmokeWrong"),
             "pg role password": right_pg}
    # PostgreSQL really checks this role's password: the wrong one is refused, as such.
    assert connects(postgres, role, right_pg) == "ok"
    refused = connects(postgres, role, found["dsn password"])
    assert "password authentication failed" in refused, refused

    dsn = tmp_path / "pg.dsn"
    dsn.write_text(f"host=127.0.0.1 port={postgres.port} user={role} "
                   f"password={found['dsn password']} connect_timeout=5\n")
    creds = tmp_path / "smoke.json"
    creds.write_text(json.dumps({"db": "odoo", "login": LOGIN,
                                 "password": found["wrong smoke password"]}))
    for path in (dsn, creds):
        path.chmod(0o600)
    database = {"strategy": "separate", "dsn_file": str(dsn),
                "names": {"blue": f"{role}_blue", "green": f"{role}_green"}}
    rollout = {"strategy": "canary", "interval": "1s",
               "steps": [{"weight": 10, "hold": "1h"}, {"weight": 100}],
               "smoke": ["health", "login", "rpc", "workflow"]}
    lab = LabStack(tmp_path, token=found["token"], notify_url=receiver.url, health_for="1s",
                   site_extra={"database": database, "prepare": ["gate"], "rollout": rollout,
                               "smoke_settings": {"credentials_file": str(creds)}})
    users = [f"{LOGIN}:{found['smoke password']}"]
    lab.blue = StandinProcess("blue", tmp_path / "blue", version="16.0", users=users,
                              data_dir=tmp_path / "data")
    lab.green = StandinProcess("green", tmp_path / "green", version="17.0", users=users,
                               data_dir=tmp_path / "data")
    lab.start()
    try:
        rec = Recorder(lab)
        start = "/api/v1/sites/odoo/rollouts"
        body = {"to": "green", "version": "17.0"}
        assert rec.call("POST", start, body, token="not-the-token")[0] == 401

        # 1. The bad DSN: the gate connects with the dsn_file's password; PostgreSQL refuses
        # it after checking it ("no password supplied" would mean none was sent).
        status, started = rec.call("POST", start, body)
        assert status == 200 and started["phase"] in ("preparing", "aborted"), started
        view = rec.wait_phase(("aborted",), 30)
        aborted = messages(view, "aborted")
        assert aborted and "step gate failed" in aborted[-1], aborted
        assert f'password authentication failed for user "{role}"' in aborted[-1], aborted
        log = (postgres.workdir / "postgres.log").read_text(errors="replace")
        assert f'password authentication failed for user "{role}"' in log

        # 2. The wrong smoke password: no prepare steps now, the preflight's login fails.
        lab.site_extra = {"prepare": [], "rollout": rollout,
                          "smoke_settings": {"credentials_file": str(creds)}}
        lab.write_config()
        before = rec.config()["last_reload_at"]
        reload_and_wait(rec, lambda c: c["last_reload_at"] > before and not c["errors"])
        mark = newest_event(rec.site())
        assert rec.call("POST", start, body)[0] == 200
        view = rec.wait_phase(("aborted",), 30, since=mark)
        aborted = messages(view, "aborted", since=mark)
        assert aborted and "authentication failed for login smoke" in aborted[-1], aborted

        # 3. The right smoke password (the file re-read on reload): the preflight logs in, the
        # rollout reaches 10%, the candidate goes down and it is rolled back.
        creds.write_text(json.dumps({"db": "odoo", "login": LOGIN,
                                     "password": found["smoke password"]}))
        before = rec.config()["last_reload_at"]
        reload_and_wait(rec, lambda c: c["last_reload_at"] > before)
        mark = newest_event(rec.site())
        assert rec.call("POST", start, body)[0] == 200
        view = rec.wait_phase(("progressing",), 30, since=mark)
        passed = messages(view, "preflight_passed", since=mark)
        assert passed and "workflow ok" in passed[-1], messages(view, "aborted", since=mark)
        set_faults(lab.green.url, down=True)
        view = rec.wait_phase(("rolled_back",), 30, since=mark)
        assert view["weights"] == {"blue": 100, "green": 0}
        wait(lambda: receiver.kinds().count("aborted") >= 2 and "rolled_back" in
             receiver.kinds(), 15, "the notifications of both aborts and the rollback")

        # Everything the daemon showed anyone.
        rec.call("GET", "/api/v1/sites")
        rec.call("GET", "/api/v1/sites/odoo/backups")
        rec.answers.append(daemon_metrics(lab))
        with urllib.request.urlopen(f"{lab.api_url}/healthz", timeout=5) as resp:
            rec.answers.append(resp.read().decode())
        for extra in ([], ["--json"]):
            done = subprocess.run([sys.executable, "-m", "watchdog.cli", "status", "odoo",
                                   "--url", lab.api_url, *extra], capture_output=True,
                                  text=True, timeout=30, check=False)
            rec.answers.append(done.stdout + done.stderr)
        final = rec.site()
    finally:
        lab.stop()

    assert lab.daemon is not None
    daemon_log = lab.daemon.log_path.read_bytes()
    # The start's look for a clone's leftovers met the bad DSN too, and said so.
    assert b"cleanup_failed" in daemon_log and b"password authentication failed" in daemon_log
    events = final["events"]
    state = b"".join(p.read_bytes() for p in sorted((tmp_path / "state").rglob("*"))
                     if p.is_file())  # the store's database: every event it ever recorded
    assert b"rolled_back" in state and b"step gate failed" in state
    places = {"the daemon's output": daemon_log, "the store": state,
              "the events": json.dumps(events).encode(),
              "the API's answers": "\n".join(rec.answers).encode(),
              "the notifications": b"\n".join(receiver.bodies)}
    shown = {where: leaks(text, found) for where, text in places.items()}
    assert shown == {where: [] for where in places}, shown
