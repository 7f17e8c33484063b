"""The 104 link-layer state machine for one TCP connection, sans-IO with an injected clock.

Feed it what the socket read (``receive``), give it ASDUs to send (``send``), and call ``poll``
after each of those and at least every few hundred milliseconds: it returns the bytes to write
(I-frames the k window allows, S-frame acknowledgements after w frames or t2, TESTFR after t3
idle, replies to U-frames). Timer expiries arrive as events from ``take_events`` (and at the
front of the next ``receive``); on ``CloseRequested`` the transport must drop the connection.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from gridpilot.protocols.iec104.apci import (
    SEQ_MODULO,
    Framer,
    IFrame,
    SFrame,
    UFrame,
    UFunction,
    decode_apdu,
    encode_apdu,
)
from gridpilot.protocols.iec104.asdu import Asdu, decode_asdu, encode_asdu
from gridpilot.protocols.iec104.errors import (
    Iec104Error,
    LinkTimeoutError,
    SequenceError,
    UnexpectedFrameError,
)


class Role(StrEnum):
    CONTROLLING = "controlling"  # the master (client) that starts and stops data transfer
    CONTROLLED = "controlled"  # the RTU (server) that sends data once started


class LinkState(StrEnum):
    STOPPED = "stopped"  # connected, no data transfer (the state after TCP connect)
    STARTING = "starting"  # STARTDT act sent, waiting for its confirmation
    STARTED = "started"  # data transfer on
    STOPPING = "stopping"  # STOPDT under way; waits for outstanding acknowledgements
    CLOSED = "closed"  # a fatal error or timeout; the connection must be dropped


@dataclass(frozen=True, slots=True)
class AsduReceived:
    asdu: Asdu


@dataclass(frozen=True, slots=True)
class LinkStateChanged:
    state: LinkState


@dataclass(frozen=True, slots=True)
class ProtocolErrorEvent:
    """Bad input that was dropped; the link goes on unless a ``CloseRequested`` follows."""

    error: Iec104Error


@dataclass(frozen=True, slots=True)
class CloseRequested:
    reason: Iec104Error


Event = AsduReceived | LinkStateChanged | ProtocolErrorEvent | CloseRequested

_CONFIRMS = {
    UFunction.STARTDT_ACT: UFunction.STARTDT_CON,
    UFunction.STOPDT_ACT: UFunction.STOPDT_CON,
    UFunction.TESTFR_ACT: UFunction.TESTFR_CON,
}


class Session:
    """One end of one 104 connection. Times are seconds from ``clock`` (monotonic)."""

    def __init__(
        self,
        *,
        role: Role,
        k: int = 12,
        w: int = 8,
        t1: float = 15.0,
        t2: float = 10.0,
        t3: float = 20.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= k < SEQ_MODULO:
            raise ValueError(f"k must be in 1..{SEQ_MODULO - 1}, got {k}")
        if not 1 <= w <= k:
            raise ValueError(f"w must be in 1..k ({k}), got {w}; the standard advises w <= 2k/3")
        if not 0 < t2 < t1:
            raise ValueError(f"the standard requires 0 < t2 < t1, got t1={t1}, t2={t2}")
        if t3 <= 0:
            raise ValueError(f"t3 must be positive, got {t3}")
        self.role = Role(role)
        self.k, self.w, self.t1, self.t2, self.t3 = k, w, t1, t2, t3
        self._clock = clock
        self._framer = Framer()
        self._state = LinkState.STOPPED
        self._vs = 0  # N(S) of our next I-frame
        self._vr = 0  # N(S) we expect next from the peer
        self._sent: deque[tuple[int, float]] = deque()  # our unacknowledged (N(S), time sent)
        self._queue: deque[bytes] = deque()  # encoded ASDUs waiting for STARTED and the window
        self._out = bytearray()
        self._unacked_rx = 0
        self._first_unacked_rx_at = 0.0
        self._last_rx_at = clock()
        self._awaiting: dict[UFunction, float] = {}  # U confirmation expected -> act sent at
        self._events: list[Event] = []
        self.close_reason: Iec104Error | None = None

    # -- what the owner asks -------------------------------------------------------------------

    @property
    def state(self) -> LinkState:
        return self._state

    @property
    def queued(self) -> int:
        """ASDUs waiting to be sent (link not started, or the k window full)."""
        return len(self._queue)

    @property
    def unacknowledged(self) -> int:
        """I-frames sent and not yet acknowledged by the peer."""
        return len(self._sent)

    def start(self) -> None:
        """Controlling station: ask the peer to start data transfer (STARTDT act)."""
        self._require_role(Role.CONTROLLING, "start")
        if self._state in (LinkState.STOPPED, LinkState.STOPPING):
            self._send_u(UFunction.STARTDT_ACT)
            self._set_state(LinkState.STARTING)

    def stop(self) -> None:
        """Controlling station: ask the peer to stop data transfer (STOPDT act)."""
        self._require_role(Role.CONTROLLING, "stop")
        if self._state in (LinkState.STARTED, LinkState.STARTING):
            self._awaiting.pop(UFunction.STARTDT_CON, None)
            self._flush_ack()  # the peer confirms the stop only when all it sent is acknowledged
            self._send_u(UFunction.STOPDT_ACT)
            self._set_state(LinkState.STOPPING)

    def send(self, asdu: Asdu | bytes) -> None:
        """Queue an ASDU (or one already encoded); it leaves with the next ``poll`` it fits."""
        self._queue.append(encode_asdu(asdu) if isinstance(asdu, Asdu) else bytes(asdu))

    def take_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def next_deadline(self) -> float | None:
        """The earliest clock time at which ``poll`` has timer work, if any."""
        times = [at + self.t1 for at in self._awaiting.values()]
        if self._sent:
            times.append(self._sent[0][1] + self.t1)
        if self._unacked_rx:
            times.append(self._first_unacked_rx_at + self.t2)
        if UFunction.TESTFR_CON not in self._awaiting:
            times.append(self._last_rx_at + self.t3)
        return min(times) if times and self._state is not LinkState.CLOSED else None

    # -- input ----------------------------------------------------------------------------------

    def receive(self, data: bytes) -> list[Event]:
        if self._state is LinkState.CLOSED:
            return self.take_events()
        self._last_rx_at = self._clock()
        for item in self._framer.feed(data):
            if isinstance(item, Iec104Error):
                self._events.append(ProtocolErrorEvent(item))
                continue
            try:
                self._on_frame(decode_apdu(item))
            except Iec104Error as error:
                self._events.append(ProtocolErrorEvent(error))
            if self.close_reason is not None:
                break
        return self.take_events()

    def _on_frame(self, frame: IFrame | SFrame | UFrame) -> None:
        if isinstance(frame, UFrame):
            self._on_u(frame.function)
            return
        if isinstance(frame, IFrame):
            if frame.send_seq != self._vr:
                self._fatal(SequenceError("N(S)", expected=str(self._vr), received=frame.send_seq))
                return
            if not self._acknowledge(frame.recv_seq):
                return
            self._vr = (self._vr + 1) % SEQ_MODULO
            if self._unacked_rx == 0:
                self._first_unacked_rx_at = self._clock()
            self._unacked_rx += 1
            # The frame is counted even if its ASDU is bad: its sequence number was valid.
            self._events.append(AsduReceived(decode_asdu(frame.asdu)))
            return
        self._acknowledge(frame.recv_seq)

    def _on_u(self, function: UFunction) -> None:
        if function is UFunction.TESTFR_ACT:
            self._out += encode_apdu(UFrame(function=UFunction.TESTFR_CON))
        elif function in (UFunction.STARTDT_ACT, UFunction.STOPDT_ACT):
            if self.role is not Role.CONTROLLED:
                raise UnexpectedFrameError(function.name, state=f"{self.role} {self._state}")
            if function is UFunction.STARTDT_ACT:
                self._out += encode_apdu(UFrame(function=UFunction.STARTDT_CON))
                self._set_state(LinkState.STARTED)
            elif self._state is LinkState.STOPPED:
                self._out += encode_apdu(UFrame(function=UFunction.STOPDT_CON))
            else:
                self._set_state(LinkState.STOPPING)
                self._finish_stop()
        elif self._awaiting.pop(function, None) is None:
            raise UnexpectedFrameError(function.name, state=f"{self.role} {self._state}")
        elif function is UFunction.STARTDT_CON and self._state is LinkState.STARTING:
            self._set_state(LinkState.STARTED)
        elif function is UFunction.STOPDT_CON and self._state is LinkState.STOPPING:
            self._flush_ack()
            self._set_state(LinkState.STOPPED)

    def _acknowledge(self, recv_seq: int) -> bool:
        """Apply the peer's N(R); a value outside our outstanding frames is fatal."""
        oldest = self._sent[0][0] if self._sent else self._vs
        outstanding = (self._vs - oldest) % SEQ_MODULO
        if (recv_seq - oldest) % SEQ_MODULO > outstanding:
            self._fatal(SequenceError("N(R)", expected=f"{oldest}..{self._vs}", received=recv_seq))
            return False
        while self._sent and self._sent[0][0] != recv_seq:
            self._sent.popleft()
        if self._state is LinkState.STOPPING and self.role is Role.CONTROLLED:
            self._finish_stop()
        return True

    def _finish_stop(self) -> None:
        # The controlled station confirms STOPDT only when all its I-frames are acknowledged.
        self._flush_ack()
        if not self._sent:
            self._out += encode_apdu(UFrame(function=UFunction.STOPDT_CON))
            self._set_state(LinkState.STOPPED)

    # -- output ---------------------------------------------------------------------------------

    def poll(self, now: float | None = None) -> bytes:
        """Bytes to write now; checks t1, t2 and t3 against ``now`` (default: the clock)."""
        now = self._clock() if now is None else now
        if self._state is LinkState.CLOSED:
            self._out.clear()
            return b""
        if self._sent and now - self._sent[0][1] >= self.t1:
            seq = self._sent[0][0]
            self._timeout(f"acknowledgement of I-frame N(S)={seq}", now - self._sent[0][1])
        for function, since in list(self._awaiting.items()):
            if now - since >= self.t1:
                self._timeout(function.name, now - since)
        if self.close_reason is not None:
            self._out.clear()
            return b""
        if self._state is LinkState.STARTED:
            while self._queue and len(self._sent) < self.k:
                asdu = self._queue.popleft()
                self._out += encode_apdu(IFrame(send_seq=self._vs, recv_seq=self._vr, asdu=asdu))
                self._sent.append((self._vs, now))
                self._vs = (self._vs + 1) % SEQ_MODULO
                self._unacked_rx = 0  # every I-frame carries our N(R)
        stopping = self._state is LinkState.STOPPING
        if self._unacked_rx >= self.w or (
            self._unacked_rx and (stopping or now - self._first_unacked_rx_at >= self.t2)
        ):
            self._flush_ack()
        if UFunction.TESTFR_CON not in self._awaiting and now - self._last_rx_at >= self.t3:
            self._send_u(UFunction.TESTFR_ACT, now)
        out = bytes(self._out)
        self._out.clear()
        return out

    def _flush_ack(self) -> None:
        if self._unacked_rx:
            self._out += encode_apdu(SFrame(recv_seq=self._vr))
            self._unacked_rx = 0

    def _send_u(self, function: UFunction, now: float | None = None) -> None:
        self._out += encode_apdu(UFrame(function=function))
        self._awaiting[_CONFIRMS[function]] = self._clock() if now is None else now

    # -- state ----------------------------------------------------------------------------------

    def _set_state(self, state: LinkState) -> None:
        if state is not self._state:
            self._state = state
            self._events.append(LinkStateChanged(state))

    def _timeout(self, waiting_for: str, seconds: float) -> None:
        if self._state is not LinkState.CLOSED:
            error = LinkTimeoutError("t1", waiting_for=waiting_for, seconds=seconds)
            self._close(error)

    def _fatal(self, error: Iec104Error) -> None:
        self._events.append(ProtocolErrorEvent(error))
        self._close(error)

    def _close(self, reason: Iec104Error) -> None:
        self.close_reason = reason
        self._state = LinkState.CLOSED
        self._events.append(CloseRequested(reason))

    def _require_role(self, role: Role, action: str) -> None:
        if self.role is not role:
            raise RuntimeError(f"only the {role} station can {action} data transfer")
