"""`res.partner` of a fresh database, in memory: Odoo domains, `ORDER BY`, and the ORM methods
an RPC client calls on it (create, search, search_read, search_count, read, write, unlink).

Shapes follow Odoo 17's `odoo/models.py` and `odoo/osv/expression.py`, in miniature: the
messages and exception names a client sees, not the SQL behind them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from watchdog.lab.standin.errors import (
    ADMIN_PARTNER_ID,
    AccessError,
    MissingError,
    ServerError,
    ValidationError,
    bind_args,
)

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
    "create_uid": False,
    "write_uid": False,
}
_READONLY = {"id", "display_name", "create_date", "write_date", "create_uid", "write_uid"}
#: many2one fields: stored as the id, read as [id, display name], searched by id.
_MANY2ONE = {"create_uid", "write_uid"}
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


def _sql(value: Any) -> str:
    if value is None or value is False:
        return "NULL"
    if value is True:
        return "true"
    if isinstance(value, int | float):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def _insert_refused(pid: int, known: Record, stamp: str) -> str:
    """odoo.sql_db's "bad query" message for an INSERT that breaks res_partner_check_name: the
    query, then psycopg2's error text (its own `ERROR:`-less first line and a DETAIL line)."""
    row = {**{k: v for k, v in PARTNER_FIELDS.items() if k not in _READONLY}, **known}
    row.update({"create_uid": 2, "write_uid": 2, "type": "contact"})
    columns = sorted(row)
    values = ", ".join(_sql(row[c]) for c in columns)
    names = ", ".join(f'"{c}"' for c in columns)
    query = (  # the text of a log line, never run
        f'INSERT INTO "res_partner" ("create_date", {names}, "write_date") '  # noqa: S608
        f"VALUES ('{stamp}', {values}, '{stamp}') RETURNING \"id\""
    )
    failing = ", ".join([str(pid), *("null" if row[c] in (None, False) else str(row[c])
                                     for c in columns)])
    return (
        f"bad query: {query}\n"
        'ERROR: new row for relation "res_partner" violates check constraint '
        '"res_partner_check_name"\n'
        f"DETAIL:  Failing row contains ({failing}).\n"
    )


def _ids(value: Any) -> list[int]:
    raw = value if isinstance(value, list | tuple) else [value]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in raw):
        raise ServerError("builtins.TypeError", f"ids must be integers, got {value!r}")
    return [int(i) for i in raw]


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
                "create_uid": 1,
                "write_uid": 1,
            }
        self.next_id = max(self.records) + 1
        #: uid -> the user's display name, for many2one values (the backend sets it).
        self.user_name: Callable[[int], str] = lambda uid: f"res.users({uid},)"

    def count(self, *, active_test: bool = True) -> int:
        """How many partners there are (the active ones, as search_count([]) counts them)."""
        return sum(1 for r in self.records.values() if r["active"] or not active_test)

    def _out(self, rec: Record, fields: list[str]) -> Record:
        out = {}
        for f in fields:
            value = rec[f]
            if f in _MANY2ONE and value:
                value = [value, self.user_name(int(value))]
            out[f] = value
        return out

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

    def create_one(
        self, vals: Any, warn: Callable[[str], None], bad_query: Callable[[str], None],
        uid: int = 2,
    ) -> int:
        if not isinstance(vals, dict):
            raise ServerError("builtins.ValueError", f"Invalid values for create: {vals!r}")
        unknown = sorted(k for k in vals if k not in PARTNER_FIELDS or k in _READONLY)
        if unknown:
            warn(f"res.partner.create() includes unknown fields: {', '.join(unknown)}")
        known = {k: v for k, v in vals.items() if k in PARTNER_FIELDS and k not in _READONLY}
        stamp = _now()
        if not known.get("name"):
            # PostgreSQL refuses the row (res_partner_check_name); odoo.sql_db logs the query at
            # ERROR, and the ORM turns the IntegrityError into a ValidationError.
            bad_query(_insert_refused(self.next_id, known, stamp))
            raise ValidationError("The operation cannot be completed: Contacts require a name")
        pid = self.next_id
        self.next_id += 1
        self.records[pid] = {
            **PARTNER_FIELDS,
            **known,
            "id": pid,
            "display_name": known["name"],
            "create_date": stamp,
            "write_date": stamp,
            "create_uid": uid,
            "write_uid": uid,
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
        bad_query: Callable[[str], None] = lambda _message: None,
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
            b = bind_args("create", ["vals_list"], 1, args, kwargs)
            if isinstance(b["vals_list"], list):
                return [self.create_one(v, warn, bad_query, uid) for v in b["vals_list"]]
            return self.create_one(b["vals_list"], warn, bad_query, uid)
        if method in ("search", "search_read", "search_count"):
            params = {
                "search": ["domain", "offset", "limit", "order"],
                "search_count": ["domain", "limit"],
                "search_read": ["domain", "fields", "offset", "limit", "order"],
            }[method]
            b = bind_args(method, params, 1 if method != "search_read" else 0, args, kwargs)
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
            return [self._out(r, fields) for r in found]
        if method in ("read", "write", "unlink"):
            if not args:
                raise ServerError("builtins.IndexError", "list index out of range")
            ids, rest = _ids(args[0]), list(args[1:])
            if method == "read":
                b = bind_args("read", ["fields", "load"], 0, rest, kwargs)
                fields = self._check_fields(b.get("fields"))
                # read() leaves out the ids that do not exist: no MissingError, maybe [].
                found = [self.records[i] for i in ids if i in self.records]
                return [self._out(r, fields) for r in found]
            if method == "write":
                b = bind_args("write", ["vals"], 1, rest, kwargs)
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
                    rec["write_uid"] = uid
                return True
            bind_args("unlink", [], 0, rest, kwargs)
            for pid in ids:
                self.records.pop(pid, None)
            return True
        raise ServerError(
            "builtins.AttributeError",
            f"The method '{method}' does not exist on the model 'res.partner'",
        )
