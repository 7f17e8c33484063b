"""Conditions other services report (``gp.<grid>.condition.<source>``), free of I/O.

An active condition raises (or keeps) its alarm, an inactive one clears it. Reporters re-send
active conditions every ``CONDITION_REPEAT_S``; one not heard for ``EXPIRE_REPEATS`` of those
is cleared as no longer reported: a reporter that crashed or restarted without the condition
never sends the inactive report, and its alarm must not stay raised for ever.
"""

from __future__ import annotations

from dataclasses import dataclass

from gridpilot.core.schemas import CONDITION_REPEAT_S, Condition
from gridpilot.services.monitoring.table import Violation

EXPIRE_REPEATS = 3  # repeats missed before a condition counts as ended
EXPIRE_S = EXPIRE_REPEATS * CONDITION_REPEAT_S


@dataclass
class _Seen:
    last: float  # monotonic time of the last active report
    reporter: str


class ConditionWatch:
    def __init__(self, *, expire_s: float = EXPIRE_S) -> None:
        self.expire_s = expire_s
        self.active: dict[str, _Seen] = {}

    def adopt(self, alarm_ids: set[str], now: float) -> None:
        """Raised alarms that came from conditions (a restarted monitoring service): their
        reporters re-send them within a repeat, or they expire."""
        for alarm_id in alarm_ids:
            self.active.setdefault(alarm_id, _Seen(now, "its reporter"))

    def report(self, cond: Condition, now: float) -> Violation:
        """The violation a report stands for; its ``id`` is the alarm to raise or clear."""
        v = Violation(cond.kind, cond.mrid, cond.value, cond.limit, cond.severity, cond.message)
        if cond.active:
            self.active[v.id] = _Seen(now, cond.reporter or "its reporter")
        else:
            self.active.pop(v.id, None)
        return v

    def expired(self, now: float) -> list[tuple[str, str]]:
        """Conditions not re-sent in time: (alarm id, why it clears)."""
        out = []
        for alarm_id, seen in list(self.active.items()):
            if now - seen.last > self.expire_s:
                del self.active[alarm_id]
                out.append(
                    (alarm_id, f"no longer reported by {seen.reporter} (for {self.expire_s:g} s)")
                )
        return out
