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
import logging
import time

from gridpilot.core import subjects
from gridpilot.core.schemas import CONDITION_REPEAT_S, AlarmKind, Condition
from gridpilot.core.service import Service

log = logging.getLogger(__name__)


class WrongDevices:
    """The devices of one gateway that were found to be another device, and their conditions."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.active: dict[str, str] = {}  # device -> the message of its condition
        self._sent: dict[str, float] = {}  # device -> when its condition was last sent
        self._clearing: set[str] = set()  # clears the broker did not take yet
        service.spawn(self._repeat(), name="wrong-device-conditions")

    async def wrong(self, device: str, message: str) -> None:
        """``device``'s port answered with another device: count it and raise (or keep) the
        condition; a new message (another wrong device) is sent at once."""
        self.service.counters["wrong_device"] += 1
        self.service.info["wrong_devices"] = len(self.active | {device: message})
        self._clearing.discard(device)
        if self.active.get(device) == message:
            return  # the repeat sends it again in time
        self.active[device] = message
        self.service.log.warning(
            "wrong device; link refused", extra={"device": device, "problem": message}
        )
        await self._send(device, message, active=True)

    async def right(self, device: str) -> None:
        """``device`` answered as itself: clear its condition if one is raised."""
        message = self.active.pop(device, None)
        if message is None:
            return
        self.service.info["wrong_devices"] = len(self.active)
        self.service.log.info("right device answers", extra={"device": device})
        await self._send(device, f"{device} answers as expected again", active=False)

    async def _repeat(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for device in list(self._clearing):
                await self._send(device, f"{device} answers as expected again", active=False)
            now = time.monotonic()
            for device, message in list(self.active.items()):
                if now - self._sent.get(device, 0.0) >= CONDITION_REPEAT_S:
                    await self._send(device, message, active=True)

    async def _send(self, device: str, message: str, *, active: bool) -> None:
        service = self.service
        self._sent[device] = time.monotonic()
        self._clearing.discard(device)
        condition = Condition(
            grid=service.grid,
            kind=AlarmKind.COMM_LOSS,
            mrid=device,
            active=active,
            t_ns=time.time_ns(),
            message=message,
            reporter=service.name,
        )
        try:
            await service.publish(
                subjects.CONDITION.format(grid=service.grid, source=service.name), condition
            )
        except Exception as exc:  # the broker is away: an active one is sent again in time
            service.counters["conditions_not_sent"] += 1
            log.warning("condition not sent", extra={"device": device, "error": str(exc)})
            if not active:
                self._clearing.add(device)
