"""Alarm logic: debounce, deduplication, hysteresis, severity, acknowledgement."""

from __future__ import annotations

import pytest

from gridpilot.core.schemas import (
    AlarmKind,
    AlarmState,
    BranchStates,
    BusStates,
    EstimateStatus,
    Severity,
    StateEstimate,
)
from gridpilot.services.monitoring.limits import RAISE_AFTER, AlarmTable, LimitChecker
from tests.pipeline import grid


def _estimate(
    v: dict[str, float] | None = None,
    loading: dict[str, float] | None = None,
    status: EstimateStatus = EstimateStatus.CONVERGED,
) -> StateEstimate:
    model = grid("cigre_mv")
    ids = [b.id for b in model.buses]
    br = [ln.id for ln in model.lines]
    vv = [(v or {}).get(i, 1.0) for i in ids]
    ll = [(loading or {}).get(i, 50.0) for i in br]
    zeros = [0.0] * len(br)
    return StateEstimate(
        grid="cigre_mv",
        t_ns=0,
        status=status,
        buses=BusStates(
            id=ids, v_pu=vv, va_deg=[0.0] * len(ids), p_mw=[0.0] * len(ids), q_mvar=[0.0] * len(ids)
        ),
        branches=BranchStates(
            id=br,
            p_from_mw=zeros,
            q_from_mvar=zeros,
            p_to_mw=zeros,
            q_to_mvar=zeros,
            i_from_ka=zeros,
            loading_pct=ll,
        ),
    )


def _feed(table: AlarmTable, checker: LimitChecker, est: StateEstimate, n: int = 1) -> list:
    changed = []
    for t in range(n):
        changed += table.update(checker.violations(est, table.raised_ids()), t)
    return changed


@pytest.fixture
def checker() -> LimitChecker:
    return LimitChecker(grid("cigre_mv"))


def test_raised_once_after_debounce_and_cleared_with_hysteresis(checker: LimitChecker) -> None:
    table = AlarmTable("cigre_mv")
    high = _estimate(v={"bus_5": 1.06})
    assert _feed(table, checker, high, RAISE_AFTER - 1) == []
    [raised] = _feed(table, checker, high, 5)  # deduplicated: one alarm however long it lasts
    assert raised.id == "voltage_high:bus_5" and raised.state is AlarmState.RAISED
    assert raised.severity is Severity.WARNING and raised.limit == 1.05
    assert _feed(table, checker, _estimate(v={"bus_5": 1.048})) == []  # inside hysteresis
    [cleared] = _feed(table, checker, _estimate(v={"bus_5": 1.04}))
    assert cleared.state is AlarmState.CLEARED
    assert table.alarms  # cleared but not acknowledged: still listed


def test_severity_change_and_acknowledge(checker: LimitChecker) -> None:
    table = AlarmTable("cigre_mv")
    _feed(table, checker, _estimate(loading={"line_1_2": 105.0}), RAISE_AFTER)
    [worse] = _feed(table, checker, _estimate(loading={"line_1_2": 130.0}))
    assert worse.kind is AlarmKind.OVERLOAD and worse.severity is Severity.CRITICAL
    acked = table.acknowledge("overload:line_1_2", "op", 1)
    assert acked.acknowledged and acked.state is AlarmState.RAISED
    [cleared] = _feed(table, checker, _estimate())
    assert cleared.acknowledged and table.alarms == {}
    with pytest.raises(KeyError):
        table.acknowledge("overload:line_1_2", "op", 2)


def test_failed_estimate_raises_not_observable_at_once(checker: LimitChecker) -> None:
    table = AlarmTable("cigre_mv")
    est = StateEstimate(grid="cigre_mv", t_ns=0, status=EstimateStatus.NOT_OBSERVABLE)
    [alarm] = table.update(checker.violations(est, set()), 0)
    assert alarm.kind is AlarmKind.NOT_OBSERVABLE and alarm.mrid == "cigre_mv"


def test_low_voltage_and_deenergised_bus(checker: LimitChecker) -> None:
    table = AlarmTable("cigre_mv")
    changed = _feed(table, checker, _estimate(v={"bus_3": 0.89, "bus_4": 0.0}), RAISE_AFTER)
    assert [(a.id, a.severity) for a in changed] == [("voltage_low:bus_3", Severity.CRITICAL)]
