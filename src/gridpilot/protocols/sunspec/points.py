"""The register map of a GridPilot DER inverter, as data: the SunSpec common model and one
SunSpec-like model block.

The common model (SunSpec model 1) says who the device is: manufacturer, model, version, serial
number and its Modbus device address; a gateway compares the serial number and the address with
its device registry, so it never reads or commands another inverter than the one it expects.
The DER block is not a certified SunSpec model: it takes the points a DMS needs from SunSpec
models 103 (inverter measurements), 120 (nameplate) and 123 (immediate controls) and lays them
out in one vendor-range model (ID 64900), so one read fetches everything, identity included.
Types and scale factors follow SunSpec: a value is ``raw * 10**sf`` with ``sf`` read from its
``*_SF`` register; ``acc32`` rolls over at 2**32; ``Tms`` lets the gateway stamp the values with
the inverter's time rather than the time of the poll; a ``string`` is ASCII, two characters a
register, padded with NUL. All registers are holding registers (read with function 3, written
with 6 or 16), big-endian, multi-register values high word first. Addresses are 0-based
protocol addresses.

====  ==============  =======  =============  =====  ==  ===========================================
addr  point           type     scale factor   unit   rw  meaning
====  ==============  =======  =============  =====  ==  ===========================================
40000 SunS            uint32   -              -      r   marker 0x53756E53 ("SunS"), 2 registers
40002 C_ID            uint16   -              -      r   common model id 1
40003 C_L             uint16   -              regs   r   common model length after C_L: 66
40004 Mn              string   -              -      r   manufacturer, 16 registers
40020 Md              string   -              -      r   model, 16 registers
40036 Opt             string   -              -      r   options, 8 registers
40044 Vr              string   -              -      r   version, 8 registers
40052 SN              string   -              -      r   serial number, 16 registers
40068 DA              uint16   -              -      r   Modbus device address (unit id)
40069 Pad             uint16   -              -      r   0x8000
40070 ID              uint16   -              -      r   model id 64900
40071 L               uint16   -              regs   r   model length after L: 25
40072 W               int16    W_SF           W      r   active power, + = production
40073 VAr             int16    VAr_SF         var    r   reactive power, + = injected into the grid
40074 PhV             uint16   V_SF           V      r   voltage at the point of connection
40075 Hz              float32  -              Hz     r   frequency, 2 registers
40077 WH              acc32    WH_SF          Wh     r   energy produced, 2 registers, rolls over
40079 St              uint16   -              -      r   operating state (InverterStatus)
40080 W_SF            sunssf   -              -      r   scale factor of W
40081 VAr_SF          sunssf   -              -      r   scale factor of VAr
40082 V_SF            sunssf   -              -      r   scale factor of PhV and VRef
40083 WH_SF           sunssf   -              -      r   scale factor of WH
40084 WRtg            uint16   WRtg_SF        W      r   rated active power (also the base of the %)
40085 WRtg_SF         sunssf   -              -      r   scale factor of WRtg
40086 VRef            uint16   V_SF           V      r   nominal voltage (1.0 p.u.)
40087 WMaxLimPct      uint16   WMaxLimPct_SF  %WRtg  rw  active power limit, 0..100
40088 WMaxLim_Ena     uint16   -              -      rw  1: the limit applies, 0: it does not
40089 VArPct          int16    VArPct_SF      %WRtg  rw  reactive power setpoint, -100..100
40090 VArPct_Ena      uint16   -              -      rw  1: the setpoint applies, 0: it does not
40091 WMaxLimPct_SF   sunssf   -              -      r   scale factor of WMaxLimPct (-1)
40092 VArPct_SF       sunssf   -              -      r   scale factor of VArPct (-1)
40093 Tms             uint64   -              ms     r   time of the values, ms since 1970 UTC,
                                                          4 registers; 0: no clock
40097 EndID           uint16   -              -      r   end of the SunSpec chain: 0xFFFF
40098 EndL            uint16   -              -      r   0
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
    STRING = "string"  # ASCII, two characters a register, NUL-padded; its length is the point's

    @property
    def size(self) -> int:
        """Registers a value of this type takes (a string: see ``Point.size``)."""
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
    length: int = 0  # registers of a string point

    @property
    def address(self) -> int:
        return BASE_ADDRESS + self.offset

    @property
    def size(self) -> int:
        return self.length if self.type is PointType.STRING else self.type.size


BASE_ADDRESS = 40000
COMMON_MODEL_ID = 1
COMMON_LENGTH = 66  # registers after C_L
MODEL_ID = 64900
MODEL_LENGTH = 25  # registers after L
PAD = 0x8000
SUNS_MARKER = 0x53756E53  # "SunS"
SETPOINT_SF = -1  # WMaxLimPct and VArPct in 0.1 % steps

_T = PointType
POINTS: tuple[Point, ...] = (
    Point(name="SunS", offset=0, type=_T.UINT32, const=SUNS_MARKER),
    Point(name="C_ID", offset=2, type=_T.UINT16, const=COMMON_MODEL_ID),
    Point(name="C_L", offset=3, type=_T.UINT16, const=COMMON_LENGTH, unit="regs"),
    Point(name="Mn", offset=4, type=_T.STRING, field="manufacturer", length=16),
    Point(name="Md", offset=20, type=_T.STRING, field="device_model", length=16),
    Point(name="Opt", offset=36, type=_T.STRING, field="options", length=8),
    Point(name="Vr", offset=44, type=_T.STRING, field="version", length=8),
    Point(name="SN", offset=52, type=_T.STRING, field="serial", length=16),
    Point(name="DA", offset=68, type=_T.UINT16, field="device_address"),
    Point(name="Pad", offset=69, type=_T.UINT16, const=PAD),
    Point(name="ID", offset=70, type=_T.UINT16, const=MODEL_ID),
    Point(name="L", offset=71, type=_T.UINT16, const=MODEL_LENGTH, unit="regs"),
    Point(name="W", offset=72, type=_T.INT16, field="p_w", sf="W_SF", unit="W"),
    Point(name="VAr", offset=73, type=_T.INT16, field="q_var", sf="VAr_SF", unit="var"),
    Point(name="PhV", offset=74, type=_T.UINT16, field="v_v", sf="V_SF", unit="V"),
    Point(name="Hz", offset=75, type=_T.FLOAT32, field="f_hz", unit="Hz"),
    Point(name="WH", offset=77, type=_T.ACC32, field="energy_wh", sf="WH_SF", unit="Wh"),
    Point(name="St", offset=79, type=_T.UINT16, field="status"),
    Point(name="W_SF", offset=80, type=_T.SUNSSF),
    Point(name="VAr_SF", offset=81, type=_T.SUNSSF),
    Point(name="V_SF", offset=82, type=_T.SUNSSF),
    Point(name="WH_SF", offset=83, type=_T.SUNSSF),
    Point(name="WRtg", offset=84, type=_T.UINT16, field="rated_w", sf="WRtg_SF", unit="W"),
    Point(name="WRtg_SF", offset=85, type=_T.SUNSSF),
    Point(name="VRef", offset=86, type=_T.UINT16, field="v_ref_v", sf="V_SF", unit="V"),
    Point(
        name="WMaxLimPct",
        offset=87,
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
        offset=88,
        type=_T.UINT16,
        field="p_limit_enabled",
        writable=True,
        min=0,
        max=1,
    ),
    Point(
        name="VArPct",
        offset=89,
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
        offset=90,
        type=_T.UINT16,
        field="q_set_enabled",
        writable=True,
        min=0,
        max=1,
    ),
    Point(name="WMaxLimPct_SF", offset=91, type=_T.SUNSSF),
    Point(name="VArPct_SF", offset=92, type=_T.SUNSSF),
    Point(name="Tms", offset=93, type=_T.UINT64, field="t_ms", unit="ms"),
    Point(name="EndID", offset=97, type=_T.UINT16, const=0xFFFF),
    Point(name="EndL", offset=98, type=_T.UINT16, const=0),
)

BLOCK_SIZE = 99  # registers from BASE_ADDRESS: the whole map, read in one request
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
