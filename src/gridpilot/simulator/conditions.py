"""The twin's conditions for the operator: de-energised islands and a power flow without a
solution, as ``Condition`` reports on ``gp.<grid>.condition.simulator``.

``core.conditions.ConditionReporter`` sends them.
"""

from __future__ import annotations

from gridpilot.core.conditions import ConditionReporter, Held
from gridpilot.core.schemas import AlarmKind, Severity
from gridpilot.simulator.twin import Twin, power_text

TWIN_MRID = "twin"  # the mrid of twin_diverged: the twin as a whole, not one piece of equipment


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


__all__ = ["TWIN_MRID", "ConditionReporter", "Held", "twin_conditions"]
