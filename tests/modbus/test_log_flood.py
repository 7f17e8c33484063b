"""A device sending garbage does not flood the Modbus gateway's log through pymodbus."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest
from pymodbus.client import AsyncModbusTcpClient

from gridpilot.gateways.modbus.link import PYMODBUS_LOGGER, RateLimit, quiet_pymodbus


@pytest.fixture
def pymodbus_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger(PYMODBUS_LOGGER)
    level, filters = logger.level, list(logger.filters)
    yield logger
    logger.setLevel(level)
    logger.filters[:] = filters


def _feed_garbage(segments: int) -> None:
    """What pymodbus's client does with responses of a wrong protocol id, in 8-byte segments
    (it logs an error for each read that holds one)."""

    async def main() -> None:
        client = AsyncModbusTcpClient("127.0.0.1", port=1)  # never connected: bytes fed directly
        for _ in range(segments):
            client.ctx.data_received(b"\x00\x01\xff\xff\x00\x06\x01\x03")

    asyncio.run(main())


def test_pymodbus_errors_from_a_garbage_stream_are_rate_limited(
    pymodbus_logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    quiet_pymodbus()
    quiet_pymodbus()  # a second service in the process adds no second filter
    assert sum(isinstance(f, RateLimit) for f in pymodbus_logger.filters) == 1
    caplog.set_level(logging.ERROR, logger=PYMODBUS_LOGGER)
    _feed_garbage(2_000)
    lines = [r for r in caplog.records if r.name == PYMODBUS_LOGGER]
    assert 1 <= len(lines) <= 2, [r.getMessage() for r in lines[:5]]


def test_without_the_limit_pymodbus_logs_a_line_per_read(
    pymodbus_logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    """What the limit is for (and a check that the probe above can fail)."""
    pymodbus_logger.setLevel(logging.ERROR)
    pymodbus_logger.filters[:] = [
        f for f in pymodbus_logger.filters if not isinstance(f, RateLimit)
    ]
    caplog.set_level(logging.ERROR, logger=PYMODBUS_LOGGER)
    _feed_garbage(200)
    assert len([r for r in caplog.records if r.name == PYMODBUS_LOGGER]) >= 100


def test_the_line_after_a_quiet_spell_says_how_many_were_left_out() -> None:
    limit = RateLimit(every_s=0.0)
    limit._last, limit.left_out = None, 7
    record = logging.LogRecord(
        "pymodbus.logging", logging.ERROR, __file__, 1, "bad %s", ("id",), None
    )
    assert limit.filter(record)
    assert record.getMessage() == "bad id (and 7 more pymodbus lines left out)"
