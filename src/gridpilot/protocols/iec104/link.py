"""Runs one sans-IO ``Session`` over one asyncio stream: read, poll the timers, write.

Shared by the master in ``gridpilot.gateways.iec104.master`` and the virtual RTU in
``gridpilot.simulator.rtu_server``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from gridpilot.protocols.iec104 import Asdu, Event, Session

READ_SIZE = 65536


class StreamLink:
    """One connection. ``run`` returns why it ended; the caller then calls ``close``."""

    def __init__(
        self,
        *,
        session: Session,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        tick_s: float = 0.1,
    ) -> None:
        self.session = session
        self._reader = reader
        self._writer = writer
        # The session's timers are seconds; a tick of 0.1 s keeps them accurate enough.
        self._tick_s = tick_s
        self.peer: str = _peer_name(writer)

    def send(self, asdu: Asdu | bytes) -> None:
        self.session.send(asdu)
        self.flush()

    def flush(self) -> None:
        data = self.session.poll()
        if data and not self._writer.is_closing():
            self._writer.write(data)

    async def run(self, handle: Callable[[Event], None]) -> str:
        """Serve the connection until the peer closes it or the session asks to close it."""
        session = self.session
        while True:
            try:
                async with asyncio.timeout(self._tick_s):
                    data = await self._reader.read(READ_SIZE)
            except TimeoutError:
                data = None
            except OSError as error:
                return f"read failed: {error}"
            if data is not None:
                if not data:
                    return "connection closed by the peer"
                for event in session.receive(data):
                    handle(event)
            self.flush()
            for event in session.take_events():
                handle(event)
            if session.close_reason is not None:
                return str(session.close_reason)
            try:
                await self._writer.drain()
            except OSError as error:
                return f"write failed: {error}"

    def abort(self) -> None:
        """Close the socket now; ``run`` then returns."""
        self._writer.close()

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


def _peer_name(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)
