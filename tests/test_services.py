"""Services on a real nats-server, in this process: the data path, bad input, alarms, commands."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace

import msgspec
import numpy as np
import pytest
from nats.aio.client import Client

from gridpilot.core import bus, subjects
from gridpilot.core.config import ServiceConfig
from gridpilot.core.errors import ConfigError
from gridpilot.core.estimates import EstimateReader
from gridpilot.core.schemas import (
    AckRequest,
    Alarm,
    AlarmKind,
    AlarmState,
    BusStates,
    BusValues,
    Command,
    CommandKind,
    CommandResult,
    Condition,
    DeviceKind,
    EstimateStatus,
    EstimateValues,
    Heartbeat,
    InjectionKind,
    InjectRequest,
    Measurand,
    MeasurementSet,
    MeasurementSnapshot,
    Reply,
    ServiceState,
    Severity,
    SimTruth,
    StateEstimate,
    decode,
    encode,
)
from gridpilot.core.service import Service
from gridpilot.gateways.c37118.service import C37118GatewayService
from gridpilot.gateways.iec104.service import Iec104GatewayService
from gridpilot.gateways.modbus.service import ModbusGatewayService
from gridpilot.gateways.mqtt.service import MqttGatewayService
from gridpilot.model import distribution
from gridpilot.model.placement import default_placement
from gridpilot.platform.broker import EmbeddedNats
from gridpilot.services.monitoring.service import MonitoringService
from gridpilot.services.state_estimation.service import (
    INLINE_MS,
    GridEstimation,
    StateEstimationService,
)
from gridpilot.simulator.service import SimulatorService
from tests.conftest import MeterLogins, remove_grid
from tests.estimates import publish_estimate
from tests.pipeline import Pipeline, grid

GRID = "cigre_mv"


@pytest.fixture
async def platform(
    admin_nc: Client,
    nats_server: EmbeddedNats,
    credentials: dict[str, str],
    meter_logins: MeterLogins,
    tmp_path: Path,
) -> AsyncIterator[Callable[..., Service]]:
    """Start services in this process with their own credentials; stopped after the test."""
    model = grid(GRID)
    pkg = distribution.package(model, default_placement(model))
    # the virtual DER inverters on a free port, not the platform's default
    ders = [msgspec.structs.replace(d, port=free_port()) for d in pkg.devices.der]
    rtus = [msgspec.structs.replace(r, port=free_port()) for r in pkg.devices.rtu]
    pmus = [msgspec.structs.replace(p, port=free_port()) for p in pkg.devices.pmu]
    devices = msgspec.structs.replace(pkg.devices, der=ders, rtu=rtus, pmu=pmus)
    pkg = msgspec.structs.replace(pkg, devices=devices)
    await distribution.publish(admin_nc, pkg)
    # every test starts the twin afresh: the simulator keeps its switching, setpoints and
    # clock in KV gp_twin, and another test of this session may have left them there
    await (await admin_nc.jetstream().key_value("gp_twin")).purge(GRID)
    # ... and monitoring its alarm table in gp_alarms
    await (await admin_nc.jetstream().key_value("gp_alarms")).purge(GRID)
    running: list[tuple[Service, asyncio.Task[None]]] = []

    def start(cls: type[Service], speed: float = 1.0) -> Service:
        config = ServiceConfig(
            mqtt_url=nats_server.mqtt_url,
            mqtt_credentials=meter_logins(GRID, [m.device for m in pkg.devices.meter]),
            speed=speed,
            nats_url=nats_server.url,
            user=cls.name,
            password=credentials[cls.name],
            grid=GRID,
            data_dir=tmp_path,
            heartbeat_s=0.2,
        )
        svc = cls(config)
        running.append((svc, asyncio.create_task(svc.run(install_signals=False))))
        return svc

    yield start
    for svc, _task in running:
        svc.stop()
    for _svc, task in running:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)


def field_gateways(platform: Callable[..., Service]) -> Service:
    """Every gateway, as `gridpilot up` starts them; returns the IEC 104 one."""
    platform(C37118GatewayService)
    platform(ModbusGatewayService)
    platform(MqttGatewayService)
    return platform(Iec104GatewayService)


_PORTS = itertools.count(20000 + os.getpid() % 5000 * 2)


def free_port() -> int:
    """A free port below the ephemeral range: a port the kernel hands out for outgoing
    connections (the gateways make many) could be taken again before a server binds it."""
    while True:
        port = next(_PORTS)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


class Collector:
    def __init__(self, typ: type) -> None:
        self.typ = typ
        self.items: list = []
        self.event = asyncio.Event()

    async def __call__(self, msg) -> None:  # type: ignore[no-untyped-def]
        self.items.append(msgspec.json.decode(msg.data, type=self.typ))
        self.event.set()

    async def wait_for(self, pred: Callable[[list], bool], within_s: float = 10.0) -> None:
        deadline = time.monotonic() + within_s
        while not pred(self.items):
            self.event.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"condition not met; got {len(self.items)} messages")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.event.wait(), remaining)


class EstimateCollector(Collector):
    """Estimates as every consumer reads them: the values, and the layout from KV."""

    def __init__(self, nc: Client) -> None:
        super().__init__(StateEstimate)
        self.reader = EstimateReader(nc)

    async def __call__(self, msg) -> None:  # type: ignore[no-untyped-def]
        self.items.append(await self.reader.read(msg.data))
        self.event.set()


async def collect(nc: Client, subject: str, typ: type) -> Collector:
    c = EstimateCollector(nc) if typ is StateEstimate else Collector(typ)

    async def on_msg(msg) -> None:  # type: ignore[no-untyped-def]
        await c(msg)

    await nc.subscribe(subject, cb=on_msg)
    return c


async def test_simulator_state_estimation_accuracy_and_injected_gross_error(
    platform: Callable[[type[Service]], Service], admin_nc: Client
) -> None:
    states = await collect(admin_nc, subjects.STATE.format(grid=GRID), StateEstimate)
    truths = await collect(admin_nc, subjects.TRUTH.format(grid=GRID), SimTruth)
    platform(SimulatorService)
    field_gateways(platform)  # the whole field path, as `gridpilot up` runs it
    platform(StateEstimationService)
    await states.wait_for(lambda s: len(s) >= 20, within_s=20)
    truth_at = {t.t_ns: t.buses for t in truths.items}
    errors = [_v_error(s.buses, truth_at[s.t_ns]) for s in states.items if s.t_ns in truth_at]
    assert len(errors) >= 15
    assert all(s.status is EstimateStatus.CONVERGED for s in states.items)
    assert max(errors) < 0.005

    req = InjectRequest(
        kind=InjectionKind.GROSS_ERROR,
        source="rtu_trafo_0_1",
        mrid="trafo_0_1",
        measurand=Measurand.POWER,
        error=2.0,
    )
    reply = await inject(admin_nc, req)
    assert reply.ok, reply.error
    print(
        "estimates with bad data before the injection:",
        sum(bool(e.bad_data) for e in states.items),
        "of",
        len(states.items),
    )
    culprit = ("rtu_trafo_0_1", "trafo_0_1")

    def flags(e: StateEstimate) -> bool:
        return culprit in {(b.source, b.mrid) for b in e.bad_data}

    n = len(states.items)
    await states.wait_for(lambda s: sum(map(flags, s[n:])) >= 10, within_s=15)
    first = next(i for i, e in enumerate(states.items) if i >= n and flags(e))
    after = states.items[first:]
    # once the RTU's corrupted report is in, every estimate leaves it out, and only it
    missed = [(e.bad_data, e.objective) for e in after if not flags(e)]
    assert not missed, missed
    extra = [e.bad_data for e in after if len(e.bad_data) > 1]
    assert len(extra) <= 1, extra[:2]
    truth_at = {t.t_ns: t.buses for t in truths.items}
    flagged = [e for e in after if e.t_ns in truth_at]
    assert max(_v_error(e.buses, truth_at[e.t_ns]) for e in flagged) < 0.005

    bad = InjectRequest(kind=InjectionKind.GROSS_ERROR, source="no_such_device", mrid="x")
    reply = await inject(admin_nc, bad)
    assert not reply.ok and "no_such_device" in reply.error


async def inject(nc: Client, req: InjectRequest) -> Reply:
    msg = await nc.request(subjects.SIM_INJECT.format(grid=GRID), encode(req), timeout=5)
    return decode(msg.data, Reply)


def _v_error(est: BusStates | None, truth: BusStates) -> float:
    assert est is not None
    return float(np.max(np.abs(np.subtract(est.v_pu, truth.v_pu))))


async def test_malformed_measurements_are_counted_and_dropped(
    platform: Callable[[type[Service]], Service], admin_nc: Client
) -> None:
    se = platform(StateEstimationService)
    states = await collect(admin_nc, subjects.STATE.format(grid=GRID), StateEstimate)
    beats = await collect(admin_nc, subjects.HEARTBEAT.format(service=se.name), Heartbeat)
    await beats.wait_for(lambda b: any(h.state == "running" for h in b))
    subject = subjects.MEAS.format(grid=GRID, source="pmu_bus_1")
    bad_messages = [
        b"\x00\xffnot json",
        b'{"grid": "cigre_mv"}',  # required fields missing
        b'{"grid": 1, "source": "x", "kind": "pmu", "t_ns": 0, "seq": 0, "measurements": []}',
        b'{"grid": "cigre_mv", "source": "pmu_bus_1", "kind": "pmu", "t_ns": "soon", '
        b'"seq": 0, "measurements": []}',
        b"[" * 100_000,  # deeply nested
    ]
    for data in bad_messages:
        await admin_nc.publish(subject, data)
    # then good data: the service must still estimate
    pipe = Pipeline(GRID)
    for k in range(5):
        pipe.twin.step(pipe.t_s + k * 0.1)
        for dev in pipe.placement.devices:
            mset = pipe.twin.measure(dev, GRID, k)
            await admin_nc.publish(subjects.MEAS.format(grid=GRID, source=dev.id), encode(mset))
    await states.wait_for(lambda s: len(s) >= 3)
    assert states.items[-1].status is EstimateStatus.CONVERGED
    await beats.wait_for(lambda b: bool(b) and b[-1].counters.get("dropped_bad_payload", 0) >= 5)
    assert beats.items[-1].counters.get("handler_errors", 0) == 0


async def test_an_estimate_too_large_for_the_broker_is_refused_and_reported(
    platform: Callable[[type[Service]], Service], admin_nc: Client
) -> None:
    """Not sent (the server would drop the connection), counted, and a critical condition
    until estimates fit again; the connection stays up throughout."""
    se = platform(StateEstimationService)
    states = await collect(admin_nc, subjects.STATE.format(grid=GRID), StateEstimate)
    conditions = await collect(
        admin_nc, subjects.CONDITION.format(grid=GRID, source=se.name), Condition
    )
    beats = await collect(admin_nc, subjects.HEARTBEAT.format(service=se.name), Heartbeat)
    await beats.wait_for(lambda b: any(h.state == "running" for h in b))
    assert isinstance(se, StateEstimationService)
    estimator = se.runners[GRID].estimator
    real = estimator.estimate
    inflate = True

    def estimate(snap: MeasurementSnapshot) -> StateEstimate:
        est = real(snap)
        return msgspec.structs.replace(est, message="x" * se.nc.max_payload) if inflate else est

    estimator.estimate = estimate  # type: ignore[method-assign]

    async def feed() -> None:
        pipe = Pipeline(GRID)
        for k in itertools.count():
            pipe.twin.step(pipe.t_s + k * 0.1)
            for dev in pipe.placement.devices:
                mset = pipe.twin.measure(dev, GRID, k)
                await admin_nc.publish(subjects.MEAS.format(grid=GRID, source=dev.id), encode(mset))
            await asyncio.sleep(0.1)

    feeding = asyncio.ensure_future(feed())
    try:
        await conditions.wait_for(lambda c: any(x.active for x in c), within_s=20)
        raised = conditions.items[0]
        assert (raised.kind, raised.mrid, raised.severity) == (
            AlarmKind.NOT_OBSERVABLE,
            se.name,
            Severity.CRITICAL,
        )
        assert raised.value > raised.limit == se.nc.max_payload
        assert "not published" in raised.message and GRID in raised.message
        assert se.counters["dropped_oversize"] >= 1 and not states.items
        assert se.nc.is_connected and bus.stats(se.nc).disconnects == 0
        inflate = False
        await conditions.wait_for(lambda c: not c[-1].active, within_s=20)
        await states.wait_for(lambda s: len(s) >= 2)
        assert all(len(s.message) < 1000 for s in states.items)
        assert se.nc.is_connected and bus.stats(se.nc).disconnects == 0
    finally:
        feeding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeding


async def test_monitoring_drops_an_estimate_whose_layout_it_cannot_find(
    platform: Callable[[type[Service]], Service], admin_nc: Client
) -> None:
    mon = platform(MonitoringService)
    beats = await collect(admin_nc, subjects.HEARTBEAT.format(service=mon.name), Heartbeat)
    await beats.wait_for(lambda b: any(h.state == "running" for h in b))
    orphan = EstimateValues(
        grid=GRID,
        t_ns=1,
        status=EstimateStatus.CONVERGED,
        layout="0" * 16,
        buses=BusValues(v_pu=[0.5], va_deg=[0.0], p_w=[0], q_var=[0]),
    )
    await admin_nc.publish(subjects.STATE.format(grid=GRID), encode(orphan))
    await beats.wait_for(lambda b: b[-1].counters.get("dropped_bad_payload", 0) >= 1)
    assert mon.counters["estimates_checked"] == 0 and not mon.counters["handler_errors"]


async def test_unknown_device_and_wrong_grid_do_not_disturb_the_estimate(
    platform: Callable[[type[Service]], Service], admin_nc: Client
) -> None:
    se = platform(StateEstimationService)
    beats = await collect(admin_nc, subjects.HEARTBEAT.format(service=se.name), Heartbeat)
    await beats.wait_for(lambda b: any(h.state == "running" for h in b))
    other = MeasurementSet(
        grid="other", source="pmu_bus_1", kind="pmu", t_ns=1, seq=1, measurements=[]
    )
    await admin_nc.publish(subjects.MEAS.format(grid=GRID, source="pmu_bus_1"), encode(other))
    await beats.wait_for(lambda b: bool(b) and b[-1].counters.get("dropped_bad_payload", 0) >= 1)


async def test_alarm_life_cycle_with_acknowledge_and_restart(
    platform: Callable[[type[Service]], Service], admin_nc: Client
) -> None:
    alarms = await collect(admin_nc, subjects.ALARM.format(grid=GRID), Alarm)
    mon = platform(MonitoringService)
    beats = await collect(admin_nc, subjects.HEARTBEAT.format(service=mon.name), Heartbeat)
    await beats.wait_for(lambda b: any(h.state == "running" for h in b))
    model = grid(GRID)
    ids = [b.id for b in model.buses]

    async def estimate(v5: float, t: int) -> None:
        v = [1.0] * len(ids)
        v[ids.index("bus_5")] = v5
        est = StateEstimate(
            grid=GRID,
            t_ns=t,
            status=EstimateStatus.CONVERGED,
            buses=BusStates(
                id=ids,
                v_pu=v,
                va_deg=[0.0] * len(ids),
                p_mw=[0.0] * len(ids),
                q_mvar=[0.0] * len(ids),
            ),
        )
        await publish_estimate(admin_nc, est)

    for t in range(5):  # debounce: raised after three violating estimates, once
        await estimate(1.08, t)
    await alarms.wait_for(lambda a: len(a) >= 1)
    await asyncio.sleep(0.3)
    assert [(a.id, a.state) for a in alarms.items] == [("voltage_high:bus_5", AlarmState.RAISED)]
    assert alarms.items[0].kind is AlarmKind.VOLTAGE_HIGH

    ack = subjects.ALARM_ACK.format(grid=GRID)
    unknown = decode(
        (
            await admin_nc.request(ack, encode(AckRequest(alarm_id="nope", user="op")), timeout=5)
        ).data,
        Reply,
    )
    assert not unknown.ok and "nope" in unknown.error
    garbage = decode((await admin_nc.request(ack, b"{]", timeout=5)).data, Reply)
    assert not garbage.ok and "bad request" in garbage.error
    ok = decode(
        (
            await admin_nc.request(
                ack, encode(AckRequest(alarm_id="voltage_high:bus_5", user="op")), timeout=5
            )
        ).data,
        Reply,
    )
    assert ok.ok
    await alarms.wait_for(lambda a: len(a) >= 2)
    assert alarms.items[1].acknowledged and alarms.items[1].acknowledged_by == "op"

    # a restarted monitoring service remembers the active alarm and does not raise it again
    mon.stop()
    await beats.wait_for(lambda b: bool(b) and b[-1].state == "stopping")
    again = platform(MonitoringService)
    await beats.wait_for(
        lambda b: bool(b) and b[-1].instance == again.instance and b[-1].state == "running"
    )
    for t in range(5, 8):
        await estimate(1.08, t)
    await estimate(1.0, 9)  # back in band: cleared (and, being acknowledged, removed)
    await alarms.wait_for(lambda a: any(x.state is AlarmState.CLEARED for x in a))
    assert [a.state for a in alarms.items] == [
        AlarmState.RAISED,
        AlarmState.RAISED,
        AlarmState.CLEARED,
    ]
    kv = await admin_nc.jetstream().key_value("gp_alarms")
    await asyncio.sleep(0.2)
    assert msgspec.json.decode((await kv.get(GRID)).value or b"", type=list[Alarm]) == []


async def test_switch_command_changes_topology_and_estimates_follow(
    platform: Callable[[type[Service]], Service], admin_nc: Client
) -> None:
    platform(SimulatorService)
    gw = field_gateways(platform)
    se = platform(StateEstimationService)
    states = await collect(admin_nc, subjects.STATE.format(grid=GRID), StateEstimate)
    gw_beats = await collect(admin_nc, subjects.HEARTBEAT.format(service=gw.name), Heartbeat)
    # every RTU link up (the gateway may have tried before the simulator listened)
    await gw_beats.wait_for(
        lambda b: bool(b) and b[-1].info.get("rtus_started") == b[-1].info.get("rtus")
    )
    truths = await collect(admin_nc, subjects.TRUTH.format(grid=GRID), SimTruth)
    beats = await collect(admin_nc, subjects.HEARTBEAT.format(service=se.name), Heartbeat)
    await states.wait_for(lambda s: len(s) >= 3, within_s=20)
    cmd = Command(
        id="c1",
        grid=GRID,
        kind=CommandKind.SWITCH,
        target="sw_4",
        issued_by="test",
        t_ns=time.time_ns(),
        closed=True,
    )
    results = await collect(admin_nc, subjects.COMMAND_RESULT.format(grid=GRID), CommandResult)
    js = admin_nc.jetstream()
    ack = await js.publish(subjects.COMMAND.format(grid=GRID, target="sw_4"), encode(cmd))
    assert ack.stream == "GP_CMD"  # stored for the audit trail before it is carried out
    await results.wait_for(lambda r: {x.executed_by for x in r} >= {"gateway_iec104", "twin"})
    # the twin switched before it reported: every truth after the last one seen now is of
    # the new topology (estimates of earlier instants may still come in under load)
    switched_after = max((t.t_ns for t in truths.items), default=0)
    done = next(x for x in results.items if x.executed_by == "gateway_iec104")
    assert done.ok and done.command_id == "c1", done.error
    # carried to the feeder RTU as a select-before-operate double command over IEC 104; the
    # twin reports what the operation did to the grid
    twin = next(x for x in results.items if x.executed_by == "twin")
    assert twin.command_id == "c1" and twin.change == "every bus energised"
    await beats.wait_for(lambda b: bool(b) and b[-1].counters.get("topology_changes", 0) >= 1)
    n = len(states.items)
    await states.wait_for(lambda s: len(s) >= n + 10)
    truth_at = {t.t_ns: t.buses for t in truths.items}
    later = [s for s in states.items[n:] if s.t_ns in truth_at and s.t_ns > switched_after]
    assert later and max(_v_error(s.buses, truth_at[s.t_ns]) for s in later) < 0.005

    bad = Command(
        id="c2",
        grid=GRID,
        kind=CommandKind.SWITCH,
        target="sw_404",
        issued_by="test",
        t_ns=0,
        closed=True,
    )
    await js.publish(subjects.COMMAND.format(grid=GRID, target="sw_404"), encode(bad))
    await results.wait_for(lambda r: any(x.command_id == "c2" for x in r))
    refused = next(x for x in results.items if x.command_id == "c2")
    assert not refused.ok and "sw_404" in refused.error


async def test_simulator_speed_scales_simulated_time(
    platform: Callable[..., Service], admin_nc: Client
) -> None:
    truths = await collect(admin_nc, subjects.TRUTH.format(grid=GRID), SimTruth)
    platform(SimulatorService, speed=60.0)
    await truths.wait_for(lambda t: len(t) >= 5)
    steps = np.diff([t.t_ns for t in truths.items[:5]]) / 1e9
    np.testing.assert_allclose(steps, 6.0, rtol=1e-6)  # 0.1 s ticks, 60 simulated s per s


async def test_disconnected_pmu_and_rtu_are_marked_missing_and_reconnected(
    platform: Callable[..., Service], admin_nc: Client
) -> None:
    states = await collect(admin_nc, subjects.STATE.format(grid=GRID), StateEstimate)
    platform(SimulatorService)
    gw = field_gateways(platform)
    platform(StateEstimationService)
    gw_beats = await collect(admin_nc, subjects.HEARTBEAT.format(service=gw.name), Heartbeat)
    await states.wait_for(lambda s: len(s) >= 3, within_s=20)

    def down(b: list[Heartbeat]) -> int:  # RTUs whose link is not started
        return int(b[-1].info.get("rtus", 0)) - int(b[-1].info.get("rtus_started", 0))

    await gw_beats.wait_for(lambda b: bool(b) and down(b) == 0)
    k = len(states.items)
    await states.wait_for(lambda s: len(s) >= k + 25)  # every RTU's first cyclic report is in
    full = max(e.n_measurements for e in states.items[-10:])
    for source in ("pmu_bus_6", "rtu_trafo_0_1"):  # their servers go away for 6 s
        req = InjectRequest(kind=InjectionKind.COMM_OUTAGE, source=source, duration_s=6)
        reply = await inject(admin_nc, req)
        assert reply.ok, reply.error
    n = len(states.items)
    # the PMU is listed missing, the RTU's link is down and its values age out
    await gw_beats.wait_for(lambda b: down(b) == 1)
    await states.wait_for(lambda s: sum("pmu_bus_6" in e.missing_sources for e in s[n:]) >= 5)
    await states.wait_for(lambda s: "rtu_trafo_0_1" in s[-1].missing_sources, within_s=10)
    await states.wait_for(lambda s: s[-1].n_measurements < full - 3, within_s=10)
    gone = [e for e in states.items[n:] if "pmu_bus_6" in e.missing_sources]
    assert all(e.status is EstimateStatus.CONVERGED for e in gone)
    assert not any("pmu_bus_6/" in name for e in gone for name in e.residual_sensor)
    # both come back by themselves: the gateways reconnect with back-off
    await gw_beats.wait_for(lambda b: down(b) == 0, within_s=15)
    m = len(states.items)
    await states.wait_for(lambda s: len(s) >= m + 10 and not s[-1].missing_sources, within_s=15)
    await states.wait_for(lambda s: s[-1].n_measurements == full, within_s=10)


async def test_clearing_injections_ends_a_long_comm_outage(
    platform: Callable[..., Service], admin_nc: Client
) -> None:
    platform(SimulatorService)
    gw = platform(Iec104GatewayService)
    beats = await collect(admin_nc, subjects.HEARTBEAT.format(service=gw.name), Heartbeat)

    def down(b: list[Heartbeat]) -> int:
        return int(b[-1].info.get("rtus", 0)) - int(b[-1].info.get("rtus_started", 0))

    await beats.wait_for(lambda b: bool(b) and down(b) == 0, within_s=20)
    req = InjectRequest(kind=InjectionKind.COMM_OUTAGE, source="rtu_trafo_0_1", duration_s=3600)
    assert (await inject(admin_nc, req)).ok
    await beats.wait_for(lambda b: down(b) == 1)
    assert (await inject(admin_nc, InjectRequest(kind=InjectionKind.CLEAR))).ok
    await beats.wait_for(lambda b: down(b) == 0, within_s=10)  # back long before the hour


async def test_field_protocols_meters_over_mqtt_and_der_over_modbus(
    platform: Callable[..., Service], admin_nc: Client
) -> None:
    """The twin's meters publish over MQTT and its inverter answers Modbus; the gateways turn
    both into measurement sets, and a DER setpoint travels to the inverter and back."""
    meas = await collect(admin_nc, subjects.MEAS.format(grid=GRID, source="*"), MeasurementSet)
    results = await collect(admin_nc, subjects.COMMAND_RESULT.format(grid=GRID), CommandResult)
    platform(MqttGatewayService)
    platform(ModbusGatewayService)
    platform(SimulatorService, speed=900.0)  # a 15-minute meter period passes every second
    await meas.wait_for(
        lambda ms: {m.kind for m in ms} >= {DeviceKind.METER, DeviceKind.DER}, within_s=20
    )
    der = next(m for m in meas.items if m.kind is DeviceKind.DER)
    assert der.source == "der_wka_7" and der.measurements[0].mrid == "wka_7"
    await meas.wait_for(lambda ms: any(m.source == "meter_load_r1" for m in ms))
    reading = next(m for m in meas.items if m.source == "meter_load_r1").measurements[0]
    assert reading.mrid == "load_r1" and (reading.p_mw or 0) > 1.0  # a 15 MW residential load
    cmd = Command(
        id="sp1",
        grid=GRID,
        kind=CommandKind.DER_SETPOINT,
        target="wka_7",
        issued_by="test",
        t_ns=time.time_ns(),
        p_mw=0.3,
        q_mvar=0.0,
    )
    await admin_nc.jetstream().publish(
        subjects.COMMAND.format(grid=GRID, target="wka_7"), encode(cmd)
    )
    await results.wait_for(lambda r: any(x.command_id == "sp1" for x in r))
    result = next(x for x in results.items if x.command_id == "sp1")
    assert result.ok and result.executed_by == "gateway_modbus", result.error
    n = len(meas.items)
    await meas.wait_for(
        lambda ms: any(
            m.kind is DeviceKind.DER and (m.measurements[0].p_mw or 0) <= 0.31 for m in ms[n:]
        )
    )
    # at 900x the inverter's clock (simulated time) runs ahead of the wall: readings carry it
    ders = [m for m in meas.items if m.kind is DeviceKind.DER]
    assert ders[-1].t_ns - time.time_ns() > 60e9
    meters = [m.t_ns for m in meas.items if m.kind is DeviceKind.METER]
    assert abs(ders[-1].t_ns - max(meters)) < 3600e9


def renamed_package(name: str) -> distribution.GridPackage:
    """cigre_mv's package under another grid name: a grid no other test publishes."""
    model = grid(GRID)
    pkg = distribution.package(model, default_placement(model))
    return distribution.GridPackage(
        model=msgspec.structs.replace(pkg.model, name=name),
        placement=msgspec.structs.replace(pkg.placement, grid=name),
        devices=msgspec.structs.replace(pkg.devices, grid=name),
    )


def config_for(
    cls: type[Service], grid_name: str, nats_server: EmbeddedNats, credentials: dict[str, str],
    tmp_path: Path,
) -> ServiceConfig:  # fmt: skip
    return ServiceConfig(
        nats_url=nats_server.url, user=cls.name, password=credentials[cls.name], grid=grid_name,
        data_dir=tmp_path, heartbeat_s=0.2, model_wait_s=30.0,
    )  # fmt: skip


async def test_services_started_before_the_model_wait_for_it(
    admin_nc: Client,
    nats_server: EmbeddedNats,
    credentials: dict[str, str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gridpilot")
    late = f"late_{os.getpid()}"
    await bus.ensure_jetstream(admin_nc)
    services = [
        cls(config_for(cls, late, nats_server, credentials, tmp_path))
        for cls in (StateEstimationService, MonitoringService)
    ]
    tasks = [asyncio.create_task(svc.run(install_signals=False)) for svc in services]
    states = await collect(admin_nc, subjects.STATE.format(grid=late), StateEstimate)
    try:
        await asyncio.sleep(1.5)  # as if `gridpilot init` came late
        assert not any(t.done() for t in tasks), [t.exception() for t in tasks if t.done()]
        assert all(svc.state is ServiceState.STARTING for svc in services)
        waiting = [r for r in caplog.records if r.getMessage() == "waiting for the grid model"]
        # one line per service so far, not one per retry (they retry every 0.25-5 s)
        assert sorted(r.name for r in waiting) == [
            "gridpilot.monitoring",
            "gridpilot.state_estimation",
        ]
        assert {(r.grid, r.attempt) for r in waiting} == {(late, 1)}  # type: ignore[attr-defined]
        assert all(0 < r.retry_in_s <= 5 for r in waiting)  # type: ignore[attr-defined]

        await distribution.publish(admin_nc, renamed_package(late))
        deadline = time.monotonic() + 15
        while any(svc.state is not ServiceState.RUNNING for svc in services):
            assert time.monotonic() < deadline, [svc.state for svc in services]
            await asyncio.sleep(0.1)
        pipe = Pipeline(GRID)  # measurements for it: the estimator works
        for k in range(5):
            pipe.twin.step(pipe.t_s + k * 0.1)
            for dev in pipe.placement.devices:
                mset = pipe.twin.measure(dev, late, k)
                await admin_nc.publish(subjects.MEAS.format(grid=late, source=dev.id), encode(mset))
        await states.wait_for(lambda s: len(s) >= 3)
        assert states.items[-1].status is EstimateStatus.CONVERGED
        assert any(r.getMessage() == "the grid model is there" for r in caplog.records)
    finally:
        for svc in services:
            svc.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        await remove_grid(admin_nc, late)


async def test_a_published_but_invalid_model_fails_at_once(
    admin_nc: Client, nats_server: EmbeddedNats, credentials: dict[str, str], tmp_path: Path
) -> None:
    bad = f"bad_{os.getpid()}"
    await bus.ensure_jetstream(admin_nc)
    pkg = renamed_package(bad)
    broken = msgspec.structs.replace(pkg.placement.devices[0], period_s=0.0)
    placement = msgspec.structs.replace(pkg.placement, devices=[broken, *pkg.placement.devices[1:]])
    await distribution.publish(admin_nc, msgspec.structs.replace(pkg, placement=placement))
    try:
        svc = MonitoringService(
            config_for(MonitoringService, bad, nats_server, credentials, tmp_path)
        )
        started = time.monotonic()
        with pytest.raises(ConfigError, match=rf"placement for {bad} has 1 problem.*period_s"):
            await asyncio.wait_for(svc.run(install_signals=False), 10)
        assert time.monotonic() - started < 5  # not the 30 s it would wait for a missing one
        with pytest.raises(ConfigError, match=rf"gridpilot init --grid {bad}"):
            await distribution.wait_for(admin_nc, bad, wait_s=30)
    finally:
        await remove_grid(admin_nc, bad)


async def test_the_wait_for_a_missing_model_is_bounded(admin_nc: Client) -> None:
    await bus.ensure_jetstream(admin_nc)
    started = time.monotonic()
    with pytest.raises(distribution.ModelMissing) as info:
        await distribution.wait_for(admin_nc, "never_published", wait_s=0.6)
    assert 0.6 <= time.monotonic() - started < 3
    message = str(info.value)
    assert "no model for grid 'never_published'" in message
    assert "gridpilot init --grid never_published" in message
    assert "gave up after waiting 0.6 s (GRIDPILOT_MODEL_WAIT_S)" in message


async def test_quick_estimates_run_on_the_event_loop_slow_ones_in_a_thread() -> None:
    """A grid whose last estimate took under INLINE_MS estimates on the event loop (the hop to
    a thread costs more); after a slow one, the next goes to a worker thread."""
    pipe = Pipeline("cigre_mv")
    snaps: list[MeasurementSnapshot] = []
    real = pipe.estimator.estimate

    def capture(snap: MeasurementSnapshot) -> StateEstimate:
        snaps.append(snap)
        return real(snap)

    pipe.estimator.estimate = capture  # type: ignore[method-assign]
    pipe.run(0.6)
    assert len(snaps) >= 5
    loop_thread = threading.get_ident()
    on_loop: list[bool] = []
    slow = {2}  # the third estimate says it took longer than INLINE_MS, the others less

    def estimate(snap: MeasurementSnapshot) -> StateEstimate:
        on_loop.append(threading.get_ident() == loop_thread)
        est = real(snap)
        solve_ms = INLINE_MS + 1 if len(on_loop) - 1 in slow else INLINE_MS / 10
        return msgspec.structs.replace(est, solve_ms=solve_ms)

    published: list[bytes] = []

    async def publish(subject: str, data: bytes, headers: object = None) -> None:
        if subject == subjects.STATE.format(grid="cigre_mv"):  # not its layout
            published.append(data)

    async def put(key: str, data: bytes) -> None:
        pass

    svc = SimpleNamespace(
        counters=Counter(),
        nc=SimpleNamespace(publish=publish, max_payload=1 << 20),
        instance="t",
        log=logging.getLogger("test"),
    )
    runner = GridEstimation(svc, "cigre_mv", info={})  # type: ignore[arg-type]
    runner.estimator = SimpleNamespace(estimate=estimate)  # type: ignore[assignment]
    runner.kv = SimpleNamespace(put=put)
    runner.queue.extend(snaps[:5])
    runner.wake.set()
    task = asyncio.ensure_future(runner.estimate_loop())
    try:
        deadline = time.monotonic() + 10
        while len(published) < 5:
            assert time.monotonic() < deadline and not task.done()
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert on_loop == [False, True, True, False, True]
