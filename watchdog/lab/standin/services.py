"""The `common`, `object` and `db` services behind `/xmlrpc/2/*` and `/jsonrpc`.

Shapes follow Odoo 17: `odoo/service/common.py` (`version`, `login`, `authenticate`),
`odoo/service/model.py` (`execute_kw`, "Object x doesn't exist") and `odoo/api.py` (`call_kw`:
"The method 'x' does not exist on the model 'y'"). Nothing here touches the network; the routes
do the HTTP.

The dbname of the log lines follows Odoo's thread attribute: `dispatch_rpc` resets it to `None`,
and opening a database (`Registry(db)`, in a login or a password check) sets it to that name.
A password check costs `password_cost` seconds (awaited, so other requests go on meanwhile, as
in Odoo's threaded server); a uid's right password is cached afterwards, as `res.users.check`
caches it.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

from watchdog.lab.standin.errors import (
    AccessDenied,
    ServerError,
    UserError,
    bind_args,
    db_unreachable,
)
from watchdog.lab.standin.log import CURRENT_DB
from watchdog.lab.standin.partners import PartnerStore
from watchdog.lab.standin.users import COOLDOWN_MESSAGE, LoginCooldown, User, UserStore

#: The build date a packaged release appends to `release.version` (odoo/release.py of the
#: nightly builds: `version += '-20250421'`); 16's is the tag it is frozen at. 19's is a
#: plausible date, not one seen.
BUILD_DATES = {16: "20250909", 17: "20250225", 18: "20250421", 19: "20251002"}


def version_info(version: str) -> dict[str, Any]:
    """`common.version()` / `/web/webclient/version_info` for a version string like "17.0".

    `server_version` is what a packaged build reports ("18.0-20250421"), `server_version_info`
    the release tuple without the build date ([18, 0, 0, "final", 0, ""]), `server_serie` the
    series. A version given with its build ("17.0-20240101") is reported as given.
    """
    match = re.fullmatch(r"(saas~)?(\d+)\.(\d+)(-\d{8})?(.*)", version.strip())
    if match is None:
        return {
            "server_version": version,
            "server_version_info": [version, 0, 0, "final", 0, ""],
            "server_serie": version,
            "protocol_version": 1,
        }
    saas, major_s, minor_s, build, suffix = match.groups()
    major: int | str = f"saas~{major_s}" if saas else int(major_s)
    serie = f"{saas or ''}{major_s}.{minor_s}"
    if build is None:
        date = BUILD_DATES.get(int(major_s))
        build = f"-{date}" if date and not saas else ""
    return {
        "server_version": f"{serie}{suffix}{build}",
        "server_version_info": [major, int(minor_s), 0, "final", 0, suffix],
        "server_serie": serie,
        "protocol_version": 1,
    }


LogFn = Callable[[str, str, str], None]  # (level, logger name, message)


class OdooBackend:
    """The `common`, `object` and `db` RPC services of one stand-in, and its login check."""

    def __init__(
        self,
        *,
        db: str,
        login: str,
        password: str,
        version: str,
        log: LogFn,
        password_cost: float = 0.0,
        users: UserStore | None = None,
        cooldown: LoginCooldown | None = None,
    ) -> None:
        self.db = db
        self.login = login
        self.password = password
        self.version = version
        self.log = log
        self.password_cost = password_cost
        self.db_down = False
        self.users = users if users is not None else UserStore(login, password)
        self.cooldown = cooldown if cooldown is not None else LoginCooldown()
        self.partners = PartnerStore()
        self.partners.user_name = self._user_name
        for user in self.users.users.values():  # each user has its partner
            if not user.partner_id:
                user.partner_id = self.partners.create_one(
                    {"name": user.name}, lambda _m: None, lambda _m: None, 1
                )
        #: Set by the `rpc_read_error` fault: partner reads raise an Odoo error.
        self.read_error = False
        self._checked: dict[int, str] = {}  # uid -> the credential res.users.check accepted

    @property
    def major(self) -> int:
        digits = "".join(ch for ch in self.version.split(".")[0] if ch.isdigit())
        return int(digits) if digits else 0

    def _user_name(self, uid: int) -> str:
        user = self.users.by_uid(uid)
        return user.name if user else f"res.users({uid},)"

    async def password_check(self) -> None:
        """What verifying one password hash costs."""
        if self.password_cost > 0:
            await asyncio.sleep(self.password_cost)

    def connect(self, db: str) -> None:
        """What opening a cursor on `db` does: fail when PostgreSQL is down or db unknown.
        Like `Registry(db)`, it names the database in the log lines from here on."""
        CURRENT_DB.set(db)
        if self.db_down:
            self.log("INFO", "odoo.sql_db", "Connection to the database failed")
            raise db_unreachable()
        if db != self.db:
            self.log("INFO", "odoo.sql_db", "Connection to the database failed")
            raise ServerError(
                "psycopg2.OperationalError",
                'connection to server at "127.0.0.1", port 5432 failed: '
                f'FATAL:  database "{db}" does not exist\n',
            )

    async def _credentials_ok(self, user: User, password: str, *, interactive: bool) -> bool:
        """`_check_credentials`: the password (slow); for RPC an API key, which a two-factor
        user must use (`_rpc_api_keys_only`)."""
        if not interactive and self.users.api_key_user(password, self.major) is user:
            return True
        await self.password_check()
        if password != user.password:
            return False
        return interactive or not user.totp

    async def authenticate(
        self, db: Any, login: Any, password: Any, remote: str, *, interactive: bool = False
    ) -> int:
        """res.users.authenticate: the uid, or AccessDenied (after logging like Odoo). The
        password of a known login is checked (slow); an unknown login fails at once. From one
        address, logins past the cooldown threshold are refused unchecked."""
        self.connect(str(db))
        if not password:  # Odoo's _login refuses an empty password before it logs anything
            raise AccessDenied()
        source = remote or "127.0.0.1"
        try:
            blocked = self.cooldown.on_cooldown(source)
            if blocked is not None:
                self.cooldown.warn(self.log, source, str(login), str(db), *blocked)
                raise AccessDenied(COOLDOWN_MESSAGE)
            user = self.users.by_login(login)
            if user is None or not await self._credentials_ok(
                user, str(password), interactive=interactive
            ):
                self.cooldown.failed(source)
                raise AccessDenied()
        except AccessDenied:
            self.log(
                "INFO",
                "odoo.addons.base.models.res_users",
                f"Login failed for db:{db} login:{login} from {remote}",
            )
            raise
        self.cooldown.succeeded(source)
        self.log(
            "INFO",
            "odoo.addons.base.models.res_users",
            f"Login successful for db:{db} login:{login} from {remote}",
        )
        return user.uid

    async def check(self, db: Any, uid: Any, password: Any) -> int:
        """odoo.service.security.check: uid + password or API key must match (a match is
        cached, as `res.users.check` caches it)."""
        try:
            uid_int = int(uid)
        except (TypeError, ValueError) as exc:
            raise ServerError("builtins.ValueError", f"invalid literal for int(): {uid!r}") from exc
        self.connect(str(db))
        if not password:
            raise AccessDenied()
        if self._checked.get(uid_int) == password:
            return uid_int
        user = self.users.by_uid(uid_int)
        if user is None or not await self._credentials_ok(user, str(password), interactive=False):
            raise AccessDenied()
        self._checked[uid_int] = password
        return uid_int

    async def dispatch(self, service: str, method: str, params: list[Any], remote: str) -> Any:
        """`dispatch_rpc`: the dbname is None until the call opens a database."""
        CURRENT_DB.set("None")
        if service == "common":
            return await self._common(method, params, remote)
        if service == "object":
            return await self._object(method, params)
        if service == "db":
            return self._db(method, params)
        raise ServerError("builtins.KeyError", repr(service))

    async def _common(self, method: str, params: list[Any], remote: str) -> Any:
        if method == "version":
            bind_args("exp_version", [], 0, params, {})
            return version_info(self.version)
        if method == "about":
            b = bind_args("exp_about", ["extended"], 0, params, {})
            info = "See http://openerp.com"
            if b.get("extended"):
                return [info, version_info(self.version)["server_version"]]
            return info
        if method in ("login", "authenticate"):
            names = ["db", "login", "password"] + (
                ["user_agent_env"] if method == "authenticate" else []
            )
            b = bind_args(f"exp_{method}", names, len(names), params, {})
            try:
                return await self.authenticate(b["db"], b["login"], b["password"], remote)
            except AccessDenied:
                return False
        raise ServerError("builtins.Exception", f"Method not found: {method}")

    def _db(self, method: str, params: list[Any]) -> Any:
        if method == "server_version":
            return version_info(self.version)["server_version"]
        if method == "list":
            return [self.db]
        if method == "db_exist":
            b = bind_args("exp_db_exist", ["db_name"], 1, params, {})
            return b["db_name"] == self.db
        raise ServerError("builtins.KeyError", repr(f"exp_{method}"))

    async def _object(self, method: str, params: list[Any]) -> Any:
        if len(params) < 3:
            raise ServerError("builtins.IndexError", "list index out of range")
        db, uid_raw, password = params[0], params[1], params[2]
        uid = await self.check(db, uid_raw, password)
        if method == "execute_kw":
            b = bind_args("execute_kw", ["obj", "method", "args", "kw"], 3, params[3:], {})
            args, kw = b["args"], b.get("kw") or {}
        elif method == "execute":
            if len(params) < 5:
                raise ServerError("builtins.TypeError", "execute() missing required arguments")
            b = {"obj": params[3], "method": params[4]}
            args, kw = list(params[5:]), {}
        else:
            raise ServerError("builtins.NameError", f"Method not available {method}")
        if not isinstance(args, list) or not isinstance(kw, dict):
            raise ServerError(
                "builtins.TypeError", "execute_kw() expects a list of args and a dict"
            )
        model, name = b["obj"], b["method"]
        if not isinstance(name, str):
            raise ServerError("builtins.TypeError", f"method name must be a string, not {name!r}")
        if model != "res.partner":
            raise UserError(f"Object {model} doesn't exist")

        def warn(message: str) -> None:
            self.log("WARNING", "odoo.models", message)

        def bad_query(message: str) -> None:
            self.log("ERROR", "odoo.sql_db", message)

        if name == "read" and self.read_error:
            raise read_failure(self.log)
        return self.partners.call(name, args, kw, uid, warn, bad_query)


#: The column the `rpc_read_error` fault pretends a module added to res_partner's model but not
#: to its table (a module upgraded without `-u`): every read of the model's fields fails.
BROKEN_COLUMN = "lab_broken_field"


def read_failure(log: LogFn) -> ServerError:
    """What `read` raises when a field's column is missing: psycopg2's UndefinedColumn, after
    odoo.sql_db's "bad query" ERROR line."""
    query = f'SELECT "res_partner"."id", "res_partner"."{BROKEN_COLUMN}" FROM "res_partner"'  # noqa: S608 (a log line's text, never run)
    text = (
        f'column res_partner.{BROKEN_COLUMN} does not exist\n'
        f"LINE 1: SELECT \"res_partner\".\"id\", \"res_partner\".\"{BROKEN_COLUMN}\" ...\n"
        "                                       ^\n"
    )
    log("ERROR", "odoo.sql_db", f"bad query: {query} WHERE (\"res_partner\".\"id\" IN (...))\n"
        f"ERROR: {text}")
    return ServerError("psycopg2.errors.UndefinedColumn", text)
