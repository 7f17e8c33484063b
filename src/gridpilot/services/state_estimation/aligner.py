"""Aligns device reports into snapshots by timestamp (sans-IO; the clock is injected).

Reference devices (PMUs; RTUs when a placement has no PMU) set the snapshot instants: a snapshot
for instant t is emitted as soon as every reference device that is alive has reported t, or
when ``wait_s`` has passed since the first report of t. Slower devices contribute their latest
report while it is fresh enough; a slow device whose report has aged out (or that has not
reported within its first period) is listed missing, like a silent reference device, and so is
a device whose latest report holds only invalid values (quality INVALID: the estimator leaves
them out). A reference report for an instant already emitted is late: counted and dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gridpilot.core.schemas import DeviceKind, MeasurementSet, MeasurementSnapshot, Quality
from gridpilot.model.placement import Placement

ALIVE_S = 2.0  # a reference device silent this long (wall time) is not waited for
FRESH_PERIODS = 2.0  # a slow device's report is used while younger than this many periods
_INVALID = int(Quality.INVALID)


class Aligner:
    def __init__(
        self,
        placement: Placement,
        *,
        wait_s: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.grid = placement.grid
        kinds = {d.kind for d in placement.devices}
        ref_kind = DeviceKind.PMU if DeviceKind.PMU in kinds else DeviceKind.RTU
        self.reference = {d.id for d in placement.devices if d.kind is ref_kind}
        self.period_ns = {d.id: int(d.period_s * 1e9) for d in placement.devices}
        self.ref_period_s = min(
            (d.period_s for d in placement.devices if d.id in self.reference), default=1.0
        )
        self.wait_s = wait_s
        self.clock = clock
        self.latest: dict[str, MeasurementSet] = {}
        self.pending: dict[int, dict[str, MeasurementSet]] = {}
        self.first_seen: dict[int, float] = {}
        self.last_seen: dict[str, float] = {}
        self.invalid_only: set[str] = set()  # devices whose latest report has no valid value
        self.last_emitted_ns = -1
        self.first_emitted_ns: int | None = None
        self.late_dropped = 0
        self.unknown_sources = 0
        self._last_emit_wall = self.started = clock()

    def add(self, mset: MeasurementSet) -> list[MeasurementSnapshot]:
        now = self.clock()
        src = mset.source
        if src not in self.period_ns:
            self.unknown_sources += 1
            return []
        self.last_seen[src] = now
        if any(not m.quality & _INVALID for m in mset.measurements):
            self.invalid_only.discard(src)
        else:
            self.invalid_only.add(src)
        if src not in self.reference:
            prev = self.latest.get(src)
            if prev is None or mset.t_ns >= prev.t_ns:
                self.latest[src] = mset
            return []
        if mset.t_ns <= self.last_emitted_ns:
            self.late_dropped += 1
            return []
        self.pending.setdefault(mset.t_ns, {})[src] = mset
        self.first_seen.setdefault(mset.t_ns, now)
        # Wait for every reference device heard lately (or not yet heard, just after start).
        alive = {r for r in self.reference if now - self.last_seen.get(r, self.started) < ALIVE_S}
        if alive <= set(self.pending[mset.t_ns]):
            return self._emit_through(mset.t_ns)
        return []

    def poll(self) -> list[MeasurementSnapshot]:
        """Snapshots whose wait has run out; call a few times per reference period."""
        now = self.clock()
        due = [t for t, seen in self.first_seen.items() if now - seen >= self.wait_s]
        if due:
            return self._emit_through(max(due))
        # No reference device at all: estimate on the latest slow data once per period.
        if (
            not self.pending
            and self.latest
            and now - self._last_emit_wall > max(2.0, 2 * self.ref_period_s)
        ):
            t = max(m.t_ns for m in self.latest.values())
            if t > self.last_emitted_ns:
                return [self._snapshot(t, {})]
        return []

    def _emit_through(self, t_ns: int) -> list[MeasurementSnapshot]:
        out = []
        for t in sorted(k for k in self.pending if k <= t_ns):
            out.append(self._snapshot(t, self.pending.pop(t)))
            self.first_seen.pop(t, None)
        return out

    def _snapshot(self, t_ns: int, frames: dict[str, MeasurementSet]) -> MeasurementSnapshot:
        self.last_emitted_ns = t_ns
        self._last_emit_wall = self.clock()
        if self.first_emitted_ns is None:
            self.first_emitted_ns = t_ns
        measurements = [m for f in frames.values() for m in f.measurements]
        missing = set(self.reference - set(frames)) if frames else set(self.reference)
        missing |= self.invalid_only
        for src, period_ns in self.period_ns.items():
            if src in self.reference:
                continue
            mset = self.latest.get(src)
            if mset is None:
                if t_ns - self.first_emitted_ns > period_ns:
                    missing.add(src)  # should have reported by now
            elif -period_ns <= t_ns - mset.t_ns <= FRESH_PERIODS * period_ns:
                measurements.extend(mset.measurements)
            else:
                missing.add(src)
        late, self.late_dropped = self.late_dropped, 0
        return MeasurementSnapshot(
            grid=self.grid,
            t_ns=t_ns,
            measurements=measurements,
            missing_sources=sorted(missing),
            late_dropped=late,
        )
