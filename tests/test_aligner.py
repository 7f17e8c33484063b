"""Snapshot alignment: waiting, missing and late reference devices, freshness of slow ones."""

from __future__ import annotations

import msgspec

from gridpilot.core.schemas import (
    DeviceKind,
    Measurand,
    Measurement,
    MeasurementSet,
    Quality,
    Terminal,
)
from gridpilot.model.placement import Device, Placement, Point
from gridpilot.services.state_estimation.aligner import ALIVE_S, Aligner


def _placement() -> Placement:
    v = [Point(mrid="b1", measurand=Measurand.VOLTAGE, terminal=Terminal.BUS)]
    return Placement(
        grid="g",
        devices=[
            Device(id="pmu_a", kind=DeviceKind.PMU, period_s=0.1, points=v, v_sigma_pu=0.001),
            Device(id="pmu_b", kind=DeviceKind.PMU, period_s=0.1, points=v, v_sigma_pu=0.001),
            Device(id="rtu", kind=DeviceKind.RTU, period_s=1.0, points=v, v_sigma_pu=0.003),
        ],
    )


def _set(source: str, t_s: float, kind: DeviceKind = DeviceKind.PMU) -> MeasurementSet:
    t_ns = round(t_s * 1e9)
    m = Measurement(
        mrid="b1",
        measurand=Measurand.VOLTAGE,
        terminal=Terminal.BUS,
        t_ns=t_ns,
        v_pu=1.0,
        source=source,
    )
    return MeasurementSet(grid="g", source=source, kind=kind, t_ns=t_ns, seq=0, measurements=[m])


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_snapshot_closes_when_every_pmu_reported_and_carries_fresh_slow_data() -> None:
    clock = Clock()
    al = Aligner(_placement(), clock=clock)
    assert al.add(_set("rtu", 9.5, DeviceKind.RTU)) == []
    assert al.add(_set("pmu_a", 10.0)) == []
    [snap] = al.add(_set("pmu_b", 10.0))
    assert snap.t_ns == 10_000_000_000
    assert sorted(m.source for m in snap.measurements) == ["pmu_a", "pmu_b", "rtu"]
    assert snap.missing_sources == []


def test_missing_pmu_is_waited_for_then_listed_and_late_frame_counted() -> None:
    clock = Clock()
    al = Aligner(_placement(), wait_s=0.25, clock=clock)
    al.add(_set("pmu_b", 9.9))
    al.add(_set("pmu_a", 9.9))  # both known alive
    assert al.add(_set("pmu_a", 10.0)) == []
    clock.now += 0.1
    assert al.poll() == []
    clock.now += 0.2
    [snap] = al.poll()
    assert snap.missing_sources == ["pmu_b"]
    assert al.add(_set("pmu_b", 10.0)) == []  # too late for its snapshot
    clock.now += 0.1
    assert al.add(_set("pmu_a", 10.1)) == []
    [nxt] = al.add(_set("pmu_b", 10.1))
    assert nxt.late_dropped == 1 and nxt.missing_sources == []


def test_silent_pmu_is_no_longer_waited_for() -> None:
    clock = Clock()
    al = Aligner(_placement(), clock=clock)
    al.add(_set("pmu_a", 1.0))
    al.add(_set("pmu_b", 1.0))
    clock.now += ALIVE_S + 0.5
    al.add(_set("rtu", 4.5, DeviceKind.RTU))
    [snap] = al.add(_set("pmu_a", 5.0))  # pmu_b silent for longer than ALIVE_S: not awaited
    assert snap.missing_sources == ["pmu_b"]


def test_stale_slow_data_is_left_out() -> None:
    clock = Clock()
    al = Aligner(_placement(), clock=clock)
    al.add(_set("rtu", 1.0, DeviceKind.RTU))
    al.add(_set("pmu_a", 10.0))
    [snap] = al.add(_set("pmu_b", 10.0))
    assert "rtu" not in {m.source for m in snap.measurements}  # 9 s old, period 1 s
    assert snap.missing_sources == ["rtu"]


def test_slow_device_that_never_reported_is_missing_after_its_first_period() -> None:
    clock = Clock()
    al = Aligner(_placement(), clock=clock)
    al.add(_set("pmu_a", 10.0))
    [first] = al.add(_set("pmu_b", 10.0))
    assert first.missing_sources == []  # just started: the RTU has a period to report
    al.add(_set("pmu_a", 11.5))
    [later] = al.add(_set("pmu_b", 11.5))
    assert later.missing_sources == ["rtu"]
    al.add(_set("rtu", 11.6, DeviceKind.RTU))
    al.add(_set("pmu_a", 11.7))
    [back] = al.add(_set("pmu_b", 11.7))
    assert back.missing_sources == []


def test_unknown_source_is_counted_not_used() -> None:
    al = Aligner(_placement(), clock=Clock())
    assert al.add(_set("intruder", 1.0)) == []
    assert al.unknown_sources == 1


def test_without_pmus_rtu_data_is_estimated_periodically() -> None:
    clock = Clock()
    al = Aligner(_placement(), clock=clock)
    al.add(_set("rtu", 1.0, DeviceKind.RTU))
    clock.now += 3.0
    [snap] = al.poll()
    assert [m.source for m in snap.measurements] == ["rtu"]
    assert snap.missing_sources == ["pmu_a", "pmu_b"]


def test_a_device_reporting_only_invalid_values_is_missing() -> None:
    """Invalid values (an RTU that lost its inputs) never count as data: the device is listed
    missing, as a silent one, until a valid report comes."""
    clock = Clock()
    al = Aligner(_placement(), clock=clock)
    rtu = _set("rtu", 9.5, DeviceKind.RTU)
    invalid = [msgspec.structs.replace(m, quality=int(Quality.INVALID)) for m in rtu.measurements]
    al.add(msgspec.structs.replace(rtu, measurements=invalid))
    al.add(_set("pmu_a", 10.0))
    [snap] = al.add(_set("pmu_b", 10.0))
    assert snap.missing_sources == ["rtu"]
    al.add(_set("rtu", 9.9, DeviceKind.RTU))
    al.add(_set("pmu_a", 10.1))
    [snap] = al.add(_set("pmu_b", 10.1))
    assert snap.missing_sources == []
