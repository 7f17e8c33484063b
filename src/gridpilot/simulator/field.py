"""The twin's devices that speak real field protocols: PMUs as C37.118 servers, RTUs as
IEC 60870-5-104 servers, DER inverters as a Modbus TCP server, smart meters over MQTT.
Measurements of these devices reach the bus only through their gateways; the simulator
publishes the rest itself.

A device whose port is taken (another platform's devices, another program) does not stop the
others nor the simulator: it is reported — the service's state is degraded, the heartbeat
names the devices, a comm_loss condition per device says what to do — and its server tries
to listen again every few seconds, so it comes up once the port is free."""

from __future__ import annotations

import asyncio
import cmath
import contextlib
import functools
import logging
import math
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gridpilot.core import subjects
from gridpilot.core.conditions import ConditionReporter, Held
from gridpilot.core.schemas import (
    AlarmKind,
    Command,
    CommandKind,
    Condition,
    ServiceState,
    Terminal,
)
from gridpilot.core.service import Service
from gridpilot.model import distribution
from gridpilot.model.allocation import PortTakenError, advice, listen_address
from gridpilot.model.devices import DeviceRegistry, Pmu, Rtu
from gridpilot.model.placement import Placement
from gridpilot.protocols.c37118 import PhasorChannel, PhasorKind, PmuConfig, PmuData
from gridpilot.protocols.iec104 import DoublePointState, Quality
from gridpilot.protocols.sunspec import InverterStatus
from gridpilot.simulator.der_modbus import InverterSpec, VirtualDerServer
from gridpilot.simulator.mqtt_meters import (
    FileLogins,
    MqttMeterFleet,
    ScaledClock,
    VirtualMeter,
)
from gridpilot.simulator.pmu_server import PmuServer
from gridpilot.simulator.rtu_server import PointType, Reading, RtuServer
from gridpilot.simulator.twin import Twin

log = logging.getLogger("gridpilot.simulator")
_PMU_ERROR = 0x4000  # STAT bits 15-14 = 01: PMU error, no information about the data

__all__ = ["FieldDevices", "listen_address"]

LISTEN_RETRY_S = 5.0  # a device whose port is taken tries again this often (wall clock)
REPORT_EVERY_S = 1.0


@dataclass
class _Listener:
    """One device server and whether it listens."""

    what: str  # "PMU pmu_bus_1 (ID code 4711)"
    devices: list[str]  # the devices it serves (several inverters share a Modbus server)
    host: str
    port: int
    start: Callable[[], Awaitable[None]]
    problem: str = ""  # why it does not listen; "" while it does


class FieldDevices:
    def __init__(
        self,
        *,
        twin: Twin,
        grid: str,
        placement: Placement,
        registry: DeviceRegistry,
        sim_time_s: Any,  # callable returning the simulated time in seconds
        speed: float,
        mqtt_url: str = "",
        mqtt_credentials: Path | None = None,
        on_switched: Callable[[str, bool, str], None] | None = None,
        service: Service | None = None,
    ) -> None:
        """``service`` (the simulator's) is told about devices that cannot listen: its state,
        heartbeat info and conditions."""
        self.twin = twin
        # told (switch, closed, what it did to the grid) after an RTU operated a switch
        self.on_switched = on_switched
        self.service = service
        self.grid = grid
        self.registry = registry
        self.devices = {d.id: d for d in placement.devices}
        self.sim_time_s = sim_time_s
        self.speed = speed
        self.mqtt_url = mqtt_url
        # device_credentials.json: each meter connects with its own login from it
        self.mqtt_credentials = mqtt_credentials
        self.der_generators = {d.generator for d in registry.der}
        self.rtu_switches = {c.switch for r in registry.rtu for c in r.commands}
        self.protocol_devices = {d.device for d in registry.der} | {r.device for r in registry.rtu}
        self.protocol_devices |= {p.device for p in registry.pmu}
        if mqtt_url and mqtt_credentials is not None:
            self.protocol_devices |= {m.device for m in registry.meter}
        self._servers: list[VirtualDerServer] = []
        self._rtus: list[RtuServer] = []
        self._pmus: list[PmuServer] = []
        self._server_of: dict[str, PmuServer | RtuServer] = {}
        self.topology_changed = False
        self._cache: dict[str, tuple[int, dict[tuple[str, str, str], float]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._outages: dict[str, asyncio.Future[None]] = {}  # device -> its reconnect
        self._listeners: dict[str, _Listener] = {}  # device -> its server's
        self._degraded = False  # the service's state is degraded because of us
        self._reporter: ConditionReporter | None = None  # devices whose port is taken

    async def start(self) -> None:
        model = self.twin.model
        kv = {b.id: b.vn_kv for b in model.buses}
        gens = {g.id: g for g in model.generators}
        by_server: dict[tuple[str, int], dict[int, str]] = defaultdict(dict)
        serials = {d.device: d.serial for d in self.registry.der}
        for der in self.registry.der:
            by_server[(der.host, der.port)][der.unit] = der.device
        for (host, port), units in by_server.items():
            specs = {}
            for unit, device in units.items():
                gen = gens[self.devices[device].points[0].mrid]
                specs[unit] = InverterSpec(
                    rated_mw=max(abs(gen.p_mw), 1e-3), v_ref_kv=kv[gen.bus], serial=serials[device]
                )
            server = VirtualDerServer(
                units=specs,
                state=functools.partial(self._der_state, units),
                on_setpoint=functools.partial(self._der_setpoint, units),
                clock_ns=lambda: self.twin.t_ns,  # the values are the twin's at its instant
                host=listen_address(host),
                port=port,
            )
            for unit, device in units.items():  # setpoints restored from before a restart
                gen_id = self.devices[device].points[0].mrid
                if gen_id in self.twin.setpoints:
                    server.restore_setpoint(unit, *self.twin.setpoints[gen_id])
            self._servers.append(server)
            label = "DER inverter" if len(units) == 1 else "DER inverters"
            names = ", ".join(f"{d} (unit {u})" for u, d in units.items())
            if await self._listen(
                _Listener(f"{label} {names}", list(units.values()), host, port, server.start)
            ):
                log.info(
                    "DER inverters listening",
                    extra={"modbus": f"{host}:{port}", "units": len(units)},
                )
        for rtu in self.registry.rtu:
            points = {p.ioa: PointType.FLOAT for p in rtu.points}
            points |= {c.ioa: PointType.DOUBLE for c in rtu.commands}
            period_s = self.devices[rtu.device].period_s if rtu.device in self.devices else 10.0
            rtu_server = RtuServer(
                common_address=rtu.common_address,
                points=points,
                read=functools.partial(self._rtu_read, rtu),
                operate=functools.partial(self._rtu_operate, rtu),
                host=listen_address(rtu.host),
                port=rtu.port,
                clock_ns=lambda: self.twin.t_ns,
                cyclic_s=max(0.1, period_s / self.speed),
            )
            self._rtus.append(rtu_server)
            self._server_of[rtu.device] = rtu_server
            what = f"RTU {rtu.device} (common address {rtu.common_address})"
            await self._listen(_Listener(what, [rtu.device], rtu.host, rtu.port, rtu_server.start))
        if self._rtus:
            log.info("RTUs started", extra={"rtus": len(self._rtus)})
        for pmu in self.registry.pmu:
            station = PmuConfig(
                station=pmu.station or pmu.device[:16],
                idcode=pmu.idcode,
                phasors=tuple(
                    PhasorChannel(
                        name=c.channel,
                        kind=PhasorKind.VOLTAGE if c.quantity == "v" else PhasorKind.CURRENT,
                    )
                    for c in pmu.channels
                ),
                nominal_freq_hz=round(model.f_hz),
            )
            pmu_server = PmuServer(
                stations=[station],
                idcode=pmu.idcode,
                sample=functools.partial(self._pmu_sample, pmu),
                data_rate=pmu.data_rate,
                host=listen_address(pmu.host),
                port=pmu.port,
                # frames carry the time of the power flow they show: the truth's time
                clock=lambda: self.twin.t_ns,
            )
            self._pmus.append(pmu_server)
            self._server_of[pmu.device] = pmu_server
            what = f"PMU {pmu.device} (ID code {pmu.idcode})"
            await self._listen(_Listener(what, [pmu.device], pmu.host, pmu.port, pmu_server.start))
        meters = [m for m in self.registry.meter if m.device in self.protocol_devices]
        if meters:
            period_s = min(self.devices[m.device].period_s for m in meters)
            fleet = MqttMeterFleet(
                url=self.mqtt_url,
                logins=FileLogins(self.mqtt_credentials or Path(), self.grid),
                grid=self.grid,
                meters=[
                    VirtualMeter(device=m.device, component=m.components[0].component)
                    for m in meters
                ],
                reading=self._meter_reading,
                clock=ScaledClock(speed=self.speed, start_ns=round(self.sim_time_s() * 1e9)),
                period_s=period_s,
            )
            self._tasks.append(asyncio.ensure_future(self._run_fleet(fleet)))
        self._tasks.append(asyncio.ensure_future(self._watch_listeners()))

    # -- devices whose port is taken ------------------------------------------------------------

    @property
    def not_listening(self) -> dict[str, str]:
        """Device -> why its server does not listen (its port is taken, ...)."""
        return {d: lst.problem for d, lst in self._listeners.items() if lst.problem}

    def _registry_path(self) -> str:
        if self.service is not None:
            return str(distribution.devices_path(self.service.config.data_dir, self.grid))
        return f"devices/{self.grid}.toml in the data dir"

    async def _listen(self, listener: _Listener) -> bool:
        """Start a device server; a taken port is reported and retried, never raised."""
        for device in listener.devices:
            self._listeners[device] = listener
        try:
            await listener.start()
        except PortTakenError as exc:
            problem = (
                f"{listener.what} cannot listen on {listener.host}:{listener.port}: "
                f"{exc.reason}; {advice(Path(self._registry_path()))}"
            )
            if problem != listener.problem:
                log.error("device cannot listen", extra={"problem": problem})
            listener.problem = problem
            return False
        if listener.problem:
            log.info("device listening now", extra={"device": listener.what, "port": listener.port})
        listener.problem = ""
        return True

    async def _watch_listeners(self) -> None:
        """Retry the servers that could not listen; report them to the service."""
        next_try = time.monotonic() + LISTEN_RETRY_S
        while True:
            if time.monotonic() >= next_try:
                next_try = time.monotonic() + LISTEN_RETRY_S
                waiting = {id(lst): lst for lst in self._listeners.values() if lst.problem}
                for listener in waiting.values():
                    await self._listen(listener)
            if self.service is not None:
                await self._report(self.service)
            await asyncio.sleep(REPORT_EVERY_S)

    async def _report(self, service: Service) -> None:
        problems = self.not_listening
        if problems:
            service.state = ServiceState.DEGRADED
            self._degraded = True
            shown = sorted(
                {f"{lst.host}:{lst.port}" for lst in self._listeners.values() if lst.problem}
            )
            service.info["devices_not_listening"] = len(problems)
            service.info["ports_taken"] = ", ".join(shown[:5]) + (", ..." * (len(shown) > 5))
        elif self._degraded:
            self._degraded = False
            if service.state is ServiceState.DEGRADED:
                service.state = ServiceState.RUNNING
            service.info.pop("devices_not_listening", None)
            service.info.pop("ports_taken", None)
        await self._conditions(service).update(
            [
                Held(
                    kind=AlarmKind.COMM_LOSS,
                    mrid=device,
                    message=problem,
                    shape=problem,
                    ended=f"{device} listens again",
                )
                for device, problem in problems.items()
            ]
        )

    def _conditions(self, service: Service) -> ConditionReporter:
        """Its own reporter: the twin's (simulator/conditions) would clear these as not held."""
        if self._reporter is None:
            subject = subjects.CONDITION.format(grid=self.grid, source=service.name)

            async def send(condition: Condition) -> None:
                await service.publish(subject, condition)

            self._reporter = ConditionReporter(grid=self.grid, reporter=service.name, send=send)
        return self._reporter

    async def disconnect(self, device: str, duration_s: float) -> bool:
        """A communication outage of a PMU or RTU: its server goes away for ``duration_s``
        simulated seconds, then comes back on the same port. False: not such a device."""
        server = self._server_of.get(device)
        if server is None:
            return False
        if device in self._outages:  # a longer or shorter outage replaces the running one
            self._outages.pop(device).cancel()
        else:
            await (server.stop() if isinstance(server, PmuServer) else server.close())
        log.info("device disconnected", extra={"device": device, "duration_s": duration_s})
        self._outages[device] = asyncio.ensure_future(self._reconnect(device, server, duration_s))
        return True

    async def reconnect_all(self) -> None:
        """End every communication outage now (the training page's 'clear')."""
        for device, task in list(self._outages.items()):
            task.cancel()
            self._outages.pop(device, None)
            if await self._listen(self._listeners[device]):
                log.info("device back (outage cleared)", extra={"device": device})

    async def _reconnect(
        self, device: str, server: PmuServer | RtuServer, duration_s: float
    ) -> None:
        await asyncio.sleep(duration_s / self.speed)
        self._outages.pop(device, None)
        if await self._listen(self._listeners[device]):
            log.info("device back", extra={"device": device})

    async def _run_fleet(self, fleet: MqttMeterFleet) -> None:
        # every meter reconnects by itself (the broker restarted, its credential was revoked)
        await fleet.run()

    async def stop(self) -> None:
        for task in [*self._tasks, *self._outages.values()]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for server in self._servers:
            await server.stop()
        for rtu_server in self._rtus:
            await rtu_server.close()
        for pmu_server in self._pmus:
            await pmu_server.stop()

    def _pmu_sample(self, pmu: Pmu, t_ns: int) -> list[PmuData]:
        """The PMU's phasors in volts and amperes (phase to neutral), from its noisy readings
        of the current power flow: I = conj(S / 3V) at each branch end."""
        if self.twin.silent(pmu.device, self.twin.t_s):
            raise ConnectionAbortedError(f"{pmu.device}: communication outage (injected)")
        if not self.twin.solved:
            # no operating point to measure: frames go on, flagged and without values, as a
            # PMU does whose inputs are out of range; the PDC drops them
            nan = complex("nan")
            return [
                PmuData(
                    freq_hz=self.twin.model.f_hz,
                    phasors=(nan,) * len(pmu.channels),
                    stat=_PMU_ERROR,
                )
            ]
        dev = self.devices[pmu.device]
        ms = self.twin.measure(dev, self.grid, 0).measurements
        volt = next(m for m in ms if m.v_pu is not None)
        kv = next(b.vn_kv for b in self.twin.model.buses if b.id == volt.mrid)
        v = cmath.rect(
            (volt.v_pu or 0.0) * kv * 1e3 / math.sqrt(3), math.radians(volt.va_deg or 0.0)
        )
        flows = {
            (m.mrid, m.terminal): complex(m.p_mw or 0.0, m.q_mvar or 0.0) * 1e6
            for m in ms
            if m.p_mw is not None
        }
        phasors = []
        for c in pmu.channels:
            if c.quantity == "v":
                phasors.append(v)
            elif v == 0:  # a dead bus: no voltage, no current
                phasors.append(0j)
            else:
                s = flows.get((c.mrid, c.terminal), complex("nan"))
                phasors.append((s / (3 * v)).conjugate())
        return [PmuData(freq_hz=self.twin.model.f_hz, phasors=tuple(phasors))]

    def _rtu_values(self, rtu: Rtu) -> dict[tuple[str, str, str], float]:
        """The RTU's noisy readings of the current power flow, once per power flow."""
        cached = self._cache.get(rtu.device)
        if cached is not None and cached[0] == self.twin.steps:
            return cached[1]
        values: dict[tuple[str, str, str], float] = {}
        # without a solution no value: every point reads invalid (IEC 104 quality IV)
        if rtu.device in self.devices and self.twin.solved:
            for m in self.twin.measure(self.devices[rtu.device], self.grid, 0).measurements:
                key = (m.mrid, m.measurand.value, m.terminal.value)
                if m.v_pu is not None:
                    values[(*key[:2], "v")] = m.v_pu
                if m.p_mw is not None and m.q_mvar is not None:
                    values[(*key[:2], "p")] = m.p_mw
                    values[(*key[:2], "q")] = m.q_mvar
        self._cache[rtu.device] = (self.twin.steps, values)
        return values

    def _rtu_read(self, rtu: Rtu, ioa: int) -> Reading | DoublePointState:
        for cmd in rtu.commands:
            if cmd.ioa == ioa:
                closed = self.twin.closed[cmd.switch]
                return DoublePointState.ON if closed else DoublePointState.OFF
        point = next(p for p in rtu.points if p.ioa == ioa)
        if self.twin.silent(rtu.device, self.twin.t_s):
            return Reading(0.0, Quality.INVALID)  # a comm outage: the RTU lost its inputs
        value = self._rtu_values(rtu).get((point.mrid, point.measurand.value, point.quantity))
        return Reading(0.0, Quality.INVALID) if value is None else Reading(float(value))

    def _rtu_operate(self, rtu: Rtu, ioa: int, on: bool) -> bool:
        switch = next(c.switch for c in rtu.commands if c.ioa == ioa)
        change = self.twin.apply_command(
            Command(
                id=f"iec104-{rtu.device}-{ioa}",
                grid=self.grid,
                kind=CommandKind.SWITCH,
                target=switch,
                issued_by=f"iec104:{rtu.device}",
                t_ns=0,
                closed=on,
            )
        )
        self.topology_changed = True
        log.info(
            "switch operated over IEC 104",
            extra={"device": rtu.device, "switch": switch, "closed": on, "change": change},
        )
        if self.on_switched is not None:
            self.on_switched(switch, on, change)
        return True

    def _der_state(
        self, units: dict[int, str], unit: int
    ) -> tuple[float, float, float, InverterStatus]:
        dev = self.devices[units[unit]]
        if not self.twin.solved:
            # a collapsing grid voltage trips an inverter (under-voltage protection)
            return 0.0, 0.0, 0.0, InverterStatus.FAULT
        m = self.twin.measure(dev, self.grid, 0).measurements[0]
        gen = m.mrid
        if gen in self.twin.dead_gen:  # no grid: it waits for the voltage to return
            return 0.0, 0.0, 0.0, InverterStatus.STANDBY
        bus = next(g.bus for g in self.twin.model.generators if g.id == gen)
        v_pu = float(self.twin.out_bus_v_pu(bus))
        limited = self.twin.setpoints.get(gen, (None, None))[0] is not None
        status = InverterStatus.THROTTLED if limited else InverterStatus.MPPT
        return m.p_mw or 0.0, m.q_mvar or 0.0, v_pu, status

    def _der_setpoint(
        self, units: dict[int, str], unit: int, p_limit_mw: float | None, q_mvar: float | None
    ) -> None:
        device = units[unit]
        gen = self.devices[device].points[0].mrid
        self.twin.apply_command(
            Command(
                id=f"modbus-{device}",
                grid=self.grid,
                kind=CommandKind.DER_SETPOINT,
                target=gen,
                issued_by=f"modbus:{device}",
                t_ns=0,
                p_mw=p_limit_mw,
                q_mvar=q_mvar,
            )
        )
        log.info(
            "DER setpoint over Modbus",
            extra={"device": device, "p_limit_mw": p_limit_mw, "q_mvar": q_mvar},
        )

    def _meter_reading(self, device: str, t_ns: int) -> tuple[float, float] | None:
        """What the meter registers, import positive: a generator's production is export;
        None when it cannot send (its supply is dead, or there is no operating point)."""
        dev = self.devices[device]
        if not self.twin.solved or not self.twin.powered(dev):
            return None
        ms = self.twin.measure(dev, self.grid, 0).measurements
        sign = [-1.0 if m.terminal is Terminal.GEN else 1.0 for m in ms]
        p = sum(s * (m.p_mw or 0.0) for s, m in zip(sign, ms, strict=True))
        q = sum(s * (m.q_mvar or 0.0) for s, m in zip(sign, ms, strict=True))
        return p, q
