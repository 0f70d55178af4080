"""What one stand-in app holds: its settings, faults, log, backend, metrics and sessions.

`session_info` is the trimmed `ir.http.session_info()` that `/web/session/authenticate` and
`/web/session/get_session_info` answer.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

from watchdog.lab.standin.errors import ADMIN_PARTNER_ID, ADMIN_UID
from watchdog.lab.standin.faults import Faults
from watchdog.lab.standin.log import OdooLog
from watchdog.lab.standin.services import OdooBackend, version_info
from watchdog.lab.standin.sessions import SessionStore, default_secret
from watchdog.lab.standin.users import (
    COOLDOWN_AFTER,
    COOLDOWN_DURATION,
    LoginCooldown,
    User,
    UserStore,
)

HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
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
    #: Odoo's data_dir: sessions are kept under <data_dir>/sessions (None: in memory only).
    data_dir: Path | None = None
    #: `database.secret` (None: the same for every stand-in on this database name).
    db_secret: str | None = None
    #: Extra users: "LOGIN:PASSWORD[:API_KEY]" each (the --user option).
    users: list[str] = field(default_factory=list)
    #: A JSON users file (users.py's docstring gives its shape).
    users_file: Path | None = None
    #: Logins with two-factor authentication enabled.
    totp_users: list[str] = field(default_factory=list)
    #: "LOGIN:API_KEY" each: a key of that user that expired yesterday.
    expired_api_keys: list[str] = field(default_factory=list)
    #: base.login_cooldown_after and base.login_cooldown_duration.
    login_cooldown_after: int = COOLDOWN_AFTER
    login_cooldown_duration: float = COOLDOWN_DURATION

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
        self.users = build_users(settings)
        self.backend = OdooBackend(
            db=settings.db,
            login=settings.login,
            password=settings.password,
            version=settings.version,
            log=self.app_log,
            password_cost=settings.password_cost,
            users=self.users,
            cooldown=LoginCooldown(settings.login_cooldown_after,
                                   settings.login_cooldown_duration),
        )
        self.sessions = SessionStore(
            major=settings.major,
            db=settings.db,
            secret=settings.db_secret or default_secret(settings.db),
            users=self.users,
            directory=settings.data_dir / "sessions" if settings.data_dir else None,
        )
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
        self.backend.read_error = self.faults.rpc_read_error
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
        self.backend.read_error = False

    def new_session(self, uid: int | None = None, *, pre_uid: int | None = None) -> str:
        return self.sessions.new(uid, pre_uid=pre_uid)

    def session_id(self, request: web.Request) -> str | None:
        """The request's session, if its cookie names one this stand-in knows."""
        sid = request.cookies.get("session_id")
        return sid if sid and sid in self.sessions else None

    def session_uid(self, request: web.Request) -> int | None:
        """The logged-in uid of the request's session (after Odoo's session check)."""
        return self.sessions.uid(request.cookies.get("session_id"))

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

    def session_info(self, request: web.Request, uid: int = ADMIN_UID) -> dict[str, Any]:
        """A trimmed `ir.http.session_info()` as /web/session/authenticate returns it."""
        s = self.settings
        user = self.users.by_uid(uid) or User(uid, s.login, "")
        admin = uid == ADMIN_UID
        ver = version_info(s.version)
        translations = hashlib.sha1(f"{s.version}-en_US".encode()).hexdigest()  # noqa: S324
        return {
            "uid": uid,
            "is_system": admin,
            "is_admin": admin,
            "is_public": False,
            "is_internal_user": True,
            "user_context": {"lang": "en_US", "tz": "Europe/Brussels", "uid": uid},
            "db": s.db,
            "user_settings": {"id": uid - 1, "user_id": {"id": uid}},
            "server_version": ver["server_version"],
            "server_version_info": ver["server_version_info"],
            "support_url": "https://www.odoo.com/buy",
            "name": user.name,
            "username": user.login,
            "partner_display_name": user.name,
            "partner_id": user.partner_id or ADMIN_PARTNER_ID,
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
            "user_id": [uid],
        }


def build_users(settings: StandinSettings) -> UserStore:
    """The admin (--login/--password), then the users file, --user, --totp-user and
    --expired-api-key, in that order."""
    users = UserStore(settings.login, settings.password)
    if settings.users_file is not None:
        users.load_file(settings.users_file)
    for spec in settings.users:
        users.add_spec(spec)
    for login in settings.totp_users:
        users.set_totp(login)
    for spec in settings.expired_api_keys:
        users.add_expired_key(spec)
    return users


STATE: web.AppKey[Standin] = web.AppKey("odoo_standin", Standin)
