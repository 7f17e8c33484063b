"""Every protocol codec error pickles with its message and structured attributes, so that a
decoder in a worker process (multiprocessing) can hand its errors back. The IEC 104, meter
JSON and SunSpec errors are checked here too, with the C37.118 ones: one list of them all."""

from __future__ import annotations

import pickle

import pytest

from gridpilot.core.errors import ProtocolError
from gridpilot.protocols import meter_json
from gridpilot.protocols.c37118 import errors as c37
from gridpilot.protocols.iec104 import errors as iec
from gridpilot.protocols.sunspec import codec as sunspec


def _bad_crc() -> c37.BadCrcError:
    error = c37.BadCrcError(received=0x1234, computed=0x4321, offset=30)
    error.stream_offset = 1_000  # set by FrameBuffer
    return error


EXAMPLES: list[ProtocolError] = [
    c37.C37118Error("a reason", offset=3),
    c37.BadSyncError(found=0x55, skipped=12, offset=0),
    c37.TruncatedFrameError("frame", needed=40, available=12, offset=0),
    c37.FrameLengthError(framesize=10, length=20, offset=2),
    _bad_crc(),
    c37.UnknownFrameTypeError(7, offset=1),
    c37.UnsupportedError("version 3", offset=1),
    c37.MissingConfigError(7, offset=4),
    c37.ConfigMismatchError("12 bytes short", idcode=7, offset=0),
    c37.MalformedFrameError("NUM_PMU", "0 PMUs", offset=18),
    c37.InvalidValueError("VA", complex(1, 2), "too large"),
    iec.Iec104Error("a reason", offset=1),
    iec.FramingError("skipped 3 octets", skipped=3, offset=0),
    iec.TruncatedError("APDU", needed=6, available=2),
    iec.InvalidFieldError("month", 13, offset=5),
    iec.UnknownTypeError(99, common_address=1, cot=6, originator=0, raw=b"\x63\x01"),
    iec.SequenceError("N(S)", expected="5", received=7),
    iec.UnexpectedFrameError("I-frame", state="STOPPED"),
    iec.LinkTimeoutError("t1", waiting_for="STARTDT con", seconds=15.0),
    meter_json.MeterPayloadError(meter_json.MeterErrorCode.VALUE, "p is NaN", device="m1"),
    sunspec.SunSpecError("out of range", point="WMaxLimPct"),
]


def _defined_in(module: object) -> set[type]:
    return {
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, ProtocolError)
        and value.__module__ == getattr(module, "__name__", None)
    }


def test_every_protocol_error_class_has_an_example() -> None:
    classes = set().union(*(_defined_in(m) for m in (c37, iec, meter_json, sunspec)))
    assert classes == {type(e) for e in EXAMPLES}


@pytest.mark.parametrize("error", EXAMPLES, ids=lambda e: type(e).__name__)
def test_errors_pickle_with_their_attributes(error: ProtocolError) -> None:
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error)
    assert str(back) == str(error) and back.args == error.args
    assert vars(back) == vars(error)  # protocol, reason, offset and the structured fields
    assert isinstance(back, ProtocolError)
