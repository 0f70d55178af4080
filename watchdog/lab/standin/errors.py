"""Odoo's exceptions as they look on the wire, for the stand-in's RPC services and routes.

Shapes follow Odoo 17: `odoo/addons/base/controllers/rpc.py` (XML-RPC fault codes 1-4),
`odoo/http.py` (`serialize_exception`, the JSON-RPC error envelope) and Python's own TypeError
texts for a call with wrong arguments (`bind_args`). Nothing here touches the network.
"""

from __future__ import annotations

import xmlrpc.client
from collections.abc import Sequence
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


def bind_args(
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
