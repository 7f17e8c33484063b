"""Field-protocol quality to the IEC 61850-7-3 quality bits a Measurement carries
(``schemas.Quality``), following the mapping of IEC 61850-80-1 where it has one."""

from __future__ import annotations

from gridpilot.core.schemas import Quality
from gridpilot.protocols.iec104 import Quality as Iec104Quality

_IEC104 = (
    (Iec104Quality.INVALID, Quality.INVALID),  # IV
    (Iec104Quality.NOT_TOPICAL, Quality.QUESTIONABLE | Quality.OLD_DATA),  # NT: not updated
    (Iec104Quality.SUBSTITUTED, Quality.SUBSTITUTED),  # SB: set by an operator or automatic
    (Iec104Quality.BLOCKED, Quality.OPERATOR_BLOCKED),  # BL: frozen at its value when blocked
    (Iec104Quality.OVERFLOW, Quality.QUESTIONABLE | Quality.OVERFLOW),  # OV: beyond range
)


def from_iec104(q: int) -> int:
    """The quality bits of an IEC 60870-5-104 quality descriptor (QDS, SIQ or DIQ)."""
    out = Quality.GOOD
    for bit, mapped in _IEC104:
        if q & bit:
            out |= mapped
    return int(out)


_DATA_ERROR = 0xC000  # STAT bits 15-14: PMU error, test mode or "do not use": no valid data
_SYNC_LOST = 0x2000  # bit 13: not synchronised to UTC: angles cannot be compared
_DATA_MODIFIED = 0x0200  # bit 9: modified by post-processing


def from_c37118_stat(stat: int) -> int:
    """The quality bits of a C37.118 STAT word (the whole PMU block shares them)."""
    out = Quality.GOOD
    if stat & _DATA_ERROR:
        out |= Quality.INVALID
    if stat & _SYNC_LOST:
        out |= Quality.QUESTIONABLE
    if stat & _DATA_MODIFIED:
        out |= Quality.SUBSTITUTED
    return int(out)
