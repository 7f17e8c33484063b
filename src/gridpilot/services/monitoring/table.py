"""The alarm table of one grid, free of I/O: deduplicated alarms with a raise/clear/acknowledge
life cycle. Each detector owns some alarm kinds: the limit checker raises and clears its kinds
estimate by estimate (with a debounce), the others set one alarm active or inactive."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import msgspec

from gridpilot.core.schemas import Alarm, AlarmKind, AlarmState, Severity

RAISE_AFTER = 3  # consecutive estimates in violation before a limit alarm is raised

# What one estimate says something about: limits (when it converged) and observability.
LIMIT_KINDS = frozenset(
    {AlarmKind.VOLTAGE_HIGH, AlarmKind.VOLTAGE_LOW, AlarmKind.OVERLOAD, AlarmKind.NOT_OBSERVABLE}
)


@dataclass(frozen=True)
class Violation:
    """A condition that holds now: the alarm ``<kind>:<mrid>`` should be raised (or stay)."""

    kind: AlarmKind
    mrid: str
    value: float
    limit: float
    severity: Severity
    message: str = ""

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.mrid}"


class AlarmTable:
    """Active alarms of one grid; an alarm leaves once it is cleared and acknowledged."""

    def __init__(self, grid: str, alarms: list[Alarm] | None = None) -> None:
        self.grid = grid
        self.alarms: dict[str, Alarm] = {a.id: a for a in alarms or []}
        self.pending: dict[str, int] = {}

    def raised_ids(self) -> set[str]:
        return {k for k, a in self.alarms.items() if a.state is AlarmState.RAISED}

    def raised(self, kind: AlarmKind) -> list[Alarm]:
        return [a for a in self.alarms.values() if a.kind is kind and a.state is AlarmState.RAISED]

    def update(
        self,
        violations: list[Violation],
        t_ns: int,
        *,
        scope: Iterable[AlarmKind] = LIMIT_KINDS,
        immediate: Iterable[AlarmKind] = (),
    ) -> list[Alarm]:
        """Apply what one estimate found for the kinds in ``scope``: a violation raises its
        alarm after RAISE_AFTER estimates in a row (at once for kinds in ``immediate``), a
        raised alarm of those kinds without a violation clears. Alarms of other kinds are left
        alone. Returns the alarms whose state changed."""
        kinds = frozenset(scope)
        at_once = frozenset(immediate)
        changed: list[Alarm] = []
        now = {v.id: v for v in violations}
        for vid in list(self.pending):
            if vid not in now and vid.split(":", 1)[0] in kinds:
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
            if self.pending[vid] >= RAISE_AFTER or v.kind in at_once:
                del self.pending[vid]
                changed.append(self._raise(v, t_ns))
        for aid, alarm in list(self.alarms.items()):
            if alarm.kind in kinds and alarm.state is AlarmState.RAISED and aid not in now:
                changed.append(self._clear(alarm, t_ns))
        return changed

    def activate(self, v: Violation, t_ns: int) -> Alarm | None:
        """Raise ``v``'s alarm now, or keep it raised (a new severity, value or message is a
        change); None when nothing changed."""
        current = self.alarms.get(v.id)
        if current is None or current.state is not AlarmState.RAISED:
            return self._raise(v, t_ns)
        if current.severity is v.severity and current.message == (v.message or current.message):
            return None
        return self._set(
            current,
            severity=v.severity,
            value=round(v.value, 4),
            limit=v.limit,
            message=v.message or current.message,
            t_ns=t_ns,
        )

    def clear(self, alarm_id: str, t_ns: int, *, message: str = "") -> Alarm | None:
        """Clear a raised alarm (it stays listed until acknowledged); None if not raised."""
        alarm = self.alarms.get(alarm_id)
        if alarm is None or alarm.state is not AlarmState.RAISED:
            return None
        return self._clear(alarm, t_ns, message=message)

    def acknowledge(self, alarm_id: str, user: str, t_ns: int) -> Alarm:
        alarm = self.alarms.get(alarm_id)
        if alarm is None:
            raise KeyError(alarm_id)
        acked = self._set(alarm, acknowledged=True, acknowledged_by=user, t_ns=t_ns)
        if acked.state is AlarmState.CLEARED:
            del self.alarms[alarm_id]
        return acked

    def _raise(self, v: Violation, t_ns: int) -> Alarm:
        alarm = Alarm(
            id=v.id,
            grid=self.grid,
            kind=v.kind,
            mrid=v.mrid,
            state=AlarmState.RAISED,
            severity=v.severity,
            value=round(v.value, 4),
            limit=v.limit,
            raised_t_ns=t_ns,
            t_ns=t_ns,
            message=v.message,
        )
        self.alarms[v.id] = alarm
        return alarm

    def _clear(self, alarm: Alarm, t_ns: int, *, message: str = "") -> Alarm:
        cleared = self._set(
            alarm, state=AlarmState.CLEARED, t_ns=t_ns, message=message or alarm.message
        )
        if cleared.acknowledged:
            del self.alarms[alarm.id]
        return cleared

    def _set(self, alarm: Alarm, **changes: object) -> Alarm:
        new = msgspec.structs.replace(alarm, **changes)
        self.alarms[alarm.id] = new
        return new
