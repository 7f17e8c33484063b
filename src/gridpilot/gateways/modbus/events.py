"""What the DER poller hands out: readings, unit outages, setpoint results, and its one error."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from gridpilot.core.errors import ProtocolError
from gridpilot.protocols.sunspec import DerState


class FailureKind(StrEnum):
    UNREACHABLE = "unreachable"  # no TCP connection to the server
    TIMEOUT = "timeout"  # the request got no answer in time
    REFUSED = "refused"  # the device answered with a Modbus exception
    PROTOCOL = "protocol"  # an answer that is not the one asked for
    BAD_DATA = "bad_data"  # registers that do not hold the SunSpec map
    INVALID = "invalid"  # a setpoint the map cannot carry; nothing was written
    MISMATCH = "mismatch"  # the device holds other values than were written
    WRONG_DEVICE = "wrong_device"  # another serial number or unit id than expected


# Modbus exception codes, in the words of the Modbus application protocol specification
EXCEPTION_TEXT = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


class ModbusError(ProtocolError):
    """A Modbus exchange that failed: ``kind`` says how, ``exception_code`` is the device's
    answer when it refused."""

    def __init__(
        self,
        kind: FailureKind,
        reason: str,
        *,
        unit: int | None = None,
        exception_code: int | None = None,
    ) -> None:
        self.kind = kind
        self.unit = unit
        self.exception_code = exception_code
        where = f"unit {unit}: " if unit is not None else ""
        super().__init__("modbus", f"{where}{reason}")


@dataclass(frozen=True, slots=True, kw_only=True)
class DerReading:
    """One successful poll of one unit; ``state`` has MW/Mvar/p.u. properties."""

    unit: int
    t_ns: int
    state: DerState


@dataclass(frozen=True, slots=True, kw_only=True)
class DerUnavailable:
    """A unit stopped answering (sent once when it goes down; readings resume when it is back)."""

    unit: int
    t_ns: int
    kind: FailureKind
    error: str


DerEvent = DerReading | DerUnavailable


@dataclass(frozen=True, slots=True, kw_only=True)
class UnitHealth:
    """How polling one unit goes (a snapshot)."""

    unit: int
    available: bool
    consecutive_failures: int
    failures: int
    timeouts: int
    readings: int
    last_error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SetpointResult:
    """What became of a setpoint: ``ok`` once the device holds exactly what was written."""

    unit: int
    ok: bool
    t_ns: int
    p_limit_mw: float | None  # as requested; None lifts the limit
    q_mvar: float | None
    applied_p_limit_mw: float | None = None  # as read back (rounded to the register steps)
    applied_q_mvar: float | None = None
    failure: FailureKind | None = None
    error: str = ""
    exception_code: int | None = None
