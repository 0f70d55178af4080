"""The stand-in's users and sessions: password and API-key logins, two-factor users, expired
keys, the login cooldown, and sessions shared (or not) between stand-ins through a data_dir.

Two stand-ins share sessions only on one data_dir, one database and one `database.secret`:
16 -> 17 and 18 -> 19 keep them, 17 -> 18 and 19 -> 18 do not.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
import xmlrpc.client
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from watchdog.lab.standin import StandinProcess, StandinSettings, create_app
from watchdog.lab.standin.state import STATE
from watchdog.lab.standin.users import COOLDOWN_MESSAGE

Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]
KEY = "smoke-key-abcdef"
USERS = ["smoke:smoke-pw:" + KEY, "otp:otp-pw:otp-key"]


@pytest.fixture
async def make_client(tmp_path: Path) -> AsyncIterator[MakeClient]:
    clients: list[Client] = []

    async def make(**settings: Any) -> Client:
        settings.setdefault("log_file", tmp_path / f"odoo-{len(clients)}.log")
        settings.setdefault("password_cost", 0.0)
        settings.setdefault("users", USERS)
        settings.setdefault("totp_users", ["otp"])
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
    return resp, await resp.json()


async def authenticate(client: Client, login: str, password: str) -> int | bool:
    body = xmlrpc.client.dumps(("odoo", login, password, {}), "authenticate")
    resp = await client.post("/xmlrpc/2/common", data=body, headers={"Content-Type": "text/xml"})
    result: int | bool = xmlrpc.client.loads(await resp.text())[0][0]
    return result


async def web_login(client: Client, login: str, password: str) -> tuple[Any, str | None]:
    """/web/session/authenticate: (its result or error, the new session cookie)."""
    resp, body = await rpc(client, "/web/session/authenticate",
                           {"db": "odoo", "login": login, "password": password})
    cookie = resp.cookies.get("session_id")
    return body.get("result", body.get("error")), cookie.value if cookie else None


async def session_uid(client: Client, sid: str) -> int | None:
    _, body = await rpc(client, "/web/session/get_session_info", {},
                        cookies={"session_id": sid})
    if "error" in body:
        assert body["error"]["code"] == 100
        assert body["error"]["data"]["name"] == "odoo.http.SessionExpiredException"
        return None
    uid: int = body["result"]["uid"]
    return uid


def log_text(client: Client) -> str:
    path: Path = client.server.app[STATE].settings.log_file  # type: ignore[union-attr]
    return path.read_text() if path.exists() else ""


# ---------------------------------------------------------------------------------------------
# Users
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["16.0", "17.0", "18.0"])
async def test_authenticate_with_password_or_api_key(make_client: MakeClient, version: str) -> None:
    client = await make_client(version=version)
    smoke = client.server.app[STATE].users.by_login("smoke")  # type: ignore[union-attr]
    assert smoke.uid > 2
    assert await authenticate(client, "smoke", "smoke-pw") == smoke.uid
    assert await authenticate(client, "smoke", KEY) == smoke.uid
    assert await authenticate(client, "smoke", "wrong") is False
    assert await authenticate(client, "nobody", "smoke-pw") is False
    # A web login takes the password only, never an API key.
    result, sid = await web_login(client, "smoke", "smoke-pw")
    assert result["uid"] == smoke.uid and result["username"] == "smoke"
    assert sid and await session_uid(client, sid) == smoke.uid
    error, _ = await web_login(client, "smoke", KEY)
    assert error["data"]["name"] == "odoo.exceptions.AccessDenied"
    assert "Login failed for db:odoo login:smoke from 127.0.0.1" in log_text(client)


async def test_a_two_factor_user_gets_no_uid(make_client: MakeClient) -> None:
    client = await make_client(version="17.0")
    result, sid = await web_login(client, "otp", "otp-pw")
    assert result == {"uid": None}
    assert sid is not None and await session_uid(client, sid) is None  # waiting for the code
    # RPC: with an API key only (auth_totp's _rpc_api_keys_only).
    assert await authenticate(client, "otp", "otp-pw") is False
    otp = client.server.app[STATE].users.by_login("otp")  # type: ignore[union-attr]
    assert await authenticate(client, "otp", "otp-key") == otp.uid


async def test_an_expired_api_key_is_refused_from_18(make_client: MakeClient) -> None:
    v17 = await make_client(version="17.0", expired_api_keys=["smoke:old-key"])
    v18 = await make_client(version="18.0", expired_api_keys=["smoke:old-key"])
    uid = await authenticate(v17, "smoke", "old-key")
    assert isinstance(uid, int) and uid > 2  # 17's keys do not expire
    assert await authenticate(v18, "smoke", "old-key") is False  # as a wrong key is
    assert await authenticate(v18, "smoke", KEY) == uid  # its other key still works
    assert "Login failed for db:odoo login:smoke" in log_text(v18)


async def test_users_file(make_client: MakeClient, tmp_path: Path) -> None:
    users = tmp_path / "users.json"
    users.write_text(json.dumps([
        {"login": "file-user", "password": "pw", "name": "File User",
         "api_keys": [{"key": "k1", "expires": "2000-01-01T00:00:00Z"}, {"key": "k2"}]},
        {"login": "file-otp", "password": "pw2", "totp": True},
    ]))
    client = await make_client(version="18.0", users=[], totp_users=[], users_file=users)
    assert await authenticate(client, "file-user", "k1") is False
    uid = await authenticate(client, "file-user", "k2")
    assert isinstance(uid, int)
    assert (await web_login(client, "file-otp", "pw2"))[0] == {"uid": None}


async def test_cooldown_after_ten_failures(make_client: MakeClient) -> None:
    client = await make_client(version="17.0", login_cooldown_duration=0.5)
    for _ in range(10):
        assert await authenticate(client, "smoke", "wrong") is False
    # The eleventh try is refused before the password is looked at, even the right one.
    assert await authenticate(client, "smoke", "smoke-pw") is False
    error, sid = await web_login(client, "smoke", "smoke-pw")
    assert sid is None
    assert error["data"]["name"] == "odoo.exceptions.AccessDenied"
    assert error["data"]["message"] == COOLDOWN_MESSAGE
    text = log_text(client)
    assert "Login attempt ignored for 127.0.0.1 (user 'smoke') on odoo: 10 failures since" in text
    assert "The rate-limited IP address 127.0.0.1 is classified as private" in text
    # The login form says so too.
    page = await client.get("/web/login")
    token = (await page.text()).split('name="csrf_token" value="')[1].split('"')[0]
    form = await client.post("/web/login", data={"csrf_token": token, "login": "smoke",
                                                 "password": "smoke-pw"}, allow_redirects=False)
    assert COOLDOWN_MESSAGE in await form.text()
    await asyncio.sleep(0.6)  # the cooldown is over
    smoke = client.server.app[STATE].users.by_login("smoke")  # type: ignore[union-attr]
    assert await authenticate(client, "smoke", "smoke-pw") == smoke.uid
    # A success clears the count: nine more failures do not block.
    for _ in range(9):
        assert await authenticate(client, "smoke", "wrong") is False
    assert await authenticate(client, "smoke", "smoke-pw") == smoke.uid


# ---------------------------------------------------------------------------------------------
# Sessions
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second", "shared"),
    [("16.0", "17.0", True), ("17.0", "17.0", True), ("18.0", "19.0", True),
     ("17.0", "18.0", False), ("18.0", "17.0", False), ("19.0", "18.0", False),
     ("19.0", "19.0", True)],
)
async def test_sessions_between_versions_on_one_data_dir(
    make_client: MakeClient, tmp_path: Path, first: str, second: str, shared: bool
) -> None:
    live = await make_client(version=first, data_dir=tmp_path / "data")
    candidate = await make_client(version=second, data_dir=tmp_path / "data")
    result, sid = await web_login(live, "smoke", "smoke-pw")
    assert sid is not None and await session_uid(live, sid) == result["uid"]
    files = list((tmp_path / "data" / "sessions").glob("*/*"))
    assert [f.name for f in files] == [sid] and files[0].parent.name == sid[:2]
    assert len(sid) == (56 if first < "18" else 84)
    assert (await session_uid(candidate, sid) == result["uid"]) is shared


async def test_sessions_need_the_same_data_dir_and_secret(
    make_client: MakeClient, tmp_path: Path
) -> None:
    live = await make_client(version="17.0", data_dir=tmp_path / "a", db_secret="s1")
    other_dir = await make_client(version="17.0", data_dir=tmp_path / "b", db_secret="s1")
    other_secret = await make_client(version="17.0", data_dir=tmp_path / "a", db_secret="s2")
    no_dir = await make_client(version="17.0", db_secret="s1")
    same = await make_client(version="17.0", data_dir=tmp_path / "a", db_secret="s1")
    _, sid = await web_login(live, "smoke", "smoke-pw")
    assert sid is not None
    assert await session_uid(other_dir, sid) is None
    assert await session_uid(no_dir, sid) is None
    assert await session_uid(same, sid) is not None
    # A wrong token logs the session out, for everyone reading the file.
    assert await session_uid(other_secret, sid) is None
    assert await session_uid(same, sid) is None


async def test_a_logout_is_seen_by_the_other_stand_in(
    make_client: MakeClient, tmp_path: Path
) -> None:
    live = await make_client(version="18.0", data_dir=tmp_path / "d")
    candidate = await make_client(version="19.0", data_dir=tmp_path / "d")
    _, sid = await web_login(live, "smoke", "smoke-pw")
    assert sid is not None and await session_uid(candidate, sid) is not None
    await live.get("/web/session/logout", cookies={"session_id": sid}, allow_redirects=False)
    assert await session_uid(candidate, sid) is None


def _post(url: str, params: dict[str, Any], cookie: str | None = None) -> tuple[Any, str | None]:
    headers = {"Content-Type": "application/json"}
    if cookie:
        headers["Cookie"] = f"session_id={cookie}"
    data = json.dumps({"jsonrpc": "2.0", "method": "call", "id": 1, "params": params}).encode()
    req = urllib.request.Request(url, data=data, headers=headers)
    with urllib.request.urlopen(req, timeout=5) as resp:
        set_cookie = resp.headers.get("Set-Cookie", "")
        sid = set_cookie.split("session_id=")[1].split(";")[0] if "session_id=" in set_cookie \
            else None
        return json.loads(resp.read()), sid


@pytest.mark.lab
def test_processes_share_sessions_16_to_17_not_17_to_18(tmp_path: Path) -> None:
    data = tmp_path / "data"
    procs = [StandinProcess(colour, tmp_path, version=version, password_cost=0.0,
                            users=USERS, data_dir=data)
             for colour, version in (("blue", "16.0"), ("green", "17.0"), ("red", "18.0"))]
    for proc in procs:
        proc.start()
    try:
        v16, v17, v18 = procs
        login = {"db": "odoo", "login": "smoke", "password": "smoke-pw"}
        body, sid = _post(f"{v16.url}/web/session/authenticate", login)
        uid = body["result"]["uid"]
        assert sid is not None
        info, _ = _post(f"{v17.url}/web/session/get_session_info", {}, sid)
        assert info["result"]["uid"] == uid
        info, _ = _post(f"{v18.url}/web/session/get_session_info", {}, sid)
        assert info["error"]["message"] == "Odoo Session Expired"
    finally:
        for proc in procs:
            proc.stop()
