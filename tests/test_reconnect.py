"""A service rides out a broker restart: it reconnects and its heartbeats resume."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from urllib.parse import urlparse

import msgspec

from gridpilot.core import subjects
from gridpilot.core.bus import connect, ensure_jetstream
from gridpilot.core.config import ServiceConfig
from gridpilot.core.schemas import Heartbeat
from gridpilot.core.service import Service
from gridpilot.platform.broker import EmbeddedNats
from gridpilot.platform.permissions import ADMIN, service_password


class Probe(Service):
    name = "probe"


async def test_service_reconnects_after_broker_restart(tmp_path: Path) -> None:
    broker = EmbeddedNats(data_dir=tmp_path, port=0, monitor_port=0, mqtt_port=0).start()
    port = urlparse(broker.url).port
    assert port is not None
    password = service_password(tmp_path, ADMIN)
    admin = await connect(broker.url, user=ADMIN, password=password, name="t", startup_timeout=5)
    await ensure_jetstream(admin)
    await admin.close()

    config = ServiceConfig(
        nats_url=broker.url,
        user=ADMIN,
        password=password,
        grid="g",
        data_dir=tmp_path,
        heartbeat_s=0.2,
    )
    probe = Probe(config)
    task = asyncio.create_task(probe.run(install_signals=False))
    try:
        await _until(lambda: probe.state == "running", 10)
        broker.stop()
        await asyncio.sleep(1.0)
        assert not probe.nc.is_connected
        restarted = EmbeddedNats(data_dir=tmp_path, port=port, monitor_port=0, mqtt_port=0)
        await asyncio.to_thread(restarted.start)
        try:
            watcher = await connect(
                restarted.url, user=ADMIN, password=password, name="w", startup_timeout=5
            )
            beats: list[Heartbeat] = []

            async def on_beat(msg) -> None:  # type: ignore[no-untyped-def]
                beats.append(msgspec.json.decode(msg.data, type=Heartbeat))

            await watcher.subscribe(subjects.HEARTBEAT.format(service="probe"), cb=on_beat)
            t0 = time.monotonic()
            await _until(lambda: len(beats) >= 2, 10)
            print(f"heartbeats resumed {time.monotonic() - t0:.1f} s after the broker came back")
            kv = await watcher.jetstream().key_value("gp_services")
            await _until_async(lambda: _kv_has(kv, "probe"), 5)
            await watcher.close()
        finally:
            probe.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
            restarted.stop()
    finally:
        broker.stop()


async def _until(cond, within_s: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def _until_async(cond, within_s: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within_s
    while not await cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def _kv_has(kv, key: str) -> bool:  # type: ignore[no-untyped-def]
    try:
        entry = await kv.get(key)
    except Exception:
        return False
    return (
        entry.value is not None
        and time.time_ns() - msgspec.json.decode(entry.value, type=Heartbeat).t_ns < 2e9
    )
