"""Splits a TCP byte stream into frames by FRAMESIZE and decodes them.

Reads may hold half a frame or several; garbage is skipped up to the next 0xAA that starts a
frame, and counted. A candidate frame whose FRAMESIZE runs past the bytes at hand is waited
for, unless a complete frame with a good CHK already follows it: a false 0xAA in garbage
would otherwise stall the stream until up to 64 KiB had arrived.
"""

from __future__ import annotations

from dataclasses import dataclass

from gridpilot.protocols.c37118.codec import decode_checked
from gridpilot.protocols.c37118.codes import (
    FrameType,
)
from gridpilot.protocols.c37118.errors import BadCrcError, BadSyncError, C37118Error
from gridpilot.protocols.c37118.frames import (
    AnyFrame,
    ConfigFrame,
)
from gridpilot.protocols.c37118.wire import MAX_FRAME_SIZE, MIN_FRAME_SIZE, SYNC, crc_ccitt

_STREAM_CONFIGS = (FrameType.CFG2, FrameType.CFG3)


@dataclass(slots=True, kw_only=True)
class _Run:
    offset: int  # in the stream
    found: int  # its first byte
    skipped: int = 0
    quiet: bool  # it follows a bad CHK that was reported already


class FrameBuffer:
    """``feed(bytes)`` returns the frames completed so far and, in stream order, an error
    object (never raised) for each bad frame and for each run of skipped bytes, once the run
    has ended; ``skipped_bytes`` counts them at once.

    With ``follow_config`` every CFG-2 or CFG-3 that arrives becomes the configuration data
    frames are decoded against, as a PDC needs when a PMU changes its configuration.
    """

    def __init__(
        self,
        *,
        config: ConfigFrame | None = None,
        follow_config: bool = True,
        max_frame_size: int = MAX_FRAME_SIZE,
    ) -> None:
        if not MIN_FRAME_SIZE <= max_frame_size <= MAX_FRAME_SIZE:
            raise ValueError(f"max_frame_size must be in {MIN_FRAME_SIZE}..{MAX_FRAME_SIZE}")
        self.config = config
        self.follow_config = follow_config
        self.max_frame_size = max_frame_size
        self.skipped_bytes = 0  # garbage dropped while resynchronising, in total
        self.frames = 0  # frames decoded
        self.errors = 0  # error objects returned, skipped runs included
        self._buf = bytearray()
        self._consumed = 0  # stream offset of _buf[0]
        self._run: _Run | None = None  # the garbage being skipped, reported when it ends

    @property
    def pending(self) -> int:
        """Bytes held back, waiting for the rest of a frame."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[AnyFrame | C37118Error]:
        buf = self._buf
        buf += data
        out: list[AnyFrame | C37118Error] = []
        pos = 0
        end = len(buf)
        while pos < end:
            if buf[pos] != SYNC:
                nxt = buf.find(SYNC, pos + 1)
                pos = self._skip(pos, end if nxt < 0 else nxt)
                continue
            if end - pos < 4:
                break
            size = buf[pos + 2] << 8 | buf[pos + 3]
            if not MIN_FRAME_SIZE <= size <= self.max_frame_size:
                pos = self._skip(pos, pos + 1)
                continue
            if end - pos < size:
                later = self._complete_frame_after(pos)
                if later < 0:
                    break
                pos = self._skip(pos, later)
                continue
            chunk = bytes(buf[pos : pos + size])
            received = chunk[-2] << 8 | chunk[-1]
            computed = crc_ccitt(chunk[:-2])
            if received != computed:
                self._end_run(out)
                error = BadCrcError(received=received, computed=computed, offset=size - 2)
                error.stream_offset = self._at(pos)
                out.append(error)
                self.errors += 1
                # A damaged frame or a false 0xAA: look for the next 0xAA inside it. The bytes
                # dropped on the way are counted, not reported a second time.
                pos = self._skip(pos, pos + 1, quiet=True)
                continue
            self._end_run(out)
            out.append(self._decode(chunk, pos))
            pos += size
        del buf[:pos]
        self._consumed += pos
        return out

    def _decode(self, chunk: bytes, pos: int) -> AnyFrame | C37118Error:
        try:
            frame = decode_checked(chunk, self.config)  # CHK checked above
        except C37118Error as error:
            error.stream_offset = self._at(pos)
            self.errors += 1
            return error
        if (
            self.follow_config
            and isinstance(frame, ConfigFrame)
            and frame.cfg_type in _STREAM_CONFIGS
        ):
            self.config = frame
        self.frames += 1
        return frame

    def _complete_frame_after(self, pos: int) -> int:
        """Start of the first complete, CHK-valid frame after ``pos``; -1 if there is none."""
        buf, end = self._buf, len(self._buf)
        q = buf.find(SYNC, pos + 1)
        while 0 <= q <= end - MIN_FRAME_SIZE:
            size = buf[q + 2] << 8 | buf[q + 3]
            if MIN_FRAME_SIZE <= size <= self.max_frame_size and q + size <= end:
                chk = buf[q + size - 2] << 8 | buf[q + size - 1]
                if crc_ccitt(buf[q : q + size - 2]) == chk:
                    return q
            q = buf.find(SYNC, q + 1)
        return -1

    def _skip(self, start: int, stop: int, *, quiet: bool = False) -> int:
        """Drop buf[start:stop] as garbage; one run of it is reported once, when it ends."""
        self.skipped_bytes += stop - start
        if self._run is None:
            self._run = _Run(offset=self._at(start), found=self._buf[start], quiet=quiet)
        self._run.skipped += stop - start
        return stop

    def _end_run(self, out: list[AnyFrame | C37118Error]) -> None:
        run, self._run = self._run, None
        if run is not None and not run.quiet:
            self.errors += 1
            error = BadSyncError(found=run.found, skipped=run.skipped, offset=0)
            error.stream_offset = run.offset
            out.append(error)

    def _at(self, pos: int) -> int:
        return self._consumed + pos
