"""GridPilot's estimator against pandapower's on the same measurements: the same state on exact
data, and convergence wherever pandapower converges."""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

import msgspec
import numpy as np
import pytest
from power_grid_model import ComponentType

from gridpilot.core.schemas import DeviceKind, Measurand, MeasurementSnapshot
from gridpilot.model.grid import GridModel
from gridpilot.model.pandapower_import import from_pandapower
from gridpilot.model.pandapower_reference import PandapowerReference, sensor_values
from gridpilot.model.placement import Placement, default_placement
from gridpilot.model.registry import load_pandapower
from gridpilot.services.state_estimation.estimator import Estimator
from gridpilot.simulator.twin import Twin

NOON_S = 1_700_000_000.0 + 12 * 3600


@cache
def _net(name: str) -> Any:
    return load_pandapower(name)  # simbench takes seconds to load: once per grid


def net(name: str) -> Any:
    return copy.deepcopy(_net(name))  # the reference writes measurements and results into it


@cache
def grid(name: str) -> GridModel:
    return from_pandapower(net(name), name=name)


def exact(placement: Placement) -> Placement:
    """The same devices without noise (the estimator keeps the real sigmas)."""
    devices = [
        msgspec.structs.replace(d, v_sigma_pu=0.0, power_sigma_pct=0.0) for d in placement.devices
    ]
    return msgspec.structs.replace(placement, devices=devices)


def half_voltages(placement: Placement) -> Placement:
    """Every second voltage point dropped, in placement order."""
    kept, n = [], 0
    for d in placement.devices:
        points = []
        for p in d.points:
            if p.measurand is Measurand.VOLTAGE:
                n += 1
                if n % 2 == 0:
                    continue
            points.append(p)
        if points:
            kept.append(msgspec.structs.replace(d, points=points))
    return msgspec.structs.replace(placement, devices=kept)


def snapshots(
    model: GridModel, placement: Placement, *, n: int, seed: int, meters: bool = True
) -> list[tuple[MeasurementSnapshot, np.ndarray]]:
    """Snapshots one second apart, meters read five minutes before (a quarter of them silent)
    and the twin's true bus voltages."""
    twin = Twin(model, placement, seed=seed)
    rng = np.random.default_rng(seed)
    twin.step(NOON_S - 300.0)
    read = []
    for d in placement.devices:
        if d.kind is DeviceKind.METER and meters and rng.random() >= 0.25:
            read += twin.measure(d, model.name, 0).measurements
    out = []
    for k in range(n):
        t = NOON_S + k
        twin.step(t)
        ms = list(read)
        for d in placement.devices:
            if d.kind is not DeviceKind.METER:
                ms += twin.measure(d, model.name, k + 1).measurements
        snap = MeasurementSnapshot(grid=model.name, t_ns=round(t * 1e9), measurements=ms)
        out.append((snap, twin.out[ComponentType.node]["u_pu"][twin.net.bus_row].copy()))
    return out


def exact_snapshot(
    model: GridModel, placement: Placement, *, meters: bool
) -> tuple[MeasurementSnapshot, np.ndarray]:
    """Noise-free measurements of one instant, meters read at that instant."""
    twin = Twin(model, exact(placement), seed=3)
    twin.step(NOON_S)
    ms = []
    for d in twin.placement.devices:
        if d.kind is not DeviceKind.METER or meters:
            ms += twin.measure(d, model.name, 0).measurements
    snap = MeasurementSnapshot(grid=model.name, t_ns=round(NOON_S * 1e9), measurements=ms)
    return snap, twin.out[ComponentType.node]["u_pu"][twin.net.bus_row].copy()


@pytest.mark.parametrize("meters", [True, False], ids=["metered", "pseudo"])
def test_exact_measurements_give_the_same_state_as_pandapower(meters: bool) -> None:
    model = grid("cigre_mv")
    placement = default_placement(model)
    snap, truth = exact_snapshot(model, placement, meters=meters)
    est = Estimator(model, placement).estimate(snap)
    assert est.status == "converged", est.message
    assert (est.n_pseudo > 0) is not meters
    assert est.bad_data == []
    ref = PandapowerReference(net("cigre_mv"), model, placement).estimate(snap)
    assert ref.converged
    v_gp = np.array(est.buses.v_pu)
    assert np.all(np.isfinite(ref.v_pu))
    assert np.max(np.abs(v_gp - ref.v_pu)) < 1e-4
    assert np.max(np.abs(ref.v_pu - truth)) < 1e-5
    assert np.max(np.abs(v_gp - truth)) < 1e-5


def test_bus_injection_is_consumption_positive() -> None:
    """pandapower's bus P/Q measurements count consumption positive, so a bus with one load
    and no generator gets the load's reading as is."""
    model = grid("cigre_mv")
    placement = default_placement(model)
    snap, _ = exact_snapshot(model, placement, meters=True)
    ref = PandapowerReference(net("cigre_mv"), model, placement)
    rows = ref.rows(sensor_values(ref.sensors, snap))
    injections = {(r[0], r[2]): r[4] for r in rows if r[1] == "bus" and r[0] in ("p", "q")}
    gen_buses = {g.bus for g in model.generators}
    loads_at: dict[str, list[str]] = {}
    for ld in model.loads:
        loads_at.setdefault(ld.bus, []).append(ld.id)
    reading = {m.mrid: m for m in snap.measurements if m.terminal == "load"}
    checked = 0
    for i, bus in enumerate(model.buses):
        ids = loads_at.get(bus.id, [])
        if len(ids) == 1 and bus.id not in gen_buses and ("p", i) in injections:
            assert injections[("p", i)] == pytest.approx(reading[ids[0]].p_mw)
            assert injections[("q", i)] == pytest.approx(reading[ids[0]].q_mvar)
            checked += 1
    assert checked > 0


ROBUSTNESS = [
    pytest.param("cigre_mv", id="cigre_mv"),
    pytest.param("lv_rural", id="lv_rural"),
    pytest.param("mv_rural", id="mv_rural", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name", ROBUSTNESS)
@pytest.mark.parametrize("voltages", ["all", "half"])
def test_gridpilot_converges_whenever_pandapower_does(name: str, voltages: str) -> None:
    model = grid(name)
    placement = default_placement(model)
    if voltages == "half":
        placement = half_voltages(placement)
    est = Estimator(model, placement)
    ref = PandapowerReference(net(name), model, placement)
    both = 0
    for snap, truth in snapshots(model, placement, n=3, seed=11):
        r = ref.estimate(snap)
        g = est.estimate(snap)
        if r.converged:
            assert g.status == "converged", f"{snap.t_ns}: {g.status} {g.message}"
            both += 1
            # Same WLS problem: the states agree well inside the noise (they differ by up to
            # ~1e-4 p.u. because pandapower holds the slack angle at 0 despite PMU angles).
            assert np.max(np.abs(np.array(g.buses.v_pu) - r.v_pu)) < 1e-3
            assert np.max(np.abs(np.array(g.buses.v_pu) - truth)) < 1e-2
    assert both > 0, "pandapower never converged: the comparison says nothing"
