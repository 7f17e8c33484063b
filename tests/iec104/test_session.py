"""The link state machine with a fake clock: windows, acknowledgements, timers, start and stop."""

from __future__ import annotations

import pytest

from gridpilot.protocols.iec104 import (
    Asdu,
    AsduReceived,
    CloseRequested,
    Cot,
    DoubleCommand,
    DoublePoint,
    DoublePointState,
    Event,
    FloatValue,
    IFrame,
    Interrogation,
    LinkState,
    LinkStateChanged,
    LinkTimeoutError,
    ProtocolErrorEvent,
    Role,
    SequenceError,
    Session,
    SFrame,
    UFrame,
    UFunction,
    UnexpectedFrameError,
    decode_apdu,
    encode_apdu,
    encode_asdu,
)
from gridpilot.protocols.iec104.apci import Framer
from gridpilot.protocols.iec104.testing import FakeControlledStation, exchange
from tests.iec104.conftest import FakeClock


def value(i: int) -> Asdu:
    return Asdu(cot=Cot.SPONTANEOUS, common_address=1, objects=(FloatValue(ioa=i, value=float(i)),))


def frames(data: bytes) -> list[IFrame | SFrame | UFrame]:
    return [decode_apdu(item) for item in Framer().feed(data) if isinstance(item, bytes)]


def i_frame(send_seq: int, recv_seq: int = 0, asdu: Asdu | None = None) -> bytes:
    payload = encode_asdu(asdu or value(send_seq))
    return encode_apdu(IFrame(send_seq=send_seq, recv_seq=recv_seq, asdu=payload))


def u_frame(function: UFunction) -> bytes:
    return encode_apdu(UFrame(function=function))


def started_pair(clock: FakeClock, **options: int) -> tuple[Session, Session]:
    master = Session(role=Role.CONTROLLING, clock=clock, **options)  # type: ignore[arg-type]
    rtu = Session(role=Role.CONTROLLED, clock=clock, **options)  # type: ignore[arg-type]
    master.start()
    exchange(master, rtu)
    assert master.state is rtu.state is LinkState.STARTED
    return master, rtu


def asdus(events: list[Event]) -> list[Asdu]:
    return [e.asdu for e in events if isinstance(e, AsduReceived)]


def test_startdt_handshake(clock: FakeClock) -> None:
    master = Session(role=Role.CONTROLLING, clock=clock)
    rtu = Session(role=Role.CONTROLLED, clock=clock)
    master.start()
    assert master.poll() == u_frame(UFunction.STARTDT_ACT)
    assert rtu.receive(u_frame(UFunction.STARTDT_ACT)) == [LinkStateChanged(LinkState.STARTED)]
    assert rtu.poll() == u_frame(UFunction.STARTDT_CON)
    events = master.receive(u_frame(UFunction.STARTDT_CON))
    assert events == [LinkStateChanged(LinkState.STARTING), LinkStateChanged(LinkState.STARTED)]
    assert master.take_events() == []


def test_data_waits_for_startdt(clock: FakeClock) -> None:
    master = Session(role=Role.CONTROLLING, clock=clock)
    rtu = Session(role=Role.CONTROLLED, clock=clock)
    rtu.send(value(1))
    assert rtu.poll() == b"" and rtu.queued == 1
    master.start()
    to_master, _ = exchange(master, rtu)
    assert asdus(to_master) == [value(1)]


def test_k_window_holds_frames_until_acknowledged(clock: FakeClock) -> None:
    _master, rtu = started_pair(clock, k=3, w=2)
    for i in range(5):
        rtu.send(value(i))
    sent = frames(rtu.poll())
    assert [f.send_seq for f in sent if isinstance(f, IFrame)] == [0, 1, 2]
    assert rtu.poll() == b"" and rtu.queued == 2 and rtu.unacknowledged == 3
    rtu.receive(encode_apdu(SFrame(recv_seq=2)))  # acknowledges 0 and 1
    sent = frames(rtu.poll())
    assert [f.send_seq for f in sent if isinstance(f, IFrame)] == [3, 4]
    assert rtu.unacknowledged == 3


def test_ack_after_w_frames(clock: FakeClock) -> None:
    rtu = Session(role=Role.CONTROLLED, clock=clock, k=12, w=3)
    rtu.receive(i_frame(0) + i_frame(1))
    assert rtu.poll() == b""
    rtu.receive(i_frame(2))
    assert frames(rtu.poll()) == [SFrame(recv_seq=3)]
    assert rtu.poll() == b""


def test_ack_after_t2_when_fewer_than_w(clock: FakeClock) -> None:
    rtu = Session(role=Role.CONTROLLED, clock=clock, w=8, t2=10)
    rtu.receive(i_frame(0))
    clock.advance(9.9)
    assert rtu.poll() == b""
    clock.advance(0.1)
    assert frames(rtu.poll()) == [SFrame(recv_seq=1)]


def test_own_i_frame_carries_the_acknowledgement(clock: FakeClock) -> None:
    _master, rtu = started_pair(clock, w=2)
    rtu.receive(
        i_frame(0, asdu=Asdu(cot=Cot.ACTIVATION, common_address=1, objects=(Interrogation(),)))
    )
    rtu.send(value(7))
    sent = frames(rtu.poll())
    assert sent == [IFrame(send_seq=0, recv_seq=1, asdu=encode_asdu(value(7)))]
    clock.advance(11)  # past t2, before t1
    assert rtu.poll() == b""  # no S-frame: the I-frame acknowledged already


def test_t1_without_acknowledgement_closes(clock: FakeClock) -> None:
    _master, rtu = started_pair(clock, t1=15, t2=10, t3=20)
    rtu.send(value(1))
    rtu.poll()
    clock.advance(14.9)
    rtu.poll()
    assert rtu.take_events() == []
    clock.advance(0.1)
    assert rtu.poll() == b""
    [event] = rtu.take_events()
    assert isinstance(event, CloseRequested)
    assert isinstance(event.reason, LinkTimeoutError) and event.reason.timer == "t1"
    assert rtu.state is LinkState.CLOSED and rtu.close_reason is event.reason
    assert rtu.receive(u_frame(UFunction.TESTFR_ACT)) == [] and rtu.poll() == b""


def test_t3_idle_sends_testfr_and_t1_closes_without_reply(clock: FakeClock) -> None:
    master = Session(role=Role.CONTROLLING, clock=clock, t1=15, t2=10, t3=20)
    clock.advance(19.9)
    assert master.poll() == b""
    assert master.next_deadline() == pytest.approx(clock.now + 0.1)
    clock.advance(0.1)
    assert master.poll() == u_frame(UFunction.TESTFR_ACT)
    clock.advance(5)
    assert master.poll() == b""  # one test frame at a time
    master.receive(u_frame(UFunction.TESTFR_CON))
    clock.advance(19.9)
    assert master.poll() == b""  # t3 restarted by the reply
    clock.advance(0.1)
    assert master.poll() == u_frame(UFunction.TESTFR_ACT)
    clock.advance(15)
    master.poll()
    [event] = master.take_events()
    assert isinstance(event, CloseRequested) and "TESTFR_CON" in str(event.reason)


def test_testfr_is_answered_in_any_state(clock: FakeClock) -> None:
    for role in Role:
        session = Session(role=role, clock=clock)
        session.receive(u_frame(UFunction.TESTFR_ACT))
        assert session.poll() == u_frame(UFunction.TESTFR_CON)


def test_stopdt_waits_for_outstanding_acknowledgements(clock: FakeClock) -> None:
    master, rtu = started_pair(clock)
    rtu.send(value(1))
    in_flight = rtu.poll()
    master.stop()
    assert master.poll() == u_frame(UFunction.STOPDT_ACT)
    assert rtu.receive(u_frame(UFunction.STOPDT_ACT)) == [LinkStateChanged(LinkState.STOPPING)]
    assert rtu.poll() == b""  # value 1 is not acknowledged yet
    rtu.send(value(2))
    assert asdus(master.receive(in_flight)) == [value(1)]
    ack = master.poll()  # a stopping master acknowledges at once, not after w or t2
    assert frames(ack) == [SFrame(recv_seq=1)]
    assert rtu.receive(ack) == [LinkStateChanged(LinkState.STOPPED)]
    assert rtu.poll() == u_frame(UFunction.STOPDT_CON)  # and not value 2
    master.receive(u_frame(UFunction.STOPDT_CON))
    assert master.state is LinkState.STOPPED
    master.start()
    to_master, _ = exchange(master, rtu)
    assert asdus(to_master) == [value(2)]


def test_stopdt_acknowledges_what_was_received(clock: FakeClock) -> None:
    rtu = Session(role=Role.CONTROLLED, clock=clock)
    rtu.receive(u_frame(UFunction.STARTDT_ACT) + i_frame(0) + u_frame(UFunction.STOPDT_ACT))
    assert frames(rtu.poll()) == [
        UFrame(function=UFunction.STARTDT_CON),
        SFrame(recv_seq=1),
        UFrame(function=UFunction.STOPDT_CON),
    ]


@pytest.mark.parametrize(
    ("data", "counter"),
    [
        (i_frame(1), "N(S)"),  # expected 0
        (i_frame(0, recv_seq=5), "N(R)"),  # we sent nothing
        (encode_apdu(SFrame(recv_seq=1)), "N(R)"),
    ],
)
def test_wrong_sequence_numbers_are_fatal(clock: FakeClock, data: bytes, counter: str) -> None:
    session = Session(role=Role.CONTROLLING, clock=clock)
    events = session.receive(data)
    assert [type(e) for e in events] == [ProtocolErrorEvent, CloseRequested]
    error = events[0].error  # type: ignore[union-attr]
    assert isinstance(error, SequenceError) and error.counter == counter


def test_malformed_frames_are_reported_and_the_link_goes_on(clock: FakeClock) -> None:
    session = Session(role=Role.CONTROLLED, clock=clock)
    bad_asdu = encode_apdu(IFrame(send_seq=0, recv_seq=0, asdu=b"\x0d\x01\x03"))
    events = session.receive(b"\x00garbage" + bad_asdu + i_frame(1))
    assert [type(e) for e in events] == [ProtocolErrorEvent, ProtocolErrorEvent, AsduReceived]
    assert session.state is LinkState.STOPPED


def test_unexpected_u_frames_are_not_fatal(clock: FakeClock) -> None:
    master = Session(role=Role.CONTROLLING, clock=clock)
    [event] = master.receive(u_frame(UFunction.STARTDT_ACT) + u_frame(UFunction.STARTDT_CON))[:1]
    assert isinstance(event, ProtocolErrorEvent)
    assert isinstance(event.error, UnexpectedFrameError)
    assert master.state is LinkState.STOPPED
    with pytest.raises(RuntimeError):
        Session(role=Role.CONTROLLED).start()


def test_sequence_numbers_wrap_at_32768(clock: FakeClock) -> None:
    master, rtu = started_pair(clock, k=1000, w=1000)
    total = 32768 + 1500
    received = 0
    for start in range(0, total, 1000):
        for i in range(start, min(start + 1000, total)):
            rtu.send(value(i % 1000))
        to_master, to_rtu = exchange(master, rtu)
        received += len(asdus(to_master))
        assert not any(
            isinstance(e, ProtocolErrorEvent | CloseRequested) for e in to_master + to_rtu
        )
    assert received == total
    clock.advance(10)  # t2 acknowledges the last, incomplete window
    exchange(master, rtu)
    assert rtu.unacknowledged == 0


@pytest.mark.parametrize("options", [{"k": 0}, {"k": 4, "w": 5}, {"t1": 10, "t2": 10}, {"t3": 0}])
def test_bad_parameters(options: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Session(role=Role.CONTROLLING, **options)  # type: ignore[arg-type]


# -- against the in-memory RTU ----------------------------------------------------------------


def connect(clock: FakeClock, **options: object) -> tuple[Session, FakeControlledStation]:
    rtu = FakeControlledStation(
        common_address=7,
        points=[FloatValue(ioa=11, value=1.5), DoublePoint(ioa=100, value=DoublePointState.OFF)],
        clock=clock,
        **options,  # type: ignore[arg-type]
    )
    master = Session(role=Role.CONTROLLING, clock=clock)
    master.start()
    exchange(master, rtu)
    return master, rtu


def command(ioa: int, state: DoublePointState, select: bool, cot: Cot = Cot.ACTIVATION) -> Asdu:
    return Asdu(
        cot=cot, common_address=7, objects=(DoubleCommand(ioa=ioa, state=state, select=select),)
    )


def test_fake_rtu_general_interrogation(clock: FakeClock) -> None:
    master, rtu = connect(clock)
    master.send(Asdu(cot=Cot.ACTIVATION, common_address=7, objects=(Interrogation(),)))
    got = asdus(exchange(master, rtu)[0])
    assert [a.cot for a in got] == [
        Cot.ACTIVATION_CON,
        Cot.INTERROGATED_BY_STATION,
        Cot.INTERROGATED_BY_STATION,
        Cot.ACTIVATION_TERMINATION,
    ]
    assert got[1].objects == (FloatValue(ioa=11, value=1.5),)


def test_fake_rtu_select_before_operate(clock: FakeClock) -> None:
    master, rtu = connect(clock)
    master.send(command(100, DoublePointState.ON, select=True))
    master.send(command(100, DoublePointState.ON, select=False))
    got = asdus(exchange(master, rtu)[0])
    assert [(a.cot, a.negative) for a in got] == [
        (Cot.ACTIVATION_CON, False),
        (Cot.ACTIVATION_CON, False),
        (Cot.SPONTANEOUS, False),
        (Cot.ACTIVATION_TERMINATION, False),
    ]
    status = got[2].objects[0]
    assert isinstance(status, DoublePoint) and status.value is DoublePointState.ON
    assert status.time is not None
    assert rtu.executed == [DoubleCommand(ioa=100, state=DoublePointState.ON)]


@pytest.mark.parametrize(
    ("request_asdu", "cot"),
    [
        (command(100, DoublePointState.ON, select=False), Cot.ACTIVATION_CON),  # no select
        (command(100, DoublePointState.INDETERMINATE, select=True), Cot.ACTIVATION_CON),
        (command(101, DoublePointState.ON, select=True), Cot.UNKNOWN_IOA),
        (command(100, DoublePointState.ON, select=True, cot=Cot.SPONTANEOUS), Cot.UNKNOWN_COT),
    ],
)
def test_fake_rtu_negative_confirmations(clock: FakeClock, request_asdu: Asdu, cot: Cot) -> None:
    master, rtu = connect(clock)
    master.send(request_asdu)
    [reply] = asdus(exchange(master, rtu)[0])
    assert (reply.cot, reply.negative) == (cot, True)
    assert rtu.executed == []


def test_fake_rtu_refuses_unknown_type_and_common_address(clock: FakeClock) -> None:
    master, rtu = connect(clock)
    master.send(bytes.fromhex("09010600070001000000000000"))  # M_ME_NA_1, not in the subset
    master.send(Asdu(cot=Cot.ACTIVATION, common_address=8, objects=(Interrogation(),)))
    events = exchange(master, rtu)[0]
    assert [e.error.type_id for e in events if isinstance(e, ProtocolErrorEvent)] == [9]  # type: ignore[attr-defined]
    [reply] = asdus(events)
    assert (reply.cot, reply.negative, reply.common_address) == (Cot.UNKNOWN_CA, True, 8)
