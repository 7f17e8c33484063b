"""The simulator service: runs the twin in (scaled) real time and speaks for its devices."""

from __future__ import annotations

import asyncio
import time

from nats.aio.msg import Msg

from gridpilot.core import subjects
from gridpilot.core.errors import GridPilotError
from gridpilot.core.schemas import (
    Command,
    CommandKind,
    InjectionKind,
    InjectRequest,
    Reply,
    SwitchState,
)
from gridpilot.core.service import Service
from gridpilot.model import distribution
from gridpilot.simulator.field import FieldDevices
from gridpilot.simulator.schedule import Schedule
from gridpilot.simulator.twin import GrossError, Twin

TOPOLOGY_EVERY_S = 60.0  # simulated seconds between topology reports without a change


class SimulatorService(Service):
    name = "simulator"

    async def setup(self) -> None:
        pkg = await distribution.wait_for(
            self.nc, self.grid, wait_s=self.config.model_wait_s, log=self.log
        )
        model, placement = pkg.model, pkg.placement
        self.placement = placement
        self.twin = Twin(model, placement, seed=int(time.time()))
        self.tick_s = min(d.period_s for d in placement.devices)
        # simulated time in whole ns, on the tick grid, so that PMU frame times (multiples of
        # 1/data rate) and the truth's times are the same numbers
        tick_ns = round(self.tick_s * 1e9)
        self.t_ns = time.time_ns() // tick_ns * tick_ns
        self.t_s = self.t_ns / 1e9
        self.schedule = Schedule(placement, self.t_s)
        self.twin.step(self.t_s, t_ns=self.t_ns)
        self.field = FieldDevices(
            twin=self.twin,
            grid=self.grid,
            placement=placement,
            registry=pkg.devices,
            sim_time_s=lambda: self.t_s,
            speed=self.config.speed,
            mqtt_url=self.config.mqtt_url,
            mqtt_password=self.config.mqtt_password,
            service=self,  # devices whose port is taken: state, heartbeat info, conditions
        )
        await self.field.start()
        self.info["protocol_devices"] = len(self.field.protocol_devices)
        self.seq = 0
        self.topology_due = self.t_s
        self.info["speed"] = self.config.speed
        await self.subscribe(
            subjects.COMMAND.format(grid=self.grid, target="*"), Command, self.on_command
        )
        await self.subscribe(
            subjects.SIM_INJECT.format(grid=self.grid), InjectRequest, self.on_inject
        )
        self.log.info(
            "twin ready",
            extra={"model": model.summary(), "tick_s": self.tick_s, "speed": self.config.speed},
        )
        self.spawn(self._run(), name="tick")

    async def teardown(self) -> None:
        await self.field.stop()

    async def on_command(self, cmd: Command, msg: Msg) -> None:
        if cmd.kind is CommandKind.DER_SETPOINT and cmd.target in self.field.der_generators:
            return  # the inverter gets it over Modbus from its gateway
        if cmd.kind is CommandKind.SWITCH and cmd.target in self.field.rtu_switches:
            return  # the RTU gets it over IEC 104 from its gateway
        try:
            if cmd.grid != self.grid:
                raise GridPilotError(f"command for grid {cmd.grid!r} sent to {self.grid}")
            change = self.twin.apply_command(cmd)
        except GridPilotError as exc:
            self.log.warning("command rejected", extra={"command": cmd.id, "error": str(exc)})
            await self.command_result(cmd, ok=False, error=str(exc))
            return
        self.log.info(
            "command applied", extra={"command": cmd.id, "by": cmd.issued_by, "change": change}
        )
        self.topology_due = 0.0  # report the new switch states with the next tick
        await self.command_result(cmd, ok=True, change=change)

    async def on_inject(self, req: InjectRequest, msg: Msg) -> None:
        known = {d.id for d in self.placement.devices}
        if req.kind is InjectionKind.CLEAR:
            self.twin.gross.clear()
            self.twin.outages.clear()
            await self.field.reconnect_all()
        elif req.source not in known:
            await self.reply(msg, Reply(ok=False, error=f"unknown device {req.source!r}"))
            return
        elif req.kind is InjectionKind.COMM_OUTAGE:
            # a device with its own server loses its connection; the others fall silent
            if not await self.field.disconnect(req.source, req.duration_s):
                self.twin.outages[req.source] = self.t_s + req.duration_s
        else:
            points = {p.mrid for p in self.placement.device(req.source).points}
            if req.mrid not in points:
                await self.reply(
                    msg, Reply(ok=False, error=f"device {req.source} does not measure {req.mrid!r}")
                )
                return
            self.twin.gross.append(
                GrossError(
                    source=req.source,
                    mrid=req.mrid,
                    measurand=req.measurand,
                    error=req.error,
                    until_s=self.t_s + req.duration_s,
                )
            )
        self.counters[f"inject_{req.kind}"] += 1
        self.log.info(
            "injection",
            extra={
                "kind": req.kind.value,
                "source": req.source,
                "mrid": req.mrid,
                "error": req.error,
            },
        )
        await self.reply(msg, Reply(ok=True))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_wall = loop.time()
        dt_ns = round(self.tick_s * self.config.speed * 1e9)
        while True:
            self.tick()
            await self._publish_due()
            self._advance(dt_ns)
            next_wall += self.tick_s
            delay = next_wall - loop.time()
            if delay < 0:
                self.counters["ticks_late"] += 1
                missed = int(-delay // self.tick_s)
                next_wall += missed * self.tick_s
                self._advance(missed * dt_ns)
                delay = 0.0
            await asyncio.sleep(delay)

    def _advance(self, dt_ns: int) -> None:
        self.t_ns += dt_ns
        self.t_s = self.t_ns / 1e9

    def tick(self) -> None:
        self.twin.step(self.t_s, t_ns=self.t_ns)
        self.counters["ticks"] += 1
        self.info["sim_time"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.t_s))

    async def _publish_due(self) -> None:
        t = self.t_s
        await self.publish(subjects.TRUTH.format(grid=self.grid), self.twin.truth(self.grid))
        for d in self.schedule.due(t):
            if d.id in self.field.protocol_devices:
                continue  # reported through its own protocol and gateway
            if self.twin.silent(d.id, t):
                self.counters["reports_suppressed"] += 1
                continue
            self.seq += 1
            await self.publish(
                subjects.MEAS.format(grid=self.grid, source=d.id),
                self.twin.measure(d, self.grid, self.seq),
            )
        if self.field.topology_changed:  # a switch operated by an RTU
            self.field.topology_changed = False
            self.topology_due = t
        if t >= self.topology_due:
            self.topology_due = t + TOPOLOGY_EVERY_S
            await self.publish(
                subjects.TOPOLOGY.format(grid=self.grid),
                SwitchState(grid=self.grid, t_ns=round(t * 1e9), closed=dict(self.twin.closed)),
            )


def main(grid: str | None = None) -> int:
    return SimulatorService.main(grid=grid)
