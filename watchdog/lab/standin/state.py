"""What one stand-in app holds: its settings, faults, log, backend, metrics and sessions.

`session_info` is the trimmed `ir.http.session_info()` that `/web/session/authenticate` and
`/web/session/get_session_info` answer.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

from watchdog.lab.standin.errors import ADMIN_PARTNER_ID, ADMIN_UID
from watchdog.lab.standin.faults import Faults
from watchdog.lab.standin.log import OdooLog
from watchdog.lab.standin.services import OdooBackend, version_info

HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
MAX_SESSIONS = 10_000
#: What one password check costs real Odoo 17/18 (passlib pbkdf2_sha512, 600,000 rounds).
PASSWORD_COST = 0.35
CSRF_LIFETIME = 365 * 24 * 3600


@dataclass
class StandinSettings:
    color: str = "blue"
    version: str = "17.0"
    db: str = "odoo"
    login: str = "admin"
    password: str = "admin"  # noqa: S105 (the lab's throwaway admin)
    log_file: Path | None = None
    log_stdout: bool = False
    #: Odoo's --syslog: every record one datagram to this unix socket, instead of the file/stdout.
    syslog: Path | None = None
    #: Seconds one password check takes (a login, or an RPC call's first check of a password).
    password_cost: float = PASSWORD_COST

    @property
    def major(self) -> int:
        digits = "".join(ch for ch in self.version.split(".")[0] if ch.isdigit())
        return int(digits) if digits else 0

    @property
    def home(self) -> str:
        """Where Odoo sends a logged-in user: /odoo from 18 on (and 17.2+ SaaS), /web before."""
        return "/odoo" if self.major >= 18 else "/web"

    @property
    def http10(self) -> bool:
        """16 and 17 (werkzeug 1.0, 2.0) answer HTTP/1.0; 18 and 19 HTTP/1.1, Connection: close."""
        return self.major <= 17

    @property
    def absolute_redirects(self) -> bool:
        """werkzeug before 2.1 (Odoo 16, 17) makes every Location absolute; 18's stay relative."""
        return self.major <= 17


class Standin:
    """Everything one stand-in app holds: settings, faults, sessions, metrics, log, backend."""

    def __init__(self, settings: StandinSettings) -> None:
        self.settings = settings
        self.faults = Faults()
        release = f"Odoo Server {version_info(settings.version)['server_version']}"
        self.log = OdooLog(settings.log_file, settings.log_stdout, syslog=settings.syslog,
                           release=release)
        self.backend = OdooBackend(
            db=settings.db,
            login=settings.login,
            password=settings.password,
            version=settings.version,
            log=self.app_log,
            password_cost=settings.password_cost,
        )
        #: session id -> uid (None: a session that has not logged in)
        self.sessions: OrderedDict[str, int | None] = OrderedDict()
        self._csrf_secret = secrets.token_bytes(32)
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "odoo_standin_http_requests_total",
            "HTTP requests answered by the Odoo stand-in.",
            ["color", "code"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "odoo_standin_http_request_duration_seconds",
            "Time to answer an HTTP request.",
            ["color"],
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )
        self.started = time.time()

    def app_log(self, level: str, name: str, message: str) -> None:
        """A line with the dbname of the request being served (`?` outside requests)."""
        self.log.write(level, name, message)

    def log_exception(self, exc_text: str) -> None:
        """What Odoo's HTTP layer logs for an exception escaping a route: ERROR, traceback."""
        message = "Exception during request handling."
        self.log.write("ERROR", "odoo.http", message, exc_text=exc_text)

    def apply_faults(self, settings: dict[str, Any]) -> None:
        for key, value in settings.items():
            setattr(self.faults, key, value)
        self.backend.db_down = self.faults.db_down
        # One-shots: write the lines now, then the setting returns to 0.
        burst = self.faults.log_errors
        db = self.settings.db  # as a request on the database would log them
        for i in range(1, burst + 1):
            message = f"Injected error {i}/{burst} (lab fault)"
            self.log.write("ERROR", "odoo.addons.lab_standin.models", message, dbname=db)
        infos = self.faults.log_info_mentions_error
        for i in range(1, infos + 1):
            message = (
                f"Nightly report {i}/{infos}: ERROR count is 0, no ERROR found in the last run"
            )
            self.log.write("INFO", "odoo.addons.lab_standin.models", message, dbname=db)
        self.faults.log_errors = 0
        self.faults.log_info_mentions_error = 0

    def reset_faults(self) -> None:
        self.faults = Faults()
        self.backend.db_down = False

    def new_session(self, uid: int | None = None) -> str:
        sid = secrets.token_urlsafe(63)
        self.sessions[sid] = uid
        while len(self.sessions) > MAX_SESSIONS:
            self.sessions.popitem(last=False)
        return sid

    def session_id(self, request: web.Request) -> str | None:
        """The request's session, if its cookie names one this stand-in knows."""
        sid = request.cookies.get("session_id")
        return sid if sid and sid in self.sessions else None

    def session_uid(self, request: web.Request) -> int | None:
        sid = self.session_id(request)
        return self.sessions.get(sid) if sid else None

    def csrf_token(self, sid: str) -> str:
        """A token bound to session `sid`, valid for a year: `<hmac>o<expiry>` as Odoo's are."""
        expiry = int(time.time()) + CSRF_LIFETIME
        return f"{self._csrf_mac(sid, expiry)}o{expiry}"

    def csrf_valid(self, sid: str | None, token: str | None) -> bool:
        if not sid or not token:
            return False
        mac, _, expiry = token.rpartition("o")
        if not expiry.isdigit() or int(expiry) < time.time():
            return False
        return hmac.compare_digest(mac, self._csrf_mac(sid, int(expiry)))

    def _csrf_mac(self, sid: str, expiry: int) -> str:
        return hmac.new(self._csrf_secret, f"{sid}{expiry}".encode(), hashlib.sha1).hexdigest()

    def session_info(self, request: web.Request) -> dict[str, Any]:
        """A trimmed `ir.http.session_info()` as /web/session/authenticate returns it."""
        s = self.settings
        ver = version_info(s.version)
        translations = hashlib.sha1(f"{s.version}-en_US".encode()).hexdigest()  # noqa: S324
        return {
            "uid": ADMIN_UID,
            "is_system": True,
            "is_admin": True,
            "is_public": False,
            "is_internal_user": True,
            "user_context": {"lang": "en_US", "tz": "Europe/Brussels", "uid": ADMIN_UID},
            "db": s.db,
            "user_settings": {"id": 1, "user_id": {"id": ADMIN_UID}},
            "server_version": ver["server_version"],
            "server_version_info": ver["server_version_info"],
            "support_url": "https://www.odoo.com/buy",
            "name": "Administrator",
            "username": s.login,
            "partner_display_name": "Administrator",
            "partner_id": ADMIN_PARTNER_ID,
            "web.base.url": f"{request.scheme}://{request.host}",
            "active_ids_limit": 20000,
            "profile_session": None,
            "profile_collectors": None,
            "profile_params": None,
            "max_file_upload_size": 128 * 1024 * 1024,
            "home_action_id": False,
            "cache_hashes": {"translations": translations},
            "currencies": {"1": {"symbol": "€", "position": "after", "digits": [69, 2]}},
            "bundle_params": {"lang": "en_US"},
            "user_companies": {
                "current_company": 1,
                "allowed_companies": {
                    "1": {
                        "id": 1,
                        "name": "My Company",
                        "sequence": 10,
                        "child_ids": [],
                        "parent_id": False,
                    }
                },
                "disallowed_ancestor_companies": {},
            },
            "show_effect": True,
            "display_switch_company_menu": False,
            "user_id": [ADMIN_UID],
        }


STATE: web.AppKey[Standin] = web.AppKey("odoo_standin", Standin)
