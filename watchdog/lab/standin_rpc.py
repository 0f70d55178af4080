"""The RPC half of the Odoo stand-in: Odoo's exceptions as they look on the wire, an in-memory
`res.partner`, and the `common` / `object` / `db` services behind `/xmlrpc/2/*` and `/jsonrpc`.

Shapes follow Odoo 17: `odoo/service/common.py` (`version`, `login`, `authenticate`),
`odoo/service/model.py` (`execute_kw`, "Object x doesn't exist"), `odoo/api.py` (`call_kw`:
"The method 'x' does not exist on the model 'y'"), `odoo/addons/base/controllers/rpc.py`
(XML-RPC fault codes 1-4) and `odoo/http.py` (`serialize_exception`, the JSON-RPC error
envelope). Nothing here touches the network; `standin.py` does the HTTP.
"""

from __future__ import annotations

import re
import time
import xmlrpc.client
from collections.abc import Callable, Sequence
from typing import Any

# XML-RPC fault codes of /xmlrpc/2/* (odoo/addons/base/controllers/rpc.py).
FAULT_APPLICATION_ERROR = 1
FAULT_WARNING = 2
FAULT_ACCESS_DENIED = 3
FAULT_ACCESS_ERROR = 4

ADMIN_UID = 2
ADMIN_PARTNER_ID = 3
ODOO_PATH = "/usr/lib/python3/dist-packages/odoo"
PG_DOWN_MESSAGE = (
    'connection to server at "127.0.0.1", port 5432 failed: Connection refused\n'
    "\tIs the server running on that host and accepting TCP/IP connections?\n"
)

# (file under odoo/, line, function, source line): a plausible stack for synthesized tracebacks.
_RPC_FRAMES: tuple[tuple[str, int, str, str], ...] = (
    ("http.py", 1783, "_serve_db", "return service_model.retrying(self._serve_ir_http, self.env)"),
    ("service/model.py", 133, "retrying", "result = func()"),
    ("http.py", 1810, "_serve_ir_http", "response = self.dispatcher.dispatch(rule.endpoint, args)"),
    ("http.py", 2016, "dispatch", "result = self.request.registry['ir.http']._dispatch(endpoint)"),
    ("addons/base/models/ir_http.py", 222, "_dispatch", "result = endpoint(**request.params)"),
)


def format_traceback(
    exc_line: str, frames: Sequence[tuple[str, int, str, str]] = _RPC_FRAMES
) -> str:
    """A Python-style traceback text ending in `exc_line` (no trailing newline)."""
    lines = ["Traceback (most recent call last):"]
    for path, lineno, func, source in frames:
        lines.append(f'  File "{ODOO_PATH}/{path}", line {lineno}, in {func}')
        lines.append(f"    {source}")
    lines.append(exc_line)
    return "\n".join(lines)


class OdooError(Exception):
    """An exception as Odoo raises it: its dotted name, message and XML-RPC fault code."""

    qualname = "odoo.exceptions.UserError"
    fault_code = FAULT_WARNING
    #: How Odoo's HTTP layer logs it when it escapes a JSON route (None: not at all).
    log_level: str | None = "WARNING"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def exc_line(self) -> str:
        name = self.qualname.removeprefix("builtins.")
        return f"{name}: {self.message}"

    def traceback_text(self) -> str:
        return format_traceback(self.exc_line)

    def fault(self) -> xmlrpc.client.Fault:
        """The fault /xmlrpc/2/* answers: code 1 carries the whole traceback as its string."""
        if self.fault_code == FAULT_APPLICATION_ERROR:
            return xmlrpc.client.Fault(self.fault_code, self.traceback_text() + "\n")
        return xmlrpc.client.Fault(self.fault_code, self.message)

    def json_error(self) -> dict[str, Any]:
        """The `error` member of Odoo's JSON-RPC envelope (JsonRPCDispatcher.handle_error)."""
        return {
            "code": 200,
            "message": "Odoo Server Error",
            "data": {
                "name": self.qualname,
                "debug": self.traceback_text() + "\n",
                "message": self.message,
                "arguments": [self.message],
                "context": {},
            },
        }


class UserError(OdooError):
    pass


class ValidationError(UserError):
    qualname = "odoo.exceptions.ValidationError"


class MissingError(UserError):
    qualname = "odoo.exceptions.MissingError"


class AccessDenied(OdooError):
    """Wrong login or password. Odoo strips its traceback, so `debug` is one line."""

    qualname = "odoo.exceptions.AccessDenied"
    fault_code = FAULT_ACCESS_DENIED

    def __init__(self, message: str = "Access Denied") -> None:
        super().__init__(message)

    def traceback_text(self) -> str:
        return self.exc_line


class AccessError(OdooError):
    qualname = "odoo.exceptions.AccessError"
    fault_code = FAULT_ACCESS_ERROR


class ServerError(OdooError):
    """Any other exception (TypeError, KeyError, psycopg2.OperationalError, ...): fault code 1."""

    fault_code = FAULT_APPLICATION_ERROR
    log_level = "ERROR"

    def __init__(self, qualname: str, message: str) -> None:
        super().__init__(message)
        self.qualname = qualname


def db_unreachable() -> ServerError:
    return ServerError("psycopg2.OperationalError", PG_DOWN_MESSAGE)


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


# ---------------------------------------------------------------------------------------------
# res.partner, in memory
# ---------------------------------------------------------------------------------------------

PARTNER_FIELDS: dict[str, Any] = {
    # field -> default on create
    "name": False,
    "display_name": False,
    "email": False,
    "phone": False,
    "is_company": False,
    "active": True,
    "comment": False,
    "create_date": False,
    "write_date": False,
}
_READONLY = {"id", "display_name", "create_date", "write_date"}
_OPERATORS = {
    "=",
    "!=",
    "<>",
    "<",
    ">",
    "<=",
    ">=",
    "in",
    "not in",
    "like",
    "ilike",
    "not like",
    "not ilike",
    "=like",
    "=ilike",
}
Record = dict[str, Any]
Predicate = Callable[[Record], bool]


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())


def _like(pattern: str, value: Any, *, anchored: bool, nocase: bool) -> bool:
    if value is False or value is None:
        return False
    regex = "".join(
        ".*" if ch == "%" else "." if ch == "_" else re.escape(ch) for ch in str(pattern)
    )
    if not anchored:
        regex = f".*{regex}.*"
    return re.fullmatch(regex, str(value), re.IGNORECASE if nocase else 0) is not None


def _leaf(field: str, op: str, value: Any) -> Predicate:
    if op == "<>":
        op = "!="

    def pred(rec: Record) -> bool:
        current = rec.get(field, False)
        if op == "=":
            return bool(current == value or (value is False and current in (None, False)))
        if op == "!=":
            return not (current == value or (value is False and current in (None, False)))
        if op in ("in", "not in"):
            values = list(value) if isinstance(value, list | tuple) else [value]
            inside = current in values or (False in values and current in (None, False))
            return inside if op == "in" else not inside
        if op in ("like", "ilike", "=like", "=ilike"):
            return _like(value, current, anchored=op.startswith("="), nocase="ilike" in op)
        if op in ("not like", "not ilike"):
            return not _like(value, current, anchored=False, nocase=op == "not ilike")
        if current in (None, False) or value in (None, False):
            return False
        try:
            if op == "<":
                return bool(current < value)
            if op == ">":
                return bool(current > value)
            if op == "<=":
                return bool(current <= value)
            return bool(current >= value)
        except TypeError:
            return False

    return pred


def compile_domain(domain: Any) -> tuple[Predicate, bool]:
    """A predicate for an Odoo domain (Polish notation), and whether it mentions `active`."""
    if not isinstance(domain, list | tuple):
        raise ServerError("builtins.ValueError", f"Invalid domain: {domain!r}")
    items = list(domain)
    mentions_active = False

    def parse(pos: int) -> tuple[Predicate, int]:
        nonlocal mentions_active
        if pos >= len(items):
            raise ServerError(
                "builtins.ValueError", f"Domain {domain!r} is syntactically not correct."
            )
        item = items[pos]
        if item in ("&", "|"):
            left, pos = parse(pos + 1)
            right, pos = parse(pos)
            if item == "&":
                return (lambda r: left(r) and right(r)), pos
            return (lambda r: left(r) or right(r)), pos
        if item == "!":
            inner, pos = parse(pos + 1)
            return (lambda r: not inner(r)), pos
        if not isinstance(item, list | tuple) or len(item) != 3:
            raise ServerError("builtins.ValueError", f"Invalid leaf {item!r}")
        field, op, value = item
        if (field, op, value) in ((1, "=", 1), (0, "=", 1)):
            truth = field == 1
            return (lambda _r: truth), pos + 1
        if not isinstance(op, str) or op.lower() not in _OPERATORS:
            raise ServerError("builtins.ValueError", f"Invalid leaf {tuple(item)!r}")
        if field != "id" and field not in PARTNER_FIELDS:
            raise ServerError(
                "builtins.ValueError", f"Invalid field res.partner.{field} in leaf {tuple(item)!r}"
            )
        mentions_active = mentions_active or field == "active"
        return _leaf(field, op.lower(), value), pos + 1

    preds: list[Predicate] = []
    pos = 0
    while pos < len(items):
        pred, pos = parse(pos)
        preds.append(pred)
    return (lambda r: all(p(r) for p in preds)), mentions_active


def _sort(records: list[Record], order: str | None) -> list[Record]:
    """Sort like `ORDER BY` (res.partner's default order: name, then id descending)."""
    spec = order or "name asc, id desc"
    keys: list[tuple[str, bool]] = []
    for part in spec.split(","):
        words = part.split()
        if not words:
            continue
        field = words[0]
        if field != "id" and field not in PARTNER_FIELDS:
            raise ServerError(
                "builtins.ValueError", f"Invalid field {field!r} on model 'res.partner'"
            )
        desc = len(words) > 1 and words[1].lower() == "desc"
        keys.append((field, desc))
    result = list(records)
    for field, desc in reversed(keys):
        # NULL (False) sorts last ascending and first descending, as in PostgreSQL.
        result.sort(key=_sort_key(field), reverse=desc)
    return result


def _sort_key(field: str) -> Callable[[Record], tuple[bool, Any]]:
    def key(rec: Record) -> tuple[bool, Any]:
        value = rec.get(field)
        if field == "id":
            return (False, value)
        return (value in (None, False), "" if value in (None, False) else str(value))

    return key


def _ids(value: Any) -> list[int]:
    raw = value if isinstance(value, list | tuple) else [value]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in raw):
        raise ServerError("builtins.TypeError", f"ids must be integers, got {value!r}")
    return [int(i) for i in raw]


def _bind(
    name: str, params: Sequence[str], required: int, args: Sequence[Any], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Bind args/kwargs to a Python-like signature, raising TypeError as Python would."""
    if len(args) > len(params):
        raise ServerError(
            "builtins.TypeError",
            f"{name}() takes {len(params) + 1} positional arguments but {len(args) + 1} were given",
        )
    bound = dict(zip(params, args, strict=False))
    for key, value in kwargs.items():
        if key not in params:
            raise ServerError(
                "builtins.TypeError", f"{name}() got an unexpected keyword argument '{key}'"
            )
        if key in bound:
            raise ServerError(
                "builtins.TypeError", f"{name}() got multiple values for argument '{key}'"
            )
        bound[key] = value
    missing = [p for p in params[:required] if p not in bound]
    if missing:
        raise ServerError(
            "builtins.TypeError",
            f"{name}() missing {len(missing)} required positional argument(s): "
            + ", ".join(repr(m) for m in missing),
        )
    return bound


class PartnerStore:
    """`res.partner` of a fresh database, in memory."""

    def __init__(self) -> None:
        stamp = _now()
        self.records: dict[int, Record] = {}
        for pid, name, company, active in (
            (1, "My Company", True, True),
            (2, "OdooBot", False, False),
            (ADMIN_PARTNER_ID, "Administrator", False, True),
        ):
            self.records[pid] = {
                **PARTNER_FIELDS,
                "id": pid,
                "name": name,
                "display_name": name,
                "is_company": company,
                "active": active,
                "create_date": stamp,
                "write_date": stamp,
            }
        self.next_id = max(self.records) + 1

    def _existing(self, ids: list[int], uid: int) -> list[Record]:
        missing = [i for i in ids if i not in self.records]
        if missing:
            shown = ", ".join(str(i) for i in missing) + ("," if len(missing) == 1 else "")
            raise MissingError(
                "Record does not exist or has been deleted.\n"
                f"(Record: res.partner({shown}), User: {uid})"
            )
        return [self.records[i] for i in ids]

    def _check_fields(self, fields: Any) -> list[str]:
        if fields in (None, False, []):
            return ["id", *PARTNER_FIELDS]
        if not isinstance(fields, list | tuple):
            fields = [fields]
        for name in fields:
            if name != "id" and name not in PARTNER_FIELDS:
                raise ServerError(
                    "builtins.ValueError", f"Invalid field {name!r} on model 'res.partner'"
                )
        return list(dict.fromkeys(["id", *fields]))

    def create_one(self, vals: Any, warn: Callable[[str], None]) -> int:
        if not isinstance(vals, dict):
            raise ServerError("builtins.ValueError", f"Invalid values for create: {vals!r}")
        unknown = sorted(k for k in vals if k not in PARTNER_FIELDS or k in _READONLY)
        if unknown:
            warn(f"res.partner.create() includes unknown fields: {', '.join(unknown)}")
        known = {k: v for k, v in vals.items() if k in PARTNER_FIELDS and k not in _READONLY}
        if not known.get("name"):
            raise ValidationError("The operation cannot be completed: Contacts require a name")
        stamp = _now()
        pid = self.next_id
        self.next_id += 1
        self.records[pid] = {
            **PARTNER_FIELDS,
            **known,
            "id": pid,
            "display_name": known["name"],
            "create_date": stamp,
            "write_date": stamp,
        }
        return pid

    def search(self, domain: Any, context: dict[str, Any]) -> list[Record]:
        pred, mentions_active = compile_domain(domain)
        active_test = bool(context.get("active_test", True)) and not mentions_active
        return [r for r in self.records.values() if pred(r) and (not active_test or r["active"])]

    def call(
        self,
        method: str,
        args: list[Any],
        kwargs: dict[str, Any],
        uid: int,
        warn: Callable[[str], None],
    ) -> Any:
        kwargs = dict(kwargs)
        context = kwargs.pop("context", None) or {}
        if not isinstance(context, dict):
            raise ServerError("builtins.TypeError", "context must be a dictionary")
        if method.startswith("_"):
            raise AccessError(
                f"Private methods (such as res.partner.{method}) cannot be called remotely."
            )
        if method == "create":
            b = _bind("create", ["vals_list"], 1, args, kwargs)
            if isinstance(b["vals_list"], list):
                return [self.create_one(v, warn) for v in b["vals_list"]]
            return self.create_one(b["vals_list"], warn)
        if method in ("search", "search_read", "search_count"):
            params = {
                "search": ["domain", "offset", "limit", "order"],
                "search_count": ["domain", "limit"],
                "search_read": ["domain", "fields", "offset", "limit", "order"],
            }[method]
            b = _bind(method, params, 1 if method != "search_read" else 0, args, kwargs)
            found = self.search(b.get("domain") or [], context)
            if method == "search_count":
                limit = b.get("limit")
                return min(len(found), limit) if isinstance(limit, int) and limit else len(found)
            found = _sort(found, b.get("order") or None)
            offset = int(b.get("offset") or 0)
            limit = b.get("limit")
            found = found[offset : offset + limit] if limit else found[offset:]
            if method == "search":
                return [r["id"] for r in found]
            fields = self._check_fields(b.get("fields"))
            return [{f: r[f] for f in fields} for r in found]
        if method in ("read", "write", "unlink"):
            if not args:
                raise ServerError("builtins.IndexError", "list index out of range")
            ids, rest = _ids(args[0]), list(args[1:])
            if method == "read":
                b = _bind("read", ["fields", "load"], 0, rest, kwargs)
                fields = self._check_fields(b.get("fields"))
                return [{f: r[f] for f in fields} for r in self._existing(ids, uid)]
            if method == "write":
                b = _bind("write", ["vals"], 1, rest, kwargs)
                vals = b["vals"]
                if not isinstance(vals, dict):
                    raise ServerError("builtins.ValueError", f"Invalid values for write: {vals!r}")
                for name in vals:
                    if name not in PARTNER_FIELDS or name in _READONLY:
                        raise ServerError(
                            "builtins.ValueError", f"Invalid field {name!r} on model 'res.partner'"
                        )
                for rec in self._existing(ids, uid):
                    rec.update(vals)
                    rec["display_name"] = rec["name"]
                    rec["write_date"] = _now()
                return True
            _bind("unlink", [], 0, rest, kwargs)
            for pid in ids:
                self.records.pop(pid, None)
            return True
        raise ServerError(
            "builtins.AttributeError",
            f"The method '{method}' does not exist on the model 'res.partner'",
        )


# ---------------------------------------------------------------------------------------------
# The services
# ---------------------------------------------------------------------------------------------

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
            _bind("exp_version", [], 0, params, {})
            return version_info(self.version)
        if method == "about":
            b = _bind("exp_about", ["extended"], 0, params, {})
            info = "See http://openerp.com"
            return [info, self.version] if b.get("extended") else info
        if method in ("login", "authenticate"):
            names = ["db", "login", "password"] + (
                ["user_agent_env"] if method == "authenticate" else []
            )
            b = _bind(f"exp_{method}", names, len(names), params, {})
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
            b = _bind("exp_db_exist", ["db_name"], 1, params, {})
            return b["db_name"] == self.db
        raise ServerError("builtins.KeyError", repr(f"exp_{method}"))

    def _object(self, method: str, params: list[Any]) -> Any:
        if len(params) < 3:
            raise ServerError("builtins.IndexError", "list index out of range")
        db, uid_raw, password = params[0], params[1], params[2]
        uid = self.check(db, uid_raw, password)
        if method == "execute_kw":
            b = _bind("execute_kw", ["obj", "method", "args", "kw"], 3, params[3:], {})
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


def xmlrpc_response(result: Any) -> str:
    """A methodResponse body; marshalling errors become fault 1 like Odoo's."""
    try:
        body = xmlrpc.client.dumps((result,), methodresponse=True, allow_none=False)
    except (TypeError, OverflowError) as exc:
        err = ServerError(f"builtins.{type(exc).__name__}", str(exc))
        body = xmlrpc.client.dumps(err.fault(), methodresponse=True)
    return body


def xmlrpc_fault(error: OdooError) -> str:
    return xmlrpc.client.dumps(error.fault(), methodresponse=True)


def parse_xmlrpc(body: bytes) -> tuple[str, list[Any]]:
    try:
        params, method = xmlrpc.client.loads(body, use_datetime=True)
    except Exception as exc:
        raise ServerError(f"{type(exc).__module__}.{type(exc).__name__}", str(exc)) from exc
    if method is None:
        raise ServerError("builtins.ValueError", "not an XML-RPC methodCall")
    return method, list(params)
