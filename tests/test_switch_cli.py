"""``gridpilot switch`` against a running platform (``gridpilot up`` in a subprocess): the
switching of the field report (tie S1 closed, then transformer switch sw_6 opened), through
the IEC 104 gateway's select-before-operate, into the audit trail; the twin reports that its
power flow no longer solves, and a killed simulator comes back with the operator's switching.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from gridpilot.core import subjects
from gridpilot.core.bus import connect
from gridpilot.core.schemas import AlarmKind, AuditRecord, Condition, Heartbeat, SwitchState
from gridpilot.model.devices import default_registry, registry_to_toml
from gridpilot.model.distribution import devices_path
from gridpilot.model.placement import default_placement
from gridpilot.platform import permissions
from tests.pipeline import grid
from tests.test_services import free_port

pytestmark = pytest.mark.slow
GRID = "cigre_mv"


def gridpilot(*args: str, data_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GRIDPILOT_DATA_DIR"}
    if data_dir is not None:
        env["GRIDPILOT_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "gridpilot", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.fixture
def platform_up(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    data_dir = tmp_path / "gp"
    # the field devices on free ports: another platform on this machine may use the defaults
    model = grid(GRID)
    placement = default_placement(model)
    reg = default_registry(placement, model)
    reg = msgspec.structs.replace(
        reg,
        pmu=[msgspec.structs.replace(p, port=free_port()) for p in reg.pmu],
        rtu=[msgspec.structs.replace(r, port=free_port()) for r in reg.rtu],
    )
    der_port = free_port()  # one Modbus server for every inverter
    reg = msgspec.structs.replace(
        reg, der=[msgspec.structs.replace(d, port=der_port) for d in reg.der]
    )
    path = devices_path(data_dir, GRID)
    path.parent.mkdir(parents=True)
    path.write_text(registry_to_toml(reg))
    log = (tmp_path / "up.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gridpilot", "up", "--data-dir", str(data_dir), "--no-live"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    yield proc, data_dir
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    log.close()


async def _wait(pred, what: str, within_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within_s
    while not pred():
        assert time.monotonic() < deadline, f"{what} not within {within_s} s"
        await asyncio.sleep(0.1)


async def test_cli_switching_is_audited_reported_and_survives_a_simulator_crash(
    platform_up: tuple[subprocess.Popen[bytes], Path], tmp_path: Path
) -> None:
    _proc, data_dir = platform_up
    await _wait(lambda: (data_dir / "endpoints.json").exists(), "endpoints.json")
    await _wait(lambda: "grid" in json.loads((data_dir / "endpoints.json").read_text()), "grid")
    url = json.loads((data_dir / "endpoints.json").read_text())["nats"]
    password = permissions.service_password(data_dir, permissions.ADMIN)
    nc = await connect(url, user="admin", password=password, name="test", startup_timeout=10)
    beats: dict[str, Heartbeat] = {}
    audits: list[AuditRecord] = []
    conds: list[Condition] = []
    topo: list[SwitchState] = []

    def keep(into: list, typ: type):  # type: ignore[no-untyped-def]
        async def cb(msg) -> None:  # type: ignore[no-untyped-def]
            into.append(msgspec.json.decode(msg.data, type=typ))

        return cb

    async def on_beat(msg) -> None:  # type: ignore[no-untyped-def]
        hb = msgspec.json.decode(msg.data, type=Heartbeat)
        beats[hb.service] = hb

    await nc.subscribe(subjects.HEARTBEAT.wildcard(), cb=on_beat)
    await nc.subscribe(subjects.AUDIT.format(grid=GRID), cb=keep(audits, AuditRecord))
    await nc.subscribe(subjects.CONDITION.format(grid=GRID, source="*"), cb=keep(conds, Condition))
    await nc.subscribe(subjects.TOPOLOGY.format(grid=GRID), cb=keep(topo, SwitchState))
    try:

        def rtus_up() -> bool:
            gw = beats.get("gateway_iec104")
            return gw is not None and gw.info.get("rtus_started") == gw.info.get("rtus")

        await _wait(rtus_up, "every RTU link of the IEC 104 gateway", within_s=60)
        await _wait(lambda: "simulator" in beats, "the simulator")
        sim_pid = beats["simulator"].pid

        # by name, with the data dir given; then by id, the data dir from GRIDPILOT_DATA_DIR
        done = await asyncio.to_thread(
            gridpilot, "switch", "S1", "close", "--data-dir", str(data_dir)
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == (
            "done by gateway_iec104: switch sw_4 closed by frtu_bus_8; every bus energised"
        )
        done = await asyncio.to_thread(
            gridpilot, "switch", "sw_6", "open", "--grid", GRID, data_dir=data_dir
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("done by gateway_iec104: switch sw_6 opened by frtu_bus_0; ")
        assert "the power flow no longer solves" in done.stdout
        await _wait(
            lambda: any(c.kind is AlarmKind.TWIN_DIVERGED and c.active for c in conds),
            "the twin_diverged condition",
        )
        # the twin is in that state, not crashed: same process
        await asyncio.sleep(2)
        assert beats["simulator"].pid == sim_pid

        # the audit trail has both, as the CLI user
        await _wait(lambda: len(audits) >= 2, "two audit records")
        user = f"cli:{getpass.getuser()}"
        assert [(a.user, a.role, a.action, a.target, a.ok) for a in audits] == [
            (user, "admin", "switch", "sw_4", True),
            (user, "admin", "switch", "sw_6", True),
        ]
        assert audits[1].detail["executed_by"] == "gateway_iec104"
        assert "no longer solves" in audits[1].detail["change"]

        # the simulator dies (as it did in the field report): it comes back with the
        # operator's switching, not the default positions
        n = len(topo)
        os.kill(sim_pid, signal.SIGKILL)
        await _wait(
            lambda: "simulator" in beats and beats["simulator"].pid != sim_pid,
            "a restarted simulator",
        )
        await _wait(lambda: len(topo) > n, "a topology report of the restarted simulator")
        assert topo[-1].closed["sw_4"] is True and topo[-1].closed["sw_6"] is False

        # refusals: clear errors, no traceback, non-zero exit codes
        bad = await asyncio.to_thread(
            gridpilot, "switch", "S9", "open", "--data-dir", str(data_dir)
        )
        assert bad.returncode == 2
        assert bad.stderr.startswith("gridpilot: error: no switch 'S9' in grid cigre_mv")
        assert "Traceback" not in bad.stderr
        nowhere = await asyncio.to_thread(
            gridpilot, "switch", "S1", "open", "--data-dir", str(tmp_path / "none")
        )
        assert nowhere.returncode == 2
        assert "no GridPilot platform is running" in nowhere.stderr
        assert "Traceback" not in nowhere.stderr
    finally:
        await nc.close()
