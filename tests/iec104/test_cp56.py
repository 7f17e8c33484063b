"""CP56Time2a to and from UTC nanoseconds, its flags and its invalid fields."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridpilot.protocols.iec104 import (
    Cp56Time,
    InvalidFieldError,
    TruncatedError,
    decode_cp56,
    encode_cp56,
)


def ns(*args: int) -> int:
    moment = dt.datetime(*args, tzinfo=dt.UTC)  # type: ignore[misc]
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


def test_known_vector() -> None:
    # 2026-03-29 01:59:58.123 UTC, a Sunday: ms 58123 = 0xe30b, minute 59, hour 1,
    # day 29 with day of week 7, month 3, year 26.
    time_ns = ns(2026, 3, 29, 1, 59, 58, 123_000)
    assert encode_cp56(time_ns).hex() == "0be33b01fd031a"
    assert decode_cp56(bytes.fromhex("0be33b01fd031a")) == Cp56Time(time_ns)


def test_recorded_from_c104_with_day_of_week_unused() -> None:
    assert decode_cp56(bytes.fromhex("af9f290a1a0b1a")).time_ns == ns(
        2026, 11, 26, 10, 41, 40, 879_000
    )


def test_sub_millisecond_part_is_truncated() -> None:
    time_ns = ns(2030, 1, 1) + 999_999
    assert decode_cp56(encode_cp56(time_ns)).time_ns == ns(2030, 1, 1)


def test_invalid_and_summer_time_bits_are_carried_not_applied() -> None:
    time_ns = ns(2026, 7, 1, 12)
    data = encode_cp56(Cp56Time(time_ns, invalid=True, summer_time=True))
    assert data[2] & 0x80 and data[3] & 0x80
    decoded = decode_cp56(data)
    assert decoded == Cp56Time(time_ns, invalid=True, summer_time=True)


def test_offset_reads_inside_a_frame() -> None:
    data = b"\xff\xff" + encode_cp56(ns(2001, 2, 3, 4, 5, 6))
    assert decode_cp56(data, 2).time_ns == ns(2001, 2, 3, 4, 5, 6)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=ns(2000, 1, 1) // 1_000_000, max_value=ns(2100, 1, 1) // 1_000_000 - 1)
)
def test_round_trip_over_the_whole_century(ms: int) -> None:
    time_ns = ms * 1_000_000
    assert decode_cp56(encode_cp56(time_ns)).time_ns == time_ns


@pytest.mark.parametrize(
    ("hex_time", "field"),
    [
        ("60ea3b01fd031a", "CP56Time2a milliseconds"),  # 60000
        ("00003c01fd031a", "CP56Time2a minute"),
        ("00003b18fd031a", "CP56Time2a hour"),
        ("00003b01e0031a", "CP56Time2a day"),  # day 0
        ("00003b011e021a", "CP56Time2a day"),  # 30 February
        ("00003b01fd001a", "CP56Time2a month"),
        ("00003b01fd0d1a", "CP56Time2a month"),
        ("00003b01fd0364", "CP56Time2a year"),  # 100
    ],
)
def test_out_of_range_fields(hex_time: str, field: str) -> None:
    with pytest.raises(InvalidFieldError) as caught:
        decode_cp56(bytes.fromhex(hex_time))
    assert caught.value.field == field


def test_truncated() -> None:
    with pytest.raises(TruncatedError):
        decode_cp56(b"\x00" * 6)


@pytest.mark.parametrize("time_ns", [ns(1999, 12, 31, 23, 59, 59), ns(2100, 1, 1)])
def test_times_outside_the_century_are_refused(time_ns: int) -> None:
    with pytest.raises(ValueError, match="2000 to 2099"):
        encode_cp56(time_ns)
