"""Measurement placement: which devices measure what, how often and how well, per grid.

A placement is a readable TOML file (``gridpilot placement --grid NAME`` prints the default).
Power accuracies are in percent of the measured equipment's rating (full scale), as
instrument classes are; a PMU's phasor error is circular with ``v_sigma_pu``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import msgspec

from gridpilot.core.errors import ConfigError
from gridpilot.core.schemas import DeviceKind, Measurand, Terminal
from gridpilot.model.grid import GridModel


class Point(msgspec.Struct, frozen=True, kw_only=True):
    mrid: str
    measurand: Measurand
    terminal: Terminal


class Device(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    kind: DeviceKind
    period_s: float
    points: list[Point]
    v_sigma_pu: float = 0.0
    power_sigma_pct: float = 0.0


class Pseudo(msgspec.Struct, frozen=True, kw_only=True):
    """Pseudo-measurements for injections that no fresh measurement covers."""

    power_sigma_pct: float = 50.0  # of the load's or generator's rating
    # How much a load drifts from its last meter reading, per 15 minutes of age.
    meter_drift_pct_per_15min: float = 10.0


class Placement(msgspec.Struct, frozen=True, kw_only=True):
    grid: str
    devices: list[Device]
    pseudo: Pseudo = Pseudo()

    def device(self, device_id: str) -> Device:
        for d in self.devices:
            if d.id == device_id:
                return d
        raise KeyError(device_id)


PMU_PERIOD_S = 0.1  # 10 frames per second
RTU_PERIOD_S = 1.0
RTU_SECONDARY_PERIOD_S = 2.0
METER_PERIOD_S = 900.0
LARGE_DER_MW = 1.0


def rating_mva(model: GridModel, mrid: str, terminal: Terminal) -> float:
    """Full scale of a power measurement on ``mrid``: the equipment's rating in MVA."""
    floor = 1e-3
    if terminal in (Terminal.FROM, Terminal.TO):
        for ln in model.lines:
            if ln.id == mrid:
                vn = _bus_kv(model, ln.from_bus)
                return max(math.sqrt(3) * vn * ln.i_max_ka, floor)
        for t in model.transformers:
            if t.id == mrid:
                return max(t.sn_mva, floor)
    if terminal is Terminal.LOAD:
        for ld in model.loads:
            if ld.id == mrid:
                return max(math.hypot(ld.p_mw, ld.q_mvar), floor)
    if terminal is Terminal.GEN:
        for gn in model.generators:
            if gn.id == mrid:
                return max(math.hypot(gn.p_mw, gn.q_mvar), floor)
    raise KeyError(f"{mrid} has no {terminal} terminal")


def _bus_kv(model: GridModel, bus: str) -> float:
    for b in model.buses:
        if b.id == bus:
            return b.vn_kv
    raise KeyError(bus)


class PlacementIssue(msgspec.Struct, frozen=True):
    device: str
    problem: str


def validate_placement(placement: Placement, model: GridModel) -> list[PlacementIssue]:
    """Every problem with a placement for a model (empty when it is good)."""
    issues: list[PlacementIssue] = []
    buses = {b.id for b in model.buses}
    branches = {ln.id for ln in model.lines} | {t.id for t in model.transformers}
    loads = {ld.id for ld in model.loads}
    gens = {gn.id for gn in model.generators}
    known = {
        Terminal.BUS: buses,
        Terminal.FROM: branches,
        Terminal.TO: branches,
        Terminal.LOAD: loads,
        Terminal.GEN: gens,
    }
    seen: set[str] = set()
    for d in placement.devices:
        if d.id in seen:
            issues.append(PlacementIssue(d.id, "duplicate device id"))
        seen.add(d.id)
        if not d.period_s > 0:
            issues.append(PlacementIssue(d.id, f"period_s must be > 0, not {d.period_s}"))
        for p in d.points:
            if p.mrid not in known[p.terminal]:
                issues.append(PlacementIssue(d.id, f"no {p.terminal} terminal {p.mrid!r}"))
            if (p.measurand is Measurand.VOLTAGE) != (p.terminal is Terminal.BUS):
                issues.append(PlacementIssue(d.id, f"{p.measurand} cannot be at {p.terminal}"))
            if p.measurand is Measurand.VOLTAGE and not d.v_sigma_pu > 0:
                issues.append(PlacementIssue(d.id, "voltage points need v_sigma_pu > 0"))
            if p.measurand is Measurand.POWER and not d.power_sigma_pct > 0:
                issues.append(PlacementIssue(d.id, "power points need power_sigma_pct > 0"))
    return issues


def assert_valid_placement(placement: Placement, model: GridModel) -> None:
    issues = validate_placement(placement, model)
    if issues:
        lines = "; ".join(f"{i.device}: {i.problem}" for i in issues[:10])
        raise ConfigError(f"placement for {model.name} has {len(issues)} problem(s): {lines}")


# Default accuracy of each kind of device: v_sigma_pu, power_sigma_pct (of rating).
ACCURACY: dict[DeviceKind, tuple[float, float]] = {
    DeviceKind.PMU: (0.001, 0.5),
    DeviceKind.RTU: (0.0025, 0.5),
    DeviceKind.DER: (0.0025, 0.5),
    DeviceKind.METER: (0.0025, 1.0),
}


def _device(kind: DeviceKind, device_id: str, period_s: float, points: list[Point]) -> Device:
    v_sigma, power_pct = ACCURACY[kind]
    return Device(
        id=device_id,
        kind=kind,
        period_s=period_s,
        points=points,
        v_sigma_pu=v_sigma,
        power_sigma_pct=power_pct,
    )


def _voltage(bus: str) -> Point:
    return Point(mrid=bus, measurand=Measurand.VOLTAGE, terminal=Terminal.BUS)


def _power(mrid: str, terminal: Terminal) -> Point:
    return Point(mrid=mrid, measurand=Measurand.POWER, terminal=terminal)


def _flows(ends: list[tuple[str, Terminal]]) -> list[Point]:
    return [_power(line, terminal) for line, terminal in ends]


def default_placement(model: GridModel) -> Placement:
    """PMUs at primary substations and feeder ends, RTUs at every substation and large DER,
    smart meters on every load and small DER."""
    source_buses = {s.bus for s in model.sources}
    lines_at: dict[str, list[tuple[str, Terminal]]] = defaultdict(list)
    open_lines = {
        sw.element for sw in model.switches if sw.element_kind == "line" and not sw.closed
    }
    for ln in model.lines:
        lines_at[ln.from_bus].append((ln.id, Terminal.FROM))
        lines_at[ln.to_bus].append((ln.id, Terminal.TO))
    degree = {b: sum(1 for lid, _ in ls if lid not in open_lines) for b, ls in lines_at.items()}
    kv = {b.id: b.vn_kv for b in model.buses}
    devices: list[Device] = []
    primary = [t for t in model.transformers if t.hv_bus in source_buses]
    pmu_buses = [t.lv_bus for t in primary]
    mv_free = all(b.vn_kv < 1.0 for b in model.buses if b.id not in source_buses)
    leaves = sorted(
        b for b, n in degree.items() if n == 1 and b not in pmu_buses and (kv[b] >= 1.0 or mv_free)
    )
    budget = max(5, len(model.buses) // 20)
    n_leaves = min(len(leaves), max(0, budget - len(pmu_buses)))
    if n_leaves:
        picks = {round(i * (len(leaves) - 1) / max(1, n_leaves - 1)) for i in range(n_leaves)}
        pmu_buses += [leaves[i] for i in sorted(picks)]
    for bus in pmu_buses[:budget]:
        points = [_voltage(bus), *_flows(lines_at.get(bus, [])[:4])]
        devices.append(_device(DeviceKind.PMU, f"pmu_{bus}", PMU_PERIOD_S, points))
    for t in model.transformers:
        points = [
            _voltage(t.lv_bus),
            _power(t.id, Terminal.TO),
            *_flows(lines_at.get(t.lv_bus, [])),
        ]
        period = RTU_PERIOD_S if t in primary else RTU_SECONDARY_PERIOD_S
        devices.append(_device(DeviceKind.RTU, f"rtu_{t.id}", period, points))
    for gn in model.generators:
        point = _power(gn.id, Terminal.GEN)
        if abs(gn.p_mw) >= LARGE_DER_MW:
            devices.append(_device(DeviceKind.DER, f"der_{gn.id}", RTU_PERIOD_S, [point]))
        else:
            devices.append(_device(DeviceKind.METER, f"meter_{gn.id}", METER_PERIOD_S, [point]))
    for ld in model.loads:
        point = _power(ld.id, Terminal.LOAD)
        devices.append(_device(DeviceKind.METER, f"meter_{ld.id}", METER_PERIOD_S, [point]))
    return Placement(grid=model.name, devices=devices)


HEADER = """\
# GridPilot measurement placement for grid {grid}.
# Each device reports its points every period_s (simulated) seconds.
# kind: pmu (voltage phasor + branch flows), rtu (SCADA values), der (inverter), meter.
# v_sigma_pu: standard deviation of voltage magnitude (and, for PMUs, the circular phasor
#   error); power_sigma_pct: standard deviation of P and Q in percent of the equipment rating.
# terminal: bus (voltage), from/to (branch end), load, gen.
"""


def placement_to_toml(placement: Placement) -> str:
    body = msgspec.toml.encode(placement).decode()
    return HEADER.format(grid=placement.grid) + body


def load_placement(path: Path, model: GridModel) -> Placement:
    try:
        placement = msgspec.toml.decode(path.read_bytes(), type=Placement)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ConfigError(f"{path}: not a valid placement file: {exc}") from exc
    assert_valid_placement(placement, model)
    return placement
