"""PMUs end to end: how many 50 frames/s PMUs GridPilot carries from C37.118.2 to the bus.

    /tmp/v/bin/python benchmarks/pmu_e2e_bench.py              # ~2 min, writes results/pmu_e2e.md
    /tmp/v/bin/python benchmarks/pmu_e2e_bench.py --counts 10 25 --window 5 --no-write

Three OS processes besides a private nats-server (started here, never the one on :4222):

1. virtual PMUs: N ``PmuServer`` streams, one station each (1 voltage + 3 current phasors,
   float polar, FREQ/DFREQ), 50 frames/s stamped by the real clock (``time.time_ns``);
2. the gateway: N ``PdcClient`` in one asyncio loop; each data frame becomes a
   ``MeasurementSet`` (voltage in p.u., P and Q of three branch ends, as
   ``C37118GatewayService._publish`` does) published on ``gp.bench.meas.<device>``;
3. this process: subscribes ``gp.bench.meas.>`` and records, per message, arrival time minus
   the frame's timestamp, and the message rate over a steady window after a warm-up.

The PMU servers, the gateway, nats-server and the subscriber share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import cmath
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec

RESULTS = Path(__file__).parent / "results" / "pmu_e2e.md"
GRID = "bench"
RATE = 50
V_KV = 20.0
PASSWORD_ENV = "GP_BENCH_NATS_PASSWORD"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- process 1: virtual PMUs ----------------------------------------------------------------------


async def run_pmus(n: int) -> None:
    from gridpilot.protocols.c37118 import PhasorChannel, PhasorKind, PmuConfig, PmuData
    from gridpilot.simulator.pmu_server import PmuServer

    phasors = (
        PhasorChannel(name="V1", kind=PhasorKind.VOLTAGE),
        PhasorChannel(name="I1", kind=PhasorKind.CURRENT),
        PhasorChannel(name="I2", kind=PhasorKind.CURRENT),
        PhasorChannel(name="I3", kind=PhasorKind.CURRENT),
    )
    v = V_KV * 1e3 / math.sqrt(3)

    def sampler(i: int):
        def sample(t_ns: int) -> list[PmuData]:
            angle = (t_ns % 1_000_000_000) * 1e-9 * 0.01 + i * 1e-3  # slow drift
            return [
                PmuData(
                    freq_hz=50.0 + 1e-3 * math.sin(angle),
                    phasors=(
                        cmath.rect(v, angle),
                        cmath.rect(100.0 + i % 7, angle - 0.3),
                        cmath.rect(40.0, angle - 0.2),
                        cmath.rect(60.0, angle - 0.1),
                    ),
                )
            ]

        return sample

    servers = [
        PmuServer(
            stations=[PmuConfig(station=f"PMU {i}", idcode=i, phasors=phasors)],
            idcode=i,
            sample=sampler(i),
            data_rate=RATE,
            host="127.0.0.1",
            port=0,
            clock=time.time_ns,
        )
        for i in range(1, n + 1)
    ]
    for server in servers:
        await server.start()
    print(json.dumps([s.port for s in servers]), flush=True)
    loop = asyncio.get_running_loop()
    try:  # each line asks for the frames sent so far; EOF (parent done or dead) ends it
        while await loop.run_in_executor(None, sys.stdin.readline):
            print(sum(s.stats.frames_sent for s in servers), flush=True)
    finally:
        for server in servers:
            await server.stop()


# -- process 2: the gateway -----------------------------------------------------------------------


async def run_gateway(url: str, ports: list[int]) -> None:
    from gridpilot.core import bus, subjects
    from gridpilot.core.schemas import (
        DeviceKind,
        Measurand,
        Measurement,
        MeasurementSet,
        Terminal,
        encode,
    )
    from gridpilot.gateways.c37118 import ConnectionState, ConnectionStateChanged, PdcClient
    from gridpilot.protocols.c37118 import DataFrame

    nc = await bus.connect(
        url, user="admin", password=os.environ[PASSWORD_ENV], name="bench-gateway"
    )
    v_base = V_KV * 1e3 / math.sqrt(3)
    streaming: set[int] = set()
    ready = asyncio.Event()
    seq = 0

    async def read(idcode: int, port: int) -> None:
        nonlocal seq
        device = f"pmu{idcode}"
        subject = subjects.MEAS.format(grid=GRID, source=device)
        bus_id, branches = f"bus{idcode}", [f"line{idcode}_{k}" for k in range(3)]
        async with PdcClient(host="127.0.0.1", port=port, idcode=idcode) as client:
            async for event in client:
                if isinstance(event, ConnectionStateChanged):
                    if event.state is ConnectionState.STREAMING:
                        streaming.add(idcode)
                        if len(streaming) == len(ports):
                            ready.set()
                    else:
                        streaming.discard(idcode)
                    continue
                if not isinstance(event, DataFrame):
                    continue
                vals = event.pmus[0].phasors
                v, t_ns = vals[0], event.t_ns
                if not cmath.isfinite(v):
                    continue
                ms = [
                    Measurement(
                        mrid=bus_id,
                        measurand=Measurand.VOLTAGE,
                        terminal=Terminal.BUS,
                        t_ns=t_ns,
                        source=device,
                        v_pu=abs(v) / v_base,
                        va_deg=math.degrees(cmath.phase(v)),
                    )
                ]
                for mrid, i in zip(branches, vals[1:], strict=True):
                    s = 3 * v * i.conjugate() / 1e6
                    ms.append(
                        Measurement(
                            mrid=mrid,
                            measurand=Measurand.POWER,
                            terminal=Terminal.FROM,
                            t_ns=t_ns,
                            source=device,
                            p_mw=s.real,
                            q_mvar=s.imag,
                        )
                    )
                seq += 1
                mset = MeasurementSet(
                    grid=GRID,
                    source=device,
                    kind=DeviceKind.PMU,
                    t_ns=t_ns,
                    seq=seq,
                    measurements=ms,
                )
                await nc.publish(subject, encode(mset))

    tasks = [asyncio.create_task(read(i, p)) for i, p in enumerate(ports, start=1)]
    try:
        await asyncio.wait_for(ready.wait(), timeout=30)
        print("streaming", flush=True)
    except TimeoutError:
        print(f"only {len(streaming)} of {len(ports)} streaming", flush=True)
    try:
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await nc.close()


# -- process 3: this one --------------------------------------------------------------------------


class _Stamp(msgspec.Struct):
    t_ns: int


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.stdin is not None and not proc.stdin.closed:
        proc.stdin.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def child(role: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--role", role, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


async def readline(proc: subprocess.Popen[str], limit_s: float) -> str:
    assert proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), limit_s)
    if not line:
        raise RuntimeError(f"child {proc.args[3]} exited with code {proc.wait()}")
    return line.strip()


async def frames_sent(pmus: subprocess.Popen[str]) -> int:
    assert pmus.stdin is not None
    pmus.stdin.write("\n")
    pmus.stdin.flush()
    return int(await readline(pmus, 10))


async def measure(
    n: int, url: str, password: str, nats_pid: int, nc, warmup: float, window: float
) -> dict[str, float]:
    arrivals: list[int] = []  # arrival - t_ns, during the window
    recording = False
    dec = msgspec.json.Decoder(_Stamp)

    async def on_msg(msg) -> None:
        now = time.time_ns()
        if recording:
            arrivals.append(now - dec.decode(msg.data).t_ns)

    sub = await nc.subscribe(
        f"gp.{GRID}.meas.>", cb=on_msg, pending_msgs_limit=1_000_000, pending_bytes_limit=-1
    )
    pmus = child("pmus", "--n", str(n))
    gateway = None
    try:
        ports = json.loads(await readline(pmus, 60))
        env = dict(os.environ, **{PASSWORD_ENV: password})
        gateway = child("gateway", "--url", url, "--ports", ",".join(map(str, ports)), env=env)
        log(f"N={n}: gateway {await readline(gateway, 60)}")
        await asyncio.sleep(warmup)
        sent0 = await frames_sent(pmus)
        cpu0 = [cpu_s(p.pid) for p in (pmus, gateway)] + [cpu_s(nats_pid), time.process_time()]
        recording = True
        t0 = time.monotonic()
        await asyncio.sleep(window)
        recording = False
        elapsed = time.monotonic() - t0
        cpu1 = [cpu_s(p.pid) for p in (pmus, gateway)] + [cpu_s(nats_pid), time.process_time()]
        sent1 = await frames_sent(pmus)
    finally:
        await sub.unsubscribe()
        for proc in (gateway, pmus):
            if proc is not None:
                stop(proc)
    lat = sorted(arrivals)
    expected = n * RATE
    rate = len(lat) / elapsed
    cpu = [b - a for a, b in zip(cpu0, cpu1, strict=True)]
    return {
        "n": n,
        "expected": expected,
        "sent": (sent1 - sent0) / elapsed,
        "received": rate,
        "sustained": 100 * rate / expected,
        "median_ms": statistics.median(lat) / 1e6 if lat else math.nan,
        "p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))] / 1e6 if lat else math.nan,
        "max_ms": lat[-1] / 1e6 if lat else math.nan,
        "cpu_pmus": cpu[0],
        "cpu_gateway": cpu[1],
        "cpu_nats": cpu[2],
        "cpu_sub": cpu[3],
        "window": elapsed,
    }


HEADER = (
    "| N PMUs | expected frames/s | sent by PMUs/s | received/s | % sustained "
    "| median ms | p99 ms | max ms "
    "| CPU s PMUs | CPU s gateway | CPU s nats-server | CPU s subscriber |\n"
    "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
)


def row(r: dict[str, float]) -> str:
    return (
        f"| {r['n']} | {r['expected']:,} | {r['sent']:,.0f} | {r['received']:,.0f} "
        f"| {r['sustained']:.1f} "
        f"| {r['median_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.2f} "
        f"| {r['cpu_pmus']:.2f} | {r['cpu_gateway']:.2f} | {r['cpu_nats']:.2f} "
        f"| {r['cpu_sub']:.2f} |"
    )


def machine(nats_version: str) -> str:
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()[0]
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"- CPU: {cpu}, {os.cpu_count()} cores (PMU servers, gateway, nats-server and "
        "subscriber all share them)\n"
        f"- Python {platform.python_version()} (Linux {platform.release()}), "
        f"msgspec {msgspec.__version__}, nats-py {_version('nats-py')}\n"
        f"- {nats_version}\n"
        f"- date: {now}; load average at start {load:.2f}"
    )


def nats_version() -> str:
    from gridpilot.platform.broker import nats_server_binary

    return subprocess.run(
        [str(nats_server_binary()), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()


def _version(dist: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def conclusion(results: list[dict[str, float]], ok, counts: list[int]) -> str:
    good = [r for r in results if ok(r)]
    bad = [r for r in results if not ok(r)]
    if good:
        best = good[-1]
        text = (
            f"On this 2-core machine GridPilot sustained {best['n']} PMUs at {RATE} frames/s "
            f"({best['received']:,.0f} measurement sets/s, {best['sustained']:.1f} % of "
            f"expected) end to end, with a frame-timestamp-to-bus latency of "
            f"{best['median_ms']:.1f} ms median and {best['p99_ms']:.1f} ms p99; the gateway "
            f"used {best['cpu_gateway'] / best['window'] * 100:.0f} % of a core for it. "
        )
    else:
        text = f"Not even {results[0]['n']} PMUs were sustained on this machine. "
    if bad:
        b = bad[0]
        text += (
            f"At {b['n']} PMUs it fell short ({b['sustained']:.1f} % of {b['expected']:,} "
            f"frames/s, p99 {b['p99_ms']:.1f} ms), so the limit lies between "
            f"{good[-1]['n'] if good else 0} and {b['n']}"
        )
        if b["received"] >= 0.99 * b["sent"]:
            text += (
                f"; but there the PMU servers themselves sent only {b['sent']:,.0f} frames/s "
                "(their one-loop ticker skipped slots on the loaded machine) and the gateway "
                f"delivered {100 * b['received'] / b['sent']:.1f} % of what was sent, so the "
                "shortfall is the simulator's, not the gateway's"
            )
        text += ". "
    elif results[-1]["n"] == counts[-1]:
        text += f"The largest count tried, {counts[-1]}, still passed; the limit is higher. "
    text += (
        "The virtual PMU servers (also Python, encoding every frame), nats-server and the "
        "measuring subscriber run on the same two cores as the gateway, so these figures are a "
        "lower bound for what the gateway alone sustains."
    )
    return text


async def main_bench(args: argparse.Namespace) -> None:
    from gridpilot.core import bus
    from gridpilot.platform.broker import EmbeddedNats
    from gridpilot.platform.permissions import service_password

    mach = machine(nats_version())
    results: list[dict[str, float]] = []

    def ok(r: dict[str, float]) -> bool:
        return r["sustained"] >= 99.0 and r["p99_ms"] <= 200.0

    with tempfile.TemporaryDirectory(prefix="gp-pmu-bench-") as tmp:
        nats = EmbeddedNats(data_dir=Path(tmp), port=0, monitor_port=0, mqtt_port=0).start()
        try:
            assert nats.pid is not None
            password = service_password(Path(tmp), "admin")
            log(f"nats-server pid {nats.pid} at {nats.url}")
            nc = await bus.connect(nats.url, user="admin", password=password, name="bench-sub")
            try:
                for n in args.counts:
                    r = await measure(n, nats.url, password, nats.pid, nc, args.warmup, args.window)
                    results.append(r)
                    log(row(r))
                    if not ok(r) and not args.no_stop:
                        log(f"N={n} not sustained; stopping")
                        break
            finally:
                await nc.close()
        finally:
            nats.stop()

    table = HEADER + "\n" + "\n".join(row(r) for r in results)
    print(table)
    text = conclusion(results, ok, args.counts)
    print("\n" + text)
    if args.write:
        RESULTS.write_text(
            "# PMUs end to end: C37.118.2 to the bus\n\n"
            "Written by `benchmarks/pmu_e2e_bench.py` (see its docstring); rerun it to refresh.\n\n"
            f"{table}\n\n{text}\n\n"
            "## Method\n\n"
            f"N virtual PMUs (`PmuServer`, one station each: 1 voltage + 3 current phasors, "
            f"float polar) at {RATE} frames/s on the real clock, in one process; a gateway "
            "process with N `PdcClient`s in one asyncio loop turns each data frame into a "
            "`MeasurementSet` (V in p.u., P and Q of three branch ends) and publishes it on "
            f"`gp.{GRID}.meas.<device>` to a private embedded nats-server; the benchmark "
            f"process subscribes `gp.{GRID}.meas.>`. Latency is the subscriber's "
            "`time.time_ns()` at arrival minus the frame's timestamp (the start of its "
            "1/50 s slot, when the PMU server sends it), so it includes the PMU server's "
            "scheduling, TCP, decoding, conversion, NATS and the subscriber's own delay. "
            f"Per N: fresh PMU and gateway processes, {args.warmup:g} s warm-up after all N "
            f"streams are up, then a {args.window:g} s window in which messages are counted "
            "and latencies recorded (sent by PMUs/s: data frames the PMU servers wrote in "
            "that window); CPU seconds are user + system time of each process "
            "in that window (from `/proc/<pid>/stat`). A count passes when at least 99 % of "
            "N x 50 sets/s arrive and p99 is at most 200 ms; the run stops at the first "
            "count that does not.\n\n"
            f"## Machine\n\n{mach}\n"
        )
        log(f"wrote {RESULTS}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--role", choices=("bench", "pmus", "gateway"), default="bench")
    p.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--url", default="", help=argparse.SUPPRESS)
    p.add_argument("--ports", default="", help=argparse.SUPPRESS)
    p.add_argument("--counts", type=int, nargs="+", default=[10, 25, 50, 100, 200])
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--window", type=float, default=10.0)
    p.add_argument("--no-stop", action="store_true", help="run every count even past a failure")
    p.add_argument("--no-write", dest="write", action="store_false")
    args = p.parse_args()
    if args.role == "pmus":
        asyncio.run(run_pmus(args.n))
    elif args.role == "gateway":
        asyncio.run(run_gateway(args.url, [int(x) for x in args.ports.split(",")]))
    else:
        asyncio.run(main_bench(args))


if __name__ == "__main__":
    main()
