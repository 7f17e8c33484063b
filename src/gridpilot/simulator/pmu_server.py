"""A virtual PMU stream served over C37.118.2 TCP: several PMUs in one stream, many PDCs.

    server = PmuServer(stations=[...], idcode=1, sample=values_at, data_rate=50)
    async with server:  # listening on server.port
        ...

Each connection has its own state (``FakePmu``): it answers HDR, CFG-1/2/3 and turn on/off
commands that carry the stream's IDCODE, and ignores others, except that a configuration
request for another IDCODE gets this stream's configuration (``reveal_config``): a PDC that
reached the wrong PMU learns which one it reached, and says so, instead of timing out.
One ticker samples the values once per frame period, for the connections that have
transmission on. Frame times are multiples of 1/data_rate of ``clock``, and a frame goes out
when ``clock`` enters its slot: a simulation clock that runs fast skips slots (no bursts), one
that stands still sends nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gridpilot.core.errors import ConfigError
from gridpilot.model.allocation import PortTakenError, describe_bind_error
from gridpilot.protocols.c37118 import (
    C37118Error,
    ConfigFrame,
    DataFrame,
    PmuConfig,
    PmuData,
    encode,
    from_ns,
    to_ns,
)
from gridpilot.protocols.c37118.testing import FakePmu

log = logging.getLogger(__name__)

NS_PER_S = 1_000_000_000
READ_SIZE = 4096
SampleFn = Callable[[int], Sequence[PmuData]]  # t_ns -> one PmuData per station, in order


@dataclass(slots=True)
class PmuServerStats:
    connections: int = 0  # accepted since start
    frames_sent: int = 0  # data frames written, summed over connections
    ticks: int = 0  # frame periods with at least one connection transmitting
    sample_errors: int = 0  # ticks skipped because sample() failed or its values did not fit
    slow_clients_dropped: int = 0  # connections closed because they did not read


class _Client:
    def __init__(self, pmu: FakePmu, writer: asyncio.StreamWriter, task: asyncio.Task[None]):
        self.pmu, self.writer, self.task = pmu, writer, task


class PmuServer:
    def __init__(
        self,
        *,
        stations: Sequence[PmuConfig],
        idcode: int,
        sample: SampleFn,
        data_rate: int = 30,
        time_base: int = 1_000_000,
        host: str = "127.0.0.1",
        port: int = 0,
        header: str = "GridPilot virtual PMU",
        clock: Callable[[], int] = time.time_ns,
        max_backlog_bytes: int = 1 << 20,
        reveal_config: bool = True,
    ) -> None:
        if not stations:
            raise ConfigError("a PMU stream needs at least one station")
        if not 10 <= data_rate <= 60:
            raise ConfigError(f"data_rate must be 10-60 frames per second, got {data_rate}")
        if not 0 <= port <= 0xFFFF:
            raise ConfigError(f"port must be in 0..65535 (0: any free port), got {port}")
        try:
            self.config = ConfigFrame(
                idcode=idcode, pmus=tuple(stations), data_rate=data_rate, time_base=time_base
            )
        except C37118Error as error:
            raise ConfigError(f"bad PMU station configuration: {error}") from error
        self.sample = sample
        self.header = header
        self.clock = clock
        self.host = host
        self._port = port
        self._max_backlog = max_backlog_bytes
        self.reveal_config = reveal_config
        self.stats = PmuServerStats()
        self._clients: set[_Client] = set()
        self._server: asyncio.Server | None = None
        self._ticker: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The port listened on (the one the OS chose when constructed with port 0)."""
        return self._port

    @property
    def clients(self) -> int:
        return len(self._clients)

    async def __aenter__(self) -> PmuServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Listen (again, after ``stop``); PortTakenError when the port is not free."""
        if self._server is not None:
            return
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self._port)
        except OSError as exc:  # the caller names the device and says what to do
            raise PortTakenError(self.host, self._port, describe_bind_error(exc)) from None
        self._port = self._server.sockets[0].getsockname()[1]
        self._ticker = asyncio.create_task(self._stream(), name=f"pmu-server-{self._port}")
        log.info(
            "virtual PMU stream %s on %s:%s, %d stations at %d frames/s",
            self.config.idcode,
            self.host,
            self._port,
            len(self.config.pmus),
            self.config.data_rate,
        )

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        if self._server is None:
            return
        self._server.close()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        # Closing the transports ends the handlers' reads: a handler task that ended cancelled
        # would make asyncio 3.11 log a spurious error from its done callback.
        tasks = [client.task for client in self._clients]
        for client in self._clients:
            client.writer.transport.abort()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None
        self._ticker = None

    # -- connections ----------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        pmu = FakePmu(
            config=self.config,
            header=self.header,
            clock=self.clock,
            reveal_config=self.reveal_config,
        )
        client = _Client(pmu, writer, task)
        self._clients.add(client)
        self.stats.connections += 1
        peer = writer.get_extra_info("peername")
        log.info("PDC %s connected to stream %s", peer, self.config.idcode)
        try:
            while data := await reader.read(READ_SIZE):
                reply = pmu.receive(data)
                if reply:
                    writer.write(reply)
        except OSError as error:
            log.info("PDC %s: %s", peer, error)
        finally:
            self._clients.discard(client)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            log.info("PDC %s disconnected (%d bad bytes)", peer, pmu.bad_bytes)

    # -- streaming ------------------------------------------------------------------------------

    async def _stream(self) -> None:
        rate = self.config.data_rate
        period_s = 1 / rate
        last = -1
        while True:
            now = self.clock()
            slot = now * rate // NS_PER_S
            # Due when the clock has entered a new slot; a clock set back by more than a second
            # (a simulation restart) is followed, a smaller step back waits to pass ``last``.
            if slot > last or slot < last - rate:
                self._tick(self._slot_ns(slot))
                last = slot
                now = self.clock()
            # At most one period per sleep: a paused or slow simulation clock is polled.
            delay_s = (self._slot_ns(last + 1) - now) / NS_PER_S
            await asyncio.sleep(min(max(delay_s, 0.0), period_s))

    def _slot_ns(self, slot: int) -> int:
        """The time stamped on frame ``slot``: FRACSEC is k/data_rate of a second, rounded."""
        rate, time_base = self.config.data_rate, self.config.time_base
        soc, k = divmod(slot, rate)
        fracsec = (2 * k * time_base + rate) // (2 * rate)
        return to_ns(soc, fracsec, time_base)

    def _tick(self, t_ns: int) -> None:
        receivers = [client for client in self._clients if client.pmu.transmitting]
        if not receivers:
            return
        self.stats.ticks += 1
        try:
            values = self.sample(t_ns)
            soc, fracsec = from_ns(t_ns, self.config.time_base)
            frame = encode(
                DataFrame(
                    idcode=self.config.idcode,
                    soc=soc,
                    fracsec=fracsec,
                    config=self.config,
                    pmus=tuple(values),
                )
            )
        except Exception:  # a bad sample costs one frame, not the stream
            self.stats.sample_errors += 1
            log.exception("virtual PMU stream %s: no frame at %d", self.config.idcode, t_ns)
            return
        for client in receivers:
            transport = client.writer.transport
            if transport.get_write_buffer_size() > self._max_backlog:
                self.stats.slow_clients_dropped += 1
                log.warning("PDC does not read; closing its connection")
                transport.abort()
                continue
            client.writer.write(frame)
            self.stats.frames_sent += 1
