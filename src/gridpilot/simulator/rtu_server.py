"""A virtual RTU: an IEC 60870-5-104 controlled station (TCP server) over the sans-IO codec.

The simulation owns the values: the server asks ``read(ioa)`` whenever it reports a point and
``operate(ioa, on)`` when a master switches one. Several masters may be connected at once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from gridpilot.model.allocation import PortTakenError, describe_bind_error
from gridpilot.protocols.iec104 import (
    QOI_STATION,
    Asdu,
    AsduReceived,
    ClockSync,
    Cot,
    Cp56Time,
    DoubleCommand,
    DoublePoint,
    DoublePointState,
    Event,
    FloatValue,
    Interrogation,
    LinkState,
    MonitoredObject,
    ProtocolErrorEvent,
    Quality,
    Role,
    ScaledValue,
    Session,
    SingleCommand,
    SinglePoint,
    UnknownTypeError,
    mirror,
    pack_asdus,
    refuse_raw,
)
from gridpilot.protocols.iec104.link import StreamLink

log = logging.getLogger(__name__)

BROADCAST_CA = 0xFFFF
MAX_QUEUED = 2000  # ASDUs waiting for a slow master before further reports to it are dropped


class PointType(StrEnum):
    SINGLE = "single"  # M_SP_*, commanded with C_SC_NA_1
    DOUBLE = "double"  # M_DP_*, commanded with C_DC_NA_1 (a switch or breaker)
    SCALED = "scaled"  # M_ME_NB_1 / M_ME_TE_1
    FLOAT = "float"  # M_ME_NC_1 / M_ME_TF_1


PointValue = bool | DoublePointState | int | float


@dataclass(frozen=True, slots=True)
class Reading:
    """What ``read`` returns when the quality is not simply good."""

    value: PointValue
    quality: Quality = Quality.GOOD


@dataclass(slots=True)
class _Selection:
    connection: int
    command: SingleCommand | DoubleCommand  # as selected (select=True)
    deadline: float


@dataclass(slots=True)
class _Connection:
    id: int
    link: StreamLink


class RtuServer:
    """A controlled station serving one common address to any number of masters."""

    def __init__(
        self,
        *,
        common_address: int,
        points: Mapping[int, PointType],
        read: Callable[[int], Reading | PointValue],
        operate: Callable[[int, bool], bool] | None = None,
        host: str = "127.0.0.1",
        port: int = 2404,
        clock_ns: Callable[[], int] = time.time_ns,
        cyclic_s: float | None = None,
        select_before_operate: bool = True,
        select_timeout_s: float = 10.0,
        command_ioas: Mapping[int, int] | None = None,
        on_clock_sync: Callable[[int], bool] | None = None,
        k: int = 12,
        w: int = 8,
        t1: float = 15.0,
        t2: float = 10.0,
        t3: float = 20.0,
    ) -> None:
        """``port=0`` picks a free port (see ``port`` after ``start``).

        ``command_ioas`` maps a command address to the single or double point it switches;
        by default each single and double point is commanded at its own address. ``operate``
        gets the point's address and returns whether the switch obeyed. Interrogation is
        answered with the types without time tag (the standard allows no others with COT 20);
        periodic, spontaneous and command-caused reports carry CP56Time2a tags.
        """
        if not 0 < common_address < BROADCAST_CA:
            raise ValueError(f"common_address must be in 1..65534, got {common_address}")
        self.points = {ioa: PointType(kind) for ioa, kind in points.items()}
        if not self.points:
            raise ValueError("an RTU needs at least one point")
        if command_ioas is None:
            command_ioas = {
                ioa: ioa
                for ioa, kind in self.points.items()
                if kind in (PointType.SINGLE, PointType.DOUBLE)
            }
        for command_ioa, status_ioa in command_ioas.items():
            if self.points.get(status_ioa) not in (PointType.SINGLE, PointType.DOUBLE):
                raise ValueError(
                    f"command address {command_ioa} must switch a single or double point; "
                    f"{status_ioa} is {self.points.get(status_ioa, 'not a point')}"
                )
        if cyclic_s is not None and cyclic_s <= 0:
            raise ValueError(f"cyclic_s must be positive or None, got {cyclic_s}")
        Session(role=Role.CONTROLLED, k=k, w=w, t1=t1, t2=t2, t3=t3)  # validates the timers
        self.common_address = common_address
        self._read = read
        self._operate = operate
        self._host, self._requested_port = host, port
        self._clock_ns = clock_ns
        self._cyclic_s = cyclic_s
        self._sbo = select_before_operate
        self._select_timeout_s = select_timeout_s
        self._commands = dict(command_ioas)
        self._on_clock_sync = on_clock_sync
        self._session_timers = (k, w, t1, t2, t3)
        self._connections: dict[int, _Connection] = {}
        self._selected: dict[int, _Selection] = {}
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._serving: set[asyncio.Task[None]] = set()
        self.dropped_reports = 0
        self.malformed_frames = 0

    # -- life cycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> RtuServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Listen (again, after ``close``); PortTakenError when the port is not free."""
        try:
            self._server = await asyncio.start_server(self._serve, self._host, self._requested_port)
        except OSError as exc:  # the caller names the device and says what to do
            raise PortTakenError(
                self._host, self._requested_port, describe_bind_error(exc)
            ) from None
        if self._cyclic_s is not None:
            self._spawn(self._cyclic(self._cyclic_s))

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the server is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def started_connections(self) -> int:
        """Masters connected with data transfer started."""
        return sum(c.link.session.state is LinkState.STARTED for c in self._connections.values())

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        # Closing the sockets ends each connection's read loop. Cancelling those tasks instead
        # would make asyncio's start_server callback log the CancelledError (Python 3.11).
        for connection in list(self._connections.values()):
            connection.link.abort()
        await asyncio.gather(*self._tasks, *self._serving, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- reporting ------------------------------------------------------------------------------

    def report(self, ioas: Iterable[int], *, cot: Cot = Cot.SPONTANEOUS) -> None:
        """Send the current values of these points, time-tagged, to every started master.

        Call it from the event loop the server runs in, whenever the simulation changes them.
        """
        objects = [self._object(ioa, timed=True) for ioa in ioas]
        self._broadcast(objects, cot)

    def _broadcast(self, objects: list[MonitoredObject], cot: Cot) -> None:
        asdus = pack_asdus(objects, cot=cot, common_address=self.common_address)
        for connection in list(self._connections.values()):
            session = connection.link.session
            if session.state is not LinkState.STARTED:
                continue
            if session.queued > MAX_QUEUED:
                self.dropped_reports += len(asdus)
                continue
            for asdu in asdus:
                session.send(asdu)
            connection.link.flush()

    async def _cyclic(self, period_s: float) -> None:
        measured = [
            i for i, kind in self.points.items() if kind in (PointType.SCALED, PointType.FLOAT)
        ]
        while measured:
            await asyncio.sleep(period_s)
            self.report(measured, cot=Cot.PERIODIC)

    def _object(self, ioa: int, *, timed: bool) -> MonitoredObject:
        kind = self.points[ioa]
        stamp = Cp56Time(self._clock_ns()) if timed else None
        try:
            reading = self._read(ioa)
            if not isinstance(reading, Reading):
                reading = Reading(reading)
            return _build(kind, ioa, reading, stamp)
        except Exception:  # a simulation bug shows as an invalid point, not a dead link
            log.exception("read(%s) failed or gave no %s value; reporting it invalid", ioa, kind)
            return _build(kind, ioa, Reading(0, Quality.INVALID), stamp)

    # -- one master -----------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._serving.add(task)
            task.add_done_callback(self._serving.discard)
        k, w, t1, t2, t3 = self._session_timers
        loop = asyncio.get_running_loop()
        session = Session(role=Role.CONTROLLED, k=k, w=w, t1=t1, t2=t2, t3=t3, clock=loop.time)
        connection = _Connection(
            next(self._ids), StreamLink(session=session, reader=reader, writer=writer)
        )
        self._connections[connection.id] = connection
        log.info("IEC 104 master %s connected", connection.link.peer)
        try:
            reason = await connection.link.run(lambda event: self._on_event(connection, event))
            log.info("IEC 104 master %s gone: %s", connection.link.peer, reason)
        finally:
            del self._connections[connection.id]
            for ioa, selection in list(self._selected.items()):
                if selection.connection == connection.id:
                    del self._selected[ioa]
            await connection.link.close()

    def _on_event(self, connection: _Connection, event: Event) -> None:
        if isinstance(event, AsduReceived):
            self._on_asdu(connection, event.asdu)
        elif isinstance(event, ProtocolErrorEvent):
            self.malformed_frames += 1
            log.warning("IEC 104 bad input from %s: %s", connection.link.peer, event.error)
            if isinstance(event.error, UnknownTypeError):
                connection.link.send(refuse_raw(event.error.raw, cot=Cot.UNKNOWN_TYPE_ID))

    def _on_asdu(self, connection: _Connection, asdu: Asdu) -> None:
        link = connection.link
        first = asdu.objects[0]
        global_command = isinstance(first, Interrogation | ClockSync)
        if asdu.common_address != self.common_address and not (
            global_command and asdu.common_address == BROADCAST_CA
        ):
            link.send(mirror(asdu, cot=Cot.UNKNOWN_CA, negative=True))
        elif isinstance(first, Interrogation):
            self._interrogation(link, asdu, first)
        elif isinstance(first, ClockSync):
            if asdu.cot is not Cot.ACTIVATION:
                link.send(self._reply(asdu, Cot.UNKNOWN_COT, negative=True))
                return
            try:
                accepted = self._on_clock_sync is None or self._on_clock_sync(first.time.time_ns)
            except Exception:
                log.exception("on_clock_sync failed; refusing the clock synchronisation")
                accepted = False
            link.send(self._reply(asdu, Cot.ACTIVATION_CON, negative=not accepted))
        elif isinstance(first, SingleCommand | DoubleCommand) and len(asdu.objects) == 1:
            self._command(connection, asdu, first)
        else:  # monitor-direction types, or several commands in one ASDU
            link.send(mirror(asdu, cot=Cot.UNKNOWN_TYPE_ID, negative=True))

    def _reply(self, asdu: Asdu, cot: Cot, *, negative: bool = False) -> Asdu:
        # Broadcast requests are answered with our own common address.
        return Asdu(
            cot=cot,
            common_address=self.common_address,
            originator=asdu.originator,
            objects=asdu.objects,
            negative=negative,
            test=asdu.test,
        )

    def _interrogation(self, link: StreamLink, asdu: Asdu, request: Interrogation) -> None:
        if asdu.cot is Cot.DEACTIVATION:
            link.send(self._reply(asdu, Cot.DEACTIVATION_CON))
            return
        if asdu.cot is not Cot.ACTIVATION:
            link.send(self._reply(asdu, Cot.UNKNOWN_COT, negative=True))
            return
        if request.qualifier != QOI_STATION:  # no interrogation groups are configured
            link.send(self._reply(asdu, Cot.ACTIVATION_CON, negative=True))
            return
        link.session.send(self._reply(asdu, Cot.ACTIVATION_CON))
        objects = [self._object(ioa, timed=False) for ioa in sorted(self.points)]
        for reply in pack_asdus(
            objects, cot=Cot.INTERROGATED_BY_STATION, common_address=self.common_address
        ):
            link.session.send(reply)
        link.send(self._reply(asdu, Cot.ACTIVATION_TERMINATION))

    def _command(
        self, connection: _Connection, asdu: Asdu, command: SingleCommand | DoubleCommand
    ) -> None:
        link = connection.link
        status_ioa = self._commands.get(command.ioa)
        wanted = PointType.DOUBLE if isinstance(command, DoubleCommand) else PointType.SINGLE
        if status_ioa is None or self.points[status_ioa] is not wanted:
            link.send(mirror(asdu, cot=Cot.UNKNOWN_IOA, negative=True))
            return
        now = asyncio.get_running_loop().time()
        selection = self._selected.get(command.ioa)
        if selection is not None and now > selection.deadline:
            del self._selected[command.ioa]
            selection = None
        if asdu.cot is Cot.DEACTIVATION:
            mine = selection is not None and selection.connection == connection.id
            if mine:
                del self._selected[command.ioa]
            link.send(mirror(asdu, cot=Cot.DEACTIVATION_CON, negative=not mine))
            return
        if asdu.cot is not Cot.ACTIVATION:
            link.send(mirror(asdu, cot=Cot.UNKNOWN_COT, negative=True))
            return
        if isinstance(command, DoubleCommand):
            if command.state not in (DoublePointState.ON, DoublePointState.OFF):
                link.send(mirror(asdu, cot=Cot.ACTIVATION_CON, negative=True))
                return
            on = command.state is DoublePointState.ON
        else:
            on = command.on
        if command.select:
            # A point selected by another master stays theirs until executed or timed out.
            free = selection is None or selection.connection == connection.id
            accepted = free and self._operate is not None
            if accepted:
                self._selected[command.ioa] = _Selection(
                    connection.id, command, now + self._select_timeout_s
                )
            _log_command(link, command, on, "selected" if accepted else "refused")
            link.send(mirror(asdu, cot=Cot.ACTIVATION_CON, negative=not accepted))
            return
        if self._sbo:
            # Execute must follow this master's select of the same command within the timeout.
            matches = (
                selection is not None
                and selection.connection == connection.id
                and selection.command == replace(command, select=True)
            )
            if not matches:
                _log_command(link, command, on, "refused: not selected")
                link.send(mirror(asdu, cot=Cot.ACTIVATION_CON, negative=True))
                return
            del self._selected[command.ioa]
        try:
            obeyed = self._operate is not None and self._operate(status_ioa, on)
        except Exception:
            log.exception("operate(%s, %s) failed", status_ioa, on)
            obeyed = False
        _log_command(link, command, on, "executed" if obeyed else "failed")
        if not obeyed:
            link.send(mirror(asdu, cot=Cot.ACTIVATION_CON, negative=True))
            return
        link.send(mirror(asdu, cot=Cot.ACTIVATION_CON))
        self.report([status_ioa], cot=Cot.RETURN_INFO_REMOTE)
        link.send(mirror(asdu, cot=Cot.ACTIVATION_TERMINATION))


def _log_command(
    link: StreamLink, command: SingleCommand | DoubleCommand, on: bool, outcome: str
) -> None:
    # An operator's switching is worth a line each: who, which point, which way, what came of it.
    log.info(
        "IEC 104 %s %s of IOA %s from %s: %s",
        "select" if command.select else "execute",
        "on" if on else "off",
        command.ioa,
        link.peer,
        outcome,
    )


def _build(kind: PointType, ioa: int, reading: Reading, stamp: Cp56Time | None) -> MonitoredObject:
    value, quality = reading.value, reading.quality
    if kind is PointType.SINGLE:
        return SinglePoint(ioa=ioa, value=bool(value), quality=quality, time=stamp)
    if kind is PointType.DOUBLE:
        if isinstance(value, bool):
            value = DoublePointState.ON if value else DoublePointState.OFF
        return DoublePoint(ioa=ioa, value=DoublePointState(int(value)), quality=quality, time=stamp)
    if kind is PointType.SCALED:
        scaled = round(value)
        if not -32768 <= scaled <= 32767:  # saturate and say so, as a transducer would
            scaled, quality = max(-32768, min(32767, scaled)), quality | Quality.OVERFLOW
        return ScaledValue(ioa=ioa, value=scaled, quality=quality, time=stamp)
    return FloatValue(ioa=ioa, value=float(value), quality=quality, time=stamp)
