"""The historian: durable consumers on the grid's streams, batch writes, a query API.

For each stream (measurements, estimates, alarms, commands) the historian owns a durable pull
consumer ``historian_<grid>_<stream>``. It fetches a batch, turns it into rows, writes them in
one database transaction and only then acknowledges each of its messages.
A crash between commit and ack redelivers the batch, and the store skips what it already has,
so nothing is lost and nothing is stored twice. A message that cannot be decoded is counted,
logged and acknowledged with its batch (it would never decode). When the database refuses a
write, the batch is retried with back-off and not acknowledged until it is stored.

Estimates are stored at most once per ``GRIDPILOT_HISTORIAN_EST_PERIOD_S`` (1 s) of estimate
time; measurements are stored as they came. Database calls run on one worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import api

from gridpilot.core import schemas as s
from gridpilot.core import subjects
from gridpilot.core.backoff import Backoff
from gridpilot.core.bus import BUS_FAILURES
from gridpilot.core.config import (
    ENV_HISTORIAN_AGG_DAYS,
    ENV_HISTORIAN_EST_PERIOD_S,
    ENV_HISTORIAN_RAW_DAYS,
)
from gridpilot.core.config import env as env_value
from gridpilot.core.errors import ConfigError, PayloadError
from gridpilot.core.estimates import EstimateReader, EstimateRef, expand
from gridpilot.core.service import Service
from gridpilot.core.validation import history_problem
from gridpilot.services.historian import rows
from gridpilot.services.historian.backends import open_store, redact
from gridpilot.services.historian.store import (
    EventKind,
    EventRow,
    Sample,
    SeriesKey,
    SeriesKind,
    Store,
    StoreError,
)

T = TypeVar("T")

BATCH = 2000  # messages per fetch (and per transaction)
# Estimates per fetch: one of mvlv_rural's takes 350 kB, and 2,000 of them would overrun what
# the server holds for a client (64 MiB) and make the historian a slow consumer.
STATE_BATCH = 20
SETUP_RETRY_S = 30.0  # how long a consumer's creation is retried while the broker is unready
FETCH_WAIT_S = 0.5
ACK_WAIT_S = 10.0  # unacknowledged (the historian died holding it): delivered again after this
RETENTION_EVERY_S = 3600.0
MAX_POINTS = 200_000  # per query reply, all series together
DB_FILE = "historian.sqlite"


@dataclass(frozen=True, slots=True)
class Retention:
    raw_days: float = 7.0
    agg_days: float = 365.0
    est_period_s: float = 1.0

    @classmethod
    def from_env(cls) -> Retention:
        values: dict[str, float] = {}
        for field, env in (
            ("raw_days", ENV_HISTORIAN_RAW_DAYS),
            ("agg_days", ENV_HISTORIAN_AGG_DAYS),
            ("est_period_s", ENV_HISTORIAN_EST_PERIOD_S),
        ):
            text = env_value(env)
            if text is None:
                continue
            try:
                values[field] = float(text)
            except ValueError:
                raise ConfigError(f"{env} must be a number, not {text!r}") from None
            if not values[field] > 0:
                raise ConfigError(f"{env} must be > 0, not {text}")
        return cls(**values)


class HistorianService(Service):
    name = "historian"

    async def setup(self) -> None:
        self.retention = Retention.from_env()
        url = self.config.db_url or str(self.config.data_dir / DB_FILE)
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="historian-db")
        self.store: Store = await self._call(open_store, url, password=self.config.db_password)
        self.info["db"] = redact(url)
        self.info["raw_days"] = self.retention.raw_days
        self.info["agg_days"] = self.retention.agg_days
        self.log.info("database open", extra={"db": redact(url)})
        self._last_est_bucket = -1
        self._pull_subs: list[Any] = []
        self._js = self.nc.jetstream()
        g = self.grid
        self._consume(subjects.MEAS_STREAM, "meas", subjects.MEAS.wildcard(grid=g), self._meas_rows)
        self.estimates = EstimateReader(self.nc)
        self._consume(
            subjects.STATE_STREAM,
            "state",
            subjects.STATE.format(grid=g),
            self._state_rows,
            prepare=self._state_layouts,
            batch=STATE_BATCH,
        )
        self._consume(
            subjects.ALARM_STREAM, "alarm", subjects.ALARM.format(grid=g), self._alarm_rows
        )
        self._consume(subjects.CMD_STREAM, "cmd", f"gp.{g}.>", self._cmd_rows)
        self._consume(
            subjects.AUDIT_STREAM, "audit", subjects.AUDIT.format(grid=g), self._audit_rows
        )
        self.spawn(self._retention_loop(), name="retention")
        await self.subscribe(
            subjects.HISTORY_SERIES.format(grid=g), s.SeriesRequest, self.on_series
        )
        await self.subscribe(subjects.HISTORY_QUERY.format(grid=g), s.HistoryQuery, self.on_query)
        await self.subscribe(subjects.HISTORY_EVENTS.format(grid=g), s.EventsQuery, self.on_events)

    async def teardown(self) -> None:
        # A pull subscription's fetched-but-unread messages would hold up the drain for its
        # whole timeout; they are unacknowledged, so the next start gets them again.
        for sub in getattr(self, "_pull_subs", []):
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        store = getattr(self, "store", None)
        if store is not None:
            await self._call(store.close)
        self._db.shutdown(wait=True)

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db, lambda: fn(*args, **kwargs))

    # -- ingest ---------------------------------------------------------------------------------
    def _consume(
        self,
        stream: str,
        short: str,
        filter_subject: str,
        to_rows: Callable[[Msg], tuple[list[Sample], list[EventRow]]],
        *,
        prepare: Callable[[list[Msg]], Awaitable[None]] | None = None,
        batch: int = BATCH,
    ) -> None:
        durable = f"historian_{self.grid}_{short}"
        ingest = self._ingest(stream, durable, filter_subject, to_rows, prepare, batch)
        self.spawn(ingest, name=durable)

    async def _ingest(
        self,
        stream: str,
        durable: str,
        filter_subject: str,
        to_rows: Callable[[Msg], tuple[list[Sample], list[EventRow]]],
        prepare: Callable[[list[Msg]], Awaitable[None]] | None = None,
        batch: int = BATCH,
    ) -> None:
        config = api.ConsumerConfig(
            durable_name=durable,
            # Explicit, not AckAll: nats-py's fetch can drop messages that arrive as a pull
            # request expires; AckAll on a later message would then acknowledge them unstored.
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=ACK_WAIT_S,
            max_ack_pending=4 * batch,
            deliver_policy=api.DeliverPolicy.ALL,
            filter_subject=filter_subject,
        )
        # A cluster electing a new leader (a member just died) answers nothing for a while.
        deadline = asyncio.get_running_loop().time() + SETUP_RETRY_S
        while True:
            try:
                sub = await self._js.pull_subscribe(
                    filter_subject, durable=durable, stream=stream, config=config
                )
                break
            except (nats.errors.TimeoutError, TimeoutError, nats.js.errors.ServiceUnavailableError):
                if asyncio.get_running_loop().time() > deadline:
                    raise
                self.counters["setup_retries"] += 1
                self.log.warning("consumer not ready, retrying", extra={"consumer": durable})
                await asyncio.sleep(0.5)
        self._pull_subs.append(sub)
        self.log.info("consuming", extra={"stream": stream, "consumer": durable})
        # One batch is written while the next is fetched and mapped; a batch is acknowledged
        # only once its transaction has committed.
        writing: tuple[asyncio.Task[None], list[Msg]] | None = None
        try:
            while True:
                try:
                    msgs = await sub.fetch(batch, timeout=FETCH_WAIT_S)
                except (nats.errors.TimeoutError, TimeoutError):
                    msgs = []
                except (nats.js.errors.Error, nats.errors.Error) as exc:
                    # the broker restarting or the consumer briefly gone: try again shortly
                    self.counters["fetch_errors"] += 1
                    self.log.warning("fetch failed", extra={"consumer": durable, "error": str(exc)})
                    await asyncio.sleep(1.0)
                    continue
                if msgs and prepare is not None:
                    await prepare(msgs)  # what to_rows needs from elsewhere (I/O)
                samples, events = self._rows(msgs, to_rows) if msgs else ([], [])
                if writing is not None:
                    await self._acknowledge(*writing)
                    writing = None
                if msgs:
                    writing = (asyncio.create_task(self._store(samples, events)), msgs)
        finally:
            if writing is not None:
                writing[0].cancel()  # not acknowledged: delivered again, skipped if stored

    def _rows(
        self, msgs: list[Msg], to_rows: Callable[[Msg], tuple[list[Sample], list[EventRow]]]
    ) -> tuple[list[Sample], list[EventRow]]:
        samples: list[Sample] = []
        events: list[EventRow] = []
        for msg in msgs:
            try:
                more_samples, more_events = to_rows(msg)
            except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
                self._drop(msg.subject, str(exc))
                continue
            samples.extend(more_samples)
            events.extend(more_events)
        return samples, events

    async def _acknowledge(self, write: asyncio.Task[None], msgs: list[Msg]) -> None:
        await write
        for msg in msgs:  # now that the batch is committed
            await msg.ack()
        self.counters["msgs_stored"] += len(msgs)
        self.counters["msgs_in"] += len(msgs)

    async def _store(self, samples: list[Sample], events: list[EventRow]) -> None:
        if not samples and not events:
            return
        backoff = Backoff(0.5, 30.0, names=("min", "max"))
        while True:
            t0 = time.perf_counter()
            try:
                stats = await self._call(self.store.write, samples, events)
            except StoreError as exc:
                self.counters["db_errors"] += 1
                delay = backoff.next()
                self.state = s.ServiceState.DEGRADED
                self.log.error(
                    "database write failed; retrying, nothing acknowledged",
                    extra={"error": str(exc), "retry_in_s": delay},
                )
                await asyncio.sleep(delay)
                continue
            break
        self.state = s.ServiceState.RUNNING
        self.counters["samples_new"] += stats.samples_new
        self.counters["samples_duplicate"] += stats.samples_duplicate
        self.counters["events_new"] += stats.events_new
        self.counters["events_duplicate"] += stats.events_duplicate
        self.counters["batches"] += 1
        self.info["last_batch_ms"] = round((time.perf_counter() - t0) * 1e3, 2)
        self.info["last_batch_rows"] = len(samples) + len(events)

    def _meas_rows(self, msg: Msg) -> tuple[list[Sample], list[EventRow]]:
        mset = s.decode(msg.data, s.MeasurementSet)
        samples, skipped = rows.measurement_samples(mset)
        self.counters["nonfinite_skipped"] += skipped
        return samples, []

    async def _state_layouts(self, msgs: list[Msg]) -> None:
        """Read the layouts a batch of estimates refers to (each once): a broker that does not
        answer is waited for, as a database that fails is, with nothing acknowledged."""
        wanted: set[tuple[str, str]] = set()
        for msg in msgs:
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                ref = s.decode(msg.data, EstimateRef)  # a bad one is dropped by _state_rows
                if ref.layout and self.estimates.cached(ref.grid, ref.layout) is None:
                    wanted.add((ref.grid, ref.layout))
        for grid, layout in sorted(wanted):
            backoff = Backoff(0.5, 30.0, names=("min", "max"))
            while True:
                try:
                    await self.estimates.layout(grid, layout)
                except PayloadError:
                    break  # not there, or not a layout: its estimates are dropped, counted
                except BUS_FAILURES as exc:
                    self.counters["layout_read_errors"] += 1
                    delay = backoff.next()
                    self.log.warning(
                        "estimate layout unreadable; retrying, nothing acknowledged",
                        extra={"layout": layout, "error": repr(exc), "retry_in_s": delay},
                    )
                    await asyncio.sleep(delay)
                    continue
                break

    def _state_rows(self, msg: Msg) -> tuple[list[Sample], list[EventRow]]:
        ref = s.decode(msg.data, EstimateRef)
        bucket = ref.t_ns // round(self.retention.est_period_s * 1e9)
        if bucket == self._last_est_bucket:
            self.counters["estimates_thinned"] += 1
            return [], []
        layout = self.estimates.cached(ref.grid, ref.layout) if ref.layout else None
        try:
            if ref.layout and layout is None:
                raise PayloadError(msg.subject, f"layout {ref.layout!r} not in KV")
            est = expand(s.decode(msg.data, s.EstimateValues), layout)
        except PayloadError as exc:
            self._drop(msg.subject, str(exc))
            return [], []
        self._last_est_bucket = bucket
        samples, skipped = rows.estimate_samples(est)
        self.counters["nonfinite_skipped"] += skipped
        return samples, []

    def _alarm_rows(self, msg: Msg) -> tuple[list[Sample], list[EventRow]]:
        return [], [rows.alarm_event(s.decode(msg.data, s.Alarm), msg.data)]

    def _audit_rows(self, msg: Msg) -> tuple[list[Sample], list[EventRow]]:
        return [], [rows.audit_event(s.decode(msg.data, s.AuditRecord), msg.data)]

    def _cmd_rows(self, msg: Msg) -> tuple[list[Sample], list[EventRow]]:
        token = msg.subject.split(".")[2]
        if token == "command":
            return [], [rows.command_event(s.decode(msg.data, s.Command), msg.data)]
        if token == "event":
            result = s.decode(msg.data, s.CommandResult)
            return [], [rows.command_result_event(result, msg.data)]
        return [], [rows.topology_event(s.decode(msg.data, s.SwitchState), msg.data)]

    async def _retention_loop(self) -> None:
        while True:
            deleted = await self._call(
                self.store.apply_retention,
                time.time_ns(),
                raw_days=self.retention.raw_days,
                agg_days=self.retention.agg_days,
            )
            if any(deleted.values()):
                self.log.info("retention applied", extra={"deleted": deleted})
            for table, n in deleted.items():
                self.counters[f"retention_deleted_{table}"] += n
            await asyncio.sleep(RETENTION_EVERY_S)

    # -- queries --------------------------------------------------------------------------------
    async def on_series(self, req: s.SeriesRequest, msg: Msg) -> None:
        self.counters["queries"] += 1
        try:
            kind = SeriesKind(req.kind) if req.kind else None
        except ValueError:
            await self.reply(msg, s.SeriesReply(ok=False, error=_bad_kind(req.kind)))
            return
        keys = await self._call(self.store.series, self.grid, kind, req.mrid or None)
        await self.reply(msg, s.SeriesReply(ok=True, series=[_ref(k) for k in keys]))

    async def on_query(self, q: s.HistoryQuery, msg: Msg) -> None:
        self.counters["queries"] += 1
        try:
            if problem := history_problem(q):
                raise ValueError(problem)
            reply = await self._query(q)
        except ValueError as exc:
            reply = s.HistoryReply(ok=False, error=str(exc))
        except StoreError as exc:
            self.counters["db_errors"] += 1
            reply = s.HistoryReply(ok=False, error=f"database: {exc}")
        except Exception as exc:  # a bug or a store failure: still an answer, and counted
            self.counters["query_errors"] += 1
            self.log.error("history query failed", exc_info=exc)
            reply = s.HistoryReply(ok=False, error=f"query failed: {type(exc).__name__}: {exc}")
        if not reply.ok:
            self.counters["queries_refused"] += 1
        await self.reply(msg, reply)

    async def _query(self, q: s.HistoryQuery) -> s.HistoryReply:
        if not q.series:
            raise ValueError("name at least one series (kind, mrid, quantity)")
        keys = await self._resolve(q.series)
        if q.latest:
            latest = await self._call(self.store.latest, keys)
            data = [
                s.SeriesData(series=_ref(k), t_ns=[latest[k][0]], value=[latest[k][1]])
                if k in latest
                else s.SeriesData(series=_ref(k))
                for k in keys
            ]
            return s.HistoryReply(ok=True, data=data)
        if q.t_to_ns <= q.t_from_ns:
            raise ValueError(
                f"empty time range: t_to_ns ({q.t_to_ns}) must be after t_from_ns ({q.t_from_ns})"
            )
        if q.bucket_s < 0:
            raise ValueError(
                f"bucket_s must be 0 (raw values) or a number of seconds, not {q.bucket_s}"
            )
        if q.bucket_s:
            buckets = (q.t_to_ns - q.t_from_ns) / (q.bucket_s * 1e9) * len(keys)
            if buckets > MAX_POINTS:
                raise ValueError(
                    f"{buckets:.0f} buckets asked for; at most {MAX_POINTS} per query: "
                    "use larger buckets or a shorter range"
                )
            aggs = await self._call(
                self.store.aggregate, keys, q.t_from_ns, q.t_to_ns, bucket_s=q.bucket_s
            )
            return s.HistoryReply(
                ok=True,
                data=[
                    s.SeriesData(
                        series=_ref(k),
                        t_ns=a.t_ns,
                        min=a.min,
                        avg=a.avg,
                        max=a.max,
                        count=a.count,
                    )
                    for k, a in aggs.items()
                ],
            )
        if not q.limit >= 1:
            raise ValueError(f"limit must be at least 1, not {q.limit}")
        limit = min(q.limit, MAX_POINTS // len(keys) or 1)
        raws = await self._call(self.store.raw, keys, q.t_from_ns, q.t_to_ns, limit=limit)
        return s.HistoryReply(
            ok=True,
            data=[
                s.SeriesData(
                    series=_ref(k), t_ns=r.t_ns, value=r.value, truncated=len(r.t_ns) >= limit
                )
                for k, r in raws.items()
            ],
        )

    async def _resolve(self, refs: Sequence[s.SeriesRef]) -> list[SeriesKey]:
        """Each reference's stored series (every source when it names none)."""
        keys: list[SeriesKey] = []
        for ref in refs:
            try:
                kind = SeriesKind(ref.kind)
            except ValueError:
                raise ValueError(_bad_kind(ref.kind)) from None
            if ref.source:
                keys.append(SeriesKey(self.grid, kind, ref.source, ref.mrid, ref.quantity))
                continue
            stored = await self._call(self.store.series, self.grid, kind, ref.mrid)
            found = [k for k in stored if k.quantity == ref.quantity]
            if not found:
                quantities = sorted({k.quantity for k in stored})
                raise ValueError(
                    f"no {kind} series {ref.mrid}/{ref.quantity} in grid {self.grid}"
                    + (f"; {ref.mrid} has {', '.join(quantities)}" if quantities else "")
                )
            keys.extend(found)
        return list(dict.fromkeys(keys))

    async def on_events(self, q: s.EventsQuery, msg: Msg) -> None:
        self.counters["queries"] += 1
        try:
            kind = EventKind(q.kind) if q.kind else None
        except ValueError:
            kinds = ", ".join(k.value for k in EventKind)
            await self.reply(
                msg, s.EventsReply(ok=False, error=f"unknown event kind {q.kind!r}: {kinds}")
            )
            return
        if q.limit < 1 or q.t_to_ns <= q.t_from_ns:
            await self.reply(
                msg,
                s.EventsReply(ok=False, error="need limit >= 1 and t_to_ns after t_from_ns"),
            )
            return
        limit = min(q.limit, 10_000)
        found = await self._call(
            self.store.events, self.grid, kind, q.t_from_ns, q.t_to_ns, limit=limit
        )
        events = [
            s.StoredEvent(kind=e.kind, key=e.key, t_ns=e.t_ns, payload=e.payload) for e in found
        ]
        await self.reply(msg, s.EventsReply(ok=True, events=events, truncated=len(events) >= limit))


def _ref(key: SeriesKey) -> s.SeriesRef:
    return s.SeriesRef(kind=key.kind, mrid=key.mrid, quantity=key.quantity, source=key.source)


def _bad_kind(kind: str) -> str:
    return f"unknown series kind {kind!r}: use 'meas' (field devices) or 'est' (state estimate)"


def main(grid: str | None = None) -> int:
    return HistorianService.main(grid=grid)
