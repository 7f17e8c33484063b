"""Random, truncated and bit-flipped input: the decoders raise ``Iec104Error`` and nothing else."""

from __future__ import annotations

import contextlib
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridpilot.protocols.iec104 import (
    Asdu,
    ClockSync,
    Cot,
    Cp56Time,
    DoubleCommand,
    DoublePoint,
    DoublePointState,
    FloatValue,
    Framer,
    FramingError,
    Iec104Error,
    IFrame,
    InformationObject,
    Interrogation,
    ProtocolErrorEvent,
    Quality,
    Role,
    ScaledValue,
    Session,
    SFrame,
    SingleCommand,
    SinglePoint,
    UFrame,
    UFunction,
    decode_apdu,
    decode_asdu,
    decode_cp56,
    encode_apdu,
    encode_asdu,
)

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

times = st.builds(
    Cp56Time,
    st.integers(min_value=946_684_800_000, max_value=4_102_444_799_999).map(lambda ms: ms * 10**6),
    st.booleans(),
    st.booleans(),
)
ioas = st.integers(min_value=0, max_value=0xFFFF00)
qualities = st.sampled_from([Quality.GOOD, Quality.INVALID, Quality.BLOCKED | Quality.NOT_TOPICAL])
optional_times = st.none() | times


def same_time_kind(ioa: int, time: Cp56Time | None) -> st.SearchStrategy[InformationObject]:
    return st.one_of(
        st.builds(
            SinglePoint,
            ioa=st.just(ioa),
            value=st.booleans(),
            quality=qualities,
            time=st.just(time),
        ),
        st.builds(
            DoublePoint,
            ioa=st.just(ioa),
            value=st.sampled_from(list(DoublePointState)),
            quality=qualities,
            time=st.just(time),
        ),
        st.builds(
            ScaledValue,
            ioa=st.just(ioa),
            value=st.integers(-32768, 32767),
            quality=qualities | st.just(Quality.OVERFLOW),
            time=st.just(time),
        ),
        st.builds(
            FloatValue,
            ioa=st.just(ioa),
            value=st.floats(width=32, allow_nan=False),
            quality=qualities,
            time=st.just(time),
        ),
    )


COMMANDS: list[st.SearchStrategy[InformationObject]] = [
    st.builds(
        SingleCommand,
        ioa=ioas,
        on=st.booleans(),
        select=st.booleans(),
        qualifier=st.integers(0, 31),
    ),
    st.builds(
        DoubleCommand,
        ioa=ioas,
        state=st.sampled_from(list(DoublePointState)),
        select=st.booleans(),
        qualifier=st.integers(0, 31),
    ),
    st.builds(Interrogation, ioa=ioas, qualifier=st.integers(0, 255)),
    st.builds(ClockSync, ioa=ioas, time=times),
]


@st.composite
def asdus(draw: st.DrawFn) -> Asdu:
    """Any ASDU of the subset: one kind of object per ASDU, SQ=1 for monitored points only."""
    cot = draw(st.sampled_from(list(Cot)))
    common_address = draw(st.integers(0, 0xFFFF))
    if draw(st.booleans()):
        objects = draw(st.lists(draw(st.sampled_from(COMMANDS)), min_size=1, max_size=4))
        return Asdu(cot=cot, common_address=common_address, objects=tuple(objects), negative=True)
    kind = draw(same_time_kind(0, draw(optional_times)))
    base = draw(ioas)
    objects = [replace(kind, ioa=base + i) for i in range(draw(st.integers(1, 8)))]
    sequence = draw(st.booleans())
    return Asdu(cot=cot, common_address=common_address, objects=tuple(objects), sequence=sequence)


@FUZZ
@given(asdus())
def test_generated_asdus_round_trip(asdu: Asdu) -> None:
    assert decode_asdu(encode_asdu(asdu)) == asdu


def decode_or_error(data: bytes) -> None:
    with contextlib.suppress(Iec104Error):
        decode_asdu(data)


@FUZZ
@given(st.binary(max_size=260))
def test_random_asdu_bytes(data: bytes) -> None:
    decode_or_error(data)


@FUZZ
@given(asdus(), st.data())
def test_truncated_and_bit_flipped_asdus(asdu: Asdu, data: st.DataObject) -> None:
    encoded = encode_asdu(asdu)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    decode_or_error(encoded[:cut])
    flips = data.draw(st.lists(st.integers(0, len(encoded) * 8 - 1), min_size=1, max_size=4))
    mutated = bytearray(encoded)
    for bit in flips:
        mutated[bit // 8] ^= 1 << (bit % 8)
    decode_or_error(bytes(mutated))
    decode_or_error(encoded + data.draw(st.binary(min_size=1, max_size=8)))


@FUZZ
@given(st.binary(min_size=7, max_size=7))
def test_random_time_tags(data: bytes) -> None:
    try:
        decoded = decode_cp56(data)
    except Iec104Error:
        return
    assert decoded.invalid == bool(data[2] & 0x80)


@FUZZ
@given(st.binary(max_size=300))
def test_random_apdu_bytes(data: bytes) -> None:
    with contextlib.suppress(Iec104Error):
        decode_apdu(data)


apdus = st.one_of(
    st.builds(
        IFrame,
        send_seq=st.integers(0, 32767),
        recv_seq=st.integers(0, 32767),
        asdu=asdus().map(encode_asdu),
    ),
    st.builds(SFrame, recv_seq=st.integers(0, 32767)),
    st.builds(UFrame, function=st.sampled_from(list(UFunction))),
)


@FUZZ
@given(st.lists(apdus, min_size=1, max_size=6), st.lists(st.integers(1, 40), max_size=20))
def test_framer_recovers_every_frame_from_any_read_boundaries(
    frames: list[IFrame | SFrame | UFrame], cuts: list[int]
) -> None:
    stream = b"".join(encode_apdu(f) for f in frames)
    framer = Framer()
    out: list[bytes | FramingError] = []
    at = 0
    for size in [*cuts, len(stream)]:
        out += framer.feed(stream[at : at + size])
        at += size
    assert [decode_apdu(item) for item in out if isinstance(item, bytes)] == frames


@FUZZ
@given(
    st.lists(apdus, min_size=1, max_size=4),
    st.binary(min_size=1, max_size=20).filter(lambda b: 0x68 not in b),
)
def test_framer_resynchronises_after_garbage_without_a_start_octet(
    frames: list[IFrame | SFrame | UFrame], garbage: bytes
) -> None:
    stream = b"".join(garbage + encode_apdu(f) for f in frames)
    out = Framer().feed(stream)
    assert [decode_apdu(item) for item in out if isinstance(item, bytes)] == frames
    assert sum(e.skipped for e in out if isinstance(e, FramingError)) == len(garbage) * len(frames)


@FUZZ
@given(st.lists(st.binary(max_size=80), max_size=10), st.sampled_from(list(Role)))
def test_session_survives_random_streams(chunks: list[bytes], role: Role) -> None:
    session = Session(role=role, clock=lambda: 0.0)
    for chunk in chunks:
        for event in session.receive(chunk):
            if isinstance(event, ProtocolErrorEvent):
                assert isinstance(event.error, Iec104Error)
        session.poll(1.0)


@FUZZ
@given(st.lists(apdus, min_size=1, max_size=6), st.data())
def test_session_survives_bit_flipped_streams(
    frames: list[IFrame | SFrame | UFrame], data: st.DataObject
) -> None:
    stream = bytearray(b"".join(encode_apdu(f) for f in frames))
    for bit in data.draw(st.lists(st.integers(0, len(stream) * 8 - 1), max_size=6)):
        stream[bit // 8] ^= 1 << (bit % 8)
    session = Session(role=Role.CONTROLLED, clock=lambda: 0.0)
    session.receive(bytes(stream))
    session.poll(100.0)
