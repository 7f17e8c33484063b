"""One Modbus TCP connection (pymodbus client); every failure comes out as a ``ModbusError``.

Timeouts and reconnection are ours, not pymodbus's: its automatic reconnect is off and its
own request timeout is set beyond ours, so it never closes the connection behind our back. A
request in flight when the connection drops fails at once (pymodbus would leave it waiting).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException
from pymodbus.pdu import ModbusPDU

from gridpilot.gateways.modbus.events import EXCEPTION_TEXT, FailureKind, ModbusError


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
