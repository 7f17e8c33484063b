"""Services outlive broker outages; a connection closed for good ends the process; the
supervisor restarts a dead broker and a hung child, and reports the restart."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import nats.errors
import pytest
from nats.aio.client import Client

from gridpilot.core import bus, subjects
from gridpilot.core.bus import connect, ensure_jetstream
from gridpilot.core.config import ServiceConfig
from gridpilot.core.schemas import AlarmKind, Condition, Heartbeat, ServiceState
from gridpilot.core.service import EXIT_BUS_CLOSED, Service
from gridpilot.platform.broker import EmbeddedNats
from gridpilot.platform.permissions import ADMIN, service_password
from gridpilot.platform.supervisor import Supervisor

GRID = "g"
BLOCK = b"x" * 1024


async def until(cond: Callable[[], bool], within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not cond():
        assert time.monotonic() < deadline, f"{what}: not within {within_s} s"
        await asyncio.sleep(0.05)


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    """A broker of this test's own (it gets killed), with the catalogue's streams."""
    server = EmbeddedNats(data_dir=tmp_path, port=0, monitor_port=0, mqtt_port=0).start()
    admin = await admin_client(server)
    await ensure_jetstream(admin)
    await admin.close()
    yield server
    server.stop()


async def admin_client(server: EmbeddedNats, **kwargs: object) -> Client:
    return await connect(
        server.url,
        user=ADMIN,
        password=service_password(server.data_dir, ADMIN),
        name="test-admin",
        startup_timeout=10,
        **kwargs,  # type: ignore[arg-type]
    )


class Publisher(Service):
    """Publishes a 1 KiB measurement-like message every few milliseconds, as a PMU gateway
    does; a small pending buffer so that a short outage overflows it."""

    name = "probe"
    pending_bytes = 32 * 1024

    async def setup(self) -> None:
        self.spawn(self._loop(), name="publish")

    async def _loop(self) -> None:
        subject = subjects.MEAS.format(grid=GRID, source="pmu_1")
        while True:
            await self.nc.publish(subject, BLOCK)  # the raw connection, as the estimator does
            await self.publish(subject, Heartbeat(  # and the service's typed path
                service="x", grid=GRID, instance="i", pid=0, state=ServiceState.RUNNING, t_ns=0,
                uptime_s=0.0,
            ))  # fmt: skip
            await asyncio.sleep(0.002)


def service_config(server: EmbeddedNats) -> ServiceConfig:
    return ServiceConfig(
        nats_url=server.url,
        user=ADMIN,
        password=service_password(server.data_dir, ADMIN),
        grid=GRID,
        data_dir=server.data_dir,
        heartbeat_s=0.2,
    )


async def test_a_publisher_outlives_an_outage_that_overflows_its_buffer(
    broker: EmbeddedNats,
) -> None:
    svc = Publisher(service_config(broker))
    task = asyncio.create_task(svc.run(install_signals=False))
    try:
        await until(lambda: svc.counters["msgs_out"] > 100, 10, "publishing")
        broker.kill()
        await until(lambda: svc.all_counters()["dropped_outage"] > 200, 20, "dropping")
        assert not task.done(), "the service ended during the outage"
        assert svc.counters["task_failures"] == 0
        await asyncio.to_thread(broker.restart)
        admin = await admin_client(broker)
        beats: list[Heartbeat] = []

        async def on_beat(msg) -> None:  # type: ignore[no-untyped-def]
            beats.append(msgspec.json.decode(msg.data, type=Heartbeat))

        await admin.subscribe(subjects.HEARTBEAT.format(service="probe"), cb=on_beat)
        await until(lambda: bool(beats), 10, "a heartbeat after the outage")
        counters = beats[-1].counters
        assert counters["dropped_outage"] > 200 and counters["bus_reconnects"] == 1
        # what fitted in the buffer went out on reconnect, into GP_MEAS on the same store
        info = await admin.jsm().stream_info("GP_MEAS")
        assert info.state.messages > svc.counters["msgs_out"] // 2
        await admin.close()
    finally:
        svc.stop()
        await asyncio.wait_for(task, 10)
    assert svc.exit_code() == 0


async def test_a_message_over_the_limit_with_its_headers_is_refused_not_sent(
    broker: EmbeddedNats,
) -> None:
    nc = await admin_client(broker)
    try:
        payload = b"x" * (nc.max_payload - 10)
        with pytest.raises(nats.errors.MaxPayloadError):
            await nc.publish("gp.g.state", payload, headers={"Gp-Instance": "abcdefgh"})
        assert bus.stats(nc).dropped_oversize == 1
        await bus.barrier(nc)  # the server would have closed the connection
        assert nc.is_connected
    finally:
        await nc.close()


async def test_a_service_whose_connection_is_closed_for_good_exits_non_zero(
    broker: EmbeddedNats,
) -> None:
    svc = Service(service_config(broker))
    task = asyncio.create_task(svc.run(install_signals=False))
    try:
        await until(lambda: svc.state == "running", 10, "running")
        # a protocol violation: the server answers -ERR and closes; nats-py gives up
        assert svc.nc._transport is not None
        svc.nc._transport.write(b"NONSENSE\r\n")
        await asyncio.wait_for(task, 10)
    finally:
        svc.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
    assert svc.nc.is_closed
    assert svc.exit_code() == EXIT_BUS_CLOSED


async def test_supervisor_restarts_its_broker_and_a_hung_child_and_reports_it(
    tmp_path: Path,
) -> None:
    """A real supervisor with one real child (monitoring): SIGKILL the broker, SIGSTOP the
    child, SIGKILL the child."""
    sup = Supervisor(
        grid="cigre_mv",
        data_dir=tmp_path / "gp",
        services=["monitoring"],
        live=False,
        stale_after_s=3.0,
        startup_grace_s=60.0,
    )
    run = asyncio.create_task(sup.run())
    nc: Client | None = None
    try:
        await until(lambda: "monitoring" in sup.children, 60, "the child started")
        child = sup.children["monitoring"]
        await until(lambda: child.heartbeat is not None, 60, "the child's first beat")
        assert sup.broker is not None
        nc = await admin_client(sup.broker)
        conditions: list[Condition] = []

        async def on_condition(msg) -> None:  # type: ignore[no-untyped-def]
            conditions.append(msgspec.json.decode(msg.data, type=Condition))

        await nc.subscribe(
            subjects.CONDITION.format(grid="cigre_mv", source="supervisor"), cb=on_condition
        )
        await bus.barrier(nc)

        # the broker dies: it comes back on the same URL, the child beats again, unrestarted
        url, pid = sup.broker.url, child.proc.pid if child.proc else 0
        sup.broker.kill()
        beat_at = child.heartbeat_at
        await until(lambda: sup.broker_restarts == 1, 20, "the broker restarted")
        assert sup.broker.url == url and sup.broker.is_running()
        await until(lambda: child.heartbeat_at > beat_at, 20, "a beat after the outage")
        assert child.proc is not None and child.proc.pid == pid and child.restarts == 0

        # a hung child (stopped): killed and restarted once its heartbeat is stale
        os.kill(pid, signal.SIGSTOP)
        await until(lambda: bool(conditions), 30, "a service_restarted condition")
        first = conditions[0]
        assert first.kind is AlarmKind.SERVICE_RESTARTED and first.mrid == "monitoring"
        assert first.active and "heartbeat" in first.message, first.message
        await until(lambda: _gone(pid), 10, "the hung child killed, not left stopped")
        await until(lambda: any(not c.active for c in conditions), 60, "the condition cleared")
        assert child.proc is not None and child.proc.pid != pid and child.restarts == 1

        # a child that dies: the exit code is reported
        n = len(conditions)
        os.kill(child.proc.pid, signal.SIGKILL)
        await until(lambda: len(conditions) > n, 20, "a second condition")
        assert conditions[n].active and "exited with code -9" in conditions[n].message
        await until(lambda: not conditions[-1].active, 60, "the second condition cleared")
    finally:
        if nc is not None:
            await nc.close()
        sup.stop()
        await asyncio.wait_for(run, 30)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False
