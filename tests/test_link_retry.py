"""Field links retry at most every LINK_RETRY_MAX_S, so a device that returns is read again
within seconds; and they stay quiet while the devices are not up yet at start-up."""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import time

import pytest

from gridpilot.gateways.c37118 import PdcClient
from gridpilot.gateways.iec104 import ConnectionState, ConnectionStateChanged, Iec104Master
from gridpilot.gateways.modbus.poller import DerPoller
from gridpilot.gateways.reconnect import LINK_RETRY_MAX_S, LinkNotices
from gridpilot.protocols.iec104 import DoublePointState
from gridpilot.simulator.rtu_server import PointType, RtuServer

CA = 7


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_a_returning_rtu_is_read_again_within_the_cap_and_the_start_is_quiet(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()  # nothing listens there yet, as before the simulator is up
    master = Iec104Master(host="127.0.0.1", port=port, common_address=CA)  # the defaults
    waits: list[float] = []
    started = asyncio.Event()
    caplog.set_level(logging.DEBUG, logger="gridpilot.gateways")

    async def read() -> None:
        async for event in master:
            if isinstance(event, ConnectionStateChanged):
                if event.state is ConnectionState.DISCONNECTED and event.retry_in_s is not None:
                    waits.append(event.retry_in_s)
                elif event.state is ConnectionState.STARTED:
                    started.set()

    async with master:
        reader = asyncio.create_task(read())
        # 0.5, 1, 2, 4, 4: the cap is reached and holds
        deadline = time.monotonic() + 30
        while len(waits) < 6:
            assert time.monotonic() < deadline, f"only {waits}"
            await asyncio.sleep(0.05)
        assert max(waits) == LINK_RETRY_MAX_S and waits[-2:] == [LINK_RETRY_MAX_S] * 2
        assert waits[0] < LINK_RETRY_MAX_S
        # not reachable yet at start-up: info once, no warning, no traceback
        link = [r for r in caplog.records if "IEC 104 master" in r.getMessage()]
        assert link and all(r.levelno < logging.WARNING for r in link)
        assert sum(r.levelno == logging.INFO for r in link) == 1
        assert "waiting for the device" in link[0].getMessage()

        rtu = RtuServer(
            common_address=CA,
            points={1: PointType.DOUBLE},
            read=lambda _ioa: DoublePointState.ON,
            port=port,
        )
        async with rtu:
            listening = time.monotonic()
            await asyncio.wait_for(started.wait(), timeout=LINK_RETRY_MAX_S + 1.0)
            print(f"RTU read again {time.monotonic() - listening:.2f} s after it listened")
        # a device that was up and is lost: a warning
        deadline = time.monotonic() + 10
        while not any(
            r.levelno == logging.WARNING and "link lost" in r.getMessage() for r in caplog.records
        ):
            assert time.monotonic() < deadline, "no warning for the lost RTU"
            await asyncio.sleep(0.05)
        reader.cancel()


def test_every_field_client_caps_its_retries_by_default() -> None:
    for cls, name in (
        (Iec104Master, "reconnect_max_s"),
        (PdcClient, "reconnect_max_s"),
        (DerPoller, "backoff_max_s"),
    ):
        assert inspect.signature(cls).parameters[name].default == LINK_RETRY_MAX_S, cls
    assert LINK_RETRY_MAX_S < 5.0  # read again within 5 s of its return


def test_link_notices_wait_quietly_then_warn_and_repeat() -> None:
    now = [0.0]
    notices = LinkNotices(grace_s=60, repeat_s=60, clock=lambda: now[0])
    assert notices.failed() == (logging.INFO, "waiting")
    now[0] = 30
    assert notices.failed() == (logging.DEBUG, "waiting")
    now[0] = 61  # the grace is over and the device was never reached
    assert notices.failed() == (logging.WARNING, "down")
    now[0] = 70
    assert notices.failed() == (logging.DEBUG, "down")
    now[0] = 121
    assert notices.failed() == (logging.WARNING, "down")
    notices.up()
    now[0] = 122
    assert notices.failed() == (logging.WARNING, "lost")
    now[0] = 125
    assert notices.failed() == (logging.DEBUG, "down")


def test_a_device_lost_during_the_grace_is_a_warning() -> None:
    now = [0.0]
    notices = LinkNotices(grace_s=60, clock=lambda: now[0])
    notices.up()
    now[0] = 5
    assert notices.failed() == (logging.WARNING, "lost")
