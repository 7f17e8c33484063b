"""One frame's bytes to a typed frame and back: checks SYNC, FRAMESIZE and CHK, then dispatches
on the frame type. Data frames need the configuration of their stream."""

from __future__ import annotations

import struct

from gridpilot.protocols.c37118.codes import (
    Command,
    FrameType,
)
from gridpilot.protocols.c37118.config_codec import (
    decode_cfg3,
    decode_cfg12,
    encode_cfg3,
    encode_cfg12,
)
from gridpilot.protocols.c37118.data_codec import layout_for
from gridpilot.protocols.c37118.errors import (
    BadCrcError,
    BadSyncError,
    FrameLengthError,
    InvalidValueError,
    MalformedFrameError,
    MissingConfigError,
    TruncatedFrameError,
    UnknownFrameTypeError,
    UnsupportedError,
)
from gridpilot.protocols.c37118.frames import (
    AnyFrame,
    CommandFrame,
    ConfigFrame,
    DataFrame,
    HeaderFrame,
)
from gridpilot.protocols.c37118.wire import (
    HEAD,
    HEADER_SIZE,
    MIN_FRAME_SIZE,
    SYNC,
    crc_ccitt,
    pack_frame,
)

Bytes = bytes | bytearray | memoryview
_COMMAND = struct.Struct(">H")
_COMMANDS = {c.value for c in Command}


def frame_size(data: Bytes) -> int:
    """FRAMESIZE of the frame at the start of ``data`` (at least 4 bytes, starting with SYNC)."""
    return data[2] << 8 | data[3]


def decode(data: Bytes, *, config: ConfigFrame | None = None) -> AnyFrame:
    """Exactly one frame. A data frame is read against ``config`` (its stream's CFG-2 or CFG-3).

    Raises only ``C37118Error`` subclasses, whatever the bytes.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    n = len(data)
    if n < 4:
        raise TruncatedFrameError("SYNC and FRAMESIZE", needed=4, available=n, offset=0)
    if data[0] != SYNC:
        raise BadSyncError(found=data[0], offset=0)
    size = data[2] << 8 | data[3]
    if size < MIN_FRAME_SIZE or size < n:
        raise FrameLengthError(framesize=size, length=n, offset=2)
    if n < size:
        raise TruncatedFrameError("frame", needed=size, available=n, offset=0)
    received = data[-2] << 8 | data[-1]
    computed = crc_ccitt(data[:-2])
    if received != computed:
        raise BadCrcError(received=received, computed=computed, offset=size - 2)
    return decode_checked(data, config)


def decode_checked(data: bytes, config: ConfigFrame | None) -> AnyFrame:
    """``decode`` for bytes whose SYNC, FRAMESIZE (= their length) and CHK are known good."""
    size = len(data)
    frame_type = data[1] >> 4 & 0x07  # bit 7 is reserved
    version = data[1] & 0x0F
    if version not in (1, 2):
        raise UnsupportedError(f"version {version} (known: 1 for 2005, 2 for 2011)", offset=1)
    if frame_type == FrameType.DATA:
        if config is None:
            raise MissingConfigError(data[4] << 8 | data[5], offset=4)
        return layout_for(config).decode(data)
    _, _, _, idcode, soc, word = HEAD.unpack_from(data)
    header = {
        "idcode": idcode,
        "soc": soc,
        "fracsec": word & 0xFFFFFF,
        "time_quality": word >> 24,
        "version": version,
    }
    if frame_type == FrameType.HEADER:
        return HeaderFrame(**header, text=data[HEADER_SIZE:-2].decode("utf-8", "replace"))
    if frame_type == FrameType.COMMAND:
        if size < HEADER_SIZE + 4:
            raise MalformedFrameError("FRAMESIZE", f"{size} is too short for a command frame")
        (code,) = _COMMAND.unpack_from(data, HEADER_SIZE)
        command = Command(code) if code in _COMMANDS else code
        return CommandFrame(**header, command=command, extended=data[HEADER_SIZE + 2 : -2])
    if frame_type in (FrameType.CFG1, FrameType.CFG2):
        return decode_cfg12(data, header, FrameType(frame_type))
    if frame_type == FrameType.CFG3:
        return decode_cfg3(data, header)
    raise UnknownFrameTypeError(frame_type, offset=1)


def encode(frame: AnyFrame) -> bytes:
    """The wire bytes of ``frame``; raises ``InvalidValueError`` for values that do not fit."""
    try:
        if isinstance(frame, DataFrame):
            return layout_for(frame.config).encode(frame)
        if isinstance(frame, ConfigFrame):
            if frame.cfg_type == FrameType.CFG3:
                return encode_cfg3(frame)
            return encode_cfg12(frame)
        if isinstance(frame, HeaderFrame):
            return pack_frame(FrameType.HEADER, frame, frame.text.encode("utf-8", "replace"))
        if isinstance(frame, CommandFrame):
            payload = _COMMAND.pack(frame.command) + frame.extended
            return pack_frame(FrameType.COMMAND, frame, payload)
    except (struct.error, OverflowError) as error:
        raise InvalidValueError(type(frame).__name__, frame.idcode, str(error)) from None
    raise TypeError(f"not a C37.118 frame: {frame!r}")
