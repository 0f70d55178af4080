"""Odoo's sessions as 16-19 keep them: in memory, or as files under `<data_dir>/sessions` that
several stand-ins may share.

The file store follows `odoo/http.py`'s `FilesystemSessionStore` (on the vendored werkzeug
store, `odoo/tools/_vendor/sessions.py`): one file per session at `sessions/<sid[:2]>/<sid>`,
written to a temporary file and renamed. What differs per version, and why sessions survive
16 -> 17 and 18 -> 19 but not 17 -> 18 or 19 -> 18:

- 16 and 17: the sid is a sha1 hex digest, base64-encoded (56 characters, ending in `==`;
  any base64 is a valid key); the file is a pickle of the session dict; the session token is
  HMAC-SHA256 over the sid keyed with the user's token fields and `database.secret`
  (`res.users._compute_session_token`).
- 18: the sid is 84 base64url characters (sha512, `_base64_urlsafe_re`); the file is JSON; the
  token is computed over the sid's first 42 characters (the part stored in `res.device.log`),
  keyed differently. A 16/17 sid is not a valid 18 key, so 18 gives such a cookie a new,
  empty session; 17 takes an 18 sid as a key but cannot unpickle its JSON file ("Could not
  load session data. Use empty session.").
- 19 keeps 18's sid and file, and computes tokens with a new formula; it still accepts an 18
  token (so 18 -> 19 keeps users logged in), while 18 does not know 19's: going back 19 -> 18
  logs out whoever logged in on 19 (`security.check_session` fails, the session is logged out).

A session is recognised only where the sid is a valid key, its file reads back, its `db` is the
stand-in's database and its token matches, which needs the same user (id, login, password) and
the same `database.secret`. The stand-in writes a format tag into each file too
(`"_standin_format"`), so a reader can say which generation wrote a file it refuses.

Pickles are read back with an unpickler that loads no class at all (a session is plain data).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import io
import json
import os
import pickle
import re
import tempfile
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watchdog.lab.standin.users import UserStore

MAX_SESSIONS = 10_000
_BASE64_ANY_RE = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")
_BASE64_URLSAFE_RE = re.compile(r"^[A-Za-z0-9_-]{84}$")
STORED_SESSION_BYTES = 42


def default_secret(db: str) -> str:
    """`database.secret` of the stand-in's database when none is given: the same for every
    stand-in on that database name, as colours sharing one database share its secret."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"odoo-standin:{db}"))


def generation(major: int) -> str:
    """The session format a version writes: "pickle" (16, 17) or "json" (18, 19)."""
    return "pickle" if major <= 17 else "json"


def token_formulas(major: int) -> tuple[str, ...]:
    """The token formulas a version accepts, the one it writes first."""
    if major <= 17:
        return ("v16",)
    if major == 18:
        return ("v18",)
    return ("v19", "v18")


def compute_token(formula: str, sid: str, secret: str, fields: tuple[Any, ...]) -> str:
    key = repr((*fields, secret)).encode()
    if formula == "v16":
        return hmac.new(key, sid.encode(), hashlib.sha256).hexdigest()
    data = sid[:STORED_SESSION_BYTES].encode()
    if formula == "v18":
        return hmac.new(key, data, hashlib.sha256).hexdigest()
    return hmac.new(b"session:" + key, data, hashlib.sha512).hexdigest()


class _NoClasses(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing {module}.{name} in a session file")


@dataclass
class Session:
    sid: str
    db: str | None = None
    uid: int | None = None
    login: str | None = None
    session_token: str | None = None
    #: A login waiting for its second factor (auth_totp): the uid it will be.
    pre_uid: int | None = None
    context: dict[str, Any] = field(default_factory=dict)
    create_time: float = field(default_factory=time.time)

    def data(self, fmt: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "context": self.context, "db": self.db, "debug": "", "login": self.login,
            "uid": self.uid, "session_token": self.session_token, "_trace": [],
            "create_time": self.create_time, "_standin_format": fmt,
        }
        if self.pre_uid is not None:
            out["pre_uid"] = self.pre_uid
            out["pre_login"] = self.login
        return out

    @classmethod
    def from_data(cls, sid: str, data: dict[str, Any]) -> Session:
        def opt_int(value: Any) -> int | None:
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        return cls(
            sid=sid,
            db=data.get("db") if isinstance(data.get("db"), str) else None,
            uid=opt_int(data.get("uid")),
            login=data.get("login") if isinstance(data.get("login"), str) else None,
            session_token=data.get("session_token")
            if isinstance(data.get("session_token"), str) else None,
            pre_uid=opt_int(data.get("pre_uid")),
            context=context if isinstance(context := data.get("context"), dict) else {},
            create_time=float(data.get("create_time") or time.time()),
        )


class SessionStore:
    """The sessions of one stand-in: in memory, and under `directory` when it has one."""

    def __init__(self, *, major: int, db: str, secret: str, users: UserStore,
                 directory: Path | None = None) -> None:
        self.major = major
        self.db = db
        self.secret = secret
        self.users = users
        self.directory = directory
        self.format = generation(major)
        self.formulas = token_formulas(major)
        self._memory: OrderedDict[str, Session] = OrderedDict()
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    # -- keys and files ---------------------------------------------------------------------

    def generate_key(self) -> str:
        if self.format == "pickle":
            seed = repr(None).encode() + str(time.time()).encode() + os.urandom(30)
            key = hashlib.sha1(seed).hexdigest()  # noqa: S324 (werkzeug's session key)
            return base64.urlsafe_b64encode(key.encode()).decode()
        digest = hashlib.sha512(str(time.time()).encode() + os.urandom(64)).digest()[:-1]
        return base64.urlsafe_b64encode(digest).decode()

    def is_valid_key(self, sid: str) -> bool:
        if self.format == "json":
            return _BASE64_URLSAFE_RE.match(sid) is not None
        if _BASE64_ANY_RE.match(sid) is None:  # (Odoo's b64decode check alone lets "/" in)
            return False
        try:
            return bool(base64.urlsafe_b64decode(sid))
        except (binascii.Error, ValueError):
            return False

    def path(self, sid: str) -> Path:
        assert self.directory is not None
        return self.directory / sid[:2] / sid

    def _write(self, session: Session) -> None:
        if self.directory is None:
            return
        data = session.data(self.format)
        blob = (pickle.dumps(data, pickle.HIGHEST_PROTOCOL) if self.format == "pickle"
                else json.dumps(data).encode())
        target = self.path(session.sid)
        target.parent.mkdir(mode=0o755, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".__wz_sess", dir=self.directory)
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, target)
        os.chmod(target, 0o644)

    def _read(self, sid: str) -> dict[str, Any] | None:
        """The file's data as this version's store reads it (None: no file, or unreadable)."""
        if self.directory is None:
            return None
        try:
            blob = self.path(sid).read_bytes()
        except OSError:
            return None
        try:
            if self.format == "pickle":
                data = _NoClasses(io.BytesIO(blob)).load()
            else:
                data = json.loads(blob)
        except Exception:  # Odoo: "Could not load session data. Use empty session."
            return None
        return data if isinstance(data, dict) else None

    def file_format(self, sid: str) -> str | None:
        """Which generation wrote the file of `sid` ("pickle", "json"), whatever this store's."""
        if self.directory is None or len(sid) < 2 or "/" in sid or sid.startswith("."):
            return None
        try:
            blob = self.path(sid).read_bytes()
        except OSError:
            return None
        with contextlib.suppress(Exception):
            return str(json.loads(blob).get("_standin_format", "json"))
        with contextlib.suppress(Exception):
            return str(_NoClasses(io.BytesIO(blob)).load().get("_standin_format", "pickle"))
        return None

    # -- sessions ---------------------------------------------------------------------------

    def new(self, uid: int | None = None, *, pre_uid: int | None = None) -> str:
        """A new session (logged in as `uid`, or waiting for `pre_uid`'s second factor)."""
        session = Session(sid=self.generate_key(), db=self.db)
        if uid is not None:
            self._log_in(session, uid)
        elif pre_uid is not None:
            user = self.users.by_uid(pre_uid)
            session.pre_uid = pre_uid
            session.login = user.login if user else None
        self._remember(session)
        if uid is not None or pre_uid is not None:
            self._write(session)
        return session.sid

    def _log_in(self, session: Session, uid: int) -> None:
        user = self.users.by_uid(uid)
        session.uid = uid
        session.login = user.login if user else None
        session.context = {"lang": "en_US", "tz": "Europe/Brussels", "uid": uid}
        session.session_token = self._token(self.formulas[0], session.sid, uid)

    def _token(self, formula: str, sid: str, uid: int) -> str | None:
        user = self.users.by_uid(uid)
        if user is None:
            return None
        return compute_token(formula, sid, self.secret, (user.uid, user.login, user.password))

    def _remember(self, session: Session) -> None:
        self._memory[session.sid] = session
        self._memory.move_to_end(session.sid)
        while len(self._memory) > MAX_SESSIONS:
            self._memory.popitem(last=False)

    def get(self, sid: str | None) -> Session | None:
        """The session of cookie `sid` if this store knows it (from its memory or, with a
        directory, its file), else None (Odoo would start a new session)."""
        if not sid or not self.is_valid_key(sid):
            return None
        if self.directory is not None:
            data = self._read(sid)
            if data is None:
                # Not (or no longer) on disk: only an anonymous session of this process.
                cached = self._memory.get(sid)
                return cached if cached is not None and cached.uid is None else None
            session = Session.from_data(sid, data)
            if session.db not in (None, self.db):
                return None
            self._remember(session)
            return session
        return self._memory.get(sid)

    def check(self, session: Session) -> bool:
        """`security.check_session`: the session's token matches its user's, here."""
        if session.uid is None or session.session_token is None:
            return False
        for formula in self.formulas:
            expected = self._token(formula, session.sid, session.uid)
            if expected is not None and hmac.compare_digest(expected, session.session_token):
                return True
        return False

    def uid(self, sid: str | None) -> int | None:
        """The logged-in user of cookie `sid`, after the session check (a failed check logs
        the session out, as Odoo does)."""
        session = self.get(sid)
        if session is None or session.uid is None:
            return None
        if not self.check(session):
            self.logout(session.sid)
            return None
        return session.uid

    def logout(self, sid: str) -> None:
        session = self.get(sid)
        if session is None:
            return
        session.uid = None
        session.login = None
        session.session_token = None
        session.pre_uid = None
        if self.directory is not None and self.path(sid).exists():
            self._write(session)

    def discard(self, sid: str) -> None:
        """A login rotates the session: the old one is deleted."""
        self._memory.pop(sid, None)
        if self.directory is not None and self.is_valid_key(sid):
            with contextlib.suppress(OSError):
                self.path(sid).unlink()

    def __contains__(self, sid: object) -> bool:
        return isinstance(sid, str) and self.get(sid) is not None

    def __len__(self) -> int:
        return len(self._memory)
