"""What ``Iec104Master`` yields (point updates, connection states) and what its commands return."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from gridpilot.gateways.identity import WrongDevice as WrongDevice  # re-exported
from gridpilot.protocols.iec104 import Cot, DoublePointState, Quality


class ConnectionState(StrEnum):
    CONNECTING = "connecting"  # opening TCP
    CONNECTED = "connected"  # TCP up, STARTDT sent
    STARTED = "started"  # data transfer on: values flow, commands can be sent
    DISCONNECTED = "disconnected"  # lost or refused; a retry follows after retry_in_s
    CLOSED = "closed"  # the master was closed; iteration ends


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionStateChanged:
    state: ConnectionState
    host: str
    port: int
    reason: str | None = None
    retry_in_s: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class _PointUpdateBase:
    common_address: int
    ioa: int
    quality: Quality
    cot: Cot
    time_ns: int | None  # the station's CP56Time2a tag as UTC ns, None for untimed types
    time_invalid: bool  # the tag's IV bit: the station's clock was not trustworthy
    received_ns: int  # our wall clock when the ASDU arrived


@dataclass(frozen=True, slots=True, kw_only=True)
class SinglePointUpdate(_PointUpdateBase):
    value: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class DoublePointUpdate(_PointUpdateBase):
    value: DoublePointState


@dataclass(frozen=True, slots=True, kw_only=True)
class ScaledValueUpdate(_PointUpdateBase):
    value: int


@dataclass(frozen=True, slots=True, kw_only=True)
class FloatValueUpdate(_PointUpdateBase):
    value: float


PointUpdate = SinglePointUpdate | DoublePointUpdate | ScaledValueUpdate | FloatValueUpdate


@dataclass(frozen=True, slots=True, kw_only=True)
class InterrogationFinished:
    """The station sent ACT_TERM for a general interrogation: every point has been reported."""

    common_address: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StationVerified:
    """The station answered with the expected common address: it is the RTU expected."""

    common_address: int


MasterEvent = (
    PointUpdate | ConnectionStateChanged | InterrogationFinished | StationVerified | WrongDevice
)


class CommandOutcome(StrEnum):
    CONFIRMED = "confirmed"  # positive confirmation (and termination, when awaited)
    REFUSED = "refused"  # a negative confirmation from the station
    TIMEOUT = "timeout"  # no answer within the command's timeout
    NOT_CONNECTED = "not_connected"  # data transfer was not started when the command was asked
    CONNECTION_LOST = "connection_lost"  # the connection dropped while waiting
    BUSY = "busy"  # another command on the same type and address is under way


class CommandStage(StrEnum):
    SELECT = "select"
    EXECUTE = "execute"
    TERMINATION = "termination"


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandResult:
    ioa: int
    outcome: CommandOutcome
    stage: CommandStage  # how far the command got; where it failed when not confirmed
    elapsed_s: float
    cot: Cot | None = None  # the cause of the last reply (e.g. UNKNOWN_IOA on a refusal)
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome is CommandOutcome.CONFIRMED
