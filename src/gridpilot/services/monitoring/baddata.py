"""Bad-data alarms, free of I/O: the measurements the estimator removed as gross errors
(``StateEstimate.bad_data``), one alarm per device (``bad_data:<device>``) naming the
equipment and the normalised residual.

Raised once a device has a removed measurement in ``RAISE_AFTER`` converged estimates in a
row. The estimator tests at 4 sigma, and with a few dozen sensors at ten estimates a second
plain noise crosses that now and then: on cigre_mv about one removal every 20 s, each in a
single estimate. A gross error stays, so three estimates in a row (0.3 s at the PMU rate) keep
the noise out and the real errors in.

Cleared after ``CLEAR_AFTER`` converged estimates in a row without a removal from the device:
ten estimates are a second at the PMU rate and at least one fresh RTU or inverter report, so
a gross error whose residual hovers near the threshold (removed in most estimates, missed in
one) does not clear and raise again (flap) with every miss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gridpilot.core.schemas import AlarmKind, BadData, EstimateStatus, Severity, StateEstimate
from gridpilot.services.monitoring.table import Violation

RAISE_AFTER = 3  # converged estimates in a row with a removal from the device
CLEAR_AFTER = 10  # converged estimates in a row without one


@dataclass
class _Device:
    flagged: int = 0  # estimates in a row with a removal
    clean: int = 0  # estimates in a row without one, while raised
    raised: bool = False
    worst: dict[str, float] = field(default_factory=dict)  # equipment -> largest r_norm seen


def _label(b: BadData) -> str:
    """The measurement: "power line_1_2 (from)", "voltage bus_5"."""
    terminal = b.sensor.rsplit("/", 1)[-1] if b.sensor.count("/") >= 3 else ""
    if b.measurand == "voltage" or not terminal:
        return f"{b.measurand} {b.mrid}"
    return f"{b.measurand} {b.mrid} ({terminal})"


class BadDataWatch:
    def __init__(self) -> None:
        self.devices: dict[str, _Device] = {}

    def adopt_raised(self, devices: set[str]) -> None:
        """Devices whose bad_data alarm is still raised (a restarted monitoring service)."""
        for dev in devices:
            self.devices.setdefault(dev, _Device()).raised = True

    def update(self, est: StateEstimate) -> tuple[list[Violation], list[tuple[str, str]]]:
        """The bad_data alarms to raise (or update), and those to clear (id, what to say),
        after ``est``."""
        if est.status is not EstimateStatus.CONVERGED:
            return [], []  # no fit, no residuals: neither evidence nor a clean estimate
        now: dict[str, dict[str, float]] = {}
        for b in est.bad_data:
            seen = now.setdefault(b.source, {})
            label = _label(b)
            seen[label] = max(seen.get(label, 0.0), b.r_norm)
        to_raise: list[Violation] = []
        to_clear: list[tuple[str, str]] = []
        for dev, removed in now.items():
            state = self.devices.setdefault(dev, _Device())
            state.flagged += 1
            state.clean = 0
            grew = not removed.keys() <= state.worst.keys()
            for label, r in removed.items():
                state.worst[label] = max(state.worst.get(label, 0.0), r)
            if (state.raised and grew) or (not state.raised and state.flagged >= RAISE_AFTER):
                state.raised = True
                to_raise.append(self._violation(dev, state))
        for dev, state in list(self.devices.items()):
            if dev in now:
                continue
            state.flagged = 0
            if not state.raised:
                del self.devices[dev]
                continue
            state.clean += 1
            if state.clean >= CLEAR_AFTER:
                del self.devices[dev]
                why = f"no measurement of {dev} removed in {CLEAR_AFTER} estimates in a row"
                to_clear.append((f"{AlarmKind.BAD_DATA}:{dev}", why))
        return to_raise, to_clear

    @staticmethod
    def _violation(dev: str, state: _Device) -> Violation:
        worst = max(state.worst.values(), default=0.0)
        items = sorted(state.worst.items(), key=lambda kv: -kv[1])
        what = ", ".join(f"{label} (r_norm {r:.1f})" for label, r in items[:6])
        message = f"bad data from {dev}: the estimator removed {what}"
        return Violation(AlarmKind.BAD_DATA, dev, worst, 0.0, Severity.WARNING, message)
