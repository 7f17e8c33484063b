"""Two platforms on one machine: ``gridpilot up`` twice at the same moment, each with its own
data dir, on the same grid. Each estimates its own grid on its own broker; their devices
listen on disjoint ports with distinct identities; no gateway of one connects to the other's
devices. A third start whose registry has the first one's ports stops at once with a message
that names the device, the port and what to do."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client

from gridpilot.core import subjects
from gridpilot.core.bus import connect
from gridpilot.core.estimates import EstimateReader
from gridpilot.core.schemas import EstimateStatus, Heartbeat, ServiceState, StateEstimate
from gridpilot.model.devices import DeviceRegistry
from gridpilot.platform import permissions

pytestmark = pytest.mark.slow

GRID = "cigre_mv"
ARGS = ("--grid", GRID, "--no-live")


class Platforms:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        # the two share this user's index of data dirs, as two terminals of one user would
        self.env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
        self.procs: list[subprocess.Popen[bytes]] = []

    def up(self, name: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
        data_dir, log = self.tmp_path / name, self.tmp_path / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gridpilot", "up", *("--data-dir", str(data_dir)), *ARGS],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        self.procs.append(proc)
        return proc, data_dir, log

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def platforms(tmp_path: Path) -> Iterator[Platforms]:
    p = Platforms(tmp_path)
    yield p
    p.stop()


class Watch:
    """One platform's estimates and heartbeats, from its own broker."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.estimates: list[StateEstimate] = []
        self.beats: dict[str, Heartbeat] = {}
        self.reader = EstimateReader(nc)

    async def start(self) -> None:
        async def on_state(msg: Any) -> None:
            self.estimates.append(await self.reader.read(msg.data))

        async def on_beat(msg: Any) -> None:
            hb = msgspec.json.decode(msg.data, type=Heartbeat)
            self.beats[hb.service] = hb

        await self.nc.subscribe(subjects.STATE.format(grid=GRID), cb=on_state)
        await self.nc.subscribe(subjects.HEARTBEAT.wildcard(), cb=on_beat)

    def connected(self, registry: DeviceRegistry) -> bool:
        """Every gateway is connected to every one of its devices."""
        pdc, rtu, der = (
            self.beats.get(f"gateway_{name}") for name in ("c37118", "iec104", "modbus")
        )
        return (
            pdc is not None
            and pdc.info.get("pmus_streaming") == len(registry.pmu)
            and rtu is not None
            and rtu.info.get("rtus_started") == len(registry.rtu)
            and der is not None
            # a reading is published only from the inverter with the expected serial
            and der.counters.get("msgs_out", 0) > 0
        )


async def _admin(data_dir: Path, proc: subprocess.Popen[bytes]) -> Client:
    """Connected once the platform has loaded its grid (endpoints.json names it then)."""
    deadline = time.monotonic() + 120
    endpoints = data_dir / "endpoints.json"
    while not (endpoints.exists() and "grid" in json.loads(endpoints.read_text() or "{}")):
        if proc.poll() is not None:
            log = data_dir.with_name(f"{data_dir.name}.log").read_text(errors="replace")
            pytest.fail(f"gridpilot up exited with {proc.returncode}:\n{log[-3000:]}")
        assert time.monotonic() < deadline, "the platform never loaded its grid"
        await asyncio.sleep(0.1)
    url = json.loads(endpoints.read_text())["nats"]
    password = permissions.service_password(data_dir, permissions.ADMIN)
    return await connect(url, user="admin", password=password, name="e2e", startup_timeout=20)


def _registry(data_dir: Path) -> DeviceRegistry:
    path = data_dir / "devices" / f"{GRID}.toml"
    return msgspec.toml.decode(path.read_bytes(), type=DeviceRegistry)


def _ports(r: DeviceRegistry) -> set[int]:
    return {p.port for p in r.pmu} | {x.port for x in r.rtu} | {d.port for d in r.der}


async def test_two_platforms_estimate_their_own_grid_and_a_third_is_refused_clearly(
    platforms: Platforms,
) -> None:
    started = time.monotonic()
    (proc_a, dir_a, _), (proc_b, dir_b, _) = platforms.up("a"), platforms.up("b")
    watches = [Watch(await _admin(dir_a, proc_a)), Watch(await _admin(dir_b, proc_b))]
    try:
        for w in watches:
            await w.start()
        reg_a, reg_b = _registry(dir_a), _registry(dir_b)
        # distinct ports and identities, chosen one after the other at the same moment
        assert not _ports(reg_a) & _ports(reg_b)
        assert not {p.idcode for p in reg_a.pmu} & {p.idcode for p in reg_b.pmu}
        assert not {r.common_address for r in reg_a.rtu} & {r.common_address for r in reg_b.rtu}
        assert reg_a.site != reg_b.site
        assert {d.serial for d in reg_a.der}.isdisjoint(d.serial for d in reg_b.der)

        deadline = time.monotonic() + 180
        while not all(
            len([s for s in w.estimates if s.status is EstimateStatus.CONVERGED]) >= 20
            and w.connected(reg)
            for w, reg in zip(watches, (reg_a, reg_b), strict=True)
        ):
            assert proc_a.poll() is None and proc_b.poll() is None, "gridpilot up exited"
            assert time.monotonic() < deadline, (
                f"not both estimating with every device connected: "
                f"{[len(w.estimates) for w in watches]} estimates, "
                f"{[{k: (b.info, b.counters) for k, b in w.beats.items() if 'gateway' in k} for w in watches]}"  # noqa: E501
            )
            await asyncio.sleep(0.2)
        both_s = time.monotonic() - started
        for w in watches:
            assert all(s.grid == GRID for s in w.estimates)
            for name in ("gateway_c37118", "gateway_iec104", "gateway_modbus"):
                beat = w.beats[name]
                assert beat.counters.get("wrong_device", 0) == 0, (name, beat.counters)
                assert beat.info.get("wrong_devices", 0) == 0
            assert w.beats["simulator"].state is ServiceState.RUNNING
            assert "ports_taken" not in w.beats["simulator"].info
        print(f"both platforms estimating, every device connected, {both_s:.0f} s after up")

        # a third platform whose registry was copied from a's: a's devices hold its ports
        dir_c = platforms.tmp_path / "c"
        (dir_c / "devices").mkdir(parents=True)
        registry_c = dir_c / "devices" / f"{GRID}.toml"
        registry_c.write_bytes((dir_a / "devices" / f"{GRID}.toml").read_bytes())
        proc_c, _, log_c = platforms.up("c")
        code = await asyncio.to_thread(proc_c.wait, 120)
        out = log_c.read_text()
        assert code == 2, out
        pmu = reg_a.pmu[0]
        assert "gridpilot: error: the virtual field devices of grid cigre_mv cannot listen" in out
        assert (
            f"PMU {pmu.device} (ID code {pmu.idcode}): 127.0.0.1:{pmu.port}: the port is taken "
            f"by another program ({pmu.device} in {dir_a.resolve()}/devices/{GRID}.toml, "
            "another data dir)"
        ) in out
        assert f"give the devices free ports in {registry_c.resolve()}" in out
        assert "Traceback" not in out
        assert not (dir_c / "logs" / "simulator.log").exists()  # nothing was started
        # the two that run were not disturbed
        assert proc_a.poll() is None and proc_b.poll() is None
    finally:
        for w in watches:
            await w.nc.close()
