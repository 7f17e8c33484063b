"""Our poller against our virtual inverters, over real TCP on 127.0.0.1."""

from __future__ import annotations

import pytest
from pymodbus.client import AsyncModbusTcpClient

from gridpilot.gateways.modbus import DerEvent, DerPoller, DerReading, DerUnavailable, FailureKind
from gridpilot.protocols.sunspec import BASE_ADDRESS, BY_NAME, CONTROLS_ADDRESS, InverterStatus
from gridpilot.simulator.der_modbus import InverterSpec, VirtualDerServer
from tests.modbus.conftest import FAST, FakeTwin, events_until


def readings(events: list[DerEvent], unit: int | None = None) -> list[DerReading]:
    return [e for e in events if isinstance(e, DerReading) and unit in (None, e.unit)]


def latest(events: list[DerEvent], unit: int) -> DerReading:
    return readings(events, unit)[-1]


async def test_readings_match_the_twin(der_server: VirtualDerServer, twin: FakeTwin) -> None:
    async with DerPoller(host="127.0.0.1", port=der_server.port, units=[1, 2], **FAST) as poller:
        events = await events_until(poller, lambda ev: len(readings(ev)) >= 4)
        for unit in (1, 2):
            p_mw, q_mvar, v_pu, status = twin.outputs[unit]
            state = latest(events, unit).state
            # one register step is below 0.07 % of the rating
            assert state.p_mw == pytest.approx(p_mw, abs=7e-4 * state.rated_mw)
            assert state.q_mvar == pytest.approx(q_mvar, abs=7e-4 * state.rated_mw)
            assert state.v_pu == pytest.approx(v_pu, abs=1e-4)
            assert state.status is status
            assert (state.p_limit_mw, state.q_set_mvar) == (None, None)
        assert latest(events, 2).state.rated_mw == 2.0
        assert latest(events, 2).state.v_ref_v == 20_000.0

        twin.outputs[1] = (0.1, 0.0, 1.05, InverterStatus.SLEEPING)
        der_server.refresh()
        events = await events_until(poller, lambda ev: len(readings(ev, 1)) >= 1)
        assert latest(events, 1).state.p_mw == pytest.approx(0.1, abs=1e-3)
        assert latest(events, 1).state.status is InverterStatus.SLEEPING
        assert poller.health()[1].available and poller.health()[1].failures == 0
        assert der_server.counters["reads"] >= 5


async def test_setpoint_reaches_the_twin_and_is_verified(
    der_server: VirtualDerServer, twin: FakeTwin
) -> None:
    async with DerPoller(host="127.0.0.1", port=der_server.port, units=[1, 2], **FAST) as poller:
        result = await poller.write_setpoint(2, p_limit_mw=1.2, q_mvar=-0.3)
        assert result.ok, result.error
        assert (result.applied_p_limit_mw, result.applied_q_mvar) == pytest.approx((1.2, -0.3))
        assert twin.setpoints == [(2, pytest.approx(1.2), pytest.approx(-0.3))]
        events = await events_until(poller, lambda ev: len(readings(ev, 2)) >= 1)
        assert latest(events, 2).state.p_limit_mw == pytest.approx(1.2)
        assert latest(events, 2).state.q_set_mvar == pytest.approx(-0.3)

        # the values land on register steps (0.1 % of 0.5 MW); the result says where
        result = await poller.write_setpoint(1, p_limit_mw=0.12345, q_mvar=None)
        assert result.ok and result.applied_p_limit_mw == pytest.approx(0.1235)
        assert result.applied_q_mvar is None
        lifted = await poller.write_setpoint(2, p_limit_mw=None, q_mvar=None)
        assert lifted.ok and (lifted.applied_p_limit_mw, lifted.applied_q_mvar) == (None, None)
        assert twin.setpoints[-2:] == [(1, pytest.approx(0.1235), None), (2, None, None)]
        assert der_server.counters["setpoints"] == 3


async def test_invalid_setpoints_fail_clearly(der_server: VirtualDerServer, twin: FakeTwin) -> None:
    async with DerPoller(host="127.0.0.1", port=der_server.port, units=[1], **FAST) as poller:
        above_rating = await poller.write_setpoint(1, p_limit_mw=0.75, q_mvar=None)  # 150 %
        assert not above_rating.ok
        assert above_rating.failure is FailureKind.REFUSED
        assert above_rating.exception_code == 3
        assert "illegal data value" in above_rating.error

        negative = await poller.write_setpoint(1, p_limit_mw=-0.1, q_mvar=None)
        assert negative.failure is FailureKind.INVALID  # uint16 cannot carry it: nothing sent
        assert "WMaxLimPct" in negative.error

        assert twin.setpoints == []
        assert der_server.counters["writes_refused"] == 1
        assert poller.counters["setpoints_refused"] == 1

    with pytest.raises(Exception, match="not one of this poller's units"):
        await poller.write_setpoint(9, p_limit_mw=0.1, q_mvar=None)


async def test_read_only_and_unknown_units_get_modbus_exceptions(
    der_server: VirtualDerServer,
) -> None:
    client = AsyncModbusTcpClient("127.0.0.1", port=der_server.port, timeout=2, retries=0)
    await client.connect()
    try:
        measured = await client.write_registers(BY_NAME["W"].address, [1], device_id=1)
        assert measured.isError() and measured.exception_code == 2  # illegal data address
        partly = await client.write_registers(CONTROLS_ADDRESS - 1, [0, 500], device_id=1)
        assert partly.isError() and partly.exception_code == 2
        ena = await client.write_register(CONTROLS_ADDRESS + 1, 7, device_id=1)
        assert ena.isError() and ena.exception_code == 3  # illegal data value
        unknown = await client.read_holding_registers(BASE_ADDRESS, count=27, device_id=9)
        assert unknown.isError() and unknown.exception_code == 11  # gateway: no response
        ok = await client.write_register(CONTROLS_ADDRESS + 1, 1, device_id=1)  # function 6
        assert not ok.isError()
    finally:
        client.close()


async def test_a_failing_unit_is_reported_once_and_never_stops_the_others(
    der_server: VirtualDerServer,
) -> None:
    async with DerPoller(host="127.0.0.1", port=der_server.port, units=[1, 9, 2], **FAST) as poller:
        events = await events_until(poller, lambda ev: len(readings(ev)) >= 12)
    outages = [e for e in events if isinstance(e, DerUnavailable)]
    assert [(e.unit, e.kind) for e in outages] == [(9, FailureKind.REFUSED)]
    assert "gateway target device failed to respond" in outages[0].error
    health = poller.health()
    assert not health[9].available and health[9].failures >= 2  # retried, with back-off
    assert health[9].failures < health[1].readings
    assert health[1].available and health[2].available


async def test_poller_rides_out_a_server_restart(
    der_server: VirtualDerServer, twin: FakeTwin
) -> None:
    async with DerPoller(host="127.0.0.1", port=der_server.port, units=[1, 2], **FAST) as poller:
        assert (await poller.write_setpoint(1, p_limit_mw=0.25, q_mvar=None)).ok
        await events_until(poller, lambda ev: len(readings(ev)) >= 2)

        await der_server.stop()
        events = await events_until(
            poller, lambda ev: sum(isinstance(e, DerUnavailable) for e in ev) >= 2
        )
        assert {e.unit for e in events if isinstance(e, DerUnavailable)} == {1, 2}
        kinds = [(e.kind, e.error) for e in events if isinstance(e, DerUnavailable)]
        assert all(k is FailureKind.UNREACHABLE for k, _ in kinds), kinds
        down = await poller.write_setpoint(2, p_limit_mw=1.0, q_mvar=None)
        assert down.failure is FailureKind.UNREACHABLE

        await der_server.start()  # same port, as a restarted device would
        events = await events_until(poller, lambda ev: {1, 2} <= {r.unit for r in readings(ev)})
        assert latest(events, 1).state.p_limit_mw == pytest.approx(0.25)  # setpoint kept
        assert poller.counters["reconnects"] >= 1
        assert poller.counters["connect_failures"] >= 1
        assert all(h.available for h in poller.health().values())


async def test_a_setpoint_restored_after_a_restart_is_read_back(twin: FakeTwin) -> None:
    """The simulator restarted with a curtailment in force: the inverter says so."""
    server = VirtualDerServer(
        units={1: InverterSpec(rated_mw=0.5)},
        state=twin.state,
        on_setpoint=twin.on_setpoint,
        port=0,
        refresh_s=0.05,
    )
    server.restore_setpoint(1, 0.2, -0.05)
    async with (
        server,
        DerPoller(host="127.0.0.1", port=server.port, units=[1], **FAST) as poller,
    ):
        events = await events_until(poller, lambda ev: len(readings(ev, 1)) >= 2)
        state = latest(events, 1).state
        assert state.p_limit_mw == pytest.approx(0.2)
        assert state.q_set_mvar == pytest.approx(-0.05)
    assert twin.setpoints == []  # restored, not written again
