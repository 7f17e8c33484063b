"""Reporting conditions to monitoring: a service says which conditions hold now, and the
reporter sends what became active or changed at once, ``active=False`` for what ended, and
every active one again each ``CONDITION_REPEAT_S`` seconds, so that a restarted monitoring
service learns them again (and clears one no longer re-sent after three repeats)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gridpilot.core.schemas import CONDITION_REPEAT_S, AlarmKind, Condition, Severity


@dataclass(frozen=True)
class Held:
    """A condition that holds, without its time."""

    kind: AlarmKind
    mrid: str
    message: str
    severity: Severity = Severity.WARNING
    value: float = 0.0
    shape: str = ""  # what makes it a different condition (the numbers in message move)
    ended: str = ""  # what to say when it ends ("" : "ended: <message>")


class ConditionReporter:
    def __init__(
        self,
        *,
        grid: str,
        reporter: str,
        send: Callable[[Condition], Awaitable[None]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.grid = grid
        self.reporter = reporter
        self.send = send
        self.clock = clock
        self.active: dict[tuple[AlarmKind, str], Held] = {}
        self._sent_at = 0.0

    def seed(self, held: list[Held]) -> None:
        """What an earlier process reported active: cleared at the first update unless it
        still holds."""
        self.active = {(h.kind, h.mrid): h for h in held}

    async def update(self, held: list[Held]) -> None:
        """Report the conditions that hold now: changes at once, the active ones again when
        they were last sent CONDITION_REPEAT_S ago."""
        now = self.clock()
        want = {(h.kind, h.mrid): h for h in held}
        repeat = now - self._sent_at >= CONDITION_REPEAT_S
        for key, h in want.items():
            old = self.active.get(key)
            # the value moves with the load every step: resend it only with the repeat
            if repeat or old is None or (old.severity, old.shape) != (h.severity, h.shape):
                await self._send(h, active=True)
        for key, old in self.active.items():
            if key not in want:
                await self._send(old, active=False)
        self.active = want
        if repeat:
            self._sent_at = now

    async def _send(self, h: Held, *, active: bool) -> None:
        await self.send(
            Condition(
                grid=self.grid,
                kind=h.kind,
                mrid=h.mrid,
                active=active,
                t_ns=time.time_ns(),
                severity=h.severity,
                value=h.value,
                message=h.message if active else (h.ended or f"ended: {h.message}"),
                reporter=self.reporter,
            )
        )
