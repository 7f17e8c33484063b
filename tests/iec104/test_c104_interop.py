"""Interoperability with c104 (lib60870-C underneath), an independent IEC 104 implementation.

c104 is GPL-3.0 and a test-time peer only: it is imported here and nowhere in ``src/``. It is
thread-and-callback based; its calls that wait for the peer run in a worker thread so the
event loop serving our side keeps going, and each test uses one c104 connection.

No ``from __future__ import annotations`` here: c104 checks callback signatures against real
annotation objects and refuses strings.
"""

import asyncio
import datetime as dt
import logging
import socket
import threading
import time
from collections.abc import Callable

import pytest
from hypothesis import given, settings

from gridpilot.gateways.iec104 import (
    CommandOutcome,
    CommandStage,
    DoublePointUpdate,
    FloatValueUpdate,
    Iec104Master,
    InterrogationFinished,
    MasterEvent,
)
from gridpilot.protocols.iec104 import (
    Asdu,
    Cot,
    DoublePointState,
    IFrame,
    encode_apdu,
    encode_asdu,
)
from gridpilot.simulator.rtu_server import PointType, RtuServer
from tests.iec104.test_fuzz import asdus

c104 = pytest.importorskip("c104")

CA = 7
WHEN = dt.datetime(2031, 5, 17, 8, 30, 15, 250_000, tzinfo=dt.UTC)
WHEN_NS = int(WHEN.timestamp()) * 1_000_000_000 + WHEN.microsecond * 1000


def free_port() -> int:
    # c104 cannot listen on port 0 and tell us the port, so pick a free one first.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def c104_ns(moment: dt.datetime | None) -> int | None:
    """c104 reports naive local datetimes; interpret them the way it made them."""
    if moment is None:
        return None
    moment = moment if moment.tzinfo else moment.astimezone()
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


async def next_matching(
    master: Iec104Master, match: Callable[[MasterEvent], bool], timeout_s: float = 10.0
) -> MasterEvent:
    async with asyncio.timeout(timeout_s):
        async for event in master:
            if match(event):
                return event
    raise AssertionError("the master closed")


# -- (a) our master against a c104 server ------------------------------------------------------


async def test_our_master_against_a_c104_server() -> None:
    port = free_port()
    server = c104.Server(ip="127.0.0.1", port=port, tick_rate_ms=50, select_timeout_ms=5000)
    station = server.add_station(common_address=CA)
    measured = station.add_point(io_address=11, type=c104.Type.M_ME_NC_1)
    measured.value = 12.5
    status = station.add_point(io_address=100, type=c104.Type.M_DP_NA_1)
    status.value = c104.Double.OFF
    timed = station.add_point(io_address=12, type=c104.Type.M_ME_TF_1)
    timed.value = 1.0
    breaker = station.add_point(
        io_address=200,
        type=c104.Type.C_DC_NA_1,
        command_mode=c104.CommandMode.SELECT_AND_EXECUTE,
    )
    commands: list[tuple[object, bool]] = []

    def on_command(
        point: c104.Point, previous_info: c104.Information, message: c104.IncomingMessage
    ) -> c104.ResponseState:
        commands.append((point.value, message.is_select_command))
        return c104.ResponseState.SUCCESS

    breaker.on_receive(callable=on_command)
    server.start()
    try:
        # Short t1/t2: should c104 miss a STARTDT while it starts up, we reconnect quickly.
        async with Iec104Master(
            host="127.0.0.1",
            port=port,
            common_address=CA,
            t1=3.0,
            t2=1.0,
            reconnect_min_s=0.1,
        ) as master:
            values: dict[int, MasterEvent] = {}

            def collect(event: MasterEvent) -> bool:
                if hasattr(event, "ioa"):
                    values[event.ioa] = event
                return isinstance(event, InterrogationFinished)

            await next_matching(master, collect)
            assert isinstance(values[11], FloatValueUpdate) and values[11].value == 12.5
            assert values[11].cot is Cot.INTERROGATED_BY_STATION
            assert isinstance(values[100], DoublePointUpdate)
            assert values[100].value is DoublePointState.OFF

            timed.info = c104.ShortInfo(actual=99.25, recorded_at=WHEN)
            assert timed.transmit(cause=c104.Cot.SPONTANEOUS)
            spontaneous = await next_matching(
                master, lambda e: getattr(e, "cot", None) is Cot.SPONTANEOUS
            )
            assert isinstance(spontaneous, FloatValueUpdate) and spontaneous.ioa == 12
            assert spontaneous.value == 99.25 and spontaneous.time_ns == WHEN_NS

            result = await master.double_command(200, on=True, timeout_s=10)
            assert result.ok, result
            assert result.stage is CommandStage.TERMINATION
            assert commands == [(c104.Double.ON, False)]  # c104 calls back on execute only

            refused = await master.double_command(201, on=True, timeout_s=10)
            assert refused.outcome is CommandOutcome.REFUSED
            assert refused.stage is CommandStage.SELECT
            sync = await master.clock_sync(timeout_s=10)
            assert sync.ok
            assert master.stats.malformed_frames == 0
    finally:
        server.stop()


# -- (b) a c104 client against our RTU ---------------------------------------------------------


class C104Client:
    """One c104 client connection, driven from a worker thread."""

    def __init__(self, port: int) -> None:
        self.client = c104.Client(tick_rate_ms=50, command_timeout_ms=5000)
        self.connection = self.client.add_connection(
            ip="127.0.0.1", port=port, init=c104.Init.INTERROGATION
        )
        station = self.connection.add_station(common_address=CA)
        # c104 keeps one type per point. Interrogation answers come untimed and spontaneous
        # reports timed (the standard allows no other way), so each point sees one of them.
        self.scaled = station.add_point(io_address=12, type=c104.Type.M_ME_NB_1)
        self.timed = station.add_point(io_address=11, type=c104.Type.M_ME_TF_1)
        self.status = station.add_point(io_address=100, type=c104.Type.M_DP_NA_1)
        self.breaker = station.add_point(
            io_address=200,
            type=c104.Type.C_DC_NA_1,
            command_mode=c104.CommandMode.SELECT_AND_EXECUTE,
        )
        self.unexpected: list[tuple[int, str]] = []
        # Only this callback: with c104's raw send/receive callbacks set as well, c104 missed
        # our ACT_CON to a select in 5 of 20 runs and timed the command out.
        self._lock = threading.Lock()

        def on_unexpected(
            connection: c104.Connection, message: c104.IncomingMessage, cause: c104.Umc
        ) -> None:
            with self._lock:
                self.unexpected.append((message.io_address, cause.name))

        self.connection.on_unexpected_message(callable=on_unexpected)

    def start(self, attempts: int = 3, wait_s: float = 3.0) -> None:
        """Connect; retry when c104 comes up muted (its start-up race)."""
        self.client.start()
        for _ in range(attempts):
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                if self.connection.is_connected and not self.connection.is_muted:
                    return
                time.sleep(0.02)
            self.connection.disconnect()
            self.connection.connect()
        raise AssertionError(f"c104 did not start data transfer: {self.connection.state}")

    def wait(self, condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError("c104 did not see the expected value")
            time.sleep(0.02)

    def switch(self, on: bool) -> bool:
        self.breaker.value = c104.Double.ON if on else c104.Double.OFF
        return bool(self.breaker.transmit(cause=c104.Cot.ACTIVATION))

    def stop(self) -> None:
        self.client.stop()


async def test_a_c104_client_against_our_rtu(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gridpilot.simulator.rtu_server")
    values: dict[int, object] = {11: 230.5, 12: 42, 100: DoublePointState.OFF}
    operations: list[tuple[int, bool]] = []

    def operate(ioa: int, on: bool) -> bool:
        operations.append((ioa, on))
        values[ioa] = on
        return True

    points = {11: PointType.FLOAT, 12: PointType.SCALED, 100: PointType.DOUBLE}
    async with RtuServer(
        common_address=CA,
        points=points,
        read=values.__getitem__,  # type: ignore[arg-type]
        operate=operate,
        port=0,
        command_ioas={200: 100},  # the command address of the double point 100
        clock_ns=lambda: WHEN_NS,
    ) as rtu:
        client = C104Client(rtu.port)
        try:
            await asyncio.to_thread(client.start)
            await asyncio.to_thread(client.wait, lambda: int(client.scaled.value) == 42)
            assert client.status.value == c104.Double.OFF

            values[11] = 231.25
            rtu.report([11])
            await asyncio.to_thread(client.wait, lambda: client.timed.value == 231.25)
            assert c104_ns(client.timed.recorded_at) == WHEN_NS

            assert await asyncio.to_thread(client.switch, True)
            # Our RTU refuses an execute that no select preceded, so this proves both arrived.
            assert operations == [(100, True)]
        finally:
            await asyncio.to_thread(client.stop)
    assert rtu.malformed_frames == 0
    steps = [r.getMessage() for r in caplog.records if "IOA 200" in r.getMessage()]
    assert [s.split(" from ")[0] for s in steps] == [
        "IEC 104 select on of IOA 200",
        "IEC 104 execute on of IOA 200",
    ]
    assert [s.rsplit(": ", 1)[1] for s in steps] == ["selected", "executed"]
    # What c104 set aside: the untimed interrogation answer for the point it declared timed,
    # and the timed status report (COT 11) for the point it declared untimed.
    assert set(client.unexpected) <= {(11, "MISMATCHED_TYPE_ID"), (100, "MISMATCHED_TYPE_ID")}


# -- c104's frame decoder reads what we encode ---------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(asdus())
def test_c104_decodes_the_headers_we_encode(asdu: Asdu) -> None:
    frame = encode_apdu(IFrame(send_seq=1234, recv_seq=32767, asdu=encode_asdu(asdu)))
    seen = c104.explain_bytes_dict(apdu=frame)
    assert (seen["format"], seen["tx"], seen["rx"]) == ("I", 1234, 32767)
    assert seen["type"].value == asdu.type_id
    assert seen["cot"].value == asdu.cot
    assert (seen["negative"], seen["test"], seen["sequence"]) == (
        asdu.negative,
        asdu.test,
        asdu.sequence,
    )
    assert seen["commonAddress"] == asdu.common_address
    assert seen["numberOfObjects"] == len(asdu.objects)
    assert seen["firstInformationObjectAddress"] == asdu.objects[0].ioa
