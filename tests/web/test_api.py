"""The web API on a real broker: OpenAPI, login and roles, 401/403/404/422 never 500, commands
with their audit record, alarms acknowledged through monitoring, history through the
historian, and the live WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import msgspec
import nats.js.errors
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client
from openapi_spec_validator import validate

from gridpilot.core import schemas as s
from gridpilot.core import subjects
from gridpilot.core.estimates import EstimateWriter, encode_layout, layout_key
from gridpilot.model import distribution
from gridpilot.model.placement import default_placement
from gridpilot.services.historian.service import HistorianService
from gridpilot.services.monitoring.service import MonitoringService
from gridpilot.services.web.bridge import Bridge, Unavailable
from gridpilot.services.web.users import Role, Tokens, UserStore
from tests.conftest import ConnectAs
from tests.estimates import publish_estimate
from tests.pipeline import grid as load
from tests.web.conftest import GRID, PASSWORDS, Api, login


async def test_openapi_document_is_valid_and_lists_every_route(api: Api) -> None:
    doc = (await api.get("/api/schema/openapi.json")).json()
    validate(doc)
    assert {"/api/grids/{grid}/commands/switch", "/api/grids/{grid}/history"} <= set(doc["paths"])


async def test_every_protected_route_refuses_without_login(api: Api) -> None:
    doc = (await api.get("/api/schema/openapi.json")).json()
    open_routes = {"/api/health", "/api/auth/login", "/api/auth/logout"}
    checked = 0
    for path, methods in doc["paths"].items():
        if path in open_routes:
            continue
        url = path.replace("{grid}", GRID).replace("{alarm_id}", "a").replace("{name}", "x")
        for method in methods:
            r = await api.request(method.upper(), url, params={"mrid": "bus_1"}, json={})
            assert r.status_code == 401, (method, path, r.status_code, r.text)
            assert "login" in r.json()["detail"]
            checked += 1
    assert checked >= 15
    bad = await api.get("/api/grids", headers={"Authorization": "Bearer abc.def"})
    assert bad.status_code == 401 and "log in again" in bad.json()["detail"]


async def test_roles_are_enforced(api: Api) -> None:
    viewer = await login(api, "vic")
    operator = await login(api, "olga")
    body = {"target": "sw_1", "closed": True}
    r = await api.post(f"/api/grids/{GRID}/commands/switch", json=body, headers=viewer)
    assert r.status_code == 403 and "needs the operator role" in r.json()["detail"]
    for method, url, who in [
        ("POST", f"/api/grids/{GRID}/alarms/x/ack", viewer),
        ("POST", f"/api/grids/{GRID}/training/inject", viewer),
        ("GET", "/api/users", operator),
        ("POST", "/api/users", operator),
    ]:
        r = await api.request(method, url, headers=who, json={"kind": "clear"})
        assert r.status_code == 403, (method, url, r.text)
    devices = await api.get(f"/api/grids/{GRID}/devices", headers=viewer)
    assert devices.status_code == 200
    assert {"pmu_bus_6", "rtu_trafo_0_1"} <= {d["id"] for d in devices.json()}
    ok = await api.get(f"/api/grids/{GRID}/topology", headers=viewer)
    assert ok.status_code == 200, ok.text
    assert len(ok.json()["buses"]) == 15


async def test_malformed_requests_get_422_with_a_message(api: Api) -> None:
    operator = await login(api, "olga")
    url = f"/api/grids/{GRID}/commands/switch"
    for body in ({"target": 3, "closed": True}, {"closed": True}, [1, 2], "x"):
        r = await api.post(url, json=body, headers=operator)
        assert r.status_code == 422, r.text
        assert r.json()["detail"]
    json_type = {**operator, "Content-Type": "application/json"}
    r = await api.post(url, content=b"{not json", headers=json_type)
    assert r.status_code == 422
    r = await api.post(url, content=b"{not json", headers=operator)  # and not said to be JSON
    assert r.status_code == 415 and "Content-Type: application/json" in r.json()["detail"]
    r = await api.get(f"/api/grids/{GRID}/history?mrid=b&bucket_s=abc", headers=operator)
    assert r.status_code == 422 and "bucket_s" in r.text
    r = await api.post("/api/auth/login", json={"user": "olga"})
    assert r.status_code == 422 and "password" in r.text
    r = await api.get("/api/grids/atlantis/topology", headers=operator)
    assert r.status_code == 404 and "unknown grid 'atlantis'" in r.json()["detail"]
    body = {"target": "no_such_switch", "closed": True}
    r = await api.post(url, json=body, headers=operator)
    assert r.status_code == 404 and "no switch 'no_such_switch'" in r.json()["detail"]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=json_values)
async def test_no_body_makes_a_500(api: Api, body: Any) -> None:
    headers = await login(api, "olga")
    for url in (
        f"/api/grids/{GRID}/commands/setpoint",
        f"/api/grids/{GRID}/training/inject",
        "/api/auth/password",
    ):
        r = await api.post(url, json=body, headers=headers)
        assert r.status_code < 500 or r.status_code == 503, (url, body, r.text)


async def test_one_time_password_must_be_changed_and_old_sessions_end(
    api: Api,
) -> None:
    admin = await login(api, "ada")
    r = await api.post("/api/users", json={"name": "newbie", "role": "operator"}, headers=admin)
    assert r.status_code == 201
    one_time = r.json()["password"]
    r = await api.post("/api/auth/login", json={"user": "newbie", "password": one_time})
    assert r.json()["must_change_password"] is True
    first = {"Authorization": f"Bearer {r.json()['token']}"}
    r = await api.get("/api/grids", headers=first)
    assert r.status_code == 403 and "change your one-time password" in r.json()["detail"]
    change = {"old_password": one_time, "new_password": "short"}
    r = await api.post("/api/auth/password", json=change, headers=first)
    assert r.status_code == 422 and "at least 10 characters" in r.json()["detail"]
    change["new_password"] = "a-much-better-one"
    r = await api.post("/api/auth/password", json=change, headers=first)
    assert r.status_code == 200 and r.json()["must_change_password"] is False
    fresh = {"Authorization": f"Bearer {r.json()['token']}"}
    assert (await api.get("/api/grids", headers=fresh)).json() == [GRID]
    assert (await api.get("/api/grids", headers=first)).status_code == 401  # the old token
    wrong = await api.post("/api/auth/login", json={"user": "newbie", "password": one_time})
    assert wrong.status_code == 401 and wrong.json()["detail"] == "wrong user name or password"
    assert (await api.delete("/api/users/newbie", headers=admin)).status_code == 204
    assert (await api.get("/api/grids", headers=fresh)).status_code == 401  # removed


async def test_expired_session_is_refused(tmp_path: Path) -> None:
    users = UserStore(tmp_path)
    users.add("vic", Role.VIEWER, PASSWORDS["vic"])
    tokens = Tokens(tmp_path, users)
    user = users.get("vic")
    assert user is not None
    token, session = tokens.issue(user, now_ns=0)
    assert tokens.check(token, now_ns=session.expires_ns - 1).user == "vic"
    with pytest.raises(Exception, match="session expired"):
        tokens.check(token, now_ns=session.expires_ns + 1)
    tampered = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    with pytest.raises(Exception, match="bad session token"):
        tokens.check(tampered, now_ns=0)


async def test_switch_command_reaches_the_executor_and_is_audited(
    api: Api, admin_nc: Client
) -> None:
    audits: list[s.AuditRecord] = []

    async def on_audit(msg: Any) -> None:
        audits.append(msgspec.json.decode(msg.data, type=s.AuditRecord))

    async def executor(msg: Any) -> None:  # plays the IEC 104 gateway
        cmd = msgspec.json.decode(msg.data, type=s.Command)
        result = s.CommandResult(
            command_id=cmd.id, grid=cmd.grid, target=cmd.target, ok=True,
            t_ns=time.time_ns(), executed_by="test_gateway", change=f"{cmd.target} opened",
        )  # fmt: skip
        await admin_nc.publish(subjects.COMMAND_RESULT.format(grid=cmd.grid), s.encode(result))

    await admin_nc.subscribe(subjects.AUDIT.format(grid=GRID), cb=on_audit)
    await admin_nc.subscribe(subjects.COMMAND.wildcard(grid=GRID), cb=executor)
    operator = await login(api, "olga")
    body = {"target": "sw_3", "closed": False}
    r = await api.post(f"/api/grids/{GRID}/commands/switch", json=body, headers=operator)
    assert r.status_code == 200, r.text
    assert r.json()["ok"] and r.json()["executed_by"] == "test_gateway"
    for _ in range(50):
        if audits:
            break
        await asyncio.sleep(0.05)
    [record] = audits
    assert (record.user, record.role, record.action, record.target) == (
        "olga",
        "operator",
        "switch",
        "sw_3",
    )
    assert record.ok and record.detail["closed"] is False


async def test_no_executor_is_a_503_that_says_so(api: Api) -> None:
    operator = await login(api, "olga")
    r = await api.post(
        f"/api/grids/{GRID}/alarms/voltage_low:bus_1/ack", headers=operator
    )  # monitoring is not running
    assert r.status_code == 503 and "is monitoring running" in r.json()["detail"]


async def test_alarm_ack_history_and_live_updates(
    api: Api, admin_nc: Client, services: list[Any]
) -> None:
    [start] = services
    monitoring = start(MonitoringService)
    historian = start(HistorianService)
    await asyncio.sleep(0.5)
    model = load(GRID)
    ids = [b.id for b in model.buses]
    low = s.StateEstimate(
        grid=GRID,
        t_ns=time.time_ns() // 10**9 * 10**9,
        status=s.EstimateStatus.CONVERGED,
        buses=s.BusStates(
            id=ids, v_pu=[0.80] * len(ids), va_deg=[0.0] * len(ids),
            p_mw=[0.0] * len(ids), q_mvar=[0.0] * len(ids),
        ),
    )  # fmt: skip
    viewer = await login(api, "vic")
    operator = await login(api, "olga")
    writer = EstimateWriter(GRID)
    async with api.websocket_connect(f"/api/grids/{GRID}/live", headers=viewer) as ws:
        for i in range(6):  # debounce: a few estimates in a row with every bus low
            est = msgspec.structs.replace(low, t_ns=low.t_ns + i * 10**9)
            await publish_estimate(admin_nc, est, writer=writer)
            await asyncio.sleep(0.1)
        kinds: set[str] = set()
        estimates: list[dict[str, Any]] = []  # of the layout, in the order received
        deadline = time.monotonic() + 10
        while not ({"estimate", "alarm", "services"} <= kinds and len(estimates) >= 2):
            assert time.monotonic() < deadline, kinds
            msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
            kinds.add(msg["type"])
            if msg["type"] == "estimate" and msg["layout"]:
                assert msg["v_pu"][0] == 0.8 and len(msg["v_pu"]) == len(ids)
                estimates.append(msg)
        # the ids come with the first estimate of a layout, the values with each
        assert writer.layout is not None
        assert [e["layout"] for e in estimates] == [writer.layout.id] * len(estimates)
        assert estimates[0]["bus_id"] == ids
        assert all("bus_id" not in e for e in estimates[1:])
    alarms = (await api.get(f"/api/grids/{GRID}/alarms", headers=viewer)).json()
    assert alarms, "monitoring raised no alarm"
    alarm_id = alarms[0]["id"]
    r = await api.post(f"/api/grids/{GRID}/alarms/{alarm_id}/ack", headers=operator)
    assert r.status_code == 201 and r.json()["ok"], r.text
    r = await api.post(f"/api/grids/{GRID}/alarms/not_an_alarm/ack", headers=operator)
    assert r.status_code == 404 and "no active alarm" in r.json()["detail"]
    assert monitoring.counters["alarms_raised"] >= 1

    for _ in range(100):  # the historian stored the estimates
        if historian.counters["samples_new"] >= len(ids) * 4:
            break
        await asyncio.sleep(0.1)
    q = {"mrid": ids[1], "t_from_ns": low.t_ns, "t_to_ns": low.t_ns + 10 * 10**9}
    r = await api.get(f"/api/grids/{GRID}/history", params=q, headers=viewer)
    assert r.status_code == 200, r.text
    assert r.json()["data"][0]["value"][0] == pytest.approx(0.8)
    r = await api.get(
        f"/api/grids/{GRID}/history", params={**q, "quantity": "nonsense"}, headers=viewer
    )
    assert r.status_code == 422 and "no est series" in r.json()["detail"]


async def test_the_latest_estimate_is_read_from_kv_with_its_layout(
    api: Api, admin_nc: Client, connect_as: ConnectAs
) -> None:
    kv = await admin_nc.jetstream().key_value(subjects.STATE_BUCKET)
    with contextlib.suppress(nats.js.errors.KeyNotFoundError):
        await kv.purge(GRID)  # what earlier tests' estimators left
    fresh = Bridge(await connect_as("web"))
    assert await fresh.estimate(GRID) is None  # none yet: not an error
    ids = [b.id for b in load(GRID).buses]
    est = s.StateEstimate(
        grid=GRID,
        t_ns=1,
        status=s.EstimateStatus.CONVERGED,
        buses=s.BusStates(
            id=ids, v_pu=[0.97] * len(ids), va_deg=[0.0] * len(ids),
            p_mw=[0.0] * len(ids), q_mvar=[0.0] * len(ids),
        ),
    )  # fmt: skip
    writer = EstimateWriter(GRID)
    values, layout = writer.encode(est)
    assert layout is not None
    await kv.put(layout_key(GRID, layout.id), encode_layout(layout))
    await kv.put(GRID, s.encode(values))  # as the estimator keeps the latest
    got = await Bridge(await connect_as("web")).estimate(GRID)
    assert got is not None and got.buses is not None and got.buses.id == ids
    assert got.buses.v_pu == [0.97] * len(ids)
    # an entry naming a layout the bucket lacks: unavailable, said so, not "no estimate"
    await kv.put(GRID, s.encode(msgspec.structs.replace(values, layout="0" * 16)))
    with pytest.raises(Unavailable, match="cannot be read"):
        await Bridge(await connect_as("web")).estimate(GRID)
    await kv.purge(GRID)


async def test_live_socket_refuses_without_login(api: Api) -> None:
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        async with api.websocket_connect(f"/api/grids/{GRID}/live") as ws:
            await ws.recv()
    assert refused.value.response.status_code == 403  # the handshake is refused


async def test_a_deleted_grid_is_no_longer_listed(api: Api, admin_nc: Client) -> None:
    viewer = await login(api, "vic")
    model = msgspec.structs.replace(load(GRID), name="gone")
    placement = default_placement(model)
    await distribution.publish(admin_nc, distribution.package(model, placement))
    assert "gone" in (await api.get("/api/grids", headers=viewer)).json()
    store = await admin_nc.jetstream().object_store(distribution.BUCKET)
    await store.delete("gone.json")
    assert (await api.get("/api/grids", headers=viewer)).json() == [GRID]
    r = await api.get("/api/grids/gone/topology", headers=viewer)
    assert r.status_code == 404 and "unknown grid" in r.json()["detail"]
