"""PdcClient against PmuServer over real TCP on 127.0.0.1 (ephemeral ports)."""

from __future__ import annotations

import asyncio
import cmath
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec
import pytest

from gridpilot.core.errors import ConfigError
from gridpilot.gateways.c37118 import (
    ConnectionState,
    ConnectionStateChanged,
    PdcClient,
)
from gridpilot.protocols.c37118 import (
    AnalogChannel,
    Command,
    CommandFrame,
    ConfigFrame,
    DataFormat,
    DataFrame,
    DigitalWord,
    FrameBuffer,
    FrameType,
    PhasorChannel,
    PhasorKind,
    PmuConfig,
    PmuData,
    Stat,
    encode,
)
from gridpilot.protocols.c37118.testing import FakePmu
from gridpilot.simulator.pmu_server import PmuServer

RATE = 50
PERIOD_NS = 1_000_000_000 // RATE
INTS = DataFormat(polar=False, phasors_float=False, analogs_float=False, freq_float=False)
STATIONS = [
    PmuConfig(
        station="BUS 1",
        idcode=101,
        format=INTS,
        phasors=(PhasorChannel(name="V1", phunit=100_000),),  # 1 V per bit
        analogs=(AnalogChannel(name="P", anunit=10),),
        digitals=(DigitalWord(),),
    ),
    PmuConfig(
        station="BUS 2",
        idcode=102,
        nominal_freq_hz=50,
        phasors=(
            PhasorChannel(name="V2"),
            PhasorChannel(name="I2", kind=PhasorKind.CURRENT),
        ),
        analogs=(AnalogChannel(name="Q"),),
    ),
]


def sample(t_ns: int) -> list[PmuData]:
    k = t_ns // PERIOD_NS
    return [
        PmuData(
            freq_hz=50.0 + (k % 100) / 1000,
            rocof_hz_s=0.5,
            phasors=(cmath.rect(11_500.0, (k % 60) / 10),),
            analogs=(10.0 * (k % 1000),),
            digitals=(k % 65536,),
        ),
        PmuData(
            freq_hz=49.95,
            phasors=(cmath.rect(230.0, -0.5), cmath.rect(12.5, k % 3)),
            analogs=(-1.25,),
        ),
    ]


def server(**kwargs: object) -> PmuServer:
    options: dict[str, object] = {
        "stations": STATIONS,
        "idcode": 5,
        "sample": sample,
        "data_rate": RATE,
    }
    options.update(kwargs)
    return PmuServer(**options)  # type: ignore[arg-type]


def client(port: int, **kwargs: object) -> PdcClient:
    options: dict[str, object] = {"reconnect_min_s": 0.05, "reconnect_max_s": 0.2}
    options.update(kwargs)
    return PdcClient(host="127.0.0.1", port=port, idcode=5, **options)  # type: ignore[arg-type]


async def collect(
    pdc: PdcClient, n: int, *, timeout_s: float = 5.0
) -> tuple[list[DataFrame], list[ConnectionStateChanged]]:
    frames: list[DataFrame] = []
    states: list[ConnectionStateChanged] = []
    async with asyncio.timeout(timeout_s):
        async for event in pdc:
            if isinstance(event, DataFrame):
                frames.append(event)
                if len(frames) >= n:
                    break
            else:
                states.append(event)
    return frames, states


async def until(
    pdc: PdcClient, done: Callable[[ConnectionStateChanged], bool], *, timeout_s: float = 5.0
) -> list[ConnectionStateChanged]:
    seen: list[ConnectionStateChanged] = []
    async with asyncio.timeout(timeout_s):
        async for event in pdc:
            if isinstance(event, ConnectionStateChanged):
                seen.append(event)
                if done(event):
                    return seen
    return seen


def assert_values(frame: DataFrame) -> None:
    for got, want in zip(frame.pmus, sample(frame.t_ns), strict=True):
        assert got.digitals == want.digitals and got.stat == want.stat
        assert (
            abs(got.freq_hz - want.freq_hz) < 1e-4 and abs(got.rocof_hz_s - want.rocof_hz_s) < 1e-2
        )
        for z, w in zip(got.phasors, want.phasors, strict=True):
            assert abs(z - w) < 1.0  # 1 V per bit in the integer stream, float32 in the other
        for x, y in zip(got.analogs, want.analogs, strict=True):
            assert abs(x - y) <= 5.0


async def test_the_client_streams_what_the_server_samples() -> None:
    async with server() as pmu, client(pmu.port) as pdc:
        frames, states = await collect(pdc, 12)
        assert [s.state for s in states] == [
            ConnectionState.DISCONNECTED,
            ConnectionState.CONNECTING,
            ConnectionState.CONNECTED,
            ConnectionState.STREAMING,
        ][-len(states) :]
        assert pdc.header is not None and pdc.header.text == "GridPilot virtual PMU"
        assert pdc.config is not None and pdc.config.pmus == tuple(STATIONS)
        for frame in frames:
            assert frame.config is pdc.config and frame.t_ns % PERIOD_NS == 0
            assert_values(frame)
        steps = {b.t_ns - a.t_ns for a, b in itertools.pairwise(frames)}
        assert PERIOD_NS in steps and min(steps) > 0
        assert pdc.stats.connects == 1 and pdc.stats.malformed_frames == 0
        assert pmu.stats.connections == 1 and pmu.stats.frames_sent >= 12


async def test_the_client_can_follow_cfg3() -> None:
    async with server() as pmu, client(pmu.port, cfg_type=FrameType.CFG3) as pdc:
        frames, _ = await collect(pdc, 3)
    assert pdc.config is not None and pdc.config.cfg_type == FrameType.CFG3
    assert [p.station for p in pdc.config.pmus] == ["BUS 1", "BUS 2"]
    for frame in frames:
        assert_values(frame)  # the CFG-3 float scale of 1 V per bit gives the same values


async def test_frames_are_stamped_and_aligned_by_the_injected_clock() -> None:
    ahead_ns = 3600 * 1_000_000_000 + 7_000_000  # an hour and 7 ms ahead of the wall clock
    async with server(clock=lambda: time.time_ns() + ahead_ns) as pmu, client(pmu.port) as pdc:
        frames, _ = await collect(pdc, 5)
    now = time.time_ns()
    for frame in frames:
        assert frame.t_ns % PERIOD_NS == 0 and frame.fracsec % 20_000 == 0
        assert abs(frame.t_ns - now - ahead_ns) < 2_000_000_000


@contextlib.asynccontextmanager
async def raw(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[int]:
    """A hand-written PMU on a free port; its connections are closed and awaited on exit (a
    handler task that ends cancelled makes asyncio 3.11 log an error)."""
    tasks: list[asyncio.Task[None]] = []
    writers: list[asyncio.StreamWriter] = []

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        writers.append(writer)
        with contextlib.suppress(OSError):
            await handler(reader, writer)
        writer.close()

    listener = await asyncio.start_server(run, "127.0.0.1", 0)
    try:
        yield listener.sockets[0].getsockname()[1]
    finally:
        listener.close()
        for writer in writers:
            writer.transport.abort()
        await asyncio.gather(*tasks, return_exceptions=True)
        await listener.wait_closed()


def command(code: int) -> bytes:
    return encode(CommandFrame(idcode=5, command=code))


async def read_for(reader: asyncio.StreamReader, framer: FrameBuffer, seconds: float) -> list:
    items: list = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while data := await reader.read(65536):
                items += framer.feed(data)
    return items


async def test_a_simulation_clock_that_stands_still_or_runs_fast() -> None:
    sim_ns = [1_790_000_000_000_000_000]
    async with server(clock=lambda: sim_ns[0]) as pmu, raw(pmu.port) as (reader, writer):
        framer = FrameBuffer()
        writer.write(command(Command.SEND_CFG2) + command(Command.TURN_ON))
        first = await read_for(reader, framer, 0.2)
        assert len([f for f in first if isinstance(f, DataFrame)]) <= 1  # the clock stands still

        async def run_fast() -> None:  # 5x: 100 ms of simulated time per 20 ms
            while True:
                await asyncio.sleep(0.02)
                sim_ns[0] += 100_000_000

        runner = asyncio.create_task(run_fast())
        try:
            frames = [f for f in await read_for(reader, framer, 0.3) if isinstance(f, DataFrame)]
        finally:
            runner.cancel()
    stamps = [f.t_ns for f in frames]
    assert len(stamps) >= 3 and all(t % PERIOD_NS == 0 for t in stamps)
    assert all(b - a >= PERIOD_NS for a, b in itertools.pairwise(stamps))  # slots skipped
    assert max(b - a for a, b in itertools.pairwise(stamps)) >= 2 * PERIOD_NS


async def test_transmission_is_switched_per_connection() -> None:
    async with server() as pmu, raw(pmu.port) as (r1, w1), raw(pmu.port) as (r2, w2):
        f1, f2 = FrameBuffer(), FrameBuffer()
        w1.write(command(Command.SEND_CFG2))
        w2.write(command(Command.SEND_CFG2))
        assert isinstance((await read_for(r1, f1, 0.2))[0], ConfigFrame)
        assert [type(i) for i in await read_for(r2, f2, 0.1)] == [ConfigFrame]
        w1.write(command(Command.TURN_ON))
        on = await read_for(r1, f1, 0.3)
        assert len(on) >= 5 and all(isinstance(i, DataFrame) for i in on)
        assert await read_for(r2, f2, 0.05) == []  # the other connection never turned it on
        w1.write(command(Command.TURN_OFF))
        await read_for(r1, f1, 0.1)  # frames already under way
        assert await read_for(r1, f1, 0.15) == []


async def test_a_client_that_goes_away_does_not_disturb_the_others() -> None:
    async with server() as pmu, client(pmu.port) as pdc:
        await collect(pdc, 2)
        async with raw(pmu.port) as (reader, writer):
            writer.write(command(Command.TURN_ON))
            await reader.read(100)
            assert pmu.clients == 2
            writer.transport.abort()  # gone without a word
        frames, states = await collect(pdc, 10)
        assert states == [] and len(frames) == 10
        assert pmu.clients == 1


async def test_the_client_reconnects_after_the_server_restarts() -> None:
    first = server()
    await first.start()
    port = first.port
    async with client(port) as pdc:
        try:
            await collect(pdc, 3)
        finally:
            await first.stop()
        down = await until(pdc, lambda s: s.state is ConnectionState.DISCONNECTED)
        assert down[-1].reason and down[-1].retry_in_s == 0.05
        async with server(port=port):
            frames, states = await collect(pdc, 3)
        assert ConnectionState.STREAMING in [s.state for s in states]
        assert_values(frames[-1])
        assert pdc.stats.connects == 2 and pdc.stats.disconnects == 1


async def test_silent_and_absent_pmus_are_retried_with_back_off() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts, never answers

    async with serve(silent) as port, client(port, answer_timeout_s=0.1) as pdc:
        downs = [
            s
            for s in await until(pdc, lambda s: s.retry_in_s == 0.2 and s.reason is not None)
            if s.state is ConnectionState.DISCONNECTED
        ]
        assert [s.retry_in_s for s in downs] == [0.05, 0.1, 0.2]
        assert all("no CFG2 within 0.1 s" in (s.reason or "") for s in downs)
        assert pdc.stats.connect_failures == 3 and pdc.stats.connects == 3
    async with client(port) as pdc:  # the listener is gone: connection refused
        down = await until(pdc, lambda s: s.state is ConnectionState.DISCONNECTED)
        assert "ConnectionRefusedError" in (down[-1].reason or "")


async def test_malformed_input_is_counted_and_never_fatal() -> None:
    config = ConfigFrame(idcode=5, data_rate=RATE, pmus=tuple(STATIONS))
    pmu = FakePmu(config=config)
    requests: list[int] = []

    async def misbehaving(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(4096):
            commands = [c.command for c in pmu_commands(data)]
            requests.extend(commands)
            writer.write(b"\x00garbage" + pmu.receive(data))
            if Command.TURN_ON in commands:
                good = pmu.data_frame(1_700_000_000_000_000_000, sample(0))
                damaged = bytearray(good)
                damaged[30] ^= 0xFF
                stat = Stat(config_change=True).word
                changing = pmu.data_frame(
                    1_700_000_000_020_000_000,
                    [msgspec.structs.replace(v, stat=stat) for v in sample(0)],
                )
                short = encode(msgspec.structs.replace(config, pmus=config.pmus[:1]))
                other = FakePmu(config=msgspec.structs.replace(config, pmus=config.pmus[:1]))
                wrong = other.data_frame(0, sample(0)[:1])
                writer.write(good + bytes(damaged) + changing + good)
                await asyncio.sleep(0.05)
                writer.write(wrong + b"\xaa\x01" + short[:3] + good)

    def pmu_commands(data: bytes) -> list[CommandFrame]:
        return [c for c in FrameBuffer().feed(data) if isinstance(c, CommandFrame)]

    async with serve(misbehaving) as port, client(port) as pdc:
        frames, _ = await collect(pdc, 4)
        assert len(frames) == 4
        stats = pdc.stats
        assert stats.malformed_frames == 2  # the damaged frame and the one that does not fit
        assert stats.skipped_bytes >= 3 * len(b"\x00garbage")
        assert stats.disconnects == 0
    # the config-change bit and the misfit frame asked for CFG-2 again, once
    assert requests.count(Command.SEND_CFG2) == 2
    assert requests[:3] == [Command.SEND_CFG2, Command.SEND_HDR, Command.TURN_ON]


async def test_a_pmu_that_falls_silent_is_dropped_and_retried() -> None:
    async with server() as pmu:
        original = pmu.sample
        pdc = client(pmu.port, data_timeout_s=0.2)
        async with pdc:
            await collect(pdc, 2)
            pmu.sample = lambda t_ns: (_ for _ in ()).throw(RuntimeError("twin stopped"))
            down = await until(pdc, lambda s: s.state is ConnectionState.DISCONNECTED)
            assert down[-1].reason == "no data for 0.2 s"
            assert pmu.stats.sample_errors > 0
            pmu.sample = original
            frames, _ = await collect(pdc, 2)
            assert_values(frames[-1])


def test_server_options_are_checked_at_once() -> None:
    with pytest.raises(ConfigError, match="10-60"):
        server(data_rate=5)
    with pytest.raises(ConfigError, match="at least one station"):
        server(stations=[])
    with pytest.raises(ConfigError, match="bad PMU station"):
        server(idcode=70_000)
    with pytest.raises(ValueError, match="reconnect"):
        client(4712, reconnect_min_s=1.0, reconnect_max_s=0.5)
