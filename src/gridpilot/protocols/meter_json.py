"""Smart-meter JSON, sans-IO: a payload in SOGNO's measurement format or GridPilot's own, in;
one :class:`MeterReading` in SI/p.u.-consistent units, out (and back, for virtual meters).

Two formats arrive on the same topic ``gp/<grid>/meter/<device>``, told apart by their fields:

SOGNO (``"readings"``), as pyvolt-service's ``sogno_input_v4.json`` defines it::

    {"device": "meter_7", "timestamp": "2020-05-20T10:27:57.980802+00:00",
     "readings": [{"component": "<CIM mRID>", "measurand": "activepower",
                   "phase": "A", "data": 1530.0}, ...]}

    activepower    single-phase active power, W       -> summed over phases into p_mw
    reactivepower  single-phase reactive power, var   -> summed over phases into q_mvar
    voltmagnitude  phase-to-ground RMS voltage, V     -> averaged over phases into v_ln_v
    voltangle, currmagnitude, currangle, apparentpower, frequency, and any other measurand:
                   read, not used (listed in ``MeterReading.ignored``)

    ``voltagemagnitude`` is taken as a synonym of SOGNO's ``voltmagnitude``. Measurands and
    phases are case-insensitive; phases are ``A``, ``B``, ``C``. Summing the phases a meter
    reports is its total power whether it is three-phase or single-phase; P and Q of one
    component must come from the same phases.

GridPilot (``"t_ns"``): :class:`gridpilot.core.schemas.MeterPayload`, totals over the phases.

Timestamps: ``t_ns`` is integer ns since the Unix epoch. SOGNO's ``timestamp`` is an ISO 8601
date and time (``datetime.fromisoformat``: an offset or ``Z``; no offset means UTC; SOGNO v3's
``HH:MM:SS:mmm`` is read as ``HH:MM:SS.mmm``) or a number of seconds since the epoch, or of
milliseconds when it is 1e11 or more (1e11 s would be the year 5138, 1e11 ms is 1973). Any
instant outside 2000-01-01 .. 2100-01-01 UTC is refused.

Sign: power is positive from the grid into the metered installation (import, as meters count).
Every failure is a :class:`MeterPayloadError` with a ``code`` to count by.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

import msgspec

from gridpilot.core.errors import ProtocolError
from gridpilot.core.schemas import MeterPayload
from gridpilot.protocols._errors import PicklableError

PROTOCOL = "meter-json"
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_ID_CHARS = 256
MIN_T_NS = 946_684_800 * 10**9  # 2000-01-01T00:00:00Z
MAX_T_NS = 4_102_444_800 * 10**9  # 2100-01-01T00:00:00Z
EPOCH_MS_FROM = 1e11  # epoch numbers at least this large are milliseconds
# Plausibility bounds: beyond them a value is a unit error or garbage, not a measurement.
MAX_ABS_POWER_MW = 1000.0  # per phase for SOGNO, total for GridPilot's format
MAX_V_LN_V = 1e6
MAX_V_PU = 3.0

T = TypeVar("T")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SOGNO_V3_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}):(\d{1,6})$")
_PHASES = ("A", "B", "C")


class MeterFormat(StrEnum):
    SOGNO = "sogno"
    GRIDPILOT = "gridpilot"


class MeterErrorCode(StrEnum):
    """Why a payload was refused; short and stable, to count refusals by."""

    TOO_LARGE = "too_large"
    NOT_JSON = "not_json"
    UNKNOWN_FORMAT = "unknown_format"  # a JSON value that is neither format
    SCHEMA = "schema"  # a field missing or of the wrong type
    DEVICE_MISMATCH = "device_mismatch"  # payload's device is not the topic's
    TIMESTAMP = "timestamp"  # unreadable or outside 2000..2100
    VALUE = "value"  # not finite, implausible, or an unknown phase
    DUPLICATE = "duplicate"  # one component, measurand and phase twice
    PHASES = "phases"  # P and Q of one component from different phases
    EMPTY = "empty"  # no power nor voltage in it


class MeterPayloadError(PicklableError, ProtocolError):
    """A meter payload that cannot be read; ``reason`` says what was wrong with it."""

    def __init__(self, code: MeterErrorCode, reason: str, *, device: str = "") -> None:
        self.code = code
        self.device = device
        super().__init__(PROTOCOL, reason)


@dataclass(frozen=True, kw_only=True, slots=True)
class ComponentReading:
    """What a meter measured at one component (a CIM mRID for SOGNO; the device itself for
    GridPilot's format). Power is the total over ``phases``, positive into the installation."""

    component: str
    phases: str = ""  # the SOGNO phases the values come from, e.g. "ABC"; "" for totals
    p_mw: float | None = None
    q_mvar: float | None = None
    v_ln_v: float | None = None  # phase-to-ground RMS, averaged over the phases
    v_pu: float | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class MeterReading:
    """One meter payload, normalised."""

    device: str
    t_ns: int
    format: MeterFormat
    components: tuple[ComponentReading, ...]
    ignored: tuple[str, ...] = ()  # SOGNO measurands present but not used, sorted

    def component(self, component: str) -> ComponentReading | None:
        for c in self.components:
            if c.component == component:
                return c
        return None


class _SognoReading(msgspec.Struct, frozen=True):
    component: str
    measurand: str
    phase: str
    data: float


class _SognoPayload(msgspec.Struct, frozen=True):
    device: str
    timestamp: str | int | float
    readings: list[_SognoReading]


def normalise(payload: bytes, *, topic_device: str) -> MeterReading:
    """Read one meter payload published on ``gp/<grid>/meter/<topic_device>``.

    Raises MeterPayloadError, and nothing else, for any payload it cannot accept.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise MeterPayloadError(
            MeterErrorCode.TOO_LARGE,
            f"{len(payload)} bytes, more than the {MAX_PAYLOAD_BYTES} a meter payload may have",
        )
    try:
        obj = msgspec.json.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError, RecursionError) as exc:
        # ValueError: invalid UTF-8; ValidationError: a number beyond float range
        raise MeterPayloadError(MeterErrorCode.NOT_JSON, f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise MeterPayloadError(
            MeterErrorCode.UNKNOWN_FORMAT, f"a JSON {type(obj).__name__}, not an object"
        )
    if "readings" in obj:
        sogno = _convert(obj, _SognoPayload)
        _check_device(sogno.device, topic_device)
        return _from_sogno(sogno)
    if "t_ns" in obj:
        own = _convert(obj, MeterPayload)
        _check_device(own.device, topic_device)
        return _from_gridpilot(own)
    raise MeterPayloadError(
        MeterErrorCode.UNKNOWN_FORMAT,
        "neither SOGNO (no 'readings') nor GridPilot's meter format (no 't_ns')",
    )


def _convert(obj: dict[str, Any], typ: type[T]) -> T:
    try:
        return msgspec.convert(obj, typ)
    except (msgspec.ValidationError, OverflowError, TypeError, ValueError) as exc:
        raise MeterPayloadError(MeterErrorCode.SCHEMA, str(exc)) from None


def _check_device(device: str, topic_device: str) -> None:
    if device != topic_device:
        raise MeterPayloadError(
            MeterErrorCode.DEVICE_MISMATCH,
            f"payload is from device {device[:MAX_ID_CHARS]!r} "
            f"but was published on the topic of {topic_device!r}",
            device=topic_device,
        )


def _check_t_ns(t_ns: int, device: str, what: object) -> int:
    if not MIN_T_NS <= t_ns < MAX_T_NS:
        try:
            shown = str(what)[:64]
        except ValueError:  # an integer beyond sys.get_int_max_str_digits()
            shown = "a huge number"
        raise MeterPayloadError(
            MeterErrorCode.TIMESTAMP,
            f"timestamp {shown!r} is outside 2000-01-01 .. 2100-01-01 UTC",
            device=device,
        )
    return t_ns


def parse_timestamp(value: str | int | float, *, device: str = "") -> int:
    """A SOGNO timestamp (ISO 8601 text, or epoch seconds or milliseconds) in ns since epoch."""
    if isinstance(value, str):
        return _check_t_ns(_iso_ns(value, device), device, value)
    if isinstance(value, float) and not math.isfinite(value):
        raise MeterPayloadError(
            MeterErrorCode.TIMESTAMP, f"timestamp {value} is not a finite number", device=device
        )
    scale = 10**6 if abs(value) >= EPOCH_MS_FROM else 10**9
    if isinstance(value, int):
        t_ns = value * scale
    else:
        try:
            t_ns = round(value * scale)
        except OverflowError:
            t_ns = MAX_T_NS  # refused just below
    return _check_t_ns(t_ns, device, value)


def _iso_ns(text: str, device: str) -> int:
    stripped = text.strip()
    legacy = _SOGNO_V3_TIME.match(stripped)
    if legacy:
        stripped = f"{legacy.group(1)}.{legacy.group(2)}"
    bad = MeterPayloadError(
        MeterErrorCode.TIMESTAMP,
        f"timestamp {text[:64]!r} is not an ISO 8601 date and time",
        device=device,
    )
    # A bare date names a day, not an instant.
    if len(stripped) <= 10 or not stripped.isascii():
        raise bad
    try:
        dt = datetime.fromisoformat(stripped)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        micros = (dt - _EPOCH) // timedelta(microseconds=1)
    except (ValueError, OverflowError):
        raise bad from None
    return micros * 1000


def _finite(
    value: float, *, limit: float, what: str, device: str, low: float | None = None
) -> float:
    lo = -limit if low is None else low
    if not (math.isfinite(value) and lo <= value <= limit):
        raise MeterPayloadError(
            MeterErrorCode.VALUE,
            f"{what} = {value!r} is outside {lo:g} .. {limit:g}",
            device=device,
        )
    return value


_P, _Q, _V = "activepower", "reactivepower", "voltmagnitude"
_SYNONYMS = {"voltagemagnitude": _V}


def _from_sogno(msg: _SognoPayload) -> MeterReading:
    device = msg.device
    t_ns = parse_timestamp(msg.timestamp, device=device)
    # component -> measurand -> phase -> value
    values: dict[str, dict[str, dict[str, float]]] = {}
    ignored: set[str] = set()
    for i, r in enumerate(msg.readings):
        measurand = r.measurand.strip().lower()
        measurand = _SYNONYMS.get(measurand, measurand)
        if measurand not in (_P, _Q, _V):
            ignored.add(measurand[:64])
            continue
        where = f"readings[{i}]"
        if not 0 < len(r.component) <= MAX_ID_CHARS:
            raise MeterPayloadError(
                MeterErrorCode.VALUE,
                f"{where}.component must have 1 to {MAX_ID_CHARS} characters",
                device=device,
            )
        phase = r.phase.strip().upper()
        if phase not in _PHASES:
            raise MeterPayloadError(
                MeterErrorCode.VALUE,
                f"{where}.phase is {r.phase[:16]!r}; use A, B or C",
                device=device,
            )
        if measurand == _V:
            value = _finite(
                r.data, limit=MAX_V_LN_V, low=0.0, what=f"{where}.data (V)", device=device
            )
        else:
            unit = "W" if measurand == _P else "var"
            value = _finite(
                r.data, limit=MAX_ABS_POWER_MW * 1e6, what=f"{where}.data ({unit})", device=device
            )
        phases = values.setdefault(r.component, {}).setdefault(measurand, {})
        if phase in phases:
            raise MeterPayloadError(
                MeterErrorCode.DUPLICATE,
                f"{where} repeats {measurand} of phase {phase} of {r.component[:64]!r}",
                device=device,
            )
        phases[phase] = value
    if not values:
        raise MeterPayloadError(
            MeterErrorCode.EMPTY,
            "no activepower, reactivepower or voltmagnitude reading"
            + (f" (only {', '.join(sorted(ignored))})" if ignored else ""),
            device=device,
        )
    components = []
    for component, by in values.items():
        p, q, v = by.get(_P), by.get(_Q), by.get(_V)
        if p is not None and q is not None and p.keys() != q.keys():
            raise MeterPayloadError(
                MeterErrorCode.PHASES,
                f"{component[:64]!r}: activepower of phases {''.join(sorted(p))} but "
                f"reactivepower of phases {''.join(sorted(q))}",
                device=device,
            )
        covered = set(p or ()) | set(q or ()) | set(v or ())
        components.append(
            ComponentReading(
                component=component,
                phases="".join(sorted(covered)),
                p_mw=None if p is None else math.fsum(p.values()) / 1e6,
                q_mvar=None if q is None else math.fsum(q.values()) / 1e6,
                v_ln_v=None if v is None else math.fsum(v.values()) / len(v),
            )
        )
    return MeterReading(
        device=device,
        t_ns=t_ns,
        format=MeterFormat.SOGNO,
        components=tuple(components),
        ignored=tuple(sorted(ignored)),
    )


def _from_gridpilot(msg: MeterPayload) -> MeterReading:
    device = msg.device
    _check_t_ns(msg.t_ns, device, msg.t_ns)
    p = _finite(msg.p_mw, limit=MAX_ABS_POWER_MW, what="p_mw", device=device)
    q = _finite(msg.q_mvar, limit=MAX_ABS_POWER_MW, what="q_mvar", device=device)
    v = None
    if msg.v_pu is not None:
        v = _finite(msg.v_pu, limit=MAX_V_PU, low=0.0, what="v_pu", device=device)
    return MeterReading(
        device=device,
        t_ns=msg.t_ns,
        format=MeterFormat.GRIDPILOT,
        components=(ComponentReading(component=device, p_mw=p, q_mvar=q, v_pu=v),),
    )


# -- and back: what a meter sends -----------------------------------------------------------


def iso_timestamp(t_ns: int) -> str:
    """ISO 8601 UTC with microseconds, as SOGNO writes it (nanoseconds are truncated)."""
    return (_EPOCH + timedelta(microseconds=t_ns // 1000)).isoformat()


def encode(reading: MeterReading) -> bytes:
    """The payload a meter would publish for ``reading``, in ``reading.format``.

    SOGNO: power is split evenly over the component's ``phases`` (all three when empty) and
    the voltage repeated on each; ``v_pu`` cannot be said in SOGNO and is left out.
    GridPilot: exactly one component, with ``p_mw`` and ``q_mvar``.
    """
    if reading.format is MeterFormat.GRIDPILOT:
        if len(reading.components) != 1:
            raise ValueError("GridPilot's meter format carries exactly one component")
        c = reading.components[0]
        if c.p_mw is None or c.q_mvar is None:
            raise ValueError("GridPilot's meter format needs p_mw and q_mvar")
        return msgspec.json.encode(
            MeterPayload(
                device=reading.device, t_ns=reading.t_ns, p_mw=c.p_mw, q_mvar=c.q_mvar, v_pu=c.v_pu
            )
        )
    readings: list[dict[str, object]] = []
    for c in reading.components:
        phases: Sequence[str] = c.phases or _PHASES
        for measurand, total, share in (
            (_P, c.p_mw, 1e6 / len(phases)),
            (_Q, c.q_mvar, 1e6 / len(phases)),
            (_V, c.v_ln_v, 1.0),
        ):
            if total is None:
                continue
            for phase in phases:
                readings.append(
                    {
                        "component": c.component,
                        "measurand": measurand,
                        "phase": phase,
                        "data": total * share,
                    }
                )
    return msgspec.json.encode(
        {"device": reading.device, "timestamp": iso_timestamp(reading.t_ns), "readings": readings}
    )
