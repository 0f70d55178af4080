"""The `common`, `object` and `db` services behind `/xmlrpc/2/*` and `/jsonrpc`.

Shapes follow Odoo 17: `odoo/service/common.py` (`version`, `login`, `authenticate`),
`odoo/service/model.py` (`execute_kw`, "Object x doesn't exist") and `odoo/api.py` (`call_kw`:
"The method 'x' does not exist on the model 'y'"). Nothing here touches the network; the routes
do the HTTP.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from watchdog.lab.standin.errors import (
    ADMIN_UID,
    AccessDenied,
    ServerError,
    UserError,
    bind_args,
    db_unreachable,
)
from watchdog.lab.standin.partners import PartnerStore


def version_info(version: str) -> dict[str, Any]:
    """`common.version()` / `/web/webclient/version_info` for a version string like "17.0"."""
    match = re.fullmatch(r"(saas~)?(\d+)\.(\d+)(.*)", version.strip())
    if match is None:
        return {
            "server_version": version,
            "server_version_info": [version, 0, 0, "final", 0, ""],
            "server_serie": version,
            "protocol_version": 1,
        }
    saas, major_s, minor_s, suffix = match.groups()
    major: int | str = f"saas~{major_s}" if saas else int(major_s)
    return {
        "server_version": version,
        "server_version_info": [major, int(minor_s), 0, "final", 0, suffix],
        "server_serie": f"{saas or ''}{major_s}.{minor_s}",
        "protocol_version": 1,
    }


LogFn = Callable[[str, str, str], None]  # (level, logger name, message)


class OdooBackend:
    """The `common`, `object` and `db` RPC services of one stand-in, and its login check."""

    def __init__(self, *, db: str, login: str, password: str, version: str, log: LogFn) -> None:
        self.db = db
        self.login = login
        self.password = password
        self.version = version
        self.log = log
        self.db_down = False
        self.partners = PartnerStore()

    def connect(self, db: str) -> None:
        """What opening a cursor on `db` does: fail when PostgreSQL is down or db unknown."""
        if self.db_down:
            self.log("INFO", "odoo.sql_db", "Connection to the database failed")
            raise db_unreachable()
        if db != self.db:
            raise ServerError(
                "psycopg2.OperationalError",
                'connection to server at "127.0.0.1", port 5432 failed: '
                f'FATAL:  database "{db}" does not exist\n',
            )

    def authenticate(self, db: Any, login: Any, password: Any, remote: str) -> int:
        """res.users.authenticate: the uid, or AccessDenied (after logging like Odoo)."""
        self.connect(str(db))
        if login == self.login and password == self.password:
            self.log(
                "INFO",
                "odoo.addons.base.models.res_users",
                f"Login successful for db:{db} login:{login} from {remote}",
            )
            return ADMIN_UID
        self.log(
            "INFO",
            "odoo.addons.base.models.res_users",
            f"Login failed for db:{db} login:{login} from {remote}",
        )
        raise AccessDenied()

    def check(self, db: Any, uid: Any, password: Any) -> int:
        """odoo.service.security.check: uid + password must match."""
        try:
            uid_int = int(uid)
        except (TypeError, ValueError) as exc:
            raise ServerError("builtins.ValueError", f"invalid literal for int(): {uid!r}") from exc
        self.connect(str(db))
        if uid_int != ADMIN_UID or password != self.password or not password:
            raise AccessDenied()
        return uid_int

    def dispatch(self, service: str, method: str, params: list[Any], remote: str) -> Any:
        if service == "common":
            return self._common(method, params, remote)
        if service == "object":
            return self._object(method, params)
        if service == "db":
            return self._db(method, params)
        raise ServerError("builtins.KeyError", repr(service))

    def _common(self, method: str, params: list[Any], remote: str) -> Any:
        if method == "version":
            bind_args("exp_version", [], 0, params, {})
            return version_info(self.version)
        if method == "about":
            b = bind_args("exp_about", ["extended"], 0, params, {})
            info = "See http://openerp.com"
            return [info, self.version] if b.get("extended") else info
        if method in ("login", "authenticate"):
            names = ["db", "login", "password"] + (
                ["user_agent_env"] if method == "authenticate" else []
            )
            b = bind_args(f"exp_{method}", names, len(names), params, {})
            try:
                return self.authenticate(b["db"], b["login"], b["password"], remote)
            except AccessDenied:
                return False
        raise ServerError("builtins.Exception", f"Method not found: {method}")

    def _db(self, method: str, params: list[Any]) -> Any:
        if method == "server_version":
            return self.version
        if method == "list":
            return [self.db]
        if method == "db_exist":
            b = bind_args("exp_db_exist", ["db_name"], 1, params, {})
            return b["db_name"] == self.db
        raise ServerError("builtins.KeyError", repr(f"exp_{method}"))

    def _object(self, method: str, params: list[Any]) -> Any:
        if len(params) < 3:
            raise ServerError("builtins.IndexError", "list index out of range")
        db, uid_raw, password = params[0], params[1], params[2]
        uid = self.check(db, uid_raw, password)
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

        return self.partners.call(name, args, kw, uid, warn)
