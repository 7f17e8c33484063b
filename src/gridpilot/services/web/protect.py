"""Cross-site request forgery checks and the security headers of every answer.

State-changing requests (POST, PUT, PATCH, DELETE) must come from this service's own pages: a
browser says where a request comes from in its Origin header (or, lacking it, Referer), and
that must be the origin the request reached (scheme, Host header) or the configured public
origin (``GRIDPILOT_PUBLIC_ORIGIN``, for a service behind a reverse proxy). A request signed in
by the session cookie must carry one of them (every browser does); scripts that send
``Authorization: Bearer`` carry no cookie for a forger to ride on and may omit both. A body
must be JSON (``Content-Type: application/json``): an HTML form cannot send that across sites.

Every answer carries a Content-Security-Policy, X-Frame-Options, X-Content-Type-Options and
Referrer-Policy; answers under /api/ also ``Cache-Control: no-store``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from litestar.datastructures import Headers, MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException, PermissionDeniedException
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from gridpilot.core.errors import ConfigError

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DEFAULT_PORTS = {"http": 80, "https": 443}
COOKIE = "gp_session"  # the session cookie (auth.COOKIE; auth imports nothing from here)
# routes that do not read the session: sign-in checks a password, not the cookie it may carry
COOKIE_UNUSED = frozenset({"/api/auth/login"})

# The HMI: its own scripts and styles only, no plugin, not in anyone's frame. Its scripts set
# styles through the DOM (el.style), which a CSP does not restrict; 'self' covers its
# same-origin WebSocket (ws:/wss:) too.
HMI_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
    "frame-ancestors 'none'"
)


class UnsupportedMediaType(HTTPException):
    status_code = 415


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of ``url``, lower case and without the scheme's default port;
    None when it has none (``null``, a relative or malformed URL)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme.lower(), parts.scheme.lower())
    host = parts.hostname
    if scheme not in DEFAULT_PORTS or not host:
        return None
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    if port is None or port == DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def public_origin(text: str) -> str:
    """The checked value of GRIDPILOT_PUBLIC_ORIGIN: ``https://host[:port]``, nothing else."""
    origin = origin_of(text)
    if origin is None or urlsplit(text.strip()).path not in ("", "/"):
        raise ConfigError(
            f"GRIDPILOT_PUBLIC_ORIGIN must be scheme://host[:port] (as a browser's address bar "
            f"shows the HMI, e.g. https://dms.example.org), not {text!r}"
        )
    return origin


def own_origin(scope: Scope, headers: Headers) -> str | None:
    """The origin this request reached: its scheme and its Host header (the server's address
    when it has none)."""
    host = headers.get("host")
    if not host:
        server = scope.get("server")
        if not server:
            return None
        host = f"{server[0]}:{server[1]}"
    return origin_of(f"{scope.get('scheme', 'http')}://{host}")


def check_request(scope: Scope, allowed: Iterable[str] = ()) -> None:
    """Refuse a state-changing request from another origin (403) or with a body that is not
    JSON (415); ``allowed``: origins accepted besides the one the request reached."""
    if scope["type"] != ScopeType.HTTP or scope.get("method", "GET") not in STATE_CHANGING:
        return
    headers = Headers.from_scope(scope)
    own = own_origin(scope, headers)
    accepted = {o for o in (own, *allowed) if o}
    claimed, which = headers.get("origin"), "Origin"
    if claimed is None:
        claimed, which = headers.get("referer"), "Referer"
    if claimed is not None:
        if origin_of(claimed) not in accepted:
            raise PermissionDeniedException(
                f"cross-origin request refused: its {which} {claimed[:200]!r} is not this "
                f"service's origin ({' or '.join(sorted(accepted)) or 'unknown'}); use the HMI "
                "at that address, or set GRIDPILOT_PUBLIC_ORIGIN to the address users open"
            )
    elif scope.get("path") not in COOKIE_UNUSED and _cookie_signed(headers):
        raise PermissionDeniedException(
            "a request signed in by the session cookie must carry an Origin or Referer header "
            "(browsers send one); scripts: send Authorization: Bearer <token> instead"
        )
    has_body = headers.get("content-length", "0") not in ("", "0") or "transfer-encoding" in headers
    if has_body:
        media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media != "application/json":
            raise UnsupportedMediaType(
                f"the body must be JSON sent with Content-Type: application/json, not "
                f"{media or 'no Content-Type'!r}"
            )


def _cookie_signed(headers: Headers) -> bool:
    if headers.get("authorization", "").lower().startswith("bearer "):
        return False  # the token decides, not the cookie (auth._session)
    cookies = headers.get("cookie", "")
    return any(c.strip().startswith(f"{COOKIE}=") for c in cookies.split(";"))


class RequestCheck(ASGIMiddleware):
    """``check_request`` before every route (exceptions become the usual JSON errors)."""

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self.allowed = tuple(allowed)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        check_request(scope, self.allowed)
        await next_app(scope, receive, send)


async def security_headers(message: Message, scope: Scope) -> None:
    """A ``before_send`` hook: the security headers on every HTTP answer (a route's own
    Content-Security-Policy, the API reference's, is kept)."""
    if message["type"] != "http.response.start":
        return
    headers = MutableScopeHeaders.from_message(message)
    if "content-security-policy" not in headers:
        headers["Content-Security-Policy"] = HMI_CSP
    headers["X-Frame-Options"] = "DENY"
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "same-origin"
    path: Any = scope.get("path", "")
    if isinstance(path, str) and path.startswith("/api/"):
        headers["Cache-Control"] = "no-store"
