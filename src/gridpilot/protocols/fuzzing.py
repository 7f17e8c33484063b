"""Random and mutated input for the protocol codecs, and the contract each codec must keep.

Used by ``benchmarks/fuzz_codecs.py`` (millions of inputs) and ``tests/security/
test_codec_fuzz.py`` (a few thousand, fixed seed): one place for the generators, so that what
CI runs is a sample of what the long run ran.

A ``Target`` is one codec entry point: ``make(rng)`` draws an input (mostly a mutation of a
valid encoded frame: bit flips, truncation, extension, a lying length field, runs of the SYNC
or start byte, boundary values in count fields, splices, and plain random bytes), ``run``
feeds it to the codec and ``errors`` are the error classes the codec documents. ``check``
returns the outcome of one input: accepted, rejected (by which error class) or a finding
(any other exception, or an accepted input whose re-encoding does not decode to itself).
The timing is the caller's.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gridpilot.protocols import c37118, iec104, sunspec
from gridpilot.protocols.c37118 import (
    AnalogChannel,
    C37118Error,
    CommandFrame,
    ConfigFrame,
    DataFormat,
    DataFrame,
    DigitalWord,
    FrameBuffer,
    FrameType,
    HeaderFrame,
    PhasorChannel,
    PmuConfig,
    PmuData,
    crc_ccitt,
)
from gridpilot.protocols.iec104 import (
    Asdu,
    ClockSync,
    Cot,
    Cp56Time,
    DoubleCommand,
    DoublePoint,
    DoublePointState,
    FloatValue,
    Iec104Error,
    IFrame,
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
)
from gridpilot.protocols.meter_json import MeterFormat, MeterPayloadError, normalise
from gridpilot.protocols.sunspec import DerState, InverterStatus, SunSpecError

__all__ = ["Finding", "Mutator", "Outcome", "Target", "describe", "input_size", "targets"]

BOUNDARY_16 = (0x0000, 0x0001, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF)
BOUNDARY_8 = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)


class Finding(Exception):
    """An accepted input that breaks the contract (e.g. its re-encoding decodes differently)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one input did: ``accepted``, ``rejected`` with the error class name, or a finding."""

    accepted: bool
    error: str = ""  # the documented error class that rejected the input
    finding: str = ""  # what broke the contract; empty when nothing did


class Mutator:
    """Mutations of valid encoded frames (bytes), as a hostile or broken peer would send them.

    ``sync`` is the byte a frame starts with (0xAA for C37.118, 0x68 for IEC 104);
    ``length_at`` the offset and width (1 or 2, big- or little-endian) of the length field;
    ``fix`` recomputes a checksum after a mutation (C37.118's CHK), applied to most mutations
    so that they reach the parser instead of stopping at the CRC.
    """

    def __init__(
        self,
        seeds: Sequence[bytes],
        *,
        sync: int,
        length_at: tuple[int, int, str] | None,
        fix: Callable[[bytearray, random.Random], None] | None = None,
        fix_ratio: float = 0.8,
    ) -> None:
        if not seeds:
            raise ValueError("a mutator needs at least one valid frame to mutate")
        self.seeds = [bytes(s) for s in seeds]
        self.sync = sync
        self.length_at = length_at
        self.fix = fix
        self.fix_ratio = fix_ratio
        self._ops: list[Callable[[random.Random, bytearray], bytearray]] = [
            self._bit_flips,
            self._bit_flips,
            self._truncate,
            self._extend,
            self._length_lie,
            self._length_lie,
            self._sync_run,
            self._huge_count,
            self._huge_count,
            self._splice,
            self._random_bytes,
            self._byte_set,
        ]

    def __call__(self, rng: random.Random) -> bytes:
        data = bytearray(rng.choice(self.seeds))
        for _ in range(1 + (rng.random() < 0.3) + (rng.random() < 0.1)):
            data = rng.choice(self._ops)(rng, data)
        if self.fix is not None and len(data) >= 4 and rng.random() < self.fix_ratio:
            self.fix(data, rng)
        return bytes(data)

    @staticmethod
    def _bit_flips(rng: random.Random, data: bytearray) -> bytearray:
        for _ in range(rng.randint(1, 8)):
            if data:
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return data

    @staticmethod
    def _truncate(rng: random.Random, data: bytearray) -> bytearray:
        return data[: rng.randrange(len(data) + 1)] if data else data

    @staticmethod
    def _extend(rng: random.Random, data: bytearray) -> bytearray:
        if rng.random() < 0.5:
            return data + rng.randbytes(rng.randint(1, 64))
        return data + data[: rng.randint(1, max(1, len(data)))]  # a partial repeat

    def _length_lie(self, rng: random.Random, data: bytearray) -> bytearray:
        if self.length_at is None:
            return self._huge_count(rng, data)
        at, width, order = self.length_at
        if len(data) < at + width:
            return data
        true = len(data)
        if width == 1:
            choice = rng.choice(
                [*BOUNDARY_8, max(0, true - 3), min(255, true - 1), rng.randrange(256)]
            )
            data[at] = choice & 0xFF
        else:
            choice = rng.choice(
                [*BOUNDARY_16, true - 1, true + 1, 2 * true, rng.randrange(1 << 16), 16, 17]
            )
            data[at : at + 2] = (choice & 0xFFFF).to_bytes(2, order)  # type: ignore[arg-type]
        return data

    def _sync_run(self, rng: random.Random, data: bytearray) -> bytearray:
        run = bytes([self.sync]) * rng.choice([1, 2, 3, 16, 255, 1024])
        at = rng.choice([0, 0, len(data), rng.randrange(len(data) + 1)])
        return data[:at] + run + data[at:]

    @staticmethod
    def _huge_count(rng: random.Random, data: bytearray) -> bytearray:
        if len(data) < 2:
            return data
        at = rng.randrange(len(data) - 1)
        if rng.random() < 0.5:
            data[at : at + 2] = rng.choice(BOUNDARY_16).to_bytes(2, "big")
        else:
            data[at] = rng.choice(BOUNDARY_8)
        return data

    def _splice(self, rng: random.Random, data: bytearray) -> bytearray:
        other = rng.choice(self.seeds)
        return data[: rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1) :]

    @staticmethod
    def _random_bytes(rng: random.Random, data: bytearray) -> bytearray:
        return bytearray(rng.randbytes(rng.randint(0, max(8, 2 * len(data)))))

    @staticmethod
    def _byte_set(rng: random.Random, data: bytearray) -> bytearray:
        for _ in range(rng.randint(1, 4)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        return data


# -- C37.118.2 ------------------------------------------------------------------------------------


def _fix_chk(data: bytearray, rng: random.Random) -> None:
    """Rewrite the CHK of a C37.118 frame so that a mutation reaches the parser; often make
    FRAMESIZE the true length first, so that a cut or extended frame gets past that check."""
    if rng.random() < 0.4 and len(data) <= 0xFFFF:
        data[2:4] = len(data).to_bytes(2, "big")
    data[-2:] = crc_ccitt(data[:-2]).to_bytes(2, "big")


def _c37_configs() -> list[ConfigFrame]:
    digital = DigitalWord(labels=tuple(f"B{i}" for i in range(16)), normal=0x0F0F, valid=0xFFFF)
    full = PmuConfig(
        station="PMU full",
        idcode=11,
        phasors=(
            PhasorChannel(name="VA", phunit=915_527),
            PhasorChannel(name="IA", kind=c37118.PhasorKind.CURRENT, phunit=45_776),
        ),
        analogs=(AnalogChannel(name="AN1", anunit=100),),
        digitals=(digital,),
    )
    configs = []
    for word in (0b1111, 0b0000, 0b0101, 0b1010):
        pmu = PmuConfig(
            station=full.station,
            idcode=full.idcode,
            phasors=full.phasors,
            analogs=full.analogs,
            digitals=full.digitals,
            format=DataFormat.from_word(word),
        )
        configs.append(ConfigFrame(idcode=1, data_rate=50, pmus=(pmu,)))
    two = PmuConfig(station="PMU two", idcode=12, phasors=(PhasorChannel(name="VB"),))
    configs.append(ConfigFrame(idcode=2, data_rate=-2, pmus=(full, two), cfg_type=FrameType.CFG1))
    cfg3_pmu = PmuConfig(
        station="Umspannwerk Süd",
        idcode=13,
        phasors=(PhasorChannel(name="VA", scale=0.5, angle_offset_rad=0.1),),
        analogs=(AnalogChannel(name="T", scale=0.25, offset=-10.0),),
        digitals=(digital,),
        format=DataFormat.from_word(0),
        latitude_deg=48.1,
        longitude_deg=11.5,
        elevation_m=520.0,
        window_us=20_000,
        group_delay_us=1_000,
    )
    configs.append(ConfigFrame(idcode=3, data_rate=10, pmus=(cfg3_pmu,), cfg_type=FrameType.CFG3))
    return configs


def _c37_data(config: ConfigFrame, rng: random.Random) -> bytes:
    pmus = []
    for pmu in config.pmus:
        pmus.append(
            PmuData(
                freq_hz=50 + rng.uniform(-0.05, 0.05),
                rocof_hz_s=rng.uniform(-0.1, 0.1),
                phasors=tuple(
                    complex(rng.uniform(100, 9000), rng.uniform(-500, 500)) for _ in pmu.phasors
                ),
                analogs=tuple(float(rng.randint(-100, 100)) for _ in pmu.analogs),
                digitals=tuple(rng.randrange(1 << 16) for _ in pmu.digitals),
            )
        )
    frame = DataFrame(
        idcode=config.idcode,
        soc=1_790_000_000,
        fracsec=rng.randrange(1_000_000),
        config=config,
        pmus=tuple(pmus),
    )
    return c37118.encode(frame)


def _c37_roundtrip(frame: Any, config: ConfigFrame | None) -> None:
    """Re-encoding an accepted frame gives bytes that decode to a frame encoding to the same."""
    try:
        once = c37118.encode(frame)
    except C37118Error as error:
        raise Finding(f"decoded, but does not encode again: {error!r}") from None
    twice = c37118.encode(c37118.decode(once, config=config))
    if once != twice:
        raise Finding("encode(decode(encode(decode(x)))) differs from encode(decode(x))")


@dataclass(slots=True)
class Target:
    """One codec entry point under fuzzing."""

    name: str
    errors: tuple[type[BaseException], ...]
    make: Callable[[random.Random], Any]
    run: Callable[[Any], Any]  # returns what decode returned; raises the codec's errors
    roundtrip: Callable[[Any, Any], None] | None = None  # (input, decoded) -> raises Finding

    def check(self, data: Any) -> Outcome:
        """Run one input and classify it against the contract."""
        try:
            result = self.run(data)
        except Finding as finding:
            return Outcome(accepted=False, finding=str(finding))
        except self.errors as error:
            return Outcome(accepted=False, error=type(error).__name__)
        except Exception as error:  # anything undocumented is what fuzzing looks for
            return Outcome(accepted=False, finding=f"undocumented {type(error).__name__}: {error}")
        if self.roundtrip is not None:
            try:
                self.roundtrip(data, result)
            except Finding as finding:
                return Outcome(accepted=True, finding=str(finding))
            except Exception as error:
                return Outcome(
                    accepted=True, finding=f"round trip raised {type(error).__name__}: {error}"
                )
        return Outcome(accepted=True)


def _c37_targets() -> list[Target]:
    rng = random.Random(0)
    configs = _c37_configs()
    data_seeds = [(_c37_data(cfg, rng), i) for i, cfg in enumerate(configs) for _ in range(3)]
    length = (2, 2, "big")
    data_mut = Mutator([s for s, _ in data_seeds], sync=0xAA, length_at=length, fix=_fix_chk)
    by_seed = {s: i for s, i in data_seeds}

    def make_data(r: random.Random) -> tuple[bytes, int]:
        data = data_mut(r)
        return data, by_seed.get(data, r.randrange(len(configs)))

    def run_data(item: tuple[bytes, int]) -> Any:
        return c37118.decode(item[0], config=configs[item[1]])

    def rt_data(item: tuple[bytes, int], frame: Any) -> None:
        _c37_roundtrip(frame, configs[item[1]])

    cfg12 = [c37118.encode(c) for c in configs if c.cfg_type != FrameType.CFG3]
    cfg12 += [
        c37118.encode(
            ConfigFrame(
                idcode=c.idcode, data_rate=c.data_rate, pmus=c.pmus, cfg_type=FrameType.CFG1
            )
        )
        for c in configs[:1]
    ]
    cfg3 = [c37118.encode(c) for c in configs if c.cfg_type == FrameType.CFG3]
    cfg3.append(
        c37118.encode(
            ConfigFrame(idcode=4, data_rate=50, pmus=configs[0].pmus, cfg_type=FrameType.CFG3)
        )
    )
    header = [
        c37118.encode(HeaderFrame(idcode=1, text=t))
        for t in ("", "GridPilot virtual PMU", "Umspannwerk Süd, Feld 3 " * 8)
    ]
    command = [
        c37118.encode(CommandFrame(idcode=1, command=int(cmd))) for cmd in c37118.Command
    ] + [c37118.encode(CommandFrame(idcode=1, command=8, extended=b"\x01\x02\x03\x04"))]

    def plain(name: str, seeds: list[bytes]) -> Target:
        mut = Mutator(seeds, sync=0xAA, length_at=length, fix=_fix_chk)
        return Target(
            name=name,
            errors=(C37118Error,),
            make=mut,
            run=lambda data: c37118.decode(data),
            roundtrip=lambda _data, frame: _c37_roundtrip(frame, None),
        )

    stream_seeds = [s for s, _ in data_seeds] + cfg12 + cfg3 + header + command
    stream_mut = Mutator(stream_seeds, sync=0xAA, length_at=length, fix=_fix_chk, fix_ratio=0.5)

    def make_stream(r: random.Random) -> list[bytes]:
        # a CFG-2 first (so data frames decode), then frames, mutated or not, and garbage
        parts = [cfg12[r.randrange(len(cfg12))]]
        for _ in range(r.randint(1, 6)):
            parts.append(stream_mut(r) if r.random() < 0.6 else r.choice(stream_seeds))
        stream = b"".join(parts)
        cuts = sorted(r.randrange(len(stream) + 1) for _ in range(r.randint(0, 4)))
        return [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]

    def run_stream(chunks: list[bytes]) -> list[Any]:
        framer = FrameBuffer()
        out: list[Any] = []
        for chunk in chunks:
            out += framer.feed(chunk)
        for item in out:
            if not isinstance(item, (C37118Error, *_C37_FRAMES)):
                raise Finding(f"feed returned a {type(item).__name__}")
        if framer.pending > sum(map(len, chunks)):
            raise Finding("the framer holds more bytes than it was fed")
        return out

    return [
        Target(
            name="C37.118 data frame decode",
            errors=(C37118Error,),
            make=make_data,
            run=run_data,
            roundtrip=rt_data,
        ),
        plain("C37.118 CFG-1/CFG-2 decode", cfg12),
        plain("C37.118 CFG-3 decode", cfg3),
        plain("C37.118 header frame decode", header),
        plain("C37.118 command frame decode", command),
        Target(name="C37.118 FrameBuffer.feed", errors=(), make=make_stream, run=run_stream),
    ]


_C37_FRAMES = (DataFrame, ConfigFrame, HeaderFrame, CommandFrame)


# -- IEC 60870-5-104 ------------------------------------------------------------------------------


def _asdus() -> list[Asdu]:
    t = Cp56Time(1_790_000_000_123 * 10**6, False, False)
    good = Quality.GOOD
    return [
        Asdu(
            cot=Cot.SPONTANEOUS,
            common_address=1,
            objects=(SinglePoint(ioa=100, value=True, quality=good, time=t),),
        ),
        Asdu(
            cot=Cot.INTERROGATED_BY_STATION,
            common_address=1,
            objects=tuple(
                FloatValue(ioa=200 + i, value=1.5 * i, quality=good, time=None) for i in range(8)
            ),
            sequence=True,
        ),
        Asdu(
            cot=Cot.PERIODIC,
            common_address=7,
            objects=tuple(
                ScaledValue(ioa=300 + 2 * i, value=-i, quality=Quality.INVALID, time=t)
                for i in range(4)
            ),
        ),
        Asdu(
            cot=Cot.SPONTANEOUS,
            common_address=7,
            objects=(DoublePoint(ioa=400, value=DoublePointState.ON, quality=good, time=None),),
        ),
        Asdu(
            cot=Cot.ACTIVATION,
            common_address=1,
            objects=(SingleCommand(ioa=500, on=True, select=True, qualifier=0),),
        ),
        Asdu(
            cot=Cot.ACTIVATION,
            common_address=1,
            objects=(
                DoubleCommand(ioa=501, state=DoublePointState.OFF, select=False, qualifier=1),
            ),
        ),
        Asdu(
            cot=Cot.ACTIVATION, common_address=0xFFFF, objects=(Interrogation(ioa=0, qualifier=20),)
        ),
        Asdu(cot=Cot.ACTIVATION, common_address=1, objects=(ClockSync(ioa=0, time=t),)),
    ]


def _apdu_roundtrip(_data: bytes, frame: Any) -> None:
    once = iec104.encode_apdu(frame)
    if iec104.encode_apdu(iec104.decode_apdu(once)) != once:
        raise Finding("encode_apdu(decode_apdu(x)) is not a fixed point")


def _asdu_roundtrip(_data: bytes, asdu: Asdu) -> None:
    once = iec104.encode_asdu(asdu)
    again = iec104.decode_asdu(once)
    if iec104.encode_asdu(again) != once:
        raise Finding("encode_asdu(decode_asdu(x)) is not a fixed point")


def _iec104_targets() -> list[Target]:
    asdu_seeds = [iec104.encode_asdu(a) for a in _asdus()]
    apdu_seeds = [
        iec104.encode_apdu(IFrame(send_seq=i, recv_seq=0, asdu=a)) for i, a in enumerate(asdu_seeds)
    ]
    apdu_seeds += [
        iec104.encode_apdu(SFrame(recv_seq=3)),
        iec104.encode_apdu(IFrame(send_seq=32767, recv_seq=32767, asdu=asdu_seeds[0])),
    ]
    apdu_seeds += [iec104.encode_apdu(UFrame(function=f)) for f in UFunction]
    apdu_mut = Mutator(apdu_seeds, sync=0x68, length_at=(1, 1, "little"))
    asdu_mut = Mutator(asdu_seeds, sync=0x68, length_at=(1, 1, "little"))  # VSQ: the count

    start = iec104.encode_apdu(UFrame(function=UFunction.STARTDT_ACT))
    in_order = [start, *apdu_seeds[: len(asdu_seeds)]]

    def make_stream(r: random.Random) -> tuple[Role, list[bytes]]:
        parts: list[bytes] = []
        for i, seed in enumerate(in_order[: r.randint(1, len(in_order))]):
            parts.append(apdu_mut(r) if r.random() < 0.3 else seed)
            if r.random() < 0.1:
                parts.append(r.randbytes(r.randint(1, 20)))
            if i == 0 and r.random() < 0.2:
                parts.append(bytes([0x68]) * r.randint(1, 300))
        stream = b"".join(parts)
        cuts = sorted(r.randrange(len(stream) + 1) for _ in range(r.randint(0, 4)))
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        return r.choice([Role.CONTROLLED, Role.CONTROLLING]), chunks

    def run_session(item: tuple[Role, list[bytes]]) -> list[Any]:
        role, chunks = item
        session = Session(role=role, clock=lambda: 0.0)
        events: list[Any] = []
        for chunk in chunks:
            events += session.receive(chunk)
            session.poll(1.0)
        for event in events:
            if isinstance(event, ProtocolErrorEvent) and not isinstance(event.error, Iec104Error):
                raise Finding(f"an error event carries a {type(event.error).__name__}")
        return events

    return [
        Target(
            name="IEC 104 APCI decode_apdu",
            errors=(Iec104Error,),
            make=apdu_mut,
            run=iec104.decode_apdu,
            roundtrip=_apdu_roundtrip,
        ),
        Target(
            name="IEC 104 ASDU decode_asdu",
            errors=(Iec104Error,),
            make=asdu_mut,
            run=iec104.decode_asdu,
            roundtrip=_asdu_roundtrip,
        ),
        Target(name="IEC 104 Session.receive", errors=(), make=make_stream, run=run_session),
    ]


# -- SunSpec (Modbus) -----------------------------------------------------------------------------


def _sunspec_seeds() -> list[list[int]]:
    states = [
        DerState(
            p_w=4_200.0,
            q_var=-300.0,
            v_v=231.4,
            status=InverterStatus.MPPT,
            rated_w=10_000.0,
            v_ref_v=230.0,
            serial="DER-0001",
            device_address=3,
            t_ms=1_790_000_000_000,
        ),
        DerState(
            p_w=0.0,
            q_var=0.0,
            v_v=0.0,
            status=InverterStatus.OFF,
            rated_w=1_000_000.0,
            v_ref_v=20_000.0,
            energy_wh=123_456_789,
            p_limit_pct=50.0,
            p_limit_enabled=True,
            q_set_pct=-20.0,
            q_set_enabled=True,
        ),
    ]
    return [sunspec.encode(s) for s in states]


def _sunspec_make(seeds: list[list[int]]) -> Callable[[random.Random], list[int]]:
    sf_offsets = [p.offset for p in sunspec.POINTS if p.type is sunspec.PointType.SUNSSF]

    def make(r: random.Random) -> list[int]:
        regs = list(r.choice(seeds))
        for _ in range(1 + (r.random() < 0.4)):
            op = r.randrange(7) if len(regs) == sunspec.BLOCK_SIZE else 4
            if op == 0:  # random registers
                for _ in range(r.randint(1, 8)):
                    regs[r.randrange(len(regs))] = r.randrange(1 << 16)
            elif op == 1:  # boundary values ("not implemented" markers among them)
                for _ in range(r.randint(1, 4)):
                    regs[r.randrange(len(regs))] = r.choice(BOUNDARY_16)
            elif op == 2:  # scale factors at and beyond their range
                regs[r.choice(sf_offsets)] = r.choice(
                    [0, 10, 0xFFF6, 11, 0xFFF5, 0x7FFF, 0x8000, 0xFFFF]
                )
            elif op == 3:  # bit flips
                for _ in range(r.randint(1, 8)):
                    regs[r.randrange(len(regs))] ^= 1 << r.randrange(16)
            elif op == 4:  # a short or long read
                n = r.choice([0, 1, len(regs) - 1, len(regs) + 1, r.randrange(2 * len(regs) + 1)])
                regs = (regs + [r.randrange(1 << 16) for _ in range(n)])[:n]
            elif op == 5:  # all random
                regs = [r.randrange(1 << 16) for _ in range(len(regs))]
            else:  # every scale factor at an extreme
                for off in sf_offsets:
                    regs[off] = r.choice([10, 0xFFF6])
        return regs

    return make


def _sunspec_roundtrip(regs: list[int], state: DerState) -> None:
    sf = sunspec.read_scale_factors(regs)
    try:
        once = sunspec.encode(state, sf)
    except SunSpecError:
        return  # a value the device reported that this SF cannot carry back: not the codec's bug
    if sunspec.encode(sunspec.decode(once), sf) != once:
        raise Finding("encode(decode(x)) is not a fixed point")


def _sunspec_targets() -> list[Target]:
    seeds = _sunspec_seeds()
    return [
        Target(
            name="SunSpec decode",
            errors=(SunSpecError,),
            make=_sunspec_make(seeds),
            run=sunspec.decode,
            roundtrip=_sunspec_roundtrip,
        )
    ]


# -- meter JSON -----------------------------------------------------------------------------------

_DEVICE = "meter_7"
# ~80 bytes a reading: 1,000 readings pass the 64 KiB payload limit; more only costs memory
MAX_JSON_ITEMS = 1_000
_MEASURANDS = [
    "activepower",
    "reactivepower",
    "voltmagnitude",
    "voltangle",
    "frequency",
    "ActivePower",
]


def _meter_docs() -> list[Any]:
    readings = [
        {"component": f"c{c}", "measurand": m, "phase": p, "data": 1000.0 + i}
        for c in range(2)
        for i, (m, p) in enumerate(
            (m, p) for m in ("activepower", "reactivepower", "voltmagnitude") for p in "ABC"
        )
    ]
    return [
        {"device": _DEVICE, "timestamp": "2026-12-07T10:27:57.980802+00:00", "readings": readings},
        {"device": _DEVICE, "timestamp": 1_790_000_000.5, "readings": readings[:3]},
        {"device": _DEVICE, "timestamp": "2026-12-07T10:27:57:980", "readings": readings[9:12]},
        {"device": _DEVICE, "t_ns": 1_790_000_000_000_000_000, "p_mw": 0.004, "q_mvar": -0.001},
        {
            "device": _DEVICE,
            "t_ns": 1_790_000_000_000_000_000,
            "p_mw": 0.0,
            "q_mvar": 0.0,
            "v_pu": 1.02,
        },
    ]


_JSON_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    1e308,
    -1e308,
    10**40,
    -(10**30),
    1e11,
    1e18,
    "",
    "A",
    "D",
    "x" * 300,
    "2026-13-45T99:99:99",
    "NaN",
    [],
    {},
    [[[]]],
    0.5,
    9_999_999_999_999_999_999,
]


def _mutate_json(r: random.Random, doc: Any) -> Any:
    """A structural mutation: a value replaced, a key dropped or added, a list multiplied."""
    if isinstance(doc, dict) and doc:
        doc = dict(doc)
        key = r.choice(list(doc))
        op = r.randrange(5)
        if op == 0:
            doc[key] = r.choice(_JSON_VALUES)
        elif op == 1:
            del doc[key]
        elif op == 2:
            doc[r.choice(["readings", "t_ns", "device", "extra", "p_mw"])] = r.choice(_JSON_VALUES)
        else:
            doc[key] = _mutate_json(r, doc[key])
        return doc
    if isinstance(doc, list) and doc:
        op = r.randrange(4)
        if op == 0:  # huge counts: many readings, up to the payload limit and beyond
            factor = r.choice([2, 10, 100, 400])
            return doc * factor if len(doc) * factor <= MAX_JSON_ITEMS else doc
        if op == 1:
            return doc[: r.randrange(len(doc))]
        doc = list(doc)
        i = r.randrange(len(doc))
        doc[i] = _mutate_json(r, doc[i])
        return doc
    if isinstance(doc, str):
        return r.choice([doc.upper(), doc[:1], doc + "Z", r.choice(_MEASURANDS), "", "B"])
    if isinstance(doc, float):
        return r.choice([math.inf, -math.inf, -doc, doc * 1e9, 0.0, 1e-320])
    return r.choice(_JSON_VALUES)


def _meter_targets() -> list[Target]:
    docs = _meter_docs()
    seeds = [json.dumps(d).encode() for d in docs]
    byte_mut = Mutator(seeds, sync=ord("{"), length_at=None)

    def make(r: random.Random) -> bytes:
        x = r.random()
        if x < 0.5:
            doc = r.choice(docs)
            for _ in range(r.randint(1, 3)):
                doc = _mutate_json(r, doc)
            try:
                return json.dumps(doc, allow_nan=True).encode()
            except (ValueError, OverflowError):
                return b"{}"
        if x < 0.55:  # deep nesting
            depth = r.choice([10, 100, 1000, 10_000])
            return b'{"readings":' + b"[" * depth + b"]" * depth + b"}"
        return byte_mut(r)

    def roundtrip(_data: bytes, reading: Any) -> None:
        from gridpilot.protocols.meter_json import encode

        if reading.format is not MeterFormat.GRIDPILOT:
            return  # SOGNO comes in only: GridPilot's meters speak its own format
        again = normalise(encode(reading), topic_device=reading.device)
        if again != reading:
            raise Finding("normalise(encode(r)) != r")

    return [
        Target(
            name="meter JSON normalise",
            errors=(MeterPayloadError,),
            make=make,
            run=lambda data: normalise(data, topic_device=_DEVICE),
            roundtrip=roundtrip,
        )
    ]


def targets() -> list[Target]:
    """Every fuzzed entry point, in the order of the results table."""
    return [*_c37_targets(), *_iec104_targets(), *_sunspec_targets(), *_meter_targets()]


def input_size(data: Any) -> int:
    """Bytes (or registers) in one input: a stream's reads together."""
    if isinstance(data, (bytes, bytearray)):
        return len(data)
    if isinstance(data, tuple):
        return sum(input_size(x) for x in data if isinstance(x, (bytes, list, tuple)))
    if isinstance(data, list):
        return sum(input_size(x) if isinstance(x, (bytes, list)) else 1 for x in data)
    return 1


def describe(data: Any) -> str:
    """A reproducer as text: bytes in hex, anything else as its repr (for results files)."""
    if isinstance(data, bytes):
        return data.hex()
    if isinstance(data, tuple) and data and isinstance(data[0], bytes):
        return f"({data[0].hex()}, {data[1:]!r})"
    if isinstance(data, list) and data and isinstance(data[0], bytes):
        return repr([c.hex() for c in data])
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[1], list):
        return repr((str(data[0]), [c.hex() for c in data[1]]))
    return repr(data)
