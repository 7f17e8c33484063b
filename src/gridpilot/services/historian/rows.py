"""Bus messages as historian rows: measurements and estimates become samples, the rest events.

Pure functions (no I/O) so the mapping is tested on its own and the service stays a loop.
"""

from __future__ import annotations

import math

from gridpilot.core import schemas as s
from gridpilot.services.historian.store import EventKind, EventRow, Sample, SeriesKey, SeriesKind

MEAS_FIELDS = ("v_pu", "va_deg", "p_mw", "q_mvar")
BUS_FIELDS = ("v_pu", "va_deg", "p_mw", "q_mvar")
BRANCH_FIELDS = ("p_from_mw", "q_from_mvar", "p_to_mw", "q_to_mvar", "i_from_ka", "loading_pct")
ESTIMATE_SOURCE = "se"


def measurement_samples(mset: s.MeasurementSet) -> tuple[list[Sample], int]:
    """One sample per value a device reported; also the number of non-finite values skipped."""
    out: list[Sample] = []
    skipped = 0
    for m in mset.measurements:
        for name in MEAS_FIELDS:
            value = getattr(m, name)
            if value is None:
                continue
            if not math.isfinite(value):
                skipped += 1
                continue
            key = SeriesKey(
                mset.grid, SeriesKind.MEAS, m.source or mset.source, m.mrid, f"{m.terminal}.{name}"
            )
            out.append(Sample(key, m.t_ns, float(value), m.quality))
    return out, skipped


def estimate_samples(est: s.StateEstimate) -> tuple[list[Sample], int]:
    """Every bus and branch quantity of a converged estimate (nothing when it has none)."""
    out: list[Sample] = []
    skipped = 0
    for table, fields in ((est.buses, BUS_FIELDS), (est.branches, BRANCH_FIELDS)):
        if table is None:
            continue
        for name in fields:
            for mrid, value in zip(table.id, getattr(table, name), strict=True):
                if not math.isfinite(value):
                    skipped += 1
                    continue
                key = SeriesKey(est.grid, SeriesKind.EST, ESTIMATE_SOURCE, mrid, name)
                out.append(Sample(key, est.t_ns, value))
    return out, skipped


def alarm_event(alarm: s.Alarm, raw: bytes) -> EventRow:
    ack = "ack" if alarm.acknowledged else "unack"
    key = f"{alarm.id}@{alarm.t_ns}:{alarm.state}:{ack}"
    return EventRow(alarm.grid, EventKind.ALARM, key, alarm.t_ns, raw.decode())


def command_event(cmd: s.Command, raw: bytes) -> EventRow:
    return EventRow(cmd.grid, EventKind.COMMAND, cmd.id, cmd.t_ns, raw.decode())


def command_result_event(result: s.CommandResult, raw: bytes) -> EventRow:
    key = f"{result.command_id}@{result.executed_by}@{result.t_ns}"
    return EventRow(result.grid, EventKind.COMMAND_RESULT, key, result.t_ns, raw.decode())


def topology_event(topo: s.SwitchState, raw: bytes) -> EventRow:
    return EventRow(topo.grid, EventKind.TOPOLOGY, str(topo.t_ns), topo.t_ns, raw.decode())


def audit_event(record: s.AuditRecord, raw: bytes) -> EventRow:
    key = f"{record.t_ns}@{record.user}@{record.action}@{record.target}"
    return EventRow(record.grid, EventKind.AUDIT, key, record.t_ns, raw.decode())
