"""Field-protocol quality to the IEC 61850 quality bits of a Measurement."""

from __future__ import annotations

from gridpilot.core.schemas import Quality
from gridpilot.gateways.quality import from_c37118_stat, from_iec104
from gridpilot.protocols.c37118.codes import DataError
from gridpilot.protocols.c37118.frames import Stat
from gridpilot.protocols.iec104 import Quality as Q104


def test_iec104_quality_descriptor() -> None:
    assert from_iec104(Q104.GOOD) == Quality.GOOD
    assert from_iec104(Q104.INVALID) == Quality.INVALID
    assert from_iec104(Q104.NOT_TOPICAL) == Quality.QUESTIONABLE | Quality.OLD_DATA
    assert from_iec104(Q104.SUBSTITUTED) == Quality.SUBSTITUTED
    assert from_iec104(Q104.BLOCKED) == Quality.OPERATOR_BLOCKED
    assert from_iec104(Q104.OVERFLOW) == Quality.QUESTIONABLE | Quality.OVERFLOW
    both = from_iec104(Q104.INVALID | Q104.SUBSTITUTED)
    assert both == Quality.INVALID | Quality.SUBSTITUTED


def test_c37118_stat_word() -> None:
    assert from_c37118_stat(Stat().word) == Quality.GOOD
    for error in (DataError.PMU_ERROR, DataError.TEST_MODE, DataError.PMU_ERROR_DO_NOT_USE):
        assert from_c37118_stat(Stat(data_error=error).word) == Quality.INVALID
    assert from_c37118_stat(Stat(sync_lost=True).word) == Quality.QUESTIONABLE
    assert from_c37118_stat(Stat(data_modified=True).word) == Quality.SUBSTITUTED
    assert from_c37118_stat(Stat(config_change=True, trigger=True).word) == Quality.GOOD
