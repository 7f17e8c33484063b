"""What every frame shares on the wire: SYNC, FRAMESIZE, the common header and the CHK word."""

from __future__ import annotations

import binascii
import struct

from gridpilot.protocols.c37118.codes import (
    FrameType,
)
from gridpilot.protocols.c37118.errors import InvalidValueError
from gridpilot.protocols.c37118.frames import (
    Frame,
)

SYNC = 0xAA
HEADER_SIZE = 14  # SYNC, FRAMESIZE, IDCODE, SOC, FRACSEC
MIN_FRAME_SIZE = HEADER_SIZE + 2  # a header frame without text
MAX_FRAME_SIZE = 0xFFFF

# SYNC byte, type/version byte, FRAMESIZE, IDCODE, SOC, FRACSEC with its time-quality byte
HEAD = struct.Struct(">BBHHII")


def crc_ccitt(data: bytes | bytearray | memoryview) -> int:
    """CRC-CCITT as C37.118 defines it: polynomial 0x1021, initial 0xFFFF, not reflected, no
    final XOR (binascii's CRC-HQX is that algorithm; it runs in C)."""
    return binascii.crc_hqx(data, 0xFFFF)


def pack_frame(frame_type: FrameType, frame: Frame, payload: bytes) -> bytes:
    """Common header + payload + CHK; checks the header fields the constructor may not have."""
    size = HEADER_SIZE + len(payload) + 2
    if size > MAX_FRAME_SIZE:
        raise InvalidValueError("FRAMESIZE", size, "a frame holds at most 65535 bytes")
    try:
        head = HEAD.pack(
            SYNC,
            frame_type << 4 | frame.version,
            size,
            frame.idcode,
            frame.soc,
            frame.time_quality << 24 | frame.fracsec,
        )
    except struct.error as error:
        raise InvalidValueError("header", frame, str(error)) from None
    body = head + payload
    return body + crc_ccitt(body).to_bytes(2, "big")
