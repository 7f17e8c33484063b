"""Weighted least squares on power-grid-model for a changing set of sensors.

One calculation model per sensor set, built once and then only updated (an LRU cache keyed by
which sensors are active); the solver chosen per set with a fallback to the other; weighted
residuals and the objective; and removal trials for bad-data identification as one batch.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from power_grid_model import (
    CalculationMethod,
    ComponentType,
    DatasetType,
    PowerGridModel,
    initialize_array,
)
from power_grid_model.errors import NotObservableError, PowerGridError  # type: ignore[attr-defined]

from gridpilot.model.pgm import PgmNetwork
from gridpilot.model.sensors import SensorTable

C = ComponentType
_OUTPUTS: dict[ComponentType, Any] = {
    C.node: None,
    C.line: None,
    C.transformer: None,
    C.sym_voltage_sensor: None,
    C.sym_power_sensor: None,
}
_SENSOR_OUTPUTS: dict[ComponentType, Any] = {C.sym_voltage_sensor: None, C.sym_power_sensor: None}
_NR = CalculationMethod.newton_raphson
_IL = CalculationMethod.iterative_linear


@dataclass
class Values:
    """One snapshot's sensor values, a row per sensor of the table (nan: not measured)."""

    u: np.ndarray  # V
    angle: np.ndarray  # rad; nan where only the magnitude is measured
    u_sigma: np.ndarray  # V
    p: np.ndarray  # W
    q: np.ndarray  # var
    p_sigma: np.ndarray  # W and var


@dataclass
class SensorSet:
    """A calculation model with exactly the active sensors, and how to refill it."""

    model: PowerGridModel
    v_rows: np.ndarray
    p_rows: np.ndarray
    v_update: np.ndarray
    p_update: np.ndarray
    v_col: np.ndarray  # table row -> column in this set (-1 when not in it)
    p_col: np.ndarray
    method: CalculationMethod | None = None
    names: list[str] = field(default_factory=list)


@dataclass
class Solution:
    out: dict[ComponentType, Any]
    method: CalculationMethod
    sensors: SensorSet
    r_v: np.ndarray  # per active voltage sensor: the larger of magnitude and angle residual
    r_p: np.ndarray  # per active power sensor: the larger of P and Q residual (in sigmas)
    objective: float
    dof: int


class Solver:
    def __init__(
        self, net: PgmNetwork, sensors: SensorTable, *, f_hz: float, cache_size: int = 16
    ) -> None:
        self.net = net
        self.table = sensors
        self.f_hz = f_hz
        self.cache_size = cache_size
        self._sets: OrderedDict[bytes, SensorSet] = OrderedDict()
        nodes = net.input[C.node]["id"]
        fed: set[int] = set()
        for comp in (C.source, C.sym_load, C.sym_gen):
            fed.update(int(n) for n in net.input[comp]["node"])
        # Parts without a source are dead: power-grid-model leaves them out (zero, residuals
        # zero), so their nodes and sensors count in neither the state nor the redundancy.
        dead = {net.node_of_bus[b] for b in net.dead_buses()}
        self.n_live_nodes = net.n_nodes - len(dead)
        self.v_live = np.array([n[0] not in dead for n in sensors.v_nodes], dtype=bool)
        self.p_live = np.array([any(x not in dead for x in n) for n in sensors.p_nodes], dtype=bool)
        # Nodes with nothing connected are exact zero-injection constraints: 2 equations each.
        self.n_zero_injection = sum(1 for n in nodes if int(n) not in fed and int(n) not in dead)

    def solve(
        self, v_active: np.ndarray, p_active: np.ndarray, values: Values, *, keep: bool = True
    ) -> Solution:
        """Estimate with the active sensors; raises power-grid-model's errors."""
        key = v_active.tobytes() + p_active.tobytes()
        sset = self._sets.get(key)
        if sset is None:
            sset = self._build(v_active, p_active, values)
            if keep:
                self._sets[key] = sset
                if len(self._sets) > self.cache_size:
                    self._sets.popitem(last=False)
        else:
            self._sets.move_to_end(key)
            _fill(sset.v_update, sset.p_update, sset.v_rows, sset.p_rows, values)
            sset.model.update(
                update_data={C.sym_voltage_sensor: sset.v_update, C.sym_power_sensor: sset.p_update}
            )
        magnitude_only = bool(np.isnan(values.angle[sset.v_rows]).any())
        order = [sset.method] if sset.method else []
        order += [m for m in ((_NR, _IL) if magnitude_only else (_IL, _NR)) if m not in order]
        error: PowerGridError | None = None
        for method in order:
            try:
                out = sset.model.calculate_state_estimation(
                    calculation_method=method,
                    error_tolerance=1e-8,
                    max_iterations=50 if method is _NR else 100,
                    output_component_types=_OUTPUTS,
                )
            except NotObservableError:
                raise
            except PowerGridError as exc:
                error = exc
                continue
            sset.method = method
            return self._solution(out, method, sset, values)
        assert error is not None
        raise error

    def _build(self, v_active: np.ndarray, p_active: np.ndarray, values: Values) -> SensorSet:
        t = self.table
        v_rows, p_rows = np.flatnonzero(v_active), np.flatnonzero(p_active)
        volt = t.voltage[v_rows]
        power = t.power[p_rows]
        v_update = initialize_array(DatasetType.update, C.sym_voltage_sensor, len(v_rows))
        p_update = initialize_array(DatasetType.update, C.sym_power_sensor, len(p_rows))
        v_update["id"] = volt["id"]
        p_update["id"] = power["id"]
        v_col = np.full(len(t.voltage), -1, dtype=np.int64)
        v_col[v_rows] = np.arange(len(v_rows))
        p_col = np.full(len(t.power), -1, dtype=np.int64)
        p_col[p_rows] = np.arange(len(p_rows))
        _fill(v_update, p_update, v_rows, p_rows, values)
        for f in ("u_measured", "u_angle_measured", "u_sigma"):
            volt[f] = v_update[f]
        for f in ("p_measured", "q_measured", "p_sigma", "q_sigma"):
            power[f] = p_update[f]
        data = dict(self.net.input)
        data[C.sym_voltage_sensor] = volt
        data[C.sym_power_sensor] = power
        n_real = int((p_rows < t.n_real_p).sum())
        return SensorSet(
            model=PowerGridModel(data, system_frequency=self.f_hz),
            v_rows=v_rows,
            p_rows=p_rows,
            v_update=v_update,
            p_update=p_update,
            v_col=v_col,
            p_col=p_col,
            names=[t.names[i] for i in v_rows]
            + [t.names[len(t.v_keys) + i] for i in p_rows[:n_real]],
        )

    def _solution(
        self,
        out: dict[ComponentType, Any],
        method: CalculationMethod,
        sset: SensorSet,
        values: Values,
    ) -> Solution:
        vo, po = out[C.sym_voltage_sensor], out[C.sym_power_sensor]
        u_sigma = values.u_sigma[sset.v_rows]
        r_mag = vo["u_residual"] / u_sigma
        r_ang = np.nan_to_num(vo["u_angle_residual"] * values.u[sset.v_rows] / u_sigma)
        p_sigma = values.p_sigma[sset.p_rows]
        r_p = po["p_residual"] / p_sigma
        r_q = po["q_residual"] / p_sigma
        objective = float(r_mag @ r_mag + r_ang @ r_ang + r_p @ r_p + r_q @ r_q)
        v_live = self.v_live[sset.v_rows]
        n_angle = int(np.count_nonzero(~np.isnan(values.angle[sset.v_rows]) & v_live))
        m = int(v_live.sum()) + n_angle + 2 * int(self.p_live[sset.p_rows].sum())
        m += 2 * self.n_zero_injection
        n_state = 2 * self.n_live_nodes - (0 if n_angle else 1)
        return Solution(
            out=out,
            method=method,
            sensors=sset,
            r_v=np.maximum(np.abs(r_mag), np.abs(r_ang)),
            r_p=np.maximum(np.abs(r_p), np.abs(r_q)),
            objective=objective,
            dof=max(1, m - n_state),
        )

    def trials(
        self, sol: Solution, values: Values, cands: list[tuple[str, int]], stand_in: dict[int, int]
    ) -> np.ndarray:
        """The objective after taking out each candidate, all in one batch calculation.

        A voltage or branch sensor taken out gets an infinite sigma (no weight), which
        power-grid-model solves like a model without it; a meter on a load or generator is
        replaced by that appliance's pseudo-measurement (``stand_in``: candidate index ->
        pseudo row). A scenario that loses observability fails and scores inf.
        """
        sset = sol.sensors
        k = len(cands)
        v_c = [(i, int(sset.v_col[row])) for i, (kind, row) in enumerate(cands) if kind == "v"]
        p_c = [(i, int(sset.p_col[row])) for i, (kind, row) in enumerate(cands) if kind == "p"]
        update: dict[ComponentType, np.ndarray] = {}
        if v_c:
            vu = initialize_array(DatasetType.update, C.sym_voltage_sensor, (k, len(v_c)))
            vu["id"] = sset.v_update["id"][[j for _, j in v_c]]
            for n, (i, _j) in enumerate(v_c):
                vu["u_sigma"][i, n] = np.inf
            update[C.sym_voltage_sensor] = vu
        if p_c:
            pu = initialize_array(DatasetType.update, C.sym_power_sensor, (k, len(p_c)))
            pu["id"] = sset.p_update["id"][[j for _, j in p_c]]
            for n, (i, _j) in enumerate(p_c):
                pseudo = stand_in.get(i)
                if pseudo is None:
                    pu["p_sigma"][i, n] = pu["q_sigma"][i, n] = np.inf
                else:
                    pu["p_measured"][i, n] = values.p[pseudo]
                    pu["q_measured"][i, n] = values.q[pseudo]
                    pu["p_sigma"][i, n] = pu["q_sigma"][i, n] = values.p_sigma[pseudo]
            update[C.sym_power_sensor] = pu
        out = sset.model.calculate_state_estimation(
            update_data=update,
            calculation_method=sol.method,
            error_tolerance=1e-8,
            max_iterations=50 if sol.method is _NR else 100,
            output_component_types=_SENSOR_OUTPUTS,
            threading=0,
            continue_on_batch_error=True,
        )
        vo, po = out[C.sym_voltage_sensor], out[C.sym_power_sensor]
        u_sigma = values.u_sigma[sset.v_rows]
        rv = vo["u_residual"] / u_sigma
        ra = np.nan_to_num(vo["u_angle_residual"] * values.u[sset.v_rows] / u_sigma)
        p_sigma = np.broadcast_to(values.p_sigma[sset.p_rows], po["p_residual"].shape).copy()
        for i, j in v_c:  # a sensor taken out adds nothing
            rv[i, j] = ra[i, j] = 0.0
        for i, j in p_c:  # ... and a meter replaced by a pseudo-measurement weighs as one
            pseudo = stand_in.get(i)
            p_sigma[i, j] = np.inf if pseudo is None else values.p_sigma[pseudo]
        rp = po["p_residual"] / p_sigma
        rq = po["q_residual"] / p_sigma
        objective = (rv**2).sum(axis=1) + (ra**2).sum(axis=1) + (rp**2).sum(axis=1)
        objective += (rq**2).sum(axis=1)
        failed = getattr(sset.model, "batch_error", None)
        if failed is not None:
            objective[np.asarray(failed.failed_scenarios, dtype=np.int64)] = np.inf
        return np.where(np.isfinite(objective), objective, np.inf)


def _fill(
    vu: np.ndarray, pu: np.ndarray, v_rows: np.ndarray, p_rows: np.ndarray, values: Values
) -> None:
    """Write a snapshot's values of the active sensors into update arrays."""
    vu["u_measured"] = values.u[v_rows]
    vu["u_angle_measured"] = values.angle[v_rows]
    vu["u_sigma"] = values.u_sigma[v_rows]
    pu["p_measured"] = values.p[p_rows]
    pu["q_measured"] = values.q[p_rows]
    sigma = values.p_sigma[p_rows]
    pu["p_sigma"] = sigma
    pu["q_sigma"] = sigma
