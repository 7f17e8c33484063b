"""Virtual DER inverters behind one Modbus TCP server: one unit id per inverter, registers per
``gridpilot.protocols.sunspec``, measurements from the twin and setpoints back to it.

Built on pymodbus's SimDevice/SimData datastore (the ModbusServerContext family is deprecated
from pymodbus 3.13 on). pymodbus keeps the registers; a per-unit action fills in the latest
measurements on every access and checks every write as an inverter would: read-only registers
get 'illegal data address', out-of-range values 'illegal data value', and nothing of a refused
write is stored. An accepted write of the controls calls ``on_setpoint`` with the whole
setpoint in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from gridpilot.core.errors import ConfigError
from gridpilot.model.allocation import PortTakenError, describe_bind_error, listen_problem
from gridpilot.protocols import sunspec
from gridpilot.protocols.sunspec import BASE_ADDRESS, BLOCK_SIZE, InverterStatus

log = logging.getLogger(__name__)

StateFn = Callable[[int], tuple[float, float, float, InverterStatus]]
"""``state(unit) -> (p_mw, q_mvar, v_pu, status)``: the inverter's output now."""
SetpointFn = Callable[[int, float | None, float | None], object]
"""``on_setpoint(unit, p_limit_mw, q_mvar)``; None lifts the limit or setpoint. It may be async
but must return well within the clients' timeout: the Modbus answer waits for it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InverterSpec:
    """The nameplate of one virtual inverter."""

    rated_mw: float
    v_ref_kv: float = 0.4  # the inverter measures at its own terminals
    f_hz: float = 50.0
    serial: str = ""  # its serial number in the common model, what the gateway checks

    def __post_init__(self) -> None:
        if not self.rated_mw > 0 or not self.v_ref_kv > 0:
            raise ConfigError(f"an inverter needs rated_mw > 0 and v_ref_kv > 0, not {self}")


class _Inverter:
    """One unit: the latest measured registers and the setpoint in force."""

    def __init__(self, unit: int, spec: InverterSpec, owner: VirtualDerServer) -> None:
        self.unit = unit
        self.spec = spec
        self.owner = owner
        self.energy_wh = 0.0
        self.last_refresh: float | None = None
        self.failing = False  # log a refresh failure once, not at every refresh
        self.controls = sunspec.DerState(  # no limit, no setpoint: what a fresh inverter has
            p_w=0.0,
            q_var=0.0,
            v_v=spec.v_ref_kv * 1e3,
            status=InverterStatus.OFF,
            rated_w=spec.rated_mw * 1e6,
            v_ref_v=spec.v_ref_kv * 1e3,
            serial=spec.serial,
            device_address=unit,
        )
        self.image = sunspec.encode(self.controls)

    def refresh(self, now_s: float) -> None:
        p_mw, q_mvar, v_pu, status = self.owner.state(self.unit)
        if self.last_refresh is not None:
            self.energy_wh += max(p_mw, 0.0) * 1e6 * (now_s - self.last_refresh) / 3600.0
        self.last_refresh = now_s
        c = self.controls
        state = sunspec.DerState(
            p_w=p_mw * 1e6,
            q_var=q_mvar * 1e6,
            v_v=v_pu * self.spec.v_ref_kv * 1e3,
            status=InverterStatus(status),
            rated_w=self.spec.rated_mw * 1e6,
            v_ref_v=self.spec.v_ref_kv * 1e3,
            f_hz=self.spec.f_hz,
            energy_wh=int(self.energy_wh),
            p_limit_pct=c.p_limit_pct,
            p_limit_enabled=c.p_limit_enabled,
            q_set_pct=c.q_set_pct,
            q_set_enabled=c.q_set_enabled,
            t_ms=self.owner.clock_ns() // 1_000_000,
            serial=self.spec.serial,
            device_address=self.unit,
        )
        self.image = sunspec.encode(state)

    def simdata(self) -> list[SimData]:
        """The registers pymodbus serves, seeded with the setpoint in force (so it outlives a
        server restart) and read-only where the map says so."""
        return [
            SimData(
                address=p.address,
                values=self.image[p.offset : p.offset + p.size],
                datatype=DataType.REGISTERS,
                readonly=not p.writable,
            )
            for p in sunspec.POINTS
        ]

    async def action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """Called by pymodbus before it serves a read or stores a write (``set_values``)."""
        base = BASE_ADDRESS - start_address
        for p in sunspec.POINTS:  # measurements are pymodbus's copy of our latest image
            if not p.writable:
                registers[base + p.offset : base + p.offset + p.size] = self.image[
                    p.offset : p.offset + p.size
                ]
        if set_values is None:
            self.owner.counters["reads"] += 1
            return None
        values = [int(v) for v in set_values]
        current = registers[base : base + BLOCK_SIZE]
        problems = sunspec.check_write(current, address, values)
        if problems:
            self.owner.counters["writes_refused"] += 1
            log.info(
                "inverter refused a write",
                extra={"unit": self.unit, "problems": [f"{p.point}: {p.reason}" for p in problems]},
            )
            read_only = any(p.read_only for p in problems)
            return ExcCodes.ILLEGAL_ADDRESS if read_only else ExcCodes.ILLEGAL_VALUE
        after = list(current)
        after[address - BASE_ADDRESS : address - BASE_ADDRESS + len(values)] = values
        state = sunspec.decode(after)
        try:
            result = self.owner.on_setpoint(self.unit, state.p_limit_mw, state.q_set_mvar)
            if inspect.isawaitable(result):
                await result
        except Exception:
            # the twin could not take it: the inverter reports a failure and keeps the old one
            self.owner.counters["setpoint_failures"] += 1
            log.exception("on_setpoint failed", extra={"unit": self.unit})
            return ExcCodes.DEVICE_FAILURE
        self.controls = state
        self.owner.counters["setpoints"] += 1
        log.info(
            "setpoint applied",
            extra={"unit": self.unit, "p_limit_mw": state.p_limit_mw, "q_mvar": state.q_set_mvar},
        )
        return None


async def _no_such_unit(*_args: object) -> ExcCodes:
    # what a Modbus TCP gateway answers for a unit id behind it that does not respond
    return ExcCodes.GATEWAY_NO_RESPONSE


class VirtualDerServer:
    """Modbus TCP server of several virtual DER inverters, one unit id each.

    ``async with VirtualDerServer(units={1: InverterSpec(rated_mw=0.5)}, state=..., on_setpoint=...,
    port=0) as server`` listens on ``server.port``; measurements are refreshed from ``state``
    every ``refresh_s``.
    """

    def __init__(
        self,
        *,
        units: Mapping[int, InverterSpec],
        state: StateFn,
        on_setpoint: SetpointFn,
        host: str = "127.0.0.1",
        port: int = 502,
        refresh_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        if not units:
            raise ConfigError("a DER Modbus server needs at least one unit")
        bad = [u for u in units if not 1 <= u <= 247]
        if bad:
            raise ConfigError(f"Modbus unit ids must be 1..247, not {bad}")
        if not refresh_s > 0:
            raise ConfigError(f"refresh_s must be > 0, not {refresh_s}")
        self.state = state
        self.on_setpoint = on_setpoint
        self.host = host
        self._port = port
        self.refresh_s = refresh_s
        self._clock = clock
        self.clock_ns = clock_ns  # the inverter's own clock (UTC), written to Tms
        self._inverters = {u: _Inverter(u, spec, self) for u, spec in units.items()}
        self._server: ModbusTcpServer | None = None
        self._task: asyncio.Task[None] | None = None
        self.counters: Counter[str] = Counter()

    def restore_setpoint(self, unit: int, p_limit_mw: float | None, q_mvar: float | None) -> None:
        """Put a setpoint written before a restart back into the inverter's registers (call
        before ``start``): the controller keeps its settings, as a real one in non-volatile
        memory, so that what a gateway reads back agrees with what the inverter does."""
        inverter = self._inverters[unit]
        rated = inverter.spec.rated_mw
        inverter.controls = dataclasses.replace(
            inverter.controls,
            p_limit_pct=100.0 if p_limit_mw is None else 100.0 * p_limit_mw / rated,
            p_limit_enabled=p_limit_mw is not None,
            q_set_pct=0.0 if q_mvar is None else 100.0 * q_mvar / rated,
            q_set_enabled=q_mvar is not None,
        )
        inverter.image = sunspec.encode(inverter.controls)

    @property
    def port(self) -> int:
        """The port listened on (the one the OS chose when constructed with port=0)."""
        return self._port

    def refresh(self) -> None:
        """Take every unit's measurements from ``state`` now; one failing unit keeps its last."""
        now = self._clock()
        for inverter in self._inverters.values():
            try:
                inverter.refresh(now)
            except Exception:  # a bad value from the twin must not stop the other inverters
                self.counters["refresh_errors"] += 1
                if not inverter.failing:
                    log.exception("inverter keeps its last values", extra={"unit": inverter.unit})
                inverter.failing = True
            else:
                inverter.failing = False

    async def start(self) -> None:
        """Listen; PortTakenError when the port is not free (``start`` may then be retried)."""
        if self._server is not None:
            raise RuntimeError("server already started")
        self.refresh()
        devices = [
            SimDevice(id=u, simdata=inv.simdata(), action=inv.action)
            for u, inv in self._inverters.items()
        ]
        catch_all = SimData(address=BASE_ADDRESS, count=BLOCK_SIZE, datatype=DataType.REGISTERS)
        devices.append(SimDevice(id=0, simdata=[catch_all], action=_no_such_unit))
        server = ModbusTcpServer(devices, address=(self.host, self._port))
        try:
            await server.serve_forever(background=True)
        except OSError as exc:  # the caller names the devices and says what to do
            raise PortTakenError(self.host, self._port, describe_bind_error(exc)) from None
        except RuntimeError as exc:  # pymodbus logs why the listen failed and says only this
            reason = listen_problem(self.host, self._port) or str(exc)
            raise PortTakenError(self.host, self._port, reason) from None
        self._server = server
        self._port = server.transport.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._task = asyncio.create_task(self._refresh_loop(), name="der-modbus-refresh")
        log.info(
            "DER Modbus server listening",
            extra={"host": self.host, "port": self._port, "units": sorted(self._inverters)},
        )

    async def stop(self) -> None:
        """Stop listening and drop every connection; the setpoints in force are kept."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            self.refresh()

    async def __aenter__(self) -> VirtualDerServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
