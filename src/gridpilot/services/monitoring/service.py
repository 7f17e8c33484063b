"""The monitoring service: checks every estimate, publishes alarm changes, serves acks."""

from __future__ import annotations

import time

import msgspec
from nats.aio.msg import Msg

from gridpilot.core import subjects
from gridpilot.core.errors import PayloadError
from gridpilot.core.estimates import EstimateReader
from gridpilot.core.schemas import AckRequest, Alarm, EstimateValues, Reply
from gridpilot.core.service import Service
from gridpilot.model import distribution
from gridpilot.services.monitoring.limits import AlarmTable, LimitChecker


class MonitoringService(Service):
    name = "monitoring"

    async def setup(self) -> None:
        pkg = await distribution.wait_for(
            self.nc, self.grid, wait_s=self.config.model_wait_s, log=self.log
        )
        model = pkg.model
        self.checker = LimitChecker(model)
        self.kv = await self.nc.jetstream().key_value("gp_alarms")
        stored: list[Alarm] = []
        try:
            entry = await self.kv.get(self.grid)
            stored = msgspec.json.decode(entry.value or b"[]", type=list[Alarm])
        except Exception:  # no table yet: a first start
            stored = []
        self.table = AlarmTable(self.grid, stored)
        self.info["active_alarms"] = len(self.table.alarms)
        self.log.info("alarm table loaded", extra={"active": len(stored)})
        self.estimates = EstimateReader(self.nc)
        await self.subscribe(subjects.STATE.format(grid=self.grid), EstimateValues, self.on_state)
        await self.subscribe(subjects.ALARM_ACK.format(grid=self.grid), AckRequest, self.on_ack)

    async def on_state(self, values: EstimateValues, msg: Msg) -> None:
        try:
            est = await self.estimates.expand(values)
        except PayloadError as exc:  # its layout unknown, or values that do not fit it
            self._drop(msg.subject, str(exc))
            return
        self.counters["estimates_checked"] += 1
        violations = self.checker.violations(est, self.table.raised_ids())
        changed = self.table.update(violations, est.t_ns)
        if changed:
            await self._publish(changed)

    async def on_ack(self, req: AckRequest, msg: Msg) -> None:
        try:
            alarm = self.table.acknowledge(req.alarm_id, req.user, time.time_ns())
        except KeyError:
            await self.reply(msg, Reply(ok=False, error=f"no active alarm {req.alarm_id!r}"))
            return
        await self._publish([alarm])
        await self.reply(msg, Reply(ok=True))

    async def _publish(self, changed: list[Alarm]) -> None:
        for alarm in changed:
            self.counters[f"alarms_{alarm.state}"] += 1
            await self.publish(subjects.ALARM.format(grid=self.grid), alarm)
            self.log.info(
                "alarm",
                extra={
                    "alarm": alarm.id,
                    "state": alarm.state.value,
                    "severity": alarm.severity.value,
                    "acknowledged": alarm.acknowledged,
                },
            )
        self.info["active_alarms"] = len(self.table.alarms)
        await self.kv.put(self.grid, msgspec.json.encode(list(self.table.alarms.values())))


def main(grid: str | None = None) -> int:
    return MonitoringService.main(grid=grid)
