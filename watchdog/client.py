"""A small client of the daemon's API for the CLI (synchronous: one request per command)."""

from __future__ import annotations

import getpass
import http.client
import json
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from watchdog.secrets import read_secret


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def read_token(token_file: Path | None, config_dir: Path) -> str | None:
    """ODOO_WATCHDOG_TOKEN wins; else the config's token_file (SecretError when it cannot be
    used); else no token."""
    env = os.environ.get("ODOO_WATCHDOG_TOKEN")
    if env:
        return env.strip()
    if token_file is None:
        return None
    return read_secret(token_file, config_dir, "api.token_file")


class Client:
    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        try:
            self.actor = f"{getpass.getuser()}@{socket.gethostname()}"
        except (KeyError, OSError):
            self.actor = "cli"

    def request(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        try:
            return self._request(method, path, payload)
        except (ValueError, http.client.HTTPException) as exc:  # a malformed --url, a bad answer
            raise ApiError(0, f"cannot talk to the daemon at {self.url}: {exc}") from None

    def _request(self, method: str, path: str, payload: dict[str, Any] | None) -> Any:
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)  # noqa: S310
        req.add_header("Content-Type", "application/json")
        req.add_header("X-Actor", self.actor)
        if self.token and method != "GET":
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", exc.reason)
            except (ValueError, AttributeError):
                message = str(exc.reason)
            raise ApiError(exc.code, str(message)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiError(0, f"cannot reach the daemon at {self.url}: {reason}") from None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, payload: dict[str, Any]) -> Any:
        return self.request("POST", path, payload)
