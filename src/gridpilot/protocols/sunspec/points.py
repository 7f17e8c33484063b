"""The register map of a GridPilot DER inverter, as data: one SunSpec-like model block.

It is not a certified SunSpec model: it takes the points a DMS needs from SunSpec models 103
(inverter measurements), 120 (nameplate) and 123 (immediate controls) and lays them out in one
vendor-range model (ID 64900), so one read fetches everything. Types and scale factors follow
SunSpec: a value is ``raw * 10**sf`` with ``sf`` read from its ``*_SF`` register; ``acc32``
rolls over at 2**32; ``Tms`` lets the gateway stamp the values with the inverter's time rather
than the time of the poll. All registers are holding registers (read with function 3, written
with 6 or 16), big-endian, multi-register values high word first. Addresses are 0-based
protocol addresses.

====  ==============  =======  =============  =====  ==  ===========================================
addr  point           type     scale factor   unit   rw  meaning
====  ==============  =======  =============  =====  ==  ===========================================
40000 SunS            uint32   -              -      r   marker 0x53756E53 ("SunS"), 2 registers
40002 ID              uint16   -              -      r   model id 64900
40003 L               uint16   -              regs   r   model length after L: 25
40004 W               int16    W_SF           W      r   active power, + = production
40005 VAr             int16    VAr_SF         var    r   reactive power, + = injected into the grid
40006 PhV             uint16   V_SF           V      r   voltage at the point of connection
40007 Hz              float32  -              Hz     r   frequency, 2 registers
40009 WH              acc32    WH_SF          Wh     r   energy produced, 2 registers, rolls over
40011 St              uint16   -              -      r   operating state (InverterStatus)
40012 W_SF            sunssf   -              -      r   scale factor of W
40013 VAr_SF          sunssf   -              -      r   scale factor of VAr
40014 V_SF            sunssf   -              -      r   scale factor of PhV and VRef
40015 WH_SF           sunssf   -              -      r   scale factor of WH
40016 WRtg            uint16   WRtg_SF        W      r   rated active power (also the base of the %)
40017 WRtg_SF         sunssf   -              -      r   scale factor of WRtg
40018 VRef            uint16   V_SF           V      r   nominal voltage (1.0 p.u.)
40019 WMaxLimPct      uint16   WMaxLimPct_SF  %WRtg  rw  active power limit, 0..100
40020 WMaxLim_Ena     uint16   -              -      rw  1: the limit applies, 0: it does not
40021 VArPct          int16    VArPct_SF      %WRtg  rw  reactive power setpoint, -100..100
40022 VArPct_Ena      uint16   -              -      rw  1: the setpoint applies, 0: it does not
40023 WMaxLimPct_SF   sunssf   -              -      r   scale factor of WMaxLimPct (-1)
40024 VArPct_SF       sunssf   -              -      r   scale factor of VArPct (-1)
40025 Tms             uint64   -              ms     r   time of the values, ms since 1970 UTC,
                                                          4 registers; 0: no clock
40029 EndID           uint16   -              -      r   end of the SunSpec chain: 0xFFFF
40030 EndL            uint16   -              -      r   0
====  ==============  =======  =============  =====  ==  ===========================================

SunSpec "not implemented" values (int16 0x8000, uint16 0xFFFF, sunssf 0x8000, float32 NaN) are
never written by the encoder and refused by the decoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum


class PointType(StrEnum):
    INT16 = "int16"
    UINT16 = "uint16"
    UINT32 = "uint32"
    UINT64 = "uint64"
    ACC32 = "acc32"
    FLOAT32 = "float32"
    SUNSSF = "sunssf"  # a scale factor: int16 in -10..10

    @property
    def size(self) -> int:
        """Registers a value of this type takes."""
        if self is PointType.UINT64:
            return 4
        return 2 if self in _TWO_REGISTERS else 1


_TWO_REGISTERS = {PointType.UINT32, PointType.ACC32, PointType.FLOAT32}


class InverterStatus(IntEnum):
    """SunSpec operating state ``St`` (models 101-103)."""

    OFF = 1
    SLEEPING = 2
    STARTING = 3
    MPPT = 4
    THROTTLED = 5
    SHUTTING_DOWN = 6
    FAULT = 7
    STANDBY = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class Point:
    """One row of the register map."""

    name: str  # SunSpec point name
    offset: int  # registers from BASE_ADDRESS
    type: PointType
    field: str | None = None  # the DerState attribute it carries; None for constants and SFs
    sf: str | None = None  # name of the scale-factor point that scales it
    unit: str = ""
    writable: bool = False
    min: float | None = None  # accepted range of a written value, in engineering units
    max: float | None = None
    const: int | None = None  # the raw value of a fixed point (marker, id, length)

    @property
    def address(self) -> int:
        return BASE_ADDRESS + self.offset

    @property
    def size(self) -> int:
        return self.type.size


BASE_ADDRESS = 40000
MODEL_ID = 64900
MODEL_LENGTH = 25  # registers after L
SUNS_MARKER = 0x53756E53  # "SunS"
SETPOINT_SF = -1  # WMaxLimPct and VArPct in 0.1 % steps

_T = PointType
POINTS: tuple[Point, ...] = (
    Point(name="SunS", offset=0, type=_T.UINT32, const=SUNS_MARKER),
    Point(name="ID", offset=2, type=_T.UINT16, const=MODEL_ID),
    Point(name="L", offset=3, type=_T.UINT16, const=MODEL_LENGTH, unit="regs"),
    Point(name="W", offset=4, type=_T.INT16, field="p_w", sf="W_SF", unit="W"),
    Point(name="VAr", offset=5, type=_T.INT16, field="q_var", sf="VAr_SF", unit="var"),
    Point(name="PhV", offset=6, type=_T.UINT16, field="v_v", sf="V_SF", unit="V"),
    Point(name="Hz", offset=7, type=_T.FLOAT32, field="f_hz", unit="Hz"),
    Point(name="WH", offset=9, type=_T.ACC32, field="energy_wh", sf="WH_SF", unit="Wh"),
    Point(name="St", offset=11, type=_T.UINT16, field="status"),
    Point(name="W_SF", offset=12, type=_T.SUNSSF),
    Point(name="VAr_SF", offset=13, type=_T.SUNSSF),
    Point(name="V_SF", offset=14, type=_T.SUNSSF),
    Point(name="WH_SF", offset=15, type=_T.SUNSSF),
    Point(name="WRtg", offset=16, type=_T.UINT16, field="rated_w", sf="WRtg_SF", unit="W"),
    Point(name="WRtg_SF", offset=17, type=_T.SUNSSF),
    Point(name="VRef", offset=18, type=_T.UINT16, field="v_ref_v", sf="V_SF", unit="V"),
    Point(
        name="WMaxLimPct",
        offset=19,
        type=_T.UINT16,
        field="p_limit_pct",
        sf="WMaxLimPct_SF",
        unit="%",
        writable=True,
        min=0.0,
        max=100.0,
    ),
    Point(
        name="WMaxLim_Ena",
        offset=20,
        type=_T.UINT16,
        field="p_limit_enabled",
        writable=True,
        min=0,
        max=1,
    ),
    Point(
        name="VArPct",
        offset=21,
        type=_T.INT16,
        field="q_set_pct",
        sf="VArPct_SF",
        unit="%",
        writable=True,
        min=-100.0,
        max=100.0,
    ),
    Point(
        name="VArPct_Ena",
        offset=22,
        type=_T.UINT16,
        field="q_set_enabled",
        writable=True,
        min=0,
        max=1,
    ),
    Point(name="WMaxLimPct_SF", offset=23, type=_T.SUNSSF),
    Point(name="VArPct_SF", offset=24, type=_T.SUNSSF),
    Point(name="Tms", offset=25, type=_T.UINT64, field="t_ms", unit="ms"),
    Point(name="EndID", offset=29, type=_T.UINT16, const=0xFFFF),
    Point(name="EndL", offset=30, type=_T.UINT16, const=0),
)

BLOCK_SIZE = 31  # registers from BASE_ADDRESS: the whole map, read in one request
BY_NAME: dict[str, Point] = {p.name: p for p in POINTS}
# the writable points are contiguous, so one write of 4 registers sets a whole setpoint
CONTROLS: tuple[Point, ...] = tuple(p for p in POINTS if p.writable)
CONTROLS_ADDRESS = CONTROLS[0].address
CONTROLS_SIZE = sum(p.size for p in CONTROLS)


def point_at(address: int) -> Point | None:
    """The point that covers ``address`` (any of its registers), or None outside the map."""
    for p in POINTS:
        if p.address <= address < p.address + p.size:
            return p
    return None
