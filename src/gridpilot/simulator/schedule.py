"""When each virtual device reports: every device once at start, then on its period; smart
meters are staggered over their period as a head-end system would poll them."""

from __future__ import annotations

from gridpilot.core.schemas import DeviceKind
from gridpilot.model.placement import Device, Placement

_TOL_S = 1e-6
_STAGGER = 7.919  # seconds between consecutive meters' offsets (wrapped into the period)


class Schedule:
    def __init__(self, placement: Placement, t0_s: float) -> None:
        self.devices = placement.devices
        self.next_due = {d.id: t0_s for d in self.devices}
        self._offset = {
            d.id: (i * _STAGGER) % d.period_s
            for i, d in enumerate(self.devices)
            if d.kind is DeviceKind.METER
        }
        self._started: set[str] = set()

    def due(self, t_s: float) -> list[Device]:
        """The devices that report at ``t_s``; advances their schedule."""
        out = []
        for d in self.devices:
            if self.next_due[d.id] > t_s + _TOL_S:
                continue
            if d.id not in self._started and d.id in self._offset:
                nxt = t_s + (self._offset[d.id] or d.period_s)
            else:
                nxt = self.next_due[d.id] + d.period_s
            if nxt <= t_s + _TOL_S:  # fell behind (high speed): skip ahead
                nxt = t_s + d.period_s
            self._started.add(d.id)
            self.next_due[d.id] = nxt
            out.append(d)
        return out
