"""Operators' accounts and sessions: roles, scrypt password hashes, signed expiring tokens.

Users live in ``<data-dir>/users.json`` (mode 0600), written by ``gridpilot user add`` and by
the web service; the file can be mounted read-only into a container. Passwords are hashed
with scrypt (RFC 7914, in Python's standard library; N=2**15, r=8, p=1: about 30 ms and 32 MiB
per check). A password needs ``MIN_PASSWORD`` characters and must not be the user name, a
variant of it, or one of the most common passwords (``check_password``). The first admin is
created at the first start with a random one-time password that must be changed at the first
login; there is no default password.

A session token is ``<base64 JSON claims>.<base64 HMAC-SHA256>`` signed with a random key in
``<data-dir>/web_secret``; it expires after ``SESSION_S`` and is refused once its user is
removed or changes password (the claims carry a password generation), and once its session
is ended: the claims name a session id kept server-side (``sessions.SessionStore``), deleted at
logout, password change, user removal or when an admin ends sessions.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

from gridpilot.core.errors import AuthError as AuthError  # re-exported for the web handlers
from gridpilot.core.errors import ConfigError
from gridpilot.services.web.common_passwords import COMMON
from gridpilot.services.web.sessions import AuthDb, Clock, LoginThrottle, SessionStore

USERS_FILE = "users.json"
SECRET_FILE = "web_secret"
SESSION_S = 8 * 3600  # one control-room shift
MIN_PASSWORD = 10
MIN_DISTINCT = 5
_NOT_LETTERS = "0123456789!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ \t"
_LEET = str.maketrans({"@": "a", "4": "a", "0": "o", "1": "i", "!": "i", "3": "e", "$": "s",
                       "5": "s", "7": "t", "+": "t"})  # fmt: skip
_SCRYPT = {"n": 2**15, "r": 8, "p": 1}
_NAME_OK = set("abcdefghijklmnopqrstuvwxyz0123456789_.-")


class Role(StrEnum):
    VIEWER = "viewer"  # reads everything
    OPERATOR = "operator"  # also acknowledges alarms, switches, trains with the simulator
    ADMIN = "admin"  # also manages users

    def allows(self, needed: Role) -> bool:
        order = [Role.VIEWER, Role.OPERATOR, Role.ADMIN]
        return order.index(self) >= order.index(needed)


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: Role
    salt: str  # hex
    hash: str  # hex
    generation: int = 0  # bumped at every password change: older tokens stop working
    must_change: bool = False  # a one-time password: only a password change is allowed
    created_ns: int = 0


@dataclass(frozen=True, slots=True)
class Session:
    user: str
    role: Role
    generation: int
    expires_ns: int
    must_change: bool
    sid: str = ""  # the server-side session id


def _hash(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, maxmem=64 * 2**20, dklen=32, **_SCRYPT)


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def check_name(name: str) -> str:
    if not name or len(name) > 64 or not set(name) <= _NAME_OK:
        raise ConfigError(
            f"user name {name!r}: use 1-64 lower-case letters, digits, '_', '.' or '-'"
        )
    return name


def _guessable(password: str) -> set[str]:
    """The forms a guesser tries first: as typed (lower case), without the digits and symbols
    around it ("password2024!"), with digit-for-letter swaps undone ("p@ssw0rd"), and as its
    letters only ("pass-word"), and a repeated unit once ("passwordpassword")."""
    low = password.lower()
    trimmed = low.strip(_NOT_LETTERS)
    unswapped = trimmed.translate(_LEET).strip(_NOT_LETTERS)
    letters = "".join(c for c in unswapped if c.isalpha())
    forms = {low, trimmed, unswapped, letters} - {""}
    for form in list(forms):  # "passwordpassword": the repeated unit
        for n in range(1, len(form) // 2 + 1):
            if len(form) % n == 0 and form[:n] * (len(form) // n) == form:
                forms.add(form[:n])
                break
    return forms


def check_password(password: str, *, user: str = "") -> str:
    """The password when it may be used; otherwise ConfigError saying why. Refused: shorter
    than MIN_PASSWORD, fewer than MIN_DISTINCT different characters ("aaaaaaaaaa"), the user
    name in any case, reversed or inside it ("Olga2024!", "aglo-password"), and the most
    common passwords and their trivial variants (common_passwords.COMMON)."""
    if len(password) < MIN_PASSWORD:
        raise ConfigError(f"a password needs at least {MIN_PASSWORD} characters")
    forms = _guessable(password)
    name = user.lower()
    names = {name, name[::-1], "".join(c for c in name if c.isalpha())} - {""}
    if names & forms or any(len(n) >= 3 and any(n in f for f in forms) for n in names):
        raise ConfigError("a password must not contain the user name (nor the name reversed)")
    if forms & COMMON:
        raise ConfigError(
            "that password is one of the most common ones (or one with a few digits or symbols "
            "added); guessers try those first: choose a longer phrase of unrelated words"
        )
    if len(set(password)) < MIN_DISTINCT:
        raise ConfigError(
            f"a password needs at least {MIN_DISTINCT} different characters; "
            "a repeated pattern is guessed at once"
        )
    return password


def _generated(name: str) -> str:
    """A random one-time password that passes check_password (a random one may, rarely, hold
    a short user name)."""
    while True:
        password = secrets.token_urlsafe(12)
        try:
            return check_password(password, user=name)
        except ConfigError:
            continue


class UserStore:
    """The users file, re-read when another process (``gridpilot user add``) changed it."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / USERS_FILE
        self._lock = threading.Lock()
        self._users: dict[str, User] = {}
        self._mtime_ns = -1

    def _load(self) -> dict[str, User]:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            self._users, self._mtime_ns = {}, -1
            return self._users
        if mtime != self._mtime_ns:
            try:
                raw = json.loads(self.path.read_text())
                users = {n: User(**{**u, "role": Role(u["role"])}) for n, u in raw.items()}
            except (OSError, ValueError, TypeError, KeyError) as exc:
                raise ConfigError(
                    f"cannot read {self.path}: {exc}; fix it or remove it to start afresh"
                ) from None
            self._users, self._mtime_ns = users, mtime
        return self._users

    def _save(self, users: dict[str, User]) -> None:
        data = {n: {**asdict(u), "role": u.role.value} for n, u in sorted(users.items())}
        _write_private(self.path, json.dumps(data, indent=2) + "\n")
        self._users, self._mtime_ns = users, self.path.stat().st_mtime_ns

    def get(self, name: str) -> User | None:
        with self._lock:
            return self._load().get(name)

    def list(self) -> list[User]:
        with self._lock:
            return sorted(self._load().values(), key=lambda u: u.name)

    def add(
        self, name: str, role: Role, password: str | None = None, *, must_change: bool = False
    ) -> str:
        """Create a user; returns the password (a random one when none is given)."""
        check_name(name)
        if password is None:
            password = _generated(name)
        check_password(password, user=name)
        salt = secrets.token_bytes(16)
        user = User(
            name=name,
            role=role,
            salt=salt.hex(),
            hash=_hash(password, salt).hex(),
            must_change=must_change,
            created_ns=time.time_ns(),
        )
        with self._lock:
            users = dict(self._load())
            if name in users:
                raise ConfigError(f"user {name!r} exists; remove it first or pick another name")
            users[name] = user
            self._save(users)
        return password

    def remove(self, name: str) -> None:
        with self._lock:
            users = dict(self._load())
            if name not in users:
                raise ConfigError(f"no user {name!r}")
            if (
                users[name].role is Role.ADMIN
                and sum(u.role is Role.ADMIN for u in users.values()) == 1
            ):
                raise ConfigError(f"{name!r} is the last admin; add another admin first")
            del users[name]
            self._save(users)

    def set_password(self, name: str, password: str) -> User:
        check_password(password, user=name)
        with self._lock:
            users = dict(self._load())
            old = users.get(name)
            if old is None:
                raise ConfigError(f"no user {name!r}")
            salt = secrets.token_bytes(16)
            new = User(
                name=name,
                role=old.role,
                salt=salt.hex(),
                hash=_hash(password, salt).hex(),
                generation=old.generation + 1,
                must_change=False,
                created_ns=old.created_ns,
            )
            users[name] = new
            self._save(users)
        return new

    def verify(self, name: str, password: str) -> User | None:
        """The user when the password is right; None otherwise (also for unknown names, after
        the same amount of work, so the answer time does not tell which names exist)."""
        user = self.get(name)
        salt = bytes.fromhex(user.salt) if user else b"\0" * 16
        digest = _hash(password, salt)
        if user is None or not hmac.compare_digest(digest.hex(), user.hash):
            return None
        return user

    def ensure_first_admin(self) -> str | None:
        """Create user ``admin`` with a one-time password when there is no user at all;
        returns that password (to be shown once), or None when users exist."""
        with self._lock:
            if self._load():
                return None
        return self.add("admin", Role.ADMIN, must_change=True)


class Tokens:
    """Signs and checks session tokens with the key in ``<data-dir>/web_secret``; keeps the
    sessions and the login throttle in ``<data-dir>/web_auth.sqlite``. ``clock`` (ns since the
    epoch) is injectable for tests."""

    def __init__(self, data_dir: Path, users: UserStore, *, clock: Clock = time.time_ns) -> None:
        path = Path(data_dir) / SECRET_FILE
        if not path.exists():
            _write_private(path, secrets.token_hex(32) + "\n")
        self._key = bytes.fromhex(path.read_text().strip())
        self.users = users
        self.clock = clock
        self.db = AuthDb(data_dir, clock=clock)
        self.sessions = SessionStore(self.db)
        self.throttle = LoginThrottle(self.db)

    def issue(self, user: User, *, now_ns: int | None = None) -> tuple[str, Session]:
        """A new session of ``user`` (stored server-side) and its signed token."""
        now_ns = self.clock() if now_ns is None else now_ns
        expires_ns = now_ns + SESSION_S * 10**9
        sid = self.sessions.create(user.name, expires_ns)
        session = Session(
            user=user.name,
            role=user.role,
            generation=user.generation,
            expires_ns=expires_ns,
            must_change=user.must_change,
            sid=sid,
        )
        claims = json.dumps(
            {"u": session.user, "g": session.generation, "e": session.expires_ns, "s": sid},
            separators=(",", ":"),
        ).encode()
        body = base64.urlsafe_b64encode(claims).rstrip(b"=")
        sig = base64.urlsafe_b64encode(hmac.digest(self._key, body, "sha256")).rstrip(b"=")
        return (body + b"." + sig).decode(), session

    def _claims(self, token: str) -> tuple[str, int, int, str]:
        """User, generation, expiry and session id of a token signed with our key."""
        try:
            body, sig = token.encode().split(b".")
            want = base64.urlsafe_b64encode(hmac.digest(self._key, body, "sha256")).rstrip(b"=")
            if not hmac.compare_digest(sig, want):
                raise AuthError("bad session token: log in again")
            claims = json.loads(base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4)))
            return str(claims["u"]), int(claims["g"]), int(claims["e"]), str(claims["s"])
        except AuthError:
            raise
        except (ValueError, KeyError, TypeError):
            raise AuthError("malformed session token: log in again") from None

    def check(self, token: str, *, now_ns: int | None = None) -> Session:
        """The session of a valid token; AuthError saying why not (expired, ended, ...)."""
        now_ns = self.clock() if now_ns is None else now_ns
        name, generation, expires, sid = self._claims(token)
        if expires < now_ns:
            raise AuthError("session expired: log in again")
        if not self.sessions.active(sid, name):
            raise AuthError("session ended (logged out, or ended by an admin): log in again")
        user = self.users.get(name)
        if user is None or user.generation != generation:
            raise AuthError(
                "session no longer valid (user removed or password changed): log in again"
            )
        return Session(
            user=user.name,
            role=user.role,
            generation=generation,
            expires_ns=expires,
            must_change=user.must_change,
            sid=sid,
        )

    def revoke(self, token: str) -> str | None:
        """End the session of ``token`` (logout); its user when it was active, else None."""
        try:
            name, _, _, sid = self._claims(token)
        except AuthError:
            return None
        return name if self.sessions.end(sid) else None
