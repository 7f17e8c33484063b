"""What the API tells an operator about the trust it deserves: outages are 503 (never an
empty answer), estimates carry their age and go stale, a closed browser tab is no error, the
API reference needs no internet, and the admin reads users and the audit trail."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from gridpilot.core import bus, subjects
from gridpilot.core import schemas as s
from gridpilot.platform.broker import EmbeddedNats
from gridpilot.platform.permissions import load_credentials
from gridpilot.services.historian.service import HistorianService
from tests.web.conftest import GRID, Api, login, publish_grid, serve


async def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_a_closed_browser_tab_is_not_an_error(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    viewer = await login(api, "vic")
    caplog.set_level(logging.INFO)
    for _ in range(3):
        ws = await api.websocket_connect(f"/api/grids/{GRID}/live", headers=viewer)
        assert json.loads(await ws.recv())["type"]
        await wait_for(lambda: len(api.bridge.clients) == 1, "the connection")
        ws.transport.abort()  # the tab closed: no close frame, the TCP connection just ends
        await wait_for(lambda: not api.bridge.clients, "the server to let the client go")
    await asyncio.sleep(2.5)  # the next periodic send would hit the closed socket
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not errors, [(r.name, r.getMessage(), r.exc_info) for r in errors]


async def test_alarms_are_503_not_empty_when_the_broker_is_gone(tmp_path: Path) -> None:
    """Its own broker, stopped under the running app: the alarm list is an outage (503), not
    "no alarms"; so are the grids and the estimate."""
    broker = EmbeddedNats(data_dir=tmp_path / "nats", port=0, monitor_port=0, mqtt_port=0)
    broker.start()
    creds = load_credentials(broker.data_dir)
    clients: list[Client] = []
    try:
        for identity in ("admin", "web"):
            clients.append(
                await bus.connect(
                    broker.url, user=identity, password=creds[identity], name=f"test-{identity}"
                )
            )
        await publish_grid(clients[0])
        async with serve(clients[1], tmp_path) as api:
            viewer = await login(api, "vic")
            r = await api.get(f"/api/grids/{GRID}/alarms", headers=viewer)
            assert (r.status_code, r.json()) == (200, [])  # no alarm table yet: no alarm
            broker.stop()
            await wait_for(lambda: not clients[1].is_connected, "the web client to notice")
            r = await api.get(f"/api/grids/{GRID}/alarms", headers=viewer)
            assert r.status_code == 503, r.text
            assert "cannot read the alarms of cigre_mv" in r.json()["detail"]
            r = await api.get(f"/api/grids/{GRID}/estimate", headers=viewer)
            assert r.status_code == 503 and "cannot read the latest estimate" in r.text
            r = await api.get("/api/grids", headers=viewer)
            assert r.status_code == 503 and "cannot list the grids" in r.text
            r = await api.get("/api/health")
            assert r.json() == {"ok": True, "bus_connected": False}
            # the browser is told too (it shows a banner): the socket does not need the bus
            async with api.websocket_connect(f"/api/grids/{GRID}/live", headers=viewer) as ws:
                deadline = time.monotonic() + 10
                while True:
                    assert time.monotonic() < deadline, "no freshness message"
                    msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
                    if msg["type"] == "freshness":
                        break
                assert msg["bus_connected"] is False and msg["stale"] is True
    finally:
        for nc in clients:
            with contextlib.suppress(OSError):  # closing flushes, to a broker that is gone
                await nc.close()
        broker.stop()


async def test_estimates_carry_their_age_and_go_stale(api: Api, admin_nc: Client) -> None:
    viewer = await login(api, "vic")
    r = await api.get(f"/api/grids/{GRID}/estimate", headers=viewer)
    assert r.status_code == 404  # none yet

    async def publish() -> None:
        est = s.StateEstimate(grid=GRID, t_ns=time.time_ns(), status=s.EstimateStatus.CONVERGED)
        await admin_nc.publish(subjects.STATE.format(grid=GRID), s.encode(est))

    async with api.websocket_connect(f"/api/grids/{GRID}/live", headers=viewer) as ws:
        for _ in range(4):  # a few estimates, 0.2 s apart: the grid's pace
            await publish()
            await asyncio.sleep(0.2)
        seen: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + 10
        while not {"estimate", "freshness"} <= seen.keys():
            assert time.monotonic() < deadline, seen.keys()
            msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
            seen[msg["type"]] = msg
        assert seen["estimate"]["stale"] is False and 0 <= seen["estimate"]["age_s"] < 2
        assert seen["freshness"]["bus_connected"] is True
        assert seen["estimate"]["stale_after_s"] == 5.0  # 3 intervals of 0.2 s, at least 5 s
        r = await api.get(f"/api/grids/{GRID}/estimate", headers=viewer)
        assert r.status_code == 200 and r.headers["x-estimate-stale"] == "false"
        assert 0 <= float(r.headers["x-estimate-age-s"]) < 2

        # estimates stop: the server says stale by itself, on the socket and in REST
        deadline = time.monotonic() + 15
        while True:
            assert time.monotonic() < deadline, "never marked stale"
            msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
            if msg["type"] == "freshness" and msg["stale"]:
                break
            if msg["type"] == "freshness":
                assert msg["age_s"] <= msg["stale_after_s"] + 0.1
        assert msg["age_s"] > 5.0
    r = await api.get(f"/api/grids/{GRID}/estimate", headers=viewer)
    assert r.headers["x-estimate-stale"] == "true" and float(r.headers["x-estimate-age-s"]) > 5


async def test_admin_lists_users_and_the_audit_trail(api: Api, services: list[Any]) -> None:
    [start] = services
    start(HistorianService)
    admin = await login(api, "ada")
    operator = await login(api, "olga")
    r = await api.post("/api/users", json={"name": "nina", "role": "viewer"}, headers=admin)
    assert r.status_code == 201, r.text
    users = (await api.get("/api/users", headers=admin)).json()
    assert {u["name"]: u["role"] for u in users} == {
        "vic": "viewer", "olga": "operator", "ada": "admin", "nina": "viewer",
    }  # fmt: skip
    trail: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    while not any(rec["action"] == "user_add" for rec in trail):
        assert time.monotonic() < deadline, trail
        r = await api.get(f"/api/grids/{GRID}/audit", headers=admin)
        if r.status_code == 200:  # 503 until the historian subscribed
            trail = r.json()["records"]
        await asyncio.sleep(0.2)
    added = next(rec for rec in trail if rec["action"] == "user_add")
    assert (added["user"], added["role"], added["target"]) == ("ada", "admin", "nina")
    assert (await api.get(f"/api/grids/{GRID}/audit", headers=operator)).status_code == 403


async def test_measurement_quality_reaches_the_browser(api: Api, admin_nc: Client) -> None:
    """A device reports a measurement invalid and old (IEC 61850-7-3 bits): the live socket
    lists it as flagged until a good report replaces it; REST filters by equipment."""
    viewer = await login(api, "vic")
    now = time.time_ns()

    def report(quality: int) -> s.MeasurementSet:
        return s.MeasurementSet(
            grid=GRID, source="rtu_trafo_0_1", kind=s.DeviceKind.RTU, t_ns=now, seq=1,
            measurements=[
                s.Measurement(
                    mrid="trafo_0_1", measurand=s.Measurand.POWER, terminal=s.Terminal.TO,
                    t_ns=now, p_mw=1.0, q_mvar=0.1, quality=quality,
                ),
                s.Measurement(
                    mrid="bus_1", measurand=s.Measurand.VOLTAGE, terminal=s.Terminal.BUS,
                    t_ns=now, v_pu=1.01,
                ),
            ],
        )  # fmt: skip

    subject = subjects.MEAS.format(grid=GRID, source="rtu_trafo_0_1")
    bad = int(s.Quality.INVALID | s.Quality.OLD_DATA)
    await admin_nc.publish(subject, s.encode(report(bad)))
    async with api.websocket_connect(f"/api/grids/{GRID}/live", headers=viewer) as ws:
        deadline = time.monotonic() + 10
        while True:
            assert time.monotonic() < deadline, "no quality message listed the measurement"
            msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
            if msg["type"] == "quality" and msg["flagged"]:
                break
        assert msg["flagged"] == [
            {"source": "rtu_trafo_0_1", "mrid": "trafo_0_1", "measurand": "power",
             "terminal": "to", "quality": bad}
        ]  # fmt: skip
        r = await api.get(f"/api/grids/{GRID}/measurements?mrid=trafo_0_1", headers=viewer)
        [mset] = r.json()
        assert [(m["mrid"], m["quality"]) for m in mset["measurements"]] == [("trafo_0_1", bad)]

        await admin_nc.publish(subject, s.encode(report(0)))  # good again
        deadline = time.monotonic() + 10
        while True:
            assert time.monotonic() < deadline, "the good report did not clear the flag"
            msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
            if msg["type"] == "quality" and not msg["flagged"]:
                break
