"""The stand-in's `res.users`: logins, passwords, API keys (with expiry), two-factor users, and
the login cooldown of `res.users._assert_can_auth`.

What follows Odoo 16-19 (`odoo/addons/base/models/res_users.py`, `auth_totp`):

- An interactive login (`/web/login`, `/web/session/authenticate`) takes the password only; an
  RPC login (XML-RPC / JSON-RPC `common.authenticate`, `object.execute_kw`'s check) takes the
  password or an API key (`_check_credentials` falls back to `res.users.apikeys` when
  `interactive` is False).
- A user with two-factor authentication (`totp_enabled`) may use RPC with an API key only
  (`_rpc_api_keys_only`); an interactive login with the right password gets no uid (the session
  waits for the TOTP code: `/web/session/authenticate` answers `{"uid": null}`).
- API keys expire from 18 on (`res_users_apikeys.expiration_date`; 16 and 17 have no expiry, the
  stand-in then ignores it). An expired key is refused exactly as a wrong one is: Odoo's SQL
  leaves it out (`expiration_date >= now()`), so `common.authenticate` answers False and JSON-2
  401 "Invalid apikey", and the log says "Login failed". Nothing on the wire tells an expired
  key from a wrong one; the daemon can only say "wrong or expired API key".
- The cooldown: after `base.login_cooldown_after` (10 in a new database) failed logins from one
  source address, each login from it within `base.login_cooldown_duration` (60 s) of the last
  failure is refused before the credentials are looked at, with a WARNING (and a second one
  when the address is private) and AccessDenied "Too many login failures, please wait a bit
  before trying again." A success clears the count. Per process, as Odoo's registry keeps it.
  API-key checks of JSON-2 bearer requests and `execute_kw` do not pass through it.

The users file (`--users FILE`) is a JSON list of objects: `{"login": "smoke", "password": "pw",
"api_keys": [{"key": "k", "expires": "2025-01-01T00:00:00Z"}], "totp": false, "name": "Smoke"}`
(`expires` an ISO 8601 time or null; optional fields may be left out). `--user
LOGIN:PASSWORD[:API_KEY]` adds one user from the command line.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watchdog.lab.standin.errors import ADMIN_PARTNER_ID, ADMIN_UID

COOLDOWN_AFTER = 10
COOLDOWN_DURATION = 60.0
COOLDOWN_MESSAGE = "Too many login failures, please wait a bit before trying again."
FIRST_UID = 6  # after admin (2), public (4), portal template (5), as in a fresh database
EXPIRED_DAYS_AGO = 1.0


@dataclass
class ApiKey:
    key: str
    #: Unix time after which Odoo 18+ refuses the key; None: no expiry.
    expires: float | None = None

    def valid(self, major: int, now: float) -> bool:
        return self.expires is None or major < 18 or now <= self.expires


@dataclass
class User:
    uid: int
    login: str
    password: str
    name: str = ""
    api_keys: list[ApiKey] = field(default_factory=list)
    totp: bool = False
    partner_id: int = 0

    def __post_init__(self) -> None:
        if not self.name:
            self.name = self.login


def _parse_expiry(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).replace("Z", "+00:00")
    stamp = datetime.datetime.fromisoformat(text)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.UTC)
    return stamp.timestamp()


class UserStore:
    """The users of one stand-in's database, by login and uid."""

    def __init__(self, admin_login: str, admin_password: str) -> None:
        self.users: dict[int, User] = {}
        self.add(User(ADMIN_UID, admin_login, admin_password, "Administrator",
                      partner_id=ADMIN_PARTNER_ID))

    def add(self, user: User) -> User:
        if any(u.login == user.login for u in self.users.values() if u.uid != user.uid):
            raise ValueError(f"duplicate login {user.login!r}")
        self.users[user.uid] = user
        return user

    def next_uid(self) -> int:
        return max([FIRST_UID - 1, *self.users]) + 1

    def new_user(self, login: str, password: str, **kw: Any) -> User:
        existing = self.by_login(login)
        if existing is not None:  # redefining a login (e.g. the admin) keeps its uid
            existing.password = password
            for key, value in kw.items():
                setattr(existing, key, value)
            return existing
        return self.add(User(self.next_uid(), login, password, **kw))

    def by_login(self, login: Any) -> User | None:
        return next((u for u in self.users.values() if u.login == login), None)

    def by_uid(self, uid: int) -> User | None:
        return self.users.get(uid)

    def api_key_user(self, key: Any, major: int, now: float | None = None) -> User | None:
        """`res.users.apikeys._check_credentials(scope='rpc', key=...)`: the key's user."""
        if not isinstance(key, str) or not key:
            return None
        now = time.time() if now is None else now
        for user in self.users.values():
            if any(k.key == key and k.valid(major, now) for k in user.api_keys):
                return user
        return None

    def load_file(self, path: Path) -> None:
        """Users from a JSON list (the module docstring gives its shape)."""
        data = json.loads(Path(path).read_text())
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of users")
        for item in data:
            if not isinstance(item, dict) or "login" not in item:
                raise ValueError(f"{path}: each user needs at least a login: {item!r}")
            keys = [ApiKey(str(k["key"]), _parse_expiry(k.get("expires")))
                    for k in item.get("api_keys", [])]
            self.new_user(
                str(item["login"]), str(item.get("password", "")),
                name=str(item.get("name") or item["login"]), api_keys=keys,
                totp=bool(item.get("totp", False)),
            )

    def add_spec(self, spec: str) -> User:
        """`LOGIN:PASSWORD[:API_KEY]` (the --user option)."""
        login, sep, rest = spec.partition(":")
        if not login or not sep:
            raise ValueError(f"--user takes LOGIN:PASSWORD[:API_KEY], got {spec!r}")
        password, _, key = rest.partition(":")
        user = self.new_user(login, password)
        if key:
            user.api_keys.append(ApiKey(key))
        return user

    def add_expired_key(self, spec: str) -> User:
        """`LOGIN:API_KEY` (the --expired-api-key option): a key that expired yesterday."""
        login, _, key = spec.partition(":")
        user = self.by_login(login)
        if user is None or not key:
            raise ValueError(f"--expired-api-key takes LOGIN:API_KEY of a defined user: {spec!r}")
        user.api_keys.append(ApiKey(key, time.time() - EXPIRED_DAYS_AGO * 86400))
        return user

    def set_totp(self, login: str) -> User:
        user = self.by_login(login)
        if user is None:
            raise ValueError(f"--totp-user {login!r}: no such user (define it with --user)")
        user.totp = True
        return user


class LoginCooldown:
    """`_assert_can_auth`'s failure map: source address -> (failures, last failure)."""

    def __init__(self, after: int = COOLDOWN_AFTER, duration: float = COOLDOWN_DURATION) -> None:
        self.after = after
        self.duration = duration
        self.failures: dict[str, tuple[int, float]] = {}

    def on_cooldown(self, source: str, now: float | None = None) -> tuple[int, float] | None:
        """(failures, last failure) when `source` may not even try, else None."""
        failures, previous = self.failures.get(source, (0, 0.0))
        now = time.time() if now is None else now
        if self.after and failures >= self.after and now - previous < self.duration:
            return failures, previous
        return None

    def failed(self, source: str) -> None:
        failures, _ = self.failures.get(source, (0, 0.0))
        self.failures[source] = (failures + 1, time.time())

    def succeeded(self, source: str) -> None:
        self.failures.pop(source, None)

    def warn(self, log: Callable[[str, str, str], None], source: str, login: str, db: str,
             failures: int, previous: float) -> None:
        """The WARNING lines Odoo writes when it ignores a login attempt."""
        stamp = datetime.datetime.fromtimestamp(previous).isoformat(sep=" ")
        log("WARNING", "odoo.addons.base.models.res_users",
            f"Login attempt ignored for {source} (user {login!r}) on {db}: "
            f"{failures} failures since last success, last failure at {stamp}. "
            "You can configure the number of login failures before a user is put on cooldown "
            "as well as the duration in the System Parameters. Disable this feature by setting "
            '"base.login_cooldown_after" to 0.')
        try:
            private = ipaddress.ip_address(source).is_private
        except ValueError:
            private = False
        if private:
            log("WARNING", "odoo.addons.base.models.res_users",
                f"The rate-limited IP address {source} is classified as private and *might* be "
                "a proxy. If your Odoo is behind a proxy, it may be mis-configured. Check that "
                "you are running Odoo in Proxy Mode and that the proxy is properly configured, "
                "see https://www.odoo.com/documentation/latest/administration/install/"
                "deploy.html#https for details.")
