"""Sign-in, sessions and roles of the REST API, the admin's user management and the audit
trail (the records of ``gp.<grid>.audit`` the historian keeps, asked for over the bus).

Routes here are part of the app ``api.create_app`` builds; the guards and helpers are what
every route uses.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from litestar import Request, Response, WebSocket, delete, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from litestar.exceptions import (
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.handlers.base import BaseRouteHandler

from gridpilot.core import schemas as s
from gridpilot.core import subjects
from gridpilot.core.errors import ConfigError
from gridpilot.services.web.bridge import Bridge
from gridpilot.services.web.users import AuthError, Role, Session, Tokens, User, UserStore

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


class UserView(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    role: str
    must_change_password: bool
    password: str | None = None  # only in the answer to its creation, when generated


# -- authentication ---------------------------------------------------------------------------
def _session(connection: ASGIConnection[Any, Any, Any, Any]) -> Session:
    tokens: Tokens = connection.app.state.tokens
    header = connection.headers.get("authorization", "")
    token = header[7:] if header.lower().startswith("bearer ") else connection.cookies.get(COOKIE)
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


@post("/api/auth/login", tags=["auth"])
async def login(request: Request[Any, Any, Any], data: Login) -> Response[LoginReply]:
    users: UserStore = request.app.state.users
    user = await asyncio.to_thread(users.verify, data.user, data.password)
    if user is None:
        raise NotAuthorizedException("wrong user name or password")
    return _signed_in(request, user)


@post("/api/auth/logout", tags=["auth"], status_code=204)
async def logout() -> Response[None]:
    return Response(None, status_code=204, cookies=[Cookie(key=COOKIE, value="", max_age=0)])


@get("/api/auth/me", tags=["auth"], guards=LOGGED_IN)
async def me(request: Request[Any, Any, Any]) -> Me:
    session = who(request)
    return Me(
        user=session.user,
        role=session.role,
        expires_ns=session.expires_ns,
        must_change_password=session.must_change,
    )


@post("/api/auth/password", tags=["auth"], guards=LOGGED_IN, status_code=200)
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
    return _signed_in(request, user)


@get("/api/users", tags=["users"], guards=ADMIN)
async def list_users(request: Request[Any, Any, Any]) -> list[UserView]:
    users: UserStore = request.app.state.users
    return [
        UserView(name=u.name, role=u.role, must_change_password=u.must_change) for u in users.list()
    ]


@post("/api/users", tags=["users"], guards=ADMIN, status_code=201)
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


@delete("/api/users/{name:str}", tags=["users"], guards=ADMIN, status_code=204)
async def remove_user(request: Request[Any, Any, Any], name: str) -> None:
    users: UserStore = request.app.state.users
    if users.get(name) is None:
        raise NotFoundException(f"no user {name!r}")
    try:
        await asyncio.to_thread(users.remove, name)
    except ConfigError as exc:
        raise ValidationException(str(exc)) from None
    await audit(request, request.app.state.grid, "user_remove", name)


class AuditTrail(msgspec.Struct, frozen=True, kw_only=True):
    records: list[s.AuditRecord]  # oldest first
    truncated: bool  # more records in the range than the limit: ask from after the last


@get("/api/grids/{grid:str}/audit", tags=["users"], guards=ADMIN)
async def audit_trail(
    request: Request[Any, Any, Any],
    grid: str,
    t_from_ns: int | None = None,
    t_to_ns: int | None = None,
    limit: int = AUDIT_LIMIT,
) -> AuditTrail:
    """Who did what through the HMI and the API (sign-ins excepted): switching, set-points,
    acknowledgements, training, user changes; from the historian. The range defaults to the
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
    login, logout, me, change_password, list_users, add_user, remove_user, audit_trail,
]  # fmt: skip
