"""Our poller against peers that are not our simulator: a plain pymodbus server whose registers
are laid out by hand from the documented table (with pymodbus's own type conversions and other
scale factors than our encoder picks), and a TCP server that never answers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from gridpilot.gateways.modbus import DerPoller, DerReading, DerUnavailable, FailureKind
from gridpilot.protocols.sunspec import InverterStatus
from tests.modbus.conftest import FAST, events_until

MEASURED_MS = 1_795_000_000_123  # unit 1's clock; unit 2 has none (Tms 0)


def inverter_registers(t_ms: int, unit: int) -> list[SimData]:
    """A 250 kW inverter per the table in gridpilot.protocols.sunspec.points, written out."""
    i16, u16, regs, text = DataType.INT16, DataType.UINT16, DataType.REGISTERS, DataType.STRING
    return [
        SimData(address=40000, values=[0x5375, 0x6E53], datatype=regs),  # "SunS"
        SimData(address=40002, values=[1, 66], datatype=u16),  # common model: ID, L
        SimData(address=40004, values="Acme Solar".ljust(32, "\0"), datatype=text),  # Mn
        SimData(address=40020, values="AS-250".ljust(32, "\0"), datatype=text),  # Md
        SimData(address=40036, values="\0" * 16, datatype=text),  # Opt
        SimData(address=40044, values="1.2.3".ljust(16, "\0"), datatype=text),  # Vr
        SimData(address=40052, values=f"SN-{unit:04d}".ljust(32, "\0"), datatype=text),  # SN
        SimData(address=40068, values=[unit, 0x8000], datatype=regs),  # DA, Pad
        SimData(address=40070, values=[64900, 25], datatype=u16),  # ID, L
        SimData(address=40072, values=[12345, -321], datatype=i16),  # W, VAr
        SimData(address=40074, values=20400, datatype=u16),  # PhV: 204.00 V
        SimData(address=40075, values=49.98, datatype=DataType.FLOAT32),  # Hz
        SimData(address=40077, values=4_000_000_000, datatype=DataType.UINT32),  # WH
        SimData(address=40079, values=5, datatype=u16),  # St: throttled
        SimData(address=40080, values=[1, 1, -2, 0], datatype=i16),  # W, VAr, V, WH _SF
        SimData(address=40084, values=25, datatype=u16),  # WRtg: 25 * 10**4 W
        SimData(address=40085, values=4, datatype=i16),  # WRtg_SF
        SimData(address=40086, values=20000, datatype=u16),  # VRef: 200.00 V
        SimData(address=40087, values=[8000, 1], datatype=u16),  # WMaxLimPct 80.00 %, Ena
        SimData(address=40089, values=-500, datatype=i16),  # VArPct -5.00 %
        SimData(address=40090, values=0, datatype=u16),  # VArPct_Ena
        SimData(address=40091, values=[-2, -2], datatype=i16),  # setpoint SFs: 0.01 %
        SimData(address=40093, values=t_ms, datatype=DataType.UINT64),  # Tms
        SimData(address=40097, values=[0xFFFF, 0], datatype=regs),  # end of the chain
    ]


async def clamp_at_half(
    _fc: int,
    _start: int,
    address: int,
    _count: int,
    _registers: list[int],
    set_values: list[int] | list[bool] | None,
) -> ExcCodes | None:
    # a device that silently caps the active power limit at 50 %: it acknowledges the write
    if set_values and address == 40087:
        set_values[0] = min(int(set_values[0]), 5000)
    return None


@pytest.fixture
async def peer_port() -> AsyncIterator[int]:
    devices = [
        SimDevice(id=1, simdata=inverter_registers(MEASURED_MS, 1)),
        SimDevice(id=2, simdata=inverter_registers(0, 2), action=clamp_at_half),
    ]
    server = ModbusTcpServer(devices, address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    yield server.transport.sockets[0].getsockname()[1]
    await server.shutdown()


async def test_poller_reads_a_hand_laid_map(peer_port: int) -> None:
    async with DerPoller(host="127.0.0.1", port=peer_port, units=[1, 2], **FAST) as poller:
        events = await events_until(poller, lambda ev: len(ev) >= 2)
    assert {e.unit for e in events} == {1, 2}
    reading, other = sorted(events, key=lambda e: e.unit)
    assert isinstance(reading, DerReading) and isinstance(other, DerReading)
    assert reading.t_ns == MEASURED_MS * 1_000_000  # stamped with the inverter's clock
    assert abs(other.t_ns - time.time_ns()) < 5e9  # no clock: stamped at the poll
    state = reading.state
    assert state.p_mw == pytest.approx(0.12345)
    assert state.q_mvar == pytest.approx(-0.00321)
    assert state.v_pu == pytest.approx(1.02)
    assert state.f_hz == pytest.approx(49.98, abs=1e-5)
    assert state.energy_wh == 4_000_000_000
    assert state.status is InverterStatus.THROTTLED
    assert state.rated_mw == pytest.approx(0.25)
    assert state.p_limit_mw == pytest.approx(0.2)
    assert state.q_set_mvar is None
    identity = (state.manufacturer, state.device_model, state.version)
    assert identity == ("Acme Solar", "AS-250", "1.2.3")
    assert (state.serial, state.device_address, other.state.serial) == ("SN-0001", 1, "SN-0002")


async def test_setpoint_uses_the_devices_scale_factors(peer_port: int) -> None:
    async with DerPoller(host="127.0.0.1", port=peer_port, units=[1], **FAST) as poller:
        result = await poller.write_setpoint(1, p_limit_mw=0.1, q_mvar=0.025)
        assert result.ok, result.error
        assert result.applied_p_limit_mw == pytest.approx(0.1)
        assert result.applied_q_mvar == pytest.approx(0.025)
        events = await events_until(poller, lambda ev: len(ev) >= 1)
    assert isinstance(events[0], DerReading)
    assert events[0].state.p_limit_pct == pytest.approx(40.0)  # 4000 at sf -2
    assert events[0].state.q_set_pct == pytest.approx(10.0)


async def test_a_device_that_holds_other_values_is_a_mismatch(peer_port: int) -> None:
    async with DerPoller(host="127.0.0.1", port=peer_port, units=[2], **FAST) as poller:
        result = await poller.write_setpoint(2, p_limit_mw=0.2, q_mvar=None)
    assert not result.ok
    assert result.failure is FailureKind.MISMATCH
    assert "WMaxLimPct wrote 80, holds 50" in result.error
    assert result.applied_p_limit_mw == pytest.approx(0.125)  # what is in force: 50 %


async def test_a_silent_server_times_out_and_the_link_is_reset() -> None:
    connections: list[asyncio.StreamWriter] = []  # open ones
    all_closed = asyncio.Event()
    accepted = 0

    async def accept_and_ignore(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        connections.append(writer)
        all_closed.clear()
        await reader.read()  # swallows requests until the poller hangs up
        writer.close()
        connections.remove(writer)
        if not connections:
            all_closed.set()

    server = await asyncio.start_server(accept_and_ignore, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    outages: list[DerUnavailable] = []

    async def watch(poller: DerPoller) -> None:
        async for event in poller:
            assert isinstance(event, DerUnavailable)
            outages.append(event)

    fast = {**FAST, "timeout_s": 0.1}
    async with DerPoller(host="127.0.0.1", port=port, units=[1, 2], **fast) as poller:
        task = asyncio.create_task(watch(poller))
        await asyncio.sleep(0.8)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    # each unit reported once; polling went on: timeouts, a link reset, a new connection
    assert [(e.unit, e.kind) for e in outages] == [
        (1, FailureKind.TIMEOUT),
        (2, FailureKind.TIMEOUT),
    ]
    health = poller.health()
    assert health[1].timeouts >= 2 and not health[1].available
    assert poller.counters["link_resets"] >= 1
    assert accepted >= 2  # connected again after each reset
    async with asyncio.timeout(2):  # let the server see the poller hang up
        await all_closed.wait()
    server.close()
    await server.wait_closed()
