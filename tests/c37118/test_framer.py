"""FrameBuffer on split, coalesced and damaged streams; FakePmu in memory."""

from __future__ import annotations

import cmath
import math
import struct

import msgspec
import pytest

from gridpilot.protocols.c37118 import (
    BadCrcError,
    BadSyncError,
    C37118Error,
    Command,
    CommandFrame,
    ConfigFrame,
    ConfigMismatchError,
    DataFormat,
    DataFrame,
    FrameBuffer,
    FrameType,
    HeaderFrame,
    MissingConfigError,
    PhasorChannel,
    PmuConfig,
    PmuData,
    decode,
    encode,
)
from gridpilot.protocols.c37118.testing import FakePmu

from .test_codec import crc_bitwise

CONFIG = ConfigFrame(
    idcode=7,
    data_rate=50,
    pmus=(PmuConfig(station="S1", idcode=71, phasors=(PhasorChannel(name="VA"),)),),
)


def data(i: int, config: ConfigFrame = CONFIG) -> bytes:
    values = PmuData(freq_hz=50.0 + i / 1000, phasors=(cmath.rect(1000.0 + i, 0.1),))
    return encode(DataFrame(idcode=7, soc=1000, fracsec=20_000 * i, config=config, pmus=(values,)))


def frames_of(items: list[object]) -> list[object]:
    return [item for item in items if not isinstance(item, C37118Error)]


def errors_of(items: list[object]) -> list[C37118Error]:
    return [item for item in items if isinstance(item, C37118Error)]


def test_coalesced_and_split_reads() -> None:
    stream = encode(CONFIG) + data(1) + data(2) + data(3)
    together = FrameBuffer().feed(stream)
    assert [type(f) for f in together] == [ConfigFrame, DataFrame, DataFrame, DataFrame]
    framer = FrameBuffer()
    one_by_one = [item for b in stream for item in framer.feed(bytes([b]))]
    assert one_by_one == together and framer.pending == 0 and framer.frames == 4
    framer = FrameBuffer()
    assert framer.feed(stream[:30]) == [] and framer.pending == 30


def test_garbage_is_skipped_counted_and_reported_once_per_run() -> None:
    framer = FrameBuffer(config=CONFIG)
    stream = b"\x00\x01\x02" + data(1) + b"\x55" * 10 + data(2)
    items = framer.feed(stream[:2]) + framer.feed(stream[2:30]) + framer.feed(stream[30:])
    assert len(frames_of(items)) == 2 and framer.skipped_bytes == 13
    runs = errors_of(items)
    assert [type(e) for e in runs] == [BadSyncError, BadSyncError]
    assert isinstance(runs[0], BadSyncError) and isinstance(runs[1], BadSyncError)
    assert (runs[0].skipped, runs[0].stream_offset) == (3, 0)
    assert (runs[1].skipped, runs[1].stream_offset) == (10, 3 + len(data(1)))


def test_a_false_sync_with_a_huge_framesize_does_not_stall_the_stream() -> None:
    framer = FrameBuffer(config=CONFIG)
    false_start = b"\xaa\x01\xff\xf0"  # claims 65520 bytes
    items = framer.feed(false_start + data(1) + data(2))
    assert len(frames_of(items)) == 2, items
    assert framer.skipped_bytes == 4 and framer.pending == 0


def test_a_damaged_frame_costs_only_itself() -> None:
    framer = FrameBuffer(config=CONFIG)
    damaged = bytearray(data(2))
    damaged[20] ^= 0x10
    items = framer.feed(data(1) + bytes(damaged) + data(3))
    assert [type(i) for i in items] == [DataFrame, BadCrcError, DataFrame]
    assert items[1].stream_offset == len(data(1))  # type: ignore[union-attr]
    assert framer.skipped_bytes == len(damaged)  # counted, reported once as the bad CHK


def test_a_good_crc_with_bad_content_is_reported_and_skipped_whole() -> None:
    body = struct.pack(">BBHHII", 0xAA, 0x62, 16, 7, 0, 0)  # frame type 6
    unknown = body + crc_bitwise(body).to_bytes(2, "big")
    items = FrameBuffer(config=CONFIG).feed(unknown + data(1))
    assert isinstance(items[0], C37118Error) and "unknown frame type 6" in str(items[0])
    assert isinstance(items[1], DataFrame)


def test_the_framer_follows_stream_configurations() -> None:
    framer = FrameBuffer()
    assert isinstance(framer.feed(data(1))[0], MissingConfigError)
    cfg1 = msgspec.structs.replace(CONFIG, cfg_type=FrameType.CFG1)
    framer.feed(encode(cfg1))
    assert framer.config is None  # CFG-1: what the PMU could send, not what it sends
    framer.feed(encode(CONFIG))
    assert framer.config == CONFIG and isinstance(framer.feed(data(1))[0], DataFrame)
    # a PMU that changes its format: the data no longer fits, until the new CFG-2 arrives
    ints = PmuConfig(
        station="S1",
        idcode=71,
        format=DataFormat(phasors_float=False, polar=False),
        phasors=(PhasorChannel(name="VA", phunit=100_000),),  # 1 V per bit
    )
    changed = msgspec.structs.replace(CONFIG, pmus=(ints,))
    assert isinstance(framer.feed(data(2, changed))[0], ConfigMismatchError)
    framer.feed(encode(changed))
    assert isinstance(framer.feed(data(2, changed))[0], DataFrame)
    fixed = FrameBuffer(config=CONFIG, follow_config=False)
    fixed.feed(encode(changed))
    assert fixed.config is CONFIG


def test_max_frame_size_rejects_long_candidates() -> None:
    framer = FrameBuffer(max_frame_size=100)
    items = framer.feed(encode(HeaderFrame(idcode=7, text="x" * 200)) + encode(CONFIG))
    assert isinstance(items[-1], ConfigFrame) and framer.skipped_bytes == 216
    with pytest.raises(ValueError):
        FrameBuffer(max_frame_size=10)


def test_unreadable_polar_values_become_nan_not_errors() -> None:
    wire = bytearray(data(1))
    wire[16:24] = struct.pack(">ff", math.inf, math.inf)  # rect(inf, inf) has no value
    wire[-2:] = crc_bitwise(bytes(wire[:-2])).to_bytes(2, "big")
    frame = decode(bytes(wire), config=CONFIG)
    assert isinstance(frame, DataFrame) and cmath.isnan(frame.pmus[0].phasors[0])


# -- FakePmu ------------------------------------------------------------------------------------


def command(code: int, idcode: int = 7) -> bytes:
    return encode(CommandFrame(idcode=idcode, command=code))


def sample(t_ns: int) -> list[PmuData]:
    return [PmuData(freq_hz=50.0, phasors=(complex(t_ns % 1000, 1.0),))]


def test_fake_pmu_answers_commands_and_streams_when_on() -> None:
    clock = iter(range(1_700_000_000_000_000_000, 1_800_000_000_000_000_000, 1_000_000)).__next__
    pmu = FakePmu(config=CONFIG, sample=sample, header="bay 1", clock=clock)
    replies = FrameBuffer().feed(
        pmu.receive(
            command(Command.SEND_HDR)
            + command(Command.SEND_CFG1)
            + command(Command.SEND_CFG2)
            + command(Command.SEND_CFG3)
        )
    )
    assert [type(r) for r in replies] == [HeaderFrame, ConfigFrame, ConfigFrame, ConfigFrame]
    header, cfg1, cfg2, cfg3 = replies
    assert isinstance(header, HeaderFrame) and header.text == "bay 1"
    assert [c.cfg_type for c in (cfg1, cfg2, cfg3)] == [  # type: ignore[union-attr]
        FrameType.CFG1,
        FrameType.CFG2,
        FrameType.CFG3,
    ]
    assert isinstance(cfg2, ConfigFrame) and cfg2.t_ns == 1_700_000_000_002_000_000
    assert cfg2.pmus == CONFIG.pmus
    assert pmu.tick(10**18) == b""
    pmu.receive(command(Command.TURN_ON))
    frame = decode(pmu.tick(1_700_000_000_020_000_000), config=CONFIG)
    assert isinstance(frame, DataFrame) and frame.t_ns == 1_700_000_000_020_000_000
    pmu.receive(command(Command.TURN_OFF))
    assert pmu.tick(10**18) == b"" and len(pmu.commands) == 6


def test_fake_pmu_ignores_other_streams_and_counts_bad_input() -> None:
    pmu = FakePmu(config=CONFIG, sample=sample)
    assert pmu.receive(command(Command.SEND_CFG2, idcode=8)) == b""
    assert pmu.receive(b"\x01\x02\x03" + command(Command.TURN_ON)) == b""
    assert pmu.ignored == 1 and pmu.transmitting and pmu.bad_bytes == 3
    assert len(pmu.errors) == 1 and isinstance(pmu.errors[0], BadSyncError)
