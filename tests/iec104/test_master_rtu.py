"""Our master against our virtual RTU over TCP on 127.0.0.1, and hand-made misbehaving peers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from gridpilot.gateways.iec104 import (
    CommandOutcome,
    CommandStage,
    ConnectionState,
    ConnectionStateChanged,
    DoublePointUpdate,
    FloatValueUpdate,
    Iec104Master,
    InterrogationFinished,
    MasterEvent,
    ScaledValueUpdate,
    SinglePointUpdate,
)
from gridpilot.protocols.iec104 import (
    Asdu,
    AsduReceived,
    Cot,
    DoubleCommand,
    DoublePointState,
    Event,
    FloatValue,
    Iec104Error,
    IFrame,
    LinkState,
    ProtocolErrorEvent,
    Quality,
    Role,
    Session,
    UFrame,
    UFunction,
    UnknownTypeError,
    encode_apdu,
    encode_asdu,
)
from gridpilot.protocols.iec104.link import StreamLink
from gridpilot.simulator.rtu_server import PointType, Reading, RtuServer

CA = 3
SIM_TIME_NS = 1_800_000_000_123_000_000  # the simulation's clock, not the wall clock
POINTS = {
    5: PointType.SINGLE,
    11: PointType.FLOAT,
    12: PointType.SCALED,
    100: PointType.DOUBLE,
    101: PointType.DOUBLE,
}


@dataclass
class Plant:
    """The simulation behind the RTU: values by IOA and a log of switch operations."""

    values: dict[int, object] = field(
        default_factory=lambda: {
            5: True,
            11: 230.5,
            12: Reading(-42, Quality.SUBSTITUTED),
            100: DoublePointState.OFF,
            101: False,
        }
    )
    operations: list[tuple[int, bool]] = field(default_factory=list)
    obey: bool = True

    def read(self, ioa: int) -> object:
        return self.values[ioa]

    def operate(self, ioa: int, on: bool) -> bool:
        self.operations.append((ioa, on))
        if self.obey:
            self.values[ioa] = on
        return self.obey


def rtu_for(plant: Plant, port: int = 0, **options: object) -> RtuServer:
    return RtuServer(
        common_address=CA,
        points=POINTS,
        read=plant.read,  # type: ignore[arg-type]
        operate=plant.operate,
        port=port,
        clock_ns=lambda: SIM_TIME_NS,
        **options,  # type: ignore[arg-type]
    )


def master_for(port: int, **options: object) -> Iec104Master:
    return Iec104Master(
        host="127.0.0.1",
        port=port,
        common_address=CA,
        reconnect_min_s=0.05,
        reconnect_max_s=0.2,
        **options,  # type: ignore[arg-type]
    )


async def wait_for(
    master: Iec104Master, match: Callable[[MasterEvent], bool], timeout_s: float = 5.0
) -> list[MasterEvent]:
    """Events up to and including the first that matches."""
    seen: list[MasterEvent] = []
    async with asyncio.timeout(timeout_s):
        async for event in master:
            seen.append(event)
            if match(event):
                return seen
    raise AssertionError(f"the master closed; saw {seen}")


def finished(event: MasterEvent) -> bool:
    return isinstance(event, InterrogationFinished)


def state_is(state: ConnectionState) -> Callable[[MasterEvent], bool]:
    return lambda e: isinstance(e, ConnectionStateChanged) and e.state is state


async def test_interrogation_on_connect_gives_typed_values() -> None:
    async with rtu_for(Plant()) as rtu, master_for(rtu.port) as master:
        events = await wait_for(master, finished)
    states = [e.state for e in events if isinstance(e, ConnectionStateChanged)]
    assert states == [
        ConnectionState.CONNECTING,
        ConnectionState.CONNECTED,
        ConnectionState.STARTED,
    ]
    values = {e.ioa: e for e in events if hasattr(e, "ioa")}
    assert isinstance(values[5], SinglePointUpdate) and values[5].value is True
    assert isinstance(values[11], FloatValueUpdate) and values[11].value == 230.5
    assert isinstance(values[12], ScaledValueUpdate) and values[12].value == -42
    assert values[12].quality is Quality.SUBSTITUTED
    assert isinstance(values[100], DoublePointUpdate) and values[100].value is DoublePointState.OFF
    assert values[101].value is DoublePointState.OFF
    assert all(v.cot is Cot.INTERROGATED_BY_STATION and v.time_ns is None for v in values.values())


async def test_spontaneous_and_periodic_values_carry_the_simulation_time() -> None:
    plant = Plant()
    async with rtu_for(plant, cyclic_s=0.05) as rtu, master_for(rtu.port) as master:
        await wait_for(master, finished)
        plant.values[11] = 231.25
        rtu.report([11])
        [*_, spontaneous] = await wait_for(
            master, lambda e: isinstance(e, FloatValueUpdate) and e.cot is Cot.SPONTANEOUS
        )
        [*_, periodic] = await wait_for(
            master, lambda e: isinstance(e, ScaledValueUpdate) and e.cot is Cot.PERIODIC
        )
    assert isinstance(spontaneous, FloatValueUpdate) and spontaneous.value == 231.25
    assert spontaneous.time_ns == SIM_TIME_NS and not spontaneous.time_invalid
    assert isinstance(periodic, ScaledValueUpdate) and periodic.time_ns == SIM_TIME_NS


async def test_select_before_operate_switches_and_reports_the_new_state() -> None:
    plant = Plant()
    async with rtu_for(plant) as rtu, master_for(rtu.port) as master:
        await wait_for(master, finished)
        result = await master.double_command(100, on=True, timeout_s=5)
        [*_, status] = await wait_for(master, lambda e: getattr(e, "ioa", None) == 100)
        single = await master.single_command(5, on=False, select_before_operate=True)
    assert result.ok and result.stage is CommandStage.TERMINATION
    assert result.cot is Cot.ACTIVATION_TERMINATION
    assert plant.operations == [(100, True), (5, False)] and single.ok
    assert isinstance(status, DoublePointUpdate) and status.value is DoublePointState.ON
    assert status.cot is Cot.RETURN_INFO_REMOTE and status.time_ns == SIM_TIME_NS


@pytest.mark.parametrize(
    ("ioa", "sbo", "obey", "stage", "cot"),
    [
        (100, True, False, CommandStage.EXECUTE, Cot.ACTIVATION_CON),  # the switch failed
        (12, True, True, CommandStage.SELECT, Cot.UNKNOWN_IOA),  # not a double point
        (999, True, True, CommandStage.SELECT, Cot.UNKNOWN_IOA),
        (100, False, True, CommandStage.EXECUTE, Cot.ACTIVATION_CON),  # execute without select
    ],
)
async def test_refused_commands_say_where_and_why(
    ioa: int, sbo: bool, obey: bool, stage: CommandStage, cot: Cot
) -> None:
    plant = Plant(obey=obey)
    async with rtu_for(plant) as rtu, master_for(rtu.port) as master:
        await wait_for(master, finished)
        result = await master.double_command(ioa, on=True, select_before_operate=sbo)
    assert (result.outcome, result.stage, result.cot) == (CommandOutcome.REFUSED, stage, cot)
    assert plant.values[100] is DoublePointState.OFF


async def test_command_without_a_link_is_not_connected() -> None:
    async with master_for(1) as master:  # nothing listens on port 1
        [*_, down] = await wait_for(master, state_is(ConnectionState.DISCONNECTED))
        result = await master.double_command(100, on=True)
    assert result.outcome is CommandOutcome.NOT_CONNECTED
    assert isinstance(down, ConnectionStateChanged)
    assert "ConnectionRefusedError" in (down.reason or "")
    assert down.retry_in_s == 0.05


@asynccontextmanager
async def raw_station(
    on_connect: Callable[[asyncio.StreamReader, asyncio.StreamWriter], object],
) -> AsyncIterator[int]:
    """A hand-made TCP peer; yields its port."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await on_connect(reader, writer)  # type: ignore[misc]
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_silent_station_times_out_and_the_selection_is_released() -> None:
    received: list[Asdu] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session(role=Role.CONTROLLED, clock=asyncio.get_running_loop().time)

        def handle(event: Event) -> None:
            if isinstance(event, AsduReceived):
                received.append(event.asdu)

        await StreamLink(session=session, reader=reader, writer=writer).run(handle)

    async with raw_station(silent) as port, master_for(port, interrogate_on_connect=False) as m:
        await wait_for(m, state_is(ConnectionState.STARTED))
        result = await m.double_command(100, on=False, timeout_s=0.3)
        await asyncio.sleep(0.1)
    assert (result.outcome, result.stage) == (CommandOutcome.TIMEOUT, CommandStage.SELECT)
    assert [a.cot for a in received] == [Cot.ACTIVATION, Cot.DEACTIVATION]
    assert all(isinstance(a.objects[0], DoubleCommand) and a.objects[0].select for a in received)


async def test_malformed_frames_are_counted_not_fatal() -> None:
    value = Asdu(cot=Cot.SPONTANEOUS, common_address=CA, objects=(FloatValue(ioa=7, value=1.0),))

    async def noisy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(6)  # STARTDT act
        writer.write(encode_apdu(UFrame(function=UFunction.STARTDT_CON)))
        writer.write(b"\x00\xffnoise" + bytes.fromhex("680e00000000ff010600030000000000"))
        writer.write(encode_apdu(IFrame(send_seq=1, recv_seq=0, asdu=encode_asdu(value))))
        await writer.drain()
        await reader.read(1000)

    async with raw_station(noisy) as port, master_for(port, interrogate_on_connect=False) as m:
        [*_, update] = await wait_for(m, lambda e: isinstance(e, FloatValueUpdate))
        assert m.state is ConnectionState.STARTED
    assert isinstance(update, FloatValueUpdate) and update.ioa == 7
    assert m.stats.malformed_frames == 2  # the noise, and the ASDU of unknown type 255
    assert m.stats.connects == 1


async def test_a_flood_of_bad_input_is_counted_not_logged_line_by_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """64 KiB of "68 00" (a start octet with an impossible length, 32,768 times): every bad
    input is counted, one warning says so, and the link goes on."""
    value = Asdu(cot=Cot.SPONTANEOUS, common_address=CA, objects=(FloatValue(ioa=7, value=1.0),))

    async def flooding(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(6)  # STARTDT act
        writer.write(encode_apdu(UFrame(function=UFunction.STARTDT_CON)))
        writer.write(b"\x68\x00" * 32_768)
        writer.write(encode_apdu(IFrame(send_seq=0, recv_seq=0, asdu=encode_asdu(value))))
        await writer.drain()
        await reader.read(1000)

    caplog.set_level(logging.WARNING, logger="gridpilot")
    async with raw_station(flooding) as port, master_for(port, interrogate_on_connect=False) as m:
        [*_, update] = await wait_for(m, lambda e: isinstance(e, FloatValueUpdate))
        assert m.state is ConnectionState.STARTED
    assert isinstance(update, FloatValueUpdate) and update.ioa == 7
    assert m.stats.malformed_frames == 65_536  # the bad length octet, then the 00 skipped
    bad = [r for r in caplog.records if "bad input" in r.getMessage()]
    assert len(bad) == 1, [r.getMessage() for r in bad[:5]]


async def test_reconnects_after_the_rtu_restarts() -> None:
    plant = Plant()
    rtu = rtu_for(plant)
    await rtu.start()
    port = rtu.port
    async with master_for(port) as master:
        await wait_for(master, finished)
        await rtu.close()
        [*_, down] = await wait_for(master, state_is(ConnectionState.DISCONNECTED))
        plant.values[11] = 99.0
        async with rtu_for(plant, port=port):
            events = await wait_for(master, finished)
        assert master.stats.connects >= 2
    assert isinstance(down, ConnectionStateChanged) and down.retry_in_s is not None
    assert any(state_is(ConnectionState.STARTED)(e) for e in events)
    assert [e.value for e in events if isinstance(e, FloatValueUpdate)][-1] == 99.0


@asynccontextmanager
async def mini_master(
    port: int,
) -> AsyncIterator[tuple[StreamLink, asyncio.Queue[Asdu | Iec104Error]]]:
    """A bare session over TCP, to send what Iec104Master would not (slow or rival selects)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    session = Session(role=Role.CONTROLLING, clock=asyncio.get_running_loop().time)
    link = StreamLink(session=session, reader=reader, writer=writer)
    replies: asyncio.Queue[Asdu | Iec104Error] = asyncio.Queue()
    started = asyncio.Event()

    def handle(event: Event) -> None:
        if isinstance(event, AsduReceived):
            replies.put_nowait(event.asdu)
        elif isinstance(event, ProtocolErrorEvent):
            replies.put_nowait(event.error)
        elif session.state is LinkState.STARTED:
            started.set()

    session.start()
    link.flush()
    task = asyncio.create_task(link.run(handle))
    await asyncio.wait_for(started.wait(), 5)
    try:
        yield link, replies
    finally:
        link.abort()
        await task
        await link.close()


def dc(ioa: int, select: bool, cot: Cot = Cot.ACTIVATION) -> Asdu:
    command = DoubleCommand(ioa=ioa, state=DoublePointState.ON, select=select)
    return Asdu(cot=cot, common_address=CA, objects=(command,))


async def reply(replies: asyncio.Queue[Asdu | Iec104Error]) -> tuple[Cot, bool]:
    asdu = await asyncio.wait_for(replies.get(), 5)
    if isinstance(asdu, UnknownTypeError):  # our own decoder does not know the type either
        return Cot(asdu.cot), bool(asdu.raw[2] & 0x40)
    assert isinstance(asdu, Asdu)
    return asdu.cot, asdu.negative


async def test_rtu_selection_expires_and_belongs_to_one_master() -> None:
    plant = Plant()
    async with (
        rtu_for(plant, select_timeout_s=0.5) as rtu,
        mini_master(rtu.port) as (a, a_replies),
        mini_master(rtu.port) as (b, b_replies),
    ):
        a.send(dc(100, select=True))
        assert await reply(a_replies) == (Cot.ACTIVATION_CON, False)
        b.send(dc(100, select=True))
        assert await reply(b_replies) == (Cot.ACTIVATION_CON, True)  # selected by a
        b.send(dc(100, select=False))
        assert await reply(b_replies) == (Cot.ACTIVATION_CON, True)
        await asyncio.sleep(0.6)
        a.send(dc(100, select=False))
        assert await reply(a_replies) == (Cot.ACTIVATION_CON, True)  # the select expired
        a.send(dc(101, select=True))
        assert await reply(a_replies) == (Cot.ACTIVATION_CON, False)
        a.send(dc(101, select=True, cot=Cot.DEACTIVATION))
        assert await reply(a_replies) == (Cot.DEACTIVATION_CON, False)
        a.send(dc(101, select=False))
        assert await reply(a_replies) == (Cot.ACTIVATION_CON, True)  # deselected
        a.send(bytes.fromhex("0901060003000100000000000000"))  # type 9: not in the subset
        assert await reply(a_replies) == (Cot.UNKNOWN_TYPE_ID, True)
        assert rtu.started_connections == 2
    assert plant.operations == []


async def test_several_masters_clock_sync_and_spontaneous_reports() -> None:
    synced: list[int] = []

    def on_sync(time_ns: int) -> bool:
        synced.append(time_ns)
        return True

    plant = Plant()
    async with (
        rtu_for(plant, on_clock_sync=on_sync) as rtu,
        master_for(rtu.port) as one,
        master_for(rtu.port) as two,
    ):
        await wait_for(one, finished)
        await wait_for(two, finished)
        sync = await one.clock_sync(time_ns=SIM_TIME_NS)
        rtu.report([5])
        for master in (one, two):
            [*_, update] = await wait_for(master, lambda e: isinstance(e, SinglePointUpdate))
            assert isinstance(update, SinglePointUpdate) and update.cot is Cot.SPONTANEOUS
        interrogation = await two.interrogate()
    assert sync.ok and synced == [SIM_TIME_NS]
    assert interrogation.ok and interrogation.stage is CommandStage.TERMINATION


@pytest.mark.parametrize(
    "build",
    [
        lambda: Iec104Master(host="", common_address=1),
        lambda: Iec104Master(host="h", common_address=0),
        lambda: Iec104Master(host="h", common_address=1, originator=256),
        lambda: Iec104Master(host="h", common_address=1, k=4, w=5),
        lambda: Iec104Master(host="h", common_address=1, reconnect_min_s=2, reconnect_max_s=1),
        lambda: rtu_for(Plant(), command_ioas={200: 11}),  # 11 is a measured value
        lambda: RtuServer(common_address=1, points={}, read=print),
        lambda: RtuServer(common_address=0xFFFF, points=POINTS, read=print),
    ],
)
def test_bad_configuration_fails_in_the_constructor(build: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        build()
