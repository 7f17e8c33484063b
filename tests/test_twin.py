"""The twin on grids the operator split or overloaded: dead islands, no solution, conditions."""

from __future__ import annotations

import pytest

from gridpilot.core.schemas import (
    CONDITION_REPEAT_S,
    AlarmKind,
    Command,
    CommandKind,
    Condition,
    Severity,
)
from gridpilot.model.placement import default_placement
from gridpilot.simulator.conditions import TWIN_MRID, ConditionReporter, twin_conditions
from gridpilot.simulator.twin import Twin, TwinUnsolved
from tests.pipeline import NOON, grid

FEEDER_1 = [f"bus_{i}" for i in range(1, 12)]  # behind transformer trafo_0_1 (switch sw_6)


def switch(twin: Twin, target: str, closed: bool) -> str:
    return twin.apply_command(
        Command(
            id="t",
            grid="cigre_mv",
            kind=CommandKind.SWITCH,
            target=target,
            issued_by="test",
            t_ns=0,
            closed=closed,
        )
    )


@pytest.fixture
def twin() -> Twin:
    model = grid("cigre_mv")
    twin = Twin(model, default_placement(model), seed=3)
    assert twin.step(NOON)
    return twin


def test_closing_tie_s1_then_opening_sw_6_is_a_state_not_a_crash(twin: Twin) -> None:
    # the sequence of the field report: feeder 1 moved onto transformer 0-12 over tie S1
    assert switch(twin, "sw_4", True) == "switch sw_4 closed; every bus energised"
    change = switch(twin, "sw_6", False)
    assert change.startswith("switch sw_6 opened; every bus energised; the power flow no longer")
    assert not twin.solved
    assert "converge" in twin.failure
    # time goes on without a solution, and nothing raises
    for k in range(1, 5):
        assert not twin.step(NOON + k)
    with pytest.raises(TwinUnsolved):
        twin.truth("cigre_mv")
    held = twin_conditions(twin)
    assert [(h.kind, h.mrid, h.severity) for h in held] == [
        (AlarmKind.TWIN_DIVERGED, TWIN_MRID, Severity.CRITICAL)
    ]
    # opening the tie again leaves feeder 1 without a source: dead, and solvable
    change = switch(twin, "sw_4", False)
    assert change.startswith("switch sw_4 opened; 11 buses de-energised, ")
    assert change.endswith(" MW unserved; the power flow solves again")
    assert twin.solved
    held = twin_conditions(twin)
    assert [(h.kind, h.mrid) for h in held] == [(AlarmKind.DE_ENERGISED, "bus_1")]
    assert held[0].message.startswith("11 buses without supply (bus_1, bus_2,")
    assert held[0].value == pytest.approx(twin.unserved_mw(), abs=1e-3) and held[0].value > 1.0
    # and back to normal
    assert switch(twin, "sw_6", True) == "switch sw_6 closed; 11 buses re-energised"
    assert twin_conditions(twin) == []


def test_a_switched_off_feeder_is_dead_its_loads_unserved_its_generators_off(twin: Twin) -> None:
    served_mw = twin.unserved_mw(None)
    assert served_mw == 0.0
    change = switch(twin, "sw_6", False)  # transformer 0-1: all of feeder 1
    assert change.startswith("switch sw_6 opened; 11 buses de-energised, ")
    assert twin.solved
    truth = twin.truth("cigre_mv")
    v = dict(zip(truth.buses.id, truth.buses.v_pu, strict=True))
    assert all(v[b] == 0.0 for b in FEEDER_1)
    assert v["bus_12"] > 0.95  # feeder 2 is supplied
    assert twin.dead_bus == set(FEEDER_1)
    assert twin.dead_gen == {g.id for g in twin.model.generators}  # every DER is on feeder 1
    assert twin.unserved_mw() > 5.0
    # what the devices say: a PMU and an RTU on a dead bus read zero, without noise; a smart
    # meter on a dead load has no supply and says nothing
    devices = {d.id: d for d in twin.placement.devices}
    pmu = twin.measure(devices["pmu_bus_6"], "cigre_mv", 1).measurements
    assert {(m.mrid, m.v_pu, m.va_deg, m.p_mw, m.q_mvar) for m in pmu} == {
        ("bus_6", 0.0, 0.0, None, None),
        ("line_5_6", None, None, 0.0, 0.0),
        ("line_6_7", None, None, 0.0, 0.0),
    }
    rtu = twin.measure(devices["rtu_trafo_0_1"], "cigre_mv", 2).measurements
    assert [m.v_pu for m in rtu if m.v_pu is not None] == [0.0]
    assert all(m.p_mw == 0.0 for m in rtu if m.p_mw is not None and m.mrid != "trafo_0_1")
    assert not twin.powered(devices["meter_load_r3"])
    assert not twin.powered(devices["meter_pv_3"])
    assert twin.powered(devices["meter_load_r12"])  # feeder 2
    assert twin.powered(devices["rtu_trafo_0_1"])  # substation: battery-backed supply


async def test_conditions_are_sent_on_change_repeated_while_active_and_cleared() -> None:
    model = grid("cigre_mv")
    twin = Twin(model, default_placement(model), seed=3)
    twin.step(NOON)
    sent: list[Condition] = []
    now = [0.0]

    async def send(cond: Condition) -> None:
        sent.append(cond)

    reporter = ConditionReporter(
        grid="cigre_mv", reporter="simulator", send=send, clock=lambda: now[0]
    )
    await reporter.update(twin_conditions(twin))
    assert sent == []
    switch(twin, "sw_7", False)  # transformer 0-12: feeder 2 (3 buses) dead
    await reporter.update(twin_conditions(twin))
    assert [(c.kind, c.mrid, c.active) for c in sent] == [(AlarmKind.DE_ENERGISED, "bus_12", True)]
    assert "3 buses without supply" in sent[0].message
    assert sent[0].severity is Severity.CRITICAL
    now[0] += 1.0
    twin.step(NOON + 1)
    await reporter.update(twin_conditions(twin))
    assert len(sent) == 1  # nothing new: not sent again yet
    now[0] += CONDITION_REPEAT_S
    await reporter.update(twin_conditions(twin))
    assert len(sent) == 2 and sent[1].active  # repeated while it lasts
    switch(twin, "sw_7", True)
    await reporter.update(twin_conditions(twin))
    assert [(c.mrid, c.active) for c in sent[2:]] == [("bus_12", False)]
