"""Modbus TCP gateway for DER inverters: poll their SunSpec-like registers, write setpoints.

Mapping units to generator mRIDs and publishing on the bus come on top of ``DerPoller``.
"""

from gridpilot.gateways.modbus.events import (
    DerEvent,
    DerReading,
    DerUnavailable,
    FailureKind,
    ModbusError,
    SetpointResult,
    UnitHealth,
)
from gridpilot.gateways.modbus.poller import DerPoller

__all__ = [
    "DerEvent",
    "DerPoller",
    "DerReading",
    "DerUnavailable",
    "FailureKind",
    "ModbusError",
    "SetpointResult",
    "UnitHealth",
]
