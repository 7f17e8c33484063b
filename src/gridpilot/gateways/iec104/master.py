"""The controlling station: one TCP connection to one RTU, kept up, read with ``async for``.

Usage::

    async with Iec104Master(host="10.0.0.5", common_address=1) as master:
        result = await master.double_command(100, on=False)
        async for event in master:
            ...

Each connection checks that the station is the RTU expected: the first ASDU it sends must
carry the expected common address (``StationVerified``). A station that first reports
another common address, or refuses ours (negative confirmation, cause "unknown common
address"), is another RTU — another platform's on this port, a mis-wired one: the connection
is refused and closed, counted, reported as ``WrongDevice`` and retried with the back-off.
To name the station found when it only refused ours, the master asks it once with the
broadcast address, which a station answers with its own. Once verified, ASDUs of other
common addresses on the same link (a station with several) are counted and dropped as ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from gridpilot.core.backoff import Backoff
from gridpilot.gateways.feed import EventFeed
from gridpilot.gateways.iec104.events import (
    CommandOutcome,
    CommandResult,
    CommandStage,
    ConnectionState,
    ConnectionStateChanged,
    DoublePointUpdate,
    FloatValueUpdate,
    InterrogationFinished,
    MasterEvent,
    PointUpdate,
    ScaledValueUpdate,
    SinglePointUpdate,
    StationVerified,
    WrongDevice,
)
from gridpilot.gateways.reconnect import LINK_RETRY_MAX_S, keep_connected
from gridpilot.protocols.iec104 import (
    Asdu,
    AsduReceived,
    ClockSync,
    CloseRequested,
    Cot,
    Cp56Time,
    DoubleCommand,
    DoublePoint,
    DoublePointState,
    Event,
    FloatValue,
    InformationObject,
    Interrogation,
    LinkState,
    LinkStateChanged,
    MonitoredObject,
    ProtocolErrorEvent,
    Role,
    ScaledValue,
    Session,
    SingleCommand,
    SinglePoint,
    TypeId,
    type_id_of,
)
from gridpilot.protocols.iec104.link import StreamLink

log = logging.getLogger(__name__)

_REFUSING_COTS = {Cot.UNKNOWN_TYPE_ID, Cot.UNKNOWN_COT, Cot.UNKNOWN_CA, Cot.UNKNOWN_IOA}
BROADCAST_CA = 0xFFFF
WHO_ARE_YOU_S = 2.0  # how long a station that refused our address has to say its own


# A station sending garbage ("68 00" repeated makes one error per octet) must not flood
# the log: the first bad input of a burst is logged, then at most one line per this many
# seconds, with how many were left out; ``stats.malformed_frames`` counts them all.
BAD_INPUT_LOG_S = 10.0


@dataclass(slots=True)
class MasterStats:
    connects: int = 0
    asdus_received: int = 0
    malformed_frames: int = 0  # dropped, never fatal
    foreign_asdus: int = 0  # another common address, or a reply nobody waited for
    dropped_events: int = 0  # the consumer fell more than max_pending_events behind
    wrong_device: int = 0  # connections refused: the station is not the RTU expected


class Iec104Master:
    """A controlling station for one RTU (one common address), reconnecting with back-off.

    Iterating yields ``ConnectionStateChanged``, point updates and ``InterrogationFinished``
    until ``close``. k, w and the timers t0..t3 (seconds) are those of IEC 60870-5-104; t0
    bounds the TCP connect. Reconnect waits double from ``reconnect_min_s`` up to
    ``reconnect_max_s`` and start again from the minimum after a successful start. Bad frames
    are counted in ``stats`` and dropped. Commands return a ``CommandResult``, never raise for
    what the station or the network did.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int = 2404,
        common_address: int,
        originator: int = 0,
        interrogate_on_connect: bool = True,
        k: int = 12,
        w: int = 8,
        t0: float = 30.0,
        t1: float = 15.0,
        t2: float = 10.0,
        t3: float = 20.0,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = LINK_RETRY_MAX_S,
        max_pending_events: int = 10_000,
    ) -> None:
        if not host:
            raise ValueError("host must not be empty")
        if not 0 < port <= 0xFFFF:
            raise ValueError(f"port must be in 1..65535, got {port}")
        if not 0 < common_address < 0xFFFF:
            raise ValueError(f"common_address must be in 1..65534, got {common_address}")
        if not 0 <= originator <= 0xFF:
            raise ValueError(f"originator is one octet, got {originator}")
        # Built once here so that bad k/w/t values fail in the constructor, not on connect.
        Session(role=Role.CONTROLLING, k=k, w=w, t1=t1, t2=t2, t3=t3)
        self.host, self.port = host, port
        self.common_address = common_address
        self.originator = originator
        self.interrogate_on_connect = interrogate_on_connect
        self._k, self._w, self._t1, self._t2, self._t3 = k, w, t1, t2, t3
        self._t0 = t0
        self._backoff = Backoff(
            reconnect_min_s, reconnect_max_s, names=("reconnect_min_s", "reconnect_max_s")
        )
        self.stats = MasterStats()
        self.state = ConnectionState.DISCONNECTED
        self._events: EventFeed[MasterEvent] = EventFeed(max_pending=max_pending_events)
        self._link: StreamLink | None = None
        self._waiters: dict[tuple[TypeId, int], asyncio.Queue[Asdu | None]] = {}
        self._task: asyncio.Task[None] | None = None
        # this connection's check of the station: verified, or why it is another
        self._verified = False
        self._wrong: str | None = None
        self._who: asyncio.TimerHandle | None = None
        self._bad_input_logged_at: float | None = None  # monotonic time of the last warning
        self._bad_input_unlogged = 0  # bad inputs since then, not logged

    # -- life cycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Iec104Master:
        self._task = asyncio.create_task(self._run(), name=f"iec104-master-{self.host}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            self._set_state(ConnectionState.CLOSED)
            self._events.close()

    def __aiter__(self) -> EventFeed[MasterEvent]:
        return self._events

    async def _run(self) -> None:
        await keep_connected(
            self._connection,
            backoff=self._backoff,
            worked=lambda: self.state is ConnectionState.STARTED and self._wrong is None,
            on_down=self._down,
            name=f"IEC 104 master to {self.host}:{self.port} (common address "
            f"{self.common_address})",
        )

    def _down(self, reason: str, retry_in_s: float) -> None:
        self._drop_waiters()
        # keep_connected logs it, quietly while the RTU has not been reached yet
        self._set_state(ConnectionState.DISCONNECTED, reason=reason, retry_in_s=retry_in_s)

    async def _connection(self) -> str:
        self._set_state(ConnectionState.CONNECTING)
        async with asyncio.timeout(self._t0):
            reader, writer = await asyncio.open_connection(self.host, self.port)
        loop = asyncio.get_running_loop()
        session = Session(
            role=Role.CONTROLLING,
            k=self._k,
            w=self._w,
            t1=self._t1,
            t2=self._t2,
            t3=self._t3,
            clock=loop.time,
        )
        link = StreamLink(session=session, reader=reader, writer=writer)
        self.stats.connects += 1
        self._verified, self._wrong = False, None
        self._set_state(ConnectionState.CONNECTED)
        try:
            self._link = link
            session.start()
            link.flush()
            reason = await link.run(self._on_event)
            return self._wrong or reason
        finally:
            if self._who is not None:
                self._who.cancel()
                self._who = None
            self._link = None
            await link.close()

    # -- incoming -------------------------------------------------------------------------------

    def _log_bad_input(self, error: Exception) -> None:
        now = time.monotonic()
        last = self._bad_input_logged_at
        if last is not None and now - last < BAD_INPUT_LOG_S:
            self._bad_input_unlogged += 1
            return
        more = self._bad_input_unlogged
        self._bad_input_logged_at, self._bad_input_unlogged = now, 0
        log.warning(
            "IEC 104 bad input from %s:%s: %s%s",
            self.host,
            self.port,
            error,
            f" (and {more} more since the last such line)" if more else "",
        )

    def _on_event(self, event: Event) -> None:
        if isinstance(event, AsduReceived):
            self.stats.asdus_received += 1
            self._on_asdu(event.asdu)
        elif isinstance(event, ProtocolErrorEvent):
            self.stats.malformed_frames += 1
            self._log_bad_input(event.error)
        elif isinstance(event, LinkStateChanged) and event.state is LinkState.STARTED:
            self._set_state(ConnectionState.STARTED)
            if self.interrogate_on_connect and self._link is not None:
                self._link.send(self._asdu(Interrogation(), Cot.ACTIVATION))
        elif isinstance(event, CloseRequested):
            log.warning("IEC 104 link to %s:%s closing: %s", self.host, self.port, event.reason)

    def _on_asdu(self, asdu: Asdu) -> None:
        if self._wrong is not None:
            return  # refused: nothing of it counts
        if not self._verified and not self._identify(asdu):
            return
        if asdu.common_address != self.common_address:
            self.stats.foreign_asdus += 1
            return
        first = asdu.objects[0]
        if isinstance(first, SinglePoint | DoublePoint | ScaledValue | FloatValue):
            received_ns = time.time_ns()
            for obj in asdu.objects:
                if isinstance(obj, SinglePoint | DoublePoint | ScaledValue | FloatValue):
                    self._emit(_point_update(asdu, obj, received_ns))
            return
        waiter = self._waiters.get((asdu.type_id, first.ioa))
        if waiter is not None:
            waiter.put_nowait(asdu)
        if isinstance(first, Interrogation) and asdu.cot is Cot.ACTIVATION_TERMINATION:
            self._emit(InterrogationFinished(common_address=asdu.common_address))
        elif waiter is None and not isinstance(first, Interrogation):
            self.stats.foreign_asdus += 1

    def _identify(self, asdu: Asdu) -> bool:
        """Check the station by the first ASDU it sends; False: refused (or being asked)."""
        ca = asdu.common_address
        if ca == self.common_address:
            if asdu.negative and asdu.cot is Cot.UNKNOWN_CA:
                self._who_are_you()
                return False
            self._verified = True
            self._emit(StationVerified(common_address=ca))
            return True
        if ca == BROADCAST_CA:
            return False  # not an answer that says who it is
        self._refuse(f"common address {ca}")
        return False

    def _who_are_you(self) -> None:
        """The station does not serve our common address: ask it with the broadcast address
        (it answers with its own), and refuse it anyway if it does not say in time."""
        if self._who is not None or self._link is None:
            return
        link = self._link
        link.send(
            Asdu(
                cot=Cot.ACTIVATION,
                common_address=BROADCAST_CA,
                originator=self.originator,
                objects=(Interrogation(),),
            )
        )
        self._who = asyncio.get_running_loop().call_later(
            WHO_ARE_YOU_S,
            self._refuse,
            f"a station that does not serve common address {self.common_address}",
        )

    def _refuse(self, found: str) -> None:
        """The station is another RTU: say which, and close the connection."""
        if self._wrong is not None or self._link is None:
            return
        expected = f"common address {self.common_address}"
        wrong = WrongDevice(host=self.host, port=self.port, expected=expected, found=found)
        self._wrong = wrong.message
        self.stats.wrong_device += 1
        log.warning(
            "%s; refusing the connection",
            wrong.message,
            extra={"rtu": f"{self.host}:{self.port}", "expected": expected, "found": found},
        )
        self._emit(wrong)
        self._link.abort()

    def _emit(self, event: MasterEvent) -> None:
        if self._events.put(event):
            self.stats.dropped_events += 1

    def _set_state(
        self, state: ConnectionState, *, reason: str | None = None, retry_in_s: float | None = None
    ) -> None:
        self.state = state
        self._emit(
            ConnectionStateChanged(
                state=state, host=self.host, port=self.port, reason=reason, retry_in_s=retry_in_s
            )
        )

    def _drop_waiters(self) -> None:
        for waiter in self._waiters.values():
            waiter.put_nowait(None)

    # -- commands -------------------------------------------------------------------------------

    def _asdu(self, obj: InformationObject, cot: Cot) -> Asdu:
        return Asdu(
            cot=cot, common_address=self.common_address, originator=self.originator, objects=(obj,)
        )

    async def double_command(
        self,
        ioa: int,
        on: bool,
        *,
        select_before_operate: bool = True,
        qualifier: int = 0,
        timeout_s: float = 10.0,
        wait_for_termination: bool = True,
    ) -> CommandResult:
        """Switch a double point: select, ACT_CON, execute, ACT_CON, ACT_TERM."""
        state = DoublePointState.ON if on else DoublePointState.OFF

        def make(select: bool) -> DoubleCommand:
            return DoubleCommand(ioa=ioa, state=state, select=select, qualifier=qualifier)

        return await self._command(
            make, select_before_operate, timeout_s, wait_for_termination=wait_for_termination
        )

    async def single_command(
        self,
        ioa: int,
        on: bool,
        *,
        select_before_operate: bool = True,
        qualifier: int = 0,
        timeout_s: float = 10.0,
        wait_for_termination: bool = True,
    ) -> CommandResult:
        def make(select: bool) -> SingleCommand:
            return SingleCommand(ioa=ioa, on=on, select=select, qualifier=qualifier)

        return await self._command(
            make, select_before_operate, timeout_s, wait_for_termination=wait_for_termination
        )

    async def interrogate(self, *, timeout_s: float = 30.0) -> CommandResult:
        """A general interrogation; the values arrive as events, then ``InterrogationFinished``."""
        return await self._command(lambda _: Interrogation(), False, timeout_s)

    async def clock_sync(
        self, *, time_ns: int | None = None, timeout_s: float = 10.0
    ) -> CommandResult:
        """Set the station's clock (default: our wall clock now)."""
        stamp = Cp56Time(time.time_ns() if time_ns is None else time_ns)
        return await self._command(
            lambda _: ClockSync(time=stamp), False, timeout_s, wait_for_termination=False
        )

    async def _command(
        self,
        make: Callable[[bool], InformationObject],
        select_first: bool,
        timeout_s: float,
        *,
        wait_for_termination: bool = True,
    ) -> CommandResult:
        loop = asyncio.get_running_loop()
        started = loop.time()
        execute = make(False)
        stage = CommandStage.SELECT if select_first else CommandStage.EXECUTE
        link = self._link

        def result(
            outcome: CommandOutcome, reply: Asdu | None = None, detail: str = ""
        ) -> CommandResult:
            return CommandResult(
                ioa=execute.ioa,
                outcome=outcome,
                stage=stage,
                elapsed_s=loop.time() - started,
                cot=reply.cot if reply is not None else None,
                detail=detail,
            )

        if link is None or self.state is not ConnectionState.STARTED:
            return result(CommandOutcome.NOT_CONNECTED, detail=f"link is {self.state}")
        key = (type_id_of(execute), execute.ioa)
        if key in self._waiters:
            return result(CommandOutcome.BUSY, detail="a command on this address is under way")
        replies: asyncio.Queue[Asdu | None] = asyncio.Queue()
        self._waiters[key] = replies

        async def expect(cot: Cot) -> Asdu | None:
            while True:
                reply = await replies.get()
                if reply is None or reply.cot is cot or reply.cot in _REFUSING_COTS:
                    return reply
                self.stats.foreign_asdus += 1

        try:
            async with asyncio.timeout(timeout_s):
                steps: list[tuple[CommandStage, Cot]] = []
                if select_first:
                    steps.append((CommandStage.SELECT, Cot.ACTIVATION_CON))
                steps.append((CommandStage.EXECUTE, Cot.ACTIVATION_CON))
                if wait_for_termination:
                    steps.append((CommandStage.TERMINATION, Cot.ACTIVATION_TERMINATION))
                reply: Asdu | None = None
                for stage, cot in steps:
                    if stage is not CommandStage.TERMINATION:
                        link.send(self._asdu(make(stage is CommandStage.SELECT), Cot.ACTIVATION))
                    reply = await expect(cot)
                    if reply is None:
                        return result(CommandOutcome.CONNECTION_LOST)
                    if reply.negative or reply.cot is not cot:
                        return result(CommandOutcome.REFUSED, reply, "negative confirmation")
                return result(CommandOutcome.CONFIRMED, reply)
        except TimeoutError:
            if stage is CommandStage.SELECT and self._link is link:
                # Release a selection the station may have made but not confirmed in time.
                link.send(self._asdu(make(True), Cot.DEACTIVATION))
            return result(CommandOutcome.TIMEOUT, detail=f"no reply within {timeout_s:g} s")
        finally:
            del self._waiters[key]


_UPDATES: dict[type, Callable[..., PointUpdate]] = {
    SinglePoint: SinglePointUpdate,
    DoublePoint: DoublePointUpdate,
    ScaledValue: ScaledValueUpdate,
    FloatValue: FloatValueUpdate,
}


def _point_update(asdu: Asdu, obj: MonitoredObject, received_ns: int) -> PointUpdate:
    return _UPDATES[type(obj)](
        common_address=asdu.common_address,
        ioa=obj.ioa,
        cot=asdu.cot,
        value=obj.value,
        quality=obj.quality,
        time_ns=obj.time.time_ns if obj.time is not None else None,
        time_invalid=obj.time.invalid if obj.time is not None else False,
        received_ns=received_ns,
    )
