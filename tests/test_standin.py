"""The Odoo stand-in: its Odoo surface, its faults, its log lines and its metrics.

Some tests run the stand-in as a real process (`StandinProcess`, stopped by its pid at the end
of the module); the others run the app in-process with aiohttp's test client.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
import urllib.error
import urllib.request
import xmlrpc.client
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from watchdog.lab.standin import (
    FaultError,
    StandinProcess,
    StandinSettings,
    aclear_faults,
    aget_faults,
    aset_faults,
    clear_faults,
    create_app,
    get_faults,
    set_faults,
)
from watchdog.lab.standin.errors import ServerError
from watchdog.lab.standin.services import OdooBackend

LOG_LINE = re.compile(
    r"^(?P<date>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (?P<pid>\d+) (?P<level>[A-Z]+) "
    r"(?P<db>\S+) (?P<name>\S+): (?P<msg>.*)$"
)
ACCESS = re.compile(
    r'^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4} \d\d:\d\d:\d\d\] "(?P<method>[A-Z]+) (?P<path>\S+) '
    r'HTTP/1\.1" (?P<status>\d{3}) - (?P<queries>\d+) \d+\.\d{3} (?P<rest>\d+\.\d{3})$'
)

Client = TestClient[Any, Any]


def log_records(path: Path) -> list[dict[str, str]]:
    """The Odoo-format records of a log file (continuation lines are not records)."""
    out = []
    for line in path.read_text().splitlines():
        m = LOG_LINE.match(line)
        if m:
            record = m.groupdict()
            record["msg"] = record["msg"].removesuffix(" ")  # the empty perf_info's space
            out.append(record)
    return out


def levels(path: Path, level: str) -> list[dict[str, str]]:
    return [r for r in log_records(path) if r["level"] == level]


def http_get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


def xml_call(url: str, method: str, *params: Any) -> Any:
    """One XML-RPC call; the connection is closed afterwards."""
    with xmlrpc.client.ServerProxy(url) as proxy:
        result: Any = getattr(proxy, method)(*params)
        return result


# ---------------------------------------------------------------------------------------------
# The real process
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def standin_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandinProcess]:
    proc = StandinProcess("blue", tmp_path_factory.mktemp("standin"))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        assert not proc.running()


@pytest.fixture
def proc(standin_process: StandinProcess) -> Iterator[StandinProcess]:
    clear_faults(standin_process.url)
    yield standin_process
    clear_faults(standin_process.url)


@pytest.mark.lab
def test_process_health_and_colour_headers(proc: StandinProcess) -> None:
    status, headers, body = http_get(f"{proc.url}/web/health")
    assert status == 200
    assert json.loads(body) == {"status": "pass"}
    assert headers["Content-Type"] == "application/json"
    assert headers["Cache-Control"] == "no-store"
    assert headers["X-Odoo-Color"] == "blue"
    assert headers["X-Odoo-Version"] == "17.0"

    # 17 has no db check: the parameter is ignored (18's is tested with the per-version tests).
    status, _, body = http_get(f"{proc.url}/web/health?db_server_status=1")
    assert status == 200
    assert json.loads(body) == {"status": "pass"}


@pytest.mark.lab
def test_process_xmlrpc_crud_roundtrip(proc: StandinProcess) -> None:
    common = f"{proc.url}/xmlrpc/2/common"
    version = xml_call(common, "version")
    assert version["server_version"] == "17.0-20250225"  # a packaged build's, with its date
    assert version["server_version_info"] == [17, 0, 0, "final", 0, ""]
    assert version["protocol_version"] == 1
    uid = xml_call(common, "authenticate", "odoo", "admin", "admin", {})
    assert uid == 2
    assert xml_call(common, "authenticate", "odoo", "admin", "wrong", {}) is False
    assert xml_call(common, "login", "odoo", "admin", "admin") == 2

    def call(method: str, *args: Any, **kw: Any) -> Any:
        return xml_call(
            f"{proc.url}/xmlrpc/2/object",
            "execute_kw",
            "odoo",
            uid,
            "admin",
            "res.partner",
            method,
            list(args),
            kw,
        )

    pid = call("create", {"name": "Canary Customer", "email": "c@example.com"})
    assert isinstance(pid, int)
    assert call("search", [("id", "in", [pid])]) == [pid]
    assert call("search", [("name", "=", "Canary Customer")]) == [pid]
    assert call("search_count", [("name", "=", "Canary Customer")]) == 1
    assert pid in call("search", [])
    [rec] = call("read", [pid], fields=["name", "email"])
    assert rec == {"id": pid, "name": "Canary Customer", "email": "c@example.com"}
    assert call("write", [pid], {"email": "new@example.com"}) is True
    assert call("read", [pid], ["email"]) == [{"id": pid, "email": "new@example.com"}]
    assert call("unlink", [pid]) is True
    assert call("search", [("id", "in", [pid])]) == []


@pytest.mark.lab
def test_process_xmlrpc_faults(proc: StandinProcess) -> None:
    url = f"{proc.url}/xmlrpc/2/object"
    with pytest.raises(xmlrpc.client.Fault) as unknown_model:
        xml_call(url, "execute_kw", "odoo", 2, "admin", "res.nothing", "search", [[]])
    assert unknown_model.value.faultCode == 2
    assert unknown_model.value.faultString == "Object res.nothing doesn't exist"

    with pytest.raises(xmlrpc.client.Fault) as denied:
        xml_call(url, "execute_kw", "odoo", 2, "wrong", "res.partner", "search", [[]])
    assert (denied.value.faultCode, denied.value.faultString) == (3, "Access Denied")

    with pytest.raises(xmlrpc.client.Fault) as unknown_method:
        xml_call(url, "execute_kw", "odoo", 2, "admin", "res.partner", "frobnicate", [[]])
    assert unknown_method.value.faultCode == 1
    assert unknown_method.value.faultString.startswith("Traceback (most recent call last):")
    assert (
        "AttributeError: The method 'frobnicate' does not exist on the model 'res.partner'"
        in unknown_method.value.faultString
    )

    with pytest.raises(xmlrpc.client.Fault) as private:
        xml_call(url, "execute_kw", "odoo", 2, "admin", "res.partner", "_private", [[]])
    assert private.value.faultCode == 4


@pytest.mark.lab
def test_process_access_log_lines_are_odoo_format(proc: StandinProcess) -> None:
    http_get(f"{proc.url}/web/health?probe=format")
    records = [
        r
        for r in log_records(proc.log_file)
        if "probe=format" in r["msg"] and r["name"] == "werkzeug"  # not 17's "ignoring args"
    ]
    assert len(records) == 1
    rec = records[0]
    assert rec["pid"] == str(proc.pid)
    assert (rec["level"], rec["db"], rec["name"]) == ("INFO", "odoo", "werkzeug")
    m = ACCESS.match(rec["msg"])
    assert m is not None, rec["msg"]
    assert (m["method"], m["path"], m["status"]) == ("GET", "/web/health?probe=format", "200")


@pytest.mark.lab
def test_process_log_errors_writes_exactly_n_error_lines(proc: StandinProcess) -> None:
    before = len(levels(proc.log_file, "ERROR"))
    faults = set_faults(proc.url, log_errors=3)
    assert faults["log_errors"] == 0  # a one-shot
    assert get_faults(proc.url)["log_errors"] == 0
    assert len(levels(proc.log_file, "ERROR")) == before + 3

    infos_before = [r for r in levels(proc.log_file, "INFO") if "ERROR" in r["msg"]]
    set_faults(proc.url, log_info_mentions_error=2)
    infos_after = [r for r in levels(proc.log_file, "INFO") if "ERROR" in r["msg"]]
    assert len(infos_after) == len(infos_before) + 2
    assert len(levels(proc.log_file, "ERROR")) == before + 3  # INFO lines, whatever they say


@pytest.mark.lab
def test_process_error_rate_one_answers_500_and_logs_a_traceback(proc: StandinProcess) -> None:
    set_faults(proc.url, error_rate=1.0)
    errors_before = len(levels(proc.log_file, "ERROR"))
    for _ in range(3):
        status, headers, body = http_get(f"{proc.url}/web/health")
        assert status == 500
        assert headers["X-Odoo-Color"] == "blue"
        assert b"Internal Server Error" in body
    errors = levels(proc.log_file, "ERROR")
    assert len(errors) == errors_before + 3
    assert errors[-1]["name"] == "odoo.http"
    assert errors[-1]["msg"].startswith("Exception during request handling.")
    lines = proc.log_file.read_text().splitlines()
    last = max(i for i, line in enumerate(lines) if " ERROR odoo odoo.http: " in line)
    assert lines[last + 1] == "Traceback (most recent call last):"
    assert lines[last + 2].startswith('  File "')

    _, _, metrics = http_get(f"{proc.url}/__lab__/metrics")
    text = metrics.decode()
    match = re.search(r'odoo_standin_http_requests_total\{code="500",color="blue"\} (\S+)', text)
    assert match is not None and float(match[1]) >= 3

    clear_faults(proc.url)
    assert http_get(f"{proc.url}/web/health")[0] == 200


@pytest.mark.lab
def test_process_fault_helpers_refuse_bad_settings(proc: StandinProcess) -> None:
    with pytest.raises(FaultError) as exc:
        set_faults(proc.url, error_rate="lots")
    assert exc.value.field == "error_rate"
    assert "error_rate" in str(exc.value)
    with pytest.raises(FaultError):
        set_faults("http://192.0.2.1:8069", down=True)  # not loopback: refused before sending


@pytest.mark.lab
def test_process_sigterm_exits_zero(tmp_path: Path) -> None:
    proc = StandinProcess("green", tmp_path, version="18.0").start()
    try:
        status, headers, _ = http_get(f"{proc.url}/web/health")
        assert (status, headers["X-Odoo-Color"], headers["X-Odoo-Version"]) == (
            200,
            "green",
            "18.0",
        )
    finally:
        proc.stop()
    assert proc.process.proc is not None
    assert proc.process.proc.returncode == 0
    assert "Initiating shutdown" in proc.log_file.read_text()


# ---------------------------------------------------------------------------------------------
# The app in-process
# ---------------------------------------------------------------------------------------------

MakeClient = Callable[..., Awaitable[Client]]


@pytest.fixture
async def make_client(tmp_path: Path) -> AsyncIterator[MakeClient]:
    clients: list[Client] = []

    async def make(**settings: Any) -> Client:
        settings.setdefault("log_file", tmp_path / f"odoo-{len(clients)}.log")
        settings.setdefault("password_cost", 0.0)  # the test of the cost sets it
        client: Client = TestClient(TestServer(create_app(StandinSettings(**settings))))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def client(make_client: MakeClient) -> Client:
    return await make_client()


async def rpc(client: Client, path: str, params: dict[str, Any], **kw: Any) -> Any:
    resp = await client.post(
        path, json={"jsonrpc": "2.0", "method": "call", "id": 7, "params": params}, **kw
    )
    assert resp.status == 200
    return resp, await resp.json()


async def test_websocket_health(client: Client) -> None:
    resp = await client.get("/websocket/health")
    assert resp.status == 200
    assert await resp.json() == {"status": "pass"}
    assert resp.headers["X-Odoo-Color"] == "blue"


async def test_login_page(client: Client) -> None:
    resp = await client.get("/web/login")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    page = await resp.text()
    assert '<form class="oe_login_form"' in page
    assert 'name="login"' in page and 'name="password"' in page and 'name="csrf_token"' in page
    assert resp.headers["X-Frame-Options"] == "SAMEORIGIN"


CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


async def login_form(client: Client, login: str, password: str) -> dict[str, str]:
    """The login form as a browser posts it: GET the page (its session cookie stays in the
    client's jar) for the CSRF token, then the fields."""
    page = await client.get("/web/login")
    match = CSRF.search(await page.text())
    assert match is not None
    return {"csrf_token": match[1], "login": login, "password": password}


async def test_login_post_redirects_or_says_wrong_password(make_client: MakeClient) -> None:
    v17 = await make_client()
    resp = await v17.post(
        "/web/login", data=await login_form(v17, "admin", "admin"), allow_redirects=False
    )
    assert resp.status == 303
    assert resp.headers["Location"] == str(v17.make_url("/web"))  # 17: absolute
    sid = resp.cookies["session_id"].value
    assert len(sid) > 40
    home = await v17.get("/web", allow_redirects=False, cookies={"session_id": sid})
    assert home.status == 200

    bad = await v17.post(
        "/web/login", data=await login_form(v17, "admin", "nope"), allow_redirects=False
    )
    assert bad.status == 200
    assert "Wrong login/password" in await bad.text()

    v18 = await make_client(version="18.0")
    resp = await v18.post(
        "/web/login", data=await login_form(v18, "admin", "admin"), allow_redirects=False
    )
    assert (resp.status, resp.headers["Location"]) == (303, "/odoo")


async def test_version_info(client: Client) -> None:
    _, body = await rpc(client, "/web/webclient/version_info", {})
    assert body["jsonrpc"] == "2.0" and body["id"] == 7
    assert body["result"] == {
        "server_version": "17.0-20250225",
        "server_version_info": [17, 0, 0, "final", 0, ""],
        "server_serie": "17.0",
        "protocol_version": 1,
    }


async def test_session_authenticate_good_password(client: Client) -> None:
    resp, body = await rpc(
        client, "/web/session/authenticate", {"db": "odoo", "login": "admin", "password": "admin"}
    )
    assert "error" not in body
    result = body["result"]
    assert (result["uid"], result["db"], result["username"]) == (2, "odoo", "admin")
    assert result["server_version_info"] == [17, 0, 0, "final", 0, ""]
    sid = resp.cookies["session_id"].value
    _, info = await rpc(client, "/web/session/get_session_info", {}, cookies={"session_id": sid})
    assert info["result"]["uid"] == 2


async def test_session_authenticate_wrong_password_is_access_denied(client: Client) -> None:
    resp, body = await rpc(
        client, "/web/session/authenticate", {"db": "odoo", "login": "admin", "password": "x"}
    )
    assert "result" not in body
    assert "session_id" not in resp.cookies
    error = body["error"]
    assert (error["code"], error["message"]) == (200, "Odoo Server Error")
    assert error["data"]["name"] == "odoo.exceptions.AccessDenied"
    assert error["data"]["message"] == "Access Denied"

    _, body = await rpc(
        client, "/web/session/authenticate", {"db": "other", "login": "admin", "password": "admin"}
    )
    assert body["error"]["data"]["name"] == "odoo.exceptions.AccessError"

    _, expired = await rpc(client, "/web/session/get_session_info", {})
    assert (expired["error"]["code"], expired["error"]["message"]) == (100, "Odoo Session Expired")


async def test_jsonrpc_route_matches_xmlrpc(client: Client) -> None:
    _, ver = await rpc(client, "/jsonrpc", {"service": "common", "method": "version", "args": []})
    assert ver["result"]["server_serie"] == "17.0"
    _, uid = await rpc(
        client,
        "/jsonrpc",
        {"service": "common", "method": "authenticate", "args": ["odoo", "admin", "admin", {}]},
    )
    assert uid["result"] == 2
    base = ["odoo", 2, "admin", "res.partner"]
    _, created = await rpc(
        client,
        "/jsonrpc",
        {"service": "object", "method": "execute_kw", "args": [*base, "create", [{"name": "J"}]]},
    )
    pid = created["result"]
    _, found = await rpc(
        client,
        "/jsonrpc",
        {
            "service": "object",
            "method": "execute_kw",
            "args": [*base, "search", [[["id", "in", [pid]]]]],
        },
    )
    assert found["result"] == [pid]
    _, err = await rpc(
        client,
        "/jsonrpc",
        {
            "service": "object",
            "method": "execute_kw",
            "args": ["odoo", 2, "admin", "no.model", "search", [[]]],
        },
    )
    assert err["error"]["data"]["name"] == "odoo.exceptions.UserError"
    assert err["error"]["data"]["message"] == "Object no.model doesn't exist"
    _, denied = await rpc(
        client,
        "/jsonrpc",
        {
            "service": "object",
            "method": "execute_kw",
            "args": ["odoo", 2, "bad", "res.partner", "search", [[]]],
        },
    )
    assert denied["error"]["data"]["name"] == "odoo.exceptions.AccessDenied"


async def test_xmlrpc_in_a_thread(client: Client) -> None:
    url = str(client.make_url("/xmlrpc/2/object"))

    def crud() -> tuple[Any, Any, Any]:
        with xmlrpc.client.ServerProxy(url) as obj:
            pid = obj.execute_kw("odoo", 2, "admin", "res.partner", "create", [{"name": "T"}])
            found = obj.execute_kw(
                "odoo", 2, "admin", "res.partner", "search", [[["name", "=", "T"]]]
            )
            obj.execute_kw("odoo", 2, "admin", "res.partner", "unlink", [[pid]])
            after = obj.execute_kw(
                "odoo", 2, "admin", "res.partner", "search", [[["name", "=", "T"]]]
            )
            return pid, found, after

    pid, found, after = await asyncio.to_thread(crud)
    assert found == [pid] and after == []


async def test_latency_delays_odoo_routes_but_not_the_lab(client: Client) -> None:
    base = str(client.make_url(""))
    async with aiohttp.ClientSession() as session:
        await aset_faults(session, base, latency=0.3)
        t0 = time.perf_counter()
        resp = await client.get("/web/health")
        slow = time.perf_counter() - t0
        t0 = time.perf_counter()
        faults = await aget_faults(session, base)
        lab = time.perf_counter() - t0
    assert resp.status == 200
    assert slow >= 0.29  # the fault, not the request, took this long (normally ~2 ms)
    assert lab < 0.3
    assert faults["latency"] == 0.3


async def test_down_answers_503_everywhere_until_reset(client: Client) -> None:
    resp = await client.post("/__lab__/faults", json={"down": True})
    assert resp.status == 200 and (await resp.json())["down"] is True
    for path in ("/web/health", "/websocket/health", "/web/login"):
        down = await client.get(path)
        assert down.status == 503, path
        assert down.headers["X-Odoo-Color"] == "blue"
    xml = await client.post("/xmlrpc/2/common", data=xmlrpc.client.dumps((), "version"))
    assert xml.status == 503

    reset = await client.delete("/__lab__/faults")
    assert (await reset.json())["down"] is False
    assert (await client.get("/web/health")).status == 200


async def test_db_down_fails_db_health_and_authentication(make_client: MakeClient) -> None:
    client = await make_client(version="18.0")  # 18 has the db check; 17 ignores it (below)
    await client.post("/__lab__/faults", json={"db_down": True})
    resp = await client.get("/web/health", params={"db_server_status": "1"})
    assert resp.status == 500
    assert await resp.json() == {"status": "fail", "db_server_status": False}
    plain = await client.get("/web/health")
    assert (plain.status, await plain.json()) == (200, {"status": "pass"})  # no db check asked

    _, body = await rpc(
        client, "/web/session/authenticate", {"db": "odoo", "login": "admin", "password": "admin"}
    )
    assert body["error"]["data"]["name"] == "psycopg2.OperationalError"

    url = str(client.make_url("/xmlrpc/2/common"))
    with pytest.raises(xmlrpc.client.Fault) as fault:
        await asyncio.to_thread(xml_call, url, "authenticate", "odoo", "admin", "admin", {})
    assert fault.value.faultCode == 1
    assert "OperationalError" in fault.value.faultString


async def test_error_rate_on_json_routes_keeps_the_envelope(client: Client) -> None:
    await client.post("/__lab__/faults", json={"error_rate": 1})
    resp = await client.post(
        "/web/webclient/version_info", json={"jsonrpc": "2.0", "id": 42, "params": {}}
    )
    assert resp.status == 500
    body = await resp.json()
    assert body["id"] == 42 and body["error"]["message"] == "Odoo Server Error"
    await client.post("/__lab__/faults", json={"error_rate": 0})
    assert (await client.get("/web/health")).status == 200


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"bogus": 1}, "bogus"),
        ({"error_rate": "high"}, "error_rate"),
        ({"error_rate": 1.5}, "error_rate"),
        ({"latency": -1}, "latency"),
        ({"down": 1}, "down"),
        ({"db_down": "yes"}, "db_down"),
        ({"log_errors": 2.5}, "log_errors"),
        ({"log_info_mentions_error": True}, "log_info_mentions_error"),
    ],
)
async def test_bad_fault_json_is_400_naming_the_field(
    client: Client, payload: dict[str, Any], field: str
) -> None:
    resp = await client.post("/__lab__/faults", json=payload)
    assert resp.status == 400
    body = await resp.json()
    assert field in body["error"]
    assert body["field"] == field


async def test_rejected_faults_change_nothing(client: Client) -> None:
    resp = await client.post("/__lab__/faults", json={"latency": 1, "bogus": True})
    assert resp.status == 400
    assert (await (await client.get("/__lab__/faults")).json())["latency"] == 0
    not_json = await client.post(
        "/__lab__/faults", data=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert not_json.status == 400
    array = await client.post("/__lab__/faults", json=[1])
    assert array.status == 400


async def test_async_helpers_merge_and_clear(client: Client) -> None:
    base = str(client.make_url(""))
    async with aiohttp.ClientSession() as session:
        await aset_faults(session, base, error_rate=0.25)
        merged = await aset_faults(session, base, db_down=True)
        assert (merged["error_rate"], merged["db_down"]) == (0.25, True)
        with pytest.raises(FaultError) as exc:
            await aset_faults(session, base, latency="slow")
        assert exc.value.field == "latency"
        await aclear_faults(session, base)
        assert await aget_faults(session, base) == {
            "error_rate": 0.0,
            "latency": 0.0,
            "down": False,
            "db_down": False,
            "log_errors": 0,
            "log_info_mentions_error": 0,
            "rpc_read_error": False,
        }


async def test_metrics_count_odoo_requests_per_app(make_client: MakeClient) -> None:
    blue = await make_client(color="blue")
    green = await make_client(color="green")
    for _ in range(3):
        await blue.get("/web/health")
    await blue.get("/no/such/page")
    await blue.get("/__lab__/faults")
    await green.get("/web/health")

    text = await (await blue.get("/__lab__/metrics")).text()
    assert 'odoo_standin_http_requests_total{code="200",color="blue"} 3.0' in text
    assert 'odoo_standin_http_requests_total{code="404",color="blue"} 1.0' in text
    assert 'odoo_standin_http_request_duration_seconds_bucket{color="blue",le="0.005"}' in text
    assert 'odoo_standin_http_request_duration_seconds_bucket{color="blue",le="30.0"} 4.0' in text
    assert 'odoo_standin_http_request_duration_seconds_count{color="blue"} 4.0' in text
    assert "green" not in text  # each app has its own registry

    green_text = await (await green.get("/__lab__/metrics")).text()
    assert 'odoo_standin_http_requests_total{code="200",color="green"} 1.0' in green_text


async def test_log_file_gets_login_lines(make_client: MakeClient, tmp_path: Path) -> None:
    log = tmp_path / "auth.log"
    client = await make_client(log_file=log)
    await client.post(
        "/web/login", data=await login_form(client, "admin", "nope"), allow_redirects=False
    )
    records = log_records(log)
    failed = [r for r in records if r["msg"].startswith("Login failed for db:odoo login:admin")]
    assert len(failed) == 1 and failed[0]["name"] == "odoo.addons.base.models.res_users"
    access = [r for r in records if r["name"] == "werkzeug"]
    assert ACCESS.match(access[-1]["msg"]) is not None
    assert '"POST /web/login HTTP/1.1" 200' in access[-1]["msg"]


async def test_a_failed_login_is_logged_as_odoo_writes_it_login_raw_and_not_for_no_password(
    make_client: MakeClient, tmp_path: Path
) -> None:
    log = tmp_path / "auth.log"
    client = await make_client(log_file=log)
    forged = "x\n2026-12-02 10:00:00,000 4242 ERROR odoo odoo.http: forged"
    for login, password in ((forged, "nope"), ("admin", "")):
        await client.post(
            "/web/login", data=await login_form(client, login, password), allow_redirects=False
        )
    text = log.read_text()
    # Odoo's `_logger.info("Login failed for db:%s login:%s from %s", db, login, ip)`: the
    # login raw, so its newline starts a second physical line, and the address comes last
    # (then the record's perf_info, empty here: a trailing space).
    assert "INFO odoo odoo.addons.base.models.res_users: Login failed for db:odoo login:x\n" \
        "2026-12-02 10:00:00,000 4242 ERROR odoo odoo.http: forged from 127.0.0.1 \n" in text
    assert text.count("Login failed") == 1  # an empty password is refused before any log


# ---------------------------------------------------------------------------------------------
# The res.partner store
# ---------------------------------------------------------------------------------------------


def test_partner_domains_order_and_active() -> None:
    backend = OdooBackend(
        db="odoo", login="admin", password="admin", version="17.0", log=lambda *a: None
    )

    def call(method: str, *args: Any, **kw: Any) -> Any:
        return asyncio.run(
            backend.dispatch(
                "object",
                "execute_kw",
                ["odoo", 2, "admin", "res.partner", method, list(args), kw],
                "127.0.0.1",
            )
        )

    a = call("create", {"name": "Alpha", "email": "a@x.org"})
    b = call("create", {"name": "beta", "email": False})
    c = call("create", {"name": "Gamma", "active": False})
    mine = ["|", ("name", "ilike", "alp"), ("name", "=like", "b%")]
    assert sorted(call("search", mine)) == sorted([a, b])
    assert call("search", [("id", "in", [a, b, c])], order="id desc") == [b, a]
    assert call("search", [("id", "in", [a, b, c])], limit=1, order="id asc") == [a]
    assert call("search", [("id", "=", c)]) == []  # archived records are hidden ...
    assert call("search", [("id", "=", c), ("active", "=", False)]) == [c]  # ... unless asked for
    assert call("search", ["!", ("email", "=", False), ("id", "in", [a, b])]) == [a]
    assert call("search_read", [("id", "=", a)], ["name"]) == [{"id": a, "name": "Alpha"}]
    assert call("create", [{"name": "x1"}, {"name": "x2"}]) == [c + 1, c + 2]
    with pytest.raises(ServerError):
        call("search", [("nope", "=", 1)])
    with pytest.raises(ServerError):
        call("search", [("name", "~", "x")])


# ---------------------------------------------------------------------------------------------
# Per version, as real Odoo 17 and 18 were seen to answer (issue 9; docs in watchdog/lab/standin)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, StandinProcess]]:
    """A 17.0 and an 18.0 stand-in process, with the real password cost."""
    workdir = tmp_path_factory.mktemp("versions")
    procs = {
        17: StandinProcess("blue", workdir, version="17.0"),
        18: StandinProcess("green", workdir, version="18.0"),
    }
    for proc in procs.values():
        proc.start()
    try:
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()


@pytest.fixture
def v17(versions: dict[int, StandinProcess]) -> Iterator[StandinProcess]:
    clear_faults(versions[17].url)
    yield versions[17]
    clear_faults(versions[17].url)


@pytest.fixture
def v18(versions: dict[int, StandinProcess]) -> Iterator[StandinProcess]:
    clear_faults(versions[18].url)
    yield versions[18]
    clear_faults(versions[18].url)


def raw_http(port: int, request: bytes) -> tuple[str, dict[str, str], bytes, bool]:
    """One request written on a socket: (status line, headers, body, closed by the server)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        while len(body) < int(headers.get("Content-Length", 0)):
            body += sock.recv(65536)
        sock.settimeout(2)
        closed = sock.recv(1) == b""
    return lines[0], headers, body, closed


def http_request(
    url: str, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any, bytes]:
    """One request that follows no redirect: (status, headers, body)."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect, urllib.request.ProxyHandler({}))
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with opener.open(req, timeout=5) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers, exc.read()


def new_lines(path: Path, since: int) -> list[dict[str, str]]:
    return log_records(path)[since:]


def exceptions_logged(records: list[dict[str, str]]) -> int:
    return sum(
        1
        for r in records
        if r["level"] == "ERROR" and r["msg"].startswith("Exception during request handling.")
    )


@pytest.mark.lab
def test_db_server_status_is_ignored_by_17_and_honoured_by_18(
    v17: StandinProcess, v18: StandinProcess
) -> None:
    mark = len(log_records(v17.log_file))
    status, _, body = http_get(f"{v17.url}/web/health?db_server_status=1")
    assert (status, json.loads(body)) == (200, {"status": "pass"})
    [warning] = [r for r in new_lines(v17.log_file, mark) if r["level"] == "WARNING"]
    assert warning["msg"] == (
        "<function odoo.addons.web.controllers.home.health> called ignoring args "
        "{'db_server_status'}"
    )
    status, _, body = http_get(f"{v18.url}/web/health?db_server_status=1")
    assert (status, json.loads(body)) == (200, {"status": "pass", "db_server_status": True})

    set_faults(v17.url, db_down=True)
    set_faults(v18.url, db_down=True)
    status, _, body = http_get(f"{v17.url}/web/health?db_server_status=1")
    assert (status, json.loads(body)) == (200, {"status": "pass"})  # 17 cannot tell
    status, headers, body = http_get(f"{v18.url}/web/health?db_server_status=1")
    assert (status, json.loads(body)) == (500, {"status": "fail", "db_server_status": False})
    assert headers["Content-Type"] == "application/json"


@pytest.mark.lab
@pytest.mark.parametrize("major", [17, 18])
def test_postgresql_down_login_redirects_to_itself_and_version_still_answers(
    versions: dict[int, StandinProcess], major: int
) -> None:
    proc = versions[major]
    clear_faults(proc.url)
    set_faults(proc.url, db_down=True)
    try:
        mark = len(log_records(proc.log_file))
        url = f"{proc.url}/web/login?redirect=%2Fweb"
        status, headers, _ = http_request(url)
        assert status == 302  # not 500: Odoo falls back to no database, then ensure_db()
        assert headers["Location"] == url  # this very URL, absolute on both versions
        assert "session_id=" in headers["Set-Cookie"]
        status, _, body = http_request(f"{proc.url}/web/health")
        assert (status, json.loads(body)) == (200, {"status": "pass"})
        version = xml_call(f"{proc.url}/xmlrpc/2/common", "version")
        assert version["server_version_info"][0] == major
        assert exceptions_logged(new_lines(proc.log_file, mark)) == 0
        failed = [r for r in new_lines(proc.log_file, mark) if r["name"] == "odoo.sql_db"]
        assert failed and failed[0]["msg"] == "Connection to the database failed"
        assert {r["level"] for r in failed} == {"INFO"}

        status, _, _ = http_request(f"{proc.url}/web")  # the one path Odoo lets fail
        assert status == 500
        assert exceptions_logged(new_lines(proc.log_file, mark)) == 1
    finally:
        clear_faults(proc.url)


XMLRPC_FAULTS: list[tuple[str, str, tuple[Any, ...]]] = [
    # (service, method, params)
    ("object", "execute_kw", ("odoo", 2, "admin", "res.partner", "frobnicate", [[]])),
    ("object", "execute_kw", ("odoo", 2, "admin", "res.partner", "search", [[("nope", "=", 1)]])),
    ("object", "execute_kw", ("odoo", 2, "admin", "res.partner", "search", [["&"]])),
    ("object", "execute_kw", ("other", 2, "admin", "res.partner", "search", [[]])),
]


@pytest.mark.lab
def test_18_logs_xmlrpc_faults_with_a_traceback_and_17_logs_none(
    v17: StandinProcess, v18: StandinProcess
) -> None:
    for major, proc in ((17, v17), (18, v18)):
        mark = len(log_records(proc.log_file))
        for service, method, params in XMLRPC_FAULTS:
            with pytest.raises(xmlrpc.client.Fault) as fault:
                xml_call(f"{proc.url}/xmlrpc/2/{service}", method, *params)
            assert fault.value.faultCode == 1
        status, _, body = http_request(
            f"{proc.url}/xmlrpc/2/object", b"<methodCall><oops", {"Content-Type": "text/xml"}
        )
        assert status == 200 and b"<fault>" in body  # malformed XML: a fault too
        logged = exceptions_logged(new_lines(proc.log_file, mark))
        assert logged == (0 if major == 17 else len(XMLRPC_FAULTS) + 1), major
        if major == 18:
            lines = proc.log_file.read_text().splitlines()
            last = max(i for i, line in enumerate(lines) if "Exception during request" in line)
            assert lines[last + 1] == "Traceback (most recent call last):"

        # A create that breaks a constraint: odoo.sql_db logs the bad query, on both.
        mark = len(log_records(proc.log_file))
        with pytest.raises(xmlrpc.client.Fault) as fault:
            xml_call(
                f"{proc.url}/xmlrpc/2/object",
                "execute_kw", "odoo", 2, "admin", "res.partner", "create", [{"email": "x@y"}],
            )
        assert fault.value.faultCode == 2
        assert "Contacts require a name" in fault.value.faultString
        errors = [r for r in new_lines(proc.log_file, mark) if r["level"] == "ERROR"]
        assert [(r["db"], r["name"]) for r in errors] == [("odoo", "odoo.sql_db")], major
        assert errors[0]["msg"].startswith('bad query: INSERT INTO "res_partner"')


@pytest.mark.lab
@pytest.mark.parametrize("path", ["/web/login", "/web/health"])
def test_post_without_a_csrf_token_is_400(v18: StandinProcess, path: str) -> None:
    mark = len(log_records(v18.log_file))
    status, headers, body = http_request(
        f"{v18.url}{path}",
        b"login=admin&password=admin",
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 400
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert b"<p>Session expired (invalid CSRF token)</p>" in body
    [warning] = [r for r in new_lines(v18.log_file, mark) if r["level"] == "WARNING"]
    assert warning["msg"] == f"No CSRF validation token provided for path {path!r}"


@pytest.mark.lab
def test_no_keep_alive_http10_on_17_and_connection_close_on_18(
    v17: StandinProcess, v18: StandinProcess
) -> None:
    request = b"GET /web/health HTTP/1.1\r\nHost: odoo\r\n\r\n"
    status, headers, body, closed = raw_http(v17.port, request)
    assert status == "HTTP/1.0 200 OK"
    assert "Connection" not in headers and closed
    assert headers["Server"].startswith("Werkzeug/2.0")
    status, headers, body, closed = raw_http(v18.port, request)
    assert status == "HTTP/1.1 200 OK"
    assert headers["Connection"] == "close" and closed
    assert json.loads(body) == {"status": "pass"}
    # The access line shows the request line as the client sent it.
    access = [r for r in log_records(v17.log_file) if r["name"] == "werkzeug"]
    assert '"GET /web/health HTTP/1.1" 200' in access[-1]["msg"]


@pytest.mark.lab
def test_17_redirects_are_absolute_and_has_no_odoo_route(
    v17: StandinProcess, v18: StandinProcess
) -> None:
    status, headers, _ = http_request(f"{v17.url}/")
    assert (status, headers["Location"]) == (303, f"{v17.url}/web")
    status, headers, _ = http_request(f"{v17.url}/web")
    assert (status, headers["Location"]) == (303, f"{v17.url}/web/login?redirect=%2Fweb%3F")
    status, _, body = http_request(f"{v17.url}/odoo")
    assert status == 404
    assert body.startswith(b'<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 3.2 Final//EN">\n')

    status, headers, _ = http_request(f"{v18.url}/")
    assert (status, headers["Location"]) == (303, "/odoo")
    status, headers, _ = http_request(f"{v18.url}/odoo")
    assert (status, headers["Location"]) == (303, "/web/login?redirect=%2Fodoo%3F")


@pytest.mark.lab
def test_error_pages_are_werkzeugs_html(v17: StandinProcess, v18: StandinProcess) -> None:
    status, headers, body = http_request(f"{v18.url}/no/such/page")
    assert status == 404
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert body == (
        b"<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n<h1>Not Found</h1>\n"
        b"<p>The requested URL was not found on the server. If you entered the URL manually "
        b"please check your spelling and try again.</p>\n"
    )
    status, _, body = http_request(f"{v17.url}/web/webclient/version_info")  # a GET
    assert status == 400
    assert b"<title>400 Bad Request</title>" in body
    assert b"is type=&#x27;json&#x27;." in body or b"is type='json'." in body
    status, _, body = http_request(
        f"{v17.url}/web/webclient/version_info", b"{nope", {"Content-Type": "application/json"}
    )
    assert (status, body) == (400, b"Invalid JSON data")
    status, headers, body = http_request(f"{v17.url}/xmlrpc/2/common")  # a GET
    assert status == 405 and headers["Allow"] == "POST"
    assert b"<h1>Method Not Allowed</h1>" in body


@pytest.mark.lab
def test_json_content_type_and_the_session_cookie(v17: StandinProcess) -> None:
    payload = json.dumps({"jsonrpc": "2.0", "id": 1, "params": {}}).encode()
    status, headers, _ = http_request(
        f"{v17.url}/web/webclient/version_info", payload, {"Content-Type": "application/json"}
    )
    assert status == 200
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    for cookie in (
        headers["Set-Cookie"],
        http_request(f"{v17.url}/web/login")[1]["Set-Cookie"],
        http_request(f"{v17.url}/web")[1]["Set-Cookie"],
    ):
        assert cookie.startswith("session_id=")
        attributes = cookie.lower()  # (their names are case-insensitive)
        assert "expires=" in attributes and "max-age=604800" in attributes
        assert "httponly" in attributes and "samesite" not in attributes
    assert http_request(f"{v17.url}/web/health")[1]["Set-Cookie"] is None  # save_session=False


@pytest.mark.lab
def test_server_version_as_packaged_builds_report_it(
    v17: StandinProcess, v18: StandinProcess
) -> None:
    for proc, version, info in (
        (v17, "17.0-20250225", [17, 0, 0, "final", 0, ""]),
        (v18, "18.0-20250421", [18, 0, 0, "final", 0, ""]),
    ):
        answer = xml_call(f"{proc.url}/xmlrpc/2/common", "version")
        assert (answer["server_version"], answer["server_version_info"]) == (version, info)
        assert answer["server_serie"] == version[:4]


@pytest.mark.lab
def test_read_of_a_missing_id_is_an_empty_list(v17: StandinProcess) -> None:
    url = f"{v17.url}/xmlrpc/2/object"
    assert xml_call(url, "execute_kw", "odoo", 2, "admin", "res.partner", "read", [[99999]]) == []
    args = ("odoo", 2, "admin", "res.partner", "read", [[3, 99999]], {"fields": ["name"]})
    [one] = xml_call(url, "execute_kw", *args)
    assert one == {"id": 3, "name": "Administrator"}


@pytest.mark.lab
def test_log_lines_carry_dbname_none_or_question_mark_where_odoo_does(
    v17: StandinProcess,
) -> None:
    records = log_records(v17.log_file)
    assert records[0]["db"] == "?" and records[0]["msg"].startswith("Odoo version")
    xml_call(f"{v17.url}/xmlrpc/2/common", "version")  # dispatch_rpc: dbname None
    http_get(f"{v17.url}/web/health?probe=db")  # a request on the configured database
    xml_call(f"{v17.url}/xmlrpc/2/common", "authenticate", "odoo", "nobody", "x", {})
    access = [r for r in log_records(v17.log_file) if r["name"] == "werkzeug"][-3:]
    assert [(r["db"], r["msg"].split('"')[1].split()[1]) for r in access] == [
        ("None", "/xmlrpc/2/common"),
        ("odoo", "/web/health?probe=db"),
        ("odoo", "/xmlrpc/2/common"),  # the login opened the database
    ]


@pytest.mark.lab
def test_a_password_check_costs_about_a_third_of_a_second(v17: StandinProcess) -> None:
    common = f"{v17.url}/xmlrpc/2/common"

    def timed(*params: Any) -> float:
        t0 = time.perf_counter()
        xml_call(common, "authenticate", *params)
        return time.perf_counter() - t0

    assert 0.3 <= timed("odoo", "admin", "admin", {}) < 1.0
    assert 0.3 <= timed("odoo", "admin", "wrong", {}) < 1.0  # a wrong password as well
    assert timed("odoo", "nobody", "admin", {}) < 0.2  # no such user: no hash to check


@pytest.mark.parametrize(
    ("version", "server_version", "http10", "odoo_route"),
    [
        ("16.0", "16.0-20250909", True, False),
        ("17.0", "17.0-20250225", True, False),
        ("18.0", "18.0-20250421", False, True),
        ("19.0", "19.0-20251002", False, True),
    ],
)
async def test_each_version_answers_as_its_series_does(
    make_client: MakeClient, version: str, server_version: str, http10: bool, odoo_route: bool
) -> None:
    client = await make_client(version=version)
    _, body = await rpc(client, "/web/webclient/version_info", {})
    assert body["result"]["server_version"] == server_version
    assert body["result"]["server_version_info"][:2] == [int(version[:2]), 0]
    health = await client.get("/web/health", params={"db_server_status": "1"})
    assert ("db_server_status" in await health.json()) is not http10  # 18 on: the db check
    assert (health.version.minor == 0) is http10
    assert ("Connection" not in health.headers) is http10  # 18 on: Connection: close
    odoo = await client.get("/odoo", allow_redirects=False)
    assert odoo.status == (303 if odoo_route else 404)
