"""An in-memory controlled station (a pure object, no sockets) and a helper to wire two ends.

rtu = FakeControlledStation(common_address=1, points=[FloatValue(ioa=11, value=1.5)])
master = Session(role=Role.CONTROLLING, clock=clock)
master.start()
to_master, _ = exchange(master, rtu)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Protocol

from gridpilot.protocols.iec104.asdu import Asdu, mirror, pack_asdus, refuse_raw
from gridpilot.protocols.iec104.cp56 import Cp56Time
from gridpilot.protocols.iec104.elements import (
    QOI_STATION,
    ClockSync,
    Cot,
    DoubleCommand,
    DoublePoint,
    DoublePointState,
    InformationObject,
    Interrogation,
    MonitoredObject,
    SingleCommand,
    SinglePoint,
)
from gridpilot.protocols.iec104.errors import Iec104Error, UnknownTypeError
from gridpilot.protocols.iec104.session import (
    AsduReceived,
    Event,
    ProtocolErrorEvent,
    Role,
    Session,
)


class Endpoint(Protocol):
    def receive(self, data: bytes) -> list[Event]: ...

    def poll(self, now: float | None = None) -> bytes: ...


def exchange(
    a: Endpoint, b: Endpoint, *, rounds: int = 50, now: float | None = None
) -> tuple[list[Event], list[Event]]:
    """Carry bytes both ways until both ends are quiet; returns the events each end produced."""
    a_events: list[Event] = []
    b_events: list[Event] = []
    for _ in range(rounds):
        to_b, to_a = a.poll(now), b.poll(now)
        if not to_a and not to_b:
            break
        if to_b:
            b_events += b.receive(to_b)
        if to_a:
            a_events += a.receive(to_a)
    return a_events, b_events


class FakeControlledStation:
    """A small RTU: answers interrogation, clock sync and single/double commands.

    Monitoring points are kept by IOA; a command on the IOA of a single or double point
    switches it and reports the change spontaneously (with ``clock_ns`` as its time tag).
    """

    def __init__(
        self,
        *,
        common_address: int = 1,
        points: Iterable[MonitoredObject] = (),
        select_before_operate: bool = True,
        refuse_commands: bool = False,
        clock: Callable[[], float] = time.monotonic,
        clock_ns: Callable[[], int] = time.time_ns,
        k: int = 12,
        w: int = 8,
        t1: float = 15.0,
        t2: float = 10.0,
        t3: float = 20.0,
    ) -> None:
        self.common_address = common_address
        self.points: dict[int, MonitoredObject] = {p.ioa: replace(p, time=None) for p in points}
        self.select_before_operate = select_before_operate
        self.refuse_commands = refuse_commands
        self.session = Session(role=Role.CONTROLLED, k=k, w=w, t1=t1, t2=t2, t3=t3, clock=clock)
        self._clock_ns = clock_ns
        self.received: list[Asdu] = []
        self.errors: list[Iec104Error] = []
        self.executed: list[SingleCommand | DoubleCommand] = []
        self.clock_syncs: list[int] = []
        self._selected: dict[int, SingleCommand | DoubleCommand] = {}

    def poll(self, now: float | None = None) -> bytes:
        return self.session.poll(now)

    def receive(self, data: bytes) -> list[Event]:
        events = self.session.receive(data)
        for event in events:
            if isinstance(event, AsduReceived):
                self.received.append(event.asdu)
                self._on_asdu(event.asdu)
            elif isinstance(event, ProtocolErrorEvent):
                self.errors.append(event.error)
                if isinstance(event.error, UnknownTypeError):
                    self.session.send(refuse_raw(event.error.raw, cot=Cot.UNKNOWN_TYPE_ID))
        return events

    def update(self, point: MonitoredObject, *, cot: Cot = Cot.SPONTANEOUS) -> None:
        """Change a point and report it (a spontaneous change carries a time tag)."""
        self.points[point.ioa] = replace(point, time=None)
        if point.time is None and type(point).TIMED is not None:
            point = replace(point, time=Cp56Time(self._clock_ns()))
        self._send([point], cot)

    def _send(self, objects: list[InformationObject], cot: Cot) -> None:
        for asdu in pack_asdus(objects, cot=cot, common_address=self.common_address):
            self.session.send(asdu)

    def _on_asdu(self, asdu: Asdu) -> None:
        if asdu.common_address != self.common_address:
            self.session.send(mirror(asdu, cot=Cot.UNKNOWN_CA, negative=True))
            return
        obj = asdu.objects[0]
        if isinstance(obj, Interrogation):
            if asdu.cot is not Cot.ACTIVATION or obj.qualifier != QOI_STATION:
                self.session.send(mirror(asdu, cot=Cot.ACTIVATION_CON, negative=True))
                return
            self.session.send(mirror(asdu, cot=Cot.ACTIVATION_CON))
            self._send(list(self.points.values()), Cot.INTERROGATED_BY_STATION)
            self.session.send(mirror(asdu, cot=Cot.ACTIVATION_TERMINATION))
        elif isinstance(obj, ClockSync):
            self.clock_syncs.append(obj.time.time_ns)
            self.session.send(mirror(asdu, cot=Cot.ACTIVATION_CON))
        elif isinstance(obj, SingleCommand | DoubleCommand):
            self._on_command(asdu, obj)
        else:
            self.session.send(mirror(asdu, cot=Cot.UNKNOWN_TYPE_ID, negative=True))

    def _on_command(self, asdu: Asdu, command: SingleCommand | DoubleCommand) -> None:
        target = self.points.get(command.ioa)
        kind = SinglePoint if isinstance(command, SingleCommand) else DoublePoint
        if not isinstance(target, kind):
            self.session.send(mirror(asdu, cot=Cot.UNKNOWN_IOA, negative=True))
            return
        if asdu.cot is Cot.DEACTIVATION:
            self._selected.pop(command.ioa, None)
            self.session.send(mirror(asdu, cot=Cot.DEACTIVATION_CON))
            return
        if asdu.cot is not Cot.ACTIVATION:
            self.session.send(mirror(asdu, cot=Cot.UNKNOWN_COT, negative=True))
            return
        bad_state = isinstance(command, DoubleCommand) and command.state not in (
            DoublePointState.OFF,
            DoublePointState.ON,
        )
        if command.select:
            ok = not (self.refuse_commands or bad_state)
            if ok:
                self._selected[command.ioa] = command
            self.session.send(mirror(asdu, cot=Cot.ACTIVATION_CON, negative=not ok))
            return
        selected = self._selected.pop(command.ioa, None)
        unselected = self.select_before_operate and selected != replace(command, select=True)
        if self.refuse_commands or bad_state or unselected:
            self.session.send(mirror(asdu, cot=Cot.ACTIVATION_CON, negative=True))
            return
        self.executed.append(command)
        self.session.send(mirror(asdu, cot=Cot.ACTIVATION_CON))
        new: MonitoredObject
        if isinstance(command, DoubleCommand):
            new = DoublePoint(ioa=command.ioa, value=command.state)
        else:
            new = SinglePoint(ioa=command.ioa, value=command.on)
        self.update(new)
        self.session.send(mirror(asdu, cot=Cot.ACTIVATION_TERMINATION))
