"""SunSpec-like Modbus register map of a DER inverter, and its sans-IO codec.

The map (addresses, types, scale factors) is documented in ``points``: the SunSpec common
model (who the device is: its serial number and unit id) and the inverter's block; ``codec``
turns a ``DerState`` into registers and back, and checks writes as a device would.
"""

from gridpilot.protocols.sunspec.codec import (
    DerState,
    SunSpecError,
    WriteProblem,
    check_write,
    decode,
    decode_string,
    decode_value,
    encode,
    encode_controls,
    encode_string,
    encode_value,
    read_scale_factors,
    scale_factors,
)
from gridpilot.protocols.sunspec.points import (
    BASE_ADDRESS,
    BLOCK_SIZE,
    BY_NAME,
    CONTROLS,
    CONTROLS_ADDRESS,
    CONTROLS_SIZE,
    MODEL_ID,
    POINTS,
    InverterStatus,
    Point,
    PointType,
    point_at,
)

__all__ = [
    "BASE_ADDRESS",
    "BLOCK_SIZE",
    "BY_NAME",
    "CONTROLS",
    "CONTROLS_ADDRESS",
    "CONTROLS_SIZE",
    "MODEL_ID",
    "POINTS",
    "DerState",
    "InverterStatus",
    "Point",
    "PointType",
    "SunSpecError",
    "WriteProblem",
    "check_write",
    "decode",
    "decode_string",
    "decode_value",
    "encode",
    "encode_controls",
    "encode_string",
    "encode_value",
    "point_at",
    "read_scale_factors",
    "scale_factors",
]
