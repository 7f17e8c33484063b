"""What can be wrong with IEEE C37.118.2 input or output; the codec raises only these.

ProtocolError (gridpilot.core.errors); all pickle with their attributes
└── C37118Error
    ├── BadSyncError           bytes that do not start with the SYNC byte 0xAA (``skipped``)
    ├── TruncatedFrameError    fewer bytes than the frame or one of its fields needs
    ├── FrameLengthError       FRAMESIZE below the minimum or bytes left after the frame
    ├── BadCrcError            the CHK word does not match the CRC-CCITT of the frame
    ├── UnknownFrameTypeError  a frame type outside 0-5 in the SYNC word
    ├── UnsupportedError       a version other than 1 (2005) or 2 (2011), a fragmented CFG-3
    ├── MissingConfigError     a data frame arrived before any configuration
    ├── ConfigMismatchError    a data frame that does not fit its configuration
    ├── MalformedFrameError    a field whose value makes the frame unreadable
    └── InvalidValueError      a value that cannot be put on the wire (also a ValueError)
"""

from __future__ import annotations

from gridpilot.core.errors import ProtocolError
from gridpilot.protocols._errors import PicklableError

PROTOCOL = "IEEE C37.118.2"


class C37118Error(PicklableError, ProtocolError):
    """Malformed C37.118 input, or a frame that cannot be encoded.

    ``offset`` is the byte within the frame; ``FrameBuffer`` also sets ``stream_offset``, where
    the frame (or the skipped run) starts in the stream it was fed.
    """

    stream_offset: int | None = None

    def __init__(self, reason: str, *, offset: int | None = None) -> None:
        super().__init__(PROTOCOL, reason, offset=offset)


class BadSyncError(C37118Error):
    """Bytes that are not the start of a frame; ``skipped`` of them were dropped to resync."""

    def __init__(self, *, found: int, skipped: int = 0, offset: int | None = None) -> None:
        self.found = found
        self.skipped = skipped
        if skipped:
            reason = f"skipped {skipped} bytes (from 0x{found:02X}) that start no valid frame"
        else:
            reason = f"expected SYNC byte 0xAA, found 0x{found:02X}"
        super().__init__(reason, offset=offset)


class TruncatedFrameError(C37118Error):
    def __init__(
        self, what: str, *, needed: int, available: int, offset: int | None = None
    ) -> None:
        self.what = what
        self.needed = needed
        self.available = available
        super().__init__(f"{what} needs {needed} bytes, only {available} present", offset=offset)


class FrameLengthError(C37118Error):
    def __init__(self, *, framesize: int, length: int, offset: int | None = None) -> None:
        self.framesize = framesize
        self.length = length
        if framesize < length:
            reason = f"FRAMESIZE is {framesize} but {length} bytes were given"
        else:
            reason = f"FRAMESIZE {framesize} is below the 16 bytes of an empty frame"
        super().__init__(reason, offset=offset)


class BadCrcError(C37118Error):
    def __init__(self, *, received: int, computed: int, offset: int | None = None) -> None:
        self.received = received
        self.computed = computed
        super().__init__(
            f"CHK 0x{received:04X} does not match the CRC-CCITT 0x{computed:04X}", offset=offset
        )


class UnknownFrameTypeError(C37118Error):
    def __init__(self, frame_type: int, *, offset: int | None = None) -> None:
        self.frame_type = frame_type
        super().__init__(f"unknown frame type {frame_type} (known: 0-5)", offset=offset)


class UnsupportedError(C37118Error):
    """Valid input this library does not handle (another version, a fragmented CFG-3)."""


class MissingConfigError(C37118Error):
    def __init__(self, idcode: int, *, offset: int | None = None) -> None:
        self.idcode = idcode
        super().__init__(
            f"data frame of stream {idcode} before any configuration; request CFG-2 first",
            offset=offset,
        )


class ConfigMismatchError(C37118Error):
    """A data frame that cannot be read with the configuration at hand (request a new one)."""

    def __init__(self, reason: str, *, idcode: int, offset: int | None = None) -> None:
        self.idcode = idcode
        super().__init__(f"data frame of stream {idcode} does not fit: {reason}", offset=offset)


class MalformedFrameError(C37118Error):
    """A field whose value makes the rest of the frame unreadable."""

    def __init__(self, field: str, reason: str, *, offset: int | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {reason}", offset=offset)


class InvalidValueError(C37118Error, ValueError):
    """A value outside what its field can carry; raised by constructors and encoders."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        super().__init__(f"{field}={value!r}: {reason}")
