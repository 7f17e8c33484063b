"""Hypothesis strategies for C37.118 configurations and the data frames that fit them."""

from __future__ import annotations

import cmath
import math
import string
import struct

from hypothesis import strategies as st

from gridpilot.protocols.c37118 import (
    AnalogChannel,
    ConfigFrame,
    DataFormat,
    DataFrame,
    DigitalWord,
    FrameType,
    PhasorChannel,
    PhasorKind,
    PmuConfig,
    PmuData,
)

U16 = st.integers(0, 0xFFFF)
# CFG-1/2 names: 16 ASCII bytes, trailing blanks are padding and do not come back
NAME16 = st.text(string.ascii_letters + string.digits + " _-.:/", max_size=16).map(str.rstrip)
# CFG-3 names: UTF-8, up to 255 bytes
NAME3 = st.text(max_size=40).filter(lambda s: len(s.encode("utf-8", "surrogatepass")) <= 255)
FLOAT32 = st.floats(width=32, allow_nan=False)
FINITE32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
# away from 0 and from huge values, so that raw * scale + offset keeps the raw value's bits
SCALE32 = st.floats(0.0009765625, 8192.0, width=32)
OFFSET32 = st.floats(-1024.0, 1024.0, width=32)

FORMATS = [DataFormat.from_word(word) for word in range(16)]
CFG_TYPES = [FrameType.CFG1, FrameType.CFG2, FrameType.CFG3]


def f32(x: float) -> float:
    return struct.unpack(">f", struct.pack(">f", x))[0]


@st.composite
def pmu_configs(draw: st.DrawFn, *, cfg3: bool, fmt: DataFormat | None = None) -> PmuConfig:
    name = NAME3 if cfg3 else NAME16
    n_ph, n_an, n_dg = draw(st.integers(0, 4)), draw(st.integers(0, 3)), draw(st.integers(0, 2))
    phasors = []
    for _ in range(n_ph):
        extra = {}
        if cfg3:
            extra = {
                "component": draw(st.integers(0, 7)),
                "modification": draw(U16),
                "user_flags": draw(st.integers(0, 255)),
                "scale": draw(SCALE32),
                "angle_offset_rad": draw(st.floats(-3.0, 3.0, width=32)),
            }
        else:
            extra = {"phunit": draw(st.integers(1, 0xFFFFFF))}
        phasors.append(
            PhasorChannel(name=draw(name), kind=draw(st.sampled_from(PhasorKind)), **extra)
        )
    analogs = []
    for _ in range(n_an):
        if cfg3:
            extra = {"scale": draw(SCALE32), "offset": draw(OFFSET32)}
        else:
            extra = {
                "kind": draw(st.integers(0, 255)),
                "anunit": draw(st.integers(-0x800000, 0x7FFFFF).filter(bool)),
            }
        analogs.append(AnalogChannel(name=draw(name), **extra))
    digitals = [
        DigitalWord(
            labels=tuple(draw(st.lists(name, min_size=16, max_size=16))),
            normal=draw(U16),
            valid=draw(U16),
        )
        for _ in range(n_dg)
    ]
    cfg3_fields = {}
    if cfg3:
        cfg3_fields = {
            "global_pmu_id": draw(st.binary(min_size=16, max_size=16)),
            "latitude_deg": draw(FLOAT32),
            "longitude_deg": draw(FLOAT32),
            "elevation_m": draw(FLOAT32),
            "service_class": draw(st.sampled_from("MP")),
            "window_us": draw(st.integers(-(2**31), 2**31 - 1)),
            "group_delay_us": draw(st.integers(-(2**31), 2**31 - 1)),
        }
    return PmuConfig(
        station=draw(name),
        idcode=draw(U16),
        phasors=tuple(phasors),
        analogs=tuple(analogs),
        digitals=tuple(digitals),
        format=fmt if fmt is not None else draw(st.sampled_from(FORMATS)),
        nominal_freq_hz=draw(st.sampled_from((50, 60))),
        cfgcnt=draw(U16),
        **cfg3_fields,
    )


@st.composite
def configs(
    draw: st.DrawFn, *, cfg_type: FrameType | None = None, fmt: DataFormat | None = None
) -> ConfigFrame:
    kind = cfg_type if cfg_type is not None else draw(st.sampled_from(CFG_TYPES))
    n = draw(st.integers(1, 4))
    pmus = tuple(draw(pmu_configs(cfg3=kind == FrameType.CFG3, fmt=fmt)) for _ in range(n))
    return ConfigFrame(
        idcode=draw(U16),
        soc=draw(st.integers(0, 2**32 - 1)),
        fracsec=draw(st.integers(0, 0xFFFFFF)),
        time_quality=draw(st.integers(0, 255)),
        version=draw(st.sampled_from((1, 2))),
        cfg_type=kind,
        pmus=pmus,
        time_base=draw(st.integers(1, 0xFFFFFF)),
        data_rate=draw(st.integers(-0x8000, 0x7FFF)),
    )


@st.composite
def pmu_values(draw: st.DrawFn, pmu: PmuConfig, cfg3: bool) -> PmuData:
    """Values that the PMU's formats can carry: integers are drawn on the wire's grid."""
    fmt = pmu.format
    phasors = []
    for channel in pmu.phasors:
        if draw(st.integers(0, 20)) == 0:
            phasors.append(complex(math.nan, math.nan))  # absent data
            continue
        if fmt.phasors_float:
            # finite: an infinite magnitude has no angle to keep
            phasors.append(complex(draw(FINITE32), draw(FINITE32)))
            continue
        k = channel.bit_scale if cfg3 else channel.phunit * 1e-5
        theta = channel.angle_offset_rad if cfg3 else 0.0
        if fmt.polar:
            z = cmath.rect(
                draw(st.integers(0, 0xFFFF)) * k, draw(st.integers(-31415, 31415)) * 1e-4
            )
        else:
            z = complex(draw(st.integers(-32767, 32767)), draw(st.integers(-32767, 32767))) * k
        phasors.append(z * cmath.rect(1.0, theta))
    if fmt.freq_float:
        freq, rocof = draw(FLOAT32), draw(FLOAT32)
    else:
        freq = pmu.nominal_freq_hz + draw(st.integers(-32767, 32767)) / 1000
        rocof = draw(st.integers(-32767, 32767)) / 100
    analogs = []
    for channel in pmu.analogs:
        if fmt.analogs_float:
            analogs.append(draw(FLOAT32))
        else:
            k = channel.bit_scale if cfg3 else float(channel.anunit)
            off = channel.offset if cfg3 else 0.0
            analogs.append(draw(st.integers(-32767, 32767)) * k + off)
    return PmuData(
        stat=draw(U16),
        phasors=tuple(phasors),
        freq_hz=freq,
        rocof_hz_s=rocof,
        analogs=tuple(analogs),
        digitals=tuple(draw(U16) for _ in pmu.digitals),
    )


@st.composite
def data_frames(draw: st.DrawFn, config: ConfigFrame) -> DataFrame:
    cfg3 = config.cfg_type == FrameType.CFG3
    return DataFrame(
        idcode=config.idcode,
        soc=draw(st.integers(0, 2**32 - 1)),
        fracsec=draw(st.integers(0, 0xFFFFFF)),
        time_quality=draw(st.integers(0, 255)),
        version=draw(st.sampled_from((1, 2))),
        config=config,
        pmus=tuple(draw(pmu_values(pmu, cfg3)) for pmu in config.pmus),
    )


@st.composite
def config_and_frame(draw: st.DrawFn, **kwargs: object) -> tuple[ConfigFrame, DataFrame]:
    config = draw(configs(**kwargs))  # type: ignore[arg-type]
    return config, draw(data_frames(config))
