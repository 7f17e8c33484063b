"""The SQLite historian store: one file in the data directory, no server to run."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from gridpilot.services.historian.backends import (
    NS_PER_S,
    SeriesCache,
    agg_table,
    bucket_range,
    bucket_sql,
    check_finite,
    check_newer_schema,
    event_row,
    key_row,
    retention_cutoffs,
    sample_filter,
    series_ids,
)
from gridpilot.services.historian.store import (
    AGG_BUCKETS_S,
    Aggregate,
    EventKind,
    EventRow,
    Raw,
    Sample,
    SeriesKey,
    SeriesKind,
    StoreError,
    WriteStats,
)

# How long a write waits for another connection's lock (an import running beside the historian)
# before giving up with "database is locked".
BUSY_TIMEOUT_S = 10.0

# Migration i+1 is MIGRATIONS[i]; never edit one that has shipped, append a new one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE series (
            id INTEGER PRIMARY KEY,
            grid TEXT NOT NULL, kind TEXT NOT NULL, source TEXT NOT NULL,
            mrid TEXT NOT NULL, quantity TEXT NOT NULL,
            UNIQUE (grid, kind, source, mrid, quantity))""",
        """CREATE TABLE samples (
            series_id INTEGER NOT NULL REFERENCES series (id),
            t_ns INTEGER NOT NULL, value REAL NOT NULL, quality INTEGER NOT NULL,
            PRIMARY KEY (series_id, t_ns)) WITHOUT ROWID""",
        # Export order and retention; appends at the end as time goes on, so cheap to keep.
        "CREATE INDEX samples_t ON samples (t_ns, series_id)",
        """CREATE TABLE agg_60 (
            series_id INTEGER NOT NULL REFERENCES series (id), bucket_ns INTEGER NOT NULL,
            n INTEGER NOT NULL, sum REAL NOT NULL, min REAL NOT NULL, max REAL NOT NULL,
            PRIMARY KEY (series_id, bucket_ns)) WITHOUT ROWID""",
        "CREATE INDEX agg_60_bucket ON agg_60 (bucket_ns)",
        """CREATE TABLE agg_3600 (
            series_id INTEGER NOT NULL REFERENCES series (id), bucket_ns INTEGER NOT NULL,
            n INTEGER NOT NULL, sum REAL NOT NULL, min REAL NOT NULL, max REAL NOT NULL,
            PRIMARY KEY (series_id, bucket_ns)) WITHOUT ROWID""",
        "CREATE INDEX agg_3600_bucket ON agg_3600 (bucket_ns)",
        """CREATE TABLE events (
            grid TEXT NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL,
            t_ns INTEGER NOT NULL, payload TEXT NOT NULL,
            UNIQUE (grid, kind, key))""",
        "CREATE INDEX events_grid_t ON events (grid, t_ns)",
    ),
)

_SCHEMA_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)"""

# The batch being written. Its primary key drops repeats inside the batch: INSERT OR IGNORE
# keeps the first.
_STAGE = """CREATE TEMP TABLE IF NOT EXISTS stage (
    series_id INTEGER NOT NULL, t_ns INTEGER NOT NULL, value REAL NOT NULL,
    quality INTEGER NOT NULL, PRIMARY KEY (series_id, t_ns)) WITHOUT ROWID"""

_DROP_STORED = """DELETE FROM temp.stage WHERE EXISTS (
    SELECT 1 FROM main.samples s
    WHERE s.series_id = stage.series_id AND s.t_ns = stage.t_ns)"""


def _agg_upsert(width_s: int) -> str:
    table = f"agg_{width_s}"
    return f"""INSERT INTO {table} (series_id, bucket_ns, n, sum, min, max)
        SELECT series_id, {bucket_sql("t_ns", str(width_s * NS_PER_S))},
               count(*), sum(value), min(value), max(value)
        FROM temp.stage WHERE (quality & 1) = 0 GROUP BY 1, 2
        ON CONFLICT (series_id, bucket_ns) DO UPDATE SET
            n = {table}.n + excluded.n, sum = {table}.sum + excluded.sum,
            min = min({table}.min, excluded.min), max = max({table}.max, excluded.max)"""


_AGG_UPSERTS = tuple(_agg_upsert(w) for w in AGG_BUCKETS_S)

# What to say about the errors a user can cause, by SQLite's primary result code.
_HINTS = {
    "SQLITE_BUSY": "another process holds the database locked",
    "SQLITE_LOCKED": "another connection holds the database locked",
    "SQLITE_FULL": "the disk is full",
    "SQLITE_IOERR": "a disk I/O error (is the disk full or failing?)",
    "SQLITE_READONLY": "the file or its directory is not writable",
    "SQLITE_PERM": "permission denied",
    "SQLITE_CANTOPEN": "check that the file's directory exists and is writable",
    "SQLITE_NOTADB": "the file is not a SQLite database",
    "SQLITE_CORRUPT": "the database file is corrupt",
}


class SqliteStore:
    """The historian's tables in one SQLite file (WAL mode: readers such as an export run
    beside the writer)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite:///{path.resolve().as_posix().lstrip('/')}"
        self._series = SeriesCache()
        with self._errors("open"):
            # check_same_thread=False: the historian opens the store on the event loop's
            # thread and uses it from one worker thread.
            self._db = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            try:
                self._setup()
            except BaseException:
                self._db.close()
                raise

    def _setup(self) -> None:
        db = self._db
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")  # WAL: a power cut loses the last commits only
        db.execute("PRAGMA foreign_keys = ON")
        db.execute("PRAGMA temp_store = MEMORY")
        db.execute(_STAGE)

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """sqlite3 errors that come from the file, the disk or another process → StoreError."""
        try:
            yield
        except sqlite3.DatabaseError as e:
            if not isinstance(e, sqlite3.OperationalError) and type(e) is not sqlite3.DatabaseError:
                raise  # integrity or programming errors are bugs here, not the user's doing
            code = "_".join(e.sqlite_errorname.split("_")[:2])  # SQLITE_IOERR_WRITE: SQLITE_IOERR
            hint = f" ({_HINTS[code]})" if code in _HINTS else ""
            raise StoreError(f"SQLite database {self.path}: cannot {action}: {e}{hint}") from e

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front, so a concurrent writer waits at BEGIN instead
        # of failing halfway through.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:  # SQLite rolls back by itself after some errors
                self._db.execute("ROLLBACK")
            raise

    def migrate(self) -> int:
        with self._errors("migrate the schema"), self._transaction() as db:
            db.execute(_SCHEMA_VERSION_TABLE)
            (found,) = db.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
            check_newer_schema(self.url, found, len(MIGRATIONS))
            for version in range(found + 1, len(MIGRATIONS) + 1):
                for statement in MIGRATIONS[version - 1]:
                    db.execute(statement)
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
        self._load_series()
        return len(MIGRATIONS)

    def _load_series(self) -> None:
        with self._errors("read the series"):
            rows = self._db.execute("SELECT id, grid, kind, source, mrid, quantity FROM series")
            self._series.add(series_ids(rows))

    # --- writing ---------------------------------------------------------------------------

    def write(self, samples: Sequence[Sample], events: Sequence[EventRow]) -> WriteStats:
        check_finite(samples)
        if not samples and not events:
            return WriteStats()
        keys = list(dict.fromkeys(s.series for s in samples))
        with self._errors("write"), self._transaction() as db:
            created = self._create_series(db, self._series.missing(keys))
            ids = self._series.known(keys) | created
            samples_new = self._write_samples(
                db, [(ids[s.series], s.t_ns, s.value, s.quality) for s in samples]
            )
            events_new = db.executemany(
                "INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?)", map(event_row, events)
            ).rowcount
        self._series.add(created)  # only now: a rolled-back id may be handed out again
        return WriteStats(
            samples_new=samples_new,
            samples_duplicate=len(samples) - samples_new,
            events_new=events_new,
            events_duplicate=len(events) - events_new,
        )

    def _create_series(self, db: sqlite3.Connection, keys: list[SeriesKey]) -> dict[SeriesKey, int]:
        db.executemany(
            "INSERT OR IGNORE INTO series (grid, kind, source, mrid, quantity)"
            " VALUES (?, ?, ?, ?, ?)",
            map(key_row, keys),
        )
        ids = {}
        for key in keys:
            series_id = self._select_id(key)
            assert series_id is not None, "inserted just now or there already"
            ids[key] = series_id
        return ids

    def _select_id(self, key: SeriesKey) -> int | None:
        row = self._db.execute(
            "SELECT id FROM series"
            " WHERE grid = ? AND kind = ? AND source = ? AND mrid = ? AND quantity = ?",
            key_row(key),
        ).fetchone()
        return None if row is None else int(row[0])

    def _write_samples(
        self, db: sqlite3.Connection, rows: list[tuple[int, int, float, int]]
    ) -> int:
        """Stage the batch, drop what is stored already, aggregate the rest, then store it."""
        if not rows:
            return 0
        db.executemany("INSERT OR IGNORE INTO temp.stage VALUES (?, ?, ?, ?)", rows)
        db.execute(_DROP_STORED)
        for upsert in _AGG_UPSERTS:
            db.execute(upsert)
        new = db.execute("INSERT INTO samples SELECT * FROM temp.stage").rowcount
        db.execute("DELETE FROM temp.stage")
        return new

    # --- reading ---------------------------------------------------------------------------

    def _ids(self, keys: Sequence[SeriesKey]) -> dict[SeriesKey, int]:
        """Ids of the keys that exist (another process may have created some since)."""
        ids = self._series.known(keys)
        found = {}
        for key in self._series.missing(keys):
            series_id = self._select_id(key)
            if series_id is not None:
                found[key] = series_id
        self._series.add(found)
        return ids | found

    def series(
        self, grid: str, kind: SeriesKind | None = None, mrid: str | None = None
    ) -> list[SeriesKey]:
        with self._errors("read the series"):
            rows = self._db.execute(
                "SELECT grid, kind, source, mrid, quantity FROM series"
                " WHERE grid = ?1 AND (?2 IS NULL OR kind = ?2) AND (?3 IS NULL OR mrid = ?3)"
                " ORDER BY kind, source, mrid, quantity",
                (grid, None if kind is None else str(kind), mrid),
            ).fetchall()
        return [SeriesKey(g, SeriesKind(k), s, m, q) for g, k, s, m, q in rows]

    def raw(
        self, keys: Sequence[SeriesKey], t_from_ns: int, t_to_ns: int, *, limit: int
    ) -> dict[SeriesKey, Raw]:
        if limit < 0:
            raise ValueError(f"limit must not be negative, not {limit}")
        out = {key: Raw() for key in keys}
        with self._errors("read samples"):
            for key, series_id in self._ids(keys).items():
                raw = out[key]
                for t_ns, value in self._db.execute(
                    "SELECT t_ns, value FROM samples"
                    " WHERE series_id = ? AND t_ns >= ? AND t_ns < ? ORDER BY t_ns LIMIT ?",
                    (series_id, t_from_ns, t_to_ns, limit),
                ):
                    raw.t_ns.append(t_ns)
                    raw.value.append(value)
        return out

    def aggregate(
        self, keys: Sequence[SeriesKey], t_from_ns: int, t_to_ns: int, *, bucket_s: int
    ) -> dict[SeriesKey, Aggregate]:
        table = agg_table(bucket_s)
        width_ns = bucket_s * NS_PER_S
        lo, hi = bucket_range(t_from_ns, t_to_ns, width_ns)
        if table is None:
            sql = f"""SELECT {bucket_sql("t_ns", ":w")} AS b,
                count(*), sum(value), min(value), max(value) FROM samples
                WHERE series_id = :id AND t_ns >= :lo AND t_ns < :hi AND (quality & 1) = 0
                GROUP BY b ORDER BY b"""
        else:
            sql = f"""SELECT {bucket_sql("bucket_ns", ":w")} AS b,
                sum(n), sum(sum), min(min), max(max) FROM {table}
                WHERE series_id = :id AND bucket_ns >= :lo AND bucket_ns < :hi
                GROUP BY b ORDER BY b"""
        out = {key: Aggregate() for key in keys}
        with self._errors("read aggregates"):
            for key, series_id in self._ids(keys).items():
                agg = out[key]
                params = {"id": series_id, "w": width_ns, "lo": lo, "hi": hi}
                for t_ns, n, total, lowest, highest in self._db.execute(sql, params):
                    agg.t_ns.append(t_ns)
                    agg.count.append(n)
                    agg.avg.append(total / n)
                    agg.min.append(lowest)
                    agg.max.append(highest)
        return out

    def latest(self, keys: Sequence[SeriesKey]) -> dict[SeriesKey, tuple[int, float]]:
        out: dict[SeriesKey, tuple[int, float]] = {}
        with self._errors("read samples"):
            for key, series_id in self._ids(keys).items():
                row = self._db.execute(
                    "SELECT t_ns, value FROM samples WHERE series_id = ?"
                    " ORDER BY t_ns DESC LIMIT 1",
                    (series_id,),
                ).fetchone()
                if row is not None:
                    out[key] = (row[0], row[1])
        return out

    def events(
        self, grid: str, kind: EventKind | None, t_from_ns: int, t_to_ns: int, *, limit: int
    ) -> list[EventRow]:
        if limit < 0:
            raise ValueError(f"limit must not be negative, not {limit}")
        with self._errors("read events"):
            rows = self._db.execute(
                "SELECT grid, kind, key, t_ns, payload FROM events"
                " WHERE grid = ?1 AND (?2 IS NULL OR kind = ?2) AND t_ns >= ?3 AND t_ns < ?4"
                " ORDER BY t_ns, kind, key LIMIT ?5",
                (grid, None if kind is None else str(kind), t_from_ns, t_to_ns, limit),
            ).fetchall()
        return [EventRow(g, EventKind(k), key, t, p) for g, k, key, t, p in rows]

    def iter_samples(
        self, grid: str | None, t_from_ns: int, t_to_ns: int, *, batch: int = 50_000
    ) -> Iterator[list[Sample]]:
        # Each batch is its own query that resumes after the last (time, series) seen, so no
        # cursor stays open between batches while the caller writes a file.
        where, params = sample_filter(grid, None, t_to_ns, placeholder="?")
        # INDEXED BY: for one grid the planner would rather read each series by its key and
        # sort everything left on every batch.
        sql = (
            "SELECT series_id, t_ns, value, quality FROM samples INDEXED BY samples_t"
            f" WHERE (t_ns, series_id) > (?, ?) AND {where} ORDER BY t_ns, series_id LIMIT ?"
        )
        after = (t_from_ns, -1)  # ids are positive: this is "t_ns >= t_from_ns"
        while True:
            with self._errors("read samples"):
                rows = self._db.execute(sql, (*after, *params, batch)).fetchall()
            if not rows:
                return
            yield [Sample(self._key(sid), t_ns, value, q) for sid, t_ns, value, q in rows]
            if len(rows) < batch:
                return
            after = (rows[-1][1], rows[-1][0])

    def _key(self, series_id: int) -> SeriesKey:
        key = self._series.key(series_id)
        if key is None:  # created by another process after this store loaded the series
            self._load_series()
            key = self._series.key(series_id)
            assert key is not None, f"series {series_id} has samples but no row"
        return key

    def count_samples(
        self, grid: str | None = None, t_from_ns: int | None = None, t_to_ns: int | None = None
    ) -> int:
        where, params = sample_filter(grid, t_from_ns, t_to_ns, placeholder="?")
        with self._errors("count samples"):
            row = self._db.execute(f"SELECT count(*) FROM samples WHERE {where}", params)
            return int(row.fetchone()[0])

    # --- retention -------------------------------------------------------------------------

    def apply_retention(self, now_ns: int, *, raw_days: float, agg_days: float) -> dict[str, int]:
        raw_cut, agg_cut = retention_cutoffs(now_ns, raw_days, agg_days)
        deleted: dict[str, int] = {}
        with self._errors("apply retention"), self._transaction() as db:
            deleted["samples"] = db.execute(
                "DELETE FROM samples WHERE t_ns < ?", (raw_cut,)
            ).rowcount
            for width_s in AGG_BUCKETS_S:
                deleted[f"agg_{width_s}"] = db.execute(
                    f"DELETE FROM agg_{width_s} WHERE bucket_ns <= ?",
                    (agg_cut - width_s * NS_PER_S,),
                ).rowcount
            deleted["events"] = db.execute("DELETE FROM events WHERE t_ns < ?", (agg_cut,)).rowcount
        return deleted

    def close(self) -> None:
        self._db.close()
