"""Communication loss of field devices, free of I/O (the clock is passed in): which device has
not delivered valid data for longer than its kind allows.

A PMU or RTU is lost after ``SILENT_PERIODS`` data periods without a report; a DER inverter
(polled) or a smart meter (read by the head end) after one poll or read interval beyond the
report that was due, i.e. two periods after its last report. A report counts only when one of
its measurements is not invalid (IEC 61850 quality): a device that reports nothing but invalid
values measures nothing. A device not heard from since monitoring started is lost once
``START_GRACE_S`` plus its allowance have passed.

Devices are checked through a heap of deadlines, so a check touches only the devices whose
deadline has passed: thousands of meters cost nothing between their readings.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from gridpilot.core.schemas import AlarmKind, DeviceKind, Measurand, Severity
from gridpilot.model.placement import Device, Placement
from gridpilot.services.monitoring.table import Violation

SILENT_PERIODS = 3.0  # PMU, RTU: silent this many data periods is a communication loss
# DER inverter, meter head end: one poll/read interval beyond the due report (two periods)
LATE_PERIODS = 2.0
START_GRACE_S = 20.0  # after monitoring starts, time for the gateways to reach every device

_STREAMED = (DeviceKind.PMU, DeviceKind.RTU)
_NAMES = {
    DeviceKind.PMU: "PMU",
    DeviceKind.RTU: "RTU",
    DeviceKind.DER: "DER inverter",
    DeviceKind.METER: "smart meter",
}


def wall_period_s(device: Device, speed: float) -> float:
    """How often ``device`` reports in wall-clock seconds. PMUs stream at their data rate and
    DER inverters are polled every second whatever the simulation speed; RTUs (cyclic reports)
    and meters (read on the simulated clock) report every ``period_s`` simulated seconds."""
    if device.kind in (DeviceKind.PMU, DeviceKind.DER):
        return device.period_s
    return max(0.1, device.period_s / speed)


def allowance_s(device: Device, speed: float) -> float:
    """How long ``device`` may stay silent before it counts as lost."""
    periods = SILENT_PERIODS if device.kind in _STREAMED else LATE_PERIODS
    return periods * wall_period_s(device, speed)


def measures(device: Device, limit: int = 6) -> str:
    """What a device measures, for the alarm text: "voltage bus_12, power line_12_13 (from)"."""
    parts = [
        f"voltage {p.mrid}"
        if p.measurand is Measurand.VOLTAGE
        else f"power {p.mrid} ({p.terminal})"
        for p in device.points
    ]
    more = f" and {len(parts) - limit} more" if len(parts) > limit else ""
    return ", ".join(parts[:limit]) + more


@dataclass
class _State:
    device: Device
    allowance_s: float
    last_valid: float  # monotonic time of the last valid report (or of the start)
    last_report: float | None = None  # of any report, valid or not
    ever: bool = False


class CommWatch:
    def __init__(self, placement: Placement, *, speed: float, now: float) -> None:
        self.devices: dict[str, _State] = {}
        for d in placement.devices:
            # the start counts as a report, with the grace on top
            self.devices[d.id] = _State(d, allowance_s(d, speed), last_valid=now + START_GRACE_S)
        self.lost: set[str] = set()
        self._heap: list[tuple[float, str]] = [
            (s.last_valid + s.allowance_s, dev) for dev, s in self.devices.items()
        ]
        heapq.heapify(self._heap)

    def adopt_lost(self, devices: set[str]) -> None:
        """Devices whose comm_loss alarm is still raised (a restarted monitoring service):
        their first valid report clears it."""
        self.lost |= devices & set(self.devices)

    def heard(self, source: str, now: float, *, valid: bool) -> tuple[str, str] | None:
        """A report from ``source``; when a lost device is back, the id of its comm_loss
        alarm to clear and what to say, else None. Unknown sources: KeyError."""
        state = self.devices[source]
        state.last_report = now
        if not valid:
            return None
        first = not state.ever
        gap_s = now - state.last_valid
        state.last_valid = now
        state.ever = True
        if source in self.lost:
            self.lost.discard(source)
            heapq.heappush(self._heap, (now + state.allowance_s, source))
            name = _NAMES.get(state.device.kind, str(state.device.kind))
            after = f" after {gap_s:.1f} s" if not first else ""
            return f"{AlarmKind.COMM_LOSS}:{source}", f"{name} {source} reports again{after}"
        if first:  # its deadline moves before the start-up grace's: an entry for it
            heapq.heappush(self._heap, (now + state.allowance_s, source))
        return None

    def heard_all_but(self, missing: set[str], now: float) -> list[tuple[str, str]]:
        """Every device but ``missing`` delivered data (an estimate says so, on a hub): the
        comm_loss alarms to clear. Cheap for the devices already known to be alive."""
        backs = []
        lost = self.lost
        for dev, state in self.devices.items():
            if dev in missing:
                continue
            if state.ever and dev not in lost:
                state.last_valid = state.last_report = now
                continue
            back = self.heard(dev, now, valid=True)
            if back is not None:
                backs.append(back)
        return backs

    def excuse(self, now: float) -> None:
        """Monitoring itself could not hear (its broker connection was down): silence until
        now is not the devices' fault, every allowance starts again from now."""
        for dev, state in self.devices.items():
            if dev not in self.lost:
                state.last_valid = max(state.last_valid, now)
        # the old deadlines are checked against last_valid when they come up

    def check(self, now: float) -> list[Violation]:
        """Devices lost since the last check."""
        out: list[Violation] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, dev = heapq.heappop(heap)
            state = self.devices[dev]
            if dev in self.lost:
                continue  # back on the heap when it is heard again
            deadline = state.last_valid + state.allowance_s
            if deadline > now:
                heapq.heappush(heap, (deadline, dev))
                continue
            self.lost.add(dev)
            out.append(self._violation(state, now))
        return out

    def _violation(self, state: _State, now: float) -> Violation:
        d = state.device
        period = state.allowance_s / (SILENT_PERIODS if d.kind in _STREAMED else LATE_PERIODS)
        if not state.ever and state.last_report is None:
            why = "not heard from since monitoring started"
        elif state.last_report is not None and now - state.last_report < state.allowance_s:
            why = "reports only invalid values"
        else:
            why = f"silent for {now - state.last_valid:.1f} s"
        message = (
            f"{_NAMES.get(d.kind, str(d.kind))} {d.id} lost: {why} "
            f"(reports every {period:g} s); no data for {measures(d)}"
        )
        silent_s = now - state.last_valid if state.ever else state.allowance_s
        return Violation(
            AlarmKind.COMM_LOSS, d.id, silent_s, state.allowance_s, Severity.WARNING, message
        )
