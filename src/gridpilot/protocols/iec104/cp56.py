"""CP56Time2a, the seven-octet time tag of IEC 60870-5-4, to and from nanoseconds since 1970 UTC.

Layout (little-endian milliseconds first)::

    octet 0-1  milliseconds of the minute, 0..59999
    octet 2    bit 7 IV (time invalid), bit 6 reserved, bits 0-5 minute 0..59
    octet 3    bit 7 SU (summer time),  bits 5-6 reserved, bits 0-4 hour 0..23
    octet 4    bits 5-7 day of week (1 = Monday .. 7 = Sunday, 0 = not used), bits 0-4 day 1..31
    octet 5    bits 4-7 reserved, bits 0-3 month 1..12
    octet 6    bit 7 reserved, bits 0-6 year 0..99 (meaning 2000..2099)

GridPilot reads and writes the calendar fields as UTC. The IV bit says the sender's clock is
not trustworthy (not synchronised, or the value was substituted); it is carried as ``invalid``
and the time is still decoded. The SU bit says the sender's fields are in summer time; it is
carried as ``summer_time`` but never applied, because a station sending UTC has no summer time
and a station sending local time needs a time zone the frame does not carry: configure such
stations to send UTC. The day of week is written and ignored on reading.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from gridpilot.protocols.iec104.errors import InvalidFieldError, TruncatedError

CP56_LENGTH = 7
_NS_PER_MS = 1_000_000
_MS_PER_DAY = 86_400_000
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
_FIRST_NS = (dt.date(2000, 1, 1).toordinal() - _EPOCH_ORDINAL) * _MS_PER_DAY * _NS_PER_MS
_END_NS = (dt.date(2100, 1, 1).toordinal() - _EPOCH_ORDINAL) * _MS_PER_DAY * _NS_PER_MS


@dataclass(frozen=True, slots=True)
class Cp56Time:
    """A decoded time tag: UTC nanoseconds since 1970 (millisecond resolution) and its flags."""

    time_ns: int
    invalid: bool = False
    summer_time: bool = False

    def __post_init__(self) -> None:
        if not _FIRST_NS <= self.time_ns < _END_NS:
            raise ValueError(
                f"CP56Time2a covers the years 2000 to 2099; {self.time_ns} ns is outside"
            )


def encode_cp56(time: Cp56Time | int) -> bytes:
    """Encode a time tag; an ``int`` is UTC nanoseconds, truncated to the millisecond."""
    if isinstance(time, int):
        time = Cp56Time(time)
    total_ms = time.time_ns // _NS_PER_MS
    days, ms_of_day = divmod(total_ms, _MS_PER_DAY)
    date = dt.date.fromordinal(_EPOCH_ORDINAL + days)
    hour, ms_of_hour = divmod(ms_of_day, 3_600_000)
    minute, ms_of_minute = divmod(ms_of_hour, 60_000)
    return bytes(
        (
            ms_of_minute & 0xFF,
            ms_of_minute >> 8,
            minute | (0x80 if time.invalid else 0),
            hour | (0x80 if time.summer_time else 0),
            date.day | (date.isoweekday() << 5),
            date.month,
            date.year - 2000,
        )
    )


def decode_cp56(data: bytes, offset: int = 0) -> Cp56Time:
    """Decode the seven octets at ``offset``; ``offset`` also places errors in the frame."""
    if len(data) - offset < CP56_LENGTH:
        raise TruncatedError(
            "CP56Time2a", needed=CP56_LENGTH, available=max(len(data) - offset, 0), offset=offset
        )
    ms = data[offset] | (data[offset + 1] << 8)
    minute = data[offset + 2] & 0x3F
    hour = data[offset + 3] & 0x1F
    day = data[offset + 4] & 0x1F
    month = data[offset + 5] & 0x0F
    year = data[offset + 6] & 0x7F
    for name, value, low, high, at in (
        ("CP56Time2a milliseconds", ms, 0, 59_999, 0),
        ("CP56Time2a minute", minute, 0, 59, 2),
        ("CP56Time2a hour", hour, 0, 23, 3),
        ("CP56Time2a month", month, 1, 12, 5),
        ("CP56Time2a year", year, 0, 99, 6),
    ):
        if not low <= value <= high:
            raise InvalidFieldError(name, value, offset=offset + at)
    try:
        ordinal = dt.date(2000 + year, month, day).toordinal()
    except ValueError:
        raise InvalidFieldError("CP56Time2a day", day, offset=offset + 4) from None
    total_ms = (ordinal - _EPOCH_ORDINAL) * _MS_PER_DAY + (hour * 60 + minute) * 60_000 + ms
    return Cp56Time(
        total_ms * _NS_PER_MS,
        invalid=bool(data[offset + 2] & 0x80),
        summer_time=bool(data[offset + 3] & 0x80),
    )
