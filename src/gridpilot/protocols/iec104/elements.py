"""Type identifications, causes of transmission, quality bits and the information objects."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import ClassVar

from gridpilot.protocols.iec104.cp56 import Cp56Time

MAX_IOA = 0xFFFFFF  # three-octet information object address
FLOAT32_MAX = 3.4028234663852886e38


class TypeId(IntEnum):
    """The supported subset of type identifications (IEC 60870-5-101/104 numbering)."""

    M_SP_NA_1 = 1  # single point
    M_DP_NA_1 = 3  # double point
    M_ME_NB_1 = 11  # measured value, scaled
    M_ME_NC_1 = 13  # measured value, short float
    M_SP_TB_1 = 30  # single point with CP56Time2a
    M_DP_TB_1 = 31  # double point with CP56Time2a
    M_ME_TE_1 = 35  # scaled with CP56Time2a
    M_ME_TF_1 = 36  # short float with CP56Time2a
    C_SC_NA_1 = 45  # single command
    C_DC_NA_1 = 46  # double command
    C_IC_NA_1 = 100  # interrogation command
    C_CS_NA_1 = 103  # clock synchronisation command


class Cot(IntEnum):
    """Cause of transmission (the six low bits of the COT octet)."""

    PERIODIC = 1
    BACKGROUND_SCAN = 2
    SPONTANEOUS = 3
    INITIALISED = 4
    REQUEST = 5
    ACTIVATION = 6
    ACTIVATION_CON = 7
    DEACTIVATION = 8
    DEACTIVATION_CON = 9
    ACTIVATION_TERMINATION = 10
    RETURN_INFO_REMOTE = 11
    RETURN_INFO_LOCAL = 12
    FILE_TRANSFER = 13
    INTERROGATED_BY_STATION = 20
    INTERROGATED_BY_GROUP_1 = 21
    INTERROGATED_BY_GROUP_2 = 22
    INTERROGATED_BY_GROUP_3 = 23
    INTERROGATED_BY_GROUP_4 = 24
    INTERROGATED_BY_GROUP_5 = 25
    INTERROGATED_BY_GROUP_6 = 26
    INTERROGATED_BY_GROUP_7 = 27
    INTERROGATED_BY_GROUP_8 = 28
    INTERROGATED_BY_GROUP_9 = 29
    INTERROGATED_BY_GROUP_10 = 30
    INTERROGATED_BY_GROUP_11 = 31
    INTERROGATED_BY_GROUP_12 = 32
    INTERROGATED_BY_GROUP_13 = 33
    INTERROGATED_BY_GROUP_14 = 34
    INTERROGATED_BY_GROUP_15 = 35
    INTERROGATED_BY_GROUP_16 = 36
    REQUESTED_BY_GENERAL_COUNTER = 37
    REQUESTED_BY_GROUP_1_COUNTER = 38
    REQUESTED_BY_GROUP_2_COUNTER = 39
    REQUESTED_BY_GROUP_3_COUNTER = 40
    REQUESTED_BY_GROUP_4_COUNTER = 41
    UNKNOWN_TYPE_ID = 44
    UNKNOWN_COT = 45
    UNKNOWN_CA = 46
    UNKNOWN_IOA = 47


class Quality(IntFlag):
    """Quality bits of QDS (measured values) and of SIQ/DIQ (points, which have no OV)."""

    GOOD = 0
    OVERFLOW = 0x01
    BLOCKED = 0x10
    SUBSTITUTED = 0x20
    NOT_TOPICAL = 0x40
    INVALID = 0x80


QDS_MASK = 0xF1  # OV, BL, SB, NT, IV; bits 1-3 are reserved (EI only in protection types)
SIQ_MASK = 0xF0  # BL, SB, NT, IV


class DoublePointState(IntEnum):
    """DPI of a double point, and DCS of a double command (where 0 and 3 are not permitted)."""

    INTERMEDIATE = 0
    OFF = 1
    ON = 2
    INDETERMINATE = 3


QOI_STATION = 20  # qualifier of interrogation: station (general) interrogation


def _check_ioa(ioa: int) -> None:
    if not 0 <= ioa <= MAX_IOA:
        raise ValueError(f"an information object address must be in 0..{MAX_IOA}, got {ioa}")


def _check_qualifier(qualifier: int) -> None:
    if not 0 <= qualifier <= 31:
        raise ValueError(f"a command qualifier (QU) must be in 0..31, got {qualifier}")


@dataclass(frozen=True, slots=True, kw_only=True)
class SinglePoint:
    UNTIMED: ClassVar[TypeId | None] = TypeId.M_SP_NA_1
    TIMED: ClassVar[TypeId | None] = TypeId.M_SP_TB_1

    ioa: int
    value: bool
    quality: Quality = Quality.GOOD
    time: Cp56Time | None = None

    def __post_init__(self) -> None:
        _check_ioa(self.ioa)
        if self.quality & Quality.OVERFLOW:
            raise ValueError("single-point information has no overflow bit")


@dataclass(frozen=True, slots=True, kw_only=True)
class DoublePoint:
    UNTIMED: ClassVar[TypeId | None] = TypeId.M_DP_NA_1
    TIMED: ClassVar[TypeId | None] = TypeId.M_DP_TB_1

    ioa: int
    value: DoublePointState
    quality: Quality = Quality.GOOD
    time: Cp56Time | None = None

    def __post_init__(self) -> None:
        _check_ioa(self.ioa)
        if self.quality & Quality.OVERFLOW:
            raise ValueError("double-point information has no overflow bit")


@dataclass(frozen=True, slots=True, kw_only=True)
class ScaledValue:
    UNTIMED: ClassVar[TypeId | None] = TypeId.M_ME_NB_1
    TIMED: ClassVar[TypeId | None] = TypeId.M_ME_TE_1

    ioa: int
    value: int
    quality: Quality = Quality.GOOD
    time: Cp56Time | None = None

    def __post_init__(self) -> None:
        _check_ioa(self.ioa)
        if not -32768 <= self.value <= 32767:
            raise ValueError(f"a scaled value must fit 16 bits signed, got {self.value}")


@dataclass(frozen=True, slots=True, kw_only=True)
class FloatValue:
    UNTIMED: ClassVar[TypeId | None] = TypeId.M_ME_NC_1
    TIMED: ClassVar[TypeId | None] = TypeId.M_ME_TF_1

    ioa: int
    value: float
    quality: Quality = Quality.GOOD
    time: Cp56Time | None = None

    def __post_init__(self) -> None:
        _check_ioa(self.ioa)
        # NaN and infinities exist in IEEE 754 single precision; large finite values do not.
        if math.isfinite(self.value) and abs(self.value) > FLOAT32_MAX:
            raise ValueError(f"{self.value} does not fit an IEEE 754 short float")


@dataclass(frozen=True, slots=True, kw_only=True)
class SingleCommand:
    UNTIMED: ClassVar[TypeId | None] = TypeId.C_SC_NA_1
    TIMED: ClassVar[TypeId | None] = None

    ioa: int
    on: bool
    select: bool = False  # S/E bit: True selects, False executes
    qualifier: int = 0  # QU: 0 no definition, 1 short pulse, 2 long pulse, 3 persistent
    time: None = None

    def __post_init__(self) -> None:
        _check_ioa(self.ioa)
        _check_qualifier(self.qualifier)


@dataclass(frozen=True, slots=True, kw_only=True)
class DoubleCommand:
    UNTIMED: ClassVar[TypeId | None] = TypeId.C_DC_NA_1
    TIMED: ClassVar[TypeId | None] = None

    ioa: int
    state: DoublePointState  # OFF or ON; the others decode so that they can be refused
    select: bool = False
    qualifier: int = 0
    time: None = None

    def __post_init__(self) -> None:
        _check_ioa(self.ioa)
        _check_qualifier(self.qualifier)


@dataclass(frozen=True, slots=True, kw_only=True)
class Interrogation:
    UNTIMED: ClassVar[TypeId | None] = TypeId.C_IC_NA_1
    TIMED: ClassVar[TypeId | None] = None

    ioa: int = 0
    qualifier: int = QOI_STATION  # QOI: 20 station, 21..36 groups 1..16
    time: None = None

    def __post_init__(self) -> None:
        _check_ioa(self.ioa)
        if not 0 <= self.qualifier <= 255:
            raise ValueError(f"QOI is one octet, got {self.qualifier}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClockSync:
    UNTIMED: ClassVar[TypeId | None] = None
    TIMED: ClassVar[TypeId | None] = TypeId.C_CS_NA_1

    ioa: int = 0
    time: Cp56Time

    def __post_init__(self) -> None:
        _check_ioa(self.ioa)


MonitoredObject = SinglePoint | DoublePoint | ScaledValue | FloatValue

InformationObject = (
    SinglePoint
    | DoublePoint
    | ScaledValue
    | FloatValue
    | SingleCommand
    | DoubleCommand
    | Interrogation
    | ClockSync
)


def type_id_of(obj: InformationObject) -> TypeId:
    """The type identification an object is sent as: the timed variant when it has a time."""
    type_id = obj.UNTIMED if obj.time is None else obj.TIMED
    if type_id is None:  # only ClockSync (time mandatory) and commands (no time) can get here
        raise ValueError(f"{type(obj).__name__} cannot be sent with time={obj.time!r}")
    return type_id
