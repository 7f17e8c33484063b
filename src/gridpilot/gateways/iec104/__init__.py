"""IEC 60870-5-104 gateway side: an asyncio master (controlling station) over the sans-IO codec."""

from gridpilot.gateways.iec104.events import (
    CommandOutcome,
    CommandResult,
    CommandStage,
    ConnectionState,
    ConnectionStateChanged,
    DoublePointUpdate,
    FloatValueUpdate,
    InterrogationFinished,
    MasterEvent,
    PointUpdate,
    ScaledValueUpdate,
    SinglePointUpdate,
    StationVerified,
    WrongDevice,
)
from gridpilot.gateways.iec104.master import Iec104Master, MasterStats

__all__ = [
    "CommandOutcome",
    "CommandResult",
    "CommandStage",
    "ConnectionState",
    "ConnectionStateChanged",
    "DoublePointUpdate",
    "FloatValueUpdate",
    "Iec104Master",
    "InterrogationFinished",
    "MasterEvent",
    "MasterStats",
    "PointUpdate",
    "ScaledValueUpdate",
    "SinglePointUpdate",
    "StationVerified",
    "WrongDevice",
]
