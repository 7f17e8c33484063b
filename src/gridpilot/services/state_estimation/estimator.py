"""The state estimator: one measurement snapshot in, one StateEstimate out.

Weighted least squares on power-grid-model (its model built once per sensor set, then updated),
with a chi-square test on the objective and identification of gross errors by elimination:
the largest weighted residuals are removed one at a time and the grid re-estimated, keeping
the removal that lowers the objective most. Unmeasured loads and generators get
pseudo-measurements from their profiles. Nothing here raises for a bad snapshot: every outcome
is a StateEstimate with a status.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Mapping
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

from gridpilot.core.schemas import (
    BadData,
    EstimateStatus,
    Measurand,
    MeasurementSnapshot,
    StateEstimate,
)
from gridpilot.model.grid import GridModel
from gridpilot.model.pgm import PgmNetwork
from gridpilot.model.placement import Placement
from gridpilot.services.state_estimation.sensors import SensorTable, chi2_threshold

C = ComponentType
_OUTPUTS: dict[ComponentType, Any] = {
    C.node: None,
    C.line: None,
    C.transformer: None,
    C.sym_voltage_sensor: None,
    C.sym_power_sensor: None,
}
_UPDATE_DTYPE: dict[ComponentType, np.dtype[np.void]] = {}
_INVALID = 1  # Quality.INVALID as a plain int: IntFlag arithmetic is slow per measurement
_METHOD_NAMES = {
    CalculationMethod.iterative_linear: "iterative_linear",
    CalculationMethod.newton_raphson: "newton_raphson",
}


class _Solution:
    __slots__ = ("dof", "method", "model", "objective", "out", "power", "r_p", "r_v", "volt")

    def __init__(
        self,
        out: Mapping[ComponentType, Any],
        method: CalculationMethod,
        model: PowerGridModel,
        volt: np.ndarray,
        power: np.ndarray,
    ) -> None:
        self.out = out
        self.method = method
        self.model = model  # with exactly the active sensors, values as of this snapshot
        self.volt = volt
        self.power = power
        self.r_v = np.zeros(0)
        self.r_p = np.zeros(0)
        self.objective = 0.0
        self.dof = 1


class Estimator:
    """State estimation for one grid and placement; not thread-safe, one call at a time."""

    def __init__(
        self,
        model: GridModel,
        placement: Placement,
        *,
        closed: Mapping[str, bool] | None = None,
        alpha: float = 0.01,
        r_max: float = 4.0,
        max_bad_data: int = 3,
        candidates: int = 3,
        max_candidates: int = 24,
        cache_size: int = 16,
    ) -> None:
        self.model = model
        self.placement = placement
        self.alpha = alpha
        self.r_max = r_max
        self.max_bad_data = max_bad_data
        self.candidates = candidates
        self.max_candidates = max_candidates
        self._cache_size = cache_size
        self.set_topology(closed or {})

    # -- topology ---------------------------------------------------------------------------
    def set_topology(self, closed: Mapping[str, bool]) -> None:
        """Rebuild the calculation model for new switch states."""
        self.net = PgmNetwork(self.model, closed=closed)
        self.sensors = SensorTable(self.net, self.placement)
        self._models: OrderedDict[bytes, PowerGridModel] = OrderedDict()
        self._preferred: dict[bytes, CalculationMethod] = {}
        self._suspects: list[tuple[str, int]] = []
        node_ids = self.net.input[C.node]["id"]
        with_appliance = np.zeros(len(node_ids), dtype=bool)
        index = {int(n): i for i, n in enumerate(node_ids)}
        for comp in (C.source, C.sym_load, C.sym_gen):
            for n in self.net.input[comp]["node"]:
                with_appliance[index[int(n)]] = True
        self._n_zero_injection = int((~with_appliance).sum())

    @property
    def closed(self) -> dict[str, bool]:
        return dict(self.net.closed)

    # -- estimation -------------------------------------------------------------------------
    def estimate(self, snapshot: MeasurementSnapshot) -> StateEstimate:
        t0 = time.perf_counter()
        s = self.sensors
        volt = s.voltage
        power = s.power
        # Collect rows and values in lists and write each array once: element-wise writes
        # into structured arrays cost more than the solve on small grids.
        v_rows: list[int] = []
        v_vals: list[float] = []
        a_rows: list[int] = []
        a_vals: list[float] = []
        p_rows: list[int] = []
        p_vals: list[float] = []
        q_vals: list[float] = []
        p_t: list[int] = []
        v_index, p_index, v_pmu = s.v_index, s.p_index, s.v_pmu_list
        voltage = Measurand.VOLTAGE
        for m in snapshot.measurements:
            if m.quality & _INVALID:
                continue
            if m.measurand is voltage:
                row = v_index.get((m.source, m.mrid))
                if row is None or m.v_pu is None:
                    continue
                v_rows.append(row)
                v_vals.append(m.v_pu)
                if v_pmu[row] and m.va_deg is not None:
                    a_rows.append(row)
                    a_vals.append(m.va_deg)
            else:
                prow = p_index.get((m.source, m.mrid, m.terminal))
                if prow is None or m.p_mw is None or m.q_mvar is None:
                    continue
                p_rows.append(prow)
                p_vals.append(m.p_mw)
                q_vals.append(m.q_mvar)
                p_t.append(m.t_ns)
        u = np.full(len(volt), np.nan)
        u[v_rows] = np.asarray(v_vals) * s.v_rated[v_rows]
        volt["u_measured"] = u
        ang = np.full(len(volt), np.nan)
        ang[a_rows] = np.radians(a_vals)
        volt["u_angle_measured"] = ang
        pm = np.full(len(power), np.nan)
        qm = np.full(len(power), np.nan)
        pm[p_rows] = np.asarray(p_vals) * 1e6
        qm[p_rows] = np.asarray(q_vals) * 1e6
        age = np.zeros(len(power))
        age[p_rows] = np.maximum(0.0, (snapshot.t_ns - np.asarray(p_t, dtype=np.int64)) / 1e9)
        v_active = ~np.isnan(u)
        real = ~np.isnan(pm[: s.n_real_p])
        covered = s.covers[real & (s.covers >= 0)]
        p_active = np.ones(len(power), dtype=bool)
        p_active[: s.n_real_p] = real
        p_active[covered] = False
        pm[s.n_real_p :], qm[s.n_real_p :] = s.pseudo_values(snapshot.t_ns / 1e9)
        power["p_measured"] = pm
        power["q_measured"] = qm
        sigma = s.p_sigma + s.drift_per_s * age * s.p_rating * s.p_meter
        power["p_sigma"] = sigma
        power["q_sigma"] = sigma
        n_pseudo = int(p_active[s.n_real_p :].sum())
        n_meas = int(v_active.sum() + real.sum())

        bad: list[BadData] = []
        removed: list[tuple[str, int]] = []
        if not v_active.any():
            return self._failed(
                snapshot,
                EstimateStatus.NOT_OBSERVABLE,
                "not observable: no voltage measurement (PMU or RTU) in this snapshot; "
                "at least one is needed as the voltage reference",
                t0,
                n_meas,
                n_pseudo,
            )
        try:
            sol = self._solve(v_active, p_active)
            while self._suspicious(sol, v_active, p_active) and len(bad) < self.max_bad_data:
                found = self._recall(sol, v_active, p_active) or self._identify(
                    sol, v_active, p_active
                )
                if found is None:
                    break
                kind, row, r_norm, sol = found
                removed.append((kind, row))
                v_active, p_active = self._without(kind, row, v_active, p_active)
                if kind == "v":
                    key = s.v_keys[row]
                    bad.append(
                        BadData(
                            sensor=s.names[row],
                            mrid=key[1],
                            source=key[0],
                            measurand=Measurand.VOLTAGE,
                            r_norm=round(r_norm, 2),
                        )
                    )
                else:
                    pkey = s.p_keys[row]
                    bad.append(
                        BadData(
                            sensor=s.names[len(s.v_keys) + row],
                            mrid=pkey[1],
                            source=pkey[0],
                            measurand=Measurand.POWER,
                            r_norm=round(r_norm, 2),
                        )
                    )
            # A sensor in error usually stays so: try it first at the next snapshot.
            self._suspects = removed
        except NotObservableError as exc:
            return self._failed(
                snapshot,
                EstimateStatus.NOT_OBSERVABLE,
                f"not observable with {n_meas} measurements and {n_pseudo} pseudo-measurements: "
                + str(exc).split("\n")[0],
                t0,
                n_meas,
                n_pseudo,
            )
        except PowerGridError as exc:
            return self._failed(
                snapshot, EstimateStatus.DIVERGED, str(exc).split("\n")[0], t0, n_meas, n_pseudo
            )
        return self._result(snapshot, sol, v_active, p_active, bad, t0, n_meas, n_pseudo)

    # -- internals ----------------------------------------------------------------------------
    def _solve(self, v_active: np.ndarray, p_active: np.ndarray, *, keep: bool = True) -> _Solution:
        """Estimate with the active sensors; ``keep`` caches the model for the next snapshot."""
        key = v_active.tobytes() + p_active.tobytes()
        volt = self.sensors.voltage[v_active]
        power = self.sensors.power[p_active]
        model = self._models.get(key)
        if model is None:
            data = dict(self.net.input)
            data[C.sym_voltage_sensor] = volt
            data[C.sym_power_sensor] = power
            model = PowerGridModel(data, system_frequency=self.model.f_hz)
            if keep:
                self._models[key] = model
                if len(self._models) > self._cache_size:
                    self._models.popitem(last=False)
        else:
            self._models.move_to_end(key)
            model.update(
                update_data={
                    C.sym_voltage_sensor: _as_update(volt, C.sym_voltage_sensor),
                    C.sym_power_sensor: _as_update(power, C.sym_power_sensor),
                }
            )
        magnitude_only = bool(np.isnan(volt["u_angle_measured"]).any())
        order = [CalculationMethod.newton_raphson, CalculationMethod.iterative_linear]
        if not magnitude_only:
            order.reverse()
        preferred = self._preferred.get(key)
        if preferred is not None:
            order.remove(preferred)
            order.insert(0, preferred)
        error: PowerGridError | None = None
        for method in order:
            try:
                out = model.calculate_state_estimation(
                    calculation_method=method,
                    error_tolerance=1e-8,
                    max_iterations=50 if method is CalculationMethod.newton_raphson else 100,
                    output_component_types=_OUTPUTS,
                )
            except NotObservableError:
                raise
            except PowerGridError as exc:
                error = exc
                continue
            self._preferred[key] = method
            sol = _Solution(out, method, model, volt, power)
            return self._residuals(sol, volt, power, v_active)
        assert error is not None
        raise error

    def _residuals(
        self, sol: _Solution, volt: np.ndarray, power: np.ndarray, v_active: np.ndarray
    ) -> _Solution:
        vo = sol.out[C.sym_voltage_sensor]
        po = sol.out[C.sym_power_sensor]
        r_mag = vo["u_residual"] / volt["u_sigma"]
        has_angle = ~np.isnan(volt["u_angle_measured"])
        r_ang = np.where(
            has_angle, vo["u_angle_residual"] * volt["u_measured"] / volt["u_sigma"], 0.0
        )
        r_ang = np.nan_to_num(r_ang)
        r_p = po["p_residual"] / power["p_sigma"]
        r_q = po["q_residual"] / power["q_sigma"]
        sol.r_v = np.maximum(np.abs(r_mag), np.abs(r_ang))
        sol.r_p = np.maximum(np.abs(r_p), np.abs(r_q))
        sol.objective = float((r_mag**2).sum() + (r_ang**2).sum() + (r_p**2).sum() + (r_q**2).sum())
        m = len(volt) + int(has_angle.sum()) + 2 * len(power) + 2 * self._n_zero_injection
        n_state = 2 * self.net.n_nodes - (0 if has_angle.any() else 1)
        sol.dof = max(1, m - n_state)
        return sol

    def _suspicious(self, sol: _Solution, v_active: np.ndarray, p_active: np.ndarray) -> bool:
        real_p = sol.r_p[: int(p_active[: self.sensors.n_real_p].sum())]
        worst = max(float(sol.r_v.max(initial=0.0)), float(real_p.max(initial=0.0)))
        return worst > self.r_max or sol.objective > chi2_threshold(sol.dof, self.alpha)

    def _without(
        self, kind: str, row: int, v_active: np.ndarray, p_active: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The sensor sets without one sensor; a load or generator it measured falls back to
        its pseudo-measurement, as when the measurement had not arrived."""
        va, pa = v_active.copy(), p_active.copy()
        if kind == "v":
            va[row] = False
            return va, pa
        pa[row] = False
        covers = self.sensors.covers
        if row < len(covers) and covers[row] >= 0:
            others = np.flatnonzero(pa[: len(covers)] & (covers == covers[row]))
            pa[covers[row]] = len(others) == 0
        return va, pa

    def _recall(
        self, sol: _Solution, v_active: np.ndarray, p_active: np.ndarray
    ) -> tuple[str, int, float, _Solution] | None:
        """Remove a sensor found in error at the last snapshot, if that settles the test."""
        for kind, row in self._suspects:
            active = v_active if kind == "v" else p_active
            if not active[row]:
                continue
            va, pa = self._without(kind, row, v_active, p_active)
            try:
                trial = self._solve(va, pa)
            except PowerGridError:
                continue
            if trial.objective < sol.objective:
                return kind, row, math.sqrt(sol.objective - trial.objective), trial
        return None

    def _identify(
        self, sol: _Solution, v_active: np.ndarray, p_active: np.ndarray
    ) -> tuple[str, int, float, _Solution] | None:
        """Try removing each suspect; keep the removal whose re-estimate fits best.

        Suspects are the largest weighted residuals and every real measurement at the same
        nodes: a precise measurement in error pulls the estimate towards itself and pushes
        its residual onto less precise neighbours, so the culprit is near the largest residuals
        but not always among them (what normalised residuals would reveal).
        """
        s = self.sensors
        v_rows = np.flatnonzero(v_active)
        p_rows = np.flatnonzero(p_active)
        real = np.flatnonzero(p_rows < s.n_real_p)
        ranked = [("v", int(v_rows[i]), float(sol.r_v[i])) for i in range(len(v_rows))]
        ranked += [("p", int(p_rows[i]), float(sol.r_p[i])) for i in real]
        ranked.sort(key=lambda c: -c[2])
        top = ranked[: self.candidates]
        nodes = {n for kind, row, _ in top for n in (s.v_nodes if kind == "v" else s.p_nodes)[row]}
        cands = list(top)
        for cand in ranked[self.candidates :]:
            kind, row, _ = cand
            if nodes.intersection((s.v_nodes if kind == "v" else s.p_nodes)[row]):
                cands.append(cand)
        cands = cands[: self.max_candidates]
        objectives = self._trials(sol, [(k, r) for k, r, _ in cands])
        for k in np.argsort(objectives):
            if not np.isfinite(objectives[k]):
                break  # removing it loses observability or convergence: keep it
            kind, row, _ = cands[k]
            va, pa = self._without(kind, row, v_active, p_active)
            try:
                trial = self._solve(va, pa)
            except PowerGridError:
                continue
            # How far off it was: the square root of the objective's drop on removal, the
            # size in sigmas of its deleted residual (robust where leverage hides it).
            return kind, row, math.sqrt(max(0.0, sol.objective - trial.objective)), trial
        return None

    def _trials(self, sol: _Solution, cands: list[tuple[str, int]]) -> np.ndarray:
        """The objective after removing each candidate, all in one batch calculation.

        A removed sensor gets an infinite sigma (no weight), which power-grid-model solves like
        a model without it; a removal that loses observability fails its scenario (inf).
        """
        s = self.sensors
        k = len(cands)
        v_ids = [int(s.voltage["id"][row]) for kind, row in cands if kind == "v"]
        p_ids = [int(s.power["id"][row]) for kind, row in cands if kind == "p"]
        update: dict[ComponentType, np.ndarray] = {}
        if v_ids:
            vu = initialize_array(DatasetType.update, C.sym_voltage_sensor, (k, len(v_ids)))
            vu["id"] = v_ids
            update[C.sym_voltage_sensor] = vu
        if p_ids:
            pu = initialize_array(DatasetType.update, C.sym_power_sensor, (k, len(p_ids)))
            pu["id"] = p_ids
            update[C.sym_power_sensor] = pu
        iv = ip = 0
        pseudo_for: dict[int, int] = {}  # scenario -> pseudo row that stands in
        for i, (kind, row) in enumerate(cands):
            if kind == "v":
                update[C.sym_voltage_sensor]["u_sigma"][i, iv] = np.inf
                iv += 1
                continue
            pu = update[C.sym_power_sensor]
            stand_in = int(s.covers[row]) if row < len(s.covers) else -1
            if stand_in >= 0:
                # an appliance's meter out: its pseudo-measurement takes the same place
                pseudo_for[i] = stand_in
                pu["p_measured"][i, ip] = s.power["p_measured"][stand_in]
                pu["q_measured"][i, ip] = s.power["q_measured"][stand_in]
                pu["p_sigma"][i, ip] = s.power["p_sigma"][stand_in]
                pu["q_sigma"][i, ip] = s.power["q_sigma"][stand_in]
            else:
                pu["p_sigma"][i, ip] = np.inf
                pu["q_sigma"][i, ip] = np.inf
            ip += 1
        out = sol.model.calculate_state_estimation(
            update_data=update,
            calculation_method=sol.method,
            error_tolerance=1e-8,
            max_iterations=50 if sol.method is CalculationMethod.newton_raphson else 100,
            output_component_types={C.sym_voltage_sensor: None, C.sym_power_sensor: None},
            threading=0,
            continue_on_batch_error=True,
        )
        volt, power = sol.volt, sol.power
        vo, po = out[C.sym_voltage_sensor], out[C.sym_power_sensor]
        rv = vo["u_residual"] / volt["u_sigma"]
        ra = np.nan_to_num(vo["u_angle_residual"] * volt["u_measured"] / volt["u_sigma"])
        rp = po["p_residual"] / power["p_sigma"]
        rq = po["q_residual"] / power["q_sigma"]
        v_pos = {int(pid): i for i, pid in enumerate(volt["id"])}
        p_pos = {int(pid): i for i, pid in enumerate(power["id"])}
        for i, (kind, row) in enumerate(cands):
            if kind == "v":  # the removed sensor adds nothing
                j = v_pos[int(s.voltage["id"][row])]
                rv[i, j] = ra[i, j] = 0.0
            elif i in pseudo_for:  # weighed as the pseudo-measurement it became
                j = p_pos[int(s.power["id"][row])]
                rp[i, j] *= power["p_sigma"][j] / s.power["p_sigma"][pseudo_for[i]]
                rq[i, j] *= power["q_sigma"][j] / s.power["q_sigma"][pseudo_for[i]]
            else:
                j = p_pos[int(s.power["id"][row])]
                rp[i, j] = rq[i, j] = 0.0
        objective = (rv**2).sum(axis=1) + (ra**2).sum(axis=1) + (rp**2).sum(axis=1)
        objective += (rq**2).sum(axis=1)
        failed = getattr(sol.model, "batch_error", None)
        if failed is not None:
            objective[np.asarray(failed.failed_scenarios, dtype=np.int64)] = np.inf
        return np.where(np.isfinite(objective), objective, np.inf)

    def _result(
        self,
        snap: MeasurementSnapshot,
        sol: _Solution,
        v_active: np.ndarray,
        p_active: np.ndarray,
        bad: list[BadData],
        t0: float,
        n_meas: int,
        n_pseudo: int,
    ) -> StateEstimate:
        s = self.sensors
        out = sol.out
        n_real_active = int(p_active[: s.n_real_p].sum())
        names = [s.names[i] for i in np.flatnonzero(v_active)]
        names += [s.names[len(s.v_keys) + i] for i in np.flatnonzero(p_active)[:n_real_active]]
        r_all = np.concatenate([sol.r_v, sol.r_p[:n_real_active]])
        pseudo_rows = np.flatnonzero(p_active[s.n_real_p :]) + s.n_real_p
        return StateEstimate(
            grid=snap.grid,
            t_ns=snap.t_ns,
            status=EstimateStatus.CONVERGED,
            solver=_METHOD_NAMES[sol.method],
            solve_ms=round((time.perf_counter() - t0) * 1e3, 3),
            n_measurements=n_meas,
            n_pseudo=n_pseudo,
            pseudo=[s.p_keys[i][1] for i in pseudo_rows] if len(pseudo_rows) < 200 else [],
            objective=round(sol.objective, 3),
            chi2_threshold=round(chi2_threshold(sol.dof, self.alpha), 3),
            bad_data=bad,
            max_r_norm=round(float(r_all.max(initial=0.0)), 3),
            buses=self.net.bus_states(out[C.node]),
            branches=self.net.branch_states(out[C.line], out[C.transformer]),
            residual_sensor=names,
            residual_norm=np.round(r_all, 3).tolist(),
        )

    def _failed(
        self,
        snap: MeasurementSnapshot,
        status: EstimateStatus,
        message: str,
        t0: float,
        n_meas: int,
        n_pseudo: int,
    ) -> StateEstimate:
        return StateEstimate(
            grid=snap.grid,
            t_ns=snap.t_ns,
            status=status,
            message=message,
            solve_ms=round((time.perf_counter() - t0) * 1e3, 3),
            n_measurements=n_meas,
            n_pseudo=n_pseudo,
        )


def _as_update(arr: np.ndarray, comp: ComponentType) -> np.ndarray:
    dtype = _UPDATE_DTYPE.get(comp)
    if dtype is None:
        dtype = _UPDATE_DTYPE[comp] = initialize_array(DatasetType.update, comp, 0).dtype
    upd = np.empty(len(arr), dtype=dtype)
    for field in dtype.names or ():
        upd[field] = arr[field]
    return upd
