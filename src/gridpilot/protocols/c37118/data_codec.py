"""Data frames to values and back, against a configuration compiled once into a layout.

A layout is one ``struct.Struct`` for the whole frame plus, per PMU, a function that turns its
slice of the unpacked tuple into a ``PmuData``. Integer fields at -32768 are "missing" (NaN),
as C37.118.2 asks of a PDC that fills in absent data.
"""

from __future__ import annotations

import cmath
import math
import struct
from collections.abc import Callable, Sequence
from operator import mul
from typing import Any

from gridpilot.protocols.c37118.codes import (
    FrameType,
)
from gridpilot.protocols.c37118.errors import ConfigMismatchError, InvalidValueError
from gridpilot.protocols.c37118.frames import (
    ConfigFrame,
    DataFrame,
    PmuConfig,
    PmuData,
)
from gridpilot.protocols.c37118.wire import SYNC, crc_ccitt

Values = tuple[Any, ...]
Phasors = tuple[complex, ...]
MISSING = -32768  # 0x8000
NAN = math.nan
NAN_PHASOR = complex(NAN, NAN)
ANGLE_LSB_RAD = 1e-4  # 16-bit polar angles are radians * 10^4
_CACHE_SIZE = 32
_PI32 = struct.unpack(">f", struct.pack(">I", 0x40490FDA))[0]  # the float32 just below pi
_MAX_ANGLE_BITS = 31415  # likewise for 16-bit angles: 31416 * 1e-4 rad is above pi


class DataLayout:
    """How the data frames of one configuration are laid out; build once, use per frame."""

    def __init__(self, config: ConfigFrame) -> None:
        self.config = config
        cfg3 = config.cfg_type is FrameType.CFG3
        parts = [">BBHHII"]  # SYNC, type/version, FRAMESIZE, IDCODE, SOC, FRACSEC
        self._decoders: list[Callable[[Values], PmuData]] = []
        self._encoders: list[Callable[[PmuData], list[Any]]] = []
        index = 6
        for pmu in config.pmus:
            fmt = pmu.format
            n_ph, n_an, n_dg = len(pmu.phasors), len(pmu.analogs), len(pmu.digitals)
            phasor = "ff" if fmt.phasors_float else "Hh" if fmt.polar else "hh"
            parts.append(
                "H"  # STAT
                + phasor * n_ph
                + ("ff" if fmt.freq_float else "hh")
                + ("f" if fmt.analogs_float else "h") * n_an
                + "H" * n_dg
            )
            self._decoders.append(_pmu_decoder(pmu, index, cfg3))
            self._encoders.append(_pmu_encoder(pmu, cfg3))
            index += 1 + 2 * n_ph + 2 + n_an + n_dg
        parts.append("H")  # CHK
        self._struct = struct.Struct("".join(parts))
        self.size = self._struct.size

    def decode(self, data: bytes) -> DataFrame:
        """A data frame whose SYNC, FRAMESIZE and CRC have been checked already."""
        config = self.config
        if len(data) != self.size:
            raise ConfigMismatchError(
                f"{len(data)} bytes where the configuration gives {self.size}",
                idcode=config.idcode,
            )
        values = self._struct.unpack(data)
        if values[3] != config.idcode:
            raise ConfigMismatchError(
                f"IDCODE {values[3]} where the configuration is for {config.idcode}",
                idcode=config.idcode,
            )
        decoders = self._decoders
        if len(decoders) == 1:
            pmus: tuple[PmuData, ...] = (decoders[0](values),)
        else:
            pmus = tuple([decode(values) for decode in decoders])
        word = values[5]
        return DataFrame(
            idcode=values[3],
            soc=values[4],
            fracsec=word & 0xFFFFFF,
            time_quality=word >> 24,
            version=values[1] & 0x0F,
            config=config,
            pmus=pmus,
        )

    def encode(self, frame: DataFrame) -> bytes:
        if len(frame.pmus) != len(self._encoders):
            raise InvalidValueError(
                "pmus", len(frame.pmus), f"the configuration has {len(self._encoders)} PMUs"
            )
        flat: list[Any] = [
            SYNC,
            frame.version,  # frame type DATA is 0
            self.size,
            frame.idcode,
            frame.soc,
            frame.time_quality << 24 | frame.fracsec,
        ]
        for encode, pmu in zip(self._encoders, frame.pmus, strict=True):
            flat.extend(encode(pmu))
        flat.append(0)
        try:
            packed = bytearray(self._struct.pack(*flat))
        except (struct.error, OverflowError) as error:
            raise InvalidValueError("data frame", frame.idcode, str(error)) from None
        packed[-2:] = crc_ccitt(memoryview(packed)[:-2]).to_bytes(2, "big")
        return bytes(packed)


_layouts: dict[int, tuple[ConfigFrame, DataLayout]] = {}


def layout_for(config: ConfigFrame) -> DataLayout:
    """The layout of ``config``, cached by identity (the cache keeps the config alive, so an id
    is never reused while its entry exists)."""
    entry = _layouts.get(id(config))
    if entry is not None:
        return entry[1]
    layout = DataLayout(config)
    if len(_layouts) >= _CACHE_SIZE:
        del _layouts[next(iter(_layouts))]
    _layouts[id(config)] = (config, layout)
    return layout


# -- decoding -----------------------------------------------------------------------------------


def _pmu_decoder(pmu: PmuConfig, start: int, cfg3: bool) -> Callable[[Values], PmuData]:
    fmt = pmu.format
    a = start + 1  # first phasor value
    f = a + 2 * len(pmu.phasors)  # FREQ, then DFREQ
    b = f + 2  # first analog
    c = b + len(pmu.analogs)  # first digital
    end = c + len(pmu.digitals)
    phasors = _phasor_reader(pmu, a, f, cfg3)
    analogs = _analog_reader(pmu, b, c, cfg3)
    if fmt.freq_float:

        def decode(v: Values) -> PmuData:
            return PmuData(
                freq_hz=v[f],
                rocof_hz_s=v[f + 1],
                phasors=phasors(v),
                analogs=analogs(v),
                digitals=v[c:end],
                stat=v[start],
            )

        return decode

    nominal = float(pmu.nominal_freq_hz)

    def decode_int(v: Values) -> PmuData:
        freq, rocof = v[f], v[f + 1]
        return PmuData(
            # FREQ: deviation from nominal in mHz; DFREQ: ROCOF in Hz/s times 100
            freq_hz=NAN if freq == MISSING else nominal + freq / 1000,
            rocof_hz_s=NAN if rocof == MISSING else rocof / 100,
            phasors=phasors(v),
            analogs=analogs(v),
            digitals=v[c:end],
            stat=v[start],
        )

    return decode_int


def _phasor_reader(pmu: PmuConfig, a: int, b: int, cfg3: bool) -> Callable[[Values], Phasors]:
    fmt = pmu.format
    if fmt.phasors_float:
        if fmt.polar:
            return lambda v: _rect_all(v[a:b:2], v[a + 1 : b : 2])
        return lambda v: tuple(map(complex, v[a:b:2], v[a + 1 : b : 2]))
    if cfg3:
        scales = [p.bit_scale for p in pmu.phasors]
        offsets = [p.angle_offset_rad for p in pmu.phasors]
    else:
        scales = [p.phunit * 1e-5 for p in pmu.phasors]
        offsets = [0.0] * len(pmu.phasors)
    if fmt.polar:

        def polar(v: Values) -> Phasors:
            pairs = zip(v[a:b:2], v[a + 1 : b : 2], scales, offsets, strict=True)
            return tuple(
                [
                    NAN_PHASOR if angle == MISSING else cmath.rect(mag * k, angle * 1e-4 + theta)
                    for mag, angle, k, theta in pairs
                ]
            )

        return polar
    factors = [
        k * cmath.rect(1.0, theta) if theta else complex(k)
        for k, theta in zip(scales, offsets, strict=True)
    ]

    def rectangular(v: Values) -> Phasors:
        re, im = v[a:b:2], v[a + 1 : b : 2]
        if MISSING in re or MISSING in im:  # rare: test once, not per value
            return tuple(
                [
                    NAN_PHASOR if x == MISSING or y == MISSING else complex(x, y) * factor
                    for x, y, factor in zip(re, im, factors, strict=True)
                ]
            )
        if not cfg3:  # real scale factors: all of it in C
            return tuple(map(complex, map(mul, re, scales), map(mul, im, scales)))
        return tuple([complex(x, y) * f for x, y, f in zip(re, im, factors, strict=True)])

    return rectangular


def _rect_all(magnitudes: Sequence[float], angles: Sequence[float]) -> Phasors:
    if math.inf in magnitudes or -math.inf in magnitudes:
        return tuple(_rect_or_nan(m, angle) for m, angle in zip(magnitudes, angles, strict=True))
    try:
        return tuple(map(cmath.rect, magnitudes, angles))
    except ValueError:  # rect(inf, inf) and the like: an unreadable phasor, not a bad frame
        return tuple(_rect_or_nan(m, angle) for m, angle in zip(magnitudes, angles, strict=True))


def _rect_or_nan(magnitude: float, angle: float) -> complex:
    # An infinite magnitude (which encode refuses) or angle is an unreadable phasor: absent
    # data, as NaN is, so that one bad value does not cost the frame its other PMUs.
    if math.isinf(magnitude):
        return NAN_PHASOR
    try:
        return cmath.rect(magnitude, angle)
    except ValueError:
        return NAN_PHASOR


def _analog_reader(
    pmu: PmuConfig, b: int, c: int, cfg3: bool
) -> Callable[[Values], tuple[float, ...]]:
    if pmu.format.analogs_float:
        return lambda v: v[b:c]
    scales = [a.bit_scale if cfg3 else float(a.anunit) for a in pmu.analogs]
    offsets = [a.offset if cfg3 else 0.0 for a in pmu.analogs]

    def analogs(v: Values) -> tuple[float, ...]:
        raw = v[b:c]
        if MISSING in raw:
            return tuple(
                [
                    NAN if x == MISSING else x * k + off
                    for x, k, off in zip(raw, scales, offsets, strict=True)
                ]
            )
        if not cfg3:
            return tuple(map(mul, raw, scales))
        return tuple([x * k + off for x, k, off in zip(raw, scales, offsets, strict=True)])

    return analogs


# -- encoding -----------------------------------------------------------------------------------


def _pmu_encoder(pmu: PmuConfig, cfg3: bool) -> Callable[[PmuData], list[Any]]:
    fmt = pmu.format
    n_ph, n_an, n_dg = len(pmu.phasors), len(pmu.analogs), len(pmu.digitals)
    if cfg3:
        ph_scales = [p.bit_scale for p in pmu.phasors]
        ph_offsets = [p.angle_offset_rad for p in pmu.phasors]
        an_scales = [a.bit_scale for a in pmu.analogs]
        an_offsets = [a.offset for a in pmu.analogs]
    else:
        ph_scales = [p.phunit * 1e-5 for p in pmu.phasors]
        ph_offsets = [0.0] * n_ph
        an_scales = [float(a.anunit) for a in pmu.analogs]
        an_offsets = [0.0] * n_an
    nominal = pmu.nominal_freq_hz
    names = [p.name for p in pmu.phasors]
    an_names = [a.name for a in pmu.analogs]

    def encode(data: PmuData) -> list[Any]:
        if len(data.phasors) != n_ph or len(data.analogs) != n_an or len(data.digitals) != n_dg:
            raise InvalidValueError(
                f"PMU {pmu.idcode} values",
                (len(data.phasors), len(data.analogs), len(data.digitals)),
                f"the configuration has {n_ph} phasors, {n_an} analogs, {n_dg} digitals",
            )
        out: list[Any] = [data.stat]
        if fmt.phasors_float:
            if fmt.polar:
                for z, name in zip(data.phasors, names, strict=True):
                    out += _float_polar(z, name)
            else:
                for z in data.phasors:
                    out += (z.real, z.imag)
        else:
            for z, k, theta, name in zip(data.phasors, ph_scales, ph_offsets, names, strict=True):
                out += _int_phasor(z, k, theta, fmt.polar, name)
        if fmt.freq_float:
            out += (data.freq_hz, data.rocof_hz_s)
        else:
            out.append(_int16("FREQ", (data.freq_hz - nominal) * 1000))
            out.append(_int16("DFREQ", data.rocof_hz_s * 100))
        if fmt.analogs_float:
            out += data.analogs
        else:
            analogs = zip(data.analogs, an_scales, an_offsets, an_names, strict=True)
            for x, k, off, name in analogs:
                out.append(_int16(name, _divide(x - off, k, name)))
        out += data.digitals
        return out

    return encode


def _int_phasor(z: complex, k: float, theta: float, polar: bool, name: str) -> tuple[int, int]:
    if z != z:  # NaN in either part
        return (0x8000, MISSING) if polar else (MISSING, MISSING)
    if theta:
        z *= cmath.rect(1.0, -theta)
    if polar:
        magnitude = _divide(abs(z), k, name)
        if not magnitude < 65535.5:
            raise InvalidValueError(name, z, f"magnitude is {magnitude} bits of {k}, max 65535")
        angle = round(cmath.phase(z) / ANGLE_LSB_RAD)
        return round(magnitude), max(-_MAX_ANGLE_BITS, min(angle, _MAX_ANGLE_BITS))
    return _int16(name, _divide(z.real, k, name)), _int16(name, _divide(z.imag, k, name))


def _float_polar(z: complex, name: str) -> tuple[float, float]:
    if z != z:  # NaN in either part: absent data
        return NAN, NAN
    magnitude = abs(z)
    if magnitude == math.inf:
        # An infinite complex number keeps only one of eight directions, so its angle would
        # not survive a decode; no PMU measures an infinite phasor (absent data is NaN).
        raise InvalidValueError(
            name, z, "an infinite phasor has no angle to send in polar form (absent data: NaN)"
        )
    return magnitude, _angle32(cmath.phase(z))


def _angle32(angle: float) -> float:
    # float32(pi) is above pi: such an angle would come back as about -pi after a decode, so a
    # relayed frame would differ. The nearest float32 inside [-pi, pi] keeps frames stable.
    if angle > _PI32 or angle < -_PI32:
        return math.copysign(_PI32, angle)
    return angle


def _divide(value: float, scale: float, name: str) -> float:
    if scale == 0.0:
        if value == 0.0 or value != value:
            return value
        raise InvalidValueError(name, value, "a scale factor of 0 cannot carry this value")
    return value / scale


def _int16(name: str, value: float) -> int:
    if value != value:
        return MISSING
    if not -32767.5 < value < 32767.5:
        raise InvalidValueError(name, value, "does not fit a 16-bit integer (scale it)")
    return round(value)
