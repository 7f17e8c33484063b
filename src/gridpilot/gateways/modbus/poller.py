"""Poll DER inverters (SunSpec-like map, ``gridpilot.protocols.sunspec``) over Modbus TCP and
write their setpoints with read-back verification.

A failing unit is reported once, marked unavailable and retried with back-off; a lost
connection is re-established with back-off; neither ever ends the iteration.

Every read includes the SunSpec common model, so every poll checks who answered: a unit whose
serial number or device address is not the one expected (another platform's inverter on this
port, a mis-wired one) is refused — its values are dropped, it is reported unavailable with
``FailureKind.WRONG_DEVICE`` (again whenever what is found changes), counted, and no setpoint
is written to it. When no unit of a poll is the one expected, the connection is closed and
opened again after the back-off.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType

from gridpilot.core.backoff import Backoff
from gridpilot.core.errors import ConfigError
from gridpilot.gateways.identity import WrongDevice
from gridpilot.gateways.modbus.events import (
    DerEvent,
    DerReading,
    DerUnavailable,
    FailureKind,
    ModbusError,
    SetpointResult,
    UnitHealth,
)
from gridpilot.gateways.modbus.link import ModbusLink
from gridpilot.gateways.reconnect import LINK_RETRY_MAX_S
from gridpilot.protocols import sunspec
from gridpilot.protocols.sunspec import (
    BASE_ADDRESS,
    BLOCK_SIZE,
    CONTROLS,
    CONTROLS_ADDRESS,
    CONTROLS_SIZE,
    SunSpecError,
)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Unit:
    unit: int
    available: bool = True  # until it first fails: an outage is reported on the transition
    consecutive_failures: int = 0
    failures: int = 0
    timeouts: int = 0
    readings: int = 0
    last_error: str = ""
    retry_at: float = 0.0  # loop time before which an unavailable unit is left alone
    serial: str = ""  # the serial number expected; "" accepts any device
    wrong: str = ""  # what was found instead of it, while so


class DerPoller:
    """``async with DerPoller(host=..., port=..., units=[1, 2]) as poller:`` then
    ``async for event in poller`` yields a ``DerReading`` per successful poll of a unit and a
    ``DerUnavailable`` when a unit stops answering, until the poller is closed;
    ``await poller.write_setpoint(...)`` may run alongside (requests share the connection one
    at a time). ``counters`` and ``health()`` feed a service's heartbeat. ``serials`` (unit ->
    serial number) makes each poll check that the unit is the inverter expected.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int = 502,
        units: Iterable[int],
        period_s: float = 1.0,
        timeout_s: float = 1.0,
        backoff_min_s: float = 0.5,
        backoff_max_s: float = LINK_RETRY_MAX_S,
        clock: Callable[[], int] = time.time_ns,
        serials: Mapping[int, str] | None = None,
    ) -> None:
        self.units = list(dict.fromkeys(units))
        if not self.units:
            raise ConfigError("DerPoller needs at least one unit id")
        bad = [u for u in self.units if not 1 <= u <= 247]
        if bad:
            raise ConfigError(f"Modbus unit ids must be 1..247, not {bad}")
        for name, value in (("period_s", period_s), ("timeout_s", timeout_s)):
            if not value > 0:
                raise ConfigError(f"{name} must be > 0, not {value}")
        try:
            self._backoff_of = Backoff(
                backoff_min_s, backoff_max_s, names=("backoff_min_s", "backoff_max_s")
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.host = host
        self.port = port
        self.period_s = period_s
        self.timeout_s = timeout_s
        self._clock = clock
        serials = serials or {}
        self._units = {u: _Unit(u, serial=serials.get(u, "")) for u in self.units}
        self._link: ModbusLink | None = None
        self._connect_lock = asyncio.Lock()
        self._connect_failures = 0
        self._wrong_links = 0  # connections in a row on which no unit was the one expected
        self.counters: Counter[str] = Counter()

    # -- life cycle ------------------------------------------------------------------------

    async def __aenter__(self) -> DerPoller:
        self._link = ModbusLink(host=self.host, port=self.port, timeout_s=self.timeout_s)
        try:
            await self._connect()
        except ModbusError as exc:  # not fatal: the first poll reports it and backs off
            # info: at start-up the devices may not listen yet (gateways/reconnect.py)
            log.info("DER server not reachable yet", extra={"error": str(exc)})
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None

    def __aiter__(self) -> AsyncGenerator[DerEvent, None]:
        # one iteration at a time: each one polls every unit on its own schedule
        return self._events()

    def health(self) -> dict[int, UnitHealth]:
        """How polling goes, per unit."""
        return {
            u.unit: UnitHealth(
                unit=u.unit,
                available=u.available,
                consecutive_failures=u.consecutive_failures,
                failures=u.failures,
                timeouts=u.timeouts,
                readings=u.readings,
                last_error=u.last_error,
            )
            for u in self._units.values()
        }

    # -- polling -----------------------------------------------------------------------------

    async def _events(self) -> AsyncGenerator[DerEvent, None]:
        link = self._require_link()
        loop = asyncio.get_running_loop()
        next_cycle = loop.time()
        while self._link is link:  # the iteration ends when the poller is closed
            if not link.connected:
                try:
                    await self._connect()
                except ModbusError as exc:
                    for outage in self._all_down(exc):
                        yield outage
                    await asyncio.sleep(self._backoff(self._connect_failures))
                    next_cycle = loop.time()
                    continue
            polled = timeouts = wrong = right = 0
            for u in self._units.values():
                if not u.available and loop.time() < u.retry_at:
                    continue
                polled += 1
                try:
                    state = sunspec.decode(await link.read(u.unit, BASE_ADDRESS, BLOCK_SIZE))
                    if (found := self._stranger(u, state)) is not None:
                        wrong += 1
                        if (event := self._wrong_device(u, found)) is not None:
                            yield event
                        continue
                    right += 1
                except ModbusError as exc:
                    if exc.kind is FailureKind.TIMEOUT:
                        timeouts += 1
                    if (event := self._failed(u, exc.kind, exc.reason)) is not None:
                        yield event
                    if exc.kind is FailureKind.UNREACHABLE:
                        break  # the connection is gone; the next cycle reconnects
                    continue
                except SunSpecError as exc:
                    if (event := self._failed(u, FailureKind.BAD_DATA, str(exc))) is not None:
                        yield event
                    continue
                self._succeeded(u)
                # the inverter's time of measurement where it has a clock, else the poll's
                t_ns = state.t_ms * 1_000_000 if state.t_ms else self._clock()
                yield DerReading(unit=u.unit, t_ns=t_ns, state=state)
            if polled and timeouts == polled and link.connected:
                # nothing answered: more likely a dead link than every unit at once
                self.counters["link_resets"] += 1
                link.close()
            if wrong and not right:
                # another server than expected: hang up, and call again after the back-off
                self.counters["wrong_device_links"] += 1
                self._wrong_links += 1
                link.close()
                await asyncio.sleep(self._backoff(self._wrong_links))
                next_cycle = loop.time()
                continue
            if right:
                self._wrong_links = 0
            next_cycle += self.period_s
            delay = next_cycle - loop.time()
            if delay < 0:
                self.counters["overruns"] += 1
                next_cycle, delay = loop.time(), 0.0
            await asyncio.sleep(delay)

    def _stranger(self, u: _Unit, state: sunspec.DerState) -> str | None:
        """What answered instead of the unit expected (None: it is the one)."""
        if not u.serial or (state.serial == u.serial and state.device_address == u.unit):
            return None
        return f"unit {state.device_address} serial {state.serial!r}"

    def _wrong_message(self, unit: int, found: str) -> str:
        expected = f"unit {unit} serial {self._units[unit].serial!r}"
        return WrongDevice(host=self.host, port=self.port, expected=expected, found=found).message

    def _wrong_device(self, u: _Unit, found: str) -> DerUnavailable | None:
        """Refuse a unit that is another device; an event when what is found is news."""
        message = self._wrong_message(u.unit, found)
        self.counters["wrong_device"] += 1
        news = u.wrong != message
        u.wrong = message
        event = self._failed(u, FailureKind.WRONG_DEVICE, message)
        if event is None and news:  # already unavailable for another reason: say this too
            event = DerUnavailable(
                unit=u.unit, t_ns=self._clock(), kind=FailureKind.WRONG_DEVICE, error=message
            )
        if news:
            log.warning(
                "wrong device; refused",
                extra={"unit": u.unit, "port": self.port, "problem": message},
            )
        return event

    def _succeeded(self, u: _Unit) -> None:
        self.counters["readings"] += 1
        u.readings += 1
        u.wrong = ""
        u.consecutive_failures = 0
        if not u.available:
            u.available = True
            log.info("DER unit available again", extra={"unit": u.unit, "port": self.port})

    def _failed(self, u: _Unit, kind: FailureKind, reason: str) -> DerUnavailable | None:
        self.counters[f"errors_{kind}"] += 1
        u.failures += 1
        if kind is FailureKind.TIMEOUT:
            u.timeouts += 1
        u.consecutive_failures += 1
        u.last_error = reason
        if kind is FailureKind.UNREACHABLE:
            u.retry_at = 0.0  # the connection failed, not the unit: poll it once it is back
        else:
            now = asyncio.get_running_loop().time()
            u.retry_at = now + self._backoff(u.consecutive_failures)
        if not u.available:
            return None
        u.available = False
        log.log(
            logging.WARNING if u.readings else logging.INFO,  # lost, or not read yet
            "DER unit unavailable",
            extra={"unit": u.unit, "port": self.port, "kind": str(kind), "error": reason},
        )
        return DerUnavailable(unit=u.unit, t_ns=self._clock(), kind=kind, error=reason)

    def _all_down(self, exc: ModbusError) -> list[DerUnavailable]:
        events = []
        for u in self._units.values():
            if (event := self._failed(u, exc.kind, exc.reason)) is not None:
                events.append(event)
        return events

    def _backoff(self, failures: int) -> float:
        return self._backoff_of.after_failures(failures)

    async def _connect(self) -> None:
        link = self._require_link()
        async with self._connect_lock:
            if link.connected:
                return
            try:
                await link.connect()
            except ModbusError:
                self._connect_failures += 1
                self.counters["connect_failures"] += 1
                raise
            if self._connect_failures:
                self.counters["reconnects"] += 1
                log.info("DER server reconnected", extra={"host": self.host, "port": self.port})
            self._connect_failures = 0

    def _require_link(self) -> ModbusLink:
        if self._link is None:
            raise RuntimeError("use DerPoller as 'async with DerPoller(...) as poller'")
        return self._link

    # -- setpoints ---------------------------------------------------------------------------

    async def write_setpoint(
        self, unit: int, *, p_limit_mw: float | None, q_mvar: float | None
    ) -> SetpointResult:
        """Set the whole setpoint of ``unit`` (None lifts the limit or setpoint), read it back
        and compare; never raises for a device or network failure (see ``result.failure``)."""
        if unit not in self._units:
            raise ConfigError(f"unit {unit} is not one of this poller's units {self.units}")
        link = self._require_link()

        def failed(
            kind: FailureKind,
            error: str,
            code: int | None = None,
            applied: tuple[float | None, float | None] = (None, None),
        ) -> SetpointResult:
            self.counters[f"setpoints_{kind}"] += 1
            log.warning(
                "DER setpoint failed",
                extra={"unit": unit, "kind": str(kind), "error": error},
            )
            return SetpointResult(
                unit=unit,
                ok=False,
                t_ns=self._clock(),
                p_limit_mw=p_limit_mw,
                q_mvar=q_mvar,
                applied_p_limit_mw=applied[0],
                applied_q_mvar=applied[1],
                failure=kind,
                error=error,
                exception_code=code,
            )

        try:
            if not link.connected:
                await self._connect()
            # a fresh read: the device's own rating and scale factors, and its other setpoint
            before = await link.read(unit, BASE_ADDRESS, BLOCK_SIZE)
            state = sunspec.decode(before)
            if (found := self._stranger(self._units[unit], state)) is not None:
                self.counters["wrong_device"] += 1
                return failed(FailureKind.WRONG_DEVICE, self._wrong_message(unit, found))
            if state.rated_w <= 0:
                return failed(FailureKind.BAD_DATA, "the device reports a rating of 0 W")
            sf = sunspec.read_scale_factors(before)
            try:
                written = sunspec.encode_controls(
                    p_limit_pct=_pct(p_limit_mw, state.rated_w, state.p_limit_pct),
                    p_limit_enabled=p_limit_mw is not None,
                    q_set_pct=_pct(q_mvar, state.rated_w, state.q_set_pct),
                    q_set_enabled=q_mvar is not None,
                    sf=sf,
                )
            except SunSpecError as exc:
                return failed(FailureKind.INVALID, f"cannot encode the setpoint: {exc}")
            await link.write(unit, CONTROLS_ADDRESS, written)
            held = await link.read(unit, CONTROLS_ADDRESS, CONTROLS_SIZE)
        except ModbusError as exc:
            return failed(exc.kind, str(exc), exc.exception_code)
        except SunSpecError as exc:
            return failed(FailureKind.BAD_DATA, str(exc))
        try:
            applied = _applied(held, sf, state.rated_mw)
        except SunSpecError as exc:
            return failed(FailureKind.BAD_DATA, f"read back: {exc}")
        if held != written:  # compared as registers: floats would hide a one-step difference
            return failed(FailureKind.MISMATCH, _mismatch(written, held, sf), applied=applied)
        self.counters["setpoints_ok"] += 1
        log.info(
            "DER setpoint verified",
            extra={"unit": unit, "p_limit_mw": applied[0], "q_mvar": applied[1]},
        )
        return SetpointResult(
            unit=unit,
            ok=True,
            t_ns=self._clock(),
            p_limit_mw=p_limit_mw,
            q_mvar=q_mvar,
            applied_p_limit_mw=applied[0],
            applied_q_mvar=applied[1],
        )


def _pct(value_mw: float | None, rated_w: float, keep_pct: float) -> float:
    # a lifted limit keeps its percentage in the register, as inverters do; only Ena changes
    return keep_pct if value_mw is None else value_mw * 1e6 / rated_w * 100.0


def _controls(registers: list[int], sf: dict[str, int]) -> dict[str, float]:
    return {
        p.name: sunspec.decode_value(
            p, registers[p.address - CONTROLS_ADDRESS :][: p.size], sf[p.sf] if p.sf else 0
        )
        for p in CONTROLS
    }


def _applied(
    held: list[int], sf: dict[str, int], rated_mw: float
) -> tuple[float | None, float | None]:
    """The setpoint in force, in MW and Mvar, from the control registers read back."""
    c = _controls(held, sf)
    p = c["WMaxLimPct"] / 100 * rated_mw if c["WMaxLim_Ena"] else None
    q = c["VArPct"] / 100 * rated_mw if c["VArPct_Ena"] else None
    return p, q


def _mismatch(written: list[int], held: list[int], sf: dict[str, int]) -> str:
    """Which control points differ, in engineering units."""

    def show(registers: list[int]) -> dict[str, str]:
        try:
            return {k: f"{v:g}" for k, v in _controls(registers, sf).items()}
        except SunSpecError:
            return {p.name: f"raw {registers[p.address - CONTROLS_ADDRESS]}" for p in CONTROLS}

    wrote, holds = show(written), show(held)
    diffs = [f"{k} wrote {wrote[k]}, holds {holds[k]}" for k in wrote if wrote[k] != holds[k]]
    return "device holds other values than written: " + "; ".join(diffs or ["raw registers"])
