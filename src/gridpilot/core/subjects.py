"""The subject catalogue: every subject, its payload, and the streams and buckets behind them.

This module is the contract between services. ``gridpilot docs`` generates
``docs/subjects.md`` and ``docs/asyncapi.json`` from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import msgspec

from gridpilot.core import schemas as s
from gridpilot.core.errors import ConfigError


class Pattern(StrEnum):
    PUBSUB = "pub/sub"  # latest wins, nothing stored
    STREAM = "stream"  # captured by a JetStream stream: durable and replayable
    REQUEST = "request/reply"


@dataclass(frozen=True, kw_only=True)
class SubjectSpec:
    name: str  # short name used in code
    template: str  # with {grid}, {source}, {target}, {service} placeholders
    payload: type[msgspec.Struct]
    pattern: Pattern
    publishers: tuple[str, ...]
    subscribers: tuple[str, ...]
    description: str
    reply: type[msgspec.Struct] | None = None

    def format(self, **parts: str) -> str:
        return self.template.format(**parts)

    def wildcard(self, **parts: str) -> str:
        """The subject with every unnamed placeholder replaced by ``*``."""
        fields = {"grid": "*", "source": "*", "target": "*", "service": "*"}
        fields.update(parts)
        return self.template.format(**fields)


MEAS = SubjectSpec(
    name="meas",
    template="gp.{grid}.meas.{source}",
    payload=s.MeasurementSet,
    pattern=Pattern.STREAM,
    publishers=("simulator", "gateways"),
    subscribers=("state_estimation", "historian", "monitoring"),
    description="What one field device reports at one instant (PMU frame, RTU scan, meter).",
)
METER_RAW = SubjectSpec(
    name="meter_raw",
    template="gp.{grid}.meter.{source}",
    payload=s.MeterPayload,
    pattern=Pattern.PUBSUB,
    publishers=("smart meters (MQTT)",),
    subscribers=("mqtt_gateway",),
    description="A smart meter's raw reading from MQTT topic gp/<grid>/meter/<device>: "
    "GridPilot's own JSON or the SOGNO measurement format, normalised by the MQTT gateway.",
)
TRUTH = SubjectSpec(
    name="truth",
    template="gp.{grid}.sim.truth",
    payload=s.SimTruth,
    pattern=Pattern.PUBSUB,
    publishers=("simulator",),
    subscribers=("tests", "training"),
    description="The digital twin's noise-free power flow, same ids as the state estimate.",
)
STATE = SubjectSpec(
    name="state",
    template="gp.{grid}.state",
    payload=s.EstimateValues,
    pattern=Pattern.STREAM,
    publishers=("state_estimation",),
    subscribers=("monitoring", "web", "historian"),
    description="Every state estimate, its values aligned to the layout it names (KV gp_state "
    "key layout.<grid>.<id>); the latest per grid is also in KV gp_state (key: grid).",
)
STATE_LAYOUT = SubjectSpec(
    name="state_layout",
    template="gp.{grid}.state.layout",
    payload=s.EstimateLayout,
    pattern=Pattern.PUBSUB,
    publishers=("state_estimation",),
    subscribers=("any estimate reader (optional: a reader reads a layout it lacks from KV)",),
    description="The ids the estimates' values are aligned to, when they change (a topology "
    "change); kept in KV gp_state (key layout.<grid>.<id>) before any estimate refers to it. "
    "JSON, zlib-compressed above 64 KiB (as in KV).",
)
ALARM = SubjectSpec(
    name="alarm",
    template="gp.{grid}.alarm",
    payload=s.Alarm,
    pattern=Pattern.STREAM,
    publishers=("monitoring",),
    subscribers=("web", "historian"),
    description="Every change of an alarm (raised, cleared, acknowledged); "
    "the active ones are also in KV gp_alarms.",
)
CONDITION = SubjectSpec(
    name="condition",
    template="gp.{grid}.condition.{source}",
    payload=s.Condition,
    pattern=Pattern.PUBSUB,
    publishers=("supervisor", "simulator", "state_estimation", "gateways"),
    subscribers=("monitoring",),
    description="A condition a service detected (twin diverged, service restarted, broker "
    "outage ...): monitoring raises or clears the alarm; active ones are re-sent every 10 s.",
)
COMMAND = SubjectSpec(
    name="command",
    template="gp.{grid}.command.{target}",
    payload=s.Command,
    pattern=Pattern.STREAM,
    publishers=("web", "flisr", "volt_var", "operator"),
    subscribers=("simulator", "gateways"),
    description="Switching command or DER setpoint for one piece of equipment.",
)
COMMAND_RESULT = SubjectSpec(
    name="command_result",
    template="gp.{grid}.event.command",
    payload=s.CommandResult,
    pattern=Pattern.STREAM,
    publishers=("simulator", "gateways"),
    subscribers=("web", "flisr", "volt_var", "historian"),
    description="The outcome of every command: carried out (with the change) or refused (why).",
)
TOPOLOGY = SubjectSpec(
    name="topology",
    template="gp.{grid}.topology",
    payload=s.SwitchState,
    pattern=Pattern.STREAM,
    publishers=("simulator", "gateways"),
    subscribers=("state_estimation", "web"),
    description="Switch states as reported by the field, on change and every minute.",
)
ALARM_ACK = SubjectSpec(
    name="alarm_ack",
    template="gp.{grid}.request.alarm.ack",
    payload=s.AckRequest,
    reply=s.Reply,
    pattern=Pattern.REQUEST,
    publishers=("web", "operator"),
    subscribers=("monitoring",),
    description="Acknowledge an alarm by id.",
)
SIM_INJECT = SubjectSpec(
    name="sim_inject",
    template="gp.{grid}.request.sim.inject",
    payload=s.InjectRequest,
    reply=s.Reply,
    pattern=Pattern.REQUEST,
    publishers=("operator", "tests"),
    subscribers=("simulator",),
    description="Inject a gross measurement error or a communication outage into the twin.",
)
AUDIT = SubjectSpec(
    name="audit",
    template="gp.{grid}.audit",
    payload=s.AuditRecord,
    pattern=Pattern.STREAM,
    publishers=("web",),
    subscribers=("historian", "auditors"),
    description="Every command, acknowledgement, injection, login and user change made "
    "through the operator interface, with user and time.",
)
HISTORY_SERIES = SubjectSpec(
    name="history_series",
    template="gp.{grid}.request.history.series",
    payload=s.SeriesRequest,
    reply=s.SeriesReply,
    pattern=Pattern.REQUEST,
    publishers=("web", "operator"),
    subscribers=("historian",),
    description="Which time series the historian holds for a grid (optionally of one kind "
    "or one piece of equipment).",
)
HISTORY_QUERY = SubjectSpec(
    name="history_query",
    template="gp.{grid}.request.history.query",
    payload=s.HistoryQuery,
    reply=s.HistoryReply,
    pattern=Pattern.REQUEST,
    publishers=("web", "operator", "forecasting"),
    subscribers=("historian",),
    description="Raw values (bucket_s 0) or min/avg/max per bucket of time series over a "
    "time range, or (latest true) the newest value of each.",
)
HISTORY_EVENTS = SubjectSpec(
    name="history_events",
    template="gp.{grid}.request.history.events",
    payload=s.EventsQuery,
    reply=s.EventsReply,
    pattern=Pattern.REQUEST,
    publishers=("web", "operator"),
    subscribers=("historian",),
    description="Stored alarm changes, commands, command results, topology reports and "
    "the audit trail.",
)
HEARTBEAT = SubjectSpec(
    name="heartbeat",
    template="gp.svc.{service}.heartbeat",
    payload=s.Heartbeat,
    pattern=Pattern.PUBSUB,
    publishers=("every service",),
    subscribers=("supervisor", "status", "monitoring"),
    description="Liveness every second; the latest per service is also in KV gp_services.",
)

CATALOGUE: tuple[SubjectSpec, ...] = (
    MEAS,
    METER_RAW,
    TRUTH,
    STATE,
    STATE_LAYOUT,
    ALARM,
    CONDITION,
    COMMAND,
    COMMAND_RESULT,
    TOPOLOGY,
    ALARM_ACK,
    SIM_INJECT,
    AUDIT,
    HISTORY_SERIES,
    HISTORY_QUERY,
    HISTORY_EVENTS,
    HEARTBEAT,
)


GIB = 1 << 30


@dataclass(frozen=True, kw_only=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    max_age_s: float
    max_bytes: int  # the oldest messages go first when a stream reaches it
    description: str


# Stream names: declared here once, used by name everywhere else.
MEAS_STREAM = "GP_MEAS"
STATE_STREAM = "GP_STATE"
ALARM_STREAM = "GP_ALARM"
AUDIT_STREAM = "GP_AUDIT"
CMD_STREAM = "GP_CMD"

STREAMS: tuple[StreamSpec, ...] = (
    StreamSpec(
        name=MEAS_STREAM,
        subjects=("gp.*.meas.>",),
        max_age_s=6 * 3600,
        max_bytes=4 * GIB,
        description="raw field measurements, kept six hours for the historian to catch up",
    ),
    StreamSpec(
        name=STATE_STREAM,
        subjects=("gp.*.state",),
        max_age_s=3600,
        max_bytes=2 * GIB,
        description="state estimates, kept an hour for the historian to catch up",
    ),
    StreamSpec(
        name=ALARM_STREAM,
        subjects=("gp.*.alarm",),
        max_age_s=30 * 86400,
        max_bytes=GIB,
        description="alarm life cycle events",
    ),
    StreamSpec(
        name=AUDIT_STREAM,
        subjects=("gp.*.audit",),
        max_age_s=5 * 365 * 86400,
        max_bytes=GIB,
        description="the operator audit trail: who commanded, acknowledged or injected what",
    ),
    StreamSpec(
        name=CMD_STREAM,
        subjects=("gp.*.command.>", "gp.*.event.>", "gp.*.topology"),
        max_age_s=365 * 86400,
        max_bytes=GIB,
        description="commands, their results and topology events: the switching audit trail",
    ),
)


@dataclass(frozen=True, kw_only=True)
class BucketSpec:
    name: str
    description: str
    history: int = 1
    ttl_s: float | None = None  # a key not rewritten within this many seconds disappears


LEASES_TTL_S = 3.0
# Key-value bucket and object store names: declared here once, used by name everywhere else.
STATE_BUCKET = "gp_state"
SERVICES_BUCKET = "gp_services"
ALARMS_BUCKET = "gp_alarms"
LEASES_BUCKET = "gp_leases"
TWIN_BUCKET = "gp_twin"
MODELS_STORE = "gp_models"
STATE_LAYOUT_KEY = "layout.{grid}.{layout}"  # in STATE_BUCKET: an EstimateLayout

BUCKETS: tuple[BucketSpec, ...] = (
    BucketSpec(
        name=STATE_BUCKET,
        description="latest state estimate per grid (key: grid) and the layouts estimates refer "
        "to (key: layout.<grid>.<id>, never changed once written)",
    ),
    BucketSpec(
        name=SERVICES_BUCKET,
        description="latest heartbeat per service (key: service, or service.<instance> for "
        "the instances of a service that shares its grids)",
    ),
    BucketSpec(name=ALARMS_BUCKET, description="active alarm table per grid (key: grid)"),
    BucketSpec(
        name=LEASES_BUCKET,
        description="which instance of a shared service owns what (key: se.<grid>) and which "
        "instances are alive (key: member.<service>.<instance>); a key not renewed "
        f"within {LEASES_TTL_S:g} s expires",
        ttl_s=LEASES_TTL_S,
    ),
    BucketSpec(
        name=TWIN_BUCKET,
        description="the digital twin's switch positions, DER setpoints, training injections "
        "and simulated clock per grid (key: grid), read back when the simulator restarts",
    ),
)

OBJECT_STORES: tuple[BucketSpec, ...] = (
    BucketSpec(name=MODELS_STORE, description="grid models and placements (key: grid)"),
)


def grid_token(grid: str) -> str:
    """A grid name as a single subject token (no dots, spaces or wildcards)."""
    bad = set(". *>\t\r\n")
    token = "".join("_" if c in bad else c for c in grid)
    if token in ("svc", ""):
        raise ConfigError(f"{grid!r} cannot name a grid: 'gp.svc.*' is reserved for services")
    return token
