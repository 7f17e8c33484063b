"""Estimate message sizes: what the bus carries per state estimate on every built-in grid, and
``gridpilot up`` on one grid watched for a while.

Part 1, sizes (no bus): three seconds of each built-in grid through the twin, the aligner and
the estimator; per estimate the size of a full ``StateEstimate`` (every id inline: what was
published before) and of its ``EstimateValues`` (what is published now), and the size of the
grid's ``EstimateLayout`` as JSON and as stored in KV (zlib above 64 KiB).

Part 2, ``--live GRID``: ``gridpilot up --grid GRID --no-live`` in a fresh data dir (the model
from tests/.cache when there, the virtual devices on free ports so that another platform on the
machine does not matter), an admin client subscribed to ``gp.<grid>.state`` for ``--minutes``:
estimates received, the largest gap between two, the message sizes (headers included), the
estimator's counters, nats.log checked for refused payloads, and the load average meanwhile.

    python benchmarks/estimate_size_bench.py                       # part 1, ~1 minute
    python benchmarks/estimate_size_bench.py --live mvlv_rural --minutes 10

Prints tables (progress on stderr) and writes benchmarks/results/estimates.md (part 1) or
benchmarks/results/estimates_live.md (part 2).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np
from nats.aio.msg import Msg

from gridpilot.core import bus, subjects
from gridpilot.core.estimates import EstimateRef, EstimateWriter, encode_layout
from gridpilot.core.schemas import EstimateStatus, Heartbeat, encode
from gridpilot.model import devices as dv
from gridpilot.model.distribution import devices_path, placement_path
from gridpilot.model.placement import default_placement, placement_to_toml
from gridpilot.model.registry import grid_key, load_grid
from gridpilot.platform import permissions
from gridpilot.services.state_estimation.aligner import Aligner
from gridpilot.services.state_estimation.estimator import Estimator
from gridpilot.simulator.schedule import Schedule
from gridpilot.simulator.twin import Twin

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "tests" / ".cache"
RESULTS = ROOT / "benchmarks" / "results"
GRIDS = ("cigre_mv", "lv_rural", "mv_rural", "mvlv_rural")
LIMIT = 1 << 20  # nats-server's default max_payload
T0_S = 1_750_000_000.0 - (1_750_000_000.0 % 86400) + 12 * 3600  # a summer noon, UTC
DEVICE_PORTS_FROM = 21000  # below the ephemeral range (outgoing connections take those)
MAX_GAP_S = 2.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def kib(n: float) -> str:
    return f"{n / 1024:,.1f} KiB"


# -- part 1 -----------------------------------------------------------------------------------
@dataclass
class Sizes:
    grid: str
    buses: int
    estimates: int
    full: list[int] = field(default_factory=list)
    values: list[int] = field(default_factory=list)
    layout_json: int = 0
    layout_stored: int = 0
    encode_ms: list[float] = field(default_factory=list)


def sizes(grid: str, seconds: float) -> Sizes:
    model = load_grid(grid, cache_dir=CACHE)
    placement = default_placement(model)
    twin = Twin(model, placement, seed=7)
    schedule = Schedule(placement, T0_S)
    now = 0.0
    aligner = Aligner(placement, clock=lambda: now)
    estimator = Estimator(model, placement)
    table = estimator.sensors
    writer = EstimateWriter(
        model.name,
        sensors=table.names[: len(table.v_keys) + table.n_real_p],
        sources=[d.id for d in placement.devices],
    )
    tick = min(d.period_s for d in placement.devices)
    out = Sizes(grid=grid, buses=len(model.buses), estimates=0)
    t, seq = T0_S, 0
    for _ in range(round(seconds / tick)):
        twin.step(t)
        snaps = []
        for dev in schedule.due(t):
            seq += 1
            snaps += aligner.add(twin.measure(dev, model.name, seq))
        now += tick
        snaps += aligner.poll()
        for snap in snaps:
            est = estimator.estimate(snap)
            out.full.append(len(encode(est)))
            t0 = time.perf_counter()
            values, layout = writer.encode(est)
            data = encode(values)
            out.encode_ms.append((time.perf_counter() - t0) * 1e3)
            out.values.append(len(data))
            if layout is not None:
                out.layout_json = max(out.layout_json, len(encode(layout)))
                out.layout_stored = max(out.layout_stored, len(encode_layout(layout)))
        t += tick
    out.estimates = len(out.values)
    return out


def sizes_table(rows: list[Sizes]) -> str:
    lines = [
        "| grid | buses | estimates | before: full StateEstimate, max | after: EstimateValues, "
        "max (median) | after / limit | layout JSON | layout stored | encode ms, median |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.grid} | {r.buses:,} | {r.estimates} | {max(r.full):,} B "
            f"({max(r.full) / LIMIT:.0%}) | {max(r.values):,} B ({int(np.median(r.values)):,}) "
            f"| {max(r.values) / LIMIT:.1%} | {r.layout_json:,} B | {r.layout_stored:,} B "
            f"| {np.median(r.encode_ms):.2f} |"
        )
    return "\n".join(lines)


# -- part 2 -----------------------------------------------------------------------------------
def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(n: int, start: int = DEVICE_PORTS_FROM) -> list[int]:
    out: list[int] = []
    port = start + (os.getpid() % 50) * 100  # two runs at once start apart
    while len(out) < n:
        if _free(port):
            out.append(port)
        port += 1
    return out


def prepare(grid: str, data_dir: Path) -> None:
    """The model from the cache, the default placement, and the default device registry with
    every virtual device on a free port (the defaults may be another platform's)."""
    model = load_grid(grid, cache_dir=CACHE)
    models = data_dir / "models"
    models.mkdir(parents=True, exist_ok=True)
    shutil.copy(CACHE / f"{grid_key(grid)}.model.json", models)
    placement = default_placement(model)
    registry = dv.default_registry(placement, model)
    ports = iter(free_ports(len(registry.pmu) + len(registry.rtu) + 1))
    der_port = next(ports)
    registry = msgspec.structs.replace(
        registry,
        pmu=[msgspec.structs.replace(p, port=next(ports)) for p in registry.pmu],
        rtu=[msgspec.structs.replace(r, port=next(ports)) for r in registry.rtu],
        der=[msgspec.structs.replace(d, port=der_port) for d in registry.der],
    )
    problems = dv.validate_registry(registry, placement, model)
    if problems:
        raise SystemExit(f"{grid}: the device registry does not validate: {problems[:3]}")
    for path, text in (
        (placement_path(data_dir, model.name), placement_to_toml(placement)),
        (devices_path(data_dir, model.name), dv.registry_to_toml(registry)),
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@dataclass
class Live:
    grid: str
    minutes: float
    arrivals: list[float] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    loads: list[float] = field(default_factory=list)
    first_after_s: float = 0.0
    counters: dict[str, int] = field(default_factory=dict)
    info: dict[str, int | float | str] = field(default_factory=dict)
    refused_in_log: int = 0
    exited: str = ""

    def gaps(self) -> np.ndarray:
        return np.diff(np.array(self.arrivals)) if len(self.arrivals) > 1 else np.zeros(0)


def start_up(grid: str, data_dir: Path) -> subprocess.Popen[bytes]:
    with (data_dir / "up.log").open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gridpilot", "up", "--grid", grid, "--data-dir",
             str(data_dir), "--no-live"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def tail(data_dir: Path) -> str:
    return (data_dir / "up.log").read_text(errors="replace")[-2000:]


async def watch(grid: str, data_dir: Path, minutes: float) -> Live:
    res = Live(grid=grid, minutes=minutes)
    proc = start_up(grid, data_dir)
    started = time.monotonic()
    try:
        while not (data_dir / "endpoints.json").exists():
            if proc.poll() is not None or time.monotonic() - started > 60:
                raise SystemExit(f"no endpoints.json:\n{tail(data_dir)}")
            await asyncio.sleep(0.2)
        url = json.loads((data_dir / "endpoints.json").read_text())["nats"]
        password = permissions.service_password(data_dir, permissions.ADMIN)
        nc = await bus.connect(url, user="admin", password=password, name="estimate-bench")

        async def on_state(msg: Msg) -> None:
            res.arrivals.append(time.monotonic())
            res.sizes.append(bus.message_size(msg.data, msg.headers))  # as the server counts
            ref = msgspec.json.decode(msg.data, type=_Status)
            res.statuses[ref.status] = res.statuses.get(ref.status, 0) + 1

        async def on_beat(msg: Msg) -> None:
            hb = msgspec.json.decode(msg.data, type=Heartbeat)
            if hb.service == "state_estimation":
                res.counters, res.info = dict(hb.counters), dict(hb.info)

        await nc.subscribe(subjects.STATE.format(grid=grid), cb=on_state)
        await nc.subscribe(subjects.HEARTBEAT.wildcard(), cb=on_beat)
        while not res.arrivals:
            if proc.poll() is not None:
                raise SystemExit(f"gridpilot up exited:\n{tail(data_dir)}")
            if time.monotonic() - started > 300:
                raise SystemExit("no estimate within 300 s")
            await asyncio.sleep(0.1)
        res.first_after_s = time.monotonic() - started
        log(f"{grid}: first estimate {res.first_after_s:.0f} s after up; watching {minutes} min")
        end = time.monotonic() + minutes * 60
        while time.monotonic() < end:
            await asyncio.sleep(5)
            res.loads.append(os.getloadavg()[0])
            if proc.poll() is not None:
                res.exited = f"gridpilot up exited with {proc.returncode}"
                break
            gaps = res.gaps()
            log(f"  {len(res.arrivals)} estimates, largest gap {gaps.max(initial=0):.2f} s, "
                f"largest {max(res.sizes):,} B, load {res.loads[-1]:.2f}")  # fmt: skip
        await nc.close()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    nats_log = data_dir / "nats" / "nats.log"
    if nats_log.exists():
        res.refused_in_log = nats_log.read_text(errors="replace").count("maximum payload exceeded")
    return res


class _Status(EstimateRef, frozen=True, kw_only=True):
    status: EstimateStatus


def live_report(res: Live) -> str:
    gaps = res.gaps()
    span = res.arrivals[-1] - res.arrivals[0] if len(res.arrivals) > 1 else 0.0
    over = int((gaps > MAX_GAP_S).sum())
    t0 = res.arrivals[0] if res.arrivals else 0.0
    long_gaps = [(res.arrivals[i] - t0, g) for i, g in enumerate(gaps) if g > MAX_GAP_S]
    c = res.counters
    lines = [
        f"| grid | watched | estimates | per s | largest gap | gaps > {MAX_GAP_S:g} s | "
        "largest message | median message | largest / limit | statuses |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        f"| {res.grid} | {span:.0f} s | {len(res.arrivals):,} | {len(res.arrivals) / span:.2f} "
        f"| {gaps.max(initial=0):.2f} s | {over} | {max(res.sizes):,} B "
        f"| {int(np.median(res.sizes)):,} B | {max(res.sizes) / LIMIT:.1%} "
        f"| {', '.join(f'{k} {v}' for k, v in sorted(res.statuses.items()))} |",
        "",
        f"- first estimate {res.first_after_s:.0f} s after `gridpilot up`"
        + (f"; {res.exited}" if res.exited else ""),
        "- gaps over the limit (seconds after the first estimate: gap): "
        + (", ".join(f"{at:.0f} s: {g:.2f} s" for at, g in long_gaps) or "none"),
        f"- gaps: median {np.median(gaps):.3f} s, p99 {np.percentile(gaps, 99):.3f} s"
        if len(gaps)
        else "- gaps: none",
        f"- estimator counters at the end: dropped_oversize {c.get('dropped_oversize', 0)}, "
        f"layouts_written {c.get('layouts_written', 0)}, snapshots {c.get('snapshots', 0):,}, "
        f"snapshots_skipped {c.get('snapshots_skipped', 0):,}, estimates_converged "
        f"{c.get('estimates_converged', 0):,}; solve_ms {res.info.get('solve_ms', '?')}, "
        f"estimates_per_s {res.info.get('estimates_per_s', '?')}",
        f"- nats.log: {res.refused_in_log} 'maximum payload exceeded'",
        f"- load average (1 min) while watching: min {min(res.loads):.2f}, median "
        f"{np.median(res.loads):.2f}, max {max(res.loads):.2f} on {os.cpu_count()} cores "
        "(other work on the machine included)"
        if res.loads
        else "- load average: not sampled",
    ]
    return "\n".join(lines)


def machine() -> str:
    return (
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; {platform.node()}, "
        f"{os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grids", nargs="*", default=list(GRIDS))
    ap.add_argument("--seconds", type=float, default=3.0, help="simulated seconds per grid")
    ap.add_argument("--live", metavar="GRID", help="watch `gridpilot up --grid GRID`")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--keep", action="store_true", help="keep the live run's data dir")
    args = ap.parse_args()
    if args.live:
        data_dir = Path(tempfile.mkdtemp(prefix="gp-estimates-"))
        try:
            prepare(args.live, data_dir)
            res = asyncio.run(watch(args.live, data_dir, args.minutes))
        finally:
            if not args.keep:
                shutil.rmtree(data_dir, ignore_errors=True)
        report = live_report(res)
        print(report)
        cmd = "python benchmarks/estimate_size_bench.py"
        cmd += f" --live {args.live} --minutes {args.minutes:g}"
        (RESULTS / "estimates_live.md").write_text(
            f"# Estimates of `gridpilot up --grid {args.live}`, watched\n\n"
            f"Command: `{cmd}`. Machine: {machine()}.\n\n{report}\n"
        )
        return
    rows = []
    for grid in args.grids:
        log(f"{grid} ...")
        rows.append(sizes(grid, args.seconds))
    table = sizes_table(rows)
    print(table)
    (RESULTS / "estimates.md").write_text(
        "# Estimate message sizes\n\n"
        f"Command: `python benchmarks/estimate_size_bench.py`. Machine: {machine()}.\n\n"
        f"Per built-in grid, {args.seconds:g} simulated seconds of estimates (twin, aligner, "
        "estimator; no bus). Before: the full StateEstimate with every id inline, as "
        "published until now. After: the EstimateValues published now (values rounded to what "
        "they mean, powers and currents as whole W, var and mA); the ids are in the grid's "
        "EstimateLayout, written to KV gp_state once per topology (zlib-compressed above "
        f"64 KiB). The limit is nats-server's default max_payload, {LIMIT:,} bytes, headers "
        "included; the aim is at most half of it on the largest grid.\n\n"
        f"{table}\n"
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
