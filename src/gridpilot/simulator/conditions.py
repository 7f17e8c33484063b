"""The twin's conditions for the operator: de-energised islands and a power flow without a
solution, as ``Condition`` reports on ``gp.<grid>.condition.simulator``.

The reporter is given the whole set of conditions that hold now; it sends what became active
or changed, ``active=False`` for what ended, and every active one again each
``CONDITION_REPEAT_S`` seconds so that a restarted monitoring service learns them again.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gridpilot.core.schemas import CONDITION_REPEAT_S, AlarmKind, Condition, Severity
from gridpilot.simulator.twin import Twin, power_text

TWIN_MRID = "twin"  # the mrid of twin_diverged: the twin as a whole, not one piece of equipment


@dataclass(frozen=True)
class Held:
    """A condition that holds, without its time."""

    kind: AlarmKind
    mrid: str
    severity: Severity
    value: float
    message: str
    shape: str = ""  # what makes it a different condition (the numbers in message move)


def twin_conditions(twin: Twin) -> list[Held]:
    """What the twin's state asks the operator to know."""
    held: list[Held] = []
    for island in twin.dead_islands():
        mw = twin.unserved_mw(island)
        members = set(island.buses)
        gens = [g.id for g in twin.model.generators if g.bus in members]
        buses = ", ".join(island.buses[:5]) + (" ..." if len(island.buses) > 5 else "")
        held.append(
            Held(
                kind=AlarmKind.DE_ENERGISED,
                mrid=island.name,
                # customers off supply are the first thing a control room must see to
                severity=Severity.CRITICAL if mw > 0 else Severity.WARNING,
                value=round(mw, 3),
                message=f"{len(island.buses)} buses without supply ({buses}): "
                f"{power_text(mw)} of load unserved, {len(gens)} generators off",
                shape=f"{len(island.buses)} {mw > 0}",
            )
        )
    if not twin.solved:
        held.append(
            Held(
                kind=AlarmKind.TWIN_DIVERGED,
                mrid=TWIN_MRID,
                severity=Severity.CRITICAL,
                value=0.0,
                message="the digital twin's power flow has no solution for the grid as switched "
                f"({twin.failure}); its devices report no valid data until it solves again",
            )
        )
    return held


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
                message=h.message if active else f"ended: {h.message}",
                reporter=self.reporter,
            )
        )
