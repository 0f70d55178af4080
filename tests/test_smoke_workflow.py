"""The `workflow` smoke check against stand-ins of Odoo 16-19: create, read back and unlink a
partner as the smoke user (XML-RPC on 16-18, JSON-2 on 19), leftovers removed first, the unlink
attempted whatever the read gave, and each way logging in fails said plainly, without a secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_smoke_lab import (
    SMOKE_KEY,
    SMOKE_LOGIN,
    SMOKE_PASSWORD,
    Lab,
    new_session,
    standin,
)
from tests.test_smoke_lab import (
    forget_failed_logins as forget_failed_logins,  # autouse fixture
)
from watchdog.lab.standin import aset_faults
from watchdog.smoke_rpc import Credentials, probe_version
from watchdog.smoke_workflow import PREFIX, run_workflow

pytestmark = pytest.mark.lab

WITH_PASSWORD = Credentials("odoo", SMOKE_LOGIN, password=SMOKE_PASSWORD)
WITH_KEY = Credentials("odoo", SMOKE_LOGIN, api_key=SMOKE_KEY)
BOTH = Credentials("odoo", SMOKE_LOGIN, password=SMOKE_PASSWORD, api_key=SMOKE_KEY)


async def workflow(lab: Lab, creds: Credentials, rollout: str = "r42") -> tuple[bool, str]:
    async with new_session() as session:
        version = await probe_version(session, lab.url)
        return await run_workflow(session, lab.url, creds, version, rollout)


def requests(log: Path, fragment: str) -> int:
    return sum(1 for line in log.read_text().splitlines() if fragment in line)


def no_secret(detail: str) -> None:
    assert SMOKE_PASSWORD not in detail and SMOKE_KEY not in detail


@pytest.mark.parametrize(("version", "creds", "protocol"), [
    ("16.0", WITH_PASSWORD, "XML-RPC"), ("17.0", WITH_PASSWORD, "XML-RPC"),
    ("17.0", WITH_KEY, "XML-RPC"), ("18.0", WITH_PASSWORD, "XML-RPC"),
    ("18.0", WITH_KEY, "XML-RPC"), ("19.0", WITH_KEY, "JSON-2"), ("19.0", BOTH, "JSON-2")])
async def test_workflow_leaves_the_partner_count_as_it_was(
        version: str, creds: Credentials, protocol: str, tmp_path: Path) -> None:
    log = tmp_path / "odoo.log"
    async with standin(version, log_file=log) as lab:
        before = lab.partners()
        ok, detail = await workflow(lab, creds)
        after = lab.partners()
    assert ok, detail
    assert detail == (f"partner created, read back and unlinked over {protocol} on "
                      f"{version}")
    assert after == before
    text = log.read_text()
    if protocol == "JSON-2":  # no XML-RPC call, so none of 19's deprecation warnings
        assert requests(log, "POST /json/2/res.partner/create") == 1
        assert "/xmlrpc/" not in text and "deprecat" not in text.lower()
    else:
        assert requests(log, "POST /xmlrpc/2/object") == 4  # leftovers, create, read, unlink
        assert "/json/2/" not in text


async def test_19_with_only_a_password_says_json2_needs_an_api_key() -> None:
    async with standin("19.0") as lab:
        ok, detail = await workflow(lab, WITH_PASSWORD)
    assert not ok
    assert "JSON-2, which needs an API key: add api_key to credentials_file" in detail


@pytest.mark.parametrize("version", ["17.0", "19.0"])
async def test_a_failing_read_still_unlinks(version: str) -> None:
    async with standin(version) as lab:
        before = lab.partners()
        async with new_session() as session:
            await aset_faults(session, lab.url, rpc_read_error=True)
        ok, detail = await workflow(lab, BOTH)
        after = lab.partners()
    assert not ok
    assert "reading partner" in detail and "back failed" in detail and "(unlinked)" in detail
    assert after == before


@pytest.mark.parametrize("version", ["18.0", "19.0"])
async def test_a_leftover_is_removed_and_another_users_partner_is_not(version: str) -> None:
    async with standin(version, users=[f"{SMOKE_LOGIN}:{SMOKE_PASSWORD}:{SMOKE_KEY}",
                                       "alice:alice-pw"]) as lab:
        partners = lab.state.backend.partners
        ignore = lambda _message: None  # noqa: E731
        mine = partners.create_one({"name": PREFIX + "r41"}, ignore, ignore, lab.uid())
        alices = partners.create_one({"name": PREFIX + "r41"}, ignore, ignore,
                                     lab.uid("alice"))
        other_case = partners.create_one({"name": "Odoo-watchdog smoke r40"}, ignore, ignore,
                                         lab.uid())
        no_space = partners.create_one({"name": "odoo-watchdog smokex"}, ignore, ignore,
                                       lab.uid())
        before = lab.partners()
        ok, detail = await workflow(lab, BOTH)
        left = set(partners.records)
    assert ok, detail
    assert detail.endswith(", 1 leftover(s) of an earlier check removed")
    assert mine not in left
    assert {alices, other_case, no_space} <= left
    assert lab.partners() == before - 1


@pytest.mark.parametrize("version", ["16.0", "17.0", "18.0"])
async def test_a_wrong_password_fails_plainly_and_is_not_retried(
        version: str, tmp_path: Path) -> None:
    log = tmp_path / "odoo.log"
    wrong = Credentials("odoo", SMOKE_LOGIN, password="not-the-Password-1")
    async with standin(version, log_file=log) as lab:
        ok, detail = await workflow(lab, wrong)
        again_ok, again = await workflow(lab, wrong, "r43")
    assert not ok and not again_ok
    assert detail == ("authentication failed for login smoke on db odoo (wrong password, or no "
                      "such active user)")
    assert "not-the-Password-1" not in detail + again
    assert again.startswith("not logging in again with credentials that failed")
    assert requests(log, "Login failed for db:odoo login:smoke") == 1  # the cooldown not fed


async def test_a_two_factor_user_is_named_as_such() -> None:
    async with standin("17.0", totp_users=[SMOKE_LOGIN]) as lab:
        ok, detail = await workflow(lab, WITH_PASSWORD)
    assert not ok
    assert "the user has two-factor authentication" in detail
    no_secret(detail)


async def test_an_expired_api_key_on_18_says_it_may_have_expired() -> None:
    expired = "feedfacefeedfacefeedfacefeedfacefeedface"
    async with standin("18.0", expired_api_keys=[f"{SMOKE_LOGIN}:{expired}"]) as lab:
        ok, detail = await workflow(lab, Credentials("odoo", SMOKE_LOGIN, api_key=expired))
    assert not ok
    assert detail.startswith("authentication failed for login smoke on db odoo with the API "
                             "key: it is wrong or revoked or expired")
    assert expired not in detail


async def test_an_expired_api_key_on_19_is_a_401_that_says_so() -> None:
    expired = "feedfacefeedfacefeedfacefeedfacefeedface"
    async with standin("19.0", expired_api_keys=[f"{SMOKE_LOGIN}:{expired}"]) as lab:
        before = lab.partners()
        ok, detail = await workflow(lab, Credentials("odoo", SMOKE_LOGIN, api_key=expired))
        after = lab.partners()
    assert not ok
    assert "the API key was refused for login smoke on db odoo" in detail
    assert "401: Unauthorized: Invalid apikey" in detail and "expired" in detail
    assert expired not in detail
    assert after == before


async def test_the_login_cooldown_is_named_and_stops_the_check(tmp_path: Path) -> None:
    log = tmp_path / "odoo.log"
    async with standin("17.0", log_file=log, login_cooldown_after=1) as lab:
        async with new_session() as session:  # somebody else's failed login
            await session.post(lab.url + "/web/session/authenticate", json={
                "jsonrpc": "2.0", "method": "call", "id": 1,
                "params": {"db": "odoo", "login": SMOKE_LOGIN, "password": "wrong"}})
        ok, detail = await workflow(lab, WITH_PASSWORD)
    assert not ok
    assert detail.startswith("too many failed logins for login smoke on db odoo: Odoo's login "
                             "cooldown")
    assert "stop; no further login is tried" in detail
    no_secret(detail)
