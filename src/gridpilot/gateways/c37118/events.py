"""What ``PdcClient`` yields besides data frames (connection states) and what it counts."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from gridpilot.gateways.identity import WrongDevice as WrongDevice  # re-exported
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
