"""Splits a TCP byte stream into frames by FRAMESIZE and decodes them.

Reads may hold half a frame or several; garbage is skipped up to the next 0xAA that starts a
frame, and counted. A candidate frame whose FRAMESIZE runs past the bytes at hand is waited
for, unless a complete frame with a good CHK already follows it: a false 0xAA in garbage
would otherwise stall the stream until up to 64 KiB had arrived.

Resynchronising costs work linear in the input, whatever the bytes. Every 0xAA is a candidate
whose CHK covers up to 65,533 bytes, so checking each candidate with its own CRC would cost
up to 43,690 bytes of CRC per byte of 0xAA garbage (seconds for 64 KiB). Instead the framer
keeps the CRC state of the stream every ``_STRIDE`` bytes (computed when first needed, each
byte once) and gets the CHK of any window from the states at its two ends, the CRC being
linear: crc(v, window) = state(end) ^ (state(start) ^ v) * x^(8 * length) mod the polynomial.
A candidate then costs at most two strides of CRC (about a byte when candidates are close)
and two carry-less multiplications. A frame in step with the stream, up to
``_DIRECT_CRC_MAX`` bytes, is CRC'd directly, as it always was. Candidates that wait for
their bytes are remembered, ordered by where they end, and each is checked once, not again
on every read. A false 0xAA in garbage is part of the garbage run, not an error of its own.
"""

from __future__ import annotations

import heapq
from array import array
from binascii import crc_hqx
from dataclasses import dataclass
from functools import cache

from gridpilot.protocols.c37118.codec import decode_checked
from gridpilot.protocols.c37118.codes import (
    FrameType,
)
from gridpilot.protocols.c37118.errors import BadCrcError, BadSyncError, C37118Error
from gridpilot.protocols.c37118.frames import (
    AnyFrame,
    ConfigFrame,
)
from gridpilot.protocols.c37118.wire import MAX_FRAME_SIZE, MIN_FRAME_SIZE, SYNC

_STREAM_CONFIGS = (FrameType.CFG2, FrameType.CFG3)
_STRIDE = 64  # bytes between kept CRC states: the most CRC work one window check costs per end
# In step with the stream (right after a good frame), a frame up to this size is CRC'd
# directly: the common case, and bounded, so that false frames cannot make it quadratic.
_DIRECT_CRC_MAX = 512
_POLY = 0x11021  # x^16 + x^12 + x^5 + 1, the CRC-CCITT polynomial with its x^16 term
_INIT = 0xFFFF


@cache
def _byte_powers() -> array[int]:
    """x^(8 L) mod the polynomial for L = 0..65535: what L zero bytes do to a CRC state."""
    powers = array("H", [1])
    for _ in range(MAX_FRAME_SIZE):
        powers.append(crc_hqx(b"\0", powers[-1]))
    return powers


def _mulmod(a: int, b: int) -> int:
    """a * b mod the CRC polynomial (carry-less, 16-bit operands)."""
    result = 0
    while b:
        if b & 1:
            result ^= a
        b >>= 1
        a <<= 1
        if a & 0x10000:
            a ^= _POLY
    return result


@dataclass(slots=True, kw_only=True)
class _Run:
    offset: int  # in the stream
    found: int  # its first byte
    skipped: int = 0
    quiet: bool  # it follows a bad CHK that was reported already


class FrameBuffer:
    """``feed(bytes)`` returns the frames completed so far and, in stream order, an error
    object (never raised) for each bad frame and for each run of skipped bytes, once the run
    has ended; ``skipped_bytes`` counts them at once. A bad CHK inside a run of garbage (a
    false 0xAA) is part of that run, not reported on its own.

    With ``follow_config`` every CFG-2 or CFG-3 that arrives becomes the configuration data
    frames are decoded against, as a PDC needs when a PMU changes its configuration.

    ``crc_bytes`` counts the bytes run through the CRC: the framer's work, at most the input
    once plus a few strides per candidate 0xAA.
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
        self.crc_bytes = 0  # bytes run through the CRC, in total
        self._buf = bytearray()
        self._consumed = 0  # stream offset of _buf[0]
        self._run: _Run | None = None  # the garbage being skipped, reported when it ends
        # CRC states (initial value 0) of the stream: at _consumed, and at the multiples of
        # _STRIDE after it (_states[i] at _first_state + i * _STRIDE) up to the buffer's end.
        self._base_state = 0
        self._states: list[int] = []
        self._first_state = _STRIDE
        # The last two states computed (stream offset, state): consecutive candidates ask for
        # neighbouring windows, so each costs a byte or so of CRC rather than part of a stride.
        self._recent: list[tuple[int, int]] = []
        # Look-ahead past a head frame that waits for its bytes, in stream offsets: where the
        # search for candidates goes on, candidates waiting for their bytes (by where they
        # end) and complete candidates with a good CHK.
        self._scan = 0
        self._waiting: list[tuple[int, int]] = []
        self._valid: list[int] = []

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
            received = buf[pos + size - 2] << 8 | buf[pos + size - 1]
            if self._run is None and size <= _DIRECT_CRC_MAX:
                self.crc_bytes += size - 2
                computed = crc_hqx(buf[pos : pos + size - 2], _INIT)
            else:
                computed = self._crc(pos, pos + size - 2)
            if received != computed:
                if self._run is None:
                    error = BadCrcError(received=received, computed=computed, offset=size - 2)
                    error.stream_offset = self._at(pos)
                    out.append(error)
                    self.errors += 1
                # A damaged frame or a false 0xAA: look for the next 0xAA inside it. The bytes
                # dropped on the way are counted, not reported a second time.
                pos = self._skip(pos, pos + 1, quiet=True)
                continue
            self._end_run(out)
            out.append(self._decode(bytes(buf[pos : pos + size]), pos))
            pos += size
        self._consume(pos)
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

    # -- look-ahead -----------------------------------------------------------------------------

    def _complete_frame_after(self, pos: int) -> int:
        """Start of the first complete, CHK-valid frame after ``pos``; -1 if there is none.

        Each candidate is checked once: when it is found complete, or when the bytes it waits
        for have arrived.
        """
        buf, end, head = self._buf, len(self._buf), self._at(pos)
        q = max(self._scan - self._consumed, pos + 1)
        while (q := buf.find(SYNC, q)) >= 0:
            if end - q < 4:
                break
            size = buf[q + 2] << 8 | buf[q + 3]
            if MIN_FRAME_SIZE <= size <= self.max_frame_size:
                if q + size <= end:
                    if self._crc_ok(q, size):
                        heapq.heappush(self._valid, self._at(q))
                else:
                    heapq.heappush(self._waiting, (self._at(q + size), self._at(q)))
            q += 1
        self._scan = self._at(end if q < 0 else q)
        stream_end = self._at(end)
        waiting = self._waiting
        while waiting and waiting[0][0] <= stream_end:
            _, start = heapq.heappop(waiting)
            if start > head:
                rel = start - self._consumed
                if self._crc_ok(rel, buf[rel + 2] << 8 | buf[rel + 3]):
                    heapq.heappush(self._valid, start)
        valid = self._valid
        while valid and valid[0] <= head:
            heapq.heappop(valid)
        return valid[0] - self._consumed if valid else -1

    def _crc_ok(self, pos: int, size: int) -> bool:
        buf = self._buf
        return self._crc(pos, pos + size - 2) == buf[pos + size - 2] << 8 | buf[pos + size - 1]

    # -- CRC of any window from the kept states -------------------------------------------------

    def _crc(self, start: int, stop: int) -> int:
        """CRC-CCITT (initial 0xFFFF) of _buf[start:stop], from the states at both ends."""
        head = self._state_at(start) ^ _INIT
        return self._state_at(stop) ^ _mulmod(head, _byte_powers()[stop - start])

    def _state_at(self, pos: int) -> int:
        at = self._consumed + pos
        self._extend_states(at)
        states = self._states
        if states and at >= self._first_state:
            index = min((at - self._first_state) // _STRIDE, len(states) - 1)
            known, state = self._first_state + index * _STRIDE, states[index]
        else:
            known, state = self._consumed, self._base_state
        for offset, recent in self._recent:
            if known < offset <= at:
                known, state = offset, recent
        if known == at:
            return state
        self.crc_bytes += at - known
        state = crc_hqx(self._buf[known - self._consumed : pos], state)
        self._recent = [self._recent[-1], (at, state)] if self._recent else [(at, state)]
        return state

    def _extend_states(self, upto: int) -> None:
        """Keep the states up to stream offset ``upto`` (within the buffer)."""
        states, consumed = self._states, self._consumed
        nxt = self._first_state + len(states) * _STRIDE
        while nxt <= upto:
            known, state = (nxt - _STRIDE, states[-1]) if states else (consumed, self._base_state)
            self.crc_bytes += nxt - known
            states.append(crc_hqx(self._buf[known - consumed : nxt - consumed], state))
            nxt += _STRIDE

    def _consume(self, pos: int) -> None:
        if not pos:
            return
        states = self._states
        beyond = bool(states) and self._first_state + (len(states) - 1) * _STRIDE > self._at(pos)
        # The states are relative to any starting point: with none kept beyond the consumed
        # bytes, the stream starts afresh at the new first byte (no CRC of consumed bytes).
        self._base_state = self._state_at(pos) if beyond else 0
        del self._buf[:pos]
        self._consumed += pos
        self._recent = []
        dropped = (self._consumed - self._first_state) // _STRIDE + 1
        if dropped > 0:
            del states[:dropped]
            self._first_state += dropped * _STRIDE
        while self._valid and self._valid[0] < self._consumed:
            heapq.heappop(self._valid)

    # -- garbage runs ---------------------------------------------------------------------------

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
