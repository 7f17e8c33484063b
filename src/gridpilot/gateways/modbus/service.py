"""The ``gateway_modbus`` service: polls the DER inverters of the device registry over Modbus
TCP, publishes their output as measurement sets, and carries DER setpoint commands to them
with read-back verification, publishing each command's result."""

from __future__ import annotations

import asyncio
import logging
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
from gridpilot.core.validation import command_problem
from gridpilot.gateways.identity import WrongDevices
from gridpilot.gateways.modbus.events import DerReading, DerUnavailable, FailureKind
from gridpilot.gateways.modbus.link import quiet_pymodbus
from gridpilot.gateways.modbus.poller import DerPoller
from gridpilot.model import distribution
from gridpilot.model.devices import Der


class ModbusGatewayService(Service):
    name = "gateway_modbus"

    async def setup(self) -> None:
        # pymodbus warns of every refused connect itself ("Failed to connect", "Repeating"):
        # the poller reports each failure, quietly while an inverter has not been read yet;
        # and it logs an error per bad read, which a device sending garbage would flood
        quiet_pymodbus()
        pkg = await distribution.wait_for(
            self.nc, self.grid, wait_s=self.config.model_wait_s, log=self.log
        )
        self.ders: dict[str, Der] = {d.generator: d for d in pkg.devices.der}
        by_server: dict[tuple[str, int], list[Der]] = defaultdict(list)
        for der in pkg.devices.der:
            by_server[(der.host, der.port)].append(der)
        self.pollers: dict[tuple[str, int], DerPoller] = {}
        self.seq = 0
        self.read: set[str] = set()  # inverters read at least once
        self.info["inverters"] = len(self.ders)
        self.wrong = WrongDevices(self)
        for (host, port), ders in by_server.items():
            poller = DerPoller(
                host=host,
                port=port,
                units=[d.unit for d in ders],
                serials={d.unit: d.serial for d in ders},
            )
            self.pollers[(host, port)] = poller
            self.spawn(self._poll(poller, {d.unit: d for d in ders}), name=f"{host}:{port}")
        await self.subscribe(
            subjects.COMMAND.format(grid=self.grid, target="*"), Command, self.on_command
        )

    async def _poll(self, poller: DerPoller, units: dict[int, Der]) -> None:
        async with poller:
            async for event in poller:
                der = units[event.unit]
                if isinstance(event, DerUnavailable):
                    if event.kind is FailureKind.WRONG_DEVICE:
                        await self.wrong.wrong(der.device, event.error)
                        continue
                    self.counters["der_unavailable"] += 1
                    # a warning once it had been read; before, it may not listen yet
                    lost = der.device in self.read
                    self.log.log(
                        logging.WARNING if lost else logging.INFO,
                        "inverter unavailable" if lost else "waiting for inverter",
                        extra={"device": der.device, "kind": str(event.kind), "error": event.error},
                    )
                    continue
                self.read.add(der.device)
                assert isinstance(event, DerReading)
                await self.wrong.right(der.device)  # its identity was checked
                self.seq += 1
                m = Measurement(
                    mrid=der.generator,
                    measurand=Measurand.POWER,
                    terminal=Terminal.GEN,
                    t_ns=event.t_ns,
                    source=der.device,
                    p_mw=round(event.state.p_mw, 7),
                    q_mvar=round(event.state.q_mvar, 7),
                )
                await self.publish(
                    subjects.MEAS.format(grid=self.grid, source=der.device),
                    MeasurementSet(
                        grid=self.grid,
                        source=der.device,
                        kind=DeviceKind.DER,
                        t_ns=event.t_ns,
                        seq=self.seq,
                        measurements=[m],
                    ),
                )

    async def on_command(self, cmd: Command, _msg: Msg) -> None:
        der = self.ders.get(cmd.target)
        if cmd.kind is not CommandKind.DER_SETPOINT or der is None:
            return  # for another gateway
        if problem := command_problem(cmd):
            # NaN or infinity would reach the inverter's registers as garbage: refuse, say why
            self.log.warning("setpoint refused", extra={"command": cmd.id, "error": problem})
            await self.command_result(cmd, ok=False, error=f"refused: {problem}")
            return
        poller = self.pollers[(der.host, der.port)]
        try:
            result = await asyncio.wait_for(
                poller.write_setpoint(der.unit, p_limit_mw=cmd.p_mw, q_mvar=cmd.q_mvar), 10
            )
            ok, error = result.ok, result.error
            change = (
                f"{der.device}: p_limit_mw={result.applied_p_limit_mw} "
                f"q_mvar={result.applied_q_mvar}"
            )
        except TimeoutError:
            ok, error, change = False, f"{der.device} did not answer within 10 s", ""
        self.log.info(
            "setpoint", extra={"command": cmd.id, "device": der.device, "ok": ok, "error": error}
        )
        await self.command_result(cmd, ok=ok, change=change, error=error)


def main(grid: str | None = None) -> int:
    return ModbusGatewayService.main(grid=grid)
