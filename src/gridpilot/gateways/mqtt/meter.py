"""Meter readings to measurement sets, without I/O: which device feeds which load or generator,
what was refused and why (counted per reason, logged at a bounded rate)."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from gridpilot.core.errors import ConfigError
from gridpilot.core.schemas import DeviceKind, Measurand, Measurement, MeasurementSet, Terminal
from gridpilot.protocols.meter_json import MeterPayloadError, MeterReading, normalise

LOG_EVERY_S = 10.0

# The reading is positive into the installation (import); a Measurement is positive into the
# equipment at the terminal: a load's consumption as it is, a generator's production reversed.
_SIGN = {Terminal.LOAD: 1.0, Terminal.GEN: -1.0}


class MeterPoint(NamedTuple):
    """One component a meter reports, and the load or generator it stands for."""

    component: str  # SOGNO component id; for GridPilot's own format, the device id
    mrid: str  # the load's or generator's mRID in the grid model
    terminal: Terminal  # LOAD or GEN


DeviceMap = Mapping[str, Sequence[tuple[str, str, Terminal | str]]]


def _points(devices: DeviceMap) -> dict[str, tuple[MeterPoint, ...]]:
    """Check the mapping at once, so a bad entry fails at start and not at the first reading."""
    out: dict[str, tuple[MeterPoint, ...]] = {}
    for device, entries in devices.items():
        if not device or any(c in device for c in ". *>\t\r\n"):
            raise ConfigError(f"meter id {device!r} cannot be an MQTT topic level / subject token")
        points = []
        for entry in entries:
            try:
                component, mrid, terminal_text = entry
                terminal = Terminal(terminal_text)
            except ValueError:
                raise ConfigError(
                    f"meter {device!r}: {entry!r} is not (component, mRID, 'load' or 'gen')"
                ) from None
            if terminal not in _SIGN:
                raise ConfigError(
                    f"meter {device!r}: terminal {terminal.value!r} for {mrid!r}; "
                    "a meter measures a load or a generator ('load' or 'gen')"
                )
            if not component or not mrid:
                raise ConfigError(f"meter {device!r}: empty component or mRID in {entry!r}")
            points.append(MeterPoint(component, mrid, terminal))
        if len({(p.mrid, p.terminal) for p in points}) != len(points):
            raise ConfigError(f"meter {device!r} maps one load or generator twice")
        out[device] = tuple(points)
    return out


class RateLimitedLog:
    """Log one line per key at most every ``every_s``, saying how many were held back."""

    def __init__(
        self,
        log: logging.Logger,
        *,
        every_s: float = LOG_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.every_s = every_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._held: Counter[str] = Counter()

    def warning(self, key: str, msg: str, **extra: object) -> bool:
        """Log now, or count it for the next line of ``key``; True when it was logged."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            self._held[key] += 1
            return False
        self._last[key] = now
        held = self._held.pop(key, 0)
        self.log.warning(msg, extra={"reason": key, "suppressed": held, **extra})
        return True


class MeterGateway:
    """Turns meter payloads from ``gp.<grid>.meter.<device>`` into METER measurement sets.

    ``devices`` maps a meter id to its ``(component, load/gen mRID, terminal)`` entries.
    Every outcome is counted in ``counters``: ``meter_readings`` published,
    ``meter_rejected_<code>`` per MeterErrorCode, ``meter_unknown_device``,
    ``meter_point_missing`` (a mapped component without P and Q in a reading) and
    ``meter_nothing_mapped`` (a reading of which no mapped component had P and Q).
    """

    def __init__(
        self,
        *,
        grid: str,
        devices: DeviceMap,
        counters: Counter[str] | None = None,
        log: logging.Logger | None = None,
        log_every_s: float = LOG_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.grid = grid
        self.devices = _points(devices)
        self.counters: Counter[str] = Counter() if counters is None else counters
        self.warn = RateLimitedLog(
            log or logging.getLogger("gridpilot.gateway.mqtt"), every_s=log_every_s, clock=clock
        )
        self.seq = 0

    def handle(self, subject: str, payload: bytes) -> MeasurementSet | None:
        """The measurement set for one meter message, or None when it is refused (counted)."""
        device = subject.rsplit(".", 1)[-1]
        try:
            reading = normalise(payload, topic_device=device)
        except MeterPayloadError as exc:
            key = f"meter_rejected_{exc.code}"
            self.counters[key] += 1
            self.warn.warning(
                key, "meter payload refused", device=device, subject=subject, error=exc.reason[:200]
            )
            return None
        points = self.devices.get(reading.device)
        if points is None:
            self.counters["meter_unknown_device"] += 1
            self.warn.warning(
                "meter_unknown_device", "reading from an unknown meter", device=device
            )
            return None
        return self._measurements(reading, points)

    def _measurements(
        self, reading: MeterReading, points: tuple[MeterPoint, ...]
    ) -> MeasurementSet | None:
        measurements = []
        for pt in points:
            c = reading.component(pt.component)
            if c is None or c.p_mw is None or c.q_mvar is None:
                self.counters["meter_point_missing"] += 1
                self.warn.warning(
                    "meter_point_missing",
                    "reading lacks P and Q of a mapped component",
                    device=reading.device,
                    component=pt.component,
                    ignored=",".join(reading.ignored),
                )
                continue
            sign = _SIGN[pt.terminal]
            measurements.append(
                Measurement(
                    mrid=pt.mrid,
                    measurand=Measurand.POWER,
                    terminal=pt.terminal,
                    t_ns=reading.t_ns,
                    # + 0.0 keeps a reversed zero from being sent as -0.0
                    p_mw=sign * c.p_mw + 0.0,
                    q_mvar=sign * c.q_mvar + 0.0,
                    source=reading.device,
                )
            )
        if not measurements:
            self.counters["meter_nothing_mapped"] += 1
            return None
        self.seq += 1
        self.counters["meter_readings"] += 1
        return MeasurementSet(
            grid=self.grid,
            source=reading.device,
            kind=DeviceKind.METER,
            t_ns=reading.t_ns,
            seq=self.seq,
            measurements=measurements,
        )
