"""Frames to bytes and back: every frame type, every FORMAT combination, every error."""

from __future__ import annotations

import cmath
import math
import struct

import msgspec
import pytest

from gridpilot.core.errors import ProtocolError
from gridpilot.protocols.c37118 import (
    AnalogChannel,
    BadCrcError,
    BadSyncError,
    C37118Error,
    Command,
    CommandFrame,
    ConfigFrame,
    ConfigMismatchError,
    DataError,
    DataFormat,
    DataFrame,
    DigitalWord,
    FrameLengthError,
    FrameType,
    HeaderFrame,
    InvalidValueError,
    MalformedFrameError,
    MissingConfigError,
    PhasorChannel,
    PhasorComponent,
    PhasorKind,
    PmuConfig,
    PmuData,
    PmuTimeQuality,
    Stat,
    TruncatedFrameError,
    UnknownFrameTypeError,
    UnlockedTime,
    UnsupportedError,
    crc_ccitt,
    decode,
    encode,
    from_ns,
    to_ns,
)

from .strategies import FORMATS


def crc_bitwise(data: bytes) -> int:
    """A reference CRC-CCITT (0x1021, init 0xFFFF), bit by bit as the standard describes it."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = (crc << 1 ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def raw_frame(frame_type: int, payload: bytes, *, version: int = 2, idcode: int = 7) -> bytes:
    """A frame with a correct CHK around any payload, to reach the parsers behind the CRC."""
    body = struct.pack(">BBHHII", 0xAA, frame_type << 4 | version, 16 + len(payload), idcode, 0, 0)
    body += payload
    return body + crc_bitwise(body).to_bytes(2, "big")


def station(fmt: DataFormat, *, idcode: int = 11, nominal: int = 50) -> PmuConfig:
    return PmuConfig(
        station=f"PMU {fmt.word}",
        idcode=idcode,
        format=fmt,
        nominal_freq_hz=nominal,
        phasors=(
            PhasorChannel(name="VA", phunit=915527, component=PhasorComponent.PHASE_A),
            PhasorChannel(name="I1", kind=PhasorKind.CURRENT, phunit=45776, scale=0.5),
        ),
        analogs=(AnalogChannel(name="P_MW", anunit=10), AnalogChannel(name="Q", anunit=-3)),
        digitals=(DigitalWord(labels=tuple(f"BRK{i}" for i in range(16)), valid=0x00FF),),
    )


def values(t: int) -> PmuData:
    return PmuData(
        stat=Stat(time_quality=PmuTimeQuality.UNDER_1US).word,
        freq_hz=50.0 + 0.013 * t,
        rocof_hz_s=-0.25,
        phasors=(cmath.rect(132_000.0, 0.52 + t), cmath.rect(410.0, -2.9)),
        analogs=(1230.0, -33.0),
        digitals=(0b1010_0101,),
    )


def close(a: complex | float, b: complex | float, tol: float) -> bool:
    return abs(a - b) <= tol


# -- CRC ----------------------------------------------------------------------------------------


def test_crc_known_vector() -> None:
    # CRC-16/CCITT-FALSE check value: the algorithm C37.118 specifies
    assert crc_ccitt(b"123456789") == 0x29B1
    assert crc_ccitt(b"") == 0xFFFF


def test_crc_matches_a_bitwise_reference_and_pyc37() -> None:
    from pyc37.utils import crc16xmodem  # an independent, table-driven implementation

    frame = encode(CommandFrame(idcode=7, soc=1_149_580_800, command=Command.TURN_ON))
    assert frame[:16] == bytes.fromhex("AA 42 00 12 00 07 44 85 36 00 00 00 00 00 00 02")
    for data in (frame[:-2], bytes(range(256)), b"\xaa" * 1000):
        assert crc_ccitt(data) == crc_bitwise(data) == crc16xmodem(data, 0xFFFF)
    assert int.from_bytes(frame[-2:], "big") == crc_bitwise(frame[:-2])


# -- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg_type", [FrameType.CFG1, FrameType.CFG2, FrameType.CFG3])
@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f"format{f.word}")
def test_every_format_round_trips(fmt: DataFormat, cfg_type: FrameType) -> None:
    other = DataFormat.from_word(15 - fmt.word)  # a second PMU with the opposite format
    config = ConfigFrame(
        idcode=7,
        soc=1_700_000_000,
        fracsec=123_456,
        cfg_type=cfg_type,
        data_rate=50,
        pmus=(station(fmt), station(other, idcode=12, nominal=60)),
    )
    assert decode(encode(config)) == _as_decoded(config)
    config = decode(encode(config))
    assert isinstance(config, ConfigFrame)

    frame = DataFrame(
        idcode=7, soc=1_700_000_001, fracsec=20_000, config=config, pmus=(values(0), values(1))
    )
    wire = encode(frame)
    back = decode(wire, config=config)
    assert isinstance(back, DataFrame)
    assert encode(back) == wire  # stable: a relayed frame is the same frame
    assert back.t_ns == 1_700_000_001_020_000_000
    for pmu, sent, got in zip(config.pmus, frame.pmus, back.pmus, strict=True):
        f = pmu.format
        assert got.stat == sent.stat and got.digitals == sent.digitals
        for channel, z, w in zip(pmu.phasors, sent.phasors, got.phasors, strict=True):
            k = channel.bit_scale if cfg_type == FrameType.CFG3 else channel.phunit * 1e-5
            # integers: half a bit per part; polar also 0.5e-4 rad of the angle
            tol = abs(z) * 4e-7 if f.phasors_float else k + abs(z) * 1e-4 * f.polar
            assert close(z, w, tol), (channel.name, z, w)
        assert close(got.freq_hz, sent.freq_hz, 1e-5 if f.freq_float else 5e-4)
        assert close(got.rocof_hz_s, sent.rocof_hz_s, 1e-5 if f.freq_float else 5e-3)
        for channel, x, y in zip(pmu.analogs, sent.analogs, got.analogs, strict=True):
            assert close(x, y, 1e-3 if f.analogs_float else abs(channel.bit_scale) / 2)


def _as_decoded(config: ConfigFrame) -> ConfigFrame:
    """What comes back: CFG-1/2 carry no CFG-3 fields, CFG-3 carries float scales only."""
    pmus = []
    for pmu in config.pmus:
        if config.cfg_type == FrameType.CFG3:
            phasors = tuple(
                msgspec.structs.replace(p, phunit=0, scale=_f32(p.bit_scale)) for p in pmu.phasors
            )
            analogs = tuple(
                AnalogChannel(name=a.name, scale=_f32(a.bit_scale), offset=a.offset)
                for a in pmu.analogs
            )
        else:
            phasors = tuple(
                PhasorChannel(name=p.name, kind=p.kind, phunit=p.phunit) for p in pmu.phasors
            )
            analogs = pmu.analogs
        pmus.append(msgspec.structs.replace(pmu, phasors=phasors, analogs=analogs))
    return msgspec.structs.replace(config, pmus=tuple(pmus))


def _f32(x: float) -> float:
    return struct.unpack(">f", struct.pack(">f", x))[0]


def test_header_and_command_frames_round_trip() -> None:
    header = HeaderFrame(
        idcode=9, soc=5, fracsec=7, time_quality=0x0A, text="Bay 1 \u2013 feeder 3"
    )
    assert decode(encode(header)) == header
    for code in [*Command, 0x0100, 0x0FFF]:
        command = CommandFrame(idcode=9, soc=1, command=code)
        assert decode(encode(command)) == command
    extended = CommandFrame(idcode=9, command=Command.EXTENDED, extended=b"\x00\x01\x02\x03")
    assert decode(encode(extended)) == extended
    assert decode(encode(extended)).command is Command.EXTENDED  # type: ignore[union-attr]


def test_long_utf8_names_survive_cfg3_and_are_cut_in_cfg2() -> None:
    name = "Umspannwerk S\u00fcd \u2013 Abgang 17, Spannung L1-N"
    pmu = PmuConfig(station=name, idcode=3, phasors=(PhasorChannel(name=name),))
    cfg3 = ConfigFrame(idcode=3, data_rate=25, cfg_type=FrameType.CFG3, pmus=(pmu,))
    back3 = decode(encode(cfg3))
    assert isinstance(back3, ConfigFrame)
    assert back3.pmus[0].station == name and back3.pmus[0].phasors[0].name == name
    cfg2 = msgspec.structs.replace(cfg3, cfg_type=FrameType.CFG2)
    back2 = decode(encode(cfg2))
    assert isinstance(back2, ConfigFrame)
    assert back2.pmus[0].station == "Umspannwerk S?d "[:16].rstrip()  # 16 ASCII bytes


def test_cfg3_location_and_service_fields() -> None:
    pmu = PmuConfig(
        station="S",
        idcode=3,
        global_pmu_id=bytes(range(16)),
        latitude_deg=52.5,
        longitude_deg=13.25,
        elevation_m=34.0,
        service_class="P",
        window_us=40_000,
        group_delay_us=-20_000,
    )
    cfg3 = ConfigFrame(idcode=3, data_rate=50, cfg_type=FrameType.CFG3, pmus=(pmu,))
    assert decode(encode(cfg3)) == cfg3
    unknown = msgspec.structs.replace(pmu, latitude_deg=math.inf)  # "location not given"
    nowhere = msgspec.structs.replace(cfg3, pmus=(unknown,))
    assert decode(encode(nowhere)) == nowhere


# -- fields -------------------------------------------------------------------------------------


def test_time_conversions() -> None:
    assert to_ns(1_700_000_000, 500_000, 1_000_000) == 1_700_000_000_500_000_000
    assert from_ns(1_700_000_000_500_000_000, 1_000_000) == (1_700_000_000, 500_000)
    assert from_ns(1_999_999_999, 1_000) == (2, 0)  # rounds up into the next second
    # 30 frames/s with TIME_BASE 2^24-1: FRACSEC k*TB/30 comes back to the same tick
    time_base = 0xFFFFFF
    for k in range(30):
        fracsec = round(k * time_base / 30)
        assert from_ns(to_ns(10, fracsec, time_base), time_base) == (10, fracsec)


def test_stat_word_bit_by_bit() -> None:
    stat = Stat(
        data_error=DataError.TEST_MODE,
        sync_lost=True,
        sorted_by_arrival=False,
        trigger=True,
        config_change=True,
        data_modified=False,
        time_quality=PmuTimeQuality.UNDER_10US,
        unlocked=UnlockedTime.UNDER_1000S,
        trigger_reason=9,
    )
    assert stat.word == 0b10_1_0_1_1_0_011_10_1001
    assert Stat.from_word(stat.word) == stat
    data = PmuData(freq_hz=50.0, stat=stat.word)
    assert data.status == stat and not data.data_valid and not data.time_synced
    assert PmuData(freq_hz=50.0).data_valid and PmuData(freq_hz=50.0).time_synced
    with pytest.raises(InvalidValueError):
        Stat(trigger_reason=16)


def test_time_quality_byte() -> None:
    frame = HeaderFrame(idcode=1, time_quality=0x40 | 0x10 | 0x0A)
    assert frame.leap_second_negative and frame.leap_second_pending
    assert not frame.leap_second_occurred and frame.time_quality_code == 0x0A


def test_absent_values_are_nan_both_ways() -> None:
    ints = DataFormat(polar=False, phasors_float=False, analogs_float=False, freq_float=False)
    polar_ints = msgspec.structs.replace(ints, polar=True)
    floats = DataFormat()
    pmus = tuple(
        PmuConfig(
            station="S",
            idcode=i,
            format=fmt,
            phasors=(PhasorChannel(name="V", phunit=100),),
            analogs=(AnalogChannel(name="A"),),
        )
        for i, fmt in enumerate((ints, polar_ints, floats))
    )
    config = ConfigFrame(idcode=1, data_rate=10, pmus=pmus)
    nan = math.nan
    missing = PmuData(
        freq_hz=nan, rocof_hz_s=nan, phasors=(complex(nan, nan),), analogs=(nan,), digitals=()
    )
    wire = encode(DataFrame(idcode=1, config=config, pmus=(missing,) * 3))
    # integer fields carry 0x8000
    assert wire[14:26] == bytes.fromhex("0000 8000 8000 8000 8000 8000")
    back = decode(wire, config=config)
    assert isinstance(back, DataFrame)
    for pmu in back.pmus:
        assert all(math.isnan(x) for x in (pmu.freq_hz, pmu.rocof_hz_s, *pmu.analogs))
        assert cmath.isnan(pmu.phasors[0])


# -- decode errors ------------------------------------------------------------------------------


def _config() -> ConfigFrame:
    return ConfigFrame(idcode=7, data_rate=50, pmus=(station(DataFormat()),))


def _data(config: ConfigFrame) -> bytes:
    return encode(DataFrame(idcode=config.idcode, config=config, pmus=(values(0),)))


def test_decode_errors_are_typed_and_located() -> None:
    config = _config()
    wire = _data(config)
    cases: list[tuple[bytes, type[C37118Error], ConfigFrame | None]] = [
        (b"", TruncatedFrameError, config),
        (b"\xaa\x01", TruncatedFrameError, config),
        (b"\x55" + wire[1:], BadSyncError, config),
        (wire[:-1], TruncatedFrameError, config),
        (wire + b"\x00", FrameLengthError, config),
        (wire[:2] + b"\x00\x0f" + wire[4:], FrameLengthError, config),
        (wire[:20] + bytes([wire[20] ^ 0x04]) + wire[21:], BadCrcError, config),
        (raw_frame(6, b""), UnknownFrameTypeError, None),
        (raw_frame(7, b"\x00\x02"), UnknownFrameTypeError, None),
        (raw_frame(4, b"\x00\x02", version=3), UnsupportedError, None),
        (wire, MissingConfigError, None),
        (raw_frame(4, b""), MalformedFrameError, None),  # a command without its command word
    ]
    for data, error, cfg in cases:
        with pytest.raises(error) as info:
            decode(data, config=cfg)
        assert isinstance(info.value, ProtocolError) and info.value.protocol == "IEEE C37.118.2"
    with pytest.raises(BadCrcError) as crc:
        decode(wire[:-1] + bytes([wire[-1] ^ 1]), config=config)
    assert crc.value.received ^ crc.value.computed == 1 and crc.value.offset == len(wire) - 2


def test_data_frame_that_does_not_fit_its_config() -> None:
    config = _config()
    wire = _data(config)
    smaller = msgspec.structs.replace(
        config, pmus=(msgspec.structs.replace(config.pmus[0], analogs=()),)
    )
    with pytest.raises(ConfigMismatchError, match="bytes where the configuration gives"):
        decode(wire, config=smaller)
    with pytest.raises(ConfigMismatchError, match="IDCODE 7 where the configuration is for 8"):
        decode(wire, config=msgspec.structs.replace(config, idcode=8))


def test_malformed_configuration_frames() -> None:
    good = encode(ConfigFrame(idcode=7, data_rate=50, pmus=(station(DataFormat()),)))
    payload = good[14:-2]
    # PHUNIT of the first phasor: after TIME_BASE, NUM_PMU, STN, 5 counts and 21 names
    at = 4 + 2 + 16 + 10 + 16 * (2 + 2 + 16)
    bad_type = payload[:at] + b"\x07" + payload[at + 1 :]
    with pytest.raises(MalformedFrameError, match="PHUNIT"):
        decode(raw_frame(3, bad_type))
    with pytest.raises(TruncatedFrameError, match="CHNAM"):
        decode(raw_frame(3, payload[:40]))
    with pytest.raises(MalformedFrameError, match="2 bytes left"):
        decode(raw_frame(3, payload + b"\x00\x00"))
    huge_count = payload[: 6 + 16 + 4] + b"\xff\xff" + payload[6 + 16 + 6 :]  # PHNMR 65535
    with pytest.raises(TruncatedFrameError):
        decode(raw_frame(3, huge_count))
    fragment = encode(ConfigFrame(idcode=7, data_rate=50, cfg_type=FrameType.CFG3, pmus=()))
    with pytest.raises(UnsupportedError, match="CONT_IDX 1"):
        decode(raw_frame(5, b"\x00\x01" + fragment[16:-2]))


# -- encode errors ------------------------------------------------------------------------------


def test_values_that_do_not_fit_are_refused() -> None:
    ints = DataFormat(polar=False, phasors_float=False, analogs_float=False, freq_float=False)
    config = ConfigFrame(idcode=7, data_rate=50, pmus=(station(ints),))
    ok = values(0)
    too_big = msgspec.structs.replace(ok, phasors=(complex(1e9, 0), ok.phasors[1]))
    wrong_count = msgspec.structs.replace(ok, analogs=(1.0,))
    freq_off = msgspec.structs.replace(ok, freq_hz=90.0)
    for pmu in (too_big, wrong_count, freq_off):
        with pytest.raises(InvalidValueError):
            encode(DataFrame(idcode=7, config=config, pmus=(pmu,)))
    floats = ConfigFrame(idcode=7, data_rate=50, pmus=(station(DataFormat()),))
    with pytest.raises(InvalidValueError, match="float"):
        huge = msgspec.structs.replace(ok, freq_hz=1e39)
        encode(DataFrame(idcode=7, config=floats, pmus=(huge,)))
    with pytest.raises(InvalidValueError, match="65535"):
        encode(HeaderFrame(idcode=1, text="x" * 70_000))


def test_constructors_validate_at_once() -> None:
    with pytest.raises(ValueError, match="50 or 60"):
        PmuConfig(station="S", idcode=1, nominal_freq_hz=55)
    with pytest.raises(InvalidValueError, match="idcode"):
        CommandFrame(idcode=70_000, command=Command.TURN_ON)
    with pytest.raises(InvalidValueError, match="16 labels"):
        DigitalWord(labels=("a",))
    with pytest.raises(InvalidValueError, match="time_base"):
        ConfigFrame(idcode=1, data_rate=50, time_base=0, pmus=())
    with pytest.raises(InvalidValueError, match="255 bytes"):
        PhasorChannel(name="x" * 256)


def _polar_float_config() -> ConfigFrame:
    return ConfigFrame(
        idcode=7,
        data_rate=50,
        pmus=(
            PmuConfig(
                station="Bay 1",
                idcode=71,
                format=DataFormat(polar=True, phasors_float=True),
                phasors=(PhasorChannel(name="VA"), PhasorChannel(name="VB")),
            ),
        ),
    )


@pytest.mark.parametrize(
    "z", [complex(math.inf, 0), complex(0, -math.inf), complex(math.inf, math.inf)]
)
def test_an_infinite_phasor_is_refused_in_polar_float(z: complex) -> None:
    # An infinite complex number keeps one of eight directions: its angle cannot round-trip.
    config = _polar_float_config()
    frame = DataFrame(
        idcode=7,
        soc=1,
        fracsec=0,
        config=config,
        pmus=(PmuData(freq_hz=50.0, phasors=(z, 1 + 1j)),),
    )
    with pytest.raises(InvalidValueError, match="VA"):
        encode(frame)


@pytest.mark.parametrize("magnitude", [math.inf, -math.inf])
def test_an_infinite_polar_float_magnitude_decodes_as_absent_and_then_round_trips(
    magnitude: float,
) -> None:
    config = _polar_float_config()
    good = DataFrame(
        idcode=7,
        soc=1,
        fracsec=0,
        config=config,
        pmus=(PmuData(freq_hz=50.0, phasors=(2 + 0j, 1 + 1j)),),
    )
    wire = bytearray(encode(good))
    at = 16  # after the 14-byte header and STAT: VA's magnitude
    struct.pack_into(">f", wire, at, magnitude)
    struct.pack_into(">f", wire, at + 4, 0.5)  # an angle the complex value could not keep
    wire[-2:] = crc_ccitt(bytes(wire[:-2])).to_bytes(2, "big")
    back = decode(bytes(wire), config=config)
    assert isinstance(back, DataFrame)
    va, vb = back.pmus[0].phasors
    assert cmath.isnan(va) and abs(vb - (1 + 1j)) < 1e-6  # one bad value, not a lost frame
    again = encode(back)  # absent data: NaN on the wire, and stable from there on
    assert encode(decode(again, config=config)) == again
    assert struct.unpack_from(">f", again, at)[0] != struct.unpack_from(">f", again, at)[0]
