"""The ``gateway_iec104`` service: an IEC 60870-5-104 master for every RTU of the device
registry. Measured values become measurement sets (one per RTU report, grouped by their time
tag); switching commands from the bus go to the RTU as select-before-operate double commands,
and each command's outcome is published."""

from __future__ import annotations

from collections import defaultdict

from nats.aio.msg import Msg

from gridpilot.core import subjects
from gridpilot.core.schemas import (
    Command,
    CommandKind,
    DeviceKind,
    Measurand,
    Measurement,
    MeasurementSet,
    Terminal,
)
from gridpilot.core.service import Service
from gridpilot.gateways.identity import WrongDevices
from gridpilot.gateways.iec104 import (
    CommandOutcome,
    ConnectionState,
    ConnectionStateChanged,
    FloatValueUpdate,
    Iec104Master,
    StationVerified,
    WrongDevice,
)
from gridpilot.gateways.quality import from_iec104
from gridpilot.model import distribution
from gridpilot.model.devices import Rtu, RtuPoint
from gridpilot.protocols.iec104 import Quality


class Iec104GatewayService(Service):
    name = "gateway_iec104"

    async def setup(self) -> None:
        pkg = await distribution.wait_for(
            self.nc, self.grid, wait_s=self.config.model_wait_s, log=self.log
        )
        registry = pkg.devices
        self.masters: dict[str, Iec104Master] = {}
        self.switches: dict[str, tuple[Rtu, int]] = {}
        self.seq = 0
        self.rtus_up: set[str] = set()  # RTUs with data transfer on
        self.wrong = WrongDevices(self)
        for rtu in registry.rtu:
            master = Iec104Master(host=rtu.host, port=rtu.port, common_address=rtu.common_address)
            self.masters[rtu.device] = master
            for cmd in rtu.commands:
                self.switches[cmd.switch] = (rtu, cmd.ioa)
            self.spawn(self._read(rtu, master), name=rtu.device)
        self.info["rtus"] = len(self.masters)
        await self.subscribe(
            subjects.COMMAND.format(grid=self.grid, target="*"), Command, self.on_command
        )

    async def _read(self, rtu: Rtu, master: Iec104Master) -> None:
        points = {p.ioa: p for p in rtu.points}
        pending: dict[int, dict[int, tuple[float, int]]] = defaultdict(dict)
        async with master:
            async for event in master:
                if isinstance(event, ConnectionStateChanged):
                    self.counters[f"rtu_{event.state}"] += 1
                    if event.state is ConnectionState.STARTED:
                        self.rtus_up.add(rtu.device)
                    else:
                        self.rtus_up.discard(rtu.device)
                    self.info["rtus_started"] = len(self.rtus_up)
                    self.log.info(
                        "rtu link",
                        extra={
                            "device": rtu.device,
                            "state": str(event.state),
                            "reason": event.reason,
                        },
                    )
                    continue
                if isinstance(event, WrongDevice):
                    await self.wrong.wrong(rtu.device, event.message)
                    continue
                if isinstance(event, StationVerified):
                    await self.wrong.right(rtu.device)
                    continue
                if not isinstance(event, FloatValueUpdate) or event.ioa not in points:
                    continue
                if event.time_ns is None:
                    continue  # interrogation answers carry no time tag; cyclic reports follow
                if event.quality & Quality.INVALID:  # published as invalid, never estimated
                    self.counters["rtu_values_invalid"] += 1
                values = pending[event.time_ns]
                values[event.ioa] = (event.value, from_iec104(event.quality))
                if len(values) == len(points):  # the whole report of that instant
                    await self._publish(rtu, event.time_ns, pending.pop(event.time_ns), points)
                for t in [t for t in pending if t < event.time_ns]:  # older, incomplete ones
                    await self._publish(rtu, t, pending.pop(t), points)

    async def _publish(
        self, rtu: Rtu, t_ns: int, values: dict[int, tuple[float, int]], points: dict[int, RtuPoint]
    ) -> None:
        by_point: dict[tuple[str, Measurand, Terminal], dict[str, float]] = defaultdict(dict)
        quality: dict[tuple[str, Measurand, Terminal], int] = defaultdict(int)
        for ioa, (value, bits) in values.items():
            p = points[ioa]
            by_point[(p.mrid, p.measurand, p.terminal)][p.quantity] = value
            quality[(p.mrid, p.measurand, p.terminal)] |= bits  # P and Q share one measurement
        ms = []
        for (mrid, measurand, terminal), q in by_point.items():
            if measurand is Measurand.VOLTAGE and "v" in q:
                ms.append(
                    Measurement(
                        mrid=mrid,
                        measurand=measurand,
                        terminal=terminal,
                        t_ns=t_ns,
                        v_pu=q["v"],
                        source=rtu.device,
                        quality=quality[(mrid, measurand, terminal)],
                    )
                )
            elif "p" in q and "q" in q:
                ms.append(
                    Measurement(
                        mrid=mrid,
                        measurand=measurand,
                        terminal=terminal,
                        t_ns=t_ns,
                        p_mw=q["p"],
                        q_mvar=q["q"],
                        source=rtu.device,
                        quality=quality[(mrid, measurand, terminal)],
                    )
                )
        if not ms:
            return
        self.seq += 1
        await self.publish(
            subjects.MEAS.format(grid=self.grid, source=rtu.device),
            MeasurementSet(
                grid=self.grid,
                source=rtu.device,
                kind=DeviceKind.RTU,
                t_ns=t_ns,
                seq=self.seq,
                measurements=ms,
            ),
        )

    async def on_command(self, cmd: Command, _msg: Msg) -> None:
        target = self.switches.get(cmd.target)
        if cmd.kind is not CommandKind.SWITCH or target is None:
            return  # for another gateway
        rtu, ioa = target
        if cmd.closed is None:
            ok, error, change = False, "a switch command needs 'closed': true or false", ""
        else:
            result = await self.masters[rtu.device].double_command(ioa, cmd.closed)
            ok = result.outcome is CommandOutcome.CONFIRMED
            error = "" if ok else f"{result.outcome} at {result.stage}: {result.detail}".strip()
            change = f"switch {cmd.target} {'closed' if cmd.closed else 'opened'} by {rtu.device}"
        self.log.info(
            "switch command",
            extra={"command": cmd.id, "device": rtu.device, "ok": ok, "error": error},
        )
        await self.command_result(cmd, ok=ok, change=change, error=error)


def main(grid: str | None = None) -> int:
    return Iec104GatewayService.main(grid=grid)
