"""IEEE C37.118.2-2011 synchrophasor frames, sans-IO: bytes in, typed frames out, and back.

See README.md in this package for the API and the covered subset; ``testing`` holds an
in-memory PMU.
"""

from gridpilot.protocols.c37118.codec import decode, encode, frame_size
from gridpilot.protocols.c37118.codes import (
    MESSAGE_TIME_QUALITY_S,
    AnalogKind,
    Command,
    DataError,
    FrameType,
    PhasorComponent,
    PhasorKind,
    PmuTimeQuality,
    TriggerReason,
    UnlockedTime,
)
from gridpilot.protocols.c37118.data_codec import DataLayout, layout_for
from gridpilot.protocols.c37118.errors import (
    BadCrcError,
    BadSyncError,
    C37118Error,
    ConfigMismatchError,
    FrameLengthError,
    InvalidValueError,
    MalformedFrameError,
    MissingConfigError,
    TruncatedFrameError,
    UnknownFrameTypeError,
    UnsupportedError,
)
from gridpilot.protocols.c37118.framer import FrameBuffer
from gridpilot.protocols.c37118.frames import (
    AnalogChannel,
    AnyFrame,
    CommandFrame,
    ConfigFrame,
    DataFormat,
    DataFrame,
    DigitalWord,
    Frame,
    HeaderFrame,
    PhasorChannel,
    PmuConfig,
    PmuData,
    Stat,
    from_ns,
    to_ns,
)
from gridpilot.protocols.c37118.wire import crc_ccitt

__all__ = [
    "MESSAGE_TIME_QUALITY_S",
    "AnalogChannel",
    "AnalogKind",
    "AnyFrame",
    "BadCrcError",
    "BadSyncError",
    "C37118Error",
    "Command",
    "CommandFrame",
    "ConfigFrame",
    "ConfigMismatchError",
    "DataError",
    "DataFormat",
    "DataFrame",
    "DataLayout",
    "DigitalWord",
    "Frame",
    "FrameBuffer",
    "FrameLengthError",
    "FrameType",
    "HeaderFrame",
    "InvalidValueError",
    "MalformedFrameError",
    "MissingConfigError",
    "PhasorChannel",
    "PhasorComponent",
    "PhasorKind",
    "PmuConfig",
    "PmuData",
    "PmuTimeQuality",
    "Stat",
    "TriggerReason",
    "TruncatedFrameError",
    "UnknownFrameTypeError",
    "UnlockedTime",
    "UnsupportedError",
    "crc_ccitt",
    "decode",
    "encode",
    "frame_size",
    "from_ns",
    "layout_for",
    "to_ns",
]
