"""Fault injection: the faults a stand-in can be told to show, their check, and the helpers
that set them from outside (`POST`/`GET`/`DELETE /__lab__/faults`, sync and async).

The helpers only talk to loopback and bypass any proxy settings of the environment.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, fields
from typing import Any

import aiohttp


@dataclass
class Faults:
    error_rate: float = 0.0
    latency: float = 0.0
    down: bool = False
    db_down: bool = False
    log_errors: int = 0
    log_info_mentions_error: int = 0
    #: res.partner `read` raises (psycopg2 UndefinedColumn, as a missing column would).
    rpc_read_error: bool = False


_FAULT_KINDS: dict[str, tuple[str, float]] = {
    # name -> (kind, maximum)
    "error_rate": ("ratio", 1.0),
    "latency": ("seconds", 600.0),
    "down": ("bool", 0),
    "db_down": ("bool", 0),
    "log_errors": ("count", 100_000),
    "log_info_mentions_error": ("count", 100_000),
    "rpc_read_error": ("bool", 0),
}


class FaultError(ValueError):
    """A fault setting was refused (the stand-in answered 400), or a helper got a bad URL."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def validate_faults(data: Any) -> dict[str, Any]:
    """The settings in `data`, checked: unknown keys and wrong types raise FaultError."""
    if not isinstance(data, dict):
        raise FaultError("the body must be a JSON object of fault settings")
    clean: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _FAULT_KINDS:
            known = ", ".join(_FAULT_KINDS)
            raise FaultError(f"unknown fault {key!r} (known: {known})", key)
        kind, maximum = _FAULT_KINDS[key]
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        if kind == "bool":
            if not isinstance(value, bool):
                raise FaultError(f"{key} must be true or false, got {value!r}", key)
            clean[key] = value
        elif kind == "count":
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
                raise FaultError(
                    f"{key} must be an integer from 0 to {int(maximum)}, got {value!r}", key
                )
            clean[key] = value
        else:
            if not is_number or not 0 <= value <= maximum or value != value:
                raise FaultError(
                    f"{key} must be a number from 0 to {maximum:g}, got {value!r}", key
                )
            clean[key] = float(value)
    return clean


_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _faults_url(url: str) -> str:
    host = urllib.parse.urlsplit(url).hostname
    if host not in _LOOPBACK:
        raise FaultError(f"the lab only talks to loopback, not {url!r}")
    return url.rstrip("/") + "/__lab__/faults"


def _raise_refusal(status: int, text: str) -> None:
    try:
        data = json.loads(text)
        message, field = str(data.get("error", text)), data.get("field")
    except (ValueError, AttributeError):
        message, field = text, None
    raise FaultError(f"the stand-in refused the faults ({status}): {message}", field)


def _sync_call(
    method: str, url: str, payload: dict[str, Any] | None, timeout: float
) -> dict[str, Any]:
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(
        _faults_url(url), data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            result: dict[str, Any] = json.loads(resp.read())
            return result
    except urllib.error.HTTPError as exc:
        with exc:  # closes the connection
            text = exc.read().decode(errors="replace")
        _raise_refusal(exc.code, text)
        raise  # unreachable


def set_faults(url: str, timeout: float = 5.0, **faults: Any) -> dict[str, Any]:
    """Merge fault settings into the stand-in at `url`; returns its faults afterwards."""
    return _sync_call("POST", url, faults, timeout)


def get_faults(url: str, timeout: float = 5.0) -> dict[str, Any]:
    return _sync_call("GET", url, None, timeout)


def clear_faults(url: str, timeout: float = 5.0) -> None:
    _sync_call("DELETE", url, None, timeout)


async def _async_call(
    session: aiohttp.ClientSession, method: str, url: str, payload: dict[str, Any] | None
) -> dict[str, Any]:
    async with session.request(method, _faults_url(url), json=payload) as resp:
        text = await resp.text()
        if resp.status != 200:
            _raise_refusal(resp.status, text)
        result: dict[str, Any] = json.loads(text)
        return result


async def aset_faults(session: aiohttp.ClientSession, url: str, **faults: Any) -> dict[str, Any]:
    return await _async_call(session, "POST", url, faults)


async def aget_faults(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    return await _async_call(session, "GET", url, None)


async def aclear_faults(session: aiohttp.ClientSession, url: str) -> None:
    await _async_call(session, "DELETE", url, None)


FAULT_NAMES = tuple(f.name for f in fields(Faults))
