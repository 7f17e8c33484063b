"""What ``PdcClient`` yields besides data frames (connection states) and what it counts."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from gridpilot.protocols.c37118 import DataFrame


class ConnectionState(StrEnum):
    CONNECTING = "connecting"  # opening TCP
    CONNECTED = "connected"  # TCP up, asking for the configuration
    STREAMING = "streaming"  # configuration received, transmission turned on
    DISCONNECTED = "disconnected"  # lost or refused; a retry follows after retry_in_s
    CLOSED = "closed"  # the client was closed; iteration ends


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionStateChanged:
    state: ConnectionState
    host: str
    port: int
    idcode: int
    reason: str | None = None
    retry_in_s: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class WrongDevice:
    """The stream at host:port is not the PMU expected (its ID code or station differs): the
    connection was refused and closed, and is retried with back-off."""

    host: str
    port: int
    expected: str  # "ID code 7 station 'a1b2c3-pmu_bus_1'"
    found: str
    message: str  # "wrong device at HOST:PORT: expected ..., found ..."


PdcEvent = DataFrame | ConnectionStateChanged | WrongDevice


@dataclass(slots=True)
class PdcStats:
    """Counters since the client was made; a gateway reads them for its heartbeat or log."""

    connects: int = 0  # TCP connections made
    disconnects: int = 0  # connections that ended (lost, timed out, refused)
    connect_failures: int = 0  # attempts that found no PMU or got no configuration
    data_frames: int = 0
    config_frames: int = 0
    config_changes: int = 0  # a configuration different from the one in use
    malformed_frames: int = 0  # bad CHK, bad fields, data that does not fit: dropped
    skipped_bytes: int = 0  # garbage between frames
    frames_without_config: int = 0  # data frames before any configuration: dropped
    dropped_events: int = 0  # the consumer fell more than max_pending_events behind
    wrong_device: int = 0  # connections refused: another ID code or station than expected
