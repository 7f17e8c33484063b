"""The REST API, the live WebSocket and the HMI's static files (Litestar, OpenAPI 3.1).

Every route reads or writes through the ``Bridge`` (the bus). Authentication: a session token
from ``POST /api/auth/login``, sent back as the ``gp_session`` cookie (browsers) or as
``Authorization: Bearer <token>`` (scripts). Roles: viewer reads, operator also acknowledges,
switches and trains, admin also manages users. Errors are JSON ``{"status_code", "detail"}``:
401 not logged in, 403 wrong role (or a one-time password not yet changed, or a request from
another origin: see below), 404 unknown grid/equipment, 415 a body not sent as
``application/json``, 422 a malformed request (with what was wrong), 429 too many failed
sign-ins, 503 a service did not answer. Each operation lists the ones it can give.

A POST, PUT, PATCH or DELETE from a browser must come from this service's pages: its Origin
(or Referer) header must be this service's address (or ``GRIDPILOT_PUBLIC_ORIGIN``), and a
request signed in by the cookie must carry one of them; scripts with a Bearer token need not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, Router, WebSocket, get, post, websocket
from litestar.datastructures import ResponseHeader
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
    ValidationException,
    WebSocketDisconnect,
)
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import RedocRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.static_files import create_static_files_router
from uvicorn.protocols.utils import ClientDisconnected

from gridpilot.core import schemas as s
from gridpilot.core import subjects
from gridpilot.core.validation import history_problem, inject_problem, setpoint_problem
from gridpilot.services.web import auth
from gridpilot.services.web.auth import COOKIE, OPERATOR, VIEWER, _session, bridge, who
from gridpilot.services.web.auth import audit as _audit
from gridpilot.services.web.bridge import (
    LIVE_ESTIMATES_PER_S,
    Bridge,
    NotFound,
    Unavailable,
    compact_estimate,
)
from gridpilot.services.web.contract import SECURED, errors, finish_openapi
from gridpilot.services.web.layout import layout
from gridpilot.services.web.protect import RequestCheck, origin_of, own_origin, security_headers
from gridpilot.services.web.users import Tokens, UserStore

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
AGE_HEADER = "X-Estimate-Age-S"
STALE_HEADER = "X-Estimate-Stale"
REDOC_JS = "/vendor/redoc/redoc.standalone.js"  # static/vendor/redoc: MIT, see its README
# The API reference loads nothing from elsewhere: the browser refuses to (Redoc's footer would
# fetch its logo from a CDN; blocked, the image is left out). Inline scripts and styles and
# eval are Redoc's own (its start-up call, styled-components, schema compilation).
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; "
    "worker-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'"
)
# what each kind of route can answer besides its success (contract.MEANING says why)
READ = errors(401, 403, 503)  # a viewer's read of the platform
GRID_READ = errors(401, 403, 404, 503)  # a viewer's read of one grid
GRID_QUERY = errors(401, 403, 404, 422, 503)  # the same with query parameters checked
GRID_WRITE = errors(401, 403, 404, 415, 422, 503)  # an operator's action on one grid


# -- request and response bodies --------------------------------------------------------------
class SwitchRequest(msgspec.Struct, frozen=True, kw_only=True):
    target: str  # switch mRID
    closed: bool


class SetpointRequest(msgspec.Struct, frozen=True, kw_only=True):
    target: str  # generator mRID
    p_mw: float | None = None  # active power limit; None: none
    q_mvar: float | None = None


class BusView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    vn_kv: float
    v_min_pu: float
    v_max_pu: float
    x: float
    y: float


class BranchView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    kind: str  # "line" or "transformer"
    from_bus: str
    to_bus: str
    switches: list[str]  # switches at its ends


class SwitchView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    bus: str
    element: str
    element_kind: str
    closed: bool


class Topology(msgspec.Struct, frozen=True, kw_only=True):
    grid: str
    layout: str  # "geographic" or "computed"
    buses: list[BusView]
    branches: list[BranchView]
    switches: list[SwitchView]
    loads: dict[str, str]  # load id -> bus
    generators: dict[str, str]  # generator id -> bus


class PointView(msgspec.Struct, frozen=True, kw_only=True):
    mrid: str
    measurand: str
    terminal: str


class DeviceView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    kind: str
    period_s: float
    points: list[PointView]


class Health(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    bus_connected: bool


# -- routes -----------------------------------------------------------------------------------
@get("/api/health", tags=["platform"], security=[])
async def health(request: Request[Any, Any, Any]) -> Health:
    """Liveness and readiness for probes: no login needed."""
    return Health(ok=True, bus_connected=bridge(request).nc.is_connected)


@get(
    "/api/services", tags=["platform"], guards=VIEWER, security=SECURED, responses=errors(401, 403)
)
async def services(request: Request[Any, Any, Any]) -> list[dict[str, Any]]:
    """Every service's latest heartbeat: state, age, counters."""
    return bridge(request).services()


@get("/api/grids", tags=["grid"], guards=VIEWER, security=SECURED, responses=READ)
async def grids(request: Request[Any, Any, Any]) -> list[str]:
    return await bridge(request).grids()


@get(
    "/api/grids/{grid:str}/topology",
    tags=["grid"],
    guards=VIEWER,
    security=SECURED,
    responses=GRID_READ,
)
async def topology(request: Request[Any, Any, Any], grid: str) -> Topology:
    """Buses with diagram positions, branches, switches with their present state."""
    pkg = await bridge(request).package(grid)
    model = pkg.model
    xy, kind = layout(model)
    closed = bridge(request).switch_states(pkg)
    at_branch: dict[str, list[str]] = {}
    for sw in model.switches:
        if sw.element_kind != "bus":
            at_branch.setdefault(sw.element, []).append(sw.id)
    branches = [
        BranchView(
            id=ln.id, name=ln.name, kind="line", from_bus=ln.from_bus, to_bus=ln.to_bus,
            switches=at_branch.get(ln.id, []),
        )
        for ln in model.lines
    ] + [
        BranchView(
            id=t.id, name=t.name, kind="transformer", from_bus=t.hv_bus, to_bus=t.lv_bus,
            switches=at_branch.get(t.id, []),
        )
        for t in model.transformers
    ]  # fmt: skip
    return Topology(
        grid=model.name,
        layout=kind,
        buses=[
            BusView(
                id=b.id,
                name=b.name,
                vn_kv=b.vn_kv,
                v_min_pu=b.v_min_pu,
                v_max_pu=b.v_max_pu,
                x=xy[b.id][0],
                y=xy[b.id][1],
            )
            for b in model.buses
        ],
        branches=branches,
        switches=[
            SwitchView(
                id=sw.id,
                name=sw.name,
                bus=sw.bus,
                element=sw.element,
                element_kind=sw.element_kind,
                closed=closed.get(sw.id, sw.closed),
            )
            for sw in model.switches
        ],
        loads={ld.id: ld.bus for ld in model.loads},
        generators={g.id: g.bus for g in model.generators},
    )


@get(
    "/api/grids/{grid:str}/estimate",
    tags=["grid"],
    guards=VIEWER,
    security=SECURED,
    responses=GRID_READ,
)
async def estimate(request: Request[Any, Any, Any], grid: str) -> Response[s.StateEstimate]:
    """The latest state estimate. Response headers: X-Estimate-Age-S, seconds since this
    service received it (absent when unknown: read from the store at start-up, no live one
    since); X-Estimate-Stale, "true" when no newer estimate came for several estimate intervals
    (at least 5 s): the values are not live. The live WebSocket's estimates carry both too."""
    est = await bridge(request).estimate(grid)
    if est is None:
        raise NotFoundException(f"no state estimate for {grid} yet: is state_estimation running?")
    fresh = bridge(request).freshness(grid)
    headers = {STALE_HEADER: "true" if fresh.stale else "false"}
    if fresh.age_s is not None:
        headers[AGE_HEADER] = f"{fresh.age_s:.1f}"
    return Response(est, headers=headers)


@get(
    "/api/grids/{grid:str}/measurements",
    tags=["grid"],
    guards=VIEWER,
    security=SECURED,
    responses=GRID_READ,
)
async def measurements(
    request: Request[Any, Any, Any], grid: str, mrid: list[str] | None = None
) -> list[s.MeasurementSet]:
    """The latest report of every field device of the grid; with ``mrid`` (repeatable), only
    the measurements of that equipment (and only the devices that measure it). Each
    measurement's ``quality`` holds IEC 61850-7-3 bits: 0 good, 1 invalid, 2 questionable,
    4 substituted, 8 old data, 16 overflow."""
    await bridge(request).package(grid)
    latest = bridge(request).devices.get(grid, {})
    sets = [latest[k] for k in sorted(latest)]
    if mrid is None:
        return sets
    wanted = set(mrid)
    out = []
    for mset in sets:
        kept = [m for m in mset.measurements if m.mrid in wanted]
        if kept:
            out.append(msgspec.structs.replace(mset, measurements=kept))
    return out


@get(
    "/api/grids/{grid:str}/devices",
    tags=["grid"],
    guards=VIEWER,
    security=SECURED,
    responses=GRID_READ,
)
async def devices(request: Request[Any, Any, Any], grid: str) -> list[DeviceView]:
    """Every field device of the grid's placement and what it measures (also the ones that
    have not reported yet, like a meter between its 15-minute readings)."""
    pkg = await bridge(request).package(grid)
    return [
        DeviceView(
            id=d.id,
            kind=d.kind,
            period_s=d.period_s,
            points=[
                PointView(mrid=p.mrid, measurand=p.measurand, terminal=p.terminal) for p in d.points
            ],
        )
        for d in pkg.placement.devices
    ]


@get(
    "/api/grids/{grid:str}/alarms",
    tags=["alarms"],
    guards=VIEWER,
    security=SECURED,
    responses=GRID_READ,
)
async def alarms(request: Request[Any, Any, Any], grid: str) -> list[s.Alarm]:
    """The active alarms (raised, or cleared but not yet acknowledged)."""
    return await bridge(request).alarms(grid)


@post(
    "/api/grids/{grid:str}/alarms/{alarm_id:str}/ack",
    tags=["alarms"],
    guards=OPERATOR,
    security=SECURED,
    responses=errors(401, 403, 404, 415, 503),
)
async def acknowledge(request: Request[Any, Any, Any], grid: str, alarm_id: str) -> s.Reply:
    await bridge(request).package(grid)
    user = who(request).user
    ack = s.AckRequest(alarm_id=alarm_id, user=user)
    reply = await bridge(request).request(subjects.ALARM_ACK, grid, ack, s.Reply)
    await _audit(request, grid, "alarm_ack", alarm_id, ok=reply.ok, error=reply.error)
    if not reply.ok:
        raise NotFoundException(reply.error)
    return reply


@get(
    "/api/grids/{grid:str}/history",
    tags=["history"],
    guards=VIEWER,
    security=SECURED,
    responses=GRID_QUERY,
)
async def history(
    request: Request[Any, Any, Any],
    grid: str,
    mrid: str,
    quantity: str = "v_pu",
    kind: str = "est",
    source: str = "",
    t_from_ns: int | None = None,
    t_to_ns: int | None = None,
    bucket_s: int = 0,
    limit: int = 10_000,
) -> s.HistoryReply:
    """One series from the historian: raw values (bucket_s 0) or min/avg/max per bucket.
    The range defaults to the last hour."""
    await bridge(request).package(grid)
    now = time.time_ns()
    query = s.HistoryQuery(
        series=[s.SeriesRef(kind=kind, mrid=mrid, quantity=quantity, source=source)],
        t_from_ns=now - 3600 * 10**9 if t_from_ns is None else t_from_ns,
        t_to_ns=now if t_to_ns is None else t_to_ns,
        bucket_s=bucket_s,
        limit=limit,
    )
    if problem := history_problem(query):
        raise ValidationException(problem)
    reply = await bridge(request).request(subjects.HISTORY_QUERY, grid, query, s.HistoryReply)
    if not reply.ok:
        raise ValidationException(reply.error)
    return reply


async def _command(request: Request[Any, Any, Any], cmd: s.Command) -> s.CommandResult:
    result = await bridge(request).command(cmd)
    await _audit(
        request,
        cmd.grid,
        cmd.kind,
        cmd.target,
        ok=result.ok,
        error=result.error,
        command_id=cmd.id,
        closed=cmd.closed,
        p_mw=cmd.p_mw,
        q_mvar=cmd.q_mvar,
        executed_by=result.executed_by,
    )
    return result


@post(
    "/api/grids/{grid:str}/commands/switch",
    tags=["commands"],
    guards=OPERATOR,
    status_code=200,
    security=SECURED,
    responses=GRID_WRITE,
)
async def switch(
    request: Request[Any, Any, Any], grid: str, data: SwitchRequest
) -> s.CommandResult:
    """Open or close a switch; answers with the executor's result (after select-before-operate
    at the RTU), which the diagram also receives live."""
    pkg = await bridge(request).package(grid)
    if data.target not in {sw.id for sw in pkg.model.switches}:
        raise NotFoundException(f"no switch {data.target!r} in {grid}")
    cmd = s.Command(
        id=bridge(request).new_command_id(),
        grid=grid,
        kind=s.CommandKind.SWITCH,
        target=data.target,
        issued_by=who(request).user,
        t_ns=time.time_ns(),
        closed=data.closed,
    )
    return await _command(request, cmd)


@post(
    "/api/grids/{grid:str}/commands/setpoint",
    tags=["commands"],
    guards=OPERATOR,
    status_code=200,
    security=SECURED,
    responses=GRID_WRITE,
)
async def setpoint(
    request: Request[Any, Any, Any], grid: str, data: SetpointRequest
) -> s.CommandResult:
    """Set a DER's active power limit (0..its rating, MW) and reactive power (within plus or
    minus its rating, Mvar); null lifts the limit or setpoint. Anything else, NaN and infinity
    included, is refused with 422."""
    pkg = await bridge(request).package(grid)
    gen = next((g for g in pkg.model.generators if g.id == data.target), None)
    if gen is None:
        raise NotFoundException(f"no generator {data.target!r} in {grid}")
    if problem := setpoint_problem(data.p_mw, data.q_mvar, rating_mw=gen.p_mw):
        raise ValidationException(problem)
    cmd = s.Command(
        id=bridge(request).new_command_id(),
        grid=grid,
        kind=s.CommandKind.DER_SETPOINT,
        target=data.target,
        issued_by=who(request).user,
        t_ns=time.time_ns(),
        p_mw=data.p_mw,
        q_mvar=data.q_mvar,
    )
    return await _command(request, cmd)


@post(
    "/api/grids/{grid:str}/training/inject",
    tags=["training"],
    guards=OPERATOR,
    status_code=200,
    security=SECURED,
    responses=GRID_WRITE,
)
async def inject(request: Request[Any, Any, Any], grid: str, data: s.InjectRequest) -> s.Reply:
    """Disturb the digital twin for operator training: a gross measurement error, a
    communication outage, or clear them all."""
    await bridge(request).package(grid)
    if problem := inject_problem(data):
        raise ValidationException(problem)
    reply = await bridge(request).request(subjects.SIM_INJECT, grid, data, s.Reply)
    await _audit(
        request, grid, "inject", data.source, ok=reply.ok, error=reply.error, kind=data.kind,
        mrid=data.mrid, error_value=data.error, duration_s=data.duration_s,
    )  # fmt: skip
    if not reply.ok:
        raise ValidationException(reply.error)
    return reply


@websocket("/api/grids/{grid:str}/live")
async def live(socket: WebSocket[Any, Any, Any], grid: str) -> None:
    """Live updates as JSON messages: {"type": "estimate"|"alarm"|"topology"|"command_result"|
    "services"|"freshness"|"quality", ...}. Estimates come at most twice a second (the latest
    wins), each with its age (``age_s``, null when unknown) and ``stale``; every 2 s a
    "freshness" message says how old the latest estimate is now and whether this service has
    the bus (``bus_connected``), and a "quality" message lists the measurements whose latest
    report was not good (``flagged``: source, mrid, measurand, terminal, quality bits).
    Refused (the handshake answered 403; an ASGI server that can tell close codes: 4401)
    without a valid session, from another origin (the browser's Origin header: 4403) or before
    a one-time password is changed (4403), for an unknown grid (4404); closed with 4401 within
    about 2 s once the session ends (logout, revoked, expired)."""
    claimed = socket.headers.get("origin")
    if claimed is not None and origin_of(claimed) not in _origins(socket):
        await socket.close(code=4403, reason="cross-origin WebSocket refused")
        return
    try:
        session = _session(socket)
        await bridge(socket).package(grid)
    except (NotAuthorizedException, NotFound) as exc:
        code = 4401 if isinstance(exc, NotAuthorizedException) else 4404
        await socket.close(code=code, reason=str(exc)[:120])
        return
    if session.must_change:
        await socket.close(code=4403, reason="change your one-time password first")
        return
    await socket.accept()
    b = bridge(socket)
    client = b.connect(grid)
    est = b.estimates.get(grid)
    if est is not None:
        client.estimate = compact_estimate(est)
    next_estimate = next_services = 0.0
    try:
        while True:
            now = time.monotonic()
            while not client.queue.empty():
                await socket.send_json(client.queue.get_nowait())
            if client.estimate is not None and now >= next_estimate:
                # a shallow copy: the compact estimate is shared by every client of the grid
                await socket.send_json({**client.estimate, **b.freshness(grid).to_dict()})
                client.estimate = None
                next_estimate = now + 1.0 / LIVE_ESTIMATES_PER_S
            if now >= next_services:
                if ended := _ended(socket):
                    await socket.close(code=4401, reason=ended[:120])
                    return
                await socket.send_json({"type": "services", "services": b.services()})
                await socket.send_json(
                    {
                        "type": "freshness",
                        "bus_connected": b.nc.is_connected,
                        **b.freshness(grid).to_dict(),
                    }
                )
                await socket.send_json({"type": "quality", "flagged": b.flagged_measurements(grid)})
                next_services = now + 2.0
            client.wake.clear()
            timeout = max(0.05, min(next_estimate, next_services) - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(client.wake.wait(), timeout)
    except (WebSocketDisconnect, ClientDisconnected):
        pass  # the browser went away (a closed tab, a lost network): nothing went wrong here
    finally:
        b.disconnect(client)


def _ended(socket: WebSocket[Any, Any, Any]) -> str:
    """Why the socket's session is no longer valid ("" while it is)."""
    try:
        _session(socket)
    except NotAuthorizedException as exc:
        return str(exc.detail)
    return ""


def _origins(socket: WebSocket[Any, Any, Any]) -> set[str]:
    """The origins a browser may open the live socket from: the one it reached, the public."""
    own = own_origin(socket.scope, socket.headers)
    public: str | None = socket.app.state.public_origin
    return {o for o in (own, public) if o}


# -- errors -----------------------------------------------------------------------------------
def _validation(_: Request[Any, Any, Any], exc: ValidationException) -> Response[dict[str, Any]]:
    detail: dict[str, Any] = {"status_code": 422, "detail": exc.detail}
    if exc.extra:
        detail["extra"] = exc.extra
    return Response(detail, status_code=422)


def _not_found(_: Request[Any, Any, Any], exc: NotFound) -> Response[dict[str, Any]]:
    return Response({"status_code": 404, "detail": str(exc)}, status_code=404)


def _unavailable(_: Request[Any, Any, Any], exc: Unavailable) -> Response[dict[str, Any]]:
    return Response({"status_code": 503, "detail": str(exc)}, status_code=503)


def _http(_: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    # a body that is not JSON at all is as malformed as one with wrong fields: 422 for both
    status = 422 if exc.status_code == 400 else exc.status_code
    body: dict[str, Any] = {"status_code": status, "detail": exc.detail}
    if exc.extra:
        body["extra"] = exc.extra  # e.g. a 429's retry_after_s
    return Response(body, status_code=status, headers=exc.headers)  # e.g. a 429's Retry-After


def _internal(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    return Response(
        {"status_code": 500, "detail": f"internal error ({type(exc).__name__}); see the web log"},
        status_code=500,
    )


def _log_exception(exc: Exception, scope: Any) -> None:
    quiet = HTTPException | NotFound | Unavailable | WebSocketDisconnect | ClientDisconnected
    if not isinstance(exc, quiet):
        log.error("request failed: %r", exc, exc_info=exc, extra={"path": scope.get("path")})


def create_app(
    *, bridge: Bridge, users: UserStore, tokens: Tokens, grid: str, public_origin: str | None = None
) -> Litestar:
    """The web app; ``public_origin`` (protect.public_origin checks it): the address users open
    when it is not the one requests reach (a reverse proxy), accepted as their Origin too."""
    routes: list[Any] = [
        health, *auth.ROUTES, services, grids, topology, estimate, measurements, devices, alarms,
        acknowledge, history, switch, setpoint, inject, live,
    ]  # fmt: skip
    if STATIC.is_dir():
        routes.append(create_static_files_router(path="/", directories=[STATIC], html_mode=True))
    app = Litestar(
        route_handlers=routes,
        openapi_config=OpenAPIConfig(
            title="GridPilot API",
            version="0.1.0",
            description=__doc__,
            openapi_router=Router(
                path="/api/schema",
                route_handlers=[],
                include_in_schema=False,
                response_headers=[ResponseHeader(name="Content-Security-Policy", value=DOCS_CSP)],
            ),
            use_handler_docstrings=True,
            # the API reference renders offline: Redoc from the package, no fonts or icons
            # from the internet (static/vendor/redoc/README.md)
            render_plugins=[
                RedocRenderPlugin(
                    js_url=REDOC_JS,
                    google_fonts=False,
                    path=["/", "/redoc"],
                    favicon='<link rel="icon" href="/favicon.svg" type="image/svg+xml">',
                )
            ],
            components=Components(
                security_schemes={
                    "bearer": SecurityScheme(type="http", scheme="bearer"),
                    "cookie": SecurityScheme(
                        type="apiKey", name=COOKIE, security_scheme_in="cookie"
                    ),
                }
            ),
            # no document-wide security: each route that needs a session says so (SECURED)
        ),
        middleware=[RequestCheck([public_origin] if public_origin else [])],
        before_send=[security_headers],
        exception_handlers={
            ValidationException: _validation,
            NotFound: _not_found,
            Unavailable: _unavailable,
            HTTPException: _http,
            Exception: _internal,
        },
        request_max_body_size=1_000_000,
        logging_config=None,  # the service's JSON log lines, not Litestar's own format
        after_exception=[_log_exception],
    )
    app.state.bridge = bridge
    app.state.users = users
    app.state.tokens = tokens
    app.state.login_lock = asyncio.Lock()
    app.state.grid = grid
    app.state.public_origin = public_origin
    finish_openapi(app)
    return app
