"""The one suite both historian stores (SQLite and PostgreSQL) must pass."""

from __future__ import annotations

import itertools
import math
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridpilot.core.config import ServiceConfig
from gridpilot.core.errors import ConfigError
from gridpilot.services.historian.backends import open_store, redact, sqlite_path
from gridpilot.services.historian.postgres import PostgresStore
from gridpilot.services.historian.sqlite import SqliteStore
from gridpilot.services.historian.store import (
    Aggregate,
    EventKind,
    EventRow,
    Sample,
    SeriesKey,
    SeriesKind,
    Store,
    StoreError,
    WriteStats,
)
from tests.historian.conftest import RunSql

S = 1_000_000_000
MIN = 60 * S
HOUR = 3600 * S
T0 = 1_780_000_000 * S - (1_780_000_000 * S) % (2 * HOUR)  # a bucket boundary of every width
_grids = itertools.count()


def key(
    mrid: str = "bus1", quantity: str = "v_pu", *, grid: str = "g", meas: bool = False
) -> SeriesKey:
    if meas:
        return SeriesKey(grid, SeriesKind.MEAS, "rtu1", mrid, quantity)
    return SeriesKey(grid, SeriesKind.EST, "se", mrid, quantity)


def fresh_grid() -> str:
    """A grid name no earlier write used: independent data in one store."""
    return f"grid{next(_grids)}"


def expected_buckets(
    points: dict[int, float], bucket_s: int, t_from_ns: int, t_to_ns: int
) -> list[tuple[int, float, float, float, int]]:
    """(start, min, avg, max, count) per bucket, straight from the definition."""
    width = bucket_s * S
    buckets: dict[int, list[float]] = defaultdict(list)
    for t, v in points.items():
        start = t - t % width  # Python's % floors, also for negative t
        if t_from_ns <= start < t_to_ns:
            buckets[start].append(v)
    return [(b, min(vs), float(np.mean(vs)), max(vs), len(vs)) for b, vs in sorted(buckets.items())]


def as_rows(agg: Aggregate) -> list[tuple[int, float, float, float, int]]:
    return list(zip(agg.t_ns, agg.min, agg.avg, agg.max, agg.count, strict=True))


def assert_buckets(agg: Aggregate, expected: list[tuple[int, float, float, float, int]]) -> None:
    got = as_rows(agg)
    assert [(t, lo, hi, n) for t, lo, _, hi, n in got] == [
        (t, lo, hi, n) for t, lo, _, hi, n in expected
    ]
    assert [avg for _, _, avg, _, _ in got] == pytest.approx([a for _, _, a, _, _ in expected])


def write_in_batches(store: Store, samples: Sequence[Sample], size: int) -> WriteStats:
    new = dup = 0
    for i in range(0, len(samples), size):
        stats = store.write(samples[i : i + size], [])
        new += stats.samples_new
        dup += stats.samples_duplicate
    return WriteStats(samples_new=new, samples_duplicate=dup)


def boundary_times(widths_s: Iterable[int], around_ns: Iterable[int]) -> list[int]:
    """Times on, just before and just after bucket starts, near each of ``around_ns``."""
    times = set()
    for width in widths_s:
        for centre in around_ns:
            start = centre - centre % (width * S)
            for k in (-1, 0, 1):
                for d in (-1, 0, 1):
                    times.add(start + k * width * S + d)
    return sorted(times)


# --- schema ------------------------------------------------------------------------------------


def test_migrate_is_idempotent_and_returns_the_version(store: Store) -> None:
    version = store.migrate()
    assert version >= 1
    store.write([Sample(key(), T0, 1.0)], [])
    assert store.migrate() == version
    assert store.count_samples() == 1


def test_a_newer_schema_version_is_refused(store: Store, store_url: str, run_sql: RunSql) -> None:
    run_sql("INSERT INTO schema_version (version) VALUES (999)")
    with pytest.raises(StoreError, match=r"schema version 999.*upgrade GridPilot"):
        store.migrate()
    with pytest.raises(StoreError, match="upgrade GridPilot"):
        open_store(store_url)


# --- writing and reading samples --------------------------------------------------------------


def test_write_then_raw_round_trip(store: Store) -> None:
    a, b = key("bus1"), key("line1", "p_mw.from", meas=True)
    samples = [
        Sample(a, T0 + 2 * S, 1.02),
        Sample(b, T0, -3.5, quality=0x40),
        Sample(a, T0, 0.1),
        Sample(a, T0 + S, 1 / 3),
        Sample(b, T0 + 5 * S, 1e-300),
    ]
    stats = store.write(samples, [])
    assert stats == WriteStats(samples_new=5)
    got = store.raw([a, b, key("unknown")], T0, T0 + 5 * S, limit=100)
    assert got[a].t_ns == [T0, T0 + S, T0 + 2 * S]
    assert got[a].value == [0.1, 1 / 3, 1.02]
    assert got[b].t_ns == [T0]  # t_to is exclusive
    assert got[b].value == [-3.5]
    assert got[key("unknown")].t_ns == []
    assert store.raw([b], T0 + 1, T0 + 6 * S, limit=10)[b].value == [1e-300]


def test_raw_limit_keeps_the_earliest_per_series(store: Store) -> None:
    a, b = key("bus1"), key("bus2")
    store.write([Sample(k, T0 + i * S, float(i)) for k in (a, b) for i in range(10)], [])
    got = store.raw([a, b], T0, T0 + HOUR, limit=3)
    assert got[a].t_ns == got[b].t_ns == [T0, T0 + S, T0 + 2 * S]
    assert store.raw([a], T0, T0 + HOUR, limit=0)[a].t_ns == []


def test_duplicates_in_a_batch_and_across_batches_are_skipped(store: Store) -> None:
    a, b = key("bus1"), key("bus2")
    first = [
        Sample(a, T0, 1.0),
        Sample(a, T0, 9.0),  # repeated in the batch: the first is kept
        Sample(b, T0, 2.0),
        Sample(a, T0 + S, 3.0),
    ]
    assert store.write(first, []) == WriteStats(samples_new=3, samples_duplicate=1)
    again = [Sample(a, T0 + S, 7.0), Sample(b, T0 + S, 4.0), Sample(b, T0, 8.0)]
    assert store.write(again, []) == WriteStats(samples_new=1, samples_duplicate=2)
    assert store.write(first, []) == WriteStats(samples_new=0, samples_duplicate=4)
    got = store.raw([a, b], T0, T0 + HOUR, limit=10)
    assert got[a].value == [1.0, 3.0]
    assert got[b].value == [2.0, 4.0]
    assert store.count_samples() == 4
    agg = store.aggregate([a], T0, T0 + HOUR, bucket_s=60)[a]
    assert (agg.count, agg.min, agg.max) == ([2], [1.0], [3.0])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_value_refuses_the_whole_batch(store: Store, bad: float) -> None:
    a = key("bus7")
    event = EventRow("g", EventKind.ALARM, "alarm-1", T0, "{}")
    batch = [Sample(key("bus1"), T0, 1.0), Sample(a, T0 + 5, bad), Sample(key("bus2"), T0, 2.0)]
    with pytest.raises(ValueError, match=rf"bus7.*t_ns={T0 + 5}"):
        store.write(batch, [event])
    assert store.count_samples() == 0
    assert store.series("g") == []
    assert store.events("g", None, 0, 2 * T0, limit=10) == []
    assert store.write(batch[:1], [event]) == WriteStats(samples_new=1, events_new=1)


def test_latest(store: Store) -> None:
    a, b, empty = key("bus1"), key("bus2"), key("never")
    store.write([Sample(a, T0 + i * S, float(i)) for i in (3, 1, 2)], [])
    store.write([Sample(b, T0 - S, -1.0)], [])
    assert store.latest([a, b, empty]) == {a: (T0 + 3 * S, 3.0), b: (T0 - S, -1.0)}


def test_iter_samples_in_time_then_series_order_in_batches(store: Store) -> None:
    grid, other = fresh_grid(), fresh_grid()
    keys = [key(f"bus{i}", grid=grid) for i in range(5)]
    # Several series at each instant, so batches end in the middle of a tie.
    samples = [Sample(k, T0 + (t % 4) * S - t // 4, float(t)) for t in range(12) for k in keys]
    store.write(samples, [])
    store.write([Sample(key(grid=other), T0, 0.0)], [])
    batches = list(store.iter_samples(grid, T0 - 2, T0 + 3 * S, batch=7))
    assert all(len(b) == 7 for b in batches[:-1]) and 1 <= len(batches[-1]) <= 7
    got = [s for b in batches for s in b]
    assert [s.t_ns for s in got] == sorted(s.t_ns for s in got)
    wanted = {s for s in samples if T0 - 2 <= s.t_ns < T0 + 3 * S}
    assert len(got) == len(wanted) and set(got) == wanted
    # Within an instant the series come in one fixed order.
    orders = defaultdict(list)
    for s in got:
        orders[s.t_ns].append(s.series)
    assert len({tuple(o) for o in orders.values()}) == 1
    everything = [s for b in store.iter_samples(None, 0, 2 * T0) for s in b]
    assert len(everything) == len(samples) + 1
    assert list(store.iter_samples(grid, 0, 1, batch=7)) == []


def test_count_samples(store: Store) -> None:
    g1, g2 = fresh_grid(), fresh_grid()
    store.write([Sample(key(grid=g1), T0 + i * S, 1.0) for i in range(10)], [])
    store.write([Sample(key(grid=g2), T0 + i * S, 1.0) for i in range(4)], [])
    assert store.count_samples() == 14
    assert store.count_samples(g1) == 10
    assert store.count_samples(g2, T0 + S) == 3
    assert store.count_samples(None, T0, T0 + 2 * S) == 4
    assert store.count_samples("nowhere") == 0


# --- aggregates -------------------------------------------------------------------------------


@pytest.mark.parametrize("bucket_s", [10, 60, 3600, 7200])
def test_aggregates_are_exact_after_redelivery(store: Store, bucket_s: int) -> None:
    rng = random.Random(bucket_s)
    a, b = key("bus1"), key("bus2")
    times = boundary_times([10, 60, 3600, 7200], [0, T0]) + [
        rng.randrange(-3 * HOUR, 3 * HOUR) for _ in range(300)
    ]
    points = {k: {t: round(rng.uniform(0.9, 1.1), 6) for t in times} for k in (a, b)}
    samples = [Sample(k, t, v) for k, pts in points.items() for t, v in pts.items()]
    rng.shuffle(samples)
    n = len(samples)
    assert write_in_batches(store, samples, 97) == WriteStats(samples_new=n)
    # Redelivered in other batches, overlapping what is stored and each other.
    assert write_in_batches(store, samples[::-1], 250).samples_new == 0
    assert write_in_batches(store, samples[n // 3 :] + samples, 1000).samples_new == 0
    ranges = [
        (-4 * HOUR, 4 * HOUR),  # around the epoch: negative times
        (-HOUR - 17 * S, 2 * HOUR + 5 * S),  # not on bucket boundaries
        (T0 - 2 * HOUR, T0 + 2 * HOUR),
        (T0, T0 + 1),  # just the bucket that starts at T0
    ]
    for t_from, t_to in ranges:
        got = store.aggregate([a, b, key("unknown")], t_from, t_to, bucket_s=bucket_s)
        assert as_rows(got[key("unknown")]) == []
        for k in (a, b):
            assert_buckets(got[k], expected_buckets(points[k], bucket_s, t_from, t_to))


@pytest.mark.parametrize("bucket_s", [10, 15])  # a stored width and one computed on the fly
def test_invalid_samples_are_kept_raw_but_left_out_of_aggregates(
    store: Store, bucket_s: int
) -> None:
    """An invalid value (an RTU that lost its inputs reports 0 with IV) is history, but no
    measurement of the grid: min, avg and max leave it out."""
    a = key("bus1")
    samples = [
        Sample(a, T0, 1.02),
        Sample(a, T0 + S, 0.0, quality=0x01),
        Sample(a, T0 + 2 * S, 1.04),
    ]
    store.write(samples, [])
    assert store.raw([a], T0, T0 + 3 * S, limit=10)[a].value == [1.02, 0.0, 1.04]
    [(start, low, avg, high, n)] = as_rows(
        store.aggregate([a], T0, T0 + 3 * S, bucket_s=bucket_s)[a]
    )
    assert (start, low, high, n) == (T0, 1.02, 1.04, 2) and avg == pytest.approx(1.03)


def test_aggregate_bucket_must_be_positive(store: Store) -> None:
    with pytest.raises(ValueError, match="bucket_s"):
        store.aggregate([key()], 0, T0, bucket_s=0)


@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_aggregates_match_a_direct_computation(store: Store, data: st.DataObject) -> None:
    grid = fresh_grid()
    keys = [key(f"bus{i}", grid=grid) for i in range(data.draw(st.integers(1, 3)))]
    times = st.integers(-3 * HOUR, 3 * HOUR) | st.sampled_from(boundary_times([60, 3600], [0]))
    # Quarters add up exactly in binary floating point: sums and averages compare with ==.
    values = st.integers(-400, 400).map(lambda q: q / 4)
    pool = data.draw(
        st.lists(st.tuples(st.sampled_from(keys), times, values), min_size=1, max_size=60)
    )
    writes = data.draw(st.lists(st.sampled_from(pool), max_size=30)) + pool  # with repeats
    cuts = sorted(data.draw(st.lists(st.integers(0, len(writes)), max_size=5)))
    first: dict[SeriesKey, dict[int, float]] = defaultdict(dict)
    for k, t, v in writes:
        first[k].setdefault(t, v)
    new = 0
    for lo, hi in itertools.pairwise([0, *cuts, len(writes)]):
        new += store.write([Sample(k, t, v) for k, t, v in writes[lo:hi]], []).samples_new
    assert new == sum(len(p) for p in first.values())
    for bucket_s in (7, 60, 120, 3600, 7200):
        got = store.aggregate(keys, -4 * HOUR, 4 * HOUR, bucket_s=bucket_s)
        for k in keys:
            assert as_rows(got[k]) == expected_buckets(first[k], bucket_s, -4 * HOUR, 4 * HOUR)


# --- events and series ------------------------------------------------------------------------


def test_events_are_deduplicated_and_queried_by_range_and_kind(store: Store) -> None:
    def ev(kind: EventKind, k: str, t: int, grid: str = "g") -> EventRow:
        return EventRow(grid, kind, k, t, f'{{"key": "{k}"}}')

    batch = [
        ev(EventKind.ALARM, "a1", T0 + 2),
        ev(EventKind.ALARM, "a1", T0 + 3),  # repeated in the batch: the first is kept
        ev(EventKind.COMMAND, "c1", T0),
        ev(EventKind.COMMAND_RESULT, "c1", T0 + 1),  # same key, other kind: another event
        ev(EventKind.ALARM, "a1", T0, grid="h"),  # same key, other grid
    ]
    assert store.write([], batch) == WriteStats(events_new=4, events_duplicate=1)
    later = [ev(EventKind.ALARM, "a1", T0 + 9), ev(EventKind.TOPOLOGY, "t1", T0 + 5)]
    assert store.write([], later) == WriteStats(events_new=1, events_duplicate=1)

    every = store.events("g", None, T0, T0 + 10, limit=100)
    assert [(e.kind, e.key, e.t_ns) for e in every] == [
        (EventKind.COMMAND, "c1", T0),
        (EventKind.COMMAND_RESULT, "c1", T0 + 1),
        (EventKind.ALARM, "a1", T0 + 2),
        (EventKind.TOPOLOGY, "t1", T0 + 5),
    ]
    assert every[2] == batch[0]
    assert store.events("g", EventKind.ALARM, T0, T0 + 10, limit=100) == [batch[0]]
    assert store.events("g", None, T0 + 1, T0 + 5, limit=100) == every[1:3]
    assert store.events("g", None, T0, T0 + 10, limit=2) == every[:2]
    assert store.events("h", None, T0, T0 + 10, limit=100) == [batch[4]]


def test_series_listing_and_filtering(store: Store) -> None:
    grid = fresh_grid()
    keys = [
        key("bus2", grid=grid),
        key("bus1", "va_deg", grid=grid),
        key("bus1", grid=grid),
        key("bus1", "v_pu", grid=grid, meas=True),
        key("line1", "p_mw.from", grid=grid, meas=True),
    ]
    store.write([Sample(k, T0, 1.0) for k in keys], [])
    store.write([Sample(key(grid=fresh_grid()), T0, 1.0)], [])
    listed = store.series(grid)
    assert sorted(listed) == sorted(keys)
    assert listed == sorted(listed, key=lambda k: (k.kind, k.source, k.mrid, k.quantity))
    assert store.series(grid, SeriesKind.MEAS) == [keys[3], keys[4]]
    assert store.series(grid, mrid="bus1") == [keys[2], keys[1], keys[3]]
    assert store.series(grid, SeriesKind.EST, "bus1") == [keys[2], keys[1]]
    assert store.series("nowhere") == []
    assert all(isinstance(k.kind, SeriesKind) for k in listed)


# --- retention --------------------------------------------------------------------------------


def test_retention_deletes_by_age_and_keeps_aggregates_of_deleted_samples(store: Store) -> None:
    day = 86_400 * S
    now = T0 + 10 * day
    a = key()
    ages_days = [9.5, 5.5, 2.5, 0.5]  # raw kept 3 days, aggregates and events 7 days
    store.write(
        [Sample(a, now - round(age * day), age) for age in ages_days],
        [
            EventRow("g", EventKind.ALARM, f"a{age}", now - round(age * day), "{}")
            for age in ages_days
        ],
    )
    deleted = store.apply_retention(now, raw_days=3, agg_days=7)
    assert deleted == {"samples": 2, "agg_60": 1, "agg_3600": 1, "events": 1}
    assert store.raw([a], 0, now, limit=10)[a].value == [2.5, 0.5]
    agg = store.aggregate([a], 0, now, bucket_s=60)[a]
    assert agg.avg == [5.5, 2.5, 0.5]  # 5.5 days old: its sample is gone, its minute is not
    assert [e.key for e in store.events("g", None, 0, now, limit=10)] == ["a5.5", "a2.5", "a0.5"]
    assert store.apply_retention(now, raw_days=3, agg_days=7) == dict.fromkeys(deleted, 0)


# --- opening stores ---------------------------------------------------------------------------


def test_open_store_sqlite_paths_and_urls(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "h.sqlite"
    store = open_store(str(path))  # the directory is created
    try:
        assert isinstance(store, SqliteStore)
        assert store.url == f"sqlite://{path}"
        store.write([Sample(key(), T0, 1.0)], [])
    finally:
        store.close()
    again = open_store(store.url)
    try:
        assert again.count_samples() == 1
    finally:
        again.close()
    assert sqlite_path(f"sqlite:///{path}") == path


@pytest.mark.parametrize("url", ["mysql://db/x", "sqlite://relative.db", ""])
def test_open_store_refuses_what_it_does_not_know(url: str) -> None:
    with pytest.raises(ConfigError, match=r"postgresql://|sqlite:///"):
        open_store(url)


def test_an_unreachable_postgresql_server_is_a_store_error_without_the_password() -> None:
    url = "postgresql://gp:s3cret@127.0.0.1:1/historian?connect_timeout=2"
    with pytest.raises(StoreError, match=r"gp:\*\*\*@127\.0\.0\.1:1/historian") as caught:
        open_store(url)
    assert "s3cret" not in str(caught.value)
    assert "refused" in str(caught.value).lower()


def test_redact() -> None:
    assert redact("postgresql://gp:pw@db:5432/h") == "postgresql://gp:***@db:5432/h"
    assert redact("postgresql://db/h?user=gp&password=pw") == (
        "postgresql://db/h?user=gp&password=***"
    )
    assert redact("postgresql://gp@db/h?options=-c%20search_path%3Dx") == (
        "postgresql://gp@db/h?options=-c%20search_path%3Dx"
    )
    assert redact("/var/lib/h.sqlite") == "/var/lib/h.sqlite"


def test_sqlite_errors_the_user_can_cause_are_store_errors(tmp_path: Path) -> None:
    not_a_db = tmp_path / "notes.txt"
    not_a_db.write_text("these are not the tables you are looking for\n" * 100)
    with pytest.raises(StoreError, match="not a SQLite database"):
        open_store(str(not_a_db))


def test_postgresql_reconnects_after_losing_its_connection(pg_url: str) -> None:
    name = f"gp-test-{fresh_grid()}"
    store = open_store(f"{pg_url}&application_name={name}")
    try:
        store.write([Sample(key(), T0, 1.0)], [])
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s",
                (name,),
            )
        with pytest.raises(StoreError, match="cannot write"):
            store.write([Sample(key(), T0 + 1, 2.0)], [])
        assert store.write([Sample(key(), T0 + 1, 2.0)], []) == WriteStats(samples_new=1)
        assert store.count_samples() == 2
    finally:
        store.close()


def test_postgresql_password_from_a_secret_file(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GRIDPILOT_DB_PASSWORD_FILE (a mounted secret) reaches the connection when the URL has
    no password; a password in the URL wins. (The test server trusts local logins, so what is
    checked is the password the connection was made with; the compose deployment's historian
    logs in to a server that checks it.)"""
    secret = tmp_path / "postgres"
    secret.write_text("from-the-secret\n")
    monkeypatch.setenv("GRIDPILOT_DB_PASSWORD_FILE", str(secret))
    monkeypatch.setenv("GRIDPILOT_DB", pg_url)
    config = ServiceConfig.from_env(grid="g")
    assert config.db_password == "from-the-secret"
    store = open_store(config.db_url, password=config.db_password)
    try:
        assert isinstance(store, PostgresStore)
        assert store._connection().info.password == "from-the-secret"
        assert "from-the-secret" not in store.url
    finally:
        store.close()
    parts = urlsplit(pg_url)
    with_password = parts._replace(
        netloc=f"{parts.username or 'postgres'}:in-url@{parts.hostname}:{parts.port or 5432}"
    )
    store = open_store(urlunsplit(with_password), password=config.db_password)
    try:
        assert isinstance(store, PostgresStore)
        assert store._connection().info.password == "in-url"
    finally:
        store.close()
