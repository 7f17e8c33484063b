"""A PDC client: one TCP connection to one PMU (or PDC) stream, kept up, read with ``async for``.

Usage::

    async with PdcClient(host="10.0.0.7", port=4712, idcode=7) as pdc:
        async for event in pdc:
            if isinstance(event, DataFrame):
                ...  # event.config says what each value is
            else:
                ...  # ConnectionStateChanged: count it, log it

On each connection the client asks for the configuration (CFG-2, or CFG-3), then the header,
one request at a time, then turns transmission on. Lost connections, silence and PMUs that
do not answer lead to a new connection after an exponential back-off; malformed frames are
counted and dropped.

The configuration also says who answered: a stream whose ID code (or, when one is expected,
station name) is not the expected PMU's is refused before transmission is turned on — the
connection is closed, counted, reported as ``WrongDevice`` and retried with the back-off — so
a PDC pointed at another PMU's port (another platform's, a mis-wired one) never takes its data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from gridpilot.core.backoff import Backoff
from gridpilot.gateways.c37118.events import (
    ConnectionState,
    ConnectionStateChanged,
    PdcEvent,
    PdcStats,
    WrongDevice,
)
from gridpilot.gateways.feed import EventFeed
from gridpilot.gateways.reconnect import LINK_RETRY_MAX_S, keep_connected
from gridpilot.protocols.c37118 import (
    AnyFrame,
    BadSyncError,
    C37118Error,
    Command,
    CommandFrame,
    ConfigFrame,
    ConfigMismatchError,
    DataFrame,
    FrameBuffer,
    FrameType,
    HeaderFrame,
    MissingConfigError,
    encode,
    from_ns,
)

log = logging.getLogger(__name__)

READ_SIZE = 65536
Opener = Callable[[str, int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
_CONFIG_CHANGE_BIT = 0x0400


class _Link:
    """One TCP connection with its framer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.framer = FrameBuffer(follow_config=True)
        self.config_requested = False  # a re-request is under way: do not repeat it
        self.wrong: str | None = None  # why the stream is not the PMU expected


class PdcClient:
    def __init__(
        self,
        *,
        host: str,
        port: int = 4712,
        idcode: int,
        station: str = "",
        cfg_type: FrameType = FrameType.CFG2,
        request_header: bool = True,
        connect_timeout_s: float = 5.0,
        answer_timeout_s: float = 5.0,
        header_timeout_s: float = 2.0,
        data_timeout_s: float = 5.0,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = LINK_RETRY_MAX_S,
        max_pending_events: int = 10_000,
        clock: Callable[[], int] = time.time_ns,
        opener: Opener = asyncio.open_connection,
    ) -> None:
        if not host:
            raise ValueError("host must not be empty")
        if not 0 < port <= 0xFFFF:
            raise ValueError(f"port must be in 1..65535, got {port}")
        if not 0 <= idcode <= 0xFFFF:
            raise ValueError(f"idcode must be in 0..65535, got {idcode}")
        if cfg_type not in (FrameType.CFG2, FrameType.CFG3):
            raise ValueError("cfg_type must be FrameType.CFG2 or FrameType.CFG3")
        timeouts = (connect_timeout_s, answer_timeout_s, header_timeout_s, data_timeout_s)
        if min(timeouts) <= 0:
            raise ValueError("timeouts must be positive")
        self.host, self.port, self.idcode = host, port, idcode
        self.station = station  # the expected station name (STN); "" accepts any
        self.cfg_type = cfg_type
        self.request_header = request_header
        self._timeouts = timeouts
        self._backoff = Backoff(
            reconnect_min_s, reconnect_max_s, names=("reconnect_min_s", "reconnect_max_s")
        )
        self._clock = clock
        self._opener = opener
        self.stats = PdcStats()
        self.state = ConnectionState.DISCONNECTED
        self.config: ConfigFrame | None = None  # the latest configuration of the stream
        self.header: HeaderFrame | None = None  # the latest header frame, if the PMU sent one
        self._events: EventFeed[PdcEvent] = EventFeed(max_pending=max_pending_events)
        self._link: _Link | None = None
        self._task: asyncio.Task[None] | None = None

    # -- life cycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> PdcClient:
        self._task = asyncio.create_task(self._run(), name=f"pdc-{self.host}:{self.port}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Turn transmission off (best effort), close the connection, end the iteration."""
        if self._task is None:
            return
        link = self._link
        if link is not None and not link.writer.is_closing():
            with contextlib.suppress(OSError):
                link.writer.write(self._command(Command.TURN_OFF))
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        self._set_state(ConnectionState.CLOSED)
        self._events.close()

    def __aiter__(self) -> EventFeed[PdcEvent]:
        return self._events

    async def _run(self) -> None:
        await keep_connected(
            self._connection,
            backoff=self._backoff,
            worked=lambda: self.state is ConnectionState.STREAMING,
            on_down=self._down,
            name=f"PDC client for {self.host}:{self.port} (ID code {self.idcode})",
        )

    def _down(self, reason: str, retry_in_s: float) -> None:
        if self.state is not ConnectionState.STREAMING:
            self.stats.connect_failures += 1
        if self.state in (ConnectionState.CONNECTED, ConnectionState.STREAMING):
            self.stats.disconnects += 1
        # keep_connected logs it, quietly while the PMU has not been reached yet
        self._set_state(ConnectionState.DISCONNECTED, reason=reason, retry_in_s=retry_in_s)

    async def _connection(self) -> str:
        self._set_state(ConnectionState.CONNECTING)
        connect_s, answer_s, header_s, data_s = self._timeouts
        async with asyncio.timeout(connect_s):
            reader, writer = await self._opener(self.host, self.port)
        link = _Link(reader, writer)
        self.stats.connects += 1
        self._set_state(ConnectionState.CONNECTED)
        self._link = link
        try:
            config_command = (
                Command.SEND_CFG3 if self.cfg_type == FrameType.CFG3 else Command.SEND_CFG2
            )
            if not await self._request(link, config_command, ConfigFrame, answer_s):
                raise TimeoutError(f"no {self.cfg_type.name} within {answer_s} s")
            if link.wrong is not None:
                return link.wrong
            if self.request_header and not await self._request(
                link, Command.SEND_HDR, HeaderFrame, header_s
            ):
                log.info("no header frame from %s:%s", self.host, self.port)
            link.writer.write(self._command(Command.TURN_ON))
            self._set_state(ConnectionState.STREAMING)
            while True:
                try:
                    async with asyncio.timeout(data_s):
                        data = await reader.read(READ_SIZE)
                except TimeoutError:
                    return f"no data for {data_s} s"
                if not data:
                    return "connection closed by the PMU"
                self._receive(link, data)
                if link.wrong is not None:  # a new configuration of another PMU
                    return link.wrong
        finally:
            self._link = None
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _request(
        self, link: _Link, command: Command, answer: type[AnyFrame], timeout_s: float
    ) -> bool:
        """Send one command and read until its answer arrives (True) or ``timeout_s`` passes.

        One request at a time: some PMUs read a single frame per read and lose the rest.
        """
        link.writer.write(self._command(command))
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    data = await link.reader.read(READ_SIZE)
                    if not data:
                        raise ConnectionResetError("connection closed by the PMU")
                    if any(_answers(frame, answer) for frame in self._receive(link, data)):
                        return True
        except TimeoutError:
            return False

    # -- incoming -------------------------------------------------------------------------------

    def _receive(self, link: _Link, data: bytes) -> list[AnyFrame]:
        framer, stats = link.framer, self.stats
        skipped = framer.skipped_bytes
        frames: list[AnyFrame] = []
        for item in framer.feed(data):
            if link.wrong is not None:
                break  # nothing more of a stream that is not the PMU expected
            if isinstance(item, C37118Error):
                self._on_error(link, item)
                continue
            frames.append(item)
            if isinstance(item, DataFrame):
                stats.data_frames += 1
                if any(pmu.stat & _CONFIG_CHANGE_BIT for pmu in item.pmus):
                    self._ask_config(link, "the PMU announces a configuration change")
                self._emit(item)
            elif isinstance(item, ConfigFrame):
                self._on_config(link, item)
            elif isinstance(item, HeaderFrame):
                self.header = item
        stats.skipped_bytes += framer.skipped_bytes - skipped
        return frames

    def _on_config(self, link: _Link, config: ConfigFrame) -> None:
        if config.cfg_type not in (FrameType.CFG2, FrameType.CFG3):
            return  # CFG-1 says what the PMU could send, not what it sends
        self.stats.config_frames += 1
        link.config_requested = False
        stations = [pmu.station for pmu in config.pmus]
        if config.idcode != self.idcode or (self.station and self.station not in stations):
            self._refuse(link, config.idcode, stations)
            return
        previous = self.config
        if previous is not None and _content(previous) != _content(config):
            self.stats.config_changes += 1
            log.info("configuration of %s:%s changed", self.host, self.port)
        self.config = config

    def _refuse(self, link: _Link, idcode: int, stations: list[str]) -> None:
        """The stream is another PMU's: say which, and end the connection."""
        expected = f"ID code {self.idcode}"
        found = f"ID code {idcode}"
        if self.station:
            expected += f" station {self.station!r}"
            found += f" station {', '.join(map(repr, stations))}"
        wrong = WrongDevice(host=self.host, port=self.port, expected=expected, found=found)
        link.wrong = wrong.message
        self.stats.wrong_device += 1
        log.warning(
            "%s; refusing the connection",
            wrong.message,
            extra={"pmu": f"{self.host}:{self.port}", "expected": expected, "found": found},
        )
        self._emit(wrong)

    def _on_error(self, link: _Link, error: C37118Error) -> None:
        if isinstance(error, BadSyncError):
            pass  # counted by bytes in skipped_bytes
        elif isinstance(error, MissingConfigError):
            self.stats.frames_without_config += 1
        else:
            self.stats.malformed_frames += 1
            if isinstance(error, ConfigMismatchError):
                self._ask_config(link, str(error))
        log.debug("C37.118 input from %s:%s dropped: %s", self.host, self.port, error)

    def _ask_config(self, link: _Link, why: str) -> None:
        if link.config_requested or self.state is not ConnectionState.STREAMING:
            return
        link.config_requested = True
        log.info("asking %s:%s for its configuration again: %s", self.host, self.port, why)
        command = Command.SEND_CFG3 if self.cfg_type == FrameType.CFG3 else Command.SEND_CFG2
        link.writer.write(self._command(command))

    # -- outgoing and bookkeeping ---------------------------------------------------------------

    def _command(self, command: Command) -> bytes:
        # FRACSEC counts in the stream's TIME_BASE; before the first configuration, in µs.
        time_base = self.config.time_base if self.config is not None else 1_000_000
        soc, fracsec = from_ns(self._clock(), time_base)
        return encode(CommandFrame(idcode=self.idcode, soc=soc, fracsec=fracsec, command=command))

    def _emit(self, event: PdcEvent) -> None:
        if self._events.put(event):
            self.stats.dropped_events += 1

    def _set_state(
        self, state: ConnectionState, *, reason: str | None = None, retry_in_s: float | None = None
    ) -> None:
        self.state = state
        self._emit(
            ConnectionStateChanged(
                state=state,
                host=self.host,
                port=self.port,
                idcode=self.idcode,
                reason=reason,
                retry_in_s=retry_in_s,
            )
        )


def _answers(frame: AnyFrame, answer: type[AnyFrame]) -> bool:
    if isinstance(frame, ConfigFrame):  # CFG-1 is no answer to a request for CFG-2 or CFG-3
        return answer is ConfigFrame and frame.cfg_type in (FrameType.CFG2, FrameType.CFG3)
    return isinstance(frame, answer)


def _content(config: ConfigFrame) -> tuple[object, ...]:
    """What matters of a configuration, without its timestamp."""
    return (config.idcode, config.pmus, config.data_rate, config.time_base)
