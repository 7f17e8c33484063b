"""The simulator service on a real nats-server: switching that makes the grid unsolvable or
dead is reported, and what the operator did survives a restart of the simulator."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client

from gridpilot.core import operate, subjects
from gridpilot.core.config import ServiceConfig
from gridpilot.core.errors import BusError
from gridpilot.core.schemas import (
    AlarmKind,
    Command,
    CommandKind,
    CommandResult,
    Condition,
    InjectionKind,
    InjectRequest,
    Measurand,
    Reply,
    Severity,
    SwitchState,
    decode,
    encode,
)
from gridpilot.model import distribution
from gridpilot.model.placement import default_placement
from gridpilot.platform.broker import EmbeddedNats
from gridpilot.simulator import persist
from gridpilot.simulator.service import SimulatorService
from tests.conftest import ConnectAs, remove_grid
from tests.pipeline import grid
from tests.test_services import collect, free_port

GRID = "twin_restart"  # cigre_mv under a name no other test uses


@pytest.fixture
async def simulator(
    admin_nc: Client, nats_server: EmbeddedNats, credentials: dict[str, str], tmp_path: Path
) -> AsyncIterator[Callable[..., tuple[SimulatorService, asyncio.Task[None]]]]:
    """Start a simulator of GRID in this process; its switches and inverter have no RTU or
    Modbus gateway here, so the simulator carries out every command itself."""
    model = msgspec.structs.replace(grid("cigre_mv"), name=GRID)
    pkg = distribution.package(model, default_placement(model))
    rtus = [
        msgspec.structs.replace(r, port=free_port(), commands=[])
        for r in pkg.devices.rtu
        if r.points  # the feeder RTUs only switch
    ]
    pmus = [msgspec.structs.replace(p, port=free_port()) for p in pkg.devices.pmu]
    devices = msgspec.structs.replace(pkg.devices, der=[], rtu=rtus, pmu=pmus)
    await distribution.publish(admin_nc, msgspec.structs.replace(pkg, devices=devices))
    await (await admin_nc.jetstream().key_value(persist.BUCKET)).purge(GRID)
    running: list[tuple[SimulatorService, asyncio.Task[None]]] = []

    def start(speed: float = 1.0) -> tuple[SimulatorService, asyncio.Task[None]]:
        config = ServiceConfig(
            nats_url=nats_server.url,
            user="simulator",
            password=credentials["simulator"],
            grid=GRID,
            data_dir=tmp_path,
            speed=speed,
            heartbeat_s=0.2,
        )
        svc = SimulatorService(config)
        running.append((svc, asyncio.create_task(svc.run(install_signals=False))))
        return running[-1]

    yield start
    for svc, _task in running:
        svc.stop()
    for _svc, task in running:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
    await remove_grid(admin_nc, GRID)  # the other tests of the session list the grids


def switching(target: str, closed: bool) -> Command:
    return Command(
        id=f"t-{target}-{closed}-{time.monotonic_ns()}",
        grid=GRID,
        kind=CommandKind.SWITCH,
        target=target,
        issued_by="test",
        t_ns=time.time_ns(),
        closed=closed,
    )


def active(conds: list[Condition], kind: AlarmKind, mrid: str) -> bool | None:
    """The latest state of one condition, None when never reported."""
    states = [c.active for c in conds if c.kind is kind and c.mrid == mrid]
    return states[-1] if states else None


async def test_switching_injections_and_clock_survive_a_simulator_restart(
    simulator: Callable[..., tuple[SimulatorService, asyncio.Task[None]]], admin_nc: Client
) -> None:
    conds = await collect(
        admin_nc, subjects.CONDITION.format(grid=GRID, source="simulator"), Condition
    )
    topo = await collect(admin_nc, subjects.TOPOLOGY.format(grid=GRID), SwitchState)
    svc, task = simulator(speed=60.0)
    await topo.wait_for(lambda t: len(t) >= 1)
    # at 60x the simulated clock runs ahead of the wall: a restart from scratch would not be
    deadline = time.monotonic() + 10
    while svc.t_ns - time.time_ns() < 30e9:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)

    # close tie S1, then open transformer switch sw_6: feeder 1 hangs on a long tie
    result = await operate.execute(admin_nc, switching("sw_4", True))
    assert result.ok and result.executed_by == "simulator"
    assert result.change == "switch sw_4 closed; every bus energised"
    result = await operate.execute(admin_nc, switching("sw_6", False))
    assert result.ok, result.error
    assert "the power flow no longer solves" in result.change
    await conds.wait_for(lambda c: active(c, AlarmKind.TWIN_DIVERGED, "twin") is True)
    assert not task.done()  # no crash
    setpoint = Command(
        id="sp",
        grid=GRID,
        kind=CommandKind.DER_SETPOINT,
        target="wka_7",
        issued_by="test",
        t_ns=time.time_ns(),
        p_mw=0.5,
    )
    assert (await operate.execute(admin_nc, setpoint)).ok
    gross = InjectRequest(
        kind=InjectionKind.GROSS_ERROR,
        source="rtu_trafo_0_12",
        mrid="trafo_0_12",
        measurand=Measurand.POWER,
        error=1.5,
        duration_s=3600,
    )
    msg = await admin_nc.request(subjects.SIM_INJECT.format(grid=GRID), encode(gross), timeout=5)
    assert decode(msg.data, Reply).ok

    # a restart: the process ends (as after a crash, the store is what was written on change)
    t_before = svc.t_ns
    svc.stop()
    await asyncio.wait_for(task, 10)
    kv = await admin_nc.jetstream().key_value(persist.BUCKET)
    stored = msgspec.json.decode((await kv.get(GRID)).value or b"", type=persist.TwinState)
    assert stored.closed["sw_4"] is True and stored.closed["sw_6"] is False
    n_topo, n_conds = len(topo.items), len(conds.items)
    svc2, task2 = simulator(speed=60.0)
    await topo.wait_for(lambda t: len(t) > n_topo)
    # the first report of the new process: the grid as the operator left it
    assert topo.items[n_topo].closed["sw_4"] is True
    assert topo.items[n_topo].closed["sw_6"] is False
    assert svc2.twin.setpoints == {"wka_7": (0.5, None)}
    assert [(g.source, g.mrid, g.error) for g in svc2.twin.gross] == [
        ("rtu_trafo_0_12", "trafo_0_12", 1.5)
    ]
    assert svc2.t_ns >= t_before  # the clock went on, it did not jump back to the wall's
    assert svc2.t_ns - time.time_ns() > 30e9
    # ... and the condition is reported by the new process too
    await conds.wait_for(lambda c: active(c[n_conds:], AlarmKind.TWIN_DIVERGED, "twin") is True)

    # opening the tie again: feeder 1 is dead, the power flow solves, the alarms follow
    result = await operate.execute(admin_nc, switching("sw_4", False))
    assert result.ok
    assert "11 buses de-energised" in result.change and "solves again" in result.change
    await conds.wait_for(
        lambda c: (
            active(c, AlarmKind.TWIN_DIVERGED, "twin") is False
            and active(c, AlarmKind.DE_ENERGISED, "bus_1") is True
        )
    )
    cond = next(c for c in reversed(conds.items) if c.kind is AlarmKind.DE_ENERGISED)
    assert cond.message.startswith("11 buses without supply") and cond.value > 1.0
    assert not task2.done()


async def test_only_a_missing_key_is_a_first_start(admin_nc: Client, connect_as: ConnectAs) -> None:
    kv = await admin_nc.jetstream().key_value(persist.BUCKET)
    assert await persist.load(kv, "no_grid_has_this_name") is None  # a first start
    # a connection that is gone: an outage, never taken for a first start
    nc = await connect_as("simulator")
    lost = await nc.jetstream().key_value(persist.BUCKET)
    await nc.close()
    with pytest.raises(BusError, match="cannot read the twin's state"):
        await persist.load(lost, "cigre_mv")
    # a key that holds something else is not a first start either
    await kv.put("garbled", b"{not json")
    with pytest.raises(BusError, match="does not hold a twin state"):
        await persist.load(kv, "garbled")


async def test_a_twin_report_completes_the_result_of_a_gateway(admin_nc: Client) -> None:
    """A gateway's result and the twin's report of the same command become one answer."""
    cmd = switching("sw_6", False)
    subject = subjects.COMMAND_RESULT.format(grid=GRID)
    sub = await admin_nc.subscribe(subjects.COMMAND.format(grid=GRID, target="sw_6"))

    async def field() -> None:
        await sub.next_msg(timeout=5)
        for executed_by, change in (
            ("twin", "11 buses de-energised, 3.1 MW unserved"),
            ("gateway_iec104", "switch sw_6 opened by frtu_bus_0"),
        ):
            result = CommandResult(
                command_id=cmd.id,
                grid=GRID,
                target="sw_6",
                ok=True,
                t_ns=time.time_ns(),
                executed_by=executed_by,
                change=change,
            )
            await admin_nc.publish(subject, encode(result))

    helper = asyncio.create_task(field())
    result = await operate.execute(admin_nc, cmd)
    await helper
    assert result.executed_by == "gateway_iec104"
    assert result.change == (
        "switch sw_6 opened by frtu_bus_0; 11 buses de-energised, 3.1 MW unserved"
    )


async def test_no_executor_is_a_clear_error_not_a_hang(admin_nc: Client) -> None:
    cmd = msgspec.structs.replace(switching("sw_6", False), grid="nobody_runs_this_grid")
    with pytest.raises(operate.NoResult, match=r"no result for command .* within 1 s"):
        await operate.execute(admin_nc, cmd, timeout_s=1.0)


async def test_a_condition_gone_during_a_restart_is_cleared_by_the_new_process(
    simulator: Callable[..., tuple[SimulatorService, asyncio.Task[None]]], admin_nc: Client
) -> None:
    """The previous process reported the twin diverged; after the restart the grid solves
    (the load moved on): the new process clears the alarm it never raised itself."""
    kv = await admin_nc.jetstream().key_value(persist.BUCKET)
    earlier = persist.TwinState(
        grid=GRID,
        closed={},
        conditions=[
            persist.StoredCondition(
                kind=AlarmKind.TWIN_DIVERGED,
                mrid="twin",
                severity=Severity.CRITICAL,
                message="the digital twin's power flow has no solution",
            )
        ],
        t_ns=time.time_ns(),
        wall_ns=time.time_ns(),
    )
    await kv.put(GRID, msgspec.json.encode(earlier))
    conds = await collect(
        admin_nc, subjects.CONDITION.format(grid=GRID, source="simulator"), Condition
    )
    simulator()
    await conds.wait_for(lambda c: active(c, AlarmKind.TWIN_DIVERGED, "twin") is False)


async def test_out_of_range_setpoints_and_injections_are_refused_with_the_reason(
    simulator: Callable[..., tuple[SimulatorService, asyncio.Task[None]]], admin_nc: Client
) -> None:
    """On the bus too: a setpoint beyond the generator's rating (wka_7: 1.5 MW) or a huge
    injection gets ok=False saying what was wrong, and nothing is applied. (NaN cannot cross
    the bus: JSON has none and the decoders are strict, so a "NaN" string is a bad request.)"""
    topo = await collect(admin_nc, subjects.TOPOLOGY.format(grid=GRID), SwitchState)
    svc, _task = simulator()
    await topo.wait_for(lambda t: len(t) >= 1)

    def setpoint(**values: float) -> Command:
        return Command(
            id=f"sp-{time.monotonic_ns()}", grid=GRID, kind=CommandKind.DER_SETPOINT,
            target="wka_7", issued_by="test", t_ns=time.time_ns(), **values,
        )  # fmt: skip

    for values, error in [
        ({"p_mw": 1e300}, "p_mw must be within 0..1.5 MW (the generator's rating), not 1e+300"),
        ({"p_mw": -0.5}, "p_mw must be within 0..1.5 MW"),
        ({"p_mw": 1.0, "q_mvar": -1e300}, "q_mvar must be within -1.5..1.5 Mvar"),
    ]:
        result = await operate.execute(admin_nc, setpoint(**values))
        assert not result.ok and result.executed_by == "simulator"
        assert error in result.error, result.error
    assert "wka_7" not in svc.twin.setpoints
    assert (await operate.execute(admin_nc, setpoint(p_mw=1.5, q_mvar=-1.5))).ok

    subject = subjects.SIM_INJECT.format(grid=GRID)
    base = {"kind": "gross_error", "source": "rtu_trafo_0_12", "mrid": "trafo_0_12"}
    for values, error in [
        ({"error": 1e300}, "error must be within -1e+06..1e+06"),
        ({"error": 0.5, "duration_s": -1}, "duration_s must be within 0..3.16224e+07 s"),
        ({"error": 0.5, "duration_s": 1e300}, "duration_s must be within"),
    ]:
        raw = msgspec.json.encode({**base, **values})
        reply = decode((await admin_nc.request(subject, raw, timeout=5)).data, Reply)
        assert not reply.ok and error in reply.error, reply.error
    assert not svc.twin.gross
    bad = await admin_nc.request(subject, b'{"kind": "gross_error", "error": "NaN"}', timeout=5)
    assert b"bad request" in bad.data
