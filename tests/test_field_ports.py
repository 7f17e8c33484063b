"""A virtual device whose port is taken (another platform's devices, another program) does not
crash the simulator: the others listen, the service reports itself degraded and names the
device and port, a comm_loss condition says what to do, and the device listens as soon as its
port is free. Real nats-server, the simulator service in this process, real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client

from gridpilot.core import subjects
from gridpilot.core.config import ServiceConfig
from gridpilot.core.schemas import AlarmKind, Condition, Heartbeat, ServiceState
from gridpilot.model import distribution
from gridpilot.model.devices import default_registry
from gridpilot.model.placement import default_placement
from gridpilot.platform.broker import EmbeddedNats
from gridpilot.simulator.field import LISTEN_RETRY_S
from gridpilot.simulator.service import SimulatorService
from tests.pipeline import grid
from tests.test_services import free_port

GRID = "cigre_mv"


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


async def test_a_taken_port_is_reported_not_fatal_and_listened_on_once_free(
    admin_nc: Client, nats_server: EmbeddedNats, credentials: dict[str, str], tmp_path: Path
) -> None:
    model = grid(GRID)
    placement = default_placement(model)
    registry = default_registry(placement, model, site="aaaaaa")
    replace = msgspec.structs.replace
    registry = replace(
        registry,
        pmu=[replace(p, port=free_port()) for p in registry.pmu],
        rtu=[replace(r, port=free_port()) for r in registry.rtu],
        der=[replace(d, port=free_port()) for d in registry.der],
    )
    await distribution.publish(
        admin_nc, distribution.GridPackage(model=model, placement=placement, devices=registry)
    )
    pmu, other = registry.pmu[0], registry.pmu[1]
    conditions: list[Condition] = []
    beats: list[Heartbeat] = []

    def collect(typ: type[Any], into: list[Any]) -> Callable[[Any], Any]:
        async def on_msg(msg: Any) -> None:
            into.append(msgspec.json.decode(msg.data, type=typ))

        return on_msg

    await admin_nc.subscribe(
        subjects.CONDITION.format(grid=GRID, source="simulator"), cb=collect(Condition, conditions)
    )
    await admin_nc.subscribe(
        subjects.HEARTBEAT.format(service="simulator"), cb=collect(Heartbeat, beats)
    )
    holder = socket.socket()  # another program on the PMU's port
    holder.bind(("127.0.0.1", pmu.port))
    holder.listen()
    config = ServiceConfig(
        nats_url=nats_server.url,
        user="simulator",
        password=credentials["simulator"],
        grid=GRID,
        data_dir=tmp_path,
        heartbeat_s=0.2,
    )
    svc = SimulatorService(config)
    task = asyncio.create_task(svc.run(install_signals=False))
    try:
        await _wait(lambda: conditions, "no condition for the device that cannot listen")
        [raised] = conditions
        assert (raised.kind, raised.mrid, raised.active) == (AlarmKind.COMM_LOSS, pmu.device, True)
        path = distribution.devices_path(tmp_path, GRID)
        assert raised.message == (
            f"PMU {pmu.device} (ID code {pmu.idcode}) cannot listen on 127.0.0.1:{pmu.port}: "
            "the port is taken by another program; is another GridPilot platform running with "
            "this data dir, or one whose registry has these ports? Stop it, or give the devices "
            f"free ports in {path} and start again"
        )
        await _wait(lambda: beats and beats[-1].state is ServiceState.DEGRADED, "not degraded")
        assert beats[-1].info["ports_taken"] == f"127.0.0.1:{pmu.port}"
        assert not task.done() and listening(other.port)  # the rest serves
        holder.close()
        freed = time.monotonic()
        await _wait(lambda: not conditions[-1].active, "not cleared", LISTEN_RETRY_S + 10)
        assert conditions[-1].mrid == pmu.device and listening(pmu.port)
        await _wait(lambda: beats[-1].state is ServiceState.RUNNING, "still degraded")
        assert "ports_taken" not in beats[-1].info
        print(f"listening {time.monotonic() - freed:.1f} s after the port was freed")
    finally:
        holder.close()
        svc.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
    assert svc.counters["task_failures"] == 0


async def _wait(done: Callable[[], Any], what: str, within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while not done():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)
