"""Every payload that crosses the bus, defined once as msgspec Structs (JSON on the wire).

Identifiers are CIM-style mRIDs of the grid equipment (the names kept from the grid model);
units are in the field names (``v_pu``, ``va_deg``, ``p_mw``, ``q_mvar``); times are integer
nanoseconds since the Unix epoch (``t_ns``).
"""

from __future__ import annotations

from enum import IntFlag, StrEnum
from typing import Any, TypeVar

import msgspec


class Measurand(StrEnum):
    VOLTAGE = "voltage"  # bus voltage: v_pu, and va_deg when the device measures the phasor
    POWER = "power"  # p_mw and q_mvar at a terminal, positive into the equipment


class Terminal(StrEnum):
    BUS = "bus"  # a bus voltage
    FROM = "from"  # the from-side (hv side) of a branch
    TO = "to"  # the to-side (lv side) of a branch
    LOAD = "load"  # a consumer's consumption
    GEN = "gen"  # a generator's (DER's) production


class Phase(StrEnum):
    ABC = "ABC"  # balanced, positive sequence


class Quality(IntFlag):
    """Quality bits after IEC 61850-7-3 (0 means good)."""

    GOOD = 0
    INVALID = 1
    QUESTIONABLE = 2
    SUBSTITUTED = 4
    OLD_DATA = 8
    OVERFLOW = 16
    OPERATOR_BLOCKED = 32  # frozen at its value when an operator blocked it (IEC 104 BL)


class DeviceKind(StrEnum):
    PMU = "pmu"
    RTU = "rtu"
    DER = "der"  # an inverter's own controller (Modbus)
    METER = "meter"


class Measurement(msgspec.Struct, frozen=True, kw_only=True):
    """One measured quantity of one piece of equipment at one instant.

    Power is positive into the equipment at the terminal (a load's consumption, a generator's
    production, a branch end's flow into the branch). ``quality`` holds IEC 61850-7-3 bits:
    0 good, 1 invalid, 2 questionable, 4 substituted, 8 old data, 16 overflow, 32 operator
    blocked. An invalid value is published (the HMI shows it) but never estimated with.
    """

    mrid: str  # measured equipment: bus, branch, load or generator id
    measurand: Measurand
    terminal: Terminal
    t_ns: int
    phase: Phase = Phase.ABC
    v_pu: float | None = None
    va_deg: float | None = None
    p_mw: float | None = None
    q_mvar: float | None = None
    quality: int = 0
    source: str = ""  # the device that measured it


class MeasurementSet(msgspec.Struct, frozen=True, kw_only=True):
    """What one device reports at one instant (a PMU frame, an RTU scan, a meter reading)."""

    grid: str
    source: str
    kind: DeviceKind
    t_ns: int
    seq: int
    measurements: list[Measurement]


class MeterPayload(msgspec.Struct, frozen=True, kw_only=True):
    """A smart meter's reading in GridPilot's own JSON, as the meter publishes it over MQTT.

    Power is the meter's total over its phases, positive from the grid into the metered
    installation (import, as meters count it). The MQTT gateway also accepts the SOGNO
    measurement format on the same subject; see ``gridpilot.protocols.meter_json``.
    """

    device: str  # must equal the last token of the subject (the MQTT topic)
    t_ns: int
    p_mw: float
    q_mvar: float
    v_pu: float | None = None


class MeasurementSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """Measurements aligned to one instant: the input of one state estimate."""

    grid: str
    t_ns: int
    measurements: list[Measurement]
    missing_sources: list[str] = []
    late_dropped: int = 0


class BusStates(msgspec.Struct, frozen=True, kw_only=True):
    """Bus voltages, columnar: entry i of every list belongs to bus ``id[i]``; ``p_mw`` and
    ``q_mvar`` are the net injection into the grid at the bus."""

    id: list[str]
    v_pu: list[float]
    va_deg: list[float]
    p_mw: list[float]  # net injection into the grid
    q_mvar: list[float]


class BranchStates(msgspec.Struct, frozen=True, kw_only=True):
    """Branch (line, transformer) flows, columnar."""

    id: list[str]
    p_from_mw: list[float]
    q_from_mvar: list[float]
    p_to_mw: list[float]
    q_to_mvar: list[float]
    i_from_ka: list[float]
    loading_pct: list[float]


class EstimateStatus(StrEnum):
    CONVERGED = "converged"
    NOT_OBSERVABLE = "not_observable"
    DIVERGED = "diverged"


class BadData(msgspec.Struct, frozen=True, kw_only=True):
    """A measurement found to be in gross error and left out of the estimate."""

    sensor: str  # "<source>/<mrid>/<measurand>/<terminal>"
    mrid: str
    source: str
    measurand: Measurand
    # how far off, in sigmas: the square root of the WLS objective's drop when it was removed
    r_norm: float


class StateEstimate(msgspec.Struct, frozen=True, kw_only=True):
    """One state estimate: bus voltages, branch flows, what went in and how well it fits.

    ``objective`` is the weighted sum of squared residuals after bad-data removal, tested
    against ``chi2_threshold``; ``residual_norm[i]`` is the weighted residual of
    ``residual_sensor[i]``. Without convergence, ``buses`` and ``branches`` are absent and
    ``message`` says why.
    """

    grid: str
    t_ns: int
    status: EstimateStatus
    message: str = ""
    solver: str = ""
    solve_ms: float = 0.0
    n_measurements: int = 0
    n_pseudo: int = 0
    pseudo: list[str] = []  # equipment whose injection came from a pseudo-measurement
    objective: float = 0.0  # sum of squared weighted residuals after bad-data removal
    chi2_threshold: float = 0.0
    bad_data: list[BadData] = []
    max_r_norm: float = 0.0
    buses: BusStates | None = None
    branches: BranchStates | None = None
    residual_sensor: list[str] = []
    residual_norm: list[float] = []
    missing_sources: list[str] = []  # devices whose data is missing (silent or aged out)
    late_dropped: int = 0  # reports that came after their snapshot closed, since the last one


class EstimateLayout(msgspec.Struct, frozen=True, kw_only=True):
    """What the arrays of an ``EstimateValues`` are aligned to: the ids, sent once per topology.

    Kept in KV ``gp_state`` under ``layout.<grid>.<id>`` (written before the first estimate
    that refers to it, never changed) and published on ``gp.<grid>.state.layout`` when it
    changes; above 64 KiB zlib-compressed. ``id`` is a hash of the lists, so the same lists
    always get the same id.
    """

    grid: str
    id: str
    bus_id: list[str]
    branch_id: list[str]
    sensor: list[str] = []  # "<source>/<mrid>/<measurand>/<terminal>", residuals refer to them
    source: list[str] = []  # field devices, missing ones are referred to by index


class BusValues(msgspec.Struct, frozen=True, kw_only=True):
    """Bus values, entry i for the layout's ``bus_id[i]``; null where there is no value.
    Powers are whole watts and var (the net injection into the grid at the bus)."""

    v_pu: list[float | None]  # to 1e-6 p.u.
    va_deg: list[float | None]  # to 1e-5 degrees
    p_w: list[int | None]
    q_var: list[int | None]


class BranchValues(msgspec.Struct, frozen=True, kw_only=True):
    """Branch values, entry i for the layout's ``branch_id[i]``; null where there is no value."""

    p_from_w: list[int | None]
    q_from_var: list[int | None]
    p_to_w: list[int | None]
    q_to_var: list[int | None]
    i_from_ma: list[int | None]
    loading_pct: list[float | None]  # to 1e-3 %


class EstimateValues(msgspec.Struct, frozen=True, kw_only=True):
    """One state estimate as the bus carries it: a ``StateEstimate`` whose ids are in the
    ``EstimateLayout`` named by ``layout`` (empty when there are no values, e.g. not converged).

    ``residual_norm[i]`` belongs to the layout's ``sensor[i]`` (null: not used in this
    estimate); ``missing`` indexes the layout's ``source``. ``gridpilot.core.estimates``
    turns it back into the full StateEstimate.
    """

    grid: str
    t_ns: int
    status: EstimateStatus
    layout: str = ""
    message: str = ""
    solver: str = ""
    solve_ms: float = 0.0
    n_measurements: int = 0
    n_pseudo: int = 0
    pseudo: list[str] = []
    objective: float = 0.0
    chi2_threshold: float = 0.0
    bad_data: list[BadData] = []
    max_r_norm: float = 0.0
    buses: BusValues | None = None
    branches: BranchValues | None = None
    residual_norm: list[float | None] = []
    missing: list[int] = []
    late_dropped: int = 0


class SimTruth(msgspec.Struct, frozen=True, kw_only=True):
    """The simulator's noise-free power flow, with the same ids as the estimate."""

    grid: str
    t_ns: int
    buses: BusStates
    branches: BranchStates


class AlarmKind(StrEnum):
    VOLTAGE_HIGH = "voltage_high"
    VOLTAGE_LOW = "voltage_low"
    OVERLOAD = "overload"
    NOT_OBSERVABLE = "not_observable"
    BAD_DATA = "bad_data"  # a measurement the estimator removed (mrid: the sensor's device)
    COMM_LOSS = "comm_loss"  # a field device stopped reporting (mrid: the device id)
    SERVICE_DOWN = "service_down"  # a service's heartbeat is stale (mrid: the service)
    SERVICE_RESTARTED = "service_restarted"  # a service exited or was killed and restarted
    BROKER_OUTAGE = "broker_outage"  # the message broker was down (mrid: "nats")
    TWIN_DIVERGED = "twin_diverged"  # the digital twin's power flow found no solution
    DE_ENERGISED = "de_energised"  # equipment without a source (mrid: an island's bus)


class AlarmState(StrEnum):
    RAISED = "raised"
    CLEARED = "cleared"


class Severity(StrEnum):
    WARNING = "warning"
    CRITICAL = "critical"


class Alarm(msgspec.Struct, frozen=True, kw_only=True):
    """An alarm and its life cycle; ``value`` and ``limit`` are in p.u. for voltage alarms and
    in percent of rating for overloads. Acknowledgement is a flag on either state."""

    id: str  # "<kind>:<mrid>", the deduplication key
    grid: str
    kind: AlarmKind
    mrid: str
    state: AlarmState
    severity: Severity
    value: float
    limit: float
    raised_t_ns: int
    t_ns: int
    acknowledged: bool = False
    acknowledged_by: str = ""
    message: str = ""


class Condition(msgspec.Struct, frozen=True, kw_only=True):
    """Something a service detected that an operator must know, reported to monitoring,
    which owns the alarm table: ``active`` raises (or keeps raised) the alarm
    ``<kind>:<mrid>``, inactive clears it. Reporters re-send active conditions every
    ``CONDITION_REPEAT_S`` seconds, so a restarted monitoring service learns them again."""

    grid: str
    kind: AlarmKind
    mrid: str  # the equipment, device or service the condition is about
    active: bool
    t_ns: int
    severity: Severity = Severity.WARNING
    value: float = 0.0
    limit: float = 0.0
    message: str = ""  # names the device and what it measures, the service, the cause
    reporter: str = ""  # the service that saw it


CONDITION_REPEAT_S = 10.0


class AckRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Acknowledge one alarm."""

    alarm_id: str
    user: str


class Reply(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to a request: ok, or the error that says what was wrong."""

    ok: bool
    error: str = ""
    detail: dict[str, Any] = {}


class CommandKind(StrEnum):
    SWITCH = "switch"  # open or close a switch
    DER_SETPOINT = "der_setpoint"  # active/reactive power setpoint of a generator


class Command(msgspec.Struct, frozen=True, kw_only=True):
    """Open or close a switch (``closed``), or set a generator's ``p_mw``/``q_mvar`` limit."""

    id: str
    grid: str
    kind: CommandKind
    target: str  # switch or generator mRID
    issued_by: str
    t_ns: int
    closed: bool | None = None
    p_mw: float | None = None
    q_mvar: float | None = None


class CommandResult(msgspec.Struct, frozen=True, kw_only=True):
    """What became of a command: carried out, or refused and why."""

    command_id: str
    grid: str
    target: str
    ok: bool
    t_ns: int
    executed_by: str
    change: str = ""
    error: str = ""


class SwitchState(msgspec.Struct, frozen=True, kw_only=True):
    """Topology event: the switch states the simulator (the field) now reports."""

    grid: str
    t_ns: int
    closed: dict[str, bool]


class InjectionKind(StrEnum):
    GROSS_ERROR = "gross_error"  # add a large error to one measured value
    COMM_OUTAGE = "comm_outage"  # a device stops reporting
    CLEAR = "clear"  # remove every injection


class InjectRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Disturb the twin: ``error`` is added to p_mw and q_mvar (MW, Mvar) or to v_pu (p.u.)."""

    kind: InjectionKind
    source: str = ""  # device id
    mrid: str = ""  # for gross errors: the measured equipment
    measurand: Measurand = Measurand.POWER
    error: float = 0.0  # added to v_pu, or to p_mw and q_mvar
    duration_s: float = 60.0  # in simulated seconds


class SeriesRef(msgspec.Struct, frozen=True, kw_only=True):
    """Names a stored time series. ``kind`` "meas": what field device ``source`` reported
    (quantity "<terminal>.<field>": "bus.v_pu", "from.p_mw", "load.q_mvar"); "est": the state
    estimate (source "se"; quantity a BusStates or BranchStates field: "v_pu", "loading_pct").
    An empty ``source`` matches every device that measures the quantity."""

    kind: str
    mrid: str
    quantity: str
    source: str = ""


class SeriesRequest(msgspec.Struct, frozen=True, kw_only=True):
    kind: str = ""  # "", "meas" or "est"
    mrid: str = ""  # "" for every piece of equipment


class SeriesReply(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    error: str = ""
    series: list[SeriesRef] = []


class HistoryQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Time series over [t_from_ns, t_to_ns): raw samples (bucket_s 0, at most ``limit`` per
    series), or min/avg/max per ``bucket_s`` bucket aligned to the Unix epoch; with ``latest``
    only the newest value of each series (the range is then ignored)."""

    series: list[SeriesRef]
    t_from_ns: int = 0
    t_to_ns: int = 0
    bucket_s: int = 0
    limit: int = 10_000
    latest: bool = False


class SeriesData(msgspec.Struct, frozen=True, kw_only=True):
    """One series' answer, columnar. Raw: ``value``; aggregated: ``min``, ``avg``, ``max`` and
    ``count``; each entry i belongs to ``t_ns[i]`` (a bucket's start)."""

    series: SeriesRef
    t_ns: list[int] = []
    value: list[float] = []
    min: list[float] = []
    avg: list[float] = []
    max: list[float] = []
    count: list[int] = []
    truncated: bool = False  # raw samples stopped at the limit; ask again from after the last


class HistoryReply(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    error: str = ""
    data: list[SeriesData] = []


class EventsQuery(msgspec.Struct, frozen=True, kw_only=True):
    kind: str = ""  # "", "alarm", "command", "command_result", "topology" or "audit"
    t_from_ns: int = 0
    t_to_ns: int = 0
    limit: int = 1000


class StoredEvent(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    key: str
    t_ns: int
    payload: str  # the original message, JSON


class EventsReply(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    error: str = ""
    events: list[StoredEvent] = []
    truncated: bool = False


class AuditRecord(msgspec.Struct, frozen=True, kw_only=True):
    """Who did what through the operator interface, and what came of it."""

    grid: str
    t_ns: int
    user: str
    role: str
    action: str  # "switch", "der_setpoint", "alarm_ack", "inject", "login", "user_add" ...
    target: str = ""  # the equipment, alarm id, device or user acted on
    detail: dict[str, Any] = {}
    ok: bool = True
    error: str = ""


class ServiceState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    DEGRADED = "degraded"
    STOPPING = "stopping"


class Heartbeat(msgspec.Struct, frozen=True, kw_only=True):
    """A service's liveness, counters and current figures, every second."""

    service: str
    grid: str
    instance: str
    pid: int
    state: ServiceState
    t_ns: int
    uptime_s: float
    counters: dict[str, int] = {}
    info: dict[str, int | float | str] = {}


T = TypeVar("T")

_encoder = msgspec.json.Encoder()


def encode(obj: msgspec.Struct) -> bytes:
    return _encoder.encode(obj)


_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}


def decode(data: bytes, typ: type[T]) -> T:
    """Decode JSON bytes into ``typ``; raises msgspec.ValidationError/DecodeError on bad input."""
    dec = _decoders.get(typ)
    if dec is None:
        dec = _decoders[typ] = msgspec.json.Decoder(typ)
    result: T = dec.decode(data)
    return result
