"""Limit checks, free of I/O: violations of voltage band and thermal limits in one estimate
(with hysteresis), and when failed estimates become a not_observable alarm."""

from __future__ import annotations

from gridpilot.core.schemas import (
    Alarm,
    AlarmKind,
    EstimateStatus,
    Severity,
    StateEstimate,
)
from gridpilot.model.grid import GridModel
from gridpilot.services.monitoring.table import RAISE_AFTER, AlarmTable, Violation

__all__ = ["RAISE_AFTER", "AlarmTable", "EstimateCheck", "LimitChecker", "Violation"]

V_HYSTERESIS_PU = 0.005
LOADING_HYSTERESIS_PCT = 5.0
OVERLOAD_PCT = 100.0
OVERLOAD_CRITICAL_PCT = 120.0
V_CRITICAL_MARGIN_PU = 0.05

# Failed estimates raise not_observable once they have lasted this long without a good one in
# between: one failed solve (a topology change, a burst of late data) is no news for an
# operator, three seconds without a view of the grid are (30 estimates at the PMU rate).
NOT_OBSERVABLE_AFTER_S = 3.0
# Until the first good estimate since monitoring started, failures are the start-up's: the
# estimator runs on the first reports while the gateways are still connecting to the field
# devices. Missing data shows as comm_loss alarms after their own grace, so not_observable
# waits this long after start before it may be raised at all.
STARTUP_GRACE_S = 30.0


class LimitChecker:
    def __init__(self, model: GridModel) -> None:
        self.grid = model.name
        self.v_min = {b.id: b.v_min_pu for b in model.buses}
        self.v_max = {b.id: b.v_max_pu for b in model.buses}

    def violations(self, est: StateEstimate, active: set[str]) -> list[Violation]:
        """Limit violations; an active alarm keeps violating until inside its hysteresis."""
        out: list[Violation] = []
        if est.status is not EstimateStatus.CONVERGED or est.buses is None:
            message = "state estimation has no valid result: grid not observable or not converging"
            if est.message:
                message += f" ({est.message})"
            out.append(
                Violation(AlarmKind.NOT_OBSERVABLE, est.grid, 0.0, 0.0, Severity.WARNING, message)
            )
            return out
        b = est.buses
        for bus, v in zip(b.id, b.v_pu, strict=True):
            if v <= 0.0:
                continue  # de-energised
            hi = self.v_max.get(bus, 1.05)
            lo = self.v_min.get(bus, 0.95)
            hi_eff = hi - V_HYSTERESIS_PU if f"voltage_high:{bus}" in active else hi
            lo_eff = lo + V_HYSTERESIS_PU if f"voltage_low:{bus}" in active else lo
            if v > hi_eff:
                sev = Severity.CRITICAL if v > hi + V_CRITICAL_MARGIN_PU else Severity.WARNING
                out.append(_violation(AlarmKind.VOLTAGE_HIGH, bus, v, hi, sev))
            elif v < lo_eff:
                sev = Severity.CRITICAL if v < lo - V_CRITICAL_MARGIN_PU else Severity.WARNING
                out.append(_violation(AlarmKind.VOLTAGE_LOW, bus, v, lo, sev))
        if est.branches is not None:
            for br, loading in zip(est.branches.id, est.branches.loading_pct, strict=True):
                limit = OVERLOAD_PCT
                eff = limit - LOADING_HYSTERESIS_PCT if f"overload:{br}" in active else limit
                if loading > eff:
                    sev = Severity.CRITICAL if loading > OVERLOAD_CRITICAL_PCT else Severity.WARNING
                    out.append(_violation(AlarmKind.OVERLOAD, br, loading, limit, sev))
        return out


class EstimateCheck:
    """What one estimate does to the alarm table: limit alarms from a good estimate, and
    not_observable from failed ones that lasted (see NOT_OBSERVABLE_AFTER_S and
    STARTUP_GRACE_S). A failed estimate says nothing about limits: their alarms stay as
    they are until the next good one."""

    def __init__(self, model: GridModel, *, started: float) -> None:
        self.checker = LimitChecker(model)
        self.started = started
        self.failing_since: float | None = None
        self.seen_good = False

    def apply(self, est: StateEstimate, table: AlarmTable, now: float) -> list[Alarm]:
        """Update ``table`` with ``est`` (``now``: monotonic seconds); the changed alarms."""
        good = est.status is EstimateStatus.CONVERGED and est.buses is not None
        if good:
            self.failing_since = None
            self.seen_good = True
            return table.update(self.checker.violations(est, table.raised_ids()), est.t_ns)
        if self.failing_since is None:
            self.failing_since = now
        raised = bool(table.raised(AlarmKind.NOT_OBSERVABLE))
        lasted = now - self.failing_since >= NOT_OBSERVABLE_AFTER_S
        started_up = self.seen_good or now - self.started >= STARTUP_GRACE_S
        if not raised and not (lasted and started_up):
            return []
        scope = immediate = (AlarmKind.NOT_OBSERVABLE,)
        violations = self.checker.violations(est, table.raised_ids())
        return table.update(violations, est.t_ns, scope=scope, immediate=immediate)


def _violation(kind: AlarmKind, mrid: str, value: float, limit: float, sev: Severity) -> Violation:
    return Violation(kind, mrid, value, limit, sev, _message(kind, mrid, value, limit))


def _message(kind: AlarmKind, mrid: str, value: float, limit: float) -> str:
    if kind is AlarmKind.OVERLOAD:
        return f"{mrid} loaded {value:.1f} % (limit {limit:.0f} %)"
    word = "above" if kind is AlarmKind.VOLTAGE_HIGH else "below"
    return f"{mrid} voltage {value:.4f} p.u. {word} limit {limit:.3f} p.u."
