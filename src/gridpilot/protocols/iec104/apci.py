"""APCI: the 104 link frames (I, S and U formats) and a framer that cuts a TCP stream into them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from gridpilot.protocols.iec104.errors import (
    FramingError,
    InvalidFieldError,
    TruncatedError,
)

START = 0x68
MIN_LENGTH = 4  # the length octet counts the four control octets and the ASDU
MAX_LENGTH = 253
MAX_ASDU_LENGTH = MAX_LENGTH - 4
SEQ_MODULO = 1 << 15  # N(S) and N(R) are 15-bit counters


class UFunction(IntEnum):
    """The first control octet of a U-format frame (exactly one function bit set)."""

    STARTDT_ACT = 0x07
    STARTDT_CON = 0x0B
    STOPDT_ACT = 0x13
    STOPDT_CON = 0x23
    TESTFR_ACT = 0x43
    TESTFR_CON = 0x83


def _check_seq(name: str, value: int) -> None:
    if not 0 <= value < SEQ_MODULO:
        raise ValueError(f"{name} must be in 0..{SEQ_MODULO - 1}, got {value}")


@dataclass(frozen=True, slots=True, kw_only=True)
class IFrame:
    """Numbered information transfer: carries one encoded ASDU."""

    send_seq: int
    recv_seq: int
    asdu: bytes

    def __post_init__(self) -> None:
        _check_seq("send_seq", self.send_seq)
        _check_seq("recv_seq", self.recv_seq)
        if not 1 <= len(self.asdu) <= MAX_ASDU_LENGTH:
            raise ValueError(f"an ASDU must be 1..{MAX_ASDU_LENGTH} octets, got {len(self.asdu)}")


@dataclass(frozen=True, slots=True, kw_only=True)
class SFrame:
    """Numbered supervisory function: acknowledges I-frames up to ``recv_seq`` - 1."""

    recv_seq: int

    def __post_init__(self) -> None:
        _check_seq("recv_seq", self.recv_seq)


@dataclass(frozen=True, slots=True, kw_only=True)
class UFrame:
    """Unnumbered control function: start/stop data transfer and link test."""

    function: UFunction


Apdu = IFrame | SFrame | UFrame


def encode_apdu(frame: Apdu) -> bytes:
    if isinstance(frame, IFrame):
        ns, nr = frame.send_seq << 1, frame.recv_seq << 1
        control = bytes((ns & 0xFF, ns >> 8, nr & 0xFF, nr >> 8))
        return bytes((START, 4 + len(frame.asdu))) + control + frame.asdu
    if isinstance(frame, SFrame):
        nr = frame.recv_seq << 1
        return bytes((START, 4, 0x01, 0x00, nr & 0xFF, nr >> 8))
    return bytes((START, 4, int(frame.function), 0, 0, 0))


def decode_apdu(data: bytes) -> Apdu:
    """Decode exactly one APDU (start octet, length octet, control field, ASDU)."""
    if len(data) < 2 + MIN_LENGTH:
        raise TruncatedError("APDU", needed=2 + MIN_LENGTH, available=len(data))
    if data[0] != START:
        raise FramingError(f"start octet is 0x{data[0]:02x}, not 0x68", offset=0)
    length = data[1]
    if not MIN_LENGTH <= length <= MAX_LENGTH:
        raise FramingError(f"length octet {length} is outside 4..253", offset=1)
    if len(data) != 2 + length:
        raise FramingError(
            f"length octet says {length} octets follow, {len(data) - 2} do", offset=1
        )
    cf1, cf2, cf3, cf4 = data[2], data[3], data[4], data[5]
    # Reserved bits (bit 0 of the third control octet, the spare octets of S and U frames)
    # are ignored, as the standard asks receivers to do.
    recv_seq = (cf3 >> 1) | (cf4 << 7)
    if cf1 & 0x01 == 0:
        if length == MIN_LENGTH:
            raise TruncatedError("I-frame ASDU", needed=1, available=0, offset=6)
        send_seq = (cf1 >> 1) | (cf2 << 7)
        return IFrame(send_seq=send_seq, recv_seq=recv_seq, asdu=bytes(data[6:]))
    if length != MIN_LENGTH:
        raise FramingError(f"an S or U frame must have length 4, got {length}", offset=1)
    if cf1 & 0x03 == 0x01:
        return SFrame(recv_seq=recv_seq)
    try:
        return UFrame(function=UFunction(cf1))
    except ValueError:
        raise InvalidFieldError("U-frame function", cf1, offset=2) from None


class Framer:
    """Cuts a byte stream into APDUs, whatever the read boundaries.

    ``feed`` returns complete frames and, in place, a ``FramingError`` for each run of octets
    skipped to find the next start octet, so one bad octet never costs the frames after it.
    A garbage 0x68 followed by a plausible length can still swallow up to 255 octets; TCP does
    not corrupt bytes, so that is left to the sequence-number check to notice. Work is linear
    in the input: each octet is looked at once, a waiting frame is at most 255 octets.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._position = 0  # stream offset of _buffer[0], for error messages

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes | FramingError]:
        # One pass with a cursor and one deletion at the end: dropping bytes one at a time
        # from the front of the buffer would move the rest each time (quadratic on garbage).
        self._buffer += data
        out: list[bytes | FramingError] = []
        buf = self._buffer
        pos, end = 0, len(buf)
        while pos < end:
            if buf[pos] != START:
                found = buf.find(START, pos)
                count = (found if found >= 0 else end) - pos
                out.append(
                    FramingError(
                        f"skipped {count} octets without a start octet",
                        skipped=count,
                        offset=self._position + pos,
                    )
                )
                pos += count
                continue
            if end - pos < 2:
                break
            length = buf[pos + 1]
            if not MIN_LENGTH <= length <= MAX_LENGTH:
                out.append(
                    FramingError(
                        f"length octet {length} is outside 4..253",
                        skipped=1,
                        offset=self._position + pos + 1,
                    )
                )
                pos += 1
                continue
            if end - pos < 2 + length:
                break
            out.append(bytes(buf[pos : pos + 2 + length]))
            pos += 2 + length
        del buf[:pos]
        self._position += pos
        return out
