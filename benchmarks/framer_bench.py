"""C37.118.2 framer (``FrameBuffer.feed``) on 64 KiB of hostile and of valid input, on one core.

    python benchmarks/framer_bench.py                       # writes results/framer.md
    python benchmarks/framer_bench.py --runs 3 --no-write
    python benchmarks/framer_bench.py --json /tmp/before.json --no-write   # keep numbers
    python benchmarks/framer_bench.py --before /tmp/before.json            # add a before column

Inputs, 65,536 bytes each: all 0xAA (every byte a SYNC candidate claiming FRAMESIZE 0xAAAA),
seeded random bytes, and valid frames (a CFG-2, then one-PMU float data frames). Each is fed to
a fresh ``FrameBuffer`` in one call and in 1,460-byte reads (one TCP segment each), as a PDC
client receives it. The time of a run is the whole input; median and p99 over the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

from c37118_bench import machine  # the same machine description
from gridpilot.protocols.c37118 import (
    ConfigFrame,
    DataFrame,
    FrameBuffer,
    PhasorChannel,
    PmuConfig,
    PmuData,
    encode,
)

RESULTS = Path(__file__).parent / "results" / "framer.md"
SIZE = 65_536
SEGMENT = 1_460


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def valid_stream() -> bytes:
    config = ConfigFrame(
        idcode=1,
        data_rate=50,
        pmus=(
            PmuConfig(
                station="PMU 1",
                idcode=11,
                phasors=tuple(PhasorChannel(name=n) for n in ("VA", "VB", "VC", "IA")),
            ),
        ),
    )
    out = bytearray(encode(config))
    rng = random.Random(2)
    k = 0
    while len(out) < SIZE:
        frame = DataFrame(
            idcode=1,
            soc=1_790_000_000 + k // 50,
            fracsec=(k % 50) * 20_000,
            config=config,
            pmus=(
                PmuData(
                    freq_hz=50 + rng.uniform(-0.1, 0.1),
                    phasors=tuple(complex(rng.uniform(-1e4, 1e4), 1.0) for _ in range(4)),
                ),
            ),
        )
        out += encode(frame)
        k += 1
    return bytes(out[:SIZE])  # the last frame cut short, as a read boundary may


INPUTS = {
    "64 KiB of 0xAA": b"\xaa" * SIZE,
    "64 KiB of random bytes": random.Random(1).randbytes(SIZE),
    "64 KiB of valid frames": valid_stream(),
}
MODES = {"one feed": SIZE, f"{SEGMENT}-byte reads": SEGMENT}


def run_once(data: bytes, step: int) -> float:
    framer = FrameBuffer()
    t0 = time.perf_counter()
    for i in range(0, len(data), step):
        framer.feed(data[i : i + step])
    return time.perf_counter() - t0


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def measure(runs: int, budget_s: float) -> dict[str, dict[str, float | int]]:
    results: dict[str, dict[str, float | int]] = {}
    for name, data in INPUTS.items():
        for mode, step in MODES.items():
            times: list[float] = []
            spent = 0.0
            while len(times) < runs and (len(times) < 3 or spent < budget_s):
                times.append(run_once(data, step))
                spent += times[-1]
            key = f"{name}, {mode}"
            results[key] = {
                "runs": len(times),
                "median_ms": statistics.median(times) * 1e3,
                "p99_ms": p99(times) * 1e3,
            }
            log(f"{key}: {results[key]}")
    return results


def table(results: dict[str, dict[str, float | int]], before: dict | None) -> str:
    head = "| input, reads | runs | median ms | p99 ms |"
    rule = "| --- | ---: | ---: | ---: |"
    if before:
        head += " before: runs | before: median ms | before: p99 ms |"
        rule += " ---: | ---: | ---: |"
    lines = [head, rule]
    for key, r in results.items():
        line = f"| {key} | {r['runs']} | {r['median_ms']:,.2f} | {r['p99_ms']:,.2f} |"
        if before and key in before:
            b = before[key]
            line += f" {b['runs']} | {b['median_ms']:,.2f} | {b['p99_ms']:,.2f} |"
        lines.append(line)
    return "\n".join(lines)


REPORT = """\
# C37.118.2 framer on hostile input

Written by `benchmarks/framer_bench.py` (see its docstring); rerun it to refresh.

{table}

{before_note}

## Method

Each input is 65,536 bytes: all 0xAA (each byte a SYNC candidate whose FRAMESIZE 0xAAAA claims
43,690 bytes), `random.Random(1).randbytes`, and a CFG-2 followed by one-PMU float data frames
(the last one cut short). A fresh `FrameBuffer()` (following the CFG-2 it sees) takes the
whole input in one `feed` or in 1,460-byte reads; the time of a run is the whole input, with
`time.perf_counter()`. Up to {runs} runs per row (at least 3; fewer than {runs} when the
rows's runs had taken over {budget:g} s); p99 of a handful of runs is close to the maximum.

## Machine

{machine}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--budget", type=float, default=20.0, help="seconds per row, roughly")
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU (default: last)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument("--before", type=Path, default=None, help="numbers of an earlier run")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    cpu = args.cpu
    if hasattr(os, "sched_setaffinity"):
        cpu = max(os.sched_getaffinity(0)) if cpu is None else cpu
        os.sched_setaffinity(0, {cpu})
    load = os.getloadavg()[0]
    results = measure(args.runs, args.budget)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    before = json.loads(args.before.read_text()) if args.before else None
    note = (
        f'"before": the same benchmark on the framer before linear resynchronisation '
        f"({args.before.name})."
        if before
        else ""
    )
    report = REPORT.format(
        table=table(results, before),
        before_note=note,
        runs=args.runs,
        budget=args.budget,
        machine=machine(load, cpu),
    )
    print(report)
    if not args.no_write:
        RESULTS.write_text(report)
        log(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
