"""The coded values of C37.118.2-2011: frame types, commands, STAT fields, channel kinds."""

from __future__ import annotations

import math
from enum import IntEnum


class FrameType(IntEnum):
    """Bits 6-4 of the second SYNC byte."""

    DATA = 0
    HEADER = 1
    CFG1 = 2  # what the PMU can report
    CFG2 = 3  # what the data frames carry now
    COMMAND = 4
    CFG3 = 5  # CFG-2 plus long names, scaling, location (2011 only)


class Command(IntEnum):
    TURN_OFF = 1  # stop sending data frames
    TURN_ON = 2  # start sending data frames
    SEND_HDR = 3
    SEND_CFG1 = 4
    SEND_CFG2 = 5
    SEND_CFG3 = 6
    EXTENDED = 8  # followed by user-defined EXTFRAME words


class DataError(IntEnum):
    """STAT bits 15-14."""

    GOOD = 0
    PMU_ERROR = 1  # no information about the data
    TEST_MODE = 2  # or absent data tags inserted: do not use the values
    PMU_ERROR_DO_NOT_USE = 3


class PmuTimeQuality(IntEnum):
    """STAT bits 8-6: the PMU's estimate of its maximum time error."""

    NOT_USED = 0  # older PMUs: look at the message time quality instead
    UNDER_100NS = 1
    UNDER_1US = 2
    UNDER_10US = 3
    UNDER_100US = 4
    UNDER_1MS = 5
    UNDER_10MS = 6
    OVER_10MS_OR_UNKNOWN = 7


class UnlockedTime(IntEnum):
    """STAT bits 5-4: how long the PMU's clock has been without its time source."""

    LOCKED_OR_UNDER_10S = 0
    UNDER_100S = 1
    UNDER_1000S = 2
    OVER_1000S = 3


class TriggerReason(IntEnum):
    """STAT bits 3-0; 8-15 are user-defined."""

    MANUAL = 0
    MAGNITUDE_LOW = 1
    MAGNITUDE_HIGH = 2
    PHASE_ANGLE_DIFF = 3
    FREQUENCY_HIGH_OR_LOW = 4
    DF_DT_HIGH = 5
    RESERVED = 6
    DIGITAL = 7


class PhasorKind(IntEnum):
    VOLTAGE = 0
    CURRENT = 1


class PhasorComponent(IntEnum):
    """CFG-3 PHSCALE bits 2-0 (3 and 7 are reserved)."""

    ZERO_SEQUENCE = 0
    POSITIVE_SEQUENCE = 1
    NEGATIVE_SEQUENCE = 2
    PHASE_A = 4
    PHASE_B = 5
    PHASE_C = 6


class AnalogKind(IntEnum):
    """ANUNIT most significant byte; 65-255 are user-defined."""

    POINT_ON_WAVE = 0
    RMS = 1
    PEAK = 2


# FRACSEC bits 27-24, the message time quality: worst-case clock error in seconds.
MESSAGE_TIME_QUALITY_S: dict[int, float] = {
    0x0: 0.0,  # locked to a UTC-traceable source
    **{code: 10.0 ** (code - 10) for code in range(1, 0xC)},  # 1 ns ... 10 s
    0xF: math.inf,  # clock failure: the time is not reliable
}
