"""One Modbus TCP connection (pymodbus client); every failure comes out as a ``ModbusError``.

Timeouts and reconnection are ours, not pymodbus's: its automatic reconnect is off and its
own request timeout is set beyond ours, so it never closes the connection behind our back. A
request in flight when the connection drops fails at once (pymodbus would leave it waiting).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException
from pymodbus.pdu import ModbusPDU

from gridpilot.gateways.modbus.events import EXCEPTION_TEXT, FailureKind, ModbusError

PYMODBUS_LOGGER = "pymodbus.logging"
PYMODBUS_LOG_EVERY_S = 10.0


class RateLimit(logging.Filter):
    """At most one record per ``every_s``; the next one passed says how many were left out.

    pymodbus logs an error for every read that holds a frame it cannot use (a wrong protocol
    id, another unit's answer): a device sending garbage in small segments would flood the
    log with one line per segment.
    """

    def __init__(self, every_s: float = PYMODBUS_LOG_EVERY_S) -> None:
        super().__init__()
        self.every_s = every_s
        self.left_out = 0
        self._last: float | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if self._last is not None and now - self._last < self.every_s:
            self.left_out += 1
            return False
        self._last = now
        if self.left_out:
            record.msg = f"{record.getMessage()} (and {self.left_out} more pymodbus lines left out)"
            record.args = None
            self.left_out = 0
        return True


def quiet_pymodbus() -> None:
    """pymodbus's log as the gateway wants it: errors only (the poller reports every failure
    itself; pymodbus warns of each refused connect), and at most one line per 10 s."""
    logger = logging.getLogger(PYMODBUS_LOGGER)
    logger.setLevel(logging.ERROR)
    if not any(isinstance(f, RateLimit) for f in logger.filters):
        logger.addFilter(RateLimit())


class ModbusLink:
    def __init__(self, *, host: str, port: int, timeout_s: float) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self._client = AsyncModbusTcpClient(
            host,
            port=port,
            name=f"der {host}:{port}",
            timeout=2 * timeout_s,
            retries=0,
            reconnect_delay=0,  # no automatic reconnect: the poller backs off itself
            trace_connect=self._on_connection,
        )
        self._lost = asyncio.Event()

    def _on_connection(self, connected: bool) -> None:
        if connected:
            self._lost.clear()
        else:
            self._lost.set()

    @property
    def connected(self) -> bool:
        return self._client.connected

    async def connect(self) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                ok = await self._client.connect()
        except TimeoutError:
            ok = False
        if not ok:
            self._client.close()
            raise ModbusError(FailureKind.UNREACHABLE, f"cannot connect to {self.host}:{self.port}")

    def close(self) -> None:
        self._client.close()

    async def read(self, unit: int, address: int, count: int) -> list[int]:
        """``count`` holding registers from ``address`` (function 3)."""
        response = await self._call(
            unit,
            f"read of {count} registers at {address}",
            lambda: self._client.read_holding_registers(address, count=count, device_id=unit),
        )
        registers = list(response.registers)
        if len(registers) != count:
            raise ModbusError(
                FailureKind.PROTOCOL,
                f"asked for {count} registers at {address}, got {len(registers)}",
                unit=unit,
            )
        return registers

    async def write(self, unit: int, address: int, values: list[int]) -> None:
        """Write holding registers from ``address`` (function 16, in one request)."""
        await self._call(
            unit,
            f"write of {len(values)} registers at {address}",
            lambda: self._client.write_registers(address, values, device_id=unit),
        )

    async def _call(
        self, unit: int, what: str, request: Callable[[], Awaitable[ModbusPDU]]
    ) -> ModbusPDU:
        try:
            if not self.connected:
                raise ModbusError(FailureKind.UNREACHABLE, f"{what}: not connected", unit=unit)
            answer = asyncio.ensure_future(request())
            lost = asyncio.ensure_future(self._lost.wait())
            try:
                done, _ = await asyncio.wait(
                    (answer, lost), timeout=self.timeout_s, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                lost.cancel()
                answer.cancel()  # a no-op once it is done
            if answer not in done:
                if lost in done:
                    raise ModbusError(
                        FailureKind.UNREACHABLE, f"{what}: connection lost", unit=unit
                    )
                raise ModbusError(
                    FailureKind.TIMEOUT, f"{what}: no answer in {self.timeout_s} s", unit=unit
                )
            response = answer.result()
        except (ConnectionException, OSError) as exc:
            raise ModbusError(FailureKind.UNREACHABLE, f"{what}: {exc}", unit=unit) from None
        except ModbusException as exc:
            raise ModbusError(FailureKind.PROTOCOL, f"{what}: {exc}", unit=unit) from None
        if response.isError():
            code = int(response.exception_code)
            text = EXCEPTION_TEXT.get(code, "unknown exception")
            raise ModbusError(
                FailureKind.REFUSED,
                f"{what} refused: {text} (exception {code})",
                unit=unit,
                exception_code=code,
            )
        return response
