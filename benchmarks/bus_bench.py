"""Bus benchmark: raw nats-py against GridPilot's typed layer (core/service.py) and FastStream.

A ~1 KB PMU frame (``MeasurementSet``) goes over ``gp.cigre_mv.meas.pmu_x`` to one subscriber in
the same process, through a nats-server of our own (EmbeddedNats); benchmarks/README.md says how.
FastStream is for this benchmark only, never a project dependency:

    /tmp/v/bin/pip install 'faststream[nats]'
    /tmp/v/bin/python benchmarks/bus_bench.py        # ~1.5 minutes; --help for sizes

Prints a table (progress on stderr) and writes benchmarks/results/bus.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import importlib.metadata
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from nats.aio.client import Client
from nats.aio.msg import Msg

from gridpilot.core import schemas as s
from gridpilot.core.bus import barrier, connect
from gridpilot.core.config import ServiceConfig
from gridpilot.core.service import Service
from gridpilot.platform.broker import EmbeddedNats, nats_server_binary
from gridpilot.platform.permissions import ADMIN, service_password

SUBJECT = "gp.cigre_mv.meas.pmu_x"
RESULTS = Path(__file__).parent / "results" / "bus.md"
FLUSH_EVERY = 1000
WARMUP = 2000
T0_NS = 1_700_000_000_000_000_000
TIMEOUT_S = 120.0
SEQ0 = 1_000_000  # frame i has seq SEQ0 + i: every frame's JSON has the same length
FLOWS = [  # branch, terminal, p_mw, q_mvar (six decimals)
    ("trafo_0_1", s.Terminal.TO, -12.345678, -3.456789),
    ("line_1_2", s.Terminal.FROM, 6.123456, 1.765432),
    ("line_2_3", s.Terminal.FROM, 3.987654, 1.123456),
    ("line_3_4", s.Terminal.FROM, 1.234567, 0.345678),
]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def frame(i: int) -> s.MeasurementSet:
    """Frame ``i`` of a 50 fps PMU at bus_1; every value gets a seventh decimal 1..9."""
    t_ns, j = T0_NS + i * 20_000_000, (1 + i % 9) * 1e-7
    v = {"mrid": "bus_1", "measurand": "voltage", "terminal": "bus", "v_pu": round(1.031234 + j, 7)}
    ms = [v | {"va_deg": round(-30.123456 + j, 7)}]
    ms += [{"mrid": b, "measurand": "power", "terminal": t, "p_mw": round(p + j, 7),
            "q_mvar": round(q + j, 7)} for b, t, p, q in FLOWS]  # fmt: skip
    body = {"grid": "cigre_mv", "source": "pmu_x", "kind": "pmu", "t_ns": t_ns, "seq": SEQ0 + i}
    body["measurements"] = [m | {"t_ns": t_ns, "source": "pmu_x"} for m in ms]
    return msgspec.convert(body, s.MeasurementSet)


class Sink:
    """What every variant's handler calls with the decoded frame's seq."""

    def __init__(self, size: int) -> None:
        self.recv_ns = np.zeros(size, dtype=np.int64)
        self.reset(0, timed=False)

    def reset(self, target: int, *, timed: bool) -> None:
        self.count, self.target, self.timed, self.done = 0, target, timed, asyncio.Event()

    def hit(self, seq: int) -> None:
        if self.timed:
            self.recv_ns[seq - SEQ0] = time.perf_counter_ns()
        self.count += 1
        if self.count == self.target:
            self.done.set()


class Variant:
    name = ""
    pub_nc: Client
    sub_nc: Client

    def __init__(self, sink: Sink, frames: list[s.MeasurementSet]) -> None:
        self.sink, self.frames = sink, frames

    async def start(self, url: str, user: str, password: str) -> None: ...
    async def publish(self, i: int) -> None: ...

    async def stop(self) -> None:
        for nc in (self.pub_nc, self.sub_nc):
            await nc.drain()


class RawNats(Variant):
    name = "raw nats-py"

    async def start(self, url: str, user: str, password: str) -> None:
        self.payloads = [msgspec.json.encode(f) for f in self.frames]  # pre-encoded
        self.sub_nc = await connect(url, user=user, password=password, name="bench-raw-sub")
        self.pub_nc = await connect(url, user=user, password=password, name="bench-raw-pub")

        async def cb(msg: Msg) -> None:
            self.sink.hit(msgspec.json.decode(msg.data, type=s.MeasurementSet).seq)

        await self.sub_nc.subscribe(SUBJECT, cb=cb)

    async def publish(self, i: int) -> None:
        await self.pub_nc.publish(SUBJECT, self.payloads[i])


class BenchService(Service):
    name = "bus_bench"
    sink: Sink

    async def setup(self) -> None:
        await self.subscribe(SUBJECT, s.MeasurementSet, self.on_frame)

    async def on_frame(self, obj: s.MeasurementSet, msg: Msg) -> None:
        self.sink.hit(obj.seq)


class GridPilot(Variant):
    name = "GridPilot Service"

    async def start(self, url: str, user: str, password: str) -> None:
        # What Service.run() does before its heartbeat loop: connect, then setup().
        cfg = ServiceConfig(
            nats_url=url, user=user, password=password, grid="cigre_mv", data_dir=Path(".")
        )
        self.sub, self.pub = BenchService(cfg), Service(cfg)
        self.sub.sink = self.sink
        self.sub.nc = self.sub_nc = await connect(url, user=user, password=password, name="b-gp-s")
        self.pub.nc = self.pub_nc = await connect(url, user=user, password=password, name="b-gp-p")
        await self.sub.setup()

    async def publish(self, i: int) -> None:
        await self.pub.publish(SUBJECT, self.frames[i])

    async def stop(self) -> None:
        c = self.sub.counters
        if c["dropped_bad_payload"] or c["handler_errors"]:
            raise RuntimeError(f"the GridPilot subscriber dropped or failed messages: {c}")
        await super().stop()


class FastStream(Variant):
    name = "FastStream"

    async def start(self, url: str, user: str, password: str) -> None:
        from fast_depends.msgspec import MsgSpecSerializer
        from faststream.nats import NatsBroker
        from faststream.nats.security import NatsUserPassword

        kw = {"security": NatsUserPassword(user, password), "serializer": MsgSpecSerializer()}
        # logger=None: no log line per message (GridPilot does not log per message either)
        self.sub, self.pub = NatsBroker(url, logger=None, **kw), NatsBroker(url, logger=None, **kw)
        sink = self.sink

        @self.sub.subscriber(SUBJECT)
        async def handle(body: s.MeasurementSet) -> None:
            sink.hit(body.seq)

        await self.sub.start()
        await self.pub.start()
        self.sub_nc, self.pub_nc = self.sub.connection, self.pub.connection

    async def publish(self, i: int) -> None:
        await self.pub.publish(self.frames[i], SUBJECT)

    async def stop(self) -> None:
        await self.pub.stop()
        await self.sub.stop()


async def throughput(v: Variant, n: int) -> float:
    v.sink.reset(n, timed=False)
    gc.collect()
    t0 = time.perf_counter()
    for i in range(n):
        await v.publish(i)
        if (i + 1) % FLUSH_EVERY == 0:
            await barrier(v.pub_nc)
    await barrier(v.pub_nc)
    await asyncio.wait_for(v.sink.done.wait(), TIMEOUT_S)
    return n / (time.perf_counter() - t0)


async def latency(v: Variant, n: int, rate: float) -> np.ndarray:
    """One-way latencies in microseconds: publish call to handler, paced at ``rate`` Hz."""
    v.sink.reset(n, timed=True)
    sent = np.zeros(n, dtype=np.int64)
    gc.collect()
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(n):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        sent[i] = time.perf_counter_ns()
        await v.publish(i)
    await asyncio.wait_for(v.sink.done.wait(), TIMEOUT_S)
    return (v.sink.recv_ns[:n] - sent) / 1e3


async def run(args: argparse.Namespace, kinds: list[type[Variant]]) -> list[dict[str, Any]]:
    frames = [frame(i) for i in range(max(args.messages, args.samples, WARMUP))]
    sink = Sink(len(frames))
    per_round = [len(c) for c in np.array_split(np.arange(args.samples), args.rounds)]
    rates: dict[str, list[float]] = {k.name: [] for k in kinds}
    lats: dict[str, list[np.ndarray]] = {k.name: [] for k in kinds}
    with tempfile.TemporaryDirectory(prefix="gp-bus-bench-") as tmp:
        server = EmbeddedNats(data_dir=Path(tmp), port=0, monitor_port=0, mqtt_port=0).start()
        password = service_password(Path(tmp), ADMIN)

        try:
            for r in range(args.rounds):
                for kind in kinds[r % len(kinds) :] + kinds[: r % len(kinds)]:
                    # One variant at a time: every subscriber on the subject gets every message.
                    v = kind(sink, frames)
                    await v.start(server.url, ADMIN, password)
                    await barrier(v.sub_nc)
                    await throughput(v, WARMUP)  # imports, caches, decoders
                    rates[v.name].append(await throughput(v, args.messages))
                    await latency(v, 200, args.rate)  # the first after a burst is often slow
                    lats[v.name].append(await latency(v, per_round[r], args.rate))
                    await v.stop()
                    log(f"round {r + 1}: {v.name}: {rates[v.name][-1]:,.0f} msgs/s")
        finally:
            server.stop()
    rows = [{"variant": k, "rate": float(np.median(r)), "rounds": r} for k, r in rates.items()]
    f = frames[0]
    best = min(timeit.repeat(lambda: s.encode(f), number=5_000, repeat=5))
    rows[0]["encode_us"] = best / 5_000 * 1e6
    for row in rows:
        row["p50"], row["p99"] = np.percentile(np.concatenate(lats[row["variant"]]), [50, 99])
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    raw = rows[0]
    out = ["| variant | msgs/s | median µs | p99 µs | msgs/s ratio to raw | median ratio to raw |",
           "| --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for r in rows:
        out.append(
            f"| {r['variant']} | {r['rate']:,.0f} | {r['p50']:.0f} | {r['p99']:.0f} "
            f"| {r['rate'] / raw['rate']:.2f} | {r['p50'] / raw['p50']:.2f} |"
        )
    return "\n".join(out)


def conclusion(rows: list[dict[str, Any]]) -> str:
    raw, gp, *fs = rows
    us = [1e6 / r["rate"] for r in rows]  # wall time per message, publish and receive together
    extra = [u - us[0] for u in us]
    text = (
        f"GridPilot's typed layer reaches {gp['rate'] / raw['rate']:.0%} of raw nats-py's "
        f"throughput, {extra[1]:+.1f} µs per message (publish and receive together; encoding the "
        f"struct, which the raw variant did beforehand, takes {raw['encode_us']:.1f} µs alone), "
        f"and {gp['p50'] - raw['p50']:+.0f} µs at the median latency."
    )
    if fs:
        text += (
            f" FastStream, typed with the same msgspec Struct, reaches "
            f"{fs[0]['rate'] / raw['rate']:.0%} of raw throughput ({extra[2]:+.0f} µs per "
            f"message) with {fs[0]['p50'] / raw['p50']:.1f}x the median latency and "
            f"{fs[0]['p99'] / raw['p99']:.1f}x the p99."
        )
    load = ", ".join(f"{5000 * e / 1e6:.1%} of a core for {r['variant']}"
                     for r, e in zip(rows[1:], extra[1:], strict=True))  # fmt: skip
    text += f" At 100 PMUs at 50 frames/s (5,000 messages/s) the overhead is {load}."
    text += f" In short, GridPilot's layer adds {extra[1] / us[0]:.0%} to nats-py's own work"
    text += f" per message, FastStream {extra[2] / us[0]:.0f}x it." if fs else " per message."
    return text


def machine(load: float) -> str:
    def field(path: str, key: str) -> str:
        text = Path(path).read_text() if Path(path).exists() else ""
        return next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if key in ln), "?")

    pkgs = ("nats-py", "msgspec", "faststream", "fast-depends")
    dists = {d.metadata["Name"].lower(): d.version for d in importlib.metadata.distributions()}
    v = {p: dists.get(p, "not installed") for p in pkgs}
    server = subprocess.run([nats_server_binary(), "--version"], capture_output=True, text=True)
    mem_kb = field("/proc/meminfo", "MemTotal").split()[0]
    ram = f"{int(mem_kb) / 2**20:.1f} GiB" if mem_kb.isdigit() else "?"
    return "\n".join([
        f"- CPU: {field('/proc/cpuinfo', 'model name')}, {os.cpu_count()} cores; RAM {ram}",
        f"- Python {platform.python_version()} ({platform.system()} {platform.release()})",
        f"- nats-py {v['nats-py']}, nats-server {server.stdout.strip().split(' v')[-1]}, "
        f"msgspec {v['msgspec']}, FastStream {v['faststream']} "
        f"(Apache-2.0; fast-depends {v['fast-depends']})",
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; load average at "
        f"start {load:.2f} (other work on the machine competes for its cores)",
    ])  # fmt: skip


REPORT = """\
# Bus overhead: raw nats-py, GridPilot's typed layer, FastStream

Written by `benchmarks/bus_bench.py` (see its docstring); rerun it to refresh.

{table}

{conclusion}

## Method

Same process, one asyncio loop, publisher and subscriber on their own connections to one
embedded nats-server (core NATS); see `benchmarks/README.md`. Payload: a PMU frame as
`MeasurementSet`, {size} bytes of JSON, on `{subject}`. Throughput: {messages:,} messages,
a flush every {flush:,}, median of {nrounds} interleaved rounds. Latency: one-way, {samples:,}
samples at {rate:,.0f} Hz spread over the rounds. Tail latencies on this shared VM include
stalls of a few ms that hit every variant at random: read p99 as indicative only.

msgs/s per round: {rounds}.

## Machine

{machine}
"""


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    rounds = "; ".join(f"{r['variant']} " + ", ".join(f"{x:,.0f}" for x in r["rounds"])
                       for r in rows)  # fmt: skip
    return REPORT.format(
        table=table(rows), conclusion=conclusion(rows), size=len(s.encode(frame(0))),
        subject=SUBJECT, messages=args.messages, flush=FLUSH_EVERY, nrounds=args.rounds,
        rounds=rounds, samples=args.samples, rate=args.rate, machine=machine(args.load),
    )  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=50_000, help="per throughput round")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds per variant")
    ap.add_argument("--samples", type=int, default=2_000, help="latency samples per variant")
    ap.add_argument("--rate", type=float, default=1_000.0, help="latency publish rate, Hz")
    ap.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS.name}")
    args = ap.parse_args()
    t0, args.load = time.perf_counter(), os.getloadavg()[0]
    kinds: list[type[Variant]] = [RawNats, GridPilot]
    if importlib.util.find_spec("faststream"):
        kinds.append(FastStream)
    else:
        log("FastStream not installed: skipped (pip install 'faststream[nats]')")
    log(f"frame: {len(s.encode(frame(0)))} bytes of JSON")
    rows = asyncio.run(run(args, kinds))
    print(table(rows) + "\n\n" + conclusion(rows))
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(report(rows, args))
        log(f"wrote {RESULTS}")
    log(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
