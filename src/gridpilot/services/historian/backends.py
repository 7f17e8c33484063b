"""Opening a historian store from a URL, and the pieces both SQL backends share.

The concrete stores are imported when a URL asks for them, so a SQLite deployment never loads
libpq and the backends may import the shared helpers below without a cycle.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from gridpilot.core.errors import ConfigError
from gridpilot.services.historian.store import (
    AGG_BUCKETS_S,
    EventRow,
    Sample,
    SeriesKey,
    SeriesKind,
    Store,
    StoreError,
)

NS_PER_S = 1_000_000_000
NS_PER_DAY = 86_400 * NS_PER_S
_PG_SCHEMES = ("postgresql://", "postgres://")
_SQLITE_SCHEME = "sqlite://"


def open_store(url: str, *, password: str | None = None) -> Store:
    """The store a URL names, with its schema migrated.

    ``postgresql://`` or ``postgres://`` → PostgreSQL (``password`` used when the URL has
    none); ``sqlite:///abs/path.db`` or a plain filesystem path → SQLite (the parent directory
    is created)."""
    store: Store
    if url.startswith(_PG_SCHEMES):
        from gridpilot.services.historian.postgres import PostgresStore

        store = PostgresStore(url, password=password)
    else:
        from gridpilot.services.historian.sqlite import SqliteStore

        path = sqlite_path(url)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create the directory for {path}: {e.strerror}") from e
        store = SqliteStore(path)
    try:
        store.migrate()
    except BaseException:
        store.close()
        raise
    return store


def sqlite_path(url: str) -> Path:
    """The file of a ``sqlite:///abs/path.db`` URL or a plain path; ConfigError for others."""
    if url.startswith(_SQLITE_SCHEME):
        rest = url.removeprefix(_SQLITE_SCHEME)
        if not rest.startswith("/"):
            raise ConfigError(
                f"{url!r}: a SQLite URL needs an absolute path, as in sqlite:///var/lib/gp.db"
            )
        return Path("/" + rest.lstrip("/"))
    if "://" in url or not url:
        raise ConfigError(
            f"unknown historian database {redact(url)!r}: use postgresql://user@host/db, "
            "sqlite:///absolute/path.db or a file path"
        )
    return Path(url).expanduser()


def redact(url: str) -> str:
    """The URL without its password (in the user part or a ``password=`` parameter)."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{host}"
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(k == "password" for k, _ in pairs):
        query = urlencode(
            [(k, "***" if k == "password" else v) for k, v in pairs], quote_via=quote, safe="*"
        )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


# --- shared by the SQLite and PostgreSQL stores -------------------------------------------------


def check_newer_schema(url: str, found: int, known: int) -> None:
    """A database migrated by a newer GridPilot may hold what this code would corrupt."""
    if found > known:
        raise StoreError(
            f"the historian database {url} has schema version {found}, but this GridPilot "
            f"knows only up to {known}: upgrade GridPilot"
        )


def check_finite(samples: Sequence[Sample]) -> None:
    """NaN or infinity would poison every aggregate of its bucket, so a batch with one is
    refused as a whole."""
    for s in samples:
        if not math.isfinite(s.value):
            raise ValueError(f"non-finite value {s.value!r} of {s.series} at t_ns={s.t_ns}")


def key_row(key: SeriesKey) -> tuple[str, str, str, str, str]:
    """A key as the plain strings stored in the series table."""
    return (key.grid, str(key.kind), key.source, key.mrid, key.quantity)


def event_row(event: EventRow) -> tuple[str, str, str, int, str]:
    return (event.grid, str(event.kind), event.key, event.t_ns, event.payload)


class SeriesCache:
    """Series key ↔ id. An id never changes once committed, so each is looked up once; only
    ids of committed rows may be added (a rolled-back insert's id may be reused)."""

    def __init__(self) -> None:
        self._ids: dict[SeriesKey, int] = {}
        self._keys: dict[int, SeriesKey] = {}

    def key(self, series_id: int) -> SeriesKey | None:
        return self._keys.get(series_id)

    def known(self, keys: Iterable[SeriesKey]) -> dict[SeriesKey, int]:
        """The cached ids among these keys."""
        return {k: self._ids[k] for k in keys if k in self._ids}

    def missing(self, keys: Iterable[SeriesKey]) -> list[SeriesKey]:
        """Distinct keys not cached, in first-seen order."""
        return [k for k in dict.fromkeys(keys) if k not in self._ids]

    def add(self, ids: Mapping[SeriesKey, int]) -> None:
        for key, series_id in ids.items():
            self._ids[key] = series_id
            self._keys[series_id] = key


def series_ids(rows: Iterable[tuple[Any, ...]]) -> dict[SeriesKey, int]:
    """Rows of (id, grid, kind, source, mrid, quantity) from the series table as key → id."""
    return {SeriesKey(g, SeriesKind(k), s, m, q): int(i) for i, g, k, s, m, q in rows}


def bucket_sql(column: str, width: str, *, mod: str = "%") -> str:
    """SQL for the start of the epoch-aligned bucket of ``column``: floor, also for negative
    times, where both databases' ``%`` truncates towards zero. ``mod="%%"`` for a psycopg
    query with parameters."""
    return f"({column} - (({column} {mod} {width}) + {width}) {mod} {width})"


def agg_table(bucket_s: int) -> str | None:
    """The stored aggregate a bucket width is answered from, coarsest first; None: raw."""
    if bucket_s < 1:
        raise ValueError(f"bucket_s must be at least 1, not {bucket_s}")
    for width_s in sorted(AGG_BUCKETS_S, reverse=True):
        if bucket_s % width_s == 0:
            return f"agg_{width_s}"
    return None


def bucket_range(t_from_ns: int, t_to_ns: int, width_ns: int) -> tuple[int, int]:
    """[lo, hi) of the times whose bucket starts in [t_from_ns, t_to_ns): both bounds rounded
    up to a bucket start."""
    return -(-t_from_ns // width_ns) * width_ns, -(-t_to_ns // width_ns) * width_ns


def retention_cutoffs(now_ns: int, raw_days: float, agg_days: float) -> tuple[int, int]:
    """Times before which raw samples, and aggregates and events, are deleted."""
    return now_ns - round(raw_days * NS_PER_DAY), now_ns - round(agg_days * NS_PER_DAY)


def sample_filter(
    grid: str | None, t_from_ns: int | None, t_to_ns: int | None, *, placeholder: str
) -> tuple[str, tuple[object, ...]]:
    """WHERE clause (never empty) and its parameters for samples of a grid in a range, with
    the driver's parameter placeholder ("?" for sqlite3, "%s" for psycopg)."""
    clauses: list[str] = ["true"]
    params: list[object] = []
    if t_from_ns is not None:
        clauses.append(f"t_ns >= {placeholder}")
        params.append(t_from_ns)
    if t_to_ns is not None:
        clauses.append(f"t_ns < {placeholder}")
        params.append(t_to_ns)
    if grid is not None:
        clauses.append(f"series_id IN (SELECT id FROM series WHERE grid = {placeholder})")
        params.append(grid)
    return " AND ".join(clauses), tuple(params)
