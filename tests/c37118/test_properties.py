"""Property tests: random configurations and data round-trip; random, truncated and damaged
bytes give C37118Error and nothing else, from ``decode`` and from ``FrameBuffer.feed``."""

from __future__ import annotations

import cmath
import contextlib
import os
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridpilot.protocols.c37118 import (
    C37118Error,
    ConfigFrame,
    DataFrame,
    FrameBuffer,
    FrameType,
    decode,
    encode,
)

from .strategies import config_and_frame, configs
from .test_codec import crc_bitwise

# C37118_FUZZ=50 runs fifty times the examples (a longer fuzzing session, not for CI).
SCALE = int(os.environ.get("C37118_FUZZ", "1"))


def examples(n: int) -> settings:
    return settings(
        max_examples=n * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )


FAST = examples(80)


def _same(a: float | complex, b: float | complex, tol: float) -> bool:
    if cmath.isnan(a) or cmath.isnan(b):
        return cmath.isnan(a) and cmath.isnan(b)
    if cmath.isinf(a) or cmath.isinf(b):
        return a == b
    return abs(a - b) <= tol


@FAST
@given(configs())
def test_configurations_round_trip(config: ConfigFrame) -> None:
    wire = encode(config)
    back = decode(wire)
    assert isinstance(back, ConfigFrame)
    assert encode(back) == wire
    assert back.cfg_type == config.cfg_type and back.idcode == config.idcode
    assert [p.station for p in back.pmus] == [p.station for p in config.pmus]
    assert [p.channel_names for p in back.pmus] == [p.channel_names for p in config.pmus]
    if config.cfg_type != FrameType.CFG3:
        assert back == config  # CFG-1/2 lose nothing the strategy draws


@FAST
@given(config_and_frame())
def test_data_frames_round_trip(pair: tuple[ConfigFrame, DataFrame]) -> None:
    config, frame = pair
    wire = encode(frame)
    back = decode(wire, config=config)
    assert isinstance(back, DataFrame)
    assert encode(back) == wire  # decoded values encode to the very same bytes
    assert (back.soc, back.fracsec, back.time_quality) == (
        frame.soc,
        frame.fracsec,
        frame.time_quality,
    )
    for pmu, sent, got in zip(config.pmus, frame.pmus, back.pmus, strict=True):
        assert (got.stat, got.digitals) == (sent.stat, sent.digitals)
        for z, w in zip(sent.phasors, got.phasors, strict=True):
            floor = 1e-9 if pmu.format.phasors_float else 1e-3
            assert _same(z, w, 1e-6 * abs(z) + floor)
        assert _same(sent.freq_hz, got.freq_hz, 1e-9)
        assert _same(sent.rocof_hz_s, got.rocof_hz_s, 1e-9)
        for x, y in zip(sent.analogs, got.analogs, strict=True):
            assert _same(x, y, 1e-6 * abs(x) + 1e-6)


def _only_protocol_errors(data: bytes, config: ConfigFrame | None = None) -> None:
    with contextlib.suppress(C37118Error):
        decode(data, config=config)


@examples(500)
@given(st.binary(max_size=300))
def test_decode_of_random_bytes(data: bytes) -> None:
    _only_protocol_errors(data)
    _only_protocol_errors(b"\xaa" + data)


@examples(200)
@given(st.integers(0, 7), st.integers(0, 15), st.binary(max_size=400), configs())
def test_decode_of_random_payloads_behind_a_good_crc(
    frame_type: int, version: int, payload: bytes, config: ConfigFrame
) -> None:
    # A correct SYNC, FRAMESIZE and CHK let the bytes reach every field parser.
    body = struct.pack(">BBHHII", 0xAA, frame_type << 4 | version, 16 + len(payload), 1, 0, 0)
    _only_protocol_errors(body + payload + crc_bitwise(body + payload).to_bytes(2, "big"), config)


@FAST
@given(config_and_frame(), st.data())
def test_truncated_and_damaged_frames(
    pair: tuple[ConfigFrame, DataFrame], data: st.DataObject
) -> None:
    config, frame = pair
    for wire in (encode(config), encode(frame)):
        cut = data.draw(st.integers(0, len(wire) - 1))
        _only_protocol_errors(wire[:cut], config)
        bit = data.draw(st.integers(0, 8 * len(wire) - 1))
        flipped = bytearray(wire)
        flipped[bit // 8] ^= 1 << bit % 8
        try:
            decode(bytes(flipped), config=config)
        except C37118Error:
            pass
        else:  # CRC-CCITT finds every single-bit error
            raise AssertionError(f"bit {bit} flipped and not noticed")
        # The same damage with a repaired CHK goes past the CRC into the parsers.
        flipped[-2:] = crc_bitwise(bytes(flipped[:-2])).to_bytes(2, "big")
        _only_protocol_errors(bytes(flipped), config)


@examples(300)
@given(st.lists(st.binary(max_size=120), max_size=12))
def test_framer_on_random_bytes(chunks: list[bytes]) -> None:
    framer = FrameBuffer()
    out = [item for chunk in chunks for item in framer.feed(chunk)]
    assert all(isinstance(item, C37118Error) or hasattr(item, "idcode") for item in out)
    framed = sum(len(encode(item)) for item in out if not isinstance(item, C37118Error))
    total = sum(map(len, chunks))
    assert framer.skipped_bytes + framer.pending <= total
    assert framed <= total


GARBAGE = st.binary(max_size=40).map(lambda b: b.replace(b"\xaa", b"\x55"))


@FAST
@given(config_and_frame(), st.lists(GARBAGE, min_size=3, max_size=3), st.data())
def test_framer_recovers_every_frame_from_a_mangled_stream(
    pair: tuple[ConfigFrame, DataFrame], garbage: list[bytes], data: st.DataObject
) -> None:
    config, frame = pair
    frames = [encode(config), encode(frame), encode(frame)]
    stream = b"".join(g + f for g, f in zip(garbage, frames, strict=True))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    framer = FrameBuffer(config=config)  # a CFG-1 is not followed: data needs CFG-2 or CFG-3
    out = [item for chunk in chunks for item in framer.feed(chunk)]
    decoded = [item for item in out if not isinstance(item, C37118Error)]
    assert [encode(item) for item in decoded] == frames
    assert framer.skipped_bytes == sum(map(len, garbage)) and framer.pending == 0
    errors = [item for item in out if isinstance(item, C37118Error)]
    assert len(errors) <= sum(1 for g in garbage if g)
