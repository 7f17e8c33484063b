"""CFG-1, CFG-2 (fixed 16-byte names, PHUNIT/ANUNIT) and CFG-3 (long names, float scaling,
location, service class) to bytes and back. Only unfragmented CFG-3 frames (CONT_IDX 0)."""

from __future__ import annotations

import struct
from typing import Any

from gridpilot.protocols.c37118.codes import (
    FrameType,
    PhasorComponent,
    PhasorKind,
)
from gridpilot.protocols.c37118.errors import (
    MalformedFrameError,
    TruncatedFrameError,
    UnsupportedError,
)
from gridpilot.protocols.c37118.frames import (
    AnalogChannel,
    ConfigFrame,
    DataFormat,
    DigitalWord,
    PhasorChannel,
    PmuConfig,
)
from gridpilot.protocols.c37118.wire import HEADER_SIZE, pack_frame

_U16 = struct.Struct(">H")
_I16 = struct.Struct(">h")
_CFG_HEAD = struct.Struct(">IH")  # TIME_BASE, NUM_PMU
_CFG3_HEAD = struct.Struct(">HIH")  # CONT_IDX, TIME_BASE, NUM_PMU
_COUNTS = struct.Struct(">HHHHH")  # IDCODE, FORMAT, PHNMR, ANNMR, DGNMR
_COUNTS3 = struct.Struct(">H16sHHHH")  # IDCODE, G_PMU_ID, FORMAT, PHNMR, ANNMR, DGNMR
_TAIL = struct.Struct(">HH")  # FNOM, CFGCNT
_PHSCALE = struct.Struct(">HBBff")  # flags, type, user byte, scale, angle offset
_ANSCALE = struct.Struct(">ff")  # scale, offset
_DIGUNIT = struct.Struct(">HH")
_PLACE = struct.Struct(">fffcii")  # PMU_LAT, PMU_LON, PMU_ELEV, SVC_CLASS, WINDOW, GRP_DLY
_COMPONENTS = {c.value for c in PhasorComponent}


class _Reader:
    """Bounds-checked reads inside one frame; every shortfall is a TruncatedFrameError."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data, self.pos, self.end = data, pos, end

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > self.end:
            raise TruncatedFrameError(
                what, needed=n, available=self.end - self.pos, offset=self.pos
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, layout: struct.Struct, what: str) -> tuple[Any, ...]:
        return layout.unpack(self.take(layout.size, what))

    def ints(self, fmt: str, count: int, what: str) -> tuple[int, ...]:
        size = struct.calcsize(f">{count}{fmt}")
        return struct.unpack(f">{count}{fmt}", self.take(size, what))

    def name16(self, count: int, what: str) -> list[str]:
        raw = self.take(16 * count, what)
        return [_text(raw[i : i + 16]).rstrip(" \x00") for i in range(0, 16 * count, 16)]

    def name(self, what: str) -> str:
        length = self.take(1, what)[0]
        return _text(self.take(length, what), "utf-8")

    def finish(self) -> None:
        if self.pos != self.end:
            raise MalformedFrameError(
                "FRAMESIZE",
                f"{self.end - self.pos} bytes left after the last field",
                offset=self.pos,
            )


def _text(raw: bytes, encoding: str = "ascii") -> str:
    return raw.decode(encoding, "replace")


def _name16(name: str) -> bytes:
    # CFG-1/2 names are 16 ASCII bytes, space-padded; longer names are cut, others replaced.
    return name.encode("ascii", "replace")[:16].ljust(16, b" ")


def _name(name: str) -> bytes:
    raw = name.encode("utf-8", "surrogatepass")
    return bytes((len(raw),)) + raw


def _split_names(
    pmu_names: list[str], n_ph: int, n_an: int, n_dg: int
) -> tuple[list[str], list[str], list[tuple[str, ...]]]:
    digital = pmu_names[n_ph + n_an :]
    words = [tuple(digital[16 * i : 16 * i + 16]) for i in range(n_dg)]
    return pmu_names[:n_ph], pmu_names[n_ph : n_ph + n_an], words


# -- CFG-1 and CFG-2 ----------------------------------------------------------------------------


def encode_cfg12(frame: ConfigFrame) -> bytes:
    parts = [_CFG_HEAD.pack(frame.time_base, len(frame.pmus))]
    for pmu in frame.pmus:
        n_ph, n_an, n_dg = len(pmu.phasors), len(pmu.analogs), len(pmu.digitals)
        parts.append(_name16(pmu.station))
        parts.append(_COUNTS.pack(pmu.idcode, pmu.format.word, n_ph, n_an, n_dg))
        parts.extend(_name16(name) for name in pmu.channel_names)
        parts.append(struct.pack(f">{n_ph}I", *(p.kind << 24 | p.phunit for p in pmu.phasors)))
        parts.append(
            struct.pack(f">{n_an}I", *(a.kind << 24 | a.anunit & 0xFFFFFF for a in pmu.analogs))
        )
        parts.append(struct.pack(f">{2 * n_dg}H", *_digunits(pmu.digitals)))
        parts.append(_TAIL.pack(_fnom(pmu.nominal_freq_hz), pmu.cfgcnt))
    parts.append(_I16.pack(frame.data_rate))
    return pack_frame(frame.cfg_type, frame, b"".join(parts))


def decode_cfg12(data: bytes, header: dict[str, int], frame_type: FrameType) -> ConfigFrame:
    reader = _Reader(data, HEADER_SIZE, len(data) - 2)
    time_base, num_pmu = reader.unpack(_CFG_HEAD, "TIME_BASE and NUM_PMU")
    pmus = []
    for _ in range(num_pmu):
        station = reader.name16(1, "STN")[0]
        idcode, fmt, n_ph, n_an, n_dg = reader.unpack(_COUNTS, "IDCODE, FORMAT and counts")
        names = reader.name16(n_ph + n_an + 16 * n_dg, "CHNAM")
        ph_names, an_names, dg_names = _split_names(names, n_ph, n_an, n_dg)
        phunits = reader.ints("I", n_ph, "PHUNIT")
        anunits = reader.ints("I", n_an, "ANUNIT")
        digunits = reader.ints("H", 2 * n_dg, "DIGUNIT")
        fnom, cfgcnt = reader.unpack(_TAIL, "FNOM and CFGCNT")
        phasors = []
        for name, unit in zip(ph_names, phunits, strict=True):
            kind = unit >> 24
            if kind > 1:
                raise MalformedFrameError(
                    "PHUNIT", f"type {kind} of {name!r} is neither voltage (0) nor current (1)"
                )
            phasors.append(PhasorChannel(name=name, kind=PhasorKind(kind), phunit=unit & 0xFFFFFF))
        analogs = [
            AnalogChannel(name=name, kind=unit >> 24, anunit=_signed24(unit & 0xFFFFFF))
            for name, unit in zip(an_names, anunits, strict=True)
        ]
        pmus.append(
            PmuConfig(
                station=station,
                idcode=idcode,
                format=DataFormat.from_word(fmt),
                phasors=tuple(phasors),
                analogs=tuple(analogs),
                digitals=_digitals(dg_names, digunits),
                nominal_freq_hz=50 if fnom & 1 else 60,
                cfgcnt=cfgcnt,
            )
        )
    (data_rate,) = reader.unpack(_I16, "DATA_RATE")
    reader.finish()
    return ConfigFrame(
        **header,
        cfg_type=frame_type,
        time_base=time_base & 0xFFFFFF,  # bits 31-24 are reserved flags
        pmus=tuple(pmus),
        data_rate=data_rate,
    )


# -- CFG-3 --------------------------------------------------------------------------------------


def encode_cfg3(frame: ConfigFrame) -> bytes:
    parts = [_CFG3_HEAD.pack(frame.cont_idx, frame.time_base, len(frame.pmus))]
    for pmu in frame.pmus:
        n_ph, n_an, n_dg = len(pmu.phasors), len(pmu.analogs), len(pmu.digitals)
        parts.append(_name(pmu.station))
        parts.append(
            _COUNTS3.pack(pmu.idcode, pmu.global_pmu_id, pmu.format.word, n_ph, n_an, n_dg)
        )
        parts.extend(_name(name) for name in pmu.channel_names)
        for p in pmu.phasors:
            kind = p.kind << 3 | p.component
            parts.append(
                _PHSCALE.pack(p.modification, kind, p.user_flags, p.bit_scale, p.angle_offset_rad)
            )
        parts.extend(_ANSCALE.pack(a.bit_scale, a.offset) for a in pmu.analogs)
        parts.append(struct.pack(f">{2 * n_dg}H", *_digunits(pmu.digitals)))
        parts.append(
            _PLACE.pack(
                pmu.latitude_deg,
                pmu.longitude_deg,
                pmu.elevation_m,
                pmu.service_class.encode("ascii"),
                pmu.window_us,
                pmu.group_delay_us,
            )
        )
        parts.append(_TAIL.pack(_fnom(pmu.nominal_freq_hz), pmu.cfgcnt))
    parts.append(_I16.pack(frame.data_rate))
    return pack_frame(FrameType.CFG3, frame, b"".join(parts))


def decode_cfg3(data: bytes, header: dict[str, int]) -> ConfigFrame:
    reader = _Reader(data, HEADER_SIZE, len(data) - 2)
    cont_idx, time_base, num_pmu = reader.unpack(_CFG3_HEAD, "CONT_IDX, TIME_BASE and NUM_PMU")
    if cont_idx != 0:
        raise UnsupportedError(f"fragmented CFG-3 (CONT_IDX {cont_idx}) is not supported")
    pmus = []
    for _ in range(num_pmu):
        station = reader.name("STN")
        idcode, gpmu, fmt, n_ph, n_an, n_dg = reader.unpack(_COUNTS3, "IDCODE to DGNMR")
        names = [reader.name("CHNAM") for _ in range(n_ph + n_an + 16 * n_dg)]
        ph_names, an_names, dg_names = _split_names(names, n_ph, n_an, n_dg)
        phasors = []
        for name in ph_names:
            flags, kind, user, scale, angle = reader.unpack(_PHSCALE, "PHSCALE")
            phasors.append(
                PhasorChannel(
                    name=name,
                    kind=PhasorKind(kind >> 3 & 1),
                    component=_component(kind & 7),
                    modification=flags,
                    user_flags=user,
                    scale=scale,
                    angle_offset_rad=angle,
                )
            )
        analogs = []
        for name in an_names:
            scale, offset = reader.unpack(_ANSCALE, "ANSCALE")
            analogs.append(AnalogChannel(name=name, scale=scale, offset=offset))
        digunits = reader.ints("H", 2 * n_dg, "DIGUNIT")
        lat, lon, elev, svc, window, delay = reader.unpack(_PLACE, "PMU_LAT to GRP_DLY")
        fnom, cfgcnt = reader.unpack(_TAIL, "FNOM and CFGCNT")
        pmus.append(
            PmuConfig(
                station=station,
                idcode=idcode,
                global_pmu_id=gpmu,
                format=DataFormat.from_word(fmt),
                phasors=tuple(phasors),
                analogs=tuple(analogs),
                digitals=_digitals(dg_names, digunits),
                latitude_deg=lat,
                longitude_deg=lon,
                elevation_m=elev,
                service_class=_text(svc),
                window_us=window,
                group_delay_us=delay,
                nominal_freq_hz=50 if fnom & 1 else 60,
                cfgcnt=cfgcnt,
            )
        )
    (data_rate,) = reader.unpack(_I16, "DATA_RATE")
    reader.finish()
    return ConfigFrame(
        **header,
        cfg_type=FrameType.CFG3,
        time_base=time_base & 0xFFFFFF,
        pmus=tuple(pmus),
        data_rate=data_rate,
    )


# -- shared -------------------------------------------------------------------------------------


def _fnom(nominal_freq_hz: int) -> int:
    return 1 if nominal_freq_hz == 50 else 0


def _component(code: int) -> int:
    return PhasorComponent(code) if code in _COMPONENTS else code


def _signed24(value: int) -> int:
    return value - 0x1000000 if value & 0x800000 else value


def _digunits(words: tuple[DigitalWord, ...]) -> list[int]:
    return [mask for word in words for mask in (word.normal, word.valid)]


def _digitals(labels: list[tuple[str, ...]], masks: tuple[int, ...]) -> tuple[DigitalWord, ...]:
    return tuple(
        DigitalWord(labels=word, normal=masks[2 * i], valid=masks[2 * i + 1])
        for i, word in enumerate(labels)
    )
