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
from gridpilot.services.monitoring.limits import (
    NOT_OBSERVABLE_AFTER_S,
    RAISE_AFTER,
    STARTUP_GRACE_S,
    AlarmTable,
    EstimateCheck,
    LimitChecker,
)
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


def _failed(n_measurements: int = 0) -> StateEstimate:
    return StateEstimate(
        grid="cigre_mv",
        t_ns=0,
        status=EstimateStatus.NOT_OBSERVABLE,
        n_measurements=n_measurements,
        message="too few measurements",
    )


def test_start_up_failures_do_not_alarm_but_lasting_ones_do() -> None:
    """The estimator runs on the first reports while the gateways still connect: failed
    estimates at start-up raise nothing; once estimates were good, failures that last
    NOT_OBSERVABLE_AFTER_S raise not_observable, and a good estimate clears it."""
    check = EstimateCheck(grid("cigre_mv"), started=0.0)
    table = AlarmTable("cigre_mv")
    t = 0.0
    while t < STARTUP_GRACE_S - NOT_OBSERVABLE_AFTER_S:  # start-up: no data yet, then some
        assert check.apply(_failed(n_measurements=int(t)), table, t) == []
        t += 0.1
    assert table.alarms == {}
    assert check.apply(_estimate(), table, t) == []  # the first good estimate
    t += 0.1
    start = t
    while t - start < NOT_OBSERVABLE_AFTER_S - 0.05:  # a short failure: no alarm
        assert check.apply(_failed(40), table, t) == []
        t += 0.1
    assert check.apply(_estimate(), table, t) == []
    start = t
    changed: list = []
    while not changed:
        t += 0.1
        changed = check.apply(_failed(40), table, t)
    [alarm] = changed
    assert alarm.kind is AlarmKind.NOT_OBSERVABLE and alarm.mrid == "cigre_mv"
    assert "too few measurements" in alarm.message
    assert t - start >= NOT_OBSERVABLE_AFTER_S
    assert check.apply(_failed(40), table, t + 0.1) == []  # deduplicated
    [cleared] = check.apply(_estimate(), table, t + 0.2)
    assert cleared.state is AlarmState.CLEARED


def test_a_start_that_never_gets_a_good_estimate_alarms_after_the_grace() -> None:
    check = EstimateCheck(grid("cigre_mv"), started=0.0)
    table = AlarmTable("cigre_mv")
    assert check.apply(_failed(), table, STARTUP_GRACE_S - 0.1) == []
    [alarm] = check.apply(_failed(), table, STARTUP_GRACE_S + NOT_OBSERVABLE_AFTER_S)
    assert alarm.kind is AlarmKind.NOT_OBSERVABLE


def test_a_failed_estimate_leaves_limit_alarms_as_they_are() -> None:
    check = EstimateCheck(grid("cigre_mv"), started=0.0)
    table = AlarmTable("cigre_mv")
    for i in range(RAISE_AFTER):
        check.apply(_estimate(v={"bus_5": 1.07}), table, i * 0.1)
    assert table.raised_ids() == {"voltage_high:bus_5"}
    for i in range(50):  # 5 s of failures: not_observable, voltage alarm kept
        check.apply(_failed(40), table, 1 + i * 0.1)
    assert table.raised_ids() == {"voltage_high:bus_5", "not_observable:cigre_mv"}


def test_low_voltage_and_deenergised_bus(checker: LimitChecker) -> None:
    table = AlarmTable("cigre_mv")
    changed = _feed(table, checker, _estimate(v={"bus_3": 0.89, "bus_4": 0.0}), RAISE_AFTER)
    assert [(a.id, a.severity) for a in changed] == [("voltage_low:bus_3", Severity.CRITICAL)]
