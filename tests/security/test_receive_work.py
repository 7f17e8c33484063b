"""The IEC 104 and Modbus receive paths do work linear in their input, whatever the bytes.

The C37.118 framer once did quadratic work on crafted input (each 0xAA a candidate frame CRC'd
on its own: tests/c37118/test_framer_work.py). This checks the other two device protocols for
that class of problem: 64 KiB (and 128 KiB) of worst-case bytes, in one read and in 7-byte
reads, and the work counted, not timed:

- Python function calls into the receive path's modules (``sys.setprofile``): per frame,
  per error, per event, per read;
- bytes the C code behind them touches: for IEC 104 the framer's buffer (searched, indexed,
  sliced, moved by deletion), for Modbus (pymodbus, the gateways' client) the receive buffer
  handed to the transaction manager and the bytes handed to the socket framer on each read.

Linear means: at most a constant per input byte, and doubling the input about doubles it.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from gridpilot.protocols import iec104
from gridpilot.protocols.iec104 import (
    Asdu,
    Cot,
    FloatValue,
    IFrame,
    Quality,
    Role,
    Session,
    SFrame,
    UFrame,
    UFunction,
    encode_apdu,
    encode_asdu,
)

pytestmark = pytest.mark.security

KIB_64 = 65_536
STEPS = {"one read": 4 * KIB_64, "7-byte reads": 7}  # 7: headers and frames cut anywhere


class CountingBuffer(bytearray):
    """A bytearray that counts the bytes its operations touch (search, index, slice, delete)."""

    touched = 0

    def find(self, sub: Any, start: Any = None, end: Any = None) -> int:
        found = super().find(sub, start, end)
        begin = 0 if start is None else start
        CountingBuffer.touched += (found if found >= 0 else len(self)) - begin + 1
        return found

    def __getitem__(self, key: Any) -> Any:
        item = super().__getitem__(key)
        CountingBuffer.touched += len(item) if isinstance(key, slice) else 1
        return item

    def __delitem__(self, key: Any) -> None:
        before = len(self)
        super().__delitem__(key)
        CountingBuffer.touched += len(self) if len(self) < before else 0  # the bytes moved

    def __iadd__(self, other: Any) -> CountingBuffer:  # type: ignore[misc]
        CountingBuffer.touched += len(other)
        super().__iadd__(other)
        return self


def _count_calls(path: str, run: Callable[[], None]) -> int:
    """Python function calls into files under ``path`` while ``run`` runs (``sys.setprofile``:
    every frame decoded, error made, event raised, read handled; tracing every line would
    count loops too, but costs ten times as much time)."""
    count = 0

    def profile(frame: FrameType, event: str, arg: object) -> None:
        nonlocal count
        if event == "call" and frame.f_code.co_filename.startswith(path):
            count += 1

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(previous)
    return count


def _chunks(data: bytes, step: int) -> Iterator[bytes]:
    for i in range(0, len(data), step):
        yield data[i : i + step]


def _asdu() -> bytes:
    objects = tuple(FloatValue(ioa=i, value=1.0, quality=Quality.GOOD) for i in range(30))
    return encode_asdu(Asdu(cot=Cot.SPONTANEOUS, common_address=1, objects=objects))


def _in_sequence(n: int) -> bytes:
    """Valid I-frames in sequence after STARTDT: the most work per byte a peer can ask for."""
    out = bytearray(encode_apdu(UFrame(function=UFunction.STARTDT_ACT)))
    asdu, seq = _asdu(), 0
    while len(out) < n:
        out += encode_apdu(IFrame(send_seq=seq, recv_seq=0, asdu=asdu))
        seq = (seq + 1) % iec104.SEQ_MODULO
    return bytes(out[:n])


IEC104_HOSTILE: dict[str, Callable[[int], bytes]] = {
    "start octets (each claims 104 octets)": lambda n: b"\x68" * n,
    "start octet, bad length, repeated": lambda n: b"\x68\x00" * (n // 2),
    "start octet, longest length, repeated": lambda n: b"\x68\xfd" * (n // 2),
    "no start octet": lambda n: b"\x00" * n,
    "TESTFR act, each answered": lambda n: (
        encode_apdu(UFrame(function=UFunction.TESTFR_ACT)) * (n // 6)
    ),
    "S-frames": lambda n: encode_apdu(SFrame(recv_seq=0)) * (n // 6),
    "I-frames in sequence": _in_sequence,
}

IEC104_DIR = str(Path(iec104.__file__).parent)


def _iec104_work(make: Callable[[int], bytes], n: int, step: int) -> int:
    data = make(n)
    CountingBuffer.touched = 0
    session = Session(role=Role.CONTROLLED, clock=lambda: 0.0)
    session._framer._buffer = CountingBuffer()

    def run() -> None:
        for chunk in _chunks(data, step):
            session.receive(chunk)
            session.poll(0.0)

    calls = _count_calls(IEC104_DIR, run)
    return calls + CountingBuffer.touched


# Calls plus buffer bytes per input byte: 2-8 measured (an error event per two octets of
# "68 00" is the most); quadratic work on 64 KiB would be thousands per byte.
IEC104_PER_BYTE = 30


@pytest.mark.parametrize("step", STEPS.values(), ids=STEPS.keys())
@pytest.mark.parametrize("make", IEC104_HOSTILE.values(), ids=IEC104_HOSTILE.keys())
def test_iec104_session_receive_work_is_linear(make: Callable[[int], bytes], step: int) -> None:
    """``Session.receive``, the gateway's path: its framer, APDU and ASDU decoding, events."""
    small = _iec104_work(make, KIB_64, step)
    large = _iec104_work(make, 2 * KIB_64, step)
    assert small <= IEC104_PER_BYTE * KIB_64, f"{small:,} units of work for {KIB_64:,} bytes"
    assert large <= 2.2 * small + KIB_64, f"64 KiB: {small:,}, 128 KiB: {large:,}"


def test_the_buffer_count_sees_quadratic_work() -> None:
    """The measure can fail: a framer that drops one byte at a time from the front of its
    buffer (what the real one avoids) moves the whole buffer per byte."""

    def quadratic(data: bytes) -> None:
        buf = CountingBuffer(data)
        while buf:
            del buf[:1]

    CountingBuffer.touched = 0
    quadratic(b"\x00" * 4096)
    assert CountingBuffer.touched > 4096 * 1000


# -- Modbus: pymodbus's client receive path, as the DER gateway uses it -----------------------

MBAP = bytes.fromhex("0001 0000 0006 01")  # tid 1, protocol 0, length 6, unit 1


MODBUS_HOSTILE: dict[str, Callable[[int], bytes]] = {
    "zeros (length 0, every header short)": lambda n: b"\x00" * n,
    "headers claiming 65,535 octets": lambda n: b"\x00\x01\x00\x00\xff\xff\x01" * (n // 7),
    "bad protocol id": lambda n: b"\x00\x01\xff\xff\x00\x06\x01\x03" * (n // 8),
    "responses nobody asked for": lambda n: (MBAP[:5] + b"\x05\x01\x03\x02\x00\x01") * (n // 11),
    "answers for another unit": lambda n: bytes.fromhex("0001 0000 0005 09 03 02 0001") * (n // 11),
    "0xFF": lambda n: b"\xff" * n,
}


@pytest.fixture
def quiet_pymodbus() -> Iterator[None]:
    """pymodbus logs every bad frame (at ERROR); the gateway quiets it the same way."""
    logger = logging.getLogger("pymodbus.logging")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


def _modbus_work(make: Callable[[int], bytes], n: int, step: int) -> tuple[int, int]:
    import pymodbus
    from pymodbus.client import AsyncModbusTcpClient

    data = make(n)
    touched = 0

    async def main() -> int:
        nonlocal touched
        client = AsyncModbusTcpClient("127.0.0.1", port=1)  # never connected: bytes fed directly
        ctx = client.ctx
        callback = ctx.callback_data
        decode = ctx.framer.decode

        def counted_callback(buffer: bytes, addr: Any = None) -> int:
            nonlocal touched
            touched += len(buffer)
            return int(callback(buffer, addr))

        def counted_decode(buffer: bytes) -> tuple[int, int, int, bytes]:
            nonlocal touched
            touched += len(buffer)
            return decode(buffer)

        ctx.callback_data = counted_callback  # type: ignore[method-assign,assignment]
        ctx.framer.decode = counted_decode  # type: ignore[method-assign,assignment]

        def run() -> None:
            for chunk in _chunks(data, step):
                ctx.data_received(chunk)

        return _count_calls(str(Path(pymodbus.__file__).parent), run)

    calls = asyncio.run(main())
    return calls, touched


# pymodbus keeps at most MAX_SIZE (264) bytes (more are dropped) and re-reads them on every
# read: a constant per read, up to ~264 bytes touched per 7-byte read (~40 per byte).
MODBUS_PER_BYTE = 100


@pytest.mark.usefixtures("quiet_pymodbus")
@pytest.mark.parametrize("step", STEPS.values(), ids=STEPS.keys())
@pytest.mark.parametrize("make", MODBUS_HOSTILE.values(), ids=MODBUS_HOSTILE.keys())
def test_modbus_receive_work_is_linear(make: Callable[[int], bytes], step: int) -> None:
    small = sum(_modbus_work(make, KIB_64, step))
    large = sum(_modbus_work(make, 2 * KIB_64, step))
    assert small <= MODBUS_PER_BYTE * KIB_64, f"{small:,} units of work for {KIB_64:,} bytes"
    assert large <= 2.2 * small + KIB_64, f"64 KiB: {small:,}, 128 KiB: {large:,}"
