"""IEEE C37.118.2 gateway I/O: a PDC client that keeps one PMU stream flowing over TCP."""

from gridpilot.gateways.c37118.client import PdcClient
from gridpilot.gateways.c37118.events import (
    ConnectionState,
    ConnectionStateChanged,
    PdcEvent,
    PdcStats,
    WrongDevice,
)

__all__ = [
    "ConnectionState",
    "ConnectionStateChanged",
    "PdcClient",
    "PdcEvent",
    "PdcStats",
    "WrongDevice",
]
