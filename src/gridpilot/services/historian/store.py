"""What the historian keeps and the one interface both databases implement.

Data model
----------
A *sample* is one value of one time series at one instant. A series is named by a ``SeriesKey``:
grid, kind (``meas``: a field device's reading; ``est``: the state estimate), source (the
device id, or ``se``), the measured equipment's mRID and the quantity (``v_pu``, ``p_mw.from``,
``loading_pct`` ...). A series and an instant identify a sample: writing it again (a redelivered
message) changes nothing, which makes every write idempotent.

An *event* is a whole message that is not a number (an alarm change, a command, a command
result, a topology report), kept as JSON under a key that is unique within its kind.

Besides the raw samples each store keeps min/avg/max aggregates per minute and per hour,
updated in the same transaction from the samples that were new, so an aggregate query over a
year reads hourly rows instead of millions of samples and the aggregates are exact.

Retention deletes raw samples older than ``raw_days`` and aggregates and events older than
``agg_days``.

Both stores are synchronous and not thread-safe: the historian service runs every call on one
worker thread.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple, Protocol

from gridpilot.core.errors import StoreError as StoreError  # re-exported: the stores raise it

AGG_BUCKETS_S = (60, 3600)  # stored aggregate resolutions


class SeriesKind(StrEnum):
    MEAS = "meas"  # what a field device reported
    EST = "est"  # the state estimate


class EventKind(StrEnum):
    ALARM = "alarm"
    COMMAND = "command"
    COMMAND_RESULT = "command_result"
    TOPOLOGY = "topology"
    AUDIT = "audit"  # who did what through the operator interface


class SeriesKey(NamedTuple):
    grid: str
    kind: SeriesKind
    source: str  # device id for MEAS, "se" for EST
    mrid: str
    quantity: str  # "v_pu", "va_deg", "p_mw.from", "q_mvar.load", "loading_pct" ...


class Sample(NamedTuple):
    series: SeriesKey
    t_ns: int
    value: float
    quality: int = 0  # IEC 61850 quality bits of a measurement; 0 for estimates


class EventRow(NamedTuple):
    grid: str
    kind: EventKind
    key: str  # unique within (grid, kind): a redelivered event is not stored twice
    t_ns: int
    payload: str  # the message as JSON


@dataclass(frozen=True, slots=True)
class WriteStats:
    samples_new: int = 0
    samples_duplicate: int = 0  # already stored (redelivered): skipped
    events_new: int = 0
    events_duplicate: int = 0


@dataclass(slots=True)
class Aggregate:
    """One series' buckets, columnar: bucket i starts at ``t_ns[i]``."""

    t_ns: list[int] = field(default_factory=list)
    min: list[float] = field(default_factory=list)
    avg: list[float] = field(default_factory=list)
    max: list[float] = field(default_factory=list)
    count: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Raw:
    """One series' samples, columnar, in time order."""

    t_ns: list[int] = field(default_factory=list)
    value: list[float] = field(default_factory=list)


class Store(Protocol):
    url: str  # where it is, with any password removed (for logs)

    def migrate(self) -> int:
        """Create or upgrade the schema (versioned migrations); returns the schema version."""
        ...

    def write(self, samples: Sequence[Sample], events: Sequence[EventRow]) -> WriteStats:
        """Store both in one transaction; samples and events already stored are skipped.

        Raises ValueError for a non-finite sample value, before anything is written.
        """
        ...

    def series(
        self, grid: str, kind: SeriesKind | None = None, mrid: str | None = None
    ) -> list[SeriesKey]:
        """The series stored for a grid, optionally of one kind and one piece of equipment."""
        ...

    def raw(
        self, keys: Sequence[SeriesKey], t_from_ns: int, t_to_ns: int, *, limit: int
    ) -> dict[SeriesKey, Raw]:
        """Samples with t_from_ns <= t < t_to_ns, at most ``limit`` per series (the earliest).

        Unknown keys map to an empty Raw."""
        ...

    def aggregate(
        self, keys: Sequence[SeriesKey], t_from_ns: int, t_to_ns: int, *, bucket_s: int
    ) -> dict[SeriesKey, Aggregate]:
        """min/avg/max/count per bucket of ``bucket_s`` seconds, buckets aligned to the Unix
        epoch; a bucket is included when its start is in [t_from_ns, t_to_ns). Multiples of an
        hour are answered from the hourly aggregates, multiples of a minute from the per-minute
        ones, anything else from the raw samples."""
        ...

    def latest(self, keys: Sequence[SeriesKey]) -> dict[SeriesKey, tuple[int, float]]:
        """The newest (t_ns, value) of each series that has one."""
        ...

    def events(
        self, grid: str, kind: EventKind | None, t_from_ns: int, t_to_ns: int, *, limit: int
    ) -> list[EventRow]:
        """Events in time order (then kind and key), at most ``limit`` (the earliest)."""
        ...

    def iter_samples(
        self, grid: str | None, t_from_ns: int, t_to_ns: int, *, batch: int = 50_000
    ) -> Iterator[list[Sample]]:
        """Every raw sample in the range (all grids when grid is None), in batches, ordered by
        time then series (in the order the series were first stored): what an export reads."""
        ...

    def count_samples(
        self, grid: str | None = None, t_from_ns: int | None = None, t_to_ns: int | None = None
    ) -> int:
        """Raw samples stored (of a grid, in a range): what an export's progress counts to."""
        ...

    def apply_retention(self, now_ns: int, *, raw_days: float, agg_days: float) -> dict[str, int]:
        """Delete what is past retention; returns rows deleted per table.

        Samples older than ``now - raw_days`` go; aggregate buckets that ended by
        ``now - agg_days`` and older events go too. Aggregates of deleted samples stay."""
        ...

    def close(self) -> None: ...
