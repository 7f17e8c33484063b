"""What of the twin must outlive its process: switch positions, DER setpoints, training
injections and the simulated clock, kept in KV bucket ``gp_twin`` (key: the grid).

A restarted simulator reads it back before its devices listen, so a restart never changes the
grid the operator switched. Only a missing key means a first start; a broker that does not
answer is an outage and fails the start-up (the supervisor restarts the service), for taking
it as a first start would put every switch back to its default.
"""

from __future__ import annotations

import logging

import msgspec
import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

from gridpilot.core import subjects
from gridpilot.core.bus import BUS_FAILURES
from gridpilot.core.errors import BusError
from gridpilot.core.schemas import AlarmKind, Measurand, Severity

log = logging.getLogger("gridpilot.simulator")

BUCKET = subjects.TWIN_BUCKET

# an outage: nats-py's errors and timeouts, or a failing socket
_OUTAGE: tuple[type[Exception], ...] = (*BUS_FAILURES, OSError)


class StoredGrossError(msgspec.Struct, frozen=True, kw_only=True):
    source: str
    mrid: str
    measurand: Measurand
    error: float
    until_s: float  # simulated seconds


class StoredCondition(msgspec.Struct, frozen=True, kw_only=True):
    """A condition the twin reported active: a restarted simulator that no longer finds it
    clears it, or its alarm would stay raised for ever."""

    kind: AlarmKind
    mrid: str
    severity: Severity
    message: str


class TwinState(msgspec.Struct, frozen=True, kw_only=True):
    """The twin's operator-made state; ``t_ns`` was the simulated time at wall time
    ``wall_ns``: the clock resumes as if it had run on (at the speed then in force)."""

    grid: str
    # the switches not in their normal position (the model's): small on the largest grids
    closed: dict[str, bool]
    setpoints: dict[str, tuple[float | None, float | None]] = {}
    gross: list[StoredGrossError] = []
    outages: dict[str, float] = {}  # device -> simulated second its comm outage ends
    conditions: list[StoredCondition] = []
    t_ns: int = 0
    wall_ns: int = 0
    speed: float = 1.0

    def same_grid_state(self, other: TwinState | None) -> bool:
        """Equal apart from the clock: nothing an operator did has changed."""
        if other is None:
            return False
        return (self.closed, self.setpoints, self.gross, self.outages, self._raised()) == (
            other.closed,
            other.setpoints,
            other.gross,
            other.outages,
            other._raised(),
        )

    def _raised(self) -> list[tuple[str, str, str]]:
        # not the messages: their figures move with the load
        return [(c.kind, c.mrid, c.severity) for c in self.conditions]

    def resumed_t_ns(self, now_wall_ns: int) -> int:
        """The simulated time now, had the simulator kept running."""
        return self.t_ns + round(max(0, now_wall_ns - self.wall_ns) * self.speed)


_decoder = msgspec.json.Decoder(TwinState)


async def load(kv: KeyValue, grid: str) -> TwinState | None:
    """The stored state of ``grid``; None only when there is none (a first start).

    Raises BusError when the bucket cannot be read or holds something undecodable."""
    try:
        entry = await kv.get(grid)
    except nats.js.errors.KeyNotFoundError:  # also a deleted or purged key
        return None
    except _OUTAGE as exc:  # an outage: never a first start
        raise BusError(f"cannot read the twin's state from KV {BUCKET}/{grid}: {exc!r}") from exc
    try:
        return _decoder.decode(entry.value or b"")
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BusError(
            f"KV {BUCKET}/{grid} does not hold a twin state ({exc}); delete the key "
            f"(nats kv del {BUCKET} {grid}) to start from the grid's default switch positions"
        ) from exc


async def save(kv: KeyValue, state: TwinState) -> None:
    await kv.put(state.grid, msgspec.json.encode(state))
