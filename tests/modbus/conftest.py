"""Shared pieces of the Modbus tests: a stand-in for the twin and a way to read a poller."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from gridpilot.gateways.modbus import DerEvent, DerPoller
from gridpilot.protocols.sunspec import InverterStatus
from gridpilot.simulator.der_modbus import InverterSpec, VirtualDerServer

# fast enough for a test suite, slow enough not to load two shared cores
FAST = {"period_s": 0.05, "timeout_s": 0.3, "backoff_min_s": 0.05, "backoff_max_s": 0.2}


@dataclass
class FakeTwin:
    """What the simulator service gives the DER server: each unit's output, and a place for
    setpoints (the real twin's ``apply_command`` would take them)."""

    outputs: dict[int, tuple[float, float, float, InverterStatus]]
    setpoints: list[tuple[int, float | None, float | None]] = field(default_factory=list)

    def state(self, unit: int) -> tuple[float, float, float, InverterStatus]:
        return self.outputs[unit]

    def on_setpoint(self, unit: int, p_limit_mw: float | None, q_mvar: float | None) -> None:
        self.setpoints.append((unit, p_limit_mw, q_mvar))


@pytest.fixture
def twin() -> FakeTwin:
    return FakeTwin(
        outputs={
            1: (0.412, 0.05, 1.013, InverterStatus.MPPT),
            2: (1.5, -0.2, 0.987, InverterStatus.THROTTLED),
        }
    )


@pytest.fixture
async def der_server(twin: FakeTwin) -> AsyncIterator[VirtualDerServer]:
    server = VirtualDerServer(
        units={1: InverterSpec(rated_mw=0.5), 2: InverterSpec(rated_mw=2.0, v_ref_kv=20.0)},
        state=twin.state,
        on_setpoint=twin.on_setpoint,
        port=0,
        refresh_s=0.05,
    )
    async with server:
        yield server


async def events_until(
    poller: DerPoller, done: Callable[[list[DerEvent]], bool], *, within_s: float = 3.0
) -> list[DerEvent]:
    """Iterate the poller until ``done(events so far)``; fail if that takes too long."""
    events: list[DerEvent] = []
    async with asyncio.timeout(within_s), contextlib.aclosing(aiter(poller)) as stream:
        async for event in stream:
            events.append(event)
            if done(events):
                return events
    raise AssertionError("the poller stopped")  # pragma: no cover
