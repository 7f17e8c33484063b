"""Encode a DER inverter's state into the registers of the map in ``points`` and back (sans-IO).

``DerState`` holds device units (W, var, V, % of rated power) as the registers do;
its properties give GridPilot's units (MW, Mvar, p.u.).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gridpilot.core.errors import ProtocolError
from gridpilot.protocols._errors import PicklableError
from gridpilot.protocols.sunspec.points import (
    BASE_ADDRESS,
    BLOCK_SIZE,
    CONTROLS,
    POINTS,
    SETPOINT_SF,
    InverterStatus,
    Point,
    PointType,
    point_at,
)


class SunSpecError(PicklableError, ProtocolError):
    """Registers that do not hold the map, or a value the map cannot carry."""

    def __init__(self, reason: str, *, point: str | None = None) -> None:
        self.point = point
        super().__init__("sunspec", f"{point}: {reason}" if point else reason)


@dataclass(frozen=True, slots=True, kw_only=True)
class DerState:
    """Everything the register map carries about one inverter, in device units."""

    p_w: float  # active power, + = production
    q_var: float  # reactive power, + = injected into the grid
    v_v: float
    status: InverterStatus
    rated_w: float
    v_ref_v: float
    f_hz: float = 50.0
    energy_wh: int = 0
    p_limit_pct: float = 100.0  # of rated_w
    p_limit_enabled: bool = False
    q_set_pct: float = 0.0  # of rated_w
    q_set_enabled: bool = False
    t_ms: int = 0  # when the values were measured, ms since 1970 UTC; 0: the device has no clock
    # the common model: who the device is
    serial: str = ""  # SN, what a gateway checks against its device registry
    device_address: int = 0  # DA, the Modbus unit id the device answers to
    manufacturer: str = "GridPilot"
    device_model: str = "virtual DER inverter"
    options: str = ""
    version: str = ""

    @property
    def p_mw(self) -> float:
        return self.p_w / 1e6

    @property
    def q_mvar(self) -> float:
        return self.q_var / 1e6

    @property
    def v_pu(self) -> float:
        return self.v_v / self.v_ref_v

    @property
    def rated_mw(self) -> float:
        return self.rated_w / 1e6

    @property
    def p_limit_mw(self) -> float | None:
        """The active power limit in force, or None when there is none."""
        return self.p_limit_pct / 100.0 * self.rated_mw if self.p_limit_enabled else None

    @property
    def q_set_mvar(self) -> float | None:
        """The reactive power setpoint in force, or None when there is none."""
        return self.q_set_pct / 100.0 * self.rated_mw if self.q_set_enabled else None


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteProblem:
    """Why a device refuses (part of) a register write."""

    address: int
    point: str  # "" outside the map
    reason: str
    read_only: bool  # a Modbus device answers 'illegal data address' rather than 'value'


# raw ranges per type; the SunSpec 'not implemented' value of each type lies outside them
_RAW_RANGE = {
    PointType.INT16: (-0x7FFF, 0x7FFF),
    PointType.UINT16: (0, 0xFFFE),
    PointType.SUNSSF: (-10, 10),
    PointType.UINT32: (0, 0xFFFFFFFF),
    PointType.ACC32: (0, 0xFFFFFFFF),
    PointType.UINT64: (0, 0xFFFFFFFFFFFFFFFE),
}


def _scale(raw: int, sf: int) -> float:
    # dividing by 10**-sf keeps 300 at sf -1 exactly 30.0, where 300 * 10**-1 would not be
    return float(raw * 10**sf) if sf >= 0 else raw / 10 ** (-sf)


def encode_value(point: Point, value: float, sf: int = 0) -> list[int]:
    """Registers of one value; raises SunSpecError when the point's type cannot carry it."""
    if point.type is PointType.FLOAT32:
        if math.isnan(value):
            raise SunSpecError("NaN means 'not implemented'", point=point.name)
        try:
            hi, lo = struct.unpack(">HH", struct.pack(">f", value))
        except OverflowError:
            raise SunSpecError(f"{value} does not fit a float32", point=point.name) from None
        return [hi, lo]
    if not math.isfinite(value):
        raise SunSpecError(f"{value} is not a number", point=point.name)
    raw = round(value / 10**sf) if sf >= 0 else round(value * 10 ** (-sf))
    if point.type is PointType.ACC32:
        raw %= 1 << 32  # an accumulator rolls over
    low, high = _RAW_RANGE[point.type]
    if not low <= raw <= high:
        raise SunSpecError(
            f"{value} {point.unit} is {raw} at scale factor {sf}, outside {point.type} "
            f"({low}..{high})",
            point=point.name,
        )
    return [(raw >> (16 * i)) & 0xFFFF for i in reversed(range(point.size))]


def decode_value(point: Point, registers: Sequence[int], sf: int = 0) -> float:
    """The value of one point from its registers; raises SunSpecError on 'not implemented'."""
    if point.type is PointType.FLOAT32:
        value: float = struct.unpack(">f", struct.pack(">HH", registers[0], registers[1]))[0]
        if math.isnan(value):
            raise SunSpecError("not implemented by the device (NaN)", point=point.name)
        return value
    if point.size > 1:
        raw = 0
        for word in registers[: point.size]:
            raw = (raw << 16) | word
    elif point.type in (PointType.INT16, PointType.SUNSSF):
        raw = registers[0] - 0x10000 if registers[0] & 0x8000 else registers[0]
    else:
        raw = registers[0]
    low, high = _RAW_RANGE[point.type]
    if not low <= raw <= high:
        raise SunSpecError(
            f"raw value {raw} means 'not implemented' or is out of range", point=point.name
        )
    return _scale(raw, sf)


def encode_string(point: Point, text: str) -> list[int]:
    """The registers of a string point: ASCII, two characters a register, NUL-padded."""
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        raise SunSpecError(f"{text!r} is not ASCII", point=point.name) from None
    if len(raw) > 2 * point.size:
        raise SunSpecError(f"{text!r} is longer than {2 * point.size} characters", point=point.name)
    raw = raw.ljust(2 * point.size, b"\0")
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def decode_string(registers: Sequence[int]) -> str:
    """The text of a string point; what follows the first NUL is padding."""
    raw = b"".join(word.to_bytes(2, "big") for word in registers)
    return raw.split(b"\0", 1)[0].decode("ascii", errors="replace")


def _digits_needed(magnitude: float, limit: int, *, lowest: int) -> int:
    """The smallest scale factor (>= lowest) at which ``magnitude`` fits ``limit`` raw units."""
    for sf in range(lowest, 11):  # a sunssf is at most 10
        if (magnitude / 10**sf if sf >= 0 else magnitude * 10 ** (-sf)) <= limit:
            return sf
    raise SunSpecError(f"{magnitude:g} is too large for any scale factor")


def scale_factors(*, rated_w: float, v_ref_v: float) -> dict[str, int]:
    """The scale factors the encoder uses for an inverter of this rating.

    Power gets room for twice the rating (an inverter briefly overshoots; a bad profile more),
    voltage twice the reference, energy one year at rated power before the accumulator rolls
    over. Resolution stays better than 0.07 % of the rating.
    """
    if not (0 < rated_w < math.inf and 0 < v_ref_v < math.inf):
        raise SunSpecError(f"need rated_w > 0 and v_ref_v > 0, not {rated_w} and {v_ref_v}")
    return {
        "W_SF": _digits_needed(2 * rated_w, 0x7FFF, lowest=0),
        "VAr_SF": _digits_needed(2 * rated_w, 0x7FFF, lowest=0),
        "V_SF": _digits_needed(2 * v_ref_v, 0xFFFE, lowest=-3),
        "WH_SF": _digits_needed(rated_w * 8760.0, 0xFFFFFFFF, lowest=0),
        "WRtg_SF": _digits_needed(rated_w, 0xFFFE, lowest=0),
        "WMaxLimPct_SF": SETPOINT_SF,
        "VArPct_SF": SETPOINT_SF,
    }


def _raw_const(point: Point, const: int) -> list[int]:
    # fixed points are raw words (EndID is 0xFFFF, which as a value would mean 'not implemented')
    return [const >> 16, const & 0xFFFF] if point.size == 2 else [const]


def encode(state: DerState, sf: Mapping[str, int] | None = None) -> list[int]:
    """The whole map (BLOCK_SIZE registers from BASE_ADDRESS) for ``state``.

    ``sf`` overrides the scale factors that ``scale_factors`` would choose.
    """
    if sf is None:
        sf = scale_factors(rated_w=state.rated_w, v_ref_v=state.v_ref_v)
    registers = [0] * BLOCK_SIZE
    for point in POINTS:
        if point.const is not None:
            raw = _raw_const(point, point.const)
        elif point.field is None:
            raw = encode_value(point, sf[point.name])
        elif point.type is PointType.STRING:
            raw = encode_string(point, getattr(state, point.field))
        else:
            value = float(getattr(state, point.field))
            raw = encode_value(point, value, sf[point.sf] if point.sf else 0)
        registers[point.offset : point.offset + point.size] = raw
    return registers


def read_scale_factors(registers: Sequence[int]) -> dict[str, int]:
    """The scale factors a device reports in its map (BLOCK_SIZE registers)."""
    _check_length(registers, BLOCK_SIZE)
    return {
        p.name: int(decode_value(p, registers[p.offset : p.offset + 1]))
        for p in POINTS
        if p.type is PointType.SUNSSF
    }


def decode(registers: Sequence[int]) -> DerState:
    """The state in a device's map (BLOCK_SIZE registers from BASE_ADDRESS)."""
    _check_length(registers, BLOCK_SIZE)
    sf = read_scale_factors(registers)
    v: dict[str, float] = {}
    text: dict[str, str] = {}
    for point in POINTS:
        raw = list(registers[point.offset : point.offset + point.size])
        if point.type is PointType.STRING:
            assert point.field is not None
            text[point.field] = decode_string(raw)
        elif point.const is not None:
            if raw != _raw_const(point, point.const):
                found = " ".join(f"{r:#06x}" for r in raw)
                raise SunSpecError(
                    f"is {found}, expected {point.const:#x}: no GridPilot DER map at "
                    f"{BASE_ADDRESS}",
                    point=point.name,
                )
        elif point.field is not None:
            v[point.field] = decode_value(point, raw, sf[point.sf] if point.sf else 0)
    try:
        status = InverterStatus(int(v["status"]))
    except ValueError:
        raise SunSpecError(f"unknown operating state {v['status']:g}", point="St") from None
    if v["v_ref_v"] <= 0:
        raise SunSpecError("nominal voltage is 0", point="VRef")
    return DerState(
        p_w=v["p_w"],
        q_var=v["q_var"],
        v_v=v["v_v"],
        status=status,
        rated_w=v["rated_w"],
        v_ref_v=v["v_ref_v"],
        f_hz=v["f_hz"],
        energy_wh=int(v["energy_wh"]),
        p_limit_pct=v["p_limit_pct"],
        p_limit_enabled=bool(v["p_limit_enabled"]),
        q_set_pct=v["q_set_pct"],
        q_set_enabled=bool(v["q_set_enabled"]),
        t_ms=int(v["t_ms"]),
        serial=text["serial"],
        device_address=int(v["device_address"]),
        manufacturer=text["manufacturer"],
        device_model=text["device_model"],
        options=text["options"],
        version=text["version"],
    )


def encode_controls(
    *,
    p_limit_pct: float,
    p_limit_enabled: bool,
    q_set_pct: float,
    q_set_enabled: bool,
    sf: Mapping[str, int],
) -> list[int]:
    """The CONTROLS_SIZE registers to write at CONTROLS_ADDRESS for one whole setpoint."""
    values = {
        "WMaxLimPct": p_limit_pct,
        "WMaxLim_Ena": int(p_limit_enabled),
        "VArPct": q_set_pct,
        "VArPct_Ena": int(q_set_enabled),
    }
    registers: list[int] = []
    for point in CONTROLS:
        registers += encode_value(point, values[point.name], sf[point.sf] if point.sf else 0)
    return registers


def check_write(
    registers: Sequence[int], address: int, values: Sequence[int]
) -> list[WriteProblem]:
    """What is wrong with writing ``values`` at ``address`` into a device holding ``registers``
    (BLOCK_SIZE registers from BASE_ADDRESS); an empty list means the write is acceptable.

    A device fake uses it to answer like a real inverter: read-only or unmapped registers and
    values outside a point's range are refused, and nothing of a refused write is applied.
    """
    _check_length(registers, BLOCK_SIZE)
    problems: list[WriteProblem] = []
    after = list(registers)
    for i, raw in enumerate(values):
        a = address + i
        point = point_at(a)
        if point is None or not point.writable:
            name, reason = (point.name, "read-only") if point else ("", "not in the map")
            problems.append(WriteProblem(address=a, point=name, reason=reason, read_only=True))
            continue
        after[a - BASE_ADDRESS] = raw
    if problems:
        return problems
    sf = read_scale_factors(after)
    for point in CONTROLS:  # single registers: a write covers a point or leaves it alone
        if not address <= point.address < address + len(values):
            continue
        try:
            value = decode_value(
                point,
                after[point.offset : point.offset + point.size],
                sf[point.sf] if point.sf else 0,
            )
        except SunSpecError as exc:
            problems.append(_problem(point, exc.reason))
            continue
        if (point.min is not None and value < point.min) or (
            point.max is not None and value > point.max
        ):
            allowed = f"{point.min:g}..{point.max:g}"
            unit = f" {point.unit}" if point.unit else ""
            problems.append(_problem(point, f"{value:g}{unit} outside {allowed}"))
    return problems


def _problem(point: Point, reason: str) -> WriteProblem:
    return WriteProblem(address=point.address, point=point.name, reason=reason, read_only=False)


def _check_length(registers: Sequence[int], expected: int) -> None:
    if len(registers) != expected:
        raise SunSpecError(f"expected {expected} registers, got {len(registers)}")
