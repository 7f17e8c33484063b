"""Edge benchmark: how long the hub takes to catch up after the leaf link was cut.

An edge nats-server (leaf node of the hub, through a TCP proxy the benchmark can cut, as in
tests/test_edge.py) stores 100 measurement sets a second in its GP_MEAS; the hub's GP_MEAS
sources them (``ensure_edge_source``). The link is cut for 12, 30, 50 and 60 s; afterwards the
benchmark times, from the moment the proxy accepts again:

- when the leaf link is back (``/leafz`` on both servers),
- when the hub's stream asked the edge for a source consumer (every consumer-create request
  the hub sends to ``$JS.edge-<name>.API``, seen by a subscriber on the hub: the retries the
  server makes while the link is down, and the one that succeeds),
- when the first message of the backlog reached the hub, and when the hub held everything
  the edge had stored by then (the backlog) and everything at the end (exactly once).

    /tmp/v/bin/python benchmarks/edge_bench.py    # ~7 minutes: 12/30/50/60 s cuts, 3 runs each
    /tmp/v/bin/python benchmarks/edge_bench.py --cuts 12 --runs 1 --no-write   # one run
    /tmp/v/bin/python benchmarks/edge_bench.py --cuts 30 --runs 1 --update-at-reconnect

(the last updates the hub's stream with its own config once the leaf is back: no faster).

Prints a table (progress on stderr) and writes benchmarks/results/edge.md. Runs of different
cut lengths go in parallel (``--parallel``, default 4): each run is mostly waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from nats.aio.client import Client
from nats.aio.msg import Msg

from gridpilot.core import bus, subjects
from gridpilot.core import schemas as s
from gridpilot.platform.broker import (
    HUB_DOMAIN,
    EmbeddedNats,
    edge_domain,
    leaf_url,
    nats_server_binary,
    pick_port,
)
from gridpilot.platform.permissions import ADMIN, leafnode_password, load_credentials

RESULTS = Path(__file__).parent / "results" / "edge.md"
HOST = "127.0.0.1"
EDGE = "site1"
RATE_HZ = 100
BEFORE_S = 5.0
CATCH_UP_LIMIT_S = 240.0  # 30 s per lost request plus a back-off of up to 2 minutes
T0 = 1_700_000_000_000_000_000


WHY = """\
## Why

The hub's stream checks its sources every 10 s; one silent for more than 10 s gets a new
consumer-create request to the edge, which goes nowhere while the link is down. nats-server
waits 30 s for the answer (`srcConsumerWaitTime`), then retries after 10 s times the number of
failures (up to 2 minutes). When the leaf link comes back the hub retries every stalled source
at once, except one whose request is still waiting: that one catches up only at its next
retry. A cut that ends before the first request (12 s here) or while a retry is scheduled
(50 s here) costs about a second; one that ends while a request waits costs up to 30 s plus
the back-off. deploy/README.md ("Edge sites") has the details and the server code path."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Proxy:
    """A TCP proxy that can be cut (every connection closed, nothing accepted) and restored."""

    def __init__(self, port: int, target: int) -> None:
        self.port, self.target = port, target
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def open(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((HOST, self.port))
        ls.listen()
        self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def cut(self) -> None:
        ls, self._listener = self._listener, None
        if ls is not None:
            with contextlib.suppress(OSError):
                ls.shutdown(socket.SHUT_RDWR)
            ls.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection((HOST, self.target))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def leafz(server: EmbeddedNats) -> int:
    with urllib.request.urlopen(server.monitor_url + "/leafz", timeout=2) as resp:
        return int(json.load(resp).get("leafnodes", 0))


def mset(grid: str, i: int) -> s.MeasurementSet:
    t = T0 + i * 10_000_000
    m = s.Measurement(
        mrid="bus_1",
        measurand=s.Measurand.VOLTAGE,
        terminal=s.Terminal.BUS,
        t_ns=t,
        v_pu=1.0,
        source="pmu_1",
    )
    return s.MeasurementSet(
        grid=grid, source="pmu_1", kind=s.DeviceKind.PMU, t_ns=t, seq=i, measurements=[m]
    )


@dataclass
class Run:
    cut_s: float
    leaf_hub_s: float = float("nan")  # after the proxy accepted again
    leaf_edge_s: float = float("nan")
    requests_s: list[float] = field(default_factory=list)  # consumer creates, from the cut
    first_s: float = float("nan")
    backlog_s: float = float("nan")
    exact: bool = False


async def _admin(server: EmbeddedNats) -> Client:
    password = load_credentials(server.data_dir)[ADMIN]
    return await bus.connect(server.url, user=ADMIN, password=password, name="edge-bench")


async def one_run(cut_s: float, tmp: Path, update_at_reconnect: bool = False) -> Run:
    taken: list[int] = []
    for _ in range(2):
        taken.append(pick_port(HOST, 0, taken))
    leaf_port, proxy_port = taken
    hub = EmbeddedNats(
        data_dir=tmp / "hub",
        port=0,
        monitor_port=0,
        mqtt_port=0,
        leaf_port=leaf_port,
        domain=HUB_DOMAIN,
    )
    proxy = Proxy(proxy_port, leaf_port)
    password = leafnode_password(tmp / "hub")
    edge = EmbeddedNats(
        data_dir=tmp / "edge",
        hub_url=leaf_url(f"nats://{HOST}:{proxy_port}", password),
        domain=edge_domain(EDGE),
        port=0,
        monitor_port=0,
        mqtt_port=0,
    )
    run = Run(cut_s)
    try:
        hub.start()
        proxy.open()
        edge.start()
        hub_nc, edge_nc = await _admin(hub), await _admin(edge)
        deadline = time.monotonic() + 10
        while leafz(hub) != 1:
            if time.monotonic() > deadline:
                raise RuntimeError("the edge did not connect as a leaf")
            await asyncio.sleep(0.1)
        await bus.ensure_jetstream(hub_nc)
        await bus.ensure_jetstream(edge_nc)
        await bus.ensure_edge_source(edge_nc, hub_domain=HUB_DOMAIN, edge_domain=edge_domain(EDGE))

        cut_at = 0.0
        creates: list[float] = []

        async def on_create(msg: Msg) -> None:
            creates.append(time.monotonic())

        # the hub's stream asks the edge for its source consumer on this subject
        api = f"$JS.{edge_domain(EDGE)}.API.CONSUMER.CREATE.>"
        await hub_nc.subscribe(api, cb=on_create)

        grid = "bench"
        subject = subjects.MEAS.format(grid=grid, source="pmu_1")
        edge_js, hub_jsm = edge_nc.jetstream(), hub_nc.jsm()

        async def hub_count() -> int:
            info = await hub_jsm.stream_info("GP_MEAS", subjects_filter=subject)
            return int((info.state.subjects or {}).get(subject, 0))

        n = 0
        start = time.monotonic()
        restored_at = 0.0
        at_restore = -1
        first_at = backlog_at = polled_at = 0.0
        at_cut_count = 0
        while True:
            now = time.monotonic()
            if not cut_at and now >= start + BEFORE_S:
                proxy.cut()
                cut_at = now
                log(f"cut {cut_s:.0f} s: link cut")
            elif cut_at and not restored_at and now >= cut_at + cut_s:
                at_cut_count = await hub_count()
                proxy.open()
                restored_at, at_restore = time.monotonic(), n
                log(f"cut {cut_s:.0f} s: link restored; the hub has {at_cut_count} of {n}")
            if restored_at and now - polled_at >= 0.1:
                polled_at = now
                if run.leaf_hub_s != run.leaf_hub_s and leafz(hub) == 1:
                    run.leaf_hub_s = time.monotonic() - restored_at
                    if update_at_reconnect:  # the same config again: does it reset anything?
                        info = await hub_jsm.stream_info("GP_MEAS")
                        await hub_jsm.update_stream(info.config)
                if run.leaf_edge_s != run.leaf_edge_s and leafz(edge) == 1:
                    run.leaf_edge_s = time.monotonic() - restored_at
                count = await hub_count()
                if not first_at and count > at_cut_count:
                    first_at = time.monotonic()
                if count >= at_restore:
                    backlog_at = time.monotonic()
                    break
                if now - restored_at > CATCH_UP_LIMIT_S:
                    log(f"cut {cut_s:.0f} s: no catch-up within {CATCH_UP_LIMIT_S:.0f} s")
                    break
            await edge_js.publish(subject, s.encode(mset(grid, n)), timeout=2)
            n += 1
            await asyncio.sleep(max(0.0, start + n / RATE_HZ - time.monotonic()))
        if first_at:
            run.first_s = first_at - restored_at
        if backlog_at:
            run.backlog_s = backlog_at - restored_at
        run.requests_s = [t - cut_at for t in creates if t > cut_at]
        # everything published, exactly once (sourcing is live again: a few seconds at most)
        deadline = time.monotonic() + 20
        while await hub_count() < n and time.monotonic() < deadline:  # noqa: ASYNC110 (polls)
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        run.exact = await hub_count() == n
        await hub_nc.close()
        await edge_nc.close()
    finally:
        proxy.cut()
        edge.stop()
        hub.stop()
    log(
        f"cut {cut_s:.0f} s: leaf back {run.leaf_hub_s:.1f} s, first message {run.first_s:.1f} s,"
        f" backlog {run.backlog_s:.1f} s after restore; consumer requests at "
        f"{', '.join(f'{t:.1f}' for t in run.requests_s)} s after the cut; exact: {run.exact}"
    )
    return run


async def run_all(cuts: list[float], runs: int, parallel: int, update: bool) -> list[Run]:
    sem = asyncio.Semaphore(parallel)

    async def guarded(cut_s: float) -> Run:
        async with sem:
            with tempfile.TemporaryDirectory(prefix="gp-edge-bench-") as d:
                return await one_run(cut_s, Path(d), update)

    jobs = [guarded(c) for _ in range(runs) for c in cuts]
    return list(await asyncio.gather(*jobs))


def table(results: list[Run]) -> str:
    lines = [
        "| cut s | leaf link back s | first message s | backlog at hub s | consumer requests "
        "(s after the cut) | exactly once |",
        "| ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in sorted(results, key=lambda r: (r.cut_s, r.backlog_s)):
        reqs = ", ".join(f"{t:.1f}" for t in r.requests_s) or "-"
        lines.append(
            f"| {r.cut_s:.0f} | {max(r.leaf_hub_s, r.leaf_edge_s):.1f} | {r.first_s:.1f} | "
            f"{r.backlog_s:.1f} | {reqs} | {'yes' if r.exact else 'NO'} |"
        )
    lines.append("")
    lines.append("| cut s | runs | backlog at hub after the link returned, s: median (min-max) |")
    lines.append("| ---: | ---: | --- |")
    for cut in sorted({r.cut_s for r in results}):
        xs = [r.backlog_s for r in results if r.cut_s == cut]
        lines.append(
            f"| {cut:.0f} | {len(xs)} | {statistics.median(xs):.1f} ({min(xs):.1f}-{max(xs):.1f}) |"
        )
    return "\n".join(lines)


def machine(load: float, parallel: int) -> str:
    def fld(path: str, key: str) -> str:
        text = Path(path).read_text() if Path(path).exists() else ""
        return next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if key in ln), "?")

    server = subprocess.run([nats_server_binary(), "--version"], capture_output=True, text=True)
    return "\n".join(
        [
            f"- CPU: {fld('/proc/cpuinfo', 'model name')}, {os.cpu_count()} cores (nproc)",
            f"- Python {platform.python_version()} ({platform.system()} {platform.release()}); "
            f"nats-server {server.stdout.strip().split(' v')[-1]}",
            f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; load average at "
            f"start {load:.2f}; {parallel} runs at once (each a hub, an edge and a proxy)",
        ]
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cuts", type=float, nargs="+", default=[12.0, 30.0, 50.0, 60.0])
    ap.add_argument("--runs", type=int, default=3, help="runs per cut length")
    ap.add_argument("--parallel", type=int, default=4, help="runs at once")
    ap.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS.name}")
    update = "update the hub's GP_MEAS with its own config once the leaf is back (no file)"
    ap.add_argument("--update-at-reconnect", action="store_true", help=update)
    args = ap.parse_args()
    args.no_write |= args.update_at_reconnect
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    results = asyncio.run(run_all(args.cuts, args.runs, args.parallel, args.update_at_reconnect))
    text = table(results)
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(
            "# Edge: hub catch-up after a cut of the leaf link\n\n"
            "Written by `benchmarks/edge_bench.py` (see its docstring); rerun it to refresh. "
            "Times in seconds after the proxy accepted connections again, except the consumer "
            "requests (after the cut).\n\n"
            + text
            + "\n\n"
            + WHY
            + "\n\n## Machine\n\n"
            + machine(load, args.parallel)
            + "\n"
        )
        log(f"wrote {RESULTS}")
    log(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
