"""What can be wrong with IEC 60870-5-104 input; every decoder raises only these.

ProtocolError (gridpilot.core.errors); all pickle with their attributes
└── Iec104Error
    ├── FramingError        bytes that are not an APDU (bad start octet or length)
    ├── TruncatedError      a frame or ASDU shorter than its fields need
    ├── InvalidFieldError   a field outside its defined range (a CP56Time2a month of 13, ...)
    ├── UnknownTypeError    a type identification outside the supported subset
    ├── SequenceError       a wrong N(S) or N(R): the link must be closed
    ├── UnexpectedFrameError  a valid frame that makes no sense in the current link state
    └── LinkTimeoutError    t1 ran out waiting for an acknowledgement: the link must be closed
"""

from __future__ import annotations

from gridpilot.core.errors import ProtocolError
from gridpilot.protocols._errors import PicklableError

PROTOCOL = "IEC 60870-5-104"


class Iec104Error(PicklableError, ProtocolError):
    """Malformed or out-of-order IEC 60870-5-104 input."""

    def __init__(self, reason: str, *, offset: int | None = None) -> None:
        super().__init__(PROTOCOL, reason, offset=offset)


class FramingError(Iec104Error):
    """Bytes that do not start a valid APDU; ``skipped`` octets were dropped to resynchronise."""

    def __init__(self, reason: str, *, skipped: int = 0, offset: int | None = None) -> None:
        self.skipped = skipped
        super().__init__(reason, offset=offset)


class TruncatedError(Iec104Error):
    def __init__(
        self, what: str, *, needed: int, available: int, offset: int | None = None
    ) -> None:
        self.what = what
        self.needed = needed
        self.available = available
        super().__init__(f"{what} needs {needed} octets, only {available} present", offset=offset)


class InvalidFieldError(Iec104Error):
    def __init__(self, field: str, value: int, *, offset: int | None = None) -> None:
        self.field = field
        self.value = value
        super().__init__(f"{field} has the invalid value {value}", offset=offset)


class UnknownTypeError(Iec104Error):
    """A type identification this library does not decode.

    The header fields are kept so that a controlled station can answer with the negative
    confirmation "unknown type identification" (COT 44) that the standard asks for.
    """

    def __init__(
        self, type_id: int, *, common_address: int, cot: int, originator: int, raw: bytes
    ) -> None:
        self.type_id = type_id
        self.common_address = common_address
        self.cot = cot
        self.originator = originator
        self.raw = raw
        super().__init__(f"unsupported type identification {type_id}", offset=0)


class SequenceError(Iec104Error):
    def __init__(self, counter: str, *, expected: str, received: int) -> None:
        self.counter = counter
        self.expected = expected
        self.received = received
        super().__init__(f"{counter} {received} received, expected {expected}")


class UnexpectedFrameError(Iec104Error):
    def __init__(self, frame: str, *, state: str) -> None:
        self.frame = frame
        self.state = state
        super().__init__(f"{frame} is unexpected in link state {state}")


class LinkTimeoutError(Iec104Error):
    def __init__(self, timer: str, *, waiting_for: str, seconds: float) -> None:
        self.timer = timer
        self.waiting_for = waiting_for
        self.seconds = seconds
        super().__init__(f"{timer} expired after {seconds:g} s waiting for {waiting_for}")
