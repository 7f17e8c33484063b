"""C37.118.2-2011 frames as immutable, typed values: what the codec reads and writes.

Times on the wire are SOC (seconds since 1970-01-01 UTC) plus FRACSEC / TIME_BASE; ``to_ns`` and
``from_ns`` convert to and from integer nanoseconds. Channel structs carry the CFG-1/2 fields
and the CFG-3 ones side by side, so one description answers every configuration request.
"""

from __future__ import annotations

import cmath
import math

import msgspec

from gridpilot.protocols.c37118.codes import (
    AnalogKind,
    DataError,
    FrameType,
    PhasorComponent,
    PhasorKind,
    PmuTimeQuality,
    TriggerReason,
    UnlockedTime,
)
from gridpilot.protocols.c37118.errors import InvalidValueError

NS_PER_S = 1_000_000_000


def to_ns(soc: int, fracsec: int, time_base: int) -> int:
    """SOC and FRACSEC (in 1/time_base s) to integer ns since the epoch, rounded to nearest."""
    return soc * NS_PER_S + (fracsec * NS_PER_S + time_base // 2) // time_base


def from_ns(t_ns: int, time_base: int) -> tuple[int, int]:
    """Integer ns since the epoch to (SOC, FRACSEC) with the nearest FRACSEC tick."""
    soc, ns = divmod(t_ns, NS_PER_S)
    fracsec = (ns * time_base + NS_PER_S // 2) // NS_PER_S
    if fracsec >= time_base:
        soc, fracsec = soc + 1, fracsec - time_base
    return soc, fracsec


def check_range(field: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise InvalidValueError(field, value, f"must be in {low}..{high}")


def check_name(field: str, name: str) -> None:
    # CFG-3 names are UTF-8 with a one-byte length; CFG-1/2 truncate to 16 bytes on encode.
    if len(name.encode("utf-8", "surrogatepass")) > 255:
        raise InvalidValueError(field, name, "longer than 255 bytes in UTF-8")


class DataFormat(msgspec.Struct, frozen=True, kw_only=True):
    """FORMAT: how one PMU's phasors, analogs and FREQ/DFREQ are put in data frames."""

    polar: bool = True  # bit 0: magnitude and angle, else real and imaginary
    phasors_float: bool = True  # bit 1: 32-bit floats, else 16-bit integers
    analogs_float: bool = True  # bit 2
    freq_float: bool = True  # bit 3

    @property
    def word(self) -> int:
        return self.polar | self.phasors_float << 1 | self.analogs_float << 2 | self.freq_float << 3

    @classmethod
    def from_word(cls, word: int) -> DataFormat:
        return cls(
            polar=bool(word & 1),
            phasors_float=bool(word & 2),
            analogs_float=bool(word & 4),
            freq_float=bool(word & 8),
        )


class Stat(msgspec.Struct, frozen=True, kw_only=True):
    """The STAT word of one PMU in one data frame, bit by bit."""

    data_error: DataError = DataError.GOOD
    sync_lost: bool = False  # bit 13: not in sync with a UTC-traceable time source
    sorted_by_arrival: bool = False  # bit 12: else sorted by timestamp
    trigger: bool = False  # bit 11
    config_change: bool = False  # bit 10: the configuration changes within a minute
    data_modified: bool = False  # bit 9: modified by post-processing
    time_quality: PmuTimeQuality = PmuTimeQuality.NOT_USED
    unlocked: UnlockedTime = UnlockedTime.LOCKED_OR_UNDER_10S
    trigger_reason: int = TriggerReason.MANUAL  # 0-15, 8-15 user-defined

    def __post_init__(self) -> None:
        check_range("trigger_reason", self.trigger_reason, 0, 15)

    @property
    def word(self) -> int:
        return (
            self.data_error << 14
            | self.sync_lost << 13
            | self.sorted_by_arrival << 12
            | self.trigger << 11
            | self.config_change << 10
            | self.data_modified << 9
            | self.time_quality << 6
            | self.unlocked << 4
            | self.trigger_reason
        )

    @classmethod
    def from_word(cls, word: int) -> Stat:
        return cls(
            data_error=DataError(word >> 14 & 3),
            sync_lost=bool(word & 0x2000),
            sorted_by_arrival=bool(word & 0x1000),
            trigger=bool(word & 0x0800),
            config_change=bool(word & 0x0400),
            data_modified=bool(word & 0x0200),
            time_quality=PmuTimeQuality(word >> 6 & 7),
            unlocked=UnlockedTime(word >> 4 & 3),
            trigger_reason=word & 0xF,
        )


class PmuData(msgspec.Struct, frozen=True, kw_only=True):
    """One PMU's block of one data frame, in engineering units.

    Phasors are complex volts or amperes whatever the wire format; missing values (NaN on the
    wire, or -32768 in integer fields) are NaN. ``stat`` is the raw STAT word (``status``
    decodes it); the decoder keeps it raw because most readers only test a bit or two.
    """

    freq_hz: float
    rocof_hz_s: float = 0.0
    phasors: tuple[complex, ...] = ()
    analogs: tuple[float, ...] = ()
    digitals: tuple[int, ...] = ()
    stat: int = 0

    @property
    def status(self) -> Stat:
        return Stat.from_word(self.stat)

    @property
    def data_valid(self) -> bool:
        return not self.stat & 0xC000

    @property
    def time_synced(self) -> bool:
        return not self.stat & 0x2000

    def polar(self) -> tuple[tuple[float, float], ...]:
        """(magnitude, angle in radians) of each phasor."""
        return tuple((abs(z), cmath.phase(z)) for z in self.phasors)


class PhasorChannel(msgspec.Struct, frozen=True, kw_only=True):
    """One phasor channel. CFG-1/2 carry ``kind`` and ``phunit``; CFG-3 carries ``kind``,
    ``component``, the flags, ``scale`` and ``angle_offset_rad``."""

    name: str
    kind: PhasorKind = PhasorKind.VOLTAGE
    phunit: int = 0  # 24-bit, 1e-5 V or A per bit of 16-bit integer data (floats ignore it)
    component: int = PhasorComponent.POSITIVE_SEQUENCE
    modification: int = 0  # CFG-3: 16 bits saying how the data was modified (0: not at all)
    user_flags: int = 0  # CFG-3: a byte for the user
    scale: float | None = None  # CFG-3: V or A per bit of integer data; None: phunit * 1e-5
    angle_offset_rad: float = 0.0  # CFG-3: added to the angle of integer data

    def __post_init__(self) -> None:
        check_name("phasor name", self.name)
        check_range("phunit", self.phunit, 0, 0xFFFFFF)
        check_range("component", self.component, 0, 7)
        check_range("modification", self.modification, 0, 0xFFFF)
        check_range("user_flags", self.user_flags, 0, 0xFF)

    @property
    def bit_scale(self) -> float:
        """V or A per bit of integer data under CFG-3."""
        return self.phunit * 1e-5 if self.scale is None else self.scale


class AnalogChannel(msgspec.Struct, frozen=True, kw_only=True):
    """One analog channel: an integer value is ``raw * anunit`` under CFG-1/2 (the standard
    leaves the 24-bit factor to the user; this is what other implementations do) and
    ``raw * scale + offset`` under CFG-3. Float values are taken as they are."""

    name: str
    kind: int = AnalogKind.POINT_ON_WAVE  # 0-255, 65-255 user-defined
    anunit: int = 1  # signed 24-bit
    scale: float | None = None  # CFG-3; None: anunit
    offset: float = 0.0  # CFG-3

    def __post_init__(self) -> None:
        check_name("analog name", self.name)
        check_range("analog kind", self.kind, 0, 0xFF)
        check_range("anunit", self.anunit, -0x800000, 0x7FFFFF)

    @property
    def bit_scale(self) -> float:
        return float(self.anunit) if self.scale is None else self.scale


_NO_LABELS = ("",) * 16


class DigitalWord(msgspec.Struct, frozen=True, kw_only=True):
    """One 16-bit digital status word: a label per bit (bit 0 first) and the DIGUNIT masks."""

    labels: tuple[str, ...] = _NO_LABELS
    normal: int = 0  # XOR with the word gives 0 in the normal state
    valid: int = 0xFFFF  # bits that are in use

    def __post_init__(self) -> None:
        if len(self.labels) != 16:
            raise InvalidValueError("labels", self.labels, "a digital word has 16 labels")
        for label in self.labels:
            check_name("digital label", label)
        check_range("normal", self.normal, 0, 0xFFFF)
        check_range("valid", self.valid, 0, 0xFFFF)


class PmuConfig(msgspec.Struct, frozen=True, kw_only=True):
    """One PMU of a stream: its block in CFG-1/2/3 and the layout of its block in data frames."""

    station: str
    idcode: int
    phasors: tuple[PhasorChannel, ...] = ()
    analogs: tuple[AnalogChannel, ...] = ()
    digitals: tuple[DigitalWord, ...] = ()
    format: DataFormat = DataFormat()
    nominal_freq_hz: int = 50
    cfgcnt: int = 0  # incremented at each change of this PMU's configuration
    # CFG-3 only; infinity means "location not given", as the standard says
    global_pmu_id: bytes = bytes(16)
    latitude_deg: float = math.inf
    longitude_deg: float = math.inf
    elevation_m: float = math.inf
    service_class: str = "M"  # C37.118.1: M (measurement) or P (protection)
    window_us: int = 0
    group_delay_us: int = 0

    def __post_init__(self) -> None:
        check_name("station", self.station)
        check_range("idcode", self.idcode, 0, 0xFFFF)
        check_range("phasor count", len(self.phasors), 0, 0xFFFF)
        check_range("analog count", len(self.analogs), 0, 0xFFFF)
        check_range("digital count", len(self.digitals), 0, 0xFFFF)
        if self.nominal_freq_hz not in (50, 60):
            raise InvalidValueError("nominal_freq_hz", self.nominal_freq_hz, "must be 50 or 60")
        check_range("cfgcnt", self.cfgcnt, 0, 0xFFFF)
        if len(self.global_pmu_id) != 16:
            raise InvalidValueError("global_pmu_id", self.global_pmu_id, "must be 16 bytes")
        if len(self.service_class) != 1 or not self.service_class.isascii():
            raise InvalidValueError("service_class", self.service_class, "one ASCII character")
        check_range("window_us", self.window_us, -(2**31), 2**31 - 1)
        check_range("group_delay_us", self.group_delay_us, -(2**31), 2**31 - 1)

    @property
    def channel_names(self) -> tuple[str, ...]:
        """Phasor, analog and digital-bit names in wire order."""
        digital = tuple(label for word in self.digitals for label in word.labels)
        return tuple(p.name for p in self.phasors) + tuple(a.name for a in self.analogs) + digital


class Frame(msgspec.Struct, frozen=True, kw_only=True):
    """The common header: IDCODE, SOC, FRACSEC and the time-quality byte (FRACSEC bits 31-24).

    ``version`` is the SYNC version: 1 for C37.118-2005, 2 for C37.118.2-2011.
    """

    idcode: int
    soc: int = 0
    fracsec: int = 0  # count of 1/TIME_BASE s
    time_quality: int = 0  # leap-second flags (bits 6-4) and message time quality (bits 3-0)
    version: int = 2

    def _check_header(self) -> None:
        check_range("idcode", self.idcode, 0, 0xFFFF)
        check_range("soc", self.soc, 0, 0xFFFFFFFF)
        check_range("fracsec", self.fracsec, 0, 0xFFFFFF)
        check_range("time_quality", self.time_quality, 0, 0xFF)
        check_range("version", self.version, 1, 2)

    @property
    def time_quality_code(self) -> int:
        """Message time quality 0-15: see MESSAGE_TIME_QUALITY_S."""
        return self.time_quality & 0x0F

    @property
    def leap_second_pending(self) -> bool:
        return bool(self.time_quality & 0x10)

    @property
    def leap_second_occurred(self) -> bool:
        return bool(self.time_quality & 0x20)

    @property
    def leap_second_negative(self) -> bool:
        """Direction of the pending or last leap second: True when a second is deleted."""
        return bool(self.time_quality & 0x40)


class HeaderFrame(Frame, frozen=True, kw_only=True):
    text: str = ""  # human-readable; UTF-8 on the wire (ASCII in practice)

    def __post_init__(self) -> None:
        self._check_header()


class CommandFrame(Frame, frozen=True, kw_only=True):
    command: int  # a Command; 0x100-0xFFF are user-designated
    extended: bytes = b""  # EXTFRAME, meant for Command.EXTENDED

    def __post_init__(self) -> None:
        self._check_header()
        check_range("command", self.command, 0, 0xFFFF)
        check_range("extended length", len(self.extended), 0, 0xFFFF - 18)


class ConfigFrame(Frame, frozen=True, kw_only=True):
    """CFG-1, CFG-2 or CFG-3 (``cfg_type``) of a stream of one or more PMUs.

    ``data_rate`` > 0 is frames per second, < 0 is seconds per frame.
    """

    pmus: tuple[PmuConfig, ...]
    data_rate: int
    time_base: int = 1_000_000
    cfg_type: FrameType = FrameType.CFG2
    cont_idx: int = 0  # CFG-3 continuation index; only unfragmented (0) frames are supported

    def __post_init__(self) -> None:
        self._check_header()
        if self.cfg_type not in (FrameType.CFG1, FrameType.CFG2, FrameType.CFG3):
            raise InvalidValueError("cfg_type", self.cfg_type, "must be CFG1, CFG2 or CFG3")
        check_range("time_base", self.time_base, 1, 0xFFFFFF)
        check_range("data_rate", self.data_rate, -0x8000, 0x7FFF)
        check_range("pmu count", len(self.pmus), 0, 0xFFFF)
        check_range("cont_idx", self.cont_idx, 0, 0xFFFF)

    @property
    def t_ns(self) -> int:
        return to_ns(self.soc, self.fracsec, self.time_base)


class DataFrame(Frame, frozen=True, kw_only=True):
    """A data frame with the configuration it was decoded against (or is to be encoded with).

    Not validated on construction, for speed: the encoder checks every value it writes.
    """

    config: ConfigFrame
    pmus: tuple[PmuData, ...]

    @property
    def t_ns(self) -> int:
        return to_ns(self.soc, self.fracsec, self.config.time_base)


AnyFrame = DataFrame | ConfigFrame | HeaderFrame | CommandFrame
