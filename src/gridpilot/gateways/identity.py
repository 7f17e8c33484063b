"""What a gateway tells the operator when a device's port answers with another device.

Each gateway's client checks who answered (a PMU's ID code and station, an RTU's common
address, an inverter's unit id and serial number) against the device registry and refuses a
stranger. ``WrongDevices`` turns those refusals into conditions: ``comm_loss`` for the device
(its data does not come in), with a message that says where the wrong device is and what it
is; re-sent every ``CONDITION_REPEAT_S`` while it lasts, cleared once the right device
answers. The condition goes to ``gp.<grid>.condition.<gateway>``, where monitoring makes
alarms of it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gridpilot.core import subjects
from gridpilot.core.conditions import ConditionReporter, Held
from gridpilot.core.schemas import AlarmKind, Condition

if TYPE_CHECKING:  # the clients import WrongDevice from here without the service layer
    from gridpilot.core.service import Service

REPEAT_CHECK_S = 1.0  # how often the reporter is asked to send what is due again


@dataclass(frozen=True, slots=True, kw_only=True)
class WrongDevice:
    """The device at host:port is not the one expected (a PMU's ID code or station, an RTU's
    common address, an inverter's unit and serial differ): the connection was refused and
    closed, and is retried with back-off."""

    host: str
    port: int
    expected: str  # "ID code 7 station 'a1b2c3-pmu_bus_1'", "common address 7", ...
    found: str

    @property
    def message(self) -> str:
        return (
            f"wrong device at {self.host}:{self.port}: expected {self.expected}, found {self.found}"
        )


class WrongDevices:
    """The devices of one gateway that were found to be another device, and their conditions."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.active: dict[str, str] = {}  # device -> the message of its condition
        self.reporter = ConditionReporter(grid=service.grid, reporter=service.name, send=self._send)
        service.spawn(self._repeat(), name="wrong-device-conditions")

    async def wrong(self, device: str, message: str) -> None:
        """``device``'s port answered with another device: count it and raise (or keep) the
        condition; a new message (another wrong device) is sent at once."""
        self.service.counters["wrong_device"] += 1
        if self.active.get(device) == message:
            return  # the repeat sends it again in time
        self.active[device] = message
        self.service.info["wrong_devices"] = len(self.active)
        self.service.log.warning(
            "wrong device; link refused", extra={"device": device, "problem": message}
        )
        await self.reporter.update(self._held())

    async def right(self, device: str) -> None:
        """``device`` answered as itself: clear its condition if one is raised."""
        if self.active.pop(device, None) is None:
            return
        self.service.info["wrong_devices"] = len(self.active)
        self.service.log.info("right device answers", extra={"device": device})
        await self.reporter.update(self._held())

    def _held(self) -> list[Held]:
        return [
            Held(
                kind=AlarmKind.COMM_LOSS,
                mrid=device,
                message=message,
                shape=message,  # another wrong device at the port is news: sent at once
                ended=f"{device} answers as expected again",
            )
            for device, message in self.active.items()
        ]

    async def _repeat(self) -> None:
        while True:
            await asyncio.sleep(REPEAT_CHECK_S)
            await self.reporter.update(self._held())

    async def _send(self, condition: Condition) -> None:
        # never raises for an outage (the service's connection drops and counts what it
        # cannot buffer); a clear lost so ends as "no longer reported" at monitoring
        service = self.service
        await service.publish(
            subjects.CONDITION.format(grid=service.grid, source=service.name), condition
        )
