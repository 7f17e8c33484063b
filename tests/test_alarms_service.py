"""The monitoring service's alarms on a real nats-server: communication loss, bad data,
conditions, service health, broker outages, the stored table through an outage, the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import urlparse

import msgspec
import pytest
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError

from gridpilot.core import bus, subjects
from gridpilot.core.config import ServiceConfig
from gridpilot.core.errors import BusError
from gridpilot.core.estimates import EstimateWriter
from gridpilot.core.schemas import (
    Alarm,
    AlarmKind,
    AlarmState,
    BadData,
    BusStates,
    Condition,
    DeviceKind,
    EstimateStatus,
    Heartbeat,
    Measurand,
    Measurement,
    MeasurementSet,
    Quality,
    ServiceState,
    Severity,
    StateEstimate,
    encode,
)
from gridpilot.model import distribution
from gridpilot.model.placement import Device, default_placement
from gridpilot.platform.broker import EmbeddedNats
from gridpilot.platform.ops import health
from gridpilot.platform.permissions import ADMIN, SIMULATOR, load_credentials
from gridpilot.services.monitoring import baddata
from gridpilot.services.monitoring.comm import allowance_s
from gridpilot.services.monitoring.health import STALE_S
from gridpilot.services.monitoring.limits import NOT_OBSERVABLE_AFTER_S
from gridpilot.services.monitoring.service import MonitoringService
from gridpilot.services.monitoring.store import AlarmStore
from tests.conftest import ConnectAs
from tests.estimates import publish_estimate
from tests.pipeline import grid

GRID = "cigre_mv"


class Alarms:
    """Every alarm change published for a grid, in order."""

    def __init__(self) -> None:
        self.items: list[Alarm] = []
        self.event = asyncio.Event()

    async def on_msg(self, msg) -> None:  # type: ignore[no-untyped-def]
        self.items.append(msgspec.json.decode(msg.data, type=Alarm))
        self.event.set()

    def of(self, alarm_id: str) -> list[Alarm]:
        return [a for a in self.items if a.id == alarm_id]

    async def wait_for(self, pred: Callable[[list[Alarm]], bool], within_s: float = 15.0) -> None:
        deadline = time.monotonic() + within_s
        while not pred(self.items):
            self.event.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                got = [(a.id, a.state.value) for a in self.items]
                raise TimeoutError(f"alarm condition not met; got {got}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.event.wait(), remaining)


async def alarms_of(nc: Client, grid_name: str = GRID) -> Alarms:
    alarms = Alarms()
    await nc.subscribe(subjects.ALARM.format(grid=grid_name), cb=alarms.on_msg)
    return alarms


async def until(pred: Callable[[], bool], within_s: float = 15.0) -> None:
    deadline = time.monotonic() + within_s
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def start_monitoring(
    url: str, password: str, data_dir: Path
) -> tuple[MonitoringService, asyncio.Task[None]]:
    config = ServiceConfig(
        nats_url=url,
        user="monitoring",
        password=password,
        grid=GRID,
        data_dir=data_dir,
        heartbeat_s=0.2,
    )
    svc = MonitoringService(config)
    return svc, asyncio.create_task(svc.run(install_signals=False))


async def stop(svc: MonitoringService, task: asyncio.Task[None]) -> None:
    svc.stop()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(task, 10)
    # a stop cut short must not leave its subscriptions behind to answer the next test
    if hasattr(svc, "nc") and not svc.nc.is_closed:
        await svc.nc.close()


@pytest.fixture
async def monitoring(
    admin_nc: Client, nats_server: EmbeddedNats, credentials: dict[str, str], tmp_path: Path
) -> AsyncIterator[MonitoringService]:
    """A running monitoring service for GRID with an empty alarm table."""
    model = grid(GRID)
    await distribution.publish(admin_nc, distribution.package(model, default_placement(model)))
    kv = await admin_nc.jetstream().key_value("gp_alarms")
    with contextlib.suppress(KeyNotFoundError):
        await kv.purge(GRID)
    svc, task = start_monitoring(nats_server.url, credentials["monitoring"], tmp_path)
    await until(lambda: svc.state is ServiceState.RUNNING)
    yield svc
    await stop(svc, task)


def _device(kind: DeviceKind) -> Device:
    return next(d for d in default_placement(grid(GRID)).devices if d.kind is kind)


def report(device: Device, seq: int, quality: int = 0) -> MeasurementSet:
    t_ns = time.time_ns()
    ms = [
        Measurement(
            mrid=p.mrid,
            measurand=p.measurand,
            terminal=p.terminal,
            t_ns=t_ns,
            v_pu=1.0 if p.measurand is Measurand.VOLTAGE else None,
            p_mw=None if p.measurand is Measurand.VOLTAGE else 0.1,
            q_mvar=None if p.measurand is Measurand.VOLTAGE else 0.0,
            quality=quality,
            source=device.id,
        )
        for p in device.points
    ]
    return MeasurementSet(
        grid=GRID, source=device.id, kind=device.kind, t_ns=t_ns, seq=seq, measurements=ms
    )


async def stream(nc: Client, device: Device, n: int, quality: int = 0) -> float:
    """Publish ``n`` reports on the device's period, on a fixed schedule; the time of the last
    (monotonic)."""
    loop = asyncio.get_running_loop()
    due = loop.time()
    for seq in range(n):
        await nc.publish(
            subjects.MEAS.format(grid=GRID, source=device.id), encode(report(device, seq, quality))
        )
        due += device.period_s
        await asyncio.sleep(max(0.0, due - loop.time()))
    await nc.flush()
    return time.monotonic() - device.period_s


async def test_pmu_silence_raises_comm_loss_within_three_periods_and_data_clears_it(
    monitoring: MonitoringService, admin_nc: Client
) -> None:
    alarms = await alarms_of(admin_nc)
    pmu = _device(DeviceKind.PMU)
    last = await stream(admin_nc, pmu, 20)
    alarm_id = f"comm_loss:{pmu.id}"
    await alarms.wait_for(lambda a: bool(a))
    raised_at = time.monotonic()
    [alarm] = alarms.items
    assert alarm.id == alarm_id and alarm.state is AlarmState.RAISED
    assert alarm.kind is AlarmKind.COMM_LOSS and alarm.mrid == pmu.id
    assert pmu.points[0].mrid in alarm.message and "PMU" in alarm.message
    allowance = allowance_s(pmu, 1.0)
    assert alarm.limit == pytest.approx(allowance)
    assert alarm.value >= allowance  # silent for three periods, not fewer
    print(
        f"comm_loss raised {raised_at - last:.3f} s after the last report (allowance {allowance} s)"
    )
    await stream(admin_nc, pmu, 3)
    await alarms.wait_for(lambda a: len(a) >= 2)
    assert alarms.items[1].id == alarm_id and alarms.items[1].state is AlarmState.CLEARED
    assert f"{pmu.id} reports again after" in alarms.items[1].message
    assert pmu.id not in monitoring.comm.lost


async def test_a_device_reporting_only_invalid_values_raises_comm_loss(
    monitoring: MonitoringService, admin_nc: Client
) -> None:
    alarms = await alarms_of(admin_nc)
    pmu = _device(DeviceKind.PMU)
    await stream(admin_nc, pmu, 3)
    task = asyncio.create_task(stream(admin_nc, pmu, 40, quality=int(Quality.INVALID)))
    try:
        await alarms.wait_for(lambda a: bool(a))
    finally:
        task.cancel()
    assert alarms.items[0].id == f"comm_loss:{pmu.id}"
    assert "reports only invalid values" in alarms.items[0].message


async def test_on_a_hub_without_measurements_the_estimates_missing_sources_tell(
    monitoring: MonitoringService, admin_nc: Client
) -> None:
    """A hub gets no measurement messages (they reach its stream by sourcing): a device the
    estimates list missing for its allowance is lost, and back once they no longer do."""
    alarms = await alarms_of(admin_nc)
    pmu = _device(DeviceKind.PMU)
    writer = EstimateWriter(GRID)  # the layout once, as the estimator writes it

    async def estimates(n: int, missing: list[str]) -> None:
        for _ in range(n):
            est = msgspec.structs.replace(_estimate(), missing_sources=missing)
            await publish_estimate(admin_nc, est, writer=writer)
            await asyncio.sleep(0.1)

    await estimates(5, [])
    task = asyncio.create_task(estimates(100, [pmu.id]))
    try:
        await alarms.wait_for(lambda a: bool(a))
    finally:
        task.cancel()
    assert [(a.id, a.state) for a in alarms.items] == [(f"comm_loss:{pmu.id}", AlarmState.RAISED)]
    await estimates(2, [])
    await alarms.wait_for(lambda a: len(a) >= 2)
    assert alarms.items[1].state is AlarmState.CLEARED


def _estimate(
    bad: list[BadData] | None = None, status: EstimateStatus = EstimateStatus.CONVERGED, n: int = 40
) -> StateEstimate:
    ids = [b.id for b in grid(GRID).buses]
    converged = status is EstimateStatus.CONVERGED
    return StateEstimate(
        grid=GRID,
        t_ns=time.time_ns(),
        status=status,
        n_measurements=n,
        bad_data=bad or [],
        buses=BusStates(
            id=ids,
            v_pu=[1.0] * len(ids),
            va_deg=[0.0] * len(ids),
            p_mw=[0.0] * len(ids),
            q_mvar=[0.0] * len(ids),
        )
        if converged
        else None,
    )


class Beats:
    """Monitoring's own heartbeats: its counters say how much it has handled."""

    def __init__(self) -> None:
        self.last: Heartbeat | None = None

    async def on_msg(self, msg) -> None:  # type: ignore[no-untyped-def]
        self.last = msgspec.json.decode(msg.data, type=Heartbeat)

    def count(self, name: str) -> int:
        return 0 if self.last is None else self.last.counters.get(name, 0)


async def beats_of(nc: Client) -> Beats:
    beats = Beats()
    await nc.subscribe(subjects.HEARTBEAT.format(service="monitoring"), cb=beats.on_msg)
    return beats


async def test_bad_data_raised_after_consecutive_estimates_and_cleared_after_n_clean(
    monitoring: MonitoringService, admin_nc: Client
) -> None:
    alarms = await alarms_of(admin_nc)
    beats = await beats_of(admin_nc)
    writer = EstimateWriter(GRID)  # the layout once, as the estimator writes it
    bad = BadData(
        sensor="rtu_trafo_0/line_1_2/power/from",
        mrid="line_1_2",
        source="rtu_trafo_0",
        measurand=Measurand.POWER,
        r_norm=37.5,
    )
    for _ in range(baddata.RAISE_AFTER):
        await publish_estimate(admin_nc, _estimate([bad]), writer=writer)
    await alarms.wait_for(lambda a: bool(a))
    [alarm] = alarms.items
    assert alarm.id == "bad_data:rtu_trafo_0" and alarm.value == 37.5, alarms.items
    assert "line_1_2" in alarm.message and "r_norm 37.5" in alarm.message
    sent = baddata.RAISE_AFTER
    for _ in range(baddata.CLEAR_AFTER - 1):
        await publish_estimate(admin_nc, _estimate(), writer=writer)
    sent += baddata.CLEAR_AFTER - 1
    await until(lambda: beats.count("estimates_checked") >= sent)
    assert len(alarms.items) == 1  # one clean estimate short: still raised
    await publish_estimate(admin_nc, _estimate(), writer=writer)
    await alarms.wait_for(lambda a: len(a) >= 2)
    assert alarms.items[1].id == alarm.id and alarms.items[1].state is AlarmState.CLEARED


async def test_start_up_estimates_without_data_raise_no_alarm(
    monitoring: MonitoringService, admin_nc: Client
) -> None:
    """The estimator runs before the first data arrives: those failed estimates, and the
    first good one, must not greet the operator with not_observable."""
    alarms = await alarms_of(admin_nc)
    beats = await beats_of(admin_nc)
    writer = EstimateWriter(GRID)  # the layout once, as the estimator writes it
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = 0
    while loop.time() - start < NOT_OBSERVABLE_AFTER_S + 1.0:
        failed = _estimate(status=EstimateStatus.NOT_OBSERVABLE, n=min(sent, 20))
        await publish_estimate(admin_nc, failed, writer=writer)
        sent += 1
        await asyncio.sleep(0.1)
    await publish_estimate(admin_nc, _estimate(), writer=writer)
    sent += 1
    await until(lambda: beats.count("estimates_checked") >= sent)
    assert alarms.items == []


async def test_conditions_raise_keep_and_clear_alarms(
    monitoring: MonitoringService, admin_nc: Client, connect_as: ConnectAs
) -> None:
    alarms = await alarms_of(admin_nc)
    beats = await beats_of(admin_nc)
    sim = await connect_as(SIMULATOR)  # its own right to report conditions
    subject = subjects.CONDITION.format(grid=GRID, source="simulator")

    def condition(active: bool) -> bytes:
        return encode(
            Condition(
                grid=GRID,
                kind=AlarmKind.TWIN_DIVERGED,
                mrid=GRID,
                active=active,
                t_ns=time.time_ns(),
                severity=Severity.CRITICAL,
                message="power flow did not converge after switching sw_6",
                reporter="simulator",
            )
        )

    await bus.publish_checked(sim, subject, condition(True))
    await alarms.wait_for(lambda a: bool(a))
    assert alarms.items[0].id == f"twin_diverged:{GRID}"
    assert alarms.items[0].severity is Severity.CRITICAL and "sw_6" in alarms.items[0].message
    await bus.publish_checked(sim, subject, condition(True))  # the 10 s repeat: no change
    await until(lambda: beats.count("conditions") >= 2)
    assert len(alarms.items) == 1
    await bus.publish_checked(sim, subject, condition(False))
    await alarms.wait_for(lambda a: len(a) >= 2)
    assert alarms.items[1].state is AlarmState.CLEARED


async def test_a_service_whose_heartbeats_stop_raises_service_down(
    monitoring: MonitoringService, admin_nc: Client
) -> None:
    alarms = await alarms_of(admin_nc)

    async def beat(n: int) -> None:
        for _ in range(n):
            hb = Heartbeat(
                service="historian",
                grid=GRID,
                instance="abc",
                pid=4242,
                state=ServiceState.RUNNING,
                t_ns=time.time_ns(),
                uptime_s=1.0,
            )
            await admin_nc.publish(subjects.HEARTBEAT.format(service="historian"), encode(hb))
            await asyncio.sleep(0.2)

    await beat(3)
    await alarms.wait_for(lambda a: bool(a), within_s=STALE_S + 10)
    [down] = alarms.items
    assert down.id == "service_down:historian" and down.severity is Severity.CRITICAL
    assert "4242" in down.message
    await beat(1)
    await alarms.wait_for(lambda a: len(a) >= 2)
    assert alarms.items[1].state is AlarmState.CLEARED


async def test_a_restarted_monitoring_keeps_its_table_and_clears_what_it_adopted(
    admin_nc: Client, nats_server: EmbeddedNats, credentials: dict[str, str], tmp_path: Path
) -> None:
    """The stored table is the start: a cleared alarm waits for its acknowledgement, a lost
    device that reports clears its alarm, one no longer in the placement is cleared at once."""
    model = grid(GRID)
    await distribution.publish(admin_nc, distribution.package(model, default_placement(model)))
    pmu = _device(DeviceKind.PMU)

    def stored(kind: AlarmKind, mrid: str, state: AlarmState) -> Alarm:
        return Alarm(
            id=f"{kind}:{mrid}", grid=GRID, kind=kind, mrid=mrid, state=state,
            severity=Severity.WARNING, value=1.0, limit=0.3, raised_t_ns=1, t_ns=2,
        )  # fmt: skip

    table = [
        stored(AlarmKind.VOLTAGE_HIGH, "bus_5", AlarmState.CLEARED),
        stored(AlarmKind.COMM_LOSS, pmu.id, AlarmState.RAISED),
        stored(AlarmKind.COMM_LOSS, "pmu_removed", AlarmState.RAISED),
    ]
    kv = await admin_nc.jetstream().key_value("gp_alarms")
    await kv.put(GRID, msgspec.json.encode(table))
    alarms = await alarms_of(admin_nc)
    svc, task = start_monitoring(nats_server.url, credentials["monitoring"], tmp_path)
    try:
        await alarms.wait_for(lambda _: bool(alarms.of("comm_loss:pmu_removed")))
        [gone] = alarms.of("comm_loss:pmu_removed")
        assert gone.state is AlarmState.CLEARED and "no longer in the placement" in gone.message
        await until(lambda: svc.state is ServiceState.RUNNING)
        await stream(admin_nc, pmu, 2)
        await alarms.wait_for(lambda _: bool(alarms.of(f"comm_loss:{pmu.id}")))
        assert alarms.of(f"comm_loss:{pmu.id}")[0].state is AlarmState.CLEARED
        deadline = time.monotonic() + 10
        while True:
            entry = await kv.get(GRID)
            now = {a.id: a.state for a in msgspec.json.decode(entry.value or b"", type=list[Alarm])}
            if now == {
                "voltage_high:bus_5": AlarmState.CLEARED,
                f"comm_loss:{pmu.id}": AlarmState.CLEARED,
                "comm_loss:pmu_removed": AlarmState.CLEARED,
            }:
                break
            assert time.monotonic() < deadline, now
            await asyncio.sleep(0.05)
    finally:
        await stop(svc, task)


async def test_cli_lists_active_and_unacknowledged_alarms(
    admin_nc: Client, nats_server: EmbeddedNats
) -> None:
    typed = "simbench:1-MV-semiurb--0-sw"  # stored under its bus name 1_mv_semiurb__0_sw
    now = time.time_ns()
    table = [
        Alarm(
            id="comm_loss:pmu_bus_12",
            grid="1_mv_semiurb__0_sw",
            kind=AlarmKind.COMM_LOSS,
            mrid="pmu_bus_12",
            state=AlarmState.RAISED,
            severity=Severity.WARNING,
            value=0.3,
            limit=0.3,
            raised_t_ns=now - 90 * 10**9,
            t_ns=now,
            message="PMU pmu_bus_12 lost",
        ),
        Alarm(
            id="broker_outage:nats",
            grid="1_mv_semiurb__0_sw",
            kind=AlarmKind.BROKER_OUTAGE,
            mrid="nats",
            state=AlarmState.CLEARED,
            severity=Severity.CRITICAL,
            value=12.0,
            limit=0.0,
            raised_t_ns=now - 3600 * 10**9,
            t_ns=now,
            message="the message broker was unreachable for 12.0 s",
        ),
    ]
    kv = await admin_nc.jetstream().key_value("gp_alarms")
    await kv.put("1_mv_semiurb__0_sw", msgspec.json.encode(table))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}

    async def cli(*args: str, data_dir: Path = nats_server.data_dir) -> tuple[int, str, str]:
        argv = [sys.executable, "-m", "gridpilot", "alarms", "--data-dir", str(data_dir), *args]
        done = await asyncio.to_thread(
            subprocess.run, argv, capture_output=True, text=True, env=env, timeout=60
        )
        return done.returncode, done.stdout, done.stderr

    code, out, err = await cli("--grid", typed)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:6] == ["kind", "equipment", "severity", "state", "age", "ack"]
    first, second = lines[1].split(), lines[2].split()
    assert first[:4] + first[5:6] == ["comm_loss", "pmu_bus_12", "warning", "raised", "no"]
    assert first[4].endswith("s") and 90 <= int(first[4][:-1]) < 120  # the CLI takes a while
    assert second[:6] == ["broker_outage", "nats", "critical", "cleared", "60m", "no"]
    code, out, err = await cli("--grid", typed, "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [(r["kind"], r["equipment"], r["state"]) for r in rows] == [
        ("comm_loss", "pmu_bus_12", "raised"),
        ("broker_outage", "nats", "cleared"),
    ]
    assert rows[0]["age_s"] >= 90 and rows[0]["acknowledged"] is False
    code, out, _ = await cli("--grid", "no_such_grid_yet")
    assert code == 0 and "no active or unacknowledged alarms" in out
    code, _, err = await cli(data_dir=Path("/nonexistent/gp"))
    assert code == 2 and "Traceback" not in err
    assert err.startswith("gridpilot: error: no GridPilot platform is running")


# -- the broker going away: its own server, stopped and started again on the same port -----


async def _admin(url: str, password: str) -> Client:
    return await bus.connect(url, user=ADMIN, password=password, name="t-admin", startup_timeout=10)


async def test_the_stored_table_survives_a_read_during_a_broker_outage(tmp_path: Path) -> None:
    """A read that fails for an outage is retried, never taken for "no table yet" (which
    would overwrite the stored table and lose cleared-but-unacknowledged alarms)."""
    broker = EmbeddedNats(data_dir=tmp_path, port=0, monitor_port=0, mqtt_port=0).start()
    port = urlparse(broker.url).port
    assert port is not None
    creds = load_credentials(tmp_path)
    restarted: EmbeddedNats | None = None
    admin = await _admin(broker.url, creds[ADMIN])
    try:
        await bus.ensure_jetstream(admin)
        stored = [
            Alarm(
                id="voltage_high:bus_5",
                grid=GRID,
                kind=AlarmKind.VOLTAGE_HIGH,
                mrid="bus_5",
                state=AlarmState.CLEARED,  # cleared, waiting for its acknowledgement
                severity=Severity.WARNING,
                value=1.06,
                limit=1.05,
                raised_t_ns=1,
                t_ns=2,
            )
        ]
        kv = await admin.jetstream().key_value("gp_alarms")
        await kv.put(GRID, msgspec.json.encode(stored))
        import logging

        store = AlarmStore(kv, GRID, log=logging.getLogger("test"))
        broker.stop()
        await until(lambda: not admin.is_connected)
        loading = asyncio.create_task(store.load())
        await until(lambda: store.read_retries >= 2)
        assert not loading.done()
        # the health probe, too, calls an outage an outage, not "no heartbeat yet"
        with pytest.raises(BusError, match="cannot read the heartbeats of monitoring"):
            await health(admin, "monitoring", max_age_s=5)
        restarted = EmbeddedNats(data_dir=tmp_path, port=port, monitor_port=0, mqtt_port=0)
        await asyncio.to_thread(restarted.start)
        assert await asyncio.wait_for(loading, 30) == stored
    finally:
        await admin.close()
        if restarted is not None:
            restarted.stop()
        broker.stop()


async def test_broker_outage_raises_an_alarm_and_keeps_the_table(tmp_path: Path) -> None:
    broker = EmbeddedNats(data_dir=tmp_path, port=0, monitor_port=0, mqtt_port=0).start()
    port = urlparse(broker.url).port
    assert port is not None
    creds = load_credentials(tmp_path)
    restarted: EmbeddedNats | None = None
    admin = await _admin(broker.url, creds[ADMIN])
    svc, task = None, None
    try:
        await bus.ensure_jetstream(admin)
        model = grid(GRID)
        await distribution.publish(admin, distribution.package(model, default_placement(model)))
        svc, task = start_monitoring(broker.url, creds["monitoring"], tmp_path)
        await until(lambda: svc.state is ServiceState.RUNNING)
        alarms = await alarms_of(admin)
        condition = Condition(
            grid=GRID, kind=AlarmKind.DE_ENERGISED, mrid="bus_12", active=True, t_ns=1,
            message="bus_12 has no source",
        )  # fmt: skip
        subject = subjects.CONDITION.format(grid=GRID, source="simulator")
        await admin.publish(subject, encode(condition))
        await admin.publish(subject, encode(msgspec.structs.replace(condition, active=False)))
        await alarms.wait_for(lambda a: len(a) >= 2)  # raised and cleared, not acknowledged
        kv = await admin.jetstream().key_value("gp_alarms")

        async def stored_ids() -> set[str]:
            entry = await kv.get(GRID)
            return {a.id for a in msgspec.json.decode(entry.value or b"[]", type=list[Alarm])}

        deadline = time.monotonic() + 10
        while await stored_ids() != {"de_energised:bus_12"}:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)

        broker.stop()
        await until(lambda: not svc.nc.is_connected)
        await asyncio.sleep(1.0)  # an outage of a second or more
        restarted = EmbeddedNats(data_dir=tmp_path, port=port, monitor_port=0, mqtt_port=0)
        await asyncio.to_thread(restarted.start)
        # Every alarm change is in stream GP_ALARM (our own subscription may come back later
        # than monitoring's connection): read them from there.
        events: list[Alarm] = []
        sub = await admin.jetstream().subscribe(
            subjects.ALARM.format(grid=GRID), ordered_consumer=True
        )
        deadline = time.monotonic() + 30
        while len([a for a in events if a.kind is AlarmKind.BROKER_OUTAGE]) < 2:
            assert time.monotonic() < deadline, [(a.id, a.state) for a in events]
            with contextlib.suppress(TimeoutError):
                msg = await sub.next_msg(timeout=1.0)
                events.append(msgspec.json.decode(msg.data, type=Alarm))
        raised, cleared = [a for a in events if a.kind is AlarmKind.BROKER_OUTAGE]
        assert raised.state is AlarmState.RAISED and cleared.state is AlarmState.CLEARED
        assert raised.id == "broker_outage:nats" and raised.severity is Severity.CRITICAL
        assert raised.value >= 1.0 and "unreachable for" in raised.message
        print(f"broker outage alarm: {raised.message}")
        kv = await admin.jetstream().key_value("gp_alarms")
        deadline = time.monotonic() + 10
        while await stored_ids() != {"de_energised:bus_12", "broker_outage:nats"}:
            assert time.monotonic() < deadline, await stored_ids()
            await asyncio.sleep(0.1)
        assert not [a for a in events if a.kind is AlarmKind.COMM_LOSS]  # no flood
    finally:
        if svc is not None and task is not None:
            await stop(svc, task)
        await admin.close()
        if restarted is not None:
            restarted.stop()
        broker.stop()
