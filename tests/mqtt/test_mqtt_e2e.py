"""Smart meters over MQTT on the session's real nats-server: virtual meters -> MQTT listener ->
mqtt_gateway -> measurement sets; bad input counted; devices kept off gp.*.meas.>."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiomqtt
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from gridpilot.core import bus
from gridpilot.core import subjects as sj
from gridpilot.core.config import ServiceConfig
from gridpilot.core.errors import PermissionDeniedError
from gridpilot.core.schemas import (
    DeviceKind,
    Heartbeat,
    MeasurementSet,
    ServiceState,
    Terminal,
    decode,
)
from gridpilot.gateways.mqtt.meter import DeviceMap, MeterPoint
from gridpilot.gateways.mqtt.service import MqttGatewayService
from gridpilot.platform.broker import EmbeddedNats
from gridpilot.protocols.meter_json import MeterFormat
from gridpilot.simulator.mqtt_meters import FileLogins, MqttMeterFleet, ScaledClock, VirtualMeter
from tests.conftest import MeterLogins, meter_login

GRID = "mqtt_e2e"
PERIOD_S = 900.0
T0_NS = 1_700_000_100_000_000_000  # a quarter-hour boundary
DEVICES: DeviceMap = {
    "meter_own": [MeterPoint("meter_own", "load_1", Terminal.LOAD)],
    "meter_sogno": [MeterPoint("house_2", "load_2", Terminal.LOAD), ("pv_2", "gen_2", "gen")],
}


def reading(device: str, t_ns: int) -> tuple[float, float]:
    """Distinct, time-dependent values per device, so a mix-up cannot pass."""
    k = (t_ns - T0_NS) // round(PERIOD_S * 1e9)
    base = {"meter_own": 0.004, "meter_sogno": -0.003, "meter_ghost": 0.5}[device]
    return base + 0.0001 * k, 0.25 * base


async def _mqtt(nats_server: EmbeddedNats, device: str, name: str) -> aiomqtt.Client:
    """An MQTT client of meter ``device`` of GRID, with its own credential."""
    host, port = nats_server.mqtt_url.removeprefix("mqtt://").rsplit(":", 1)
    user, password = meter_login(nats_server, GRID, device)
    return aiomqtt.Client(
        host,
        int(port),
        username=user,
        password=password,
        identifier=f"{name}-{time.time_ns()}",
        protocol=aiomqtt.ProtocolVersion.V311,
        clean_session=True,
    )


class Gateway:
    """The running service and what the admin sees of it."""

    def __init__(self, service: MqttGatewayService, admin: Client) -> None:
        self.service = service
        self.admin = admin
        self.beats: asyncio.Queue[Heartbeat] = asyncio.Queue()
        self.sets: asyncio.Queue[MeasurementSet] = asyncio.Queue()

    async def heartbeat_where(
        self, pred: Callable[[Heartbeat], bool], *, within_s: float = 5.0
    ) -> Heartbeat:
        async with asyncio.timeout(within_s):
            while True:
                hb = await self.beats.get()
                if pred(hb):
                    return hb

    async def next_set(self, *, within_s: float = 3.0) -> MeasurementSet:
        return await asyncio.wait_for(self.sets.get(), within_s)


@pytest.fixture
async def gateway(
    admin_nc: Client, nats_server: EmbeddedNats, credentials: dict[str, str], tmp_path: Path
) -> AsyncIterator[Gateway]:
    config = ServiceConfig(
        nats_url=nats_server.url,
        user="mqtt_gateway",
        password=credentials["mqtt_gateway"],
        grid=GRID,
        data_dir=tmp_path,
        heartbeat_s=0.2,
    )
    service = MqttGatewayService(config, devices=DEVICES)
    gw = Gateway(service, admin_nc)

    async def on_beat(msg: Msg) -> None:
        gw.beats.put_nowait(decode(msg.data, Heartbeat))

    async def on_set(msg: Msg) -> None:
        gw.sets.put_nowait(decode(msg.data, MeasurementSet))

    await admin_nc.subscribe(sj.HEARTBEAT.format(service="mqtt_gateway"), cb=on_beat)
    await admin_nc.subscribe(sj.MEAS.format(grid=GRID, source="*"), cb=on_set)
    await admin_nc.flush()
    task = asyncio.create_task(service.run(install_signals=False))
    # Running means subscribed: whatever the meters publish from now on reaches it.
    await gw.heartbeat_where(lambda hb: hb.state is ServiceState.RUNNING)
    yield gw
    service.stop()
    await asyncio.wait_for(task, 5.0)
    assert not service.counters["task_failures"] and not service.counters["handler_errors"]


async def test_virtual_meters_reach_state_estimation_as_measurement_sets(
    gateway: Gateway, nats_server: EmbeddedNats, meter_logins: MeterLogins
) -> None:
    path = meter_logins(GRID, ["meter_own", "meter_sogno", "meter_ghost"])
    fleet = MqttMeterFleet(
        url=nats_server.mqtt_url,
        logins=FileLogins(path, GRID),
        grid=GRID,
        meters=[
            VirtualMeter(device="meter_own"),
            VirtualMeter(device="meter_sogno", format=MeterFormat.SOGNO, component="house_2"),
            VirtualMeter(device="meter_ghost", format=MeterFormat.SOGNO),
        ],
        reading=reading,
        # 900 simulated seconds in 0.15 s
        clock=ScaledClock(speed=PERIOD_S / 0.15, start_ns=T0_NS - 10**9),
        period_s=PERIOD_S,
    )
    task = asyncio.create_task(fleet.run())
    try:
        got: dict[tuple[str, int], MeasurementSet] = {}
        # the reading at connect, then two periods, of each of the two mapped meters
        while min(sum(1 for s, _ in got if s == src) for src in ("meter_own", "meter_sogno")) < 3:
            mset = await gateway.next_set()
            got[(mset.source, mset.t_ns)] = mset
        hb = await gateway.heartbeat_where(
            lambda hb: (
                hb.counters.get("meter_unknown_device", 0) >= 2
                and hb.counters.get("meter_readings", 0) >= 6
            )
        )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    period_ns = round(PERIOD_S * 1e9)
    for (source, t_ns), mset in got.items():
        assert mset.grid == GRID and mset.kind is DeviceKind.METER
        # one reading when the meter connects (each has its own connection), then on period
        # boundaries
        first = min(t for s, t in got if s == source)
        assert t_ns == first or (t_ns >= T0_NS and (t_ns - T0_NS) % period_ns == 0)
        p, q = reading(source, t_ns)
        (m,) = mset.measurements
        if source == "meter_own":
            assert (m.mrid, m.terminal, m.source, m.t_ns) == ("load_1", "load", source, t_ns)
            assert (m.p_mw, m.q_mvar) == (p, q)  # GridPilot's format carries floats exactly
        else:
            # The virtual SOGNO meter reports component house_2 only: the mapped PV is missing.
            assert (m.mrid, m.terminal, m.source, m.t_ns) == ("load_2", "load", source, t_ns)
            assert m.p_mw == pytest.approx(p, abs=1e-12)
            assert m.q_mvar == pytest.approx(q, abs=1e-12)
    seqs = sorted(m.seq for m in got.values())
    assert seqs == list(range(seqs[0], seqs[0] + len(got)))  # every set seen, none twice
    assert fleet.all_connected.is_set() and fleet.connect_s is not None  # one connection each
    assert fleet.refused == 0
    assert hb.counters["meter_point_missing"] >= 2 and hb.info["meters"] == 2
    assert fleet.published >= 5


async def test_unknown_and_malformed_payloads_are_counted_and_the_gateway_keeps_going(
    gateway: Gateway, nats_server: EmbeddedNats, credentials: dict[str, str]
) -> None:
    topic = f"gp/{GRID}/meter"
    good = {"device": "meter_own", "t_ns": T0_NS, "p_mw": 0.002, "q_mvar": 0.0005}
    sogno_from_elsewhere = {
        "device": "meter_sogno",
        "timestamp": "2023-11-14T22:15:00Z",
        "readings": [{"component": "house_2", "measurand": "activepower", "phase": "A", "data": 1}],
    }
    async with (
        await _mqtt(nats_server, "meter_own", "bad-meter") as client,
        await _mqtt(nats_server, "meter_x", "unknown-meter") as unknown,
    ):
        await client.publish(f"{topic}/meter_own", b"\xde\xad{not json", qos=1)
        await client.publish(f"{topic}/meter_own", json.dumps(sogno_from_elsewhere), qos=1)
        await unknown.publish(f"{topic}/meter_x", json.dumps({**good, "device": "meter_x"}), qos=1)
        await client.publish(f"{topic}/meter_own", json.dumps({**good, "t_ns": 17}), qos=1)
        await client.publish(f"{topic}/meter_own", json.dumps(good), qos=1)
        mset = await gateway.next_set()
    assert mset.source == "meter_own" and mset.measurements[0].p_mw == 0.002
    hb = await gateway.heartbeat_where(lambda hb: hb.counters.get("meter_readings") == 1)
    assert hb.state is ServiceState.RUNNING
    assert {k: v for k, v in hb.counters.items() if k.startswith("meter_")} == {
        "meter_rejected_not_json": 1,
        "meter_rejected_device_mismatch": 1,
        "meter_rejected_timestamp": 1,
        "meter_unknown_device": 1,
        "meter_readings": 1,
    }
    assert hb.counters["msgs_in"] == 5 and hb.counters["msgs_out"] == 1


async def test_meter_cannot_publish_measurements(
    admin_nc: Client, nats_server: EmbeddedNats
) -> None:
    everything = await admin_nc.subscribe(f"gp.{GRID}.>")
    await admin_nc.flush()
    async with await _mqtt(nats_server, "meter_evil", "evil-meter") as client:
        # nats-server 2.15 acknowledges a refused QoS 1 PUBLISH, drops it, logs a publish
        # violation and keeps the connection: nothing tells the device, so the test looks at
        # what arrives and at the server's log.
        await client.publish(f"gp/{GRID}/meas/meter_evil", b"{}", qos=1, timeout=2.0)
        await client.publish(f"gp/{GRID}/meter/meter_evil", b"marker", qos=1, timeout=2.0)
        first = await everything.next_msg(timeout=2.0)
    # Messages of one connection arrive in order: had the refused one passed, it came first.
    assert (first.subject, first.data) == (f"gp.{GRID}.meter.meter_evil", b"marker")
    violation = f'Publish Violation - Subject "gp.{GRID}.meas.meter_evil"'
    for _ in range(40):  # the server writes its log asynchronously
        if violation in nats_server.log_path.read_text(errors="replace"):
            break
        await asyncio.sleep(0.05)
    assert violation in nats_server.log_path.read_text(errors="replace")


@pytest.mark.parametrize(
    ("subject", "allowed"),
    [
        ("gp.any.meas.meter_1", True),
        ("gp.svc.mqtt_gateway.heartbeat", True),
        ("gp.any.meter.meter_1", False),
        ("gp.any.command.sw_1", False),
        ("gp.any.state", False),
        ("gp.svc.simulator.heartbeat", False),
    ],
)
async def test_mqtt_gateway_identity_writes_only_measurements(
    connect_as: Callable[..., Awaitable[Client]], subject: str, allowed: bool
) -> None:
    nc = await connect_as("mqtt_gateway")
    if allowed:
        await bus.publish_checked(nc, subject, b"{}")
    else:
        with pytest.raises(PermissionDeniedError):
            await bus.publish_checked(nc, subject, b"{}")
