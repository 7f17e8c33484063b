"""The simulator service: runs the twin in (scaled) real time and speaks for its devices.

What the operator changed in the twin (switch positions, DER setpoints, training injections)
and its clock are kept in KV ``gp_twin`` and read back at start-up: a restart never changes
the grid. A grid the power flow cannot solve, or parts of it without a source, are states of
the twin reported as conditions (``twin_diverged``, ``de_energised``), never a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from gridpilot.core import subjects
from gridpilot.core.bus import BUS_FAILURES
from gridpilot.core.errors import BusError, GridPilotError
from gridpilot.core.operate import TWIN
from gridpilot.core.schemas import (
    Command,
    CommandKind,
    CommandResult,
    Condition,
    InjectionKind,
    InjectRequest,
    Reply,
    SwitchState,
)
from gridpilot.core.service import Service
from gridpilot.core.validation import command_problem, inject_problem
from gridpilot.model import distribution
from gridpilot.simulator import persist
from gridpilot.simulator.conditions import ConditionReporter, Held, twin_conditions
from gridpilot.simulator.field import FieldDevices
from gridpilot.simulator.schedule import Schedule
from gridpilot.simulator.twin import GrossError, Twin

TOPOLOGY_EVERY_S = 60.0  # simulated seconds between topology reports without a change
CLOCK_SAVE_S = 5.0  # wall seconds between stores of the clock when nothing else changed
# How long a command routed to an RTU waits for the twin to see the operation it asked for;
# the gateway gives up on select-before-operate sooner.
FIELD_COMMAND_S = 30.0

_BUS_ERRORS: tuple[type[Exception], ...] = (*BUS_FAILURES, OSError)


@dataclass
class _Pending:
    cmd: Command
    deadline: float  # monotonic


class SimulatorService(Service):
    name = "simulator"

    async def setup(self) -> None:
        pkg = await distribution.wait_for(
            self.nc, self.grid, wait_s=self.config.model_wait_s, log=self.log
        )
        model, placement = pkg.model, pkg.placement
        self.placement = placement
        self.servers = {p.device for p in pkg.devices.pmu} | {r.device for r in pkg.devices.rtu}
        self.normal = {sw.id: sw.closed for sw in model.switches}
        self.kv = await self._state_bucket()
        stored = await persist.load(self.kv, self.grid)
        self.twin = Twin(model, placement, seed=int(time.time()))
        self.tick_s = min(d.period_s for d in placement.devices)
        # simulated time in whole ns, on the tick grid, so that PMU frame times (multiples of
        # 1/data rate) and the truth's times are the same numbers
        tick_ns = round(self.tick_s * 1e9)
        start_ns = time.time_ns() if stored is None else stored.resumed_t_ns(time.time_ns())
        self.t_ns = start_ns // tick_ns * tick_ns
        self.t_s = self.t_ns / 1e9
        self.field_outages: dict[str, float] = {}  # device -> simulated end of its outage
        if stored is not None:
            self._restore(stored)
        self.schedule = Schedule(placement, self.t_s)
        self.twin.step(self.t_s, t_ns=self.t_ns)
        self.pending: dict[str, _Pending] = {}  # switch -> command routed to its RTU
        self._reports: set[asyncio.Task[None]] = set()
        self.field = FieldDevices(
            twin=self.twin,
            grid=self.grid,
            placement=placement,
            registry=pkg.devices,
            sim_time_s=lambda: self.t_s,
            speed=self.config.speed,
            mqtt_url=self.config.mqtt_url,
            mqtt_credentials=self.config.mqtt_credentials,
            on_switched=self._on_field_switch,
            service=self,  # devices whose port is taken: state, heartbeat info, conditions
        )
        await self.field.start()
        for device, until in list(self.field_outages.items()):  # outages that were running
            if not await self.field.disconnect(device, until - self.t_s):
                del self.field_outages[device]
        self.info["protocol_devices"] = len(self.field.protocol_devices)
        self.seq = 0
        self.topology_due = self.t_s
        self.info["speed"] = self.config.speed
        self.conditions = ConditionReporter(
            grid=self.grid, reporter=self.name, send=self._send_condition
        )
        if stored is not None:  # the previous process's alarms: cleared if gone now
            self.conditions.seed(
                [
                    Held(
                        kind=c.kind, mrid=c.mrid, severity=c.severity, value=0.0, message=c.message
                    )
                    for c in stored.conditions
                ]
            )
        self._saved: persist.TwinState | None = stored
        self._saved_wall = time.monotonic()
        self._save_failing = False
        await self._save()  # the clock as resumed, and a first start's default positions
        await self.subscribe(
            subjects.COMMAND.format(grid=self.grid, target="*"), Command, self.on_command
        )
        await self.subscribe(
            subjects.SIM_INJECT.format(grid=self.grid), InjectRequest, self.on_inject
        )
        self.log.info(
            "twin ready",
            extra={
                "model": model.summary(),
                "tick_s": self.tick_s,
                "speed": self.config.speed,
                "restored": stored is not None,
                "solved": self.twin.solved,
            },
        )
        self.spawn(self._run(), name="tick")
        self.spawn(self._keep_state(), name="state")

    async def _state_bucket(self) -> KeyValue:
        try:
            return await self.nc.jetstream().key_value(persist.BUCKET)
        except nats.js.errors.BucketNotFoundError:
            raise BusError(
                f"KV bucket {persist.BUCKET} is missing: the platform was set up by an older "
                "version; `gridpilot up` (or `gridpilot init`) creates it"
            ) from None

    def _restore(self, stored: persist.TwinState) -> None:
        """Put back what the operator had done, before any device reports."""
        twin = self.twin
        unknown = twin.restore_switches(stored.closed)
        gens = {g.id for g in twin.model.generators}
        twin.setpoints = {g: sp for g, sp in stored.setpoints.items() if g in gens}
        twin.gross = [
            GrossError(g.source, g.mrid, g.measurand, g.error, g.until_s)
            for g in stored.gross
            if g.until_s > self.t_s
        ]
        for device, until in stored.outages.items():
            if until <= self.t_s:
                continue
            # a device with a server of its own had it stopped; the others fell silent
            (self.field_outages if device in self.servers else twin.outages)[device] = until
        changed = {k: v for k, v in twin.closed.items() if v != self.normal[k]}
        self.log.info(
            "twin state restored",
            extra={
                "switches_changed": changed,
                "setpoints": len(twin.setpoints),
                "injections": len(twin.gross) + len(stored.outages),
                "unknown_switches": unknown,
                "sim_time": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.t_s)),
            },
        )

    async def teardown(self) -> None:
        with contextlib.suppress(*_BUS_ERRORS):
            await self._save(force=True)
        await self.field.stop()

    # -- persistence --------------------------------------------------------------------------
    def twin_state(self) -> persist.TwinState:
        twin = self.twin
        outages = {d: u for d, u in twin.outages.items() if u > self.t_s}
        outages |= {d: u for d, u in self.field_outages.items() if u > self.t_s}
        return persist.TwinState(
            grid=self.grid,
            closed={k: v for k, v in twin.closed.items() if v != self.normal[k]},
            setpoints=dict(twin.setpoints),
            gross=[
                persist.StoredGrossError(
                    source=g.source,
                    mrid=g.mrid,
                    measurand=g.measurand,
                    error=g.error,
                    until_s=g.until_s,
                )
                for g in twin.gross
                if g.until_s > self.t_s
            ],
            outages=outages,
            conditions=[
                persist.StoredCondition(
                    kind=h.kind, mrid=h.mrid, severity=h.severity, message=h.message
                )
                for h in self.conditions.active.values()
            ],
            t_ns=self.t_ns,
            wall_ns=time.time_ns(),
            speed=self.config.speed,
        )

    async def _save(self, *, force: bool = False) -> bool:
        """Store the twin's state when it changed (or the clock is due); False when the
        broker did not take it (the next tick tries again)."""
        state = self.twin_state()
        due = time.monotonic() - self._saved_wall >= CLOCK_SAVE_S
        if not force and not due and state.same_grid_state(self._saved):
            return True
        try:
            await persist.save(self.kv, state)
        except _BUS_ERRORS as exc:
            self.counters["state_save_failures"] += 1
            if not self._save_failing:
                self.log.warning("cannot store the twin's state", extra={"error": repr(exc)})
            self._save_failing = True
            return False
        if self._save_failing:
            self.log.info("twin state stored again")
        self._save_failing = False
        self._saved, self._saved_wall = state, time.monotonic()
        self.counters["state_saves"] += 1
        return True

    async def _keep_state(self) -> None:
        """Store changes made by the field (an RTU's switching, an inverter's setpoint over
        Modbus) and the clock; apart from the tick, whose time a slow broker must not stop."""
        while True:
            await self._save()
            await asyncio.sleep(self.tick_s)

    # -- commands and injections --------------------------------------------------------------
    async def on_command(self, cmd: Command, msg: Msg) -> None:
        if cmd.kind is CommandKind.DER_SETPOINT and cmd.target in self.field.der_generators:
            return  # the inverter gets it over Modbus from its gateway
        if cmd.kind is CommandKind.SWITCH and cmd.target in self.field.rtu_switches:
            # the RTU gets it over IEC 104 from its gateway; the twin reports what it did
            self.pending[cmd.target] = _Pending(cmd, time.monotonic() + FIELD_COMMAND_S)
            return
        try:
            if cmd.grid != self.grid:
                raise GridPilotError(f"command for grid {cmd.grid!r} sent to {self.grid}")
            # a NaN limit would be taken as "no limit" by the power flow: refuse, say why
            rating = {g.id: g.p_mw for g in self.twin.model.generators}.get(cmd.target)
            if problem := command_problem(cmd, rating_mw=rating):
                raise GridPilotError(f"refused: {problem}")
            change = self.twin.apply_command(cmd)
        except GridPilotError as exc:
            self.log.warning("command rejected", extra={"command": cmd.id, "error": str(exc)})
            await self.command_result(cmd, ok=False, error=str(exc))
            return
        self.log.info(
            "command applied", extra={"command": cmd.id, "by": cmd.issued_by, "change": change}
        )
        self.topology_due = 0.0  # report the new switch states with the next tick
        if not await self._save(force=True):
            change += "; not stored yet (the broker did not answer): a restart now would undo it"
        await self._report_conditions()
        await self.command_result(cmd, ok=True, change=change)

    def _on_field_switch(self, switch: str, closed: bool, change: str) -> None:
        """An RTU operated a switch: tell the operator what that did to the grid."""
        pending = self.pending.pop(switch, None)
        if pending is None or pending.cmd.closed != closed or time.monotonic() > pending.deadline:
            return  # not the command we saw (another master, or an old one)
        task = asyncio.ensure_future(self._twin_report(pending.cmd, change))
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    async def _twin_report(self, cmd: Command, change: str) -> None:
        consequence = change.split("; ", 1)[1] if "; " in change else change
        result = CommandResult(
            command_id=cmd.id,
            grid=self.grid,
            target=cmd.target,
            ok=True,
            t_ns=time.time_ns(),
            executed_by=TWIN,  # the report on a command a gateway carried out
            change=consequence,
        )
        try:
            await self.publish(subjects.COMMAND_RESULT.format(grid=self.grid), result)
            await self._report_conditions()
        except _BUS_ERRORS as exc:
            self.log.warning("twin report not sent", extra={"command": cmd.id, "error": repr(exc)})
        await self._save(force=True)

    async def on_inject(self, req: InjectRequest, msg: Msg) -> None:
        known = {d.id for d in self.placement.devices}
        if problem := inject_problem(req):
            await self.reply(msg, Reply(ok=False, error=f"refused: {problem}"))
            return
        if req.kind is InjectionKind.CLEAR:
            self.twin.gross.clear()
            self.twin.outages.clear()
            self.field_outages.clear()
            await self.field.reconnect_all()
        elif req.source not in known:
            await self.reply(msg, Reply(ok=False, error=f"unknown device {req.source!r}"))
            return
        elif req.kind is InjectionKind.COMM_OUTAGE:
            # a device with its own server loses its connection; the others fall silent
            if await self.field.disconnect(req.source, req.duration_s):
                self.field_outages[req.source] = self.t_s + req.duration_s
            else:
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
        await self._save(force=True)
        await self.reply(msg, Reply(ok=True))

    # -- the clock ----------------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_wall = loop.time()
        dt_ns = round(self.tick_s * self.config.speed * 1e9)
        while True:
            self.tick()
            await self._publish_due()
            await self._report_conditions()
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
        was_solved = self.twin.solved
        if not self.twin.step(self.t_s, t_ns=self.t_ns):
            self.counters["ticks_unsolved"] += 1
        if self.twin.solved != was_solved:  # once per change, not every tick
            if self.twin.solved:
                self.log.info("power flow solves again")
            else:
                self.log.warning("power flow has no solution", extra={"why": self.twin.failure})
        self.counters["ticks"] += 1
        self.info["sim_time"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.t_s))
        self.info["power_flow"] = "solved" if self.twin.solved else "no solution"
        self.info["dead_buses"] = len(self.twin.dead_bus)
        for device in [d for d, until in self.field_outages.items() if until <= self.t_s]:
            del self.field_outages[device]  # the device came back by itself
        now = time.monotonic()
        for switch in [s for s, p in self.pending.items() if p.deadline < now]:
            del self.pending[switch]

    async def _report_conditions(self) -> None:
        await self.conditions.update(twin_conditions(self.twin))

    async def _send_condition(self, cond: Condition) -> None:
        await self.publish(subjects.CONDITION.format(grid=self.grid, source=self.name), cond)
        self.counters["conditions_sent"] += 1

    async def _publish_due(self) -> None:
        t = self.t_s
        solved = self.twin.solved
        if solved:
            await self.publish(subjects.TRUTH.format(grid=self.grid), self.twin.truth(self.grid))
        for d in self.schedule.due(t):
            if d.id in self.field.protocol_devices:
                continue  # reported through its own protocol and gateway
            if self.twin.silent(d.id, t):
                self.counters["reports_suppressed"] += 1
                continue
            if not solved:  # no operating point: nothing to measure at this instant
                self.counters["reports_unsolved"] += 1
                continue
            if not self.twin.powered(d):
                self.counters["reports_unpowered"] += 1
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
