"""An independent state estimate by pandapower on the measurements GridPilot's estimator sees,
for validating the estimator (tests and benchmarks only; services never import pandapower).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gridpilot.core.schemas import Measurand, MeasurementSnapshot, Quality, Terminal
from gridpilot.model.grid import GridModel
from gridpilot.model.pgm import PgmNetwork
from gridpilot.model.placement import Placement
from gridpilot.model.sensors import SensorTable

# pandapower has no exact zero-injection constraint in plain WLS, so a bus without any appliance
# gets P = Q = 0 measurements this tight: about a hundred times tighter than the tightest sensor
# (0.5 % of a 0.4 kV line's rating is ~1e-3 MW) yet loose enough for a well-conditioned gain
# matrix in pandapower's per-unit system (sn_mva = 1). 1e-4 to 1e-6 give the same estimates.
ZERO_INJECTION_SIGMA_MW = 1e-5

# One measurement row: (type, element_type, element, side, value, std_dev).
Row = tuple[str, str, int, str | None, float, float]


@dataclass(frozen=True)
class ReferenceResult:
    converged: bool
    v_pu: np.ndarray  # GridModel bus order; NaN where pandapower has no result
    va_deg: np.ndarray
    seconds: float  # pandapower.estimation.estimate() alone, as a user calls it
    setup_seconds: float  # creating (first time) or refilling net.measurement
    n_measurements: int


@dataclass(frozen=True)
class SensorValues:
    """The estimator's view of a snapshot: active rows with values in W/var/V and sigmas."""

    v_active: np.ndarray
    u_measured: np.ndarray  # V, NaN where inactive
    u_angle: np.ndarray  # rad, NaN where no phasor
    p_active: np.ndarray
    p_measured: np.ndarray  # W (load/gen terminals: into the appliance / out of the generator)
    q_measured: np.ndarray
    p_sigma: np.ndarray  # W, sigma of P and of Q


def sensor_values(sensors: SensorTable, snapshot: MeasurementSnapshot) -> SensorValues:
    """Map a snapshot onto ``sensors`` exactly as ``Estimator.estimate`` does before solving:
    fresh values, pseudo-measurements for uncovered appliances, age-inflated meter sigmas."""
    s = sensors
    n_v, n_p = len(s.v_keys), len(s.p_keys)
    u = np.full(n_v, np.nan)
    ang = np.full(n_v, np.nan)
    p = np.full(n_p, np.nan)
    q = np.full(n_p, np.nan)
    age = np.zeros(n_p)
    for m in snapshot.measurements:
        if m.quality & Quality.INVALID:
            continue
        if m.measurand is Measurand.VOLTAGE:
            row = s.v_index.get((m.source, m.mrid))
            if row is None or m.v_pu is None:
                continue
            u[row] = m.v_pu * s.v_rated[row]
            if s.v_pmu[row] and m.va_deg is not None:
                ang[row] = math.radians(m.va_deg)
            continue
        prow = s.p_index.get((m.source, m.mrid, m.terminal))
        if prow is None or m.p_mw is None or m.q_mvar is None:
            continue
        p[prow], q[prow] = m.p_mw * 1e6, m.q_mvar * 1e6
        age[prow] = max(0.0, (snapshot.t_ns - m.t_ns) / 1e9)
    real = ~np.isnan(p[: s.n_real_p])
    p_active = np.ones(n_p, dtype=bool)
    p_active[: s.n_real_p] = real
    p_active[s.covers[real & (s.covers >= 0)]] = False
    pseudo_p, pseudo_q = s.pseudo_values(snapshot.t_ns / 1e9)
    p[s.n_real_p :], q[s.n_real_p :] = pseudo_p, pseudo_q
    sigma = s.p_sigma + s.drift_per_s * age * s.p_rating * s.p_meter
    return SensorValues(~np.isnan(u), u, ang, p_active, p, q, sigma)


class PandapowerReference:
    """pandapower's WLS estimate of a GridModel's grid on GridPilot measurements.

    ``net`` is the pandapower network the model was imported from: GridModel.buses[i] is row i
    of net.bus, lines and transformers likewise (see pandapower_import).
    """

    def __init__(
        self,
        net: Any,
        model: GridModel,
        placement: Placement,
        *,
        closed: Mapping[str, bool] | None = None,
        zero_injection_sigma_mw: float = ZERO_INJECTION_SIGMA_MW,
    ) -> None:
        for table, items in (
            ("bus", model.buses),
            ("line", model.lines),
            ("trafo", model.transformers),
            ("switch", model.switches),
        ):
            if len(net[table]) != len(items):
                raise ValueError(f"net.{table} has {len(net[table])} rows, model {len(items)}")
        self.net = net
        self.model = model
        self.pgm = PgmNetwork(model, closed=closed)
        self.sensors = SensorTable(self.pgm, placement)
        self.zero_sigma = zero_injection_sigma_mw
        for sw, idx in zip(model.switches, net.switch.index, strict=True):
            net.switch.at[idx, "closed"] = self.pgm.closed[sw.id]
        self._bus_idx = {b.id: int(i) for b, i in zip(model.buses, net.bus.index, strict=True)}
        self._branch = {
            ln.id: ("line", int(i)) for ln, i in zip(model.lines, net.line.index, strict=True)
        }
        for t, i in zip(model.transformers, net.trafo.index, strict=True):
            self._branch[t.id] = ("trafo", int(i))
        # Injections are measured per calculation node (buses fused by closed bus switches),
        # placed on the node's first bus; pandapower fuses the same buses.
        node_of = self.pgm.node_of_bus
        self._node_bus: dict[int, int] = {}
        for b in model.buses:
            self._node_bus.setdefault(node_of[b.id], self._bus_idx[b.id])
        self._appliance_node = {
            (Terminal.LOAD, ld.id): (node_of[ld.bus], ld.in_service) for ld in model.loads
        }
        for gn in model.generators:
            self._appliance_node[(Terminal.GEN, gn.id)] = (node_of[gn.bus], gn.in_service)
        with_appliance = {node for node, _ in self._appliance_node.values()}
        self._source_nodes = {node_of[s.bus] for s in model.sources}
        self._zero_nodes = sorted(set(self._node_bus) - with_appliance - self._source_nodes)
        self._structure: tuple[tuple[str, str, int, str | None], ...] | None = None

    # -- measurements -----------------------------------------------------------------------
    def rows(self, values: SensorValues) -> list[Row]:
        """The pandapower measurements (MW, Mvar, p.u., degrees) equivalent to ``values``."""
        s = self.sensors
        rows: list[Row] = []
        for i in np.flatnonzero(values.v_active):
            bus = self._bus_idx[s.v_keys[i][1]]
            rated = s.v_rated[i]
            v, sig = values.u_measured[i] / rated, s.v_sigma[i] / rated
            rows.append(("v", "bus", bus, None, v, sig))
            if not math.isnan(values.u_angle[i]):
                # a PMU's circular phasor error: angle sigma = magnitude sigma / |V|
                rows.append(
                    ("va", "bus", bus, None, math.degrees(values.u_angle[i]), math.degrees(sig / v))
                )
        # Appliances: pandapower ignores P/Q measurements on loads and sgens, so sum them per
        # node into one bus injection, load-positive, variances added (as power-grid-model
        # does). Several sensors on one appliance are first merged by inverse variance.
        per_appliance: dict[tuple[Terminal, str], list[tuple[float, float, float]]] = {}
        for i in np.flatnonzero(values.p_active):
            _, mrid, term = s.p_keys[i]
            p, q, sig = values.p_measured[i] / 1e6, values.q_measured[i] / 1e6, values.p_sigma[i]
            if term in (Terminal.FROM, Terminal.TO):
                etype, idx = self._branch[mrid]
                side = _SIDE[(etype, term)]
                rows.append(("p", etype, idx, side, p, sig / 1e6))
                rows.append(("q", etype, idx, side, q, sig / 1e6))
                continue
            per_appliance.setdefault((term, mrid), []).append((p, q, sig / 1e6))
        injection: dict[int, list[float]] = {}
        for key, sensed in per_appliance.items():
            node, in_service = self._appliance_node[key]
            if not in_service:
                continue
            w = np.array([1.0 / sg**2 for *_, sg in sensed])
            p = float(np.dot(w, [x[0] for x in sensed]) / w.sum())
            q = float(np.dot(w, [x[1] for x in sensed]) / w.sum())
            sign = 1.0 if key[0] is Terminal.LOAD else -1.0  # pandapower: consumption positive
            acc = injection.setdefault(node, [0.0, 0.0, 0.0])
            acc[0] += sign * p
            acc[1] += sign * q
            acc[2] += 1.0 / w.sum()
        # A node with a source has an unmeasured injection: power-grid-model then ignores the
        # node's appliance sensors, so pandapower must not see them either.
        complete = self._complete_nodes(per_appliance)
        for node, (p, q, var) in sorted(injection.items()):
            if node in self._source_nodes or node not in complete:
                continue
            bus = self._node_bus[node]
            rows.append(("p", "bus", bus, None, p, math.sqrt(var)))
            rows.append(("q", "bus", bus, None, q, math.sqrt(var)))
        for node in self._zero_nodes:
            bus = self._node_bus[node]
            rows.append(("p", "bus", bus, None, 0.0, self.zero_sigma))
            rows.append(("q", "bus", bus, None, 0.0, self.zero_sigma))
        return rows

    def _complete_nodes(self, per_appliance: Mapping[tuple[Terminal, str], object]) -> set[int]:
        """Nodes whose every in-service appliance has a measurement."""
        missing: set[int] = set()
        nodes: set[int] = set()
        for key, (node, in_service) in self._appliance_node.items():
            if not in_service:
                continue
            nodes.add(node)
            if key not in per_appliance:
                missing.add(node)
        return nodes - missing

    def _fill(self, rows: list[Row]) -> float:
        """Put ``rows`` into net.measurement: created by create_measurement when the set of
        measured quantities changes, else only values and sigmas are refilled."""
        import pandapower as pp

        t0 = time.perf_counter()
        structure = tuple(r[:4] for r in rows)
        net = self.net
        if structure != self._structure:
            net.measurement.drop(net.measurement.index, inplace=True)
            for kind, etype, idx, side, value, std in rows:
                pp.create_measurement(net, kind, etype, value, std, element=idx, side=side)
            self._structure = structure
        else:
            net.measurement["value"] = np.array([r[4] for r in rows])
            net.measurement["std_dev"] = np.array([r[5] for r in rows])
        return time.perf_counter() - t0

    # -- estimation -------------------------------------------------------------------------
    def estimate(
        self,
        snapshot: MeasurementSnapshot,
        *,
        init: str = "flat",
        tolerance: float = 1e-8,
        maximum_iterations: int = 50,
    ) -> ReferenceResult:
        """pandapower's WLS estimate on the same measurements as ``Estimator.estimate``
        (before any bad-data removal)."""
        return self.estimate_values(
            sensor_values(self.sensors, snapshot),
            init=init,
            tolerance=tolerance,
            maximum_iterations=maximum_iterations,
        )

    def estimate_values(
        self,
        values: SensorValues,
        *,
        init: str = "flat",
        tolerance: float = 1e-8,
        maximum_iterations: int = 50,
    ) -> ReferenceResult:
        from pandapower.estimation import estimate

        rows = self.rows(values)
        setup = self._fill(rows)
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                # pandas' chained-assignment and numpy cast warnings from inside pandapower.
                warnings.simplefilter("ignore")
                res = estimate(
                    self.net,
                    algorithm="wls",
                    init=init,
                    tolerance=tolerance,
                    maximum_iterations=maximum_iterations,
                )
            # pandapower reports most failures in the result rather than raising.
            ok = bool(res["success"] if isinstance(res, dict) else res)
        except Exception as exc:  # a singular gain matrix surfaces as a LinAlgError et al.
            logging.getLogger("gridpilot.model").debug("pandapower estimate failed: %s", exc)
            ok = False
        seconds = time.perf_counter() - t0
        n = len(self.model.buses)
        v, va = np.full(n, np.nan), np.full(n, np.nan)
        if ok and "res_bus_est" in self.net and len(self.net.res_bus_est) == n:
            v = self.net.res_bus_est["vm_pu"].to_numpy(dtype=float)
            va = self.net.res_bus_est["va_degree"].to_numpy(dtype=float)
            ok = bool(np.isfinite(v).any())
        return ReferenceResult(ok, v, va, seconds, setup, len(rows))


_SIDE = {
    ("line", Terminal.FROM): "from",
    ("line", Terminal.TO): "to",
    ("trafo", Terminal.FROM): "hv",
    ("trafo", Terminal.TO): "lv",
}
