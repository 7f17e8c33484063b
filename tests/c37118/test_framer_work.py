"""The framer's work is linear in its input, whatever the bytes: hostile streams (all 0xAA,
random bytes, crafted false headers) are counted in bytes run through the CRC, not in time,
which belongs to benchmarks/framer_bench.py."""

from __future__ import annotations

import binascii
import random
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridpilot.protocols.c37118 import FrameBuffer, crc_ccitt
from gridpilot.protocols.c37118 import framer as framer_module

from .test_properties import FAST

KIB_64 = 65_536
# Bytes of CRC per byte of input that linear work allows here: the input once, plus a byte or
# so per candidate 0xAA. Checking every candidate with its own CRC costs up to 43,690.
PER_BYTE = 8


@pytest.fixture
def crc_work(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts the bytes the framer module runs through the CRC, whichever name it calls."""
    FrameBuffer().feed(b"\x00\xaa\x00\x00\x10" + bytes(14))  # builds the framer's tables
    counted = [0]

    def crc_hqx(data: bytes | bytearray | memoryview, value: int) -> int:
        counted[0] += len(data)
        return binascii.crc_hqx(data, value)

    def crc_ccitt_counted(data: bytes | bytearray | memoryview) -> int:
        counted[0] += len(data)
        return crc_ccitt(data)

    monkeypatch.setattr(framer_module, "crc_hqx", crc_hqx, raising=False)
    monkeypatch.setattr(framer_module, "crc_ccitt", crc_ccitt_counted, raising=False)
    yield counted


def _feed(data: bytes, step: int) -> FrameBuffer:
    framer = FrameBuffer()
    for i in range(0, len(data), step):
        framer.feed(data[i : i + step])
    assert framer.skipped_bytes + framer.pending <= len(data)
    assert framer.pending < framer.max_frame_size + step  # held back: one frame at most
    return framer


HOSTILE: dict[str, Callable[[int], bytes]] = {
    "0xAA": lambda n: b"\xaa" * n,
    "random": lambda n: random.Random(7).randbytes(n),
    "false CFG-1 headers claiming 65,535 bytes": lambda n: b"\xaa\x21\xff\xff" * (n // 4),
    "false CFG-1 headers claiming 511 bytes": lambda n: b"\xaa\x21\x01\xff" * (n // 4),
}


@pytest.mark.parametrize("step", [KIB_64 * 2, 1_460], ids=["one feed", "TCP segments"])
@pytest.mark.parametrize("make", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_input_costs_work_linear_in_its_size(
    crc_work: list[int], make: Callable[[int], bytes], step: int
) -> None:
    work = []
    for n in (KIB_64, 2 * KIB_64):
        crc_work[0] = 0
        framer = _feed(make(n), step)
        assert crc_work[0] <= PER_BYTE * n, f"{crc_work[0]:,} bytes of CRC for {n:,} bytes"
        assert framer.crc_bytes == crc_work[0]  # the counter the framer keeps is the truth
        work.append(crc_work[0])
    assert work[1] <= 2.2 * work[0] + 4 * KIB_64  # twice the input, about twice the work


def test_a_false_sync_in_garbage_is_one_run_not_one_error_per_byte() -> None:
    framer = FrameBuffer()
    out = framer.feed(b"\xaa" * KIB_64)
    assert len(out) <= 2 and framer.errors == len(out)
    assert framer.skipped_bytes + framer.pending == KIB_64


@FAST
@given(st.binary(min_size=1, max_size=3_000), st.data())
def test_the_crc_of_any_window_from_the_kept_states_is_the_crc(
    data: bytes, draw: st.DataObject
) -> None:
    framer = FrameBuffer()
    framer._buf += data  # the framer's buffer as a feed leaves it, before frames are cut
    for _ in range(5):
        start = draw.draw(st.integers(0, len(data)))
        stop = draw.draw(st.integers(start, len(data)))
        assert framer._crc(start, stop) == crc_ccitt(data[start:stop])
