"""Historian benchmark: ingest and query on SQLite and PostgreSQL, against the raw drivers.

Four measurements per backend (benchmarks/README.md says how and why):

1. raw driver bulk insert (sqlite3 ``executemany``; psycopg ``COPY`` binary and text) into a
   plain table: the floor;
2. ``store.write(samples, [])`` with the same batches: series mapping, dedupe, aggregates;
3. through the bus: RTU scans pre-published to JetStream, then ``HistorianService`` in-process
   drains the backlog with its durable pull consumer, as after an outage;
4. queries over a day of 1 s data: ``store.aggregate`` (answered from the rollups) and
   ``store.raw`` against the plain SQL a user would write over the raw samples.

PostgreSQL at ``--pg-url`` (default postgresql://postgres@127.0.0.1:5432/test) gets a schema of
its own for the run, dropped afterwards; SQLite files and the nats-server live in a temp dir.

    /tmp/v/bin/python benchmarks/historian_bench.py            # ~2.5 minutes on 2 cores
    /tmp/v/bin/python benchmarks/historian_bench.py --quick    # smoke run, seconds, no file

Prints the tables (progress on stderr) and writes benchmarks/results/historian.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import gc
import importlib.metadata
import math
import os
import platform
import random
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import numpy as np
import psycopg

from gridpilot.core import schemas as s
from gridpilot.core import subjects
from gridpilot.core.bus import connect, ensure_jetstream
from gridpilot.core.config import ServiceConfig
from gridpilot.platform.broker import EmbeddedNats, nats_server_binary
from gridpilot.platform.permissions import ADMIN, HISTORIAN, service_password
from gridpilot.services.historian import rows as hrows
from gridpilot.services.historian.backends import open_store
from gridpilot.services.historian.service import BATCH, HistorianService
from gridpilot.services.historian.store import Sample, SeriesKey, SeriesKind, Store

RESULTS = Path(__file__).parent / "results" / "historian.md"
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
NS = 1_000_000_000
HOUR_NS = 3600 * NS
DAY_NS = 24 * HOUR_NS
RTU_LINES = 9  # an RTU scan: the transformer's LV side and nine feeders, P and Q of each
VALUES_PER_MSG = 2 * (1 + RTU_LINES)
RTUS = 10  # scanned once a second
BATCH_VALUES = BATCH * VALUES_PER_MSG  # what the service writes per transaction with a backlog
QUERY_SERIES = 10
TIMEOUT_S = 300.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- workload ------------------------------------------------------------------------------------


def scans(grid: str, n: int, t0_ns: int) -> list[s.MeasurementSet]:
    """``n`` RTU scans: RTUS devices round-robin, one scan each per second from t0_ns."""
    rng = random.Random(7)
    out = []
    for i in range(n):
        r, t_ns = i % RTUS, t0_ns + (i // RTUS) * NS
        dev = f"rtu_trafo_{r + 1}"
        ends = [(f"trafo_{r + 1}", s.Terminal.TO)]
        ends += [(f"line_{r + 1}_{j + 1}", s.Terminal.FROM) for j in range(RTU_LINES)]
        ms = [
            s.Measurement(
                mrid=mrid, measurand=s.Measurand.POWER, terminal=term, t_ns=t_ns,
                p_mw=round(rng.uniform(0.2, 4.0), 6), q_mvar=round(rng.uniform(-0.5, 1.2), 6),
                source=dev,
            )
            for mrid, term in ends
        ]  # fmt: skip
        out.append(s.MeasurementSet(grid=grid, source=dev, kind=s.DeviceKind.RTU, t_ns=t_ns,
                                    seq=i // RTUS, measurements=ms))  # fmt: skip
    return out


def samples_of(msets: list[s.MeasurementSet]) -> list[Sample]:
    """The samples the historian makes of these messages (its own mapping)."""
    out: list[Sample] = []
    for m in msets:
        out += hrows.measurement_samples(m)[0]
    return out


def batches(seq: list[Any], size: int) -> list[list[Any]]:
    return [seq[i : i + size] for i in range(0, len(seq), size)]


def query_keys(grid: str) -> list[SeriesKey]:
    lines = [f"line_1_{j + 1}" for j in range(QUERY_SERIES // 2)]
    return [SeriesKey(grid, SeriesKind.MEAS, "rtu_trafo_1", mrid, f"from.{q}")
            for mrid in lines for q in ("p_mw", "q_mvar")]  # fmt: skip


def day_batches(keys: list[SeriesKey], day0_ns: int, seconds: int) -> Iterator[list[Sample]]:
    """1 s samples of every key over ``seconds``, time-major, BATCH_VALUES per batch."""
    rng = np.random.default_rng(7)
    per = BATCH_VALUES // len(keys)
    for start in range(0, seconds, per):
        t = np.arange(start, min(start + per, seconds))
        daily = np.sin(2 * np.pi * t / 86_400)
        vals = [np.round(1 + k + 0.3 * daily + rng.normal(0, 0.02, len(t)), 6).tolist()
                for k in range(len(keys))]  # fmt: skip
        t_ns = (day0_ns + t * NS).tolist()
        yield [Sample(key, tn, vals[k][i]) for i, tn in enumerate(t_ns)
               for k, key in enumerate(keys)]  # fmt: skip


# --- databases -----------------------------------------------------------------------------------


def with_search_path(url: str, schema: str) -> str:
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query), ("options", f"-c search_path={schema}")]
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


class Sqlite:
    name = "SQLite"

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.n = tmp, 0

    def fresh(self) -> str:
        """A new, empty database file (the last one is deleted)."""
        for old in self.tmp.glob("bench*.db*"):
            old.unlink()
        self.n += 1
        return str(self.tmp / f"bench{self.n}.db")

    def raw_writer(
        self, url: str, *, rowid: bool
    ) -> tuple[Callable[[list[tuple[int, int, float]]], None], Any]:
        db = sqlite3.connect(url, isolation_level=None)
        for pragma in ("journal_mode = WAL", "synchronous = NORMAL"):  # as the store sets them
            db.execute(f"PRAGMA {pragma}")
        db.execute("CREATE TABLE raw_samples (series_id INTEGER NOT NULL, t_ns INTEGER NOT NULL,"
                   " value REAL NOT NULL, PRIMARY KEY (series_id, t_ns))"
                   + ("" if rowid else " WITHOUT ROWID"))  # fmt: skip

        def write(batch: list[tuple[int, int, float]]) -> None:
            db.execute("BEGIN")
            db.executemany("INSERT INTO raw_samples VALUES (?, ?, ?)", batch)
            db.execute("COMMIT")

        return write, db

    def connect(self, url: str) -> sqlite3.Connection:
        return sqlite3.connect(url)

    def grouped_sql(self, width_s: int) -> str:
        w = width_s * NS
        return (f"SELECT t_ns / {w} * {w} AS b, min(value), avg(value), max(value), count(*)"
                " FROM samples WHERE series_id = ? AND t_ns >= ? AND t_ns < ?"
                " GROUP BY b ORDER BY b")  # fmt: skip

    raw_sql = "SELECT t_ns, value FROM samples WHERE series_id = ? AND t_ns >= ? AND t_ns < ?"
    raw_sql += " ORDER BY t_ns"
    id_sql = "SELECT id FROM series WHERE grid = ? AND kind = ? AND source = ? AND mrid = ?"
    id_sql += " AND quantity = ?"

    def prepare_queries(self, url: str) -> None:
        pass  # the store never runs ANALYZE; neither does the benchmark

    def close(self) -> None:
        pass


class Postgres:
    name = "PostgreSQL"

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.schema = f"gp_bench_{secrets.token_hex(4)}"
        self.admin = psycopg.connect(base_url, autocommit=True)
        self.admin.execute(f"CREATE SCHEMA {self.schema}")
        self.url = with_search_path(base_url, self.schema)

    def fresh(self) -> str:
        """The run's schema, emptied."""
        self.admin.execute(f"DROP SCHEMA {self.schema} CASCADE")
        self.admin.execute(f"CREATE SCHEMA {self.schema}")
        return self.url

    def raw_writer(
        self, url: str, *, binary: bool
    ) -> tuple[Callable[[list[tuple[int, int, float]]], None], Any]:
        conn = psycopg.connect(url, autocommit=True)
        conn.execute(
            "CREATE TABLE raw_samples (series_id integer NOT NULL, t_ns bigint NOT NULL,"
            " value double precision NOT NULL, PRIMARY KEY (series_id, t_ns))"
        )
        sql = "COPY raw_samples (series_id, t_ns, value) FROM STDIN"
        sql += " (FORMAT BINARY)" if binary else ""

        def write(batch: list[tuple[int, int, float]]) -> None:
            with conn.transaction(), conn.cursor() as cur, cur.copy(sql) as copy:
                if binary:
                    copy.set_types(["int4", "int8", "float8"])
                for row in batch:
                    copy.write_row(row)

        return write, conn

    def connect(self, url: str) -> psycopg.Connection[Any]:
        return psycopg.connect(url, autocommit=True)

    def grouped_sql(self, width_s: int) -> str:
        w = width_s * NS
        return (f"SELECT t_ns / {w} * {w} AS b, min(value), avg(value), max(value), count(*)"
                " FROM samples WHERE series_id = %s AND t_ns >= %s AND t_ns < %s"
                " GROUP BY b ORDER BY b")  # fmt: skip

    raw_sql = "SELECT t_ns, value FROM samples WHERE series_id = %s AND t_ns >= %s AND t_ns < %s"
    raw_sql += " ORDER BY t_ns"
    id_sql = "SELECT id FROM series WHERE grid = %s AND kind = %s AND source = %s AND mrid = %s"
    id_sql += " AND quantity = %s"

    def prepare_queries(self, url: str) -> None:
        # What autovacuum does a while after a bulk load: statistics and the visibility map.
        for table in ("samples", "agg_60", "agg_3600", "series"):
            self.admin.execute(f"VACUUM ANALYZE {self.schema}.{table}")

    def close(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self.admin.execute(f"DROP SCHEMA {self.schema} CASCADE")
        self.admin.close()


Backend = Sqlite | Postgres


# --- 1 and 2: raw driver and store.write ---------------------------------------------------------


def raw_ingest(db: Backend, batches_: list[list[tuple[int, int, float]]], **kw: Any) -> float:
    url = db.fresh()
    write, conn = db.raw_writer(url, **kw)
    try:
        gc.collect()
        t0 = time.perf_counter()
        for b in batches_:
            write(b)
        return time.perf_counter() - t0
    finally:
        conn.close()


def store_ingest(db: Backend, batches_: list[list[Sample]]) -> tuple[float, float]:
    """Seconds for every batch into a new store, then for all of them again (duplicates)."""
    store = open_store(db.fresh())
    try:
        gc.collect()
        t0 = time.perf_counter()
        new = sum(store.write(b, []).samples_new for b in batches_)
        t1 = time.perf_counter()
        dup = sum(store.write(b, []).samples_duplicate for b in batches_)
        t2 = time.perf_counter()
    finally:
        store.close()
    total = sum(map(len, batches_))
    if new != total or dup != total:
        raise RuntimeError(f"store: {new} new and {dup} duplicates of {total} samples")
    return t1 - t0, t2 - t1


# --- 3: through the bus --------------------------------------------------------------------------


class TimedHistorian(HistorianService):
    """The historian with clocks around its row mapping and its database writes (a
    ``perf_counter`` pair per message and per batch); it signals when ``target`` is stored."""

    target = 0
    t_setup_done = 0.0
    t_done = 0.0
    write_s = 0.0
    rows_s = 0.0

    async def setup(self) -> None:
        self.done = asyncio.Event()
        await super().setup()
        self.t_setup_done = time.perf_counter()

    def _meas_rows(self, msg: Any) -> tuple[list[Sample], list[Any]]:
        t0 = time.perf_counter()
        out = super()._meas_rows(msg)
        self.rows_s += time.perf_counter() - t0
        return out

    async def _store(self, samples: list[Sample], events: list[Any]) -> None:
        t0 = time.perf_counter()
        await super()._store(samples, events)
        t1 = time.perf_counter()
        self.write_s += t1 - t0
        if self.counters["samples_new"] >= self.target and not self.done.is_set():
            self.t_done = t1
            self.done.set()


@dataclass
class BusRun:
    seconds: float
    publish_s: float
    startup_s: float
    write_s: float
    rows_s: float
    batches: int


async def bus_ingest(
    server: EmbeddedNats, passwords: dict[str, str], db_url: str, n_msgs: int, tmp: Path
) -> BusRun:
    grid = f"hb{secrets.token_hex(4)}"  # a fresh grid: its own consumers, no old messages
    t0_ns = (time.time_ns() // HOUR_NS - 1) * HOUR_NS  # within raw retention
    payloads = [(subjects.MEAS.format(grid=grid, source=m.source), s.encode(m))
                for m in scans(grid, n_msgs, t0_ns)]  # fmt: skip
    nc = await connect(server.url, user=ADMIN, password=passwords[ADMIN], name="bench-pub")
    try:
        js = nc.jetstream(publish_async_max_pending=4000)
        t0 = time.perf_counter()
        futures = [await js.publish_async(subject, data) for subject, data in payloads]
        acks = await asyncio.gather(*futures)
        publish_s = time.perf_counter() - t0
    finally:
        await nc.drain()
    if any(a.stream != "GP_MEAS" for a in acks) or len({a.seq for a in acks}) != n_msgs:
        raise RuntimeError("JetStream did not store every scan once in GP_MEAS")

    cfg = ServiceConfig(nats_url=server.url, user=HISTORIAN, password=passwords[HISTORIAN],
                        grid=grid, data_dir=tmp, db_url=db_url)  # fmt: skip
    svc = TimedHistorian(cfg)
    svc.target = n_msgs * VALUES_PER_MSG
    gc.collect()
    t0 = time.perf_counter()
    task = asyncio.create_task(svc.run(install_signals=False))
    try:
        while not getattr(svc, "done", None):  # setup() makes it
            if task.done():
                break
            await asyncio.sleep(0.001)
        waiter = asyncio.ensure_future(svc.done.wait())
        await asyncio.wait({task, waiter}, timeout=TIMEOUT_S, return_when="FIRST_COMPLETED")
        waiter.cancel()
        if task.done():
            task.result()  # raises what stopped the service
            raise RuntimeError(f"the historian stopped: {dict(svc.counters)}")
        if not svc.done.is_set():
            raise RuntimeError(f"the historian did not catch up in time: {dict(svc.counters)}")
    finally:
        svc.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)
    c = svc.counters
    if c["samples_new"] != svc.target or c["dropped_bad_payload"] or c["db_errors"]:
        raise RuntimeError(f"the historian stored something else than the scans: {dict(c)}")
    return BusRun(svc.t_done - t0, publish_s, svc.t_setup_done - t0, svc.write_s, svc.rows_s,
                  c["batches"])  # fmt: skip


# --- 4: queries ----------------------------------------------------------------------------------


@dataclass
class Timing:
    ms: list[float] = field(default_factory=list)

    @property
    def p50(self) -> float:
        return float(np.median(self.ms))

    @property
    def p99(self) -> float:
        return float(np.percentile(self.ms, 99))


def timed(fn: Callable[[], Any], timing: Timing) -> Any:
    t0 = time.perf_counter()
    out = fn()
    timing.ms.append((time.perf_counter() - t0) * 1e3)
    return out


def query_bench(db: Backend, seconds: int, reps: int) -> dict[str, Any]:
    url = db.fresh()
    store: Store = open_store(url)
    keys = query_keys(f"hq{secrets.token_hex(4)}")
    day0 = (time.time_ns() // DAY_NS - 1) * DAY_NS  # yesterday, 00:00 UTC
    end = day0 + seconds * NS
    write_s = 0.0
    for b in day_batches(keys, day0, seconds):
        t0 = time.perf_counter()
        store.write(b, [])
        write_s += time.perf_counter() - t0
    db.prepare_queries(url)
    conn = db.connect(url)
    try:
        key = keys[0]
        (sid,) = conn.execute(db.id_sql, (key.grid, str(key.kind), key.source, key.mrid,
                                          key.quantity)).fetchone()  # fmt: skip
        h0 = day0 + min(12, seconds // 3600 - 1) * HOUR_NS  # noon, or the last whole hour
        hour = (h0, h0 + HOUR_NS)
        cases: list[tuple[str, Callable[[], Any], Callable[[], Any]]] = []
        for width in (60, 3600):
            sql = db.grouped_sql(width)
            cases.append((
                f"aggregate, {width} s buckets",
                lambda w=width: store.aggregate(keys[:1], day0, end, bucket_s=w)[key],
                lambda sql=sql: conn.execute(sql, (sid, day0, end)).fetchall(),
            ))  # fmt: skip
        cases.append((
            "raw, one hour",
            lambda: store.raw(keys[:1], *hour, limit=100_000)[key],
            lambda: conn.execute(db.raw_sql, (sid, *hour)).fetchall(),
        ))  # fmt: skip
        out: dict[str, Any] = {"write_rate": seconds * len(keys) / write_s, "cases": []}
        for name, ours, plain in cases:
            a, b = ours(), plain()
            check(name, a, b)
            for _ in range(2):  # warm-up
                ours(), plain()
            t_ours, t_plain = Timing(), Timing()
            gc.collect()
            for i in range(reps):  # interleaved, alternating which goes first
                for fn, t in ((ours, t_ours), (plain, t_plain))[:: 1 if i % 2 else -1]:
                    timed(fn, t)
            out["cases"].append({"name": name, "ours": t_ours, "plain": t_plain,
                                 "rows": len(a.t_ns)})  # fmt: skip
            log(f"  {db.name} {name}: {t_ours.p50:.2f} ms, plain SQL {t_plain.p50:.2f} ms")
        return out
    finally:
        conn.close()
        store.close()


def check(name: str, ours: Any, plain: list[tuple[Any, ...]]) -> None:
    """The store and the plain SQL must return the same numbers."""
    if name.startswith("raw"):
        ok = ours.t_ns == [r[0] for r in plain] and ours.value == [r[1] for r in plain]
    else:
        ok = (ours.t_ns == [r[0] for r in plain] and ours.min == [r[1] for r in plain]
              and ours.max == [r[3] for r in plain] and ours.count == [r[4] for r in plain]
              and all(math.isclose(x, float(r[2]), rel_tol=1e-9)
                      for x, r in zip(ours.avg, plain, strict=True)))  # fmt: skip
    if not ok:
        raise RuntimeError(f"{name}: the store and the plain SQL disagree")


# --- the run -------------------------------------------------------------------------------------


@dataclass
class Row:
    backend: str
    variant: str
    seconds: list[float]
    values: int
    raw_floor: bool = False
    bus: list[BusRun] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.values / float(np.median(self.seconds))


def run(args: argparse.Namespace) -> dict[str, Any]:
    n_msgs = args.values // VALUES_PER_MSG
    t0_ns = (time.time_ns() // HOUR_NS - 1) * HOUR_NS
    msets = scans("hbench", n_msgs, t0_ns)
    samples = samples_of(msets)
    ids = {k: i + 1 for i, k in enumerate(dict.fromkeys(x.series for x in samples))}
    sample_batches = batches(samples, BATCH_VALUES)
    raw_batches = [[(ids[x.series], x.t_ns, x.value) for x in b] for b in sample_batches]
    nvals = len(samples)
    gc.collect()
    gc.freeze()  # the workload is not the measured code's garbage: no collection scans it
    log(f"ingest: {nvals:,} values, {n_msgs:,} scans, {len(ids)} series, "
        f"{len(sample_batches)} batches of up to {BATCH_VALUES:,}")  # fmt: skip

    out: dict[str, Any] = {"rows": [], "queries": {}, "n_msgs": n_msgs, "nvals": nvals,
                           "qseconds": int(args.query_hours * 3600)}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="gp-hist-bench-") as tmp_name:
        tmp = Path(tmp_name)
        backends: list[Backend] = [Sqlite(tmp)]
        try:
            backends.append(Postgres(args.pg_url))
        except psycopg.Error as e:
            log(f"PostgreSQL not reachable at {args.pg_url}: skipped ({' '.join(str(e).split())})")
        server = EmbeddedNats(data_dir=tmp / "nats", port=0, monitor_port=0, mqtt_port=0).start()
        passwords = {who: service_password(tmp / "nats", who) for who in (ADMIN, HISTORIAN)}
        try:
            asyncio.run(setup_streams(server, passwords[ADMIN]))
            for db in backends:
                variants: list[tuple[str, Callable[[], Any]]] = []
                if isinstance(db, Sqlite):
                    for rowid in (True, False):
                        name = f"raw sqlite3 executemany, {'' if rowid else 'WITHOUT '}ROWID table"
                        variants.append((name, lambda db=db, r=rowid: raw_ingest(
                            db, raw_batches, rowid=r)))  # fmt: skip
                else:
                    for binary in (True, False):
                        name = f"raw psycopg COPY {'binary' if binary else 'text'}"
                        variants.append((name, lambda db=db, b=binary: raw_ingest(
                            db, raw_batches, binary=b)))  # fmt: skip
                variants.append(("GridPilot store.write", lambda db=db: store_ingest(
                    db, sample_batches)))  # fmt: skip
                variants.append(("through the bus: HistorianService", lambda db=db: asyncio.run(
                    bus_ingest(server, passwords, db.fresh(), n_msgs, tmp))))  # fmt: skip
                rows = {name: Row(db.name, name, [], nvals, name.startswith("raw"))
                        for name, _ in variants}  # fmt: skip
                dup = Row(db.name, "store.write again: all duplicates (redelivery)", [], nvals)
                for r in range(args.rounds):
                    k = r % len(variants)
                    for name, fn in variants[k:] + variants[:k]:
                        res = fn()
                        row = rows[name]
                        if isinstance(res, BusRun):
                            row.seconds.append(res.seconds)
                            row.bus.append(res)
                        elif isinstance(res, tuple):
                            row.seconds.append(res[0])
                            dup.seconds.append(res[1])
                        else:
                            row.seconds.append(res)
                        log(f"round {r + 1}: {db.name} {name}: {nvals / row.seconds[-1]:,.0f} "
                            f"values/s")  # fmt: skip
                listed = list(rows.values())
                out["rows"] += [*listed[:-1], dup, listed[-1]]
                log(f"{db.name}: query benchmark, {args.query_hours:g} h of 1 s data for "
                    f"{QUERY_SERIES} series")  # fmt: skip
                out["queries"][db.name] = query_bench(db, out["qseconds"], args.reps)
            out["pg"] = pg_settings(backends[-1]) if isinstance(backends[-1], Postgres) else None
        finally:
            server.stop()
            for db in backends:
                db.close()
    return out


async def setup_streams(server: EmbeddedNats, password: str) -> None:
    nc = await connect(server.url, user=ADMIN, password=password, name="bench-setup")
    try:
        await ensure_jetstream(nc)
    finally:
        await nc.drain()


def pg_settings(db: Postgres) -> dict[str, str]:
    out = {"version": str(db.admin.execute("SHOW server_version").fetchone()[0])}  # type: ignore[index]
    for name in ("fsync", "synchronous_commit", "shared_buffers"):
        out[name] = str(db.admin.execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]
    return out


# --- reporting -----------------------------------------------------------------------------------


def ingest_table(rows: list[Row]) -> str:
    out = ["| backend | variant | values/s | msgs/s (20 values) | ratio to raw driver |",
           "| --- | --- | ---: | ---: | ---: |"]  # fmt: skip
    for r in rows:
        floor = max(x.rate for x in rows if x.backend == r.backend and x.raw_floor)
        out.append(f"| {r.backend} | {r.variant} | {r.rate:,.0f} "
                   f"| {r.rate / VALUES_PER_MSG:,.0f} | {r.rate / floor:.2f} |")  # fmt: skip
    return "\n".join(out)


def query_table(queries: dict[str, Any]) -> str:
    out = ["| backend | query | rows returned | GridPilot median ms | p99 ms "
           "| plain SQL median ms | p99 ms | plain SQL / GridPilot |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for backend, q in queries.items():
        for c in q["cases"]:
            ours, plain = c["ours"], c["plain"]
            out.append(f"| {backend} | {c['name']} | {c['rows']:,} | {ours.p50:.2f} "
                       f"| {ours.p99:.2f} | {plain.p50:.2f} | {plain.p99:.2f} "
                       f"| {plain.p50 / ours.p50:.1f} |")  # fmt: skip
    return "\n".join(out)


def summary(res: dict[str, Any]) -> str:
    parts = []
    by = {(r.backend, r.variant): r for r in res["rows"]}
    for backend in dict.fromkeys(r.backend for r in res["rows"]):
        floor = max((r for r in res["rows"] if r.backend == backend and r.raw_floor),
                    key=lambda r: r.rate)  # fmt: skip
        store = by[backend, "GridPilot store.write"]
        dup = by[backend, "store.write again: all duplicates (redelivery)"]
        bus = by[backend, "through the bus: HistorianService"]
        b = bus.bus[int(np.argsort(bus.seconds)[len(bus.seconds) // 2])]  # the median run
        other = b.seconds - b.startup_s - b.write_s - b.rows_s
        text = (
            f"**{backend}.** The store layer reaches {store.rate / floor.rate:.0%} of "
            f"{floor.variant.removeprefix('raw ')} ({store.rate:,.0f} against "
            f"{floor.rate:,.0f} values/s); a redelivered batch (every sample already stored) "
            f"goes at {dup.rate:,.0f} values/s. Through the bus the historian drains a backlog "
            f"of {res['n_msgs']:,} RTU scans at {bus.rate:,.0f} values/s "
            f"({bus.rate / VALUES_PER_MSG:,.0f} msgs/s), {bus.rate / store.rate:.0%} of "
            f"store.write alone. In the median bus run ({b.seconds:.1f} s, {b.batches} batches) "
            f"startup (connect, open the store, create the consumers) took "
            f"{b.startup_s * 1e3:.0f} ms, the database writes {b.write_s:.1f} s and decoding "
            f"and mapping messages to samples {b.rows_s:.1f} s; the service maps (and fetches) "
            f"the next batch while one is written, so these overlap by "
            f"{max(-other, 0.0):.1f} s. Publishing the backlog beforehand "
            f"ran at {res['n_msgs'] / b.publish_s:,.0f} msgs/s."
        )
        q = {c["name"]: c for c in res["queries"].get(backend, {}).get("cases", [])}
        if q:
            m, h, r = (
                q["aggregate, 60 s buckets"],
                q["aggregate, 3600 s buckets"],
                q["raw, one hour"],
            )
            span = "A day" if res["qseconds"] == 86_400 else f"{res['qseconds'] / 3600:g} h"
            text += (
                f" {span} of one series in minute buckets ({m['rows']:,} of them) comes from the "
                f"rollup in {m['ours'].p50:.2f} ms (median) against {m['plain'].p50:.1f} ms for "
                f"a plain GROUP BY over its {res['qseconds']:,} raw samples "
                f"({m['plain'].p50 / m['ours'].p50:.0f}x faster); hourly buckets take "
                f"{h['ours'].p50:.2f} ms against {h['plain'].p50:.1f} ms; an hour of raw samples "
                f"{r['ours'].p50:.2f} ms against {r['plain'].p50:.2f} ms for the bare SELECT."
            )
        parts.append(text)
    return "\n\n".join(parts)


def machine(load: float, pg: dict[str, str] | None) -> str:
    def fld(path: str, key: str) -> str:
        text = Path(path).read_text() if Path(path).exists() else ""
        return next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if key in ln), "?")

    dists = {d.metadata["Name"].lower(): d.version for d in importlib.metadata.distributions()}
    v = {p: dists.get(p, "?") for p in ("nats-py", "msgspec", "psycopg", "numpy")}
    server = subprocess.run([nats_server_binary(), "--version"], capture_output=True, text=True)
    mem_kb = fld("/proc/meminfo", "MemTotal").split()[0]
    ram = f"{int(mem_kb) / 2**20:.1f} GiB" if mem_kb.isdigit() else "?"
    fs = subprocess.run(["df", "-T", tempfile.gettempdir()], capture_output=True, text=True)
    fstype = [*fs.stdout.splitlines()[-1].split(), "?", "?"][1] if fs.stdout else "?"
    pq = psycopg.pq
    lines = [
        f"- CPU: {fld('/proc/cpuinfo', 'model name')}, {os.cpu_count()} cores; RAM {ram}",
        f"- Python {platform.python_version()} ({platform.system()} {platform.release()})",
        f"- SQLite {sqlite3.sqlite_version} (files in {tempfile.gettempdir()}, {fstype}); "
        f"psycopg {v['psycopg']} ({pq.__impl__}, libpq {pq.version() // 10000}."
        f"{pq.version() % 100}); nats-py {v['nats-py']}, nats-server "
        f"{server.stdout.strip().split(' v')[-1]}, msgspec {v['msgspec']}, numpy {v['numpy']}",
    ]
    if pg:
        lines.append(f"- PostgreSQL {pg['version']} on the same machine: fsync {pg['fsync']}, "
                     f"synchronous_commit {pg['synchronous_commit']}, shared_buffers "
                     f"{pg['shared_buffers']}")  # fmt: skip
    lines.append(f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; load "
                 f"average at start {load:.2f} (other work on the machine competes for its "
                 "cores)")  # fmt: skip
    return "\n".join(lines)


REPORT = """\
# Historian: ingest and query, SQLite and PostgreSQL, against the raw drivers

Written by `benchmarks/historian_bench.py` (see its docstring); rerun it to refresh.

## Ingest

{ingest}

Medians of {rounds} rounds; the ratio is to the faster raw driver variant of the same backend.

## Queries

{queries}

## Summary

{summary}

## Method

Workload: {n_msgs:,} RTU scans as `MeasurementSet` ({RTUS} RTUs `rtu_trafo_<n>` scanned once a
second, each with P and Q of the transformer's LV side and {lines} feeders: {vpm} values,
{size:,} bytes of JSON per message), {nvals:,} values over {nseries} series. Every ingest
variant writes the same values in the same order and batches of up to {batch:,} values: what the
service writes per transaction when it has a backlog ({msgs_per_batch:,} messages per fetch).
Each variant starts from an empty database (a new SQLite file; the run's PostgreSQL schema
dropped and created again) and is timed from the first batch to the last commit; the table
shows the median of {rounds} rounds, the variants' order rotating between rounds. The
prepared workload is frozen out of the garbage collector (`gc.freeze()`), so collections scan
what the measured code allocates, as in the service.

- raw driver: a plain table `(series_id, t_ns, value, primary key (series_id, t_ns))`, rows
  prepared beforehand; SQLite `executemany` in one transaction per batch (WAL and
  `synchronous = NORMAL`, as the store sets them), into an ordinary (rowid) table and into a
  `WITHOUT ROWID` one like the store's `samples`; PostgreSQL psycopg `COPY ... FROM STDIN`
  with `write_row`, binary and text, one transaction per batch.
- `store.write(samples, [])`: `Sample` tuples prepared beforehand (the historian's own
  `measurement_samples`), through the series mapping, the dedupe against stored samples and
  the per-minute and per-hour aggregates. Then the same batches once more: every sample is a
  duplicate, the path of a batch redelivered after a crash.
- through the bus: a nats-server of its own (`EmbeddedNats`, JetStream file storage in the temp
  dir), streams from `ensure_jetstream`; the scans of a fresh grid published to
  `gp.<grid>.meas.<rtu>` with JetStream async publish (up to 4,000 acks in flight) before the
  historian starts; then `HistorianService` (identity `historian`, its production password and
  permissions), in this process, timed from `run()` until `samples_new` reaches the total: the
  rate at which it drains a backlog, startup included. A subclass only adds clocks around its
  row mapping (`_meas_rows`) and its batch write (`_store`).
- queries: {qhours:g} h of 1 s samples of {qseries} series ({qvals:,} samples) written through
  `store.write`, then per query {reps} timed repetitions after two warm-ups, the store and the
  plain SQL alternating. Plain SQL: what a user without the rollups would write on the same
  database, `SELECT t_ns / w * w, min(value), avg(value), max(value), count(*) FROM samples
  WHERE series_id = ? AND t_ns >= ? AND t_ns < ? GROUP BY 1 ORDER BY 1` (the series id looked
  up beforehand), and `SELECT t_ns, value ... ORDER BY t_ns` for the raw hour; both fetch
  every row into Python. The answers are checked equal. PostgreSQL tables are `VACUUM
  ANALYZE`d after the load (what autovacuum does shortly after); SQLite is queried as the
  store leaves it. p99 of {reps} repetitions is close to the maximum: indicative only.

The machine is shared: absolute rates move with its load, ratios much less.

values/s per round: {per_round}.

## Machine

{machine}
"""


def report(res: dict[str, Any], args: argparse.Namespace) -> str:
    frame = scans("hbench", 1, 0)[0]
    nseries = RTUS * VALUES_PER_MSG
    qseconds = int(args.query_hours * 3600)
    per_round = "; ".join(f"{r.backend} {r.variant} " + ", ".join(f"{r.values / x:,.0f}"
                          for x in r.seconds) for r in res["rows"])  # fmt: skip
    return REPORT.format(
        ingest=ingest_table(res["rows"]), queries=query_table(res["queries"]),
        summary=summary(res), n_msgs=res["n_msgs"], RTUS=RTUS, lines=RTU_LINES,
        vpm=VALUES_PER_MSG, size=len(s.encode(frame)), nvals=res["nvals"], nseries=nseries,
        batch=BATCH_VALUES, msgs_per_batch=BATCH, rounds=args.rounds, qhours=args.query_hours,
        qseries=QUERY_SERIES, qvals=qseconds * QUERY_SERIES, reps=args.reps,
        machine=machine(args.load, res.get("pg")), per_round=per_round,
    )  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--values", type=int, default=480_000, help="values per ingest round")
    ap.add_argument("--rounds", type=int, default=5, help="ingest rounds per variant")
    ap.add_argument("--query-hours", type=float, default=24.0, help="hours of 1 s query data")
    ap.add_argument("--reps", type=int, default=50, help="timed repetitions per query")
    ap.add_argument("--pg-url", default=PG_URL, help="PostgreSQL (a schema is made and dropped)")
    quick = "smoke run: 80,000 values, 1 round, 2 h of query data; no file"
    ap.add_argument("--quick", action="store_true", help=quick)
    ap.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS.name}")
    args = ap.parse_args()
    if args.quick:
        args.values, args.rounds, args.query_hours, args.reps = 80_000, 1, 2.0, 20
        args.no_write = True
    t0, args.load = time.perf_counter(), os.getloadavg()[0]
    res = run(args)
    text = "\n\n".join([ingest_table(res["rows"]), query_table(res["queries"]), summary(res)])
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(report(res, args))
        log(f"wrote {RESULTS}")
    log(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
