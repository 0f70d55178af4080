"""The stand-in per Odoo version (16-19): version answers, `/web/version` and JSON-2 on 19,
the XML-RPC/JSON-RPC deprecation warning of 19, res.partner's create_uid, and the read fault.

Most tests run the app in-process (aiohttp's test client); one runs a real 19 process.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import xmlrpc.client
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from watchdog.lab.standin import StandinProcess, StandinSettings, create_app
from watchdog.lab.standin.routes import RPC_DEPRECATION_NOTICE
from watchdog.lab.standin.state import STATE

Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]
KEY = "smoke-api-key-0123456789"
SMOKE = f"smoke:smoke-pw:{KEY}"


@pytest.fixture
async def make_client(tmp_path: Path) -> AsyncIterator[MakeClient]:
    clients: list[Client] = []

    async def make(**settings: Any) -> Client:
        settings.setdefault("log_file", tmp_path / f"odoo-{len(clients)}.log")
        settings.setdefault("password_cost", 0.0)
        settings.setdefault("users", [SMOKE])
        client: Client = TestClient(TestServer(create_app(StandinSettings(**settings))))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def rpc(client: Client, path: str, params: dict[str, Any], **kw: Any) -> Any:
    resp = await client.post(
        path, json={"jsonrpc": "2.0", "method": "call", "id": 1, "params": params}, **kw
    )
    assert resp.status == 200
    return await resp.json()


async def xml(client: Client, service: str, method: str, *params: Any) -> Any:
    body = xmlrpc.client.dumps(params, method)
    resp = await client.post(f"/xmlrpc/2/{service}", data=body,
                             headers={"Content-Type": "text/xml"})
    assert resp.status == 200
    try:
        return xmlrpc.client.loads(await resp.text())[0][0]
    except xmlrpc.client.Fault as fault:
        return fault


async def json2(client: Client, model: str, method: str, body: Any = None, *,
                key: str | None = KEY, db: str | None = "odoo") -> tuple[int, Any, Any]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"bearer {key}"
    if db is not None:
        headers["X-Odoo-Database"] = db
    resp = await client.post(f"/json/2/{model}/{method}", data=json.dumps(body or {}),
                             headers=headers)
    text = await resp.text()
    try:
        payload = json.loads(text)
    except ValueError:
        payload = text
    return resp.status, payload, resp.headers


async def set_fault(client: Client, **faults: Any) -> None:
    resp = await client.post("/__lab__/faults", json=faults)
    assert resp.status == 200


def log_text(client: Client) -> str:
    settings = client.server.app[STATE].settings  # type: ignore[union-attr]
    path: Path = settings.log_file
    return path.read_text() if path.exists() else ""


# ---------------------------------------------------------------------------------------------
# Versions
# ---------------------------------------------------------------------------------------------

BUILDS = {"16.0": "16.0-20250909", "17.0": "17.0-20250225", "18.0": "18.0-20250421",
          "19.0": "19.0-20251002"}


@pytest.mark.parametrize("version", sorted(BUILDS))
async def test_each_version_reports_its_dated_build(make_client: MakeClient, version: str) -> None:
    client = await make_client(version=version)
    major = int(version[:2])
    info = (await rpc(client, "/web/webclient/version_info", {}))["result"]
    assert info["server_version"] == BUILDS[version]
    assert info["server_version_info"] == [major, 0, 0, "final", 0, ""]
    assert info["server_serie"] == version
    common = await xml(client, "common", "version")
    assert common["server_version"] == BUILDS[version]
    assert await xml(client, "db", "server_version") == BUILDS[version]
    probe = await client.get("/web/version")
    if major >= 19:  # the rpc addon of 19: no login, no session
        assert probe.status == 200
        assert probe.headers["Content-Type"].startswith("application/json")
        assert await probe.json() == {
            "version_info": [19, 0, 0, "final", 0, ""], "version": "19.0-20251002",
        }
        assert "session_id" not in probe.cookies
        assert (await client.get("/json/version")).status == 200
    else:
        assert probe.status == 404
        status, _, _ = await json2(client, "res.partner", "search_count", {"domain": []})
        assert status == 404  # no JSON-2 before 19


async def test_19_logs_a_deprecation_warning_on_each_xmlrpc_and_jsonrpc_call(
    make_client: MakeClient,
) -> None:
    v19 = await make_client(version="19.0")
    v18 = await make_client(version="18.0")
    for client in (v18, v19):
        assert await xml(client, "common", "authenticate", "odoo", "admin", "admin", {}) == 2
        assert await xml(client, "common", "version")
        body = await rpc(client, "/jsonrpc",
                         {"service": "common", "method": "version", "args": []})
        assert body["result"]["server_serie"] in ("18.0", "19.0")
    assert "deprecated" not in log_text(v18)
    text = log_text(v19)
    xml_notice = RPC_DEPRECATION_NOTICE % "odoo.addons.rpc.controllers.xmlrpc"
    assert text.count(
        "WARNING odoo odoo.addons.rpc.controllers.xmlrpc: The /xmlrpc, /xmlrpc/2 and /jsonrpc "
        "endpoints are deprecated in Odoo 19 and scheduled for removal in Odoo 20."
    ) == 2
    assert xml_notice.splitlines()[1] in text  # "Mute this logger: --log-handler ...:ERROR"
    assert text.count("WARNING odoo odoo.addons.rpc.controllers.jsonrpc: The /xmlrpc") == 1
    # JSON-2 and /web/version log no such warning.
    before = log_text(v19).count("deprecated")
    await v19.get("/web/version")
    await json2(v19, "res.partner", "search_count", {"domain": []})
    assert log_text(v19).count("deprecated") == before


# ---------------------------------------------------------------------------------------------
# JSON-2
# ---------------------------------------------------------------------------------------------


async def test_json2_create_read_unlink_with_the_api_key(make_client: MakeClient) -> None:
    client = await make_client(version="19.0")
    backend = client.server.app[STATE].backend  # type: ignore[union-attr]
    smoke = backend.users.by_login("smoke")
    count = backend.partners.count()
    name = "odoo-watchdog smoke r-42"
    status, ids, headers = await json2(client, "res.partner", "create",
                                       {"vals_list": [{"name": name}]})
    assert status == 200 and headers["Content-Type"] == "application/json; charset=utf-8"
    assert isinstance(ids, list) and len(ids) == 1
    [pid] = ids
    status, rows, _ = await json2(client, "res.partner", "read",
                                  {"ids": [pid], "fields": ["name", "create_uid"]})
    assert status == 200
    assert rows == [{"id": pid, "name": name, "create_uid": [smoke.uid, "smoke"]}]
    mine = [["name", "=like", "odoo-watchdog smoke %"], ["create_uid", "=", smoke.uid]]
    assert (await json2(client, "res.partner", "search", {"domain": mine}))[1] == [pid]
    assert (await json2(client, "res.partner", "search_count", {"domain": mine}))[1] == 1
    found = (await json2(client, "res.partner", "search_read",
                         {"domain": [["name", "like", "smoke r-4"]], "fields": ["name"]}))[1]
    assert found == [{"id": pid, "name": name}]
    assert backend.partners.count() == count + 1
    assert (await json2(client, "res.partner", "unlink", {"ids": [pid]}))[:2] == (200, True)
    assert backend.partners.count() == count
    assert (await json2(client, "res.partner", "search_count", {"domain": mine}))[1] == 0
    # Without X-Odoo-Database, the one database is used.
    assert (await json2(client, "res.partner", "search", {"domain": mine}, db=None))[0] == 200


def assert_error_body(body: Any, name: str, message: str) -> None:
    assert isinstance(body, dict)
    assert set(body) == {"name", "message", "arguments", "context", "debug"}
    assert body["name"] == name
    assert body["message"] == message
    assert body["arguments"][0] == message
    assert body["context"] == {}
    assert isinstance(body["debug"], str) and body["debug"]


async def test_json2_errors_have_real_http_codes_and_odoo_bodies(make_client: MakeClient) -> None:
    client = await make_client(version="19.0", expired_api_keys=["smoke:old-key"])
    status, body, headers = await json2(client, "res.partner", "search", {"domain": []}, key=None)
    assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
    assert_error_body(body, "werkzeug.exceptions.Unauthorized",
                      'User not authenticated, use the "Authorization" header')
    assert body["arguments"] == [body["message"], 401]
    for key in ("wrong-key", "old-key"):  # an expired key is refused as a wrong one is
        status, body, _ = await json2(client, "res.partner", "search", {"domain": []}, key=key)
        assert status == 401
        assert_error_body(body, "werkzeug.exceptions.Unauthorized", "Invalid apikey")

    status, body, _ = await json2(client, "res.nothing", "search", {"domain": []})
    assert status == 404
    assert_error_body(body, "werkzeug.exceptions.NotFound",
                      "the model 'res.nothing' does not exist")
    status, body, _ = await json2(client, "res.partner", "frobnicate", {})
    assert status == 404
    assert_error_body(body, "werkzeug.exceptions.NotFound",
                      "The method 'res.partner.frobnicate' does not exist")
    status, body, _ = await json2(client, "res.partner", "_private", {})
    assert status == 403 and body["name"] == "odoo.exceptions.AccessError"

    status, body, _ = await json2(client, "res.partner", "create", {})
    assert status == 422
    assert_error_body(body, "werkzeug.exceptions.UnprocessableEntity",
                      "missing a required argument: 'vals_list'")
    status, body, _ = await json2(client, "res.partner", "read", {"ids": [1], "colour": "red"})
    assert status == 422 and body["message"] == "got an unexpected keyword argument 'colour'"
    status, body, _ = await json2(client, "res.partner", "create",
                                  {"ids": [1], "vals_list": [{"name": "x"}]})
    assert status == 422 and body["message"] == "cannot call res.partner.create with ids"
    status, body, _ = await json2(client, "res.partner", "create", {"vals_list": [{}]})
    assert status == 422 and body["name"] == "odoo.exceptions.ValidationError"

    resp = await client.post("/json/2/res.partner/search", data="{nope",
                             headers={"Authorization": f"bearer {KEY}",
                                      "Content-Type": "application/json"})
    assert resp.status == 400
    assert (await resp.json())["message"].startswith("could not parse the body as json")
    resp = await client.get("/json/2/res.partner/search",
                            headers={"Authorization": f"bearer {KEY}",
                                     "Content-Type": "application/json"})
    assert resp.status == 405
    status, _, _ = await json2(client, "res.partner", "search", {"domain": []}, db="other")
    assert status == 404

    await set_fault(client, rpc_read_error=True)
    [pid] = (await json2(client, "res.partner", "create", {"vals_list": [{"name": "r"}]}))[1]
    status, body, _ = await json2(client, "res.partner", "read", {"ids": [pid]})
    assert status == 500
    assert body["name"] == "psycopg2.errors.UndefinedColumn"
    assert "does not exist" in body["message"]
    assert (await json2(client, "res.partner", "unlink", {"ids": [pid]}))[:2] == (200, True)


async def test_xmlrpc_read_fault_still_lets_unlink_run(make_client: MakeClient) -> None:
    client = await make_client(version="17.0")
    backend = client.server.app[STATE].backend  # type: ignore[union-attr]
    count = backend.partners.count()
    uid = await xml(client, "common", "authenticate", "odoo", "smoke", KEY, {})

    async def call(method: str, *args: Any, **kw: Any) -> Any:
        return await xml(client, "object", "execute_kw", "odoo", uid, KEY, "res.partner",
                         method, list(args), kw)

    pid = await call("create", {"name": "odoo-watchdog smoke r-7"})
    await set_fault(client, rpc_read_error=True)
    fault = await call("read", [pid], ["name"])
    assert isinstance(fault, xmlrpc.client.Fault) and fault.faultCode == 1
    assert "psycopg2.errors.UndefinedColumn" in fault.faultString
    assert await call("unlink", [pid]) is True
    assert backend.partners.count() == count
    assert "ERROR odoo odoo.sql_db: bad query" in log_text(client)


# ---------------------------------------------------------------------------------------------
# A real 19 process
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def v19(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandinProcess]:
    proc = StandinProcess("green", tmp_path_factory.mktemp("v19"), version="19.0",
                          password_cost=0.0, users=[SMOKE])
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def http(url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=headers or {},
                                 method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


@pytest.mark.lab
def test_process_19_json2_and_version_probe(v19: StandinProcess) -> None:
    assert http(f"{v19.url}/web/version") == (
        200, {"version_info": [19, 0, 0, "final", 0, ""], "version": "19.0-20251002"})
    headers = {"Authorization": f"bearer {KEY}", "X-Odoo-Database": "odoo",
               "Content-Type": "application/json"}
    before = http(f"{v19.url}/json/2/res.partner/search_count", {"domain": []}, headers)
    status, ids = http(f"{v19.url}/json/2/res.partner/create",
                       {"vals_list": [{"name": "odoo-watchdog smoke p"}]}, headers)
    assert status == 200
    status, rows = http(f"{v19.url}/json/2/res.partner/read",
                        {"ids": ids, "fields": ["name"]}, headers)
    assert (status, rows) == (200, [{"id": ids[0], "name": "odoo-watchdog smoke p"}])
    assert http(f"{v19.url}/json/2/res.partner/unlink", {"ids": ids}, headers) == (200, True)
    assert http(f"{v19.url}/json/2/res.partner/search_count", {"domain": []}, headers) == before
    status, body = http(f"{v19.url}/json/2/res.partner/read", {"ids": ids},
                        {"Content-Type": "application/json"})
    assert status == 401 and body["name"] == "werkzeug.exceptions.Unauthorized"
    assert "deprecated" not in v19.log_file.read_text()
    with xmlrpc.client.ServerProxy(f"{v19.url}/xmlrpc/2/common") as common:
        assert common.version()["server_serie"] == "19.0"
    assert "deprecated in Odoo 19" in v19.log_file.read_text()
