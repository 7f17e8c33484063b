"""Cross-talk is refused: a gateway pointed at a port where another device answers (another
platform's, with another ID code, common address or serial number) refuses it, counts it and
raises a comm_loss condition saying what it found; once the right device answers, it takes
its data and clears the condition. Real TCP peers (the simulator's device servers), a real
nats-server, the gateway services in this process with their own credentials."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client

from gridpilot.core import operate, subjects
from gridpilot.core.config import ServiceConfig
from gridpilot.core.schemas import AlarmKind, Command, CommandKind, Condition, MeasurementSet
from gridpilot.core.service import Service
from gridpilot.gateways.c37118 import ConnectionState, PdcClient, WrongDevice
from gridpilot.gateways.c37118.service import C37118GatewayService
from gridpilot.gateways.iec104 import FloatValueUpdate, Iec104Master, StationVerified
from gridpilot.gateways.iec104 import WrongDevice as RtuWrongDevice
from gridpilot.gateways.iec104.service import Iec104GatewayService
from gridpilot.gateways.modbus import DerPoller, DerReading, DerUnavailable, FailureKind
from gridpilot.gateways.modbus.service import ModbusGatewayService
from gridpilot.model import distribution
from gridpilot.model.devices import Der, Pmu, Rtu, default_registry
from gridpilot.model.grid import GridModel
from gridpilot.model.placement import Placement, default_placement
from gridpilot.platform.broker import EmbeddedNats
from gridpilot.protocols.c37118 import DataFrame, PhasorChannel, PhasorKind, PmuConfig, PmuData
from gridpilot.protocols.iec104 import DoublePointState
from gridpilot.protocols.sunspec import InverterStatus
from gridpilot.simulator.der_modbus import InverterSpec, VirtualDerServer
from gridpilot.simulator.pmu_server import PmuServer
from gridpilot.simulator.rtu_server import PointType, RtuServer
from tests.modbus.conftest import FAST
from tests.pipeline import grid
from tests.test_services import free_port

GRID = "cigre_mv"
MINE, THEIRS = "aaaaaa", "bbbbbb"  # the sites of this platform and of another
FAST_RECONNECT = {"reconnect_min_s": 0.05, "reconnect_max_s": 0.2}


# -- the devices, as the simulator serves them ----------------------------------------------


def pmu_server(pmu: Pmu, port: int, *, idcode: int | None = None, station: str = "") -> PmuServer:
    config = PmuConfig(
        station=station or pmu.station,
        idcode=pmu.idcode if idcode is None else idcode,
        phasors=tuple(
            PhasorChannel(
                name=c.channel, kind=PhasorKind.VOLTAGE if c.quantity == "v" else PhasorKind.CURRENT
            )
            for c in pmu.channels
        ),
    )
    values = tuple(11_547.0 + 0j if c.quantity == "v" else 10.0 + 1j for c in pmu.channels)
    return PmuServer(
        stations=[config],
        idcode=config.idcode,
        sample=lambda _t: [PmuData(freq_hz=50.0, phasors=values)],
        data_rate=pmu.data_rate,
        port=port,
    )


def rtu_server(rtu: Rtu, port: int, *, common_address: int | None = None) -> RtuServer:
    commands = {c.ioa for c in rtu.commands}

    def read(ioa: int) -> float | DoublePointState:
        return DoublePointState.ON if ioa in commands else 1.0

    return RtuServer(
        common_address=rtu.common_address if common_address is None else common_address,
        points={p.ioa: PointType.FLOAT for p in rtu.points}
        | {ioa: PointType.DOUBLE for ioa in commands},
        read=read,
        port=port,
        cyclic_s=0.2,
    )


def der_server(der: Der, port: int, *, serial: str = "") -> VirtualDerServer:
    return VirtualDerServer(
        units={der.unit: InverterSpec(rated_mw=1.0, serial=serial or der.serial)},
        state=lambda _unit: (0.5, 0.1, 1.0, InverterStatus.MPPT),
        on_setpoint=lambda *_: None,
        port=port,
    )


# -- the gateways' clients alone ------------------------------------------------------------


async def test_a_pdc_refuses_a_pmu_with_another_id_code_or_station() -> None:
    registry = default_registry(*_model_and_placement(), site=MINE)
    pmu = registry.pmu[0]
    port = free_port()
    for wrong, found in (
        (pmu_server(pmu, port, idcode=pmu.idcode + 1), f"ID code {pmu.idcode + 1}"),
        (pmu_server(pmu, port, station=f"{THEIRS}-bus_1"), f"ID code {pmu.idcode}"),
    ):
        client = PdcClient(
            host="127.0.0.1", port=port, idcode=pmu.idcode, station=pmu.station, **FAST_RECONNECT
        )
        async with wrong, client:
            seen = await _until(client, lambda e: isinstance(e, WrongDevice))
            await _until(client, lambda e: getattr(e, "state", None) is ConnectionState.CONNECTING)
            refusal = seen[-1]
            assert isinstance(refusal, WrongDevice)
            assert refusal.found.startswith(found)
            assert refusal.message == (
                f"wrong device at 127.0.0.1:{port}: expected ID code {pmu.idcode} station "
                f"{pmu.station!r}, found {refusal.found}"
            )
            assert client.stats.wrong_device >= 1 and client.config is None
            assert not any(isinstance(e, DataFrame) for e in seen)
            assert wrong.stats.frames_sent == 0  # transmission was never turned on
    right = pmu_server(pmu, port)
    client = PdcClient(
        host="127.0.0.1", port=port, idcode=pmu.idcode, station=pmu.station, **FAST_RECONNECT
    )
    async with right, client:
        await _until(client, lambda e: isinstance(e, DataFrame))
    assert client.stats.wrong_device == 0


async def test_an_iec104_master_refuses_an_rtu_with_another_common_address() -> None:
    registry = default_registry(*_model_and_placement(), site=MINE)
    rtu = next(r for r in registry.rtu if r.points)
    port = free_port()
    master = Iec104Master(
        host="127.0.0.1", port=port, common_address=rtu.common_address, **FAST_RECONNECT
    )
    async with rtu_server(rtu, port, common_address=rtu.common_address + 1), master:
        seen = await _until(master, lambda e: isinstance(e, RtuWrongDevice))
        # refused again after the back-off: a count, no values of the wrong station
        while master.stats.wrong_device < 2:
            seen += await _until(master, lambda e: isinstance(e, RtuWrongDevice))
    refusal = seen[-1]
    assert isinstance(refusal, RtuWrongDevice)
    assert refusal.message == (
        f"wrong device at 127.0.0.1:{port}: expected common address {rtu.common_address}, "
        f"found common address {rtu.common_address + 1}"
    )
    assert not any(isinstance(e, FloatValueUpdate | StationVerified) for e in seen)
    master = Iec104Master(
        host="127.0.0.1", port=port, common_address=rtu.common_address, **FAST_RECONNECT
    )
    async with rtu_server(rtu, port), master:
        seen = await _until(master, lambda e: isinstance(e, FloatValueUpdate))
    assert any(isinstance(e, StationVerified) for e in seen)
    assert master.stats.wrong_device == 0


async def test_a_modbus_poller_refuses_an_inverter_with_another_serial() -> None:
    registry = default_registry(*_model_and_placement(), site=MINE)
    der = registry.der[0]
    port = free_port()
    setpoints: list[object] = []
    wrong = der_server(der, port, serial=f"{THEIRS}-der_wka_7")
    wrong.on_setpoint = lambda *args: setpoints.append(args)
    poller = DerPoller(
        host="127.0.0.1", port=port, units=[der.unit], serials={der.unit: der.serial}, **FAST
    )
    events: list[Any] = []
    async with wrong, poller:
        reading = asyncio.create_task(_collect(poller, events))
        # refused, hung up, called again after the back-off, refused again
        await _wait(lambda: poller.counters["wrong_device_links"] >= 2, "not refused twice")
        result = await poller.write_setpoint(der.unit, p_limit_mw=0.1, q_mvar=None)
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)
    [refusal] = events
    assert isinstance(refusal, DerUnavailable) and refusal.kind is FailureKind.WRONG_DEVICE
    assert refusal.error == (
        f"wrong device at 127.0.0.1:{port}: expected unit 1 serial {der.serial!r}, "
        f"found unit 1 serial '{THEIRS}-der_wka_7'"
    )
    assert not result.ok and result.failure is FailureKind.WRONG_DEVICE
    assert setpoints == [] and wrong.counters["setpoints"] == 0  # nothing written to it
    poller = DerPoller(
        host="127.0.0.1", port=port, units=[der.unit], serials={der.unit: der.serial}, **FAST
    )
    async with der_server(der, port), poller:
        [reading] = await _next_events(poller, 1)
    assert isinstance(reading, DerReading) and reading.state.serial == der.serial


# -- the gateway services: counted, a condition raised and cleared --------------------------


@dataclass
class Case:
    gateway: type[Service]
    device: Callable[[Any], Any]  # the registry's device of that kind
    wrong: Callable[[Any, int], Any]  # another device on that port
    right: Callable[[Any, int], Any]
    found: Callable[[Any], str]


CASES = {
    "c37118": Case(
        C37118GatewayService,
        lambda r: r.pmu[0],
        lambda d, port: pmu_server(d, port, idcode=d.idcode + 1, station=f"{THEIRS}-bus_1"),
        pmu_server,
        lambda d: (
            f"expected ID code {d.idcode} station {d.station!r}, found ID code "
            f"{d.idcode + 1} station '{THEIRS}-bus_1'"
        ),
    ),
    "iec104": Case(
        Iec104GatewayService,
        lambda r: next(x for x in r.rtu if x.points),
        lambda d, port: rtu_server(d, port, common_address=d.common_address + 1),
        rtu_server,
        lambda d: (
            f"expected common address {d.common_address}, found common address "
            f"{d.common_address + 1}"
        ),
    ),
    "modbus": Case(
        ModbusGatewayService,
        lambda r: r.der[0],
        lambda d, port: der_server(d, port, serial=f"{THEIRS}-{d.device}"),
        der_server,
        lambda d: (
            f"expected unit {d.unit} serial {d.serial!r}, found unit {d.unit} serial "
            f"'{THEIRS}-{d.device}'"
        ),
    ),
}


@pytest.fixture
async def gateway(
    admin_nc: Client, nats_server: EmbeddedNats, credentials: dict[str, str], tmp_path: Path
) -> AsyncIterator[Callable[[type[Service]], Service]]:
    running: list[tuple[Service, asyncio.Task[None]]] = []

    def start(cls: type[Service]) -> Service:
        config = ServiceConfig(
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
    for svc, task in running:
        svc.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)


@pytest.mark.parametrize("protocol", list(CASES))
async def test_a_gateway_raises_a_condition_for_the_wrong_device_and_clears_it(
    protocol: str, admin_nc: Client, gateway: Callable[[type[Service]], Service]
) -> None:
    case = CASES[protocol]
    placement, model = _model_and_placement()
    registry = default_registry(placement, model, site=MINE)
    port = free_port()
    device = msgspec.structs.replace(case.device(registry), port=port)
    only = {"pmu": [], "rtu": [], "der": []} | {
        {Pmu: "pmu", Rtu: "rtu", Der: "der"}[type(device)]: [device]
    }
    registry = msgspec.structs.replace(registry, **only)
    pkg = distribution.GridPackage(model=model, placement=placement, devices=registry)
    await distribution.publish(admin_nc, pkg)
    conditions: list[Condition] = []
    measured: list[MeasurementSet] = []
    name = case.gateway.name
    await admin_nc.subscribe(
        subjects.CONDITION.format(grid=GRID, source=name),
        cb=_decoder(Condition, conditions),
    )
    await admin_nc.subscribe(
        subjects.MEAS.format(grid=GRID, source=device.device),
        cb=_decoder(MeasurementSet, measured),
    )
    async with case.wrong(device, port):
        svc = gateway(case.gateway)
        await _wait(lambda: conditions, "no condition for the wrong device")
        [raised] = conditions
        assert (raised.kind, raised.mrid, raised.active) == (
            AlarmKind.COMM_LOSS,
            device.device,
            True,
        )
        assert raised.reporter == name and raised.grid == GRID
        assert raised.message == f"wrong device at 127.0.0.1:{port}: {case.found(device)}"
        assert svc.counters["wrong_device"] >= 1 and svc.info["wrong_devices"] == 1
    assert measured == []  # nothing of the wrong device reached the bus
    async with case.right(device, port):
        await _wait(lambda: measured and not conditions[-1].active, "not accepted, not cleared")
    cleared = conditions[-1]
    assert (cleared.mrid, cleared.kind) == (device.device, AlarmKind.COMM_LOSS)
    assert svc.info["wrong_devices"] == 0


# -- helpers -------------------------------------------------------------------------------------


@functools.cache
def _model_and_placement() -> tuple[Placement, GridModel]:
    model = grid(GRID)
    return default_placement(model), model


async def _until(feed: Any, done: Callable[[Any], bool], within_s: float = 10.0) -> list[Any]:
    seen: list[Any] = []
    async with asyncio.timeout(within_s):
        async for event in feed:
            seen.append(event)
            if done(event):
                return seen
    return seen


async def _collect(poller: DerPoller, into: list[Any]) -> None:
    async for event in poller:
        into.append(event)


async def _next_events(poller: DerPoller, n: int, within_s: float = 10.0) -> list[Any]:
    events: list[Any] = []
    async with asyncio.timeout(within_s):
        async for event in poller:
            events.append(event)
            if len(events) >= n:
                break
    return events


def _decoder(typ: type[Any], into: list[Any]) -> Callable[[Any], Awaitable[None]]:
    async def on_msg(msg: Any) -> None:
        into.append(msgspec.json.decode(msg.data, type=typ))

    return on_msg


async def _wait(done: Callable[[], Any], what: str, within_s: float = 20.0) -> None:
    deadline = time.monotonic() + within_s
    while not done():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def test_the_modbus_gateway_refuses_an_out_of_range_setpoint_unwritten(
    admin_nc: Client, gateway: Callable[[type[Service]], Service]
) -> None:
    """A setpoint no inverter can carry out (1e300 MW, a negative limit) is refused with the
    reason in the command result; nothing reaches the inverter's registers."""
    placement, model = _model_and_placement()
    registry = default_registry(placement, model, site=MINE)
    port = free_port()
    der = msgspec.structs.replace(registry.der[0], port=port)
    registry = msgspec.structs.replace(registry, pmu=[], rtu=[], der=[der])
    pkg = distribution.GridPackage(model=model, placement=placement, devices=registry)
    await distribution.publish(admin_nc, pkg)
    measured: list[MeasurementSet] = []
    await admin_nc.subscribe(
        subjects.MEAS.format(grid=GRID, source=der.device), cb=_decoder(MeasurementSet, measured)
    )
    setpoints: list[object] = []
    server = der_server(der, port)
    server.on_setpoint = lambda *args: setpoints.append(args)
    async with server:
        gateway(ModbusGatewayService)
        await _wait(lambda: measured, "the gateway never read the inverter")
        for values, error in [
            ({"p_mw": 1e300}, "refused: p_mw must be within 0..1000 MW, not 1e+300"),
            ({"p_mw": -1.0}, "refused: p_mw must be within 0..1000 MW, not -1.0"),
            ({"q_mvar": -1e300}, "refused: q_mvar must be within -1000..1000 Mvar, not -1e+300"),
        ]:
            cmd = Command(
                id=f"sp-{time.monotonic_ns()}", grid=GRID, kind=CommandKind.DER_SETPOINT,
                target=der.generator, issued_by="test", t_ns=time.time_ns(), **values,
            )  # fmt: skip
            result = await operate.execute(admin_nc, cmd)
            assert not result.ok and result.error == error, result
        assert setpoints == [] and server.counters["setpoints"] == 0
