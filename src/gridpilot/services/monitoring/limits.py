"""Alarm logic, free of I/O: violations of voltage band and thermal limits in one estimate,
turned into deduplicated alarms with debounce, hysteresis and acknowledgement."""

from __future__ import annotations

from dataclasses import dataclass

from gridpilot.core.schemas import (
    Alarm,
    AlarmKind,
    AlarmState,
    EstimateStatus,
    Severity,
    StateEstimate,
)
from gridpilot.model.grid import GridModel

RAISE_AFTER = 3  # consecutive estimates in violation before an alarm is raised
V_HYSTERESIS_PU = 0.005
LOADING_HYSTERESIS_PCT = 5.0
OVERLOAD_PCT = 100.0
OVERLOAD_CRITICAL_PCT = 120.0
V_CRITICAL_MARGIN_PU = 0.05


@dataclass(frozen=True)
class Violation:
    kind: AlarmKind
    mrid: str
    value: float
    limit: float
    severity: Severity

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.mrid}"


class LimitChecker:
    def __init__(self, model: GridModel) -> None:
        self.grid = model.name
        self.v_min = {b.id: b.v_min_pu for b in model.buses}
        self.v_max = {b.id: b.v_max_pu for b in model.buses}

    def violations(self, est: StateEstimate, active: set[str]) -> list[Violation]:
        """Limit violations; an active alarm keeps violating until inside its hysteresis."""
        out: list[Violation] = []
        if est.status is not EstimateStatus.CONVERGED or est.buses is None:
            out.append(Violation(AlarmKind.NOT_OBSERVABLE, est.grid, 0.0, 0.0, Severity.WARNING))
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
                out.append(Violation(AlarmKind.VOLTAGE_HIGH, bus, v, hi, sev))
            elif v < lo_eff:
                sev = Severity.CRITICAL if v < lo - V_CRITICAL_MARGIN_PU else Severity.WARNING
                out.append(Violation(AlarmKind.VOLTAGE_LOW, bus, v, lo, sev))
        if est.branches is not None:
            for br, loading in zip(est.branches.id, est.branches.loading_pct, strict=True):
                limit = OVERLOAD_PCT
                eff = limit - LOADING_HYSTERESIS_PCT if f"overload:{br}" in active else limit
                if loading > eff:
                    sev = Severity.CRITICAL if loading > OVERLOAD_CRITICAL_PCT else Severity.WARNING
                    out.append(Violation(AlarmKind.OVERLOAD, br, loading, limit, sev))
        return out


class AlarmTable:
    """Active alarms of one grid; an alarm leaves once it is cleared and acknowledged."""

    def __init__(self, grid: str, alarms: list[Alarm] | None = None) -> None:
        self.grid = grid
        self.alarms: dict[str, Alarm] = {a.id: a for a in alarms or []}
        self.pending: dict[str, int] = {}

    def raised_ids(self) -> set[str]:
        return {k for k, a in self.alarms.items() if a.state is AlarmState.RAISED}

    def update(self, violations: list[Violation], t_ns: int) -> list[Alarm]:
        """Apply one estimate's violations; returns the alarms whose state changed."""
        changed: list[Alarm] = []
        now = {v.id: v for v in violations}
        for vid in list(self.pending):
            if vid not in now:
                del self.pending[vid]
        for vid, v in now.items():
            current = self.alarms.get(vid)
            if current is not None and current.state is AlarmState.RAISED:
                if current.severity is not v.severity:
                    changed.append(
                        self._set(current, severity=v.severity, value=v.value, t_ns=t_ns)
                    )
                continue
            self.pending[vid] = self.pending.get(vid, 0) + 1
            if self.pending[vid] >= RAISE_AFTER or v.kind is AlarmKind.NOT_OBSERVABLE:
                del self.pending[vid]
                alarm = Alarm(
                    id=vid,
                    grid=self.grid,
                    kind=v.kind,
                    mrid=v.mrid,
                    state=AlarmState.RAISED,
                    severity=v.severity,
                    value=round(v.value, 4),
                    limit=v.limit,
                    raised_t_ns=t_ns,
                    t_ns=t_ns,
                    message=_message(v),
                )
                self.alarms[vid] = alarm
                changed.append(alarm)
        for aid, alarm in list(self.alarms.items()):
            if alarm.state is AlarmState.RAISED and aid not in now:
                cleared = self._set(alarm, state=AlarmState.CLEARED, t_ns=t_ns)
                changed.append(cleared)
                if cleared.acknowledged:
                    del self.alarms[aid]
        return changed

    def acknowledge(self, alarm_id: str, user: str, t_ns: int) -> Alarm:
        alarm = self.alarms.get(alarm_id)
        if alarm is None:
            raise KeyError(alarm_id)
        acked = self._set(alarm, acknowledged=True, acknowledged_by=user, t_ns=t_ns)
        if acked.state is AlarmState.CLEARED:
            del self.alarms[alarm_id]
        return acked

    def _set(self, alarm: Alarm, **changes: object) -> Alarm:
        import msgspec

        new = msgspec.structs.replace(alarm, **changes)
        self.alarms[alarm.id] = new
        return new


def _message(v: Violation) -> str:
    if v.kind is AlarmKind.NOT_OBSERVABLE:
        return "state estimation has no valid result: grid not observable or not converging"
    if v.kind is AlarmKind.OVERLOAD:
        return f"{v.mrid} loaded {v.value:.1f} % (limit {v.limit:.0f} %)"
    word = "above" if v.kind is AlarmKind.VOLTAGE_HIGH else "below"
    return f"{v.mrid} voltage {v.value:.4f} p.u. {word} limit {v.limit:.3f} p.u."
