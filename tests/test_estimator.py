"""State estimation against the twin's truth: accuracy, bad data, observability, topology."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import numpy as np
import pytest
from power_grid_model import ComponentType as C

from gridpilot.core.schemas import (
    Command,
    CommandKind,
    DeviceKind,
    EstimateStatus,
    Measurand,
    MeasurementSnapshot,
    StateEstimate,
)
from gridpilot.model.placement import Placement, default_placement, load_placement
from gridpilot.services.state_estimation.estimator import Estimator
from gridpilot.simulator.twin import GrossError
from tests.pipeline import Pipeline, grid

GOLDEN = Path(__file__).parent / "data" / "state_estimation"
BOUND_PU = 0.005


@pytest.mark.parametrize("name", ["cigre_mv", "lv_rural", "mv_rural"])
def test_noise_free_measurements_reproduce_the_power_flow(name: str) -> None:
    run = Pipeline(name, noise=False).run(0.5)
    assert run.estimates
    for est in run.estimates:
        assert est.status is EstimateStatus.CONVERGED
        assert est.bad_data == []
    errors = run.v_errors()
    # At start every meter reports, so the first snapshot is exact (outputs are rounded to 1e-6);
    # later ones carry meter readings that age while the loads move on.
    assert errors[0] < 2e-6
    assert max(errors) < 1e-3


def test_a_minute_of_cigre_mv_stays_within_bound() -> None:
    run = Pipeline("cigre_mv").run(60.0)
    assert len(run.estimates) >= 590  # 10 snapshots per second
    assert all(e.status is EstimateStatus.CONVERGED for e in run.estimates)
    assert max(run.v_errors()) < BOUND_PU
    assert sum(len(e.bad_data) for e in run.estimates) <= 6  # false alarms at alpha=1 %: rare


@pytest.mark.parametrize(
    ("device", "mrid", "measurand", "error"),
    [
        ("rtu_trafo_0_1", "trafo_0_1", Measurand.POWER, 2.0),  # +2 MW on a 25 MVA transformer
        ("pmu_bus_6", "bus_6", Measurand.VOLTAGE, 0.03),  # +3 % on a PMU magnitude
        ("meter_load_r11", "load_r11", Measurand.POWER, 0.3),  # a meter off by 300 kW
    ],
)
def test_gross_error_is_flagged_and_estimate_stays_within_bound(
    device: str, mrid: str, measurand: Measurand, error: float
) -> None:
    pipe = Pipeline("cigre_mv")
    pipe.twin.step(pipe.t_s)
    pipe.twin.gross.append(GrossError(device, mrid, measurand, error, until_s=pipe.t_s + 1e6))
    run = pipe.run(3.0)
    assert len(run.estimates) > 20
    # the very first snapshot closes before the slower devices' first reports arrive
    for est in run.estimates[1:]:
        assert est.status is EstimateStatus.CONVERGED
        assert [(b.source, b.mrid) for b in est.bad_data] == [(device, mrid)]
        assert est.bad_data[0].r_norm > 4.0
    assert max(run.v_errors()) < BOUND_PU


def test_two_simultaneous_gross_errors_are_both_removed() -> None:
    pipe = Pipeline("cigre_mv")
    pipe.twin.step(pipe.t_s)
    until = pipe.t_s + 1e6
    pipe.twin.gross += [
        GrossError("rtu_trafo_0_12", "line_12_13", Measurand.POWER, -3.0, until),
        GrossError("pmu_bus_11", "bus_11", Measurand.VOLTAGE, -0.04, until),
    ]
    run = pipe.run(1.0)
    for est in run.estimates[1:]:
        assert {(b.source, b.mrid) for b in est.bad_data} == {
            ("rtu_trafo_0_12", "line_12_13"),
            ("pmu_bus_11", "bus_11"),
        }
    assert max(run.v_errors()) < BOUND_PU


def test_no_voltage_measurement_is_not_observable_and_says_why() -> None:
    model = grid("cigre_mv")
    est = Estimator(model, default_placement(model))
    result = est.estimate(MeasurementSnapshot(grid="cigre_mv", t_ns=0, measurements=[]))
    assert result.status is EstimateStatus.NOT_OBSERVABLE
    assert "voltage" in result.message.lower() or "observ" in result.message.lower()
    assert result.buses is None


def test_pmus_missing_falls_back_to_rtus_and_pseudo_measurements() -> None:
    pipe = Pipeline("cigre_mv")
    pipe.silent = {d.id for d in pipe.placement.devices if d.kind is DeviceKind.PMU}
    run = pipe.run(6.0)  # the aligner estimates on RTU data once nobody sends PMU frames
    assert run.estimates
    assert all(e.status is EstimateStatus.CONVERGED for e in run.estimates)
    assert max(run.v_errors()) < 0.01


def test_partial_voltage_coverage_converges() -> None:
    model = grid("mv_rural")
    placement = default_placement(model)
    devices = [
        msgspec.structs.replace(
            d, points=[p for p in d.points if p.measurand is not Measurand.VOLTAGE]
        )
        if i % 2 and d.kind is not DeviceKind.METER
        else d
        for i, d in enumerate(placement.devices)
    ]
    devices = [d for d in devices if d.points]
    pipe = Pipeline("mv_rural", placement=msgspec.structs.replace(placement, devices=devices))
    run = pipe.run(1.0)
    assert all(e.status is EstimateStatus.CONVERGED for e in run.estimates)
    assert max(run.v_errors()) < BOUND_PU


def test_switching_rebuilds_the_model_and_tracks_the_new_topology() -> None:
    pipe = Pipeline("cigre_mv")
    # Close tie switch S1 (sw_4) and open the feeder's own switch (sw_0): a new radial layout.
    for sw, closed in (("sw_4", True), ("sw_0", False)):
        pipe.twin.apply_command(
            Command(
                id=sw,
                grid="cigre_mv",
                kind=CommandKind.SWITCH,
                target=sw,
                issued_by="test",
                t_ns=0,
                closed=closed,
            )
        )
    pipe.estimator.set_topology(pipe.twin.closed)
    run = pipe.run(1.0)
    assert all(e.status is EstimateStatus.CONVERGED for e in run.estimates)
    assert max(run.v_errors()) < BOUND_PU
    assert pipe.estimator.closed["sw_4"] is True


def test_dead_islands_are_estimated_dead_and_named_and_nothing_raises() -> None:
    """Transformer switch sw_6 open: feeder 1 has no source. The estimate shows it dead (zero)
    and says so; its sensors count in neither the state nor the chi-square redundancy."""
    pipe = Pipeline("cigre_mv")
    pipe.twin.apply_command(
        Command(
            id="sw_6",
            grid="cigre_mv",
            kind=CommandKind.SWITCH,
            target="sw_6",
            issued_by="test",
            t_ns=0,
            closed=False,
        )
    )
    pipe.estimator.set_topology(pipe.twin.closed)
    run = pipe.run(2.0)
    assert run.estimates and all(e.status is EstimateStatus.CONVERGED for e in run.estimates)
    assert max(run.v_errors()) < BOUND_PU  # the dead buses estimated at exactly zero
    est = run.estimates[-1]
    assert est.message == "11 buses de-energised (no source) in 1 islands: bus_1 (11 buses)"
    assert est.bad_data == []
    # redundancy of the supplied part only: 3 buses, 2 voltage and 4 flow sensors, 8 meters
    assert est.chi2_threshold < 40.0


@pytest.mark.parametrize(
    "closed",
    [
        {"sw_4": True, "sw_6": False},  # what the twin cannot solve, with older measurements
        {"sw_6": False, "sw_7": False},  # only the source's bus supplied
        {f"sw_{i}": False for i in range(8)},
    ],
)
def test_switch_states_without_a_solution_or_supply_give_a_status(closed: dict[str, bool]) -> None:
    pipe = Pipeline("cigre_mv")
    pipe.estimator.set_topology(closed)
    run = pipe.run(1.0)
    assert run.estimates
    for est in run.estimates:
        assert est.status in (EstimateStatus.CONVERGED, EstimateStatus.NOT_OBSERVABLE)
        if not closed.get("sw_4"):
            assert "buses de-energised (no source)" in est.message


def test_golden_case() -> None:
    """A recorded snapshot with a known gross error; the expected estimate is stored beside it."""
    case = GOLDEN / "cigre_mv_gross_error"
    model = grid("cigre_mv")
    placement: Placement = load_placement(case / "placement.toml", model)
    snapshot = msgspec.json.decode((case / "snapshot.json").read_bytes(), type=MeasurementSnapshot)
    expected = json.loads((case / "expected.json").read_text())
    est: StateEstimate = Estimator(model, placement).estimate(snapshot)
    assert est.status == expected["status"]
    assert [b.sensor for b in est.bad_data] == expected["bad_data"]
    assert est.buses is not None
    np.testing.assert_allclose(est.buses.v_pu, expected["v_pu"], atol=1e-6)
    np.testing.assert_allclose(est.buses.va_deg, expected["va_deg"], atol=1e-4)
    # and the stored truth: the estimate is physically right, not only unchanged
    assert np.max(np.abs(np.subtract(est.buses.v_pu, expected["truth_v_pu"]))) < BOUND_PU


def test_der_setpoint_curtails_the_generator() -> None:
    pipe = Pipeline("cigre_mv")
    pipe.twin.step(pipe.t_s)
    before = float(pipe.twin.out[C.sym_gen]["p"][pipe.twin._gen_index["wka_7"]]) / 1e6
    assert before > 0.3
    pipe.twin.apply_command(
        Command(
            id="c",
            grid="cigre_mv",
            kind=CommandKind.DER_SETPOINT,
            target="wka_7",
            issued_by="test",
            t_ns=0,
            p_mw=0.2,
            q_mvar=-0.1,
        )
    )
    pipe.twin.step(pipe.t_s + 1)
    gen = pipe.twin.out[C.sym_gen][pipe.twin._gen_index["wka_7"]]
    assert gen["p"] / 1e6 == pytest.approx(0.2) and gen["q"] / 1e6 == pytest.approx(-0.1)
    run = pipe.run(1.0)  # and the estimate follows the new operating point
    assert max(run.v_errors()) < BOUND_PU


@pytest.mark.slow
@pytest.mark.parametrize("voltages", ["all", "half"])
def test_several_thousand_bus_grid_converges(voltages: str) -> None:
    model = grid("mvlv_rural")
    placement = default_placement(model)
    if voltages == "half":
        placement = msgspec.structs.replace(
            placement,
            devices=[
                msgspec.structs.replace(
                    d, points=[p for p in d.points if p.measurand is not Measurand.VOLTAGE]
                )
                if i % 2 and d.kind is not DeviceKind.METER and len(d.points) > 1
                else d
                for i, d in enumerate(placement.devices)
            ],
        )
    run = Pipeline("mvlv_rural", placement=placement).run(0.3)
    assert len(run.estimates) == 3
    assert all(e.status is EstimateStatus.CONVERGED for e in run.estimates)
    # the first snapshot closes before any RTU or meter has reported: pseudo-measurements only
    assert max(run.v_errors()[1:]) < BOUND_PU
