"""Sign-in, sessions and roles of the REST API, the admin's user management and the audit
trail (the records of ``gp.<grid>.audit`` the historian keeps, asked for over the bus).

Routes here are part of the app ``api.create_app`` builds; the guards and helpers are what
every route uses.

Login throttling (``sessions.LoginThrottle``): after 5 failures of one user name, or 20 from
one address, within 15 minutes, logins of that name or from that address are refused with 429
and a ``Retry-After`` header (seconds) for 30 s, doubled at every further failure up to 15 min;
every refusal and every lockout is audited (action ``login``, ``ok`` false) and logged.
Sessions are kept server-side: logout ends one, a password change the user's others, a user's
removal all of theirs, an admin all of them (``POST /api/auth/sessions/end-all``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgspec
from litestar import Request, Response, WebSocket, delete, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.handlers.base import BaseRouteHandler

from gridpilot.core import schemas as s
from gridpilot.core import subjects
from gridpilot.core.errors import ConfigError
from gridpilot.services.web.bridge import Bridge, Unavailable
from gridpilot.services.web.contract import SECURED, errors
from gridpilot.services.web.sessions import MAX_KEY, Lock
from gridpilot.services.web.users import AuthError, Role, Session, Tokens, User, UserStore

log = logging.getLogger(__name__)
COOKIE = "gp_session"
AUDIT_DAYS = 7  # the audit page's default range
AUDIT_LIMIT = 2000


# -- request and response bodies --------------------------------------------------------------
class Login(msgspec.Struct, frozen=True, kw_only=True):
    user: str
    password: str


class LoginReply(msgspec.Struct, frozen=True, kw_only=True):
    user: str
    role: str
    token: str
    expires_ns: int
    must_change_password: bool


class Me(msgspec.Struct, frozen=True, kw_only=True):
    user: str
    role: str
    expires_ns: int
    must_change_password: bool


class PasswordChange(msgspec.Struct, frozen=True, kw_only=True):
    old_password: str
    new_password: str


class NewUser(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    role: Role
    password: str | None = None  # None: a random one is made and returned once


class SessionsEnded(msgspec.Struct, frozen=True, kw_only=True):
    ended: int  # how many sessions were active and are ended now


class UserView(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    role: str
    must_change_password: bool
    password: str | None = None  # only in the answer to its creation, when generated


# -- authentication ---------------------------------------------------------------------------
class TooManyAttempts(HTTPException):
    """429: too many failed logins of this user name or from this address."""

    status_code = 429


def token_of(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The session token of a request or WebSocket: the bearer header, else the cookie."""
    header = connection.headers.get("authorization", "")
    token = header[7:] if header.lower().startswith("bearer ") else connection.cookies.get(COOKIE)
    return token or None


def _session(connection: ASGIConnection[Any, Any, Any, Any]) -> Session:
    tokens: Tokens = connection.app.state.tokens
    token = token_of(connection)
    if not token:
        raise NotAuthorizedException("not logged in: POST /api/auth/login first")
    try:
        return tokens.check(token)
    except AuthError as exc:
        raise NotAuthorizedException(str(exc)) from None


def _role(needed: Role, *, fresh_password: bool = True) -> Any:
    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        session = _session(connection)
        if fresh_password and session.must_change:
            raise PermissionDeniedException(
                "change your one-time password first: POST /api/auth/password"
            )
        if not session.role.allows(needed):
            raise PermissionDeniedException(
                f"{session.user} is {session.role}; this needs the {needed} role"
            )
        connection.state.gp_session = session

    return guard


VIEWER = [_role(Role.VIEWER)]
OPERATOR = [_role(Role.OPERATOR)]
ADMIN = [_role(Role.ADMIN)]
LOGGED_IN = [_role(Role.VIEWER, fresh_password=False)]


def who(request: Request[Any, Any, Any]) -> Session:
    session: Session = request.state.gp_session  # set by the route's guard
    return session


def bridge(request: Request[Any, Any, Any] | WebSocket[Any, Any, Any]) -> Bridge:
    b: Bridge = request.app.state.bridge
    return b


async def audit(
    request: Request[Any, Any, Any],
    grid: str,
    action: str,
    target: str,
    *,
    ok: bool = True,
    error: str = "",
    **detail: Any,
) -> None:
    session = who(request)
    await bridge(request).audit(
        s.AuditRecord(
            grid=grid,
            t_ns=time.time_ns(),
            user=session.user,
            role=session.role,
            action=action,
            target=target,
            detail=detail,
            ok=ok,
            error=error,
        )
    )


async def audit_as(
    request: Request[Any, Any, Any],
    user: str,
    role: str,
    action: str,
    target: str = "",
    *,
    ok: bool = True,
    error: str = "",
    **detail: Any,
) -> None:
    """An audit record of an action without a session's guard (sign-in attempts, logout). When
    the bus does not take it the structured log line already written stands for it: a refused
    login is answered anyway."""
    record = s.AuditRecord(
        grid=request.app.state.grid, t_ns=time.time_ns(), user=user, role=role, action=action,
        target=target, detail=detail, ok=ok, error=error,
    )  # fmt: skip
    try:
        await bridge(request).audit(record)
    except Unavailable as exc:
        log.warning("audit record lost", extra={"action": action, "user": user, "error": str(exc)})


def _address(request: Request[Any, Any, Any]) -> str:
    return request.client.host if request.client is not None else "unknown"


async def _refuse_locked(
    request: Request[Any, Any, Any], name: str, address: str, lock: Lock, *, action: str
) -> TooManyAttempts:
    """Audit and log a login refused (``action`` "login") or a lockout that starts
    ("login_lockout"); the 429 to raise."""
    tokens: Tokens = request.app.state.tokens
    now = tokens.clock()
    wait = lock.retry_after_s(now)
    until = time.strftime("%H:%M:%S UTC", time.gmtime(lock.until_ns / 1e9))
    what = f"user name {name!r}" if lock.kind == "user" else f"address {address}"
    message = f"too many failed logins of {what}: try again in {wait} s (at {until})"
    log.warning(
        "login locked" if action == "login" else "login lockout",
        extra={
            "user": name, "address": address, "locked": lock.kind, "failures": lock.failures,
            "retry_after_s": wait,
        },
    )  # fmt: skip
    await audit_as(
        request, name, "", action, name, ok=False, error=message, address=address,
        locked=lock.kind, failures=lock.failures, retry_after_s=wait,
    )  # fmt: skip
    return TooManyAttempts(
        detail=message,
        headers={"Retry-After": str(wait)},
        extra={"retry_after_s": wait, "locked": lock.kind},
    )


# -- routes -----------------------------------------------------------------------------------
def _signed_in(request: Request[Any, Any, Any], user: User) -> Response[LoginReply]:
    """A new session for ``user``: the token in the answer and as an HttpOnly cookie."""
    token, session = request.app.state.tokens.issue(user)
    reply = LoginReply(
        user=user.name,
        role=user.role,
        token=token,
        expires_ns=session.expires_ns,
        must_change_password=user.must_change,
    )
    cookie = Cookie(
        key=COOKIE,
        value=token,
        httponly=True,
        secure=request.url.scheme == "https",  # over HTTPS (`up --tls`) never sent in clear
        samesite="strict",
        max_age=(session.expires_ns - time.time_ns()) // 10**9,
        path="/",
    )
    return Response(reply, cookies=[cookie])


@post(
    "/api/auth/login", tags=["auth"], security=[],
    responses=errors(
        401, 403, 415, 422, 429, e401="Wrong user name or password.",
        e403="Refused: the request came from another origin (Origin or Referer header).",
    ),
)  # fmt: skip
async def login(request: Request[Any, Any, Any], data: Login) -> Response[LoginReply]:
    """Sign in. Refused with 401 for a wrong name or password, and with 429 and a Retry-After
    header (seconds) after too many failures of this name or from this address (the right
    password too, until then)."""
    users: UserStore = request.app.state.users
    tokens: Tokens = request.app.state.tokens
    name, address = data.user[:MAX_KEY], _address(request)
    # one login at a time: parallel guesses cannot slip past the count (scrypt: ~30 ms each)
    async with request.app.state.login_lock:
        lock = await asyncio.to_thread(tokens.throttle.locked, name, address)
        if lock is not None:
            raise await _refuse_locked(request, name, address, lock, action="login")
        user = await asyncio.to_thread(users.verify, data.user, data.password)
        if user is None:
            started = await asyncio.to_thread(tokens.throttle.failed, name, address)
        else:
            await asyncio.to_thread(tokens.throttle.succeeded, name)
    if user is None:
        log.info("login failed", extra={"user": name, "address": address})
        await audit_as(
            request, name, "", "login", name, ok=False, error="wrong user name or password",
            address=address,
        )  # fmt: skip
        for lock in started:
            await _refuse_locked(request, name, address, lock, action="login_lockout")
        raise NotAuthorizedException("wrong user name or password")
    return _signed_in(request, user)


@post(
    "/api/auth/logout", tags=["auth"], status_code=204, security=[],
    responses=errors(
        403, 415, e403="Refused: the request came from another origin (Origin or Referer header).",
    ),
)  # fmt: skip
async def logout(request: Request[Any, Any, Any]) -> Response[None]:
    """End this session (its token is refused from now on) and clear the cookie; 204 also
    without a valid session."""
    tokens: Tokens = request.app.state.tokens
    token = token_of(request)
    user = await asyncio.to_thread(tokens.revoke, token) if token else None
    if user is not None:
        log.info("logout", extra={"user": user, "address": _address(request)})
        known = request.app.state.users.get(user)
        await audit_as(request, user, known.role if known else "", "logout", user)
    return Response(None, status_code=204, cookies=[Cookie(key=COOKIE, value="", max_age=0)])


@post(
    "/api/auth/sessions/end-all", tags=["auth"], guards=ADMIN, status_code=200,
    security=SECURED, responses=errors(401, 403, 415, 503),
)  # fmt: skip
async def end_all_sessions(request: Request[Any, Any, Any]) -> Response[SessionsEnded]:
    """End every session of every user, the caller's own too (everyone logs in again; the
    answer clears the caller's cookie)."""
    tokens: Tokens = request.app.state.tokens
    ended = await asyncio.to_thread(tokens.sessions.end_all)
    log.warning("all sessions ended", extra={"by": who(request).user, "ended": ended})
    await audit(request, request.app.state.grid, "sessions_end_all", "*", ended=ended)
    cookie = Cookie(key=COOKIE, value="", max_age=0)
    return Response(SessionsEnded(ended=ended), cookies=[cookie])


@get("/api/auth/me", tags=["auth"], guards=LOGGED_IN, security=SECURED, responses=errors(401))
async def me(request: Request[Any, Any, Any]) -> Me:
    session = who(request)
    return Me(
        user=session.user,
        role=session.role,
        expires_ns=session.expires_ns,
        must_change_password=session.must_change,
    )


@post(
    "/api/auth/password", tags=["auth"], guards=LOGGED_IN, status_code=200, security=SECURED,
    responses=errors(
        401, 403, 415, 422,
        e403="Refused: the old password is wrong, or the request came from another origin.",
    ),
)  # fmt: skip
async def change_password(
    request: Request[Any, Any, Any], data: PasswordChange
) -> Response[LoginReply]:
    """Change one's own password; the answer carries a new session (old tokens stop working)."""
    users: UserStore = request.app.state.users
    session = who(request)
    if await asyncio.to_thread(users.verify, session.user, data.old_password) is None:
        raise PermissionDeniedException("the old password is wrong")
    try:
        user = await asyncio.to_thread(users.set_password, session.user, data.new_password)
    except ConfigError as exc:
        raise ValidationException(str(exc)) from None
    # every session of the user ends, this one too: the answer carries a new one
    tokens: Tokens = request.app.state.tokens
    ended = await asyncio.to_thread(tokens.sessions.end_user, session.user)
    await audit(request, request.app.state.grid, "password_change", session.user, ended=ended)
    return _signed_in(request, user)


@get("/api/users", tags=["users"], guards=ADMIN, security=SECURED, responses=errors(401, 403))
async def list_users(request: Request[Any, Any, Any]) -> list[UserView]:
    users: UserStore = request.app.state.users
    return [
        UserView(name=u.name, role=u.role, must_change_password=u.must_change) for u in users.list()
    ]


@post(
    "/api/users",
    tags=["users"],
    guards=ADMIN,
    status_code=201,
    security=SECURED,
    responses=errors(401, 403, 415, 422, 503),
)
async def add_user(request: Request[Any, Any, Any], data: NewUser) -> UserView:
    users: UserStore = request.app.state.users
    try:
        password = await asyncio.to_thread(
            users.add, data.name, data.role, data.password, must_change=data.password is None
        )
    except ConfigError as exc:
        raise ValidationException(str(exc)) from None
    await audit(request, request.app.state.grid, "user_add", data.name, role=data.role)
    generated = password if data.password is None else None
    return UserView(
        name=data.name, role=data.role, must_change_password=generated is not None,
        password=generated,
    )  # fmt: skip


@delete(
    "/api/users/{name:str}",
    tags=["users"],
    guards=ADMIN,
    status_code=204,
    security=SECURED,
    responses=errors(401, 403, 404, 415, 422, 503),
)
async def remove_user(request: Request[Any, Any, Any], name: str) -> None:
    users: UserStore = request.app.state.users
    if users.get(name) is None:
        raise NotFoundException(f"no user {name!r}")
    try:
        await asyncio.to_thread(users.remove, name)
    except ConfigError as exc:
        raise ValidationException(str(exc)) from None
    tokens: Tokens = request.app.state.tokens
    ended = await asyncio.to_thread(tokens.sessions.end_user, name)
    await audit(request, request.app.state.grid, "user_remove", name, sessions_ended=ended)


@delete(
    "/api/users/{name:str}/sessions",
    tags=["users"],
    guards=ADMIN,
    status_code=200,
    security=SECURED,
    responses=errors(401, 403, 404, 415, 503),
)
async def end_user_sessions(request: Request[Any, Any, Any], name: str) -> SessionsEnded:
    """End every session of one user (the caller's own too when it is the caller)."""
    users: UserStore = request.app.state.users
    if users.get(name) is None:
        raise NotFoundException(f"no user {name!r}")
    tokens: Tokens = request.app.state.tokens
    ended = await asyncio.to_thread(tokens.sessions.end_user, name)
    log.warning("sessions ended", extra={"user": name, "by": who(request).user, "ended": ended})
    await audit(request, request.app.state.grid, "sessions_end", name, ended=ended)
    return SessionsEnded(ended=ended)


class AuditTrail(msgspec.Struct, frozen=True, kw_only=True):
    records: list[s.AuditRecord]  # oldest first
    truncated: bool  # more records in the range than the limit: ask from after the last


@get(
    "/api/grids/{grid:str}/audit",
    tags=["users"],
    guards=ADMIN,
    security=SECURED,
    responses=errors(401, 403, 404, 422, 503),
)
async def audit_trail(
    request: Request[Any, Any, Any],
    grid: str,
    t_from_ns: int | None = None,
    t_to_ns: int | None = None,
    limit: int = AUDIT_LIMIT,
) -> AuditTrail:
    """Who did what through the HMI and the API: switching, set-points, acknowledgements,
    training, user and session changes, failed and refused sign-ins and lockouts, logouts
    (successful sign-ins excepted); from the historian. The range defaults to the
    last 7 days."""
    await bridge(request).package(grid)
    now = time.time_ns()
    query = s.EventsQuery(
        kind="audit",
        t_from_ns=now - AUDIT_DAYS * 86_400 * 10**9 if t_from_ns is None else t_from_ns,
        t_to_ns=now + 10**9 if t_to_ns is None else t_to_ns,
        limit=limit,
    )
    reply = await bridge(request).request(subjects.HISTORY_EVENTS, grid, query, s.EventsReply)
    if not reply.ok:
        raise ValidationException(reply.error)
    records = []
    for event in reply.events:
        try:
            records.append(msgspec.json.decode(event.payload, type=s.AuditRecord))
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue  # the historian keeps what came; a malformed record is not an action
    return AuditTrail(records=records, truncated=reply.truncated)


ROUTES: list[Any] = [
    login, logout, end_all_sessions, me, change_password, list_users, add_user, remove_user,
    end_user_sessions, audit_trail,
]  # fmt: skip
