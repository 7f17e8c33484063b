"""A three-node JetStream cluster from the wheel's nats-server: R3 streams, a member SIGKILLed
while measurements are published under load and the historian (a subprocess) stores them; the
database ends with exactly what was published."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client

from gridpilot.core import bus, subjects
from gridpilot.core import schemas as s
from gridpilot.platform.broker import ClusterConfig, EmbeddedNats, pick_port
from gridpilot.platform.permissions import (
    ADMIN,
    CREDENTIALS_FILE,
    HISTORIAN,
    load_credentials,
)
from gridpilot.services.historian.backends import open_store

pytestmark = pytest.mark.slow

HOST = "127.0.0.1"
HOUR_NS = 3600 * 10**9
T0 = (time.time_ns() // HOUR_NS - 1) * HOUR_NS  # within the raw retention
N = 6000
WINDOW = 64  # publishes in flight


def mset(grid: str, i: int) -> s.MeasurementSet:
    t = T0 + i * 100_000_000
    m = s.Measurement(
        mrid="bus_1",
        measurand=s.Measurand.VOLTAGE,
        terminal=s.Terminal.BUS,
        t_ns=t,
        v_pu=1.0 + (i % 10) / 1000,
        source="pmu_1",
    )
    return s.MeasurementSet(
        grid=grid, source="pmu_1", kind=s.DeviceKind.PMU, t_ns=t, seq=i, measurements=[m]
    )


def healthy(server: EmbeddedNats) -> bool:
    try:
        with urllib.request.urlopen(server.monitor_url + "/healthz", timeout=1.0) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[EmbeddedNats]]:
    """Three members on loopback sharing one set of users (the first one's credentials)."""
    dirs = [tmp_path / f"node{i}" for i in range(3)]
    load_credentials(dirs[0])
    for d in dirs[1:]:
        d.mkdir()
        shutil.copy(dirs[0] / CREDENTIALS_FILE, d / CREDENTIALS_FILE)
    route_ports: list[int] = []
    for _ in dirs:
        route_ports.append(pick_port(HOST, 0, route_ports))
    routes = tuple(f"nats-route://{HOST}:{p}" for p in route_ports)
    servers = [
        EmbeddedNats(
            data_dir=d,
            port=0,
            monitor_port=0,
            mqtt_port=0,
            cluster=ClusterConfig(name="gp-test", port=p, routes=routes),
        )
        for d, p in zip(dirs, route_ports, strict=True)
    ]
    try:
        for server in servers:
            server.start()
        deadline = time.monotonic() + 20
        while not all(healthy(x) for x in servers):
            assert time.monotonic() < deadline, "the cluster did not form within 20 s"
            time.sleep(0.1)
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
async def admin(cluster: list[EmbeddedNats]) -> AsyncIterator[Client]:
    password = load_credentials(cluster[0].data_dir)[ADMIN]
    nc = await bus.connect(
        ",".join(x.url for x in cluster), user=ADMIN, password=password, name="test-admin"
    )
    yield nc
    await nc.close()


def run_historian(url: str, password: str, grid: str, data_dir: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPILOT_")}
    env.update(
        GRIDPILOT_NATS_URL=url,
        GRIDPILOT_NATS_USER=HISTORIAN,
        GRIDPILOT_NATS_PASSWORD=password,
        GRIDPILOT_DATA_DIR=str(data_dir),
        GRIDPILOT_DB=str(data_dir / "historian.sqlite"),
    )
    return subprocess.Popen(
        [sys.executable, "-m", "gridpilot", "run", "historian", "--grid", grid],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(data_dir / "historian.log").open("wb"),
    )


async def until_true(pred: object, within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while True:
        try:
            if await pred():  # type: ignore[operator]
                return
        except Exception as e:  # the cluster may still be electing leaders
            last = e
        else:
            last = None
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {within_s} s (last error: {last!r})")
        await asyncio.sleep(0.2)


async def test_r3_streams_survive_a_killed_member_without_loss_or_duplicates(
    cluster: list[EmbeddedNats], admin: Client, tmp_path: Path
) -> None:
    assert bus.replicas(admin) == 3 or await _gossiped(admin)

    async def created() -> bool:
        await bus.ensure_jetstream(admin)
        return True

    await until_true(created, 20, "streams created")
    jsm = admin.jsm()
    for spec in subjects.STREAMS:
        info = await jsm.stream_info(spec.name)
        assert info.config.num_replicas == 3, spec.name

    grid = f"c{uuid.uuid4().hex[:8]}"
    urls = ",".join(x.url for x in cluster)
    historian = run_historian(
        urls, load_credentials(cluster[0].data_dir)[HISTORIAN], grid, tmp_path
    )
    js = admin.jetstream()
    subject = subjects.MEAS.format(grid=grid, source="pmu_1")
    acked: list[float] = []  # when each ack came back
    retries = 0

    async def publish(i: int) -> None:
        nonlocal retries
        payload = s.encode(mset(grid, i))
        # The same message id on every attempt: the stream drops a retried duplicate.
        headers = {"Nats-Msg-Id": f"{grid}-{i}"}
        while True:
            try:
                await js.publish(subject, payload, timeout=1.0, headers=headers)
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
                retries += 1
                await asyncio.sleep(0.05)
                continue
            acked.append(time.monotonic())
            return

    killed_at = 0.0
    victim = ""
    started = time.monotonic()
    try:
        for first in range(0, N, WINDOW):
            if first >= N // 2 and not killed_at:
                # Kill the stream's leader: the worst case (a new leader must be elected).
                leader = (await jsm.stream_info("GP_MEAS")).cluster
                name = leader.leader if leader is not None else None
                node = next((x for x in cluster if f"gridpilot-{x._port(0)}" == name), cluster[0])
                victim = name or "?"
                node.kill()
                killed_at = time.monotonic()
            await asyncio.gather(*(publish(i) for i in range(first, min(N, first + WINDOW))))
        published_s = time.monotonic() - started
        store = open_store(str(tmp_path / "historian.sqlite"))
        try:
            deadline = time.monotonic() + 30
            while store.count_samples(grid) < N:
                assert historian.poll() is None, (tmp_path / "historian.log").read_text()[-3000:]
                assert time.monotonic() < deadline, f"{store.count_samples(grid)} of {N} stored"
                await asyncio.sleep(0.1)
            stored_s = time.monotonic() - started
            await asyncio.sleep(1.0)  # anything redelivered late would show up as extra rows
            assert store.count_samples(grid) == N
        finally:
            store.close()
    finally:
        historian.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            historian.wait(10)
    after = sorted(t for t in acked if t >= killed_at)
    stall = (after[0] - killed_at) if after else float("inf")
    gaps = [b - a for a, b in itertools.pairwise(after)]
    print(
        f"\ncluster: {N} measurements published in {published_s:.1f} s, stored in "
        f"{stored_s:.1f} s; killed leader {victim}: first ack {stall * 1000:.0f} ms after the "
        f"kill, longest gap between acks after it {max(gaps, default=0) * 1000:.0f} ms; "
        f"{retries} publish retries"
    )
    info = await jsm.stream_info("GP_MEAS")
    assert info.cluster is not None and info.cluster.leader != victim


async def _gossiped(nc: Client) -> bool:
    """The client URLs of the other members reach a client shortly after the cluster forms."""
    deadline = time.monotonic() + 10
    while bus.replicas(nc) < 3:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True
