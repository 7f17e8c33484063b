"""The OpenAPI document tells the truth about the API, and every route's guard does what it
promises.

- schemathesis generates requests for every operation of the served document and sends them
  to the app served by uvicorn over the session's real broker, signed in as an operator;
  historian and monitoring run for real, the twin's training input and the RTU executor are
  played on the bus. Any 5xx, any status the document does not list for the operation, any
  body or content type that does not match it fails the test.
- A probe of every route of the app's route table (a new route is covered the day it is
  added) with every kind of caller: nobody, viewer, operator, admin, and an operator whose
  one-time password is not changed yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
import schemathesis
import websockets
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from litestar.routes import HTTPRoute, WebSocketRoute
from nats.aio.client import Client
from nats.aio.msg import Msg
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gridpilot.core import bus, subjects
from gridpilot.core import schemas as s
from gridpilot.core.config import ServiceConfig
from gridpilot.core.estimates import EstimateWriter, encode_layout, layout_key
from gridpilot.platform.broker import EmbeddedNats
from gridpilot.services.historian.service import HistorianService
from gridpilot.services.monitoring.service import MonitoringService
from gridpilot.services.web.api import create_app
from gridpilot.services.web.users import Role
from tests.conftest import ADMIN
from tests.pipeline import grid as load
from tests.web.conftest import GRID, Api, publish_grid, serve

EXAMPLES = 20  # per operation and generation mode
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


# -- the live app in a thread of its own (schemathesis' client blocks) ------------------------
@dataclass
class Live:
    url: str
    api: Api  # the app's own client (its users and tokens)


async def _play_twin_and_executor(nc: Client) -> None:
    """Answer training input as the twin does and commands as an RTU gateway (with the twin's
    report of what it did), so that no request waits for a part that is not running."""

    async def inject(msg: Msg) -> None:
        await msg.respond(s.encode(s.Reply(ok=True)))

    async def execute(msg: Msg) -> None:
        cmd = msgspec.json.decode(msg.data, type=s.Command)
        for by in ("twin", "contract_test_gateway"):
            result = s.CommandResult(
                command_id=cmd.id, grid=cmd.grid, target=cmd.target, ok=True,
                t_ns=time.time_ns(), executed_by=by, change=f"{cmd.target} done",
            )  # fmt: skip
            await nc.publish(subjects.COMMAND_RESULT.format(grid=cmd.grid), s.encode(result))

    await nc.subscribe(subjects.SIM_INJECT.format(grid=GRID), cb=inject)
    await nc.subscribe(subjects.COMMAND.wildcard(grid=GRID), cb=execute)


async def _start_services(
    nc: Client, nats_server: EmbeddedNats, credentials: dict[str, str], data_dir: Path
) -> list[tuple[Any, asyncio.Task[None]]]:
    """Historian and monitoring, returned once each has said it runs (its first heartbeat
    comes after its subscriptions)."""
    seen: dict[str, asyncio.Event] = {"historian": asyncio.Event(), "monitoring": asyncio.Event()}

    async def heartbeat(msg: Msg) -> None:
        beat = msgspec.json.decode(msg.data, type=s.Heartbeat)
        if beat.service in seen:
            seen[beat.service].set()

    sub = await nc.subscribe(subjects.HEARTBEAT.wildcard(), cb=heartbeat)
    running = []
    for cls in (HistorianService, MonitoringService):
        svc = cls(
            ServiceConfig(
                nats_url=nats_server.url, user=cls.name, password=credentials[cls.name],
                grid=GRID, data_dir=data_dir, heartbeat_s=0.2,
            )
        )  # fmt: skip
        running.append((svc, asyncio.create_task(svc.run(install_signals=False))))
    async with asyncio.timeout(30):
        for event in seen.values():
            await event.wait()
    await sub.unsubscribe()
    return running


async def _keep_estimate(nc: Client) -> None:
    """A state estimate of every bus where the estimator keeps the latest (KV gp_state), so
    that GET .../estimate answers 200 from the start, and in the historian's stream."""
    ids = [b.id for b in load(GRID).buses]
    n = len(ids)
    est = s.StateEstimate(
        grid=GRID, t_ns=time.time_ns(), status=s.EstimateStatus.CONVERGED,
        buses=s.BusStates(id=ids, v_pu=[1.0] * n, va_deg=[0.0] * n, p_mw=[0.0] * n,
                          q_mvar=[0.0] * n),
    )  # fmt: skip
    values, layout = EstimateWriter(GRID).encode(est)
    assert layout is not None
    kv = await nc.jetstream().key_value(subjects.STATE_BUCKET)
    await kv.put(layout_key(GRID, layout.id), encode_layout(layout))
    await kv.put(GRID, s.encode(values))
    # and on the state stream, so that the historian has a series for GET .../history
    await nc.jetstream().publish(subjects.STATE.format(grid=GRID), s.encode(values))


@contextlib.contextmanager
def live_app(
    nats_server: EmbeddedNats, credentials: dict[str, str], data_dir: Path
) -> Iterator[Live]:
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        stop = asyncio.Event()
        box["stop"] = (asyncio.get_running_loop(), stop)
        url = nats_server.url
        admin = await bus.connect(url, user=ADMIN, password=credentials[ADMIN], name="test-admin")
        web = await bus.connect(url, user="web", password=credentials["web"], name="test-web")
        running: list[tuple[Any, asyncio.Task[None]]] = []
        try:
            await publish_grid(admin)
            await _play_twin_and_executor(admin)
            await _keep_estimate(admin)
            running = await _start_services(admin, nats_server, credentials, data_dir)
            async with serve(web, data_dir) as api:
                box["live"] = Live(str(api.base_url).rstrip("/"), api)
                ready.set()
                await stop.wait()
        finally:
            for svc, _ in running:
                svc.stop()
            for _, task in running:
                await asyncio.wait_for(task, 10)
            kv = await admin.jetstream().key_value(subjects.STATE_BUCKET)
            await kv.purge(GRID)  # the next tests start without an estimate
            await web.close()
            await admin.close()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # handed to the test below
            box["error"] = exc
        finally:
            ready.set()

    thread = threading.Thread(target=run, name="live-app", daemon=True)
    thread.start()
    ready.wait(90)
    if "live" not in box:
        thread.join(10)
        raise RuntimeError(f"the app did not start: {box.get('error')!r}")
    try:
        yield box["live"]
    finally:
        loop, stop = box["stop"]
        loop.call_soon_threadsafe(stop.set)
        thread.join(60)
        assert not thread.is_alive(), "the app's thread did not stop"
        if "error" in box:
            raise box["error"]


def _bearer(live: Live, user: str) -> dict[str, str]:
    found = live.api.users.get(user)
    assert found is not None
    token, _ = live.api.tokens.issue(found)
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.security
@pytest.mark.slow
def test_the_api_answers_as_its_openapi_document_says(
    nats_server: EmbeddedNats, credentials: dict[str, str], tmp_path: Path
) -> None:
    with live_app(nats_server, credentials, tmp_path) as live:
        schema = schemathesis.openapi.from_url(f"{live.url}/api/schema/openapi.json")
        operator = _bearer(live, "olga")  # never admin: an operator's view of every route
        ran: Counter[str] = Counter()
        statuses: dict[str, set[int]] = {}
        no_negative: list[str] = []  # operations with no invalid request to make
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 21, [op.label for op in operations]
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                # valid requests name the grid that exists (random names only meet 404);
                # invalid ones are free
                fixed: dict[str, Any] = {}
                if mode is GenerationMode.POSITIVE and "{grid}" in operation.path:
                    fixed["path_parameters"] = {"grid": GRID}

                @settings(
                    max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=list(HealthCheck),
                )  # fmt: skip
                @given(case=operation.as_strategy(generation_mode=mode, **fixed))
                def check(case: Any) -> None:
                    label = case.operation.label
                    # a sign-out ends the session it is sent with: each one gets its own
                    auth = _bearer(live, "olga") if label.endswith("/api/auth/logout") else operator
                    response = case.call(base_url=live.url, headers=auth)
                    ran[label] += 1
                    statuses.setdefault(label, set()).add(response.status_code)
                    case.validate_response(response, checks=CHECKS)

                try:
                    check()
                except Unsatisfiable:
                    # nothing to make invalid (no parameter, no body, or plain strings only):
                    # said below, not skipped silently
                    assert mode is GenerationMode.NEGATIVE, operation.label
                    no_negative.append(operation.label)
        # requests that get past the checks to the executor: generated targets are random
        model = load(GRID)
        for label, body in [
            ("switch", {"target": model.switches[0].id, "closed": True}),
            ("setpoint", {"target": model.generators[0].id, "p_mw": 0.0, "q_mvar": None}),
        ]:
            operation = schema[f"/api/grids/{{grid}}/commands/{label}"]["POST"]
            case = operation.Case(path_parameters={"grid": GRID}, body=body)
            response = case.call(base_url=live.url, headers=operator)
            assert response.status_code == 200, response.text
            case.validate_response(response, checks=CHECKS)
            ran[operation.label] += 1
            statuses[operation.label].add(200)
        # a valid history query: generated ones mostly meet its range checks (422), and which
        # do depends on the hypothesis version a fresh install resolves
        operation = schema["/api/grids/{grid}/history"]["GET"]
        query = {"mrid": model.buses[0].id, "quantity": "v_pu", "kind": "est"}
        case = operation.Case(path_parameters={"grid": GRID}, query=query)
        response = case.call(base_url=live.url, headers=operator)
        assert response.status_code == 200, response.text
        case.validate_response(response, checks=CHECKS)
        ran[operation.label] += 1
        statuses[operation.label].add(200)
        summary = {label: (ran[label], sorted(statuses[label])) for label in sorted(ran)}
        print(f"schemathesis: {len(ran)} operations, {sum(ran.values())} requests: {summary}")
        print(f"no invalid request can be made for: {no_negative}")
        assert set(ran) == {op.label for op in operations}, "an operation was never exercised"
        # the operator's view: admin routes refuse, the others get past the guard somewhere
        assert statuses["GET /api/users"] == {403}
        for label in ("history", "estimate", "topology", "alarms", "measurements", "devices"):
            assert 200 in statuses[f"GET /api/grids/{{grid}}/{label}"], label


# -- roles x routes ----------------------------------------------------------------------------
OPEN, SESSION, VIEWER, OPERATOR, ADMIN_ROLE = "open", "session", "viewer", "operator", "admin"
# what each route's guard lets through: open to anyone; any valid session, even one with a
# one-time password still to change; or the role, with the password changed
EXPECTED: dict[tuple[str, str], str] = {
    ("GET", "/"): OPEN,
    ("GET", "/{file_path:path}"): OPEN,
    ("HEAD", "/{file_path:path}"): OPEN,
    ("GET", "/api/schema"): OPEN,
    ("GET", "/api/schema/redoc"): OPEN,
    ("GET", "/api/schema/openapi.json"): OPEN,
    ("GET", "/api/schema/{path:str}"): OPEN,
    ("GET", "/api/health"): OPEN,
    ("POST", "/api/auth/login"): OPEN,
    ("POST", "/api/auth/logout"): OPEN,
    ("GET", "/api/auth/me"): SESSION,
    ("POST", "/api/auth/password"): SESSION,
    ("GET", "/api/services"): VIEWER,
    ("GET", "/api/grids"): VIEWER,
    ("GET", "/api/grids/{grid:str}/topology"): VIEWER,
    ("GET", "/api/grids/{grid:str}/estimate"): VIEWER,
    ("GET", "/api/grids/{grid:str}/measurements"): VIEWER,
    ("GET", "/api/grids/{grid:str}/devices"): VIEWER,
    ("GET", "/api/grids/{grid:str}/alarms"): VIEWER,
    ("GET", "/api/grids/{grid:str}/history"): VIEWER,
    ("WS", "/api/grids/{grid:str}/live"): VIEWER,
    ("POST", "/api/grids/{grid:str}/alarms/{alarm_id:str}/ack"): OPERATOR,
    ("POST", "/api/grids/{grid:str}/commands/switch"): OPERATOR,
    ("POST", "/api/grids/{grid:str}/commands/setpoint"): OPERATOR,
    ("POST", "/api/grids/{grid:str}/training/inject"): OPERATOR,
    ("GET", "/api/users"): ADMIN_ROLE,
    ("POST", "/api/users"): ADMIN_ROLE,
    ("DELETE", "/api/users/{name:str}"): ADMIN_ROLE,
    ("DELETE", "/api/users/{name:str}/sessions"): ADMIN_ROLE,
    ("POST", "/api/auth/sessions/end-all"): ADMIN_ROLE,
    ("GET", "/api/grids/{grid:str}/audit"): ADMIN_ROLE,
}
RANK = {VIEWER: 1, OPERATOR: 2, ADMIN_ROLE: 3}
PATH_VALUES = {
    "{grid:str}": GRID, "{alarm_id:str}": "no_such_alarm", "{name:str}": "no_such_user",
    "{file_path:path}": "index.html", "{path:str}": "openapi.json",
}  # fmt: skip


def _expected(needs: str, caller: str) -> str:
    """'pass' (the guard lets it through), '401' or '403' for ``caller``: none, viewer,
    operator, admin or must_change (an operator with a one-time password)."""
    if needs == OPEN:
        return "pass"
    if caller == "none":
        return "401"
    if needs == SESSION:
        return "pass"
    if caller == "must_change":
        return "403"
    return "pass" if RANK[caller] >= RANK[needs] else "403"


def _outcome(status: int) -> str:
    assert status < 500 or status == 503, status  # 503: the part behind it is not running here
    return str(status) if status in (401, 403) else "pass"


def _routes(api: Api) -> list[tuple[str, str]]:
    found = []
    for route in api.app.routes:
        if isinstance(route, WebSocketRoute):
            found.append(("WS", route.path))
        elif isinstance(route, HTTPRoute):
            # OPTIONS: Litestar's own answer to CORS preflights, the same for every route
            found += [(m, route.path) for m in sorted(route.methods) if m != "OPTIONS"]
        else:
            pytest.fail(f"route {route.path} is of a kind this probe cannot call: teach it")
    return found


async def _live_socket(api: Api, path: str, headers: dict[str, str]) -> str:
    """'pass' when the live socket opens and speaks; 'refused' when its handshake is refused
    (a WebSocket handshake has no 401: every refusal is its 403)."""
    try:
        async with api.websocket_connect(path, headers) as ws:
            json.loads(await ws.recv())
            return "pass"
    except websockets.exceptions.InvalidStatus as refused:
        assert refused.response.status_code == 403, refused.response.status_code
        return "refused"


@pytest.mark.security
async def test_every_route_lets_through_whom_its_guard_promises(api: Api) -> None:
    routes = _routes(api)
    unlisted = sorted(set(routes) - set(EXPECTED))
    assert not unlisted, f"add these routes to EXPECTED with the guard they need: {unlisted}"
    stale = sorted(set(EXPECTED) - set(routes))
    assert not stale, f"EXPECTED lists routes the app no longer has: {stale}"
    api.users.add("newbie", Role.OPERATOR, "fresh-start-91", must_change=True)
    r = await api.post("/api/auth/login", json={"user": "newbie", "password": "fresh-start-91"})
    assert r.status_code == 201 and r.json()["must_change_password"], r.text
    api.cookies.clear()  # each caller is its token, or nothing
    users = {
        "none": "",
        "viewer": "vic",
        "operator": "olga",
        "admin": "ada",
        "must_change": "newbie",
    }

    def session(caller: str) -> dict[str, str]:
        user = api.users.get(users[caller])
        if user is None:
            return {}
        token, _ = api.tokens.issue(user)
        return {"Authorization": f"Bearer {token}"}

    wrong = []
    for method, template in routes:
        path = template
        for placeholder, value in PATH_VALUES.items():
            path = path.replace(placeholder, value)
        for caller in users:
            # a session of its own for every call: logout and an admin's end-all end sessions
            headers = session(caller)
            want = _expected(EXPECTED[(method, template)], caller)
            if method == "WS":
                got = await _live_socket(api, path, headers)
                want = "pass" if want == "pass" else "refused"
            else:
                # {} is a body no route accepts: past the guard, it is refused with 422
                body = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
                r = await api.request(method, path, headers=headers, **body)
                got = _outcome(r.status_code)
            if got != want:
                wrong.append(f"{method} {template} as {caller}: {got}, expected {want}")
    assert not wrong, "\n".join(wrong)


# -- the document itself ------------------------------------------------------------------------
def _document() -> dict[str, Any]:
    from unittest.mock import MagicMock  # the document needs the routes, not a bus

    app = create_app(bridge=MagicMock(), users=MagicMock(), tokens=MagicMock(), grid=GRID)
    doc: dict[str, Any] = app.openapi_schema.to_schema()
    return doc


@pytest.mark.security
def test_the_document_is_the_same_every_time_and_says_who_may_call() -> None:
    first, second = _document(), _document()
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    assert "security" not in first  # each operation says it, or needs none
    for path, item in first["paths"].items():
        for method, operation in item.items():
            where = f"{method.upper()} {path}"
            responses = operation["responses"]
            assert "400" not in responses, where  # malformed requests are answered 422
            open_route = path in ("/api/health", "/api/auth/login", "/api/auth/logout")
            if open_route:
                assert "security" not in operation, where
                assert ("401" in responses) == (path == "/api/auth/login"), where  # password
            else:
                assert operation["security"] == [{"bearer": []}, {"cookie": []}], where
                assert "401" in responses, where
            if method in ("post", "put", "patch", "delete"):
                assert {"403", "415"} <= set(responses), where  # Origin, Content-Type
            for code, response in responses.items():
                if code == "204":
                    assert "content" not in response, where
                elif int(code) >= 400:
                    body = response["content"]["application/json"]["schema"]
                    assert body == {"$ref": "#/components/schemas/ErrorBody"}, (where, code)
