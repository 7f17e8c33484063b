"""The alarm detectors without I/O: communication loss, bad data, service and broker health."""

from __future__ import annotations

from gridpilot.core.schemas import (
    CONDITION_REPEAT_S,
    AlarmKind,
    BadData,
    Condition,
    DeviceKind,
    EstimateStatus,
    Heartbeat,
    Measurand,
    ServiceState,
    Severity,
    StateEstimate,
)
from gridpilot.model.placement import default_placement
from gridpilot.services.monitoring.baddata import CLEAR_AFTER, RAISE_AFTER, BadDataWatch
from gridpilot.services.monitoring.comm import START_GRACE_S, CommWatch, allowance_s
from gridpilot.services.monitoring.conditions import EXPIRE_S, ConditionWatch
from gridpilot.services.monitoring.health import STALE_S, BrokerWatch, ServiceWatch
from tests.pipeline import grid


def _placement():  # type: ignore[no-untyped-def]
    return default_placement(grid("cigre_mv"))


def test_allowances_by_kind() -> None:
    by_kind = {d.kind: d for d in _placement().devices}
    assert allowance_s(by_kind[DeviceKind.PMU], 1.0) == 3 * 0.1
    assert allowance_s(by_kind[DeviceKind.RTU], 1.0) == 3 * by_kind[DeviceKind.RTU].period_s
    assert allowance_s(by_kind[DeviceKind.METER], 1.0) == 2 * 900.0
    assert allowance_s(by_kind[DeviceKind.METER], 10.0) == 2 * 90.0  # simulated clock
    assert allowance_s(by_kind[DeviceKind.PMU], 10.0) == 3 * 0.1  # streams in wall time


def test_comm_loss_raised_after_three_periods_and_cleared_on_return() -> None:
    placement = _placement()
    watch = CommWatch(placement, speed=1.0, now=0.0)
    t = START_GRACE_S - 1.0
    for d in placement.devices:  # every device reports once
        assert watch.heard(d.id, t, valid=True) is None
    pmu = next(d for d in placement.devices if d.kind is DeviceKind.PMU)
    assert watch.check(t + 0.29) == []
    lost = watch.check(t + 0.31)
    assert sorted(v.mrid for v in lost) == sorted(
        d.id for d in placement.devices if d.kind is DeviceKind.PMU
    )
    v = next(x for x in lost if x.mrid == pmu.id)
    assert v.kind is AlarmKind.COMM_LOSS and v.id == f"comm_loss:{pmu.id}"
    assert "silent for 0.3 s" in v.message and pmu.points[0].mrid in v.message
    assert watch.check(t + 0.5) == []  # raised once
    assert watch.heard(pmu.id, t + 0.6, valid=True) == (
        f"comm_loss:{pmu.id}",
        f"PMU {pmu.id} reports again after 0.6 s",
    )
    assert watch.heard(pmu.id, t + 0.7, valid=True) is None
    assert pmu.id not in watch.lost


def test_a_device_with_only_invalid_values_is_lost_and_never_heard_ones_after_grace() -> None:
    placement = _placement()
    watch = CommWatch(placement, speed=1.0, now=0.0)
    rtu = next(d for d in placement.devices if d.kind is DeviceKind.RTU)
    assert watch.check(START_GRACE_S) == []
    t = START_GRACE_S + allowance_s(rtu, 1.0) + 0.01
    lost = {v.mrid: v for v in watch.check(t)}
    assert "not heard from since monitoring started" in lost[rtu.id].message
    meter = next(d for d in placement.devices if d.kind is DeviceKind.METER)
    assert meter.id not in lost  # a meter's allowance is two 15-minute periods
    watch2 = CommWatch(placement, speed=1.0, now=0.0)
    for k in range(100):
        watch2.heard(rtu.id, k * rtu.period_s, valid=k < 10)
    lost2 = {v.mrid: v for v in watch2.check(100 * rtu.period_s)}
    assert "reports only invalid values" in lost2[rtu.id].message


def test_excused_silence_while_monitoring_was_deaf() -> None:
    placement = _placement()
    watch = CommWatch(placement, speed=1.0, now=0.0)
    for d in placement.devices:
        watch.heard(d.id, START_GRACE_S, valid=True)
    watch.excuse(START_GRACE_S + 60.0)  # a broker outage of a minute
    assert watch.check(START_GRACE_S + 60.2) == []


def _est(bad: list[tuple[str, str, float]], status: EstimateStatus = EstimateStatus.CONVERGED):  # type: ignore[no-untyped-def]
    return StateEstimate(
        grid="g",
        t_ns=0,
        status=status,
        bad_data=[
            BadData(
                sensor=f"{src}/{mrid}/power/from",
                mrid=mrid,
                source=src,
                measurand=Measurand.POWER,
                r_norm=r,
            )
            for src, mrid, r in bad
        ],
    )


def test_bad_data_raised_after_consecutive_estimates_and_cleared_after_n_clean() -> None:
    watch = BadDataWatch()
    flagged = _est([("rtu_1", "line_1_2", 25.0)])
    for _ in range(RAISE_AFTER - 1):
        assert watch.update(flagged) == ([], [])
    assert watch.update(_est([])) == ([], [])  # one clean estimate resets the count
    for _ in range(RAISE_AFTER - 1):
        assert watch.update(flagged) == ([], [])
    [v], _ = watch.update(_est([("rtu_1", "line_1_2", 30.0)]))
    assert v.id == "bad_data:rtu_1" and v.value == 30.0
    assert "power line_1_2 (from)" in v.message and "r_norm 30.0" in v.message
    assert watch.update(flagged) == ([], [])  # kept, no news
    [v2], _ = watch.update(_est([("rtu_1", "line_1_2", 20.0), ("rtu_1", "load_7", 9.0)]))
    assert "load_7" in v2.message  # a second measurement of the device: the text says so
    for _ in range(CLEAR_AFTER - 1):
        watch.update(_est([]))
        watch.update(_est([], EstimateStatus.DIVERGED))  # a failed estimate is not clean
    [], [(alarm_id, why)] = watch.update(_est([]))
    assert alarm_id == "bad_data:rtu_1" and f"{CLEAR_AFTER} estimates in a row" in why


def test_single_noisy_removals_do_not_alarm() -> None:
    watch = BadDataWatch()
    for k in range(200):
        bad = [("pmu_bus_12", "bus_12", 4.4)] if k % 2 == 0 else []
        assert watch.update(_est(bad)) == ([], [])


def _hb(service: str, state: ServiceState = ServiceState.RUNNING, grid: str = "g") -> Heartbeat:
    return Heartbeat(
        service=service, grid=grid, instance="i1", pid=42, state=state, t_ns=0, uptime_s=1.0
    )


def test_service_down_when_heartbeats_stop_and_back_when_they_resume() -> None:
    watch = ServiceWatch("g", me="monitoring")
    watch.beat(_hb("historian"), 0.0)
    watch.beat(_hb("monitoring"), 0.0)  # itself: never
    watch.beat(_hb("simulator", grid="other"), 0.0)  # another grid's
    assert watch.check(STALE_S) == []
    [v] = watch.check(STALE_S + 0.1)
    assert v.id == "service_down:historian" and v.severity is Severity.CRITICAL
    assert "pid 42" in v.message
    assert watch.check(STALE_S + 1) == []
    assert watch.beat(_hb("historian", ServiceState.STOPPING), 7.0) is None  # not alive
    assert watch.beat(_hb("historian"), 8.0) == (
        "service_down:historian",
        "service historian beats again (pid 42, instance i1)",
    )
    # a service that fails in its start only ever sends its stopping beat
    watch.beat(_hb("simulator", ServiceState.STOPPING), 10.0)
    watch.beat(_hb("historian"), 10.0 + STALE_S)
    assert [v.mrid for v in watch.check(10.0 + STALE_S + 0.1)] == ["simulator"]


def test_broker_watch_measures_outages_and_blips() -> None:
    watch = BrokerWatch(0, 0.0)
    assert watch.check(True, 0, 0.05) is None
    assert watch.check(False, 1, 0.10) is None
    assert watch.check(False, 1, 5.00) is None
    assert watch.check(True, 1, 5.05) == (0.05, 5.05)
    assert watch.check(True, 2, 5.10) == (5.05, 5.10)  # down and up between two checks


def _condition(active: bool, kind: AlarmKind = AlarmKind.TWIN_DIVERGED) -> Condition:
    return Condition(grid="g", kind=kind, mrid="g", active=active, t_ns=0, reporter="simulator")


def test_conditions_expire_when_no_longer_re_sent() -> None:
    watch = ConditionWatch()
    assert watch.report(_condition(True), 0.0).id == "twin_diverged:g"
    assert watch.expired(EXPIRE_S) == []
    watch.report(_condition(True), CONDITION_REPEAT_S)  # the repeat
    assert watch.expired(EXPIRE_S + 1.0) == []
    [(alarm_id, why)] = watch.expired(CONDITION_REPEAT_S + EXPIRE_S + 0.1)
    assert alarm_id == "twin_diverged:g" and "no longer reported by simulator" in why
    watch.report(_condition(True), 100.0)
    watch.report(_condition(False), 101.0)  # ended: nothing left to expire
    assert watch.expired(1000.0) == []
    watch.adopt({"de_energised:bus_12"}, 0.0)  # from the stored table after a restart
    assert [i for i, _ in watch.expired(EXPIRE_S + 0.1)] == ["de_energised:bus_12"]
