"""The state estimator: one measurement snapshot in, one StateEstimate out.

Weighted least squares on power-grid-model (``solver.py``) with what it lacks added around it:
pseudo-measurements from profiles for loads and generators without a fresh measurement;
detection of gross errors by a chi-square test on the objective and a weighted-residual
test; identification by elimination — take out each suspect (the largest weighted residuals
and every measurement at the same nodes), re-estimate, keep the removal that lowers the
objective most. Nothing here raises for a bad snapshot: every outcome is a StateEstimate with
a status.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping

import numpy as np
from power_grid_model import CalculationMethod, ComponentType
from power_grid_model.errors import NotObservableError, PowerGridError  # type: ignore[attr-defined]

from gridpilot.core.schemas import (
    BadData,
    EstimateStatus,
    Measurand,
    MeasurementSnapshot,
    StateEstimate,
)
from gridpilot.model.grid import GridModel
from gridpilot.model.pgm import Island, PgmNetwork
from gridpilot.model.placement import Placement
from gridpilot.model.sensors import SensorTable, chi2_threshold
from gridpilot.services.state_estimation.solver import Solution, Solver, Values

C = ComponentType
_INVALID = 1  # Quality.INVALID as a plain int: IntFlag arithmetic is slow per measurement
_METHOD_NAMES = {
    CalculationMethod.iterative_linear: "iterative_linear",
    CalculationMethod.newton_raphson: "newton_raphson",
}
Removal = tuple[str, int, float, Solution]  # kind ("v"/"p"), sensor row, r_norm, re-estimate
VERIFY = 3  # candidates re-estimated for real, best batch objectives first


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
        self.log = logging.getLogger("gridpilot.state_estimation")
        self.alpha = alpha
        self.r_max = r_max
        self.max_bad_data = max_bad_data
        self.candidates = candidates
        self.max_candidates = max_candidates
        self._cache_size = cache_size
        self.set_topology(closed or {})

    def set_topology(self, closed: Mapping[str, bool]) -> None:
        """Rebuild the calculation model for new switch states."""
        self.net = PgmNetwork(self.model, closed=closed)
        self.sensors = SensorTable(self.net, self.placement)
        self.solver = Solver(
            self.net, self.sensors, f_hz=self.model.f_hz, cache_size=self._cache_size
        )
        self.dead_islands = [i for i in self.net.islands() if not i.energised]
        self.dead_note = _dead_note(self.dead_islands)

    @property
    def closed(self) -> dict[str, bool]:
        return dict(self.net.closed)

    # -- estimation -------------------------------------------------------------------------
    def estimate(self, snapshot: MeasurementSnapshot) -> StateEstimate:
        t0 = time.perf_counter()
        s = self.sensors
        values, v_active, p_active = self._values(snapshot)
        n_pseudo = int(p_active[s.n_real_p :].sum())
        n_meas = int(v_active.sum() + p_active[: s.n_real_p].sum())
        if not v_active.any():
            return self._failed(
                snapshot,
                EstimateStatus.NOT_OBSERVABLE,
                "not observable: no voltage measurement (PMU or RTU) in this "
                "snapshot; at least one is needed as the voltage reference",
                t0,
                n_meas,
                n_pseudo,
            )
        bad: list[BadData] = []
        try:
            sol = self.solver.solve(v_active, p_active, values)
            while len(bad) < self.max_bad_data and self._suspicious(sol, p_active):
                found = self._identify(sol, values, v_active, p_active)
                if found is None:
                    break
                kind, row, r_norm, sol = found
                v_active, p_active = self._without(kind, row, v_active, p_active)
                bad.append(self._bad_data(kind, row, r_norm))
        except NotObservableError as exc:
            message = (
                f"not observable with {n_meas} measurements and {n_pseudo} "
                f"pseudo-measurements: {str(exc).splitlines()[0]}"
            )
            return self._failed(
                snapshot, EstimateStatus.NOT_OBSERVABLE, message, t0, n_meas, n_pseudo
            )
        except PowerGridError as exc:
            return self._failed(
                snapshot, EstimateStatus.DIVERGED, str(exc).splitlines()[0], t0, n_meas, n_pseudo
            )
        return self._result(snapshot, sol, p_active, bad, t0, n_meas, n_pseudo)

    def _values(self, snapshot: MeasurementSnapshot) -> tuple[Values, np.ndarray, np.ndarray]:
        """The snapshot on the sensor rows, and which rows (real or pseudo) are active."""
        s = self.sensors
        # Lists first, then one write per array: element writes into numpy arrays cost more
        # than the solve on small grids.
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
        n_v, n_p = len(s.v_keys), len(s.p_keys)
        u = np.full(n_v, np.nan)
        u[v_rows] = np.asarray(v_vals) * s.v_rated[v_rows]
        angle = np.full(n_v, np.nan)
        angle[a_rows] = np.radians(a_vals)
        p = np.full(n_p, np.nan)
        q = np.full(n_p, np.nan)
        p[p_rows] = np.asarray(p_vals) * 1e6
        q[p_rows] = np.asarray(q_vals) * 1e6
        age = np.zeros(n_p)
        age[p_rows] = np.maximum(0.0, (snapshot.t_ns - np.asarray(p_t, dtype=np.int64)) / 1e9)
        p[s.n_real_p :], q[s.n_real_p :] = s.pseudo_values(snapshot.t_ns / 1e9)
        # a meter reading weighs less as it ages: the load has moved on since
        p_sigma = s.p_sigma + s.drift_per_s * age * s.p_rating * s.p_meter
        v_active = ~np.isnan(u)
        real = ~np.isnan(p[: s.n_real_p])
        p_active = np.ones(n_p, dtype=bool)
        p_active[: s.n_real_p] = real
        p_active[s.covers[real & (s.covers >= 0)]] = False
        values = Values(u=u, angle=angle, u_sigma=s.v_sigma, p=p, q=q, p_sigma=p_sigma)
        return values, v_active, p_active

    # -- bad data -----------------------------------------------------------------------------
    def _suspicious(self, sol: Solution, p_active: np.ndarray) -> bool:
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
        stand_in = self._stand_in(row)
        if stand_in >= 0:
            covers = self.sensors.covers
            pa[stand_in] = not (pa[: len(covers)] & (covers == stand_in)).any()
        return va, pa

    def _stand_in(self, row: int) -> int:
        covers = self.sensors.covers
        return int(covers[row]) if row < len(covers) else -1

    def _identify(
        self, sol: Solution, values: Values, v_active: np.ndarray, p_active: np.ndarray
    ) -> Removal | None:
        """Try taking out each suspect; keep the removal whose re-estimate fits best.

        Suspects are the largest weighted residuals and every real measurement at the same
        nodes: a precise measurement in error pulls the estimate towards itself and pushes
        its residual onto less precise neighbours, so the culprit is near the largest residuals
        but not always among them (what normalised residuals would reveal).
        """
        s = self.sensors
        v_rows = sol.sensors.v_rows
        p_rows = sol.sensors.p_rows
        ranked = [("v", int(v_rows[i]), float(sol.r_v[i])) for i in range(len(v_rows))]
        ranked += [
            ("p", int(p_rows[i]), float(sol.r_p[i])) for i in np.flatnonzero(p_rows < s.n_real_p)
        ]
        ranked.sort(key=lambda c: -c[2])
        top = ranked[: self.candidates]
        nodes = {n for kind, row, _ in top for n in (s.v_nodes if kind == "v" else s.p_nodes)[row]}
        cands = [(kind, row) for kind, row, _ in top]
        for kind, row, _ in ranked[self.candidates :]:
            if nodes.intersection((s.v_nodes if kind == "v" else s.p_nodes)[row]):
                cands.append((kind, row))
        cands = cands[: self.max_candidates]
        stand_in = {
            i: self._stand_in(row)
            for i, (kind, row) in enumerate(cands)
            if kind == "p" and self._stand_in(row) >= 0
        }
        objectives = self.solver.trials(sol, values, cands, stand_in)
        if self.log.isEnabledFor(logging.DEBUG):
            ranked_out = sorted(zip(objectives.tolist(), cands, strict=True))[:5]
            self.log.debug("removal trials", extra={"objective": sol.objective, "best": ranked_out})
        best: Removal | None = None
        for k in np.argsort(objectives)[:VERIFY]:
            if not np.isfinite(objectives[k]):
                break  # taking it out loses observability or convergence: keep it
            kind, row = cands[k]
            va, pa = self._without(kind, row, v_active, p_active)
            try:
                trial = self.solver.solve(va, pa, values)
            except PowerGridError:
                continue
            # How far off it was: the square root of the objective's drop on removal, the
            # size in sigmas of its deleted residual (robust where leverage hides it).
            removal = kind, row, math.sqrt(max(0.0, sol.objective - trial.objective)), trial
            if best is None or trial.objective < best[3].objective:
                best = removal
            # The batch ranks; a real re-estimate confirms. Stop once they agree.
            if trial.objective <= 1.1 * objectives[k] + 1.0:
                break
            self.log.info(
                "removal trial not confirmed",
                extra={
                    "sensor": self._bad_data(kind, row, 0.0).sensor,
                    "batch_objective": float(objectives[k]),
                    "objective": trial.objective,
                },
            )
        return best

    def _bad_data(self, kind: str, row: int, r_norm: float) -> BadData:
        s = self.sensors
        if kind == "v":
            source, mrid = s.v_keys[row]
            return BadData(
                sensor=s.names[row],
                mrid=mrid,
                source=source,
                measurand=Measurand.VOLTAGE,
                r_norm=round(r_norm, 2),
            )
        source, mrid, _terminal = s.p_keys[row]
        return BadData(
            sensor=s.names[len(s.v_keys) + row],
            mrid=mrid,
            source=source,
            measurand=Measurand.POWER,
            r_norm=round(r_norm, 2),
        )

    # -- results ------------------------------------------------------------------------------
    def _result(
        self,
        snap: MeasurementSnapshot,
        sol: Solution,
        p_active: np.ndarray,
        bad: list[BadData],
        t0: float,
        n_meas: int,
        n_pseudo: int,
    ) -> StateEstimate:
        s = self.sensors
        out = sol.out
        n_real = int(p_active[: s.n_real_p].sum())
        r_all = np.concatenate([sol.r_v, sol.r_p[:n_real]])
        pseudo_rows = sol.sensors.p_rows[n_real:]
        return StateEstimate(
            grid=snap.grid,
            t_ns=snap.t_ns,
            status=EstimateStatus.CONVERGED,
            message=self.dead_note,
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
            residual_sensor=sol.sensors.names,
            residual_norm=np.round(r_all, 3).tolist(),
            missing_sources=snap.missing_sources,
            late_dropped=snap.late_dropped,
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
            message=f"{message}; {self.dead_note}" if self.dead_note else message,
            solve_ms=round((time.perf_counter() - t0) * 1e3, 3),
            n_measurements=n_meas,
            n_pseudo=n_pseudo,
            missing_sources=snap.missing_sources,
            late_dropped=snap.late_dropped,
        )


def _dead_note(islands: list[Island]) -> str:
    """The de-energised parts of the grid as the switch states make them, for the estimate's
    message: estimated as dead (zero), their measurements left out."""
    if not islands:
        return ""
    n = sum(len(i.buses) for i in islands)
    names = ", ".join(f"{i.name} ({len(i.buses)} buses)" for i in islands[:5])
    more = f" and {len(islands) - 5} more" if len(islands) > 5 else ""
    return f"{n} buses de-energised (no source) in {len(islands)} islands: {names}{more}"
