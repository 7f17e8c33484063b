"""Per-meter MQTT credentials: what they cost.

* bcrypt: hashing every password for nats.conf (first start; later starts use the cache) and
  the connect latency of a NATS client with a bcrypt-hashed password against a clear one;
* the simulator's meter fleet: N meters, one MQTT connection and one asyncio task each, each
  as its own user; the time until all are connected (``MqttMeterFleet.connect_s``).

    python benchmarks/meter_credentials_bench.py --meters 192 --meters 5948

Prints the numbers and writes benchmarks/results/meter_credentials.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import bcrypt

from gridpilot.core.bus import connect
from gridpilot.core.errors import BusError, PermissionDeniedError
from gridpilot.platform import permissions
from gridpilot.platform.broker import EmbeddedNats, nats_server_binary
from gridpilot.simulator.mqtt_meters import FileLogins, MqttMeterFleet, ScaledClock, VirtualMeter

RESULTS = Path(__file__).parent / "results" / "meter_credentials.md"


async def connect_latency(url: str, user: str, password: str, n: int) -> float:
    """Median seconds for connect (TCP, INFO, CONNECT with the password, PONG) and close."""
    took = []
    for _ in range(n):
        t0 = time.perf_counter()
        nc = await connect(url, user=user, password=password, name="bench", startup_timeout=5)
        took.append(time.perf_counter() - t0)
        await nc.close()
    return statistics.median(took)


def hash_rate(cost: int, n: int = 50) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        bcrypt.hashpw(b"x" * 32, bcrypt.gensalt(cost))
    return (time.perf_counter() - t0) / n


async def fleet_connect(n: int) -> tuple[float, float, float]:
    """(first render of nats.conf s, second render s, seconds until all n meters connected)."""
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        devices = [f"meter_{i}" for i in range(n)]
        permissions.ensure_device_credentials(data_dir, "bench", devices)
        t0 = time.perf_counter()
        permissions.users_config(data_dir)  # hashes every password, fills the cache
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        permissions.users_config(data_dir)
        second = time.perf_counter() - t0
        server = EmbeddedNats(data_dir=data_dir, port=0, monitor_port=0, mqtt_port=0).start()
        try:
            fleet = MqttMeterFleet(
                url=server.mqtt_url,
                logins=FileLogins(data_dir / permissions.DEVICE_CREDENTIALS_FILE, "bench"),
                grid="bench",
                meters=[VirtualMeter(device=d) for d in devices],
                reading=lambda device, t_ns: (0.001, 0.0),
                clock=ScaledClock(speed=1.0),
                period_s=900.0,
                publish_timeout_s=60.0,
            )
            task = asyncio.create_task(fleet.run())
            try:
                await asyncio.wait_for(fleet.all_connected.wait(), 600)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            assert fleet.connect_s is not None
            return first, second, fleet.connect_s
        finally:
            server.stop()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--meters", type=int, action="append", default=None)
    ap.add_argument("--connects", type=int, default=50)
    ap.add_argument("--cost", type=int, default=None, help="bcrypt cost (default: the project's)")
    args = ap.parse_args()
    if args.cost is not None:
        permissions.BCRYPT_COST = args.cost
    lines = [
        "# Per-meter MQTT credentials",
        "",
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"bcrypt cost {permissions.BCRYPT_COST}",
        "",
    ]
    for cost in sorted({4, 6, 10, permissions.BCRYPT_COST}):
        lines.append(f"* bcrypt hash, cost {cost}: {hash_rate(cost) * 1e3:.2f} ms")
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        server = EmbeddedNats(data_dir=data_dir, port=0, monitor_port=0, mqtt_port=0).start()
        try:
            password = permissions.service_password(data_dir, "viewer")
            hashed = await connect_latency(server.url, "viewer", password, args.connects)
        finally:
            server.stop()
        # the same with the clear password in nats.conf (what the config held before)
        conf = server.config_path.read_text()
        clear = conf.replace(
            permissions.PasswordHasher(data_dir / "nats" / permissions.HASH_CACHE_FILE)(password),
            password,
        )
        server.config_path.write_text(clear)
        proc = await asyncio.create_subprocess_exec(
            str(nats_server_binary()),
            "-c",
            str(server.config_path),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            plain = None
            for _ in range(100):
                try:
                    plain = await connect_latency(server.url, "viewer", password, args.connects)
                    break
                except (OSError, BusError, PermissionDeniedError):  # not up yet
                    await asyncio.sleep(0.05)
        finally:
            proc.terminate()
            await proc.wait()
    lines.append(
        f"* NATS connect (median of {args.connects}): bcrypt cost {permissions.BCRYPT_COST} "
        f"{hashed * 1e3:.2f} ms, clear password "
        f"{'-' if plain is None else f'{plain * 1e3:.2f}'} ms"
    )
    for n in args.meters or [26, 192]:
        first, second, took = await fleet_connect(n)
        lines.append(
            f"* {n} meters: nats.conf users rendered in {first:.2f} s (first start, hashing), "
            f"{second:.3f} s (cached); all {n} MQTT connections up in {took:.2f} s"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.parent.mkdir(exist_ok=True)
    if args.cost is None:
        RESULTS.write_text(text)


if __name__ == "__main__":
    asyncio.run(main())
