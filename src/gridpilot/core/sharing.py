"""Grids shared by the instances of a service started with ``--grid all``.

Every grid in the object store ``gp_models`` is worked on by exactly one live instance: a lease
per grid in the TTL bucket ``gp_leases`` (see :mod:`gridpilot.core.leases`) names its holder.
An instance writes a membership key every tick; it holds at most its share of the grids (grids
/ live instances, rounded up, less for instances that said they can carry fewer), claims free
grids up to that share, gives up what is above it, and so takes over the grids of an instance
that died once their leases expire.

The leases are kept by a thread of their own, with its own event loop and its own NATS
connection (the same identity): the service's data path (its connection's read buffer, its
event loop busy with messages or blocked by a handler) cannot delay a renewal. What the service
does with a grid runs on its own loop, told by ``on_acquire(grid)`` and ``on_release(grid)``;
:meth:`GridSharing.holds` says, from any thread, whether the grid may be acted on.

An instance that cannot keep up (its :class:`LoadGauge` sees work dropped or its event loop
late) sheds grids instead of letting leases lapse: it lowers its capacity, gives up the grids
it acquired last beyond it, says so in its membership key, and the others take them on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Future as ThreadFuture
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client

from gridpilot.core import subjects
from gridpilot.core.backoff import wait_until_there
from gridpilot.core.errors import ConfigError
from gridpilot.core.leases import Lease, Leases, LeaseView

T = TypeVar("T")

LEASES_BUCKET = subjects.LEASES_BUCKET
TICK_S = 0.5  # renew leases, count members, release or claim grids this often
GRIDS_EVERY_S = 2.0  # look for grids added to or removed from gp_models this often
OP_TIMEOUT_S = 1.0  # a lease operation that takes longer has failed
RETRY_GRID_S = 30.0  # a grid that failed to start is left to the others this long
CALLBACK_S = 2.0  # on_release must have stopped the grid's work within this long
# Load: an instance that dropped more than SHED_ABOVE of its work over each of two windows of
# JUDGE_S (one may be a burst), or whose event loop was LAG_S late then, is overloaded: it sheds
# what it dropped (LAG_SHED when only late), at most MAX_SHED of its grids at a time (the
# measure is rough and a grid moved costs a start elsewhere), and judges again JUDGE_S later
# (or after an acquisition: starting grids is work too). A lowered capacity is raised by a
# fifth every GROW_S while the instance keeps up (drops at most KEEPS_UP) with all it may hold.
SHED_ABOVE = 0.05
LAG_S = 1.0
LAG_SHED = 0.1
MAX_SHED = 0.5
JUDGE_S = 5.0
GROW_S = 10.0
KEEPS_UP = 0.01
KV_KEY = re.compile(r"^[-/_=a-zA-Z0-9]+(\.[-/_=a-zA-Z0-9]+)*$")  # what NATS accepts as a key
# What the JetStream API answers before `gridpilot init` made a bucket (not found), or while a
# cluster that has just started still elects its leaders (time-outs, 503, no responders).
NOT_YET = (
    nats.js.errors.NotFoundError,
    nats.js.errors.ServiceUnavailableError,
    nats.errors.NoRespondersError,
    TimeoutError,
)


def share(grids: int, capacities: list[int | None]) -> int:
    """The most grids any live instance should hold: the smallest level such that instances
    each holding ``min(capacity, level)`` cover every grid (None: no limit); grids / instances,
    rounded up, when none is limited. When the capacities cannot cover the grids, the largest
    capacity (the rest stays unworked)."""
    if not capacities:
        return grids
    level = math.ceil(grids / len(capacities))
    if None in capacities:
        while sum(level if c is None else min(c, level) for c in capacities) < grids:
            level += 1
        return level
    limits = [c for c in capacities if c is not None]
    while level < max(limits) and sum(min(c, level) for c in limits) < grids:
        level += 1
    return min(level, max(limits))


class LoadGauge:
    """How far behind a service is, fed from its event loop, read from the lease thread.

    The service counts the work that arrived and the work it dropped for lack of time
    (``arrived``/``dropped``, plain counters); :meth:`watch` runs on its loop and notes how late
    the loop wakes up. :meth:`overload` is the fraction of the work not kept up with.
    """

    def __init__(self, *, window_s: float = JUDGE_S, clock: Callable[[], float] = time.monotonic):
        self.arrived = 0
        self.dropped = 0
        self.window_s = window_s
        self.clock = clock
        self.beat_at: float | None = None  # the loop's last wake-up (None: not watched)
        self.every_s = 0.1
        self._samples: deque[tuple[float, int, int]] = deque()

    async def watch(self, every_s: float = 0.1) -> None:
        """Wake up every ``every_s`` on the service's loop (forever): a late wake-up is lag."""
        self.every_s = every_s
        while True:
            self.beat_at = self.clock()
            await asyncio.sleep(every_s)

    def lag_s(self) -> float:
        """How long the service's loop has not woken up beyond its period (0 unwatched)."""
        if self.beat_at is None:
            return 0.0
        return max(0.0, self.clock() - self.beat_at - self.every_s)

    def overload(self) -> float:
        """The fraction (0..1) of the work dropped over the last window; at least LAG_SHED
        when the loop is more than LAG_S late (it cannot even read the work in time)."""
        now = self.clock()
        self._samples.append((now, self.arrived, self.dropped))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()
        _, a0, d0 = self._samples[0]
        arrived, dropped = self.arrived - a0, self.dropped - d0
        part = dropped / arrived if arrived > 0 else 0.0
        lag = self.lag_s()
        if lag > LAG_S:
            part = max(part, LAG_SHED)
        return min(1.0, part)

    def reset(self) -> None:
        """Forget the window (after a change of the work: judge what follows only)."""
        self._samples.clear()


class GridSharing:
    """Leases on the grids of ``gp_models`` for one instance of a service (see the module).

    ``connect`` makes the lease thread's own connection (called on that thread's loop);
    ``on_acquire``/``on_release`` run on the loop that called :meth:`start`, the latter must
    stop the grid's work before it returns. Counters (``lease_*``, ``leases_*``) go to
    ``counters`` and ``grids``, ``live_instances``, ``fair_share``, ``capacity`` to ``info``.
    """

    def __init__(
        self,
        *,
        service: str,
        instance: str,
        connect: Callable[[], Awaitable[Client]],
        on_acquire: Callable[[str], Awaitable[None]],
        on_release: Callable[[str], Awaitable[None]],
        lease_prefix: str,
        log: logging.Logger,
        counters: Counter[str] | None = None,
        info: dict[str, int | float | str] | None = None,
        gauge: LoadGauge | None = None,
        wait_s: float = 0.0,
        tick_s: float = TICK_S,
        judge_s: float = JUDGE_S,
        grow_s: float = GROW_S,
    ) -> None:
        if not KV_KEY.match(f"{lease_prefix}x") or not lease_prefix.endswith("."):
            raise ConfigError(f"lease prefix {lease_prefix!r}: want letters and a final dot")
        self.service = service
        self.instance = instance
        self.lease_prefix = lease_prefix
        self.member_prefix = f"member.{service}."
        self.member_key = f"{self.member_prefix}{instance}"
        self.log = log
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self.info: dict[str, int | float | str] = info if info is not None else {}
        self.gauge = gauge or LoadGauge()
        self.wait_s = wait_s
        self.tick_s = tick_s
        self.judge_s = judge_s
        self.grow_s = grow_s
        self._connect = connect
        self._on_acquire = on_acquire
        self._on_release = on_release
        self.owned: dict[str, Lease] = {}  # grid -> lease, in the order acquired
        self.grids: list[str] = []
        self.capacity: int | None = None  # None: as many as the share
        self.retry_at: dict[str, float] = {}
        self._lost: set[str] = set()  # leases another holder wrote: not to be acted on
        self._failed_grids: set[str] = set()
        self._handing_over: set[asyncio.Future[None]] = set()
        self._grids_at = 0.0
        self._judge_at = 0.0
        self._grow_at = 0.0
        self._strikes = 0  # windows in a row judged overloaded
        self._errors: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None  # the service's
        self._kloop: asyncio.AbstractEventLoop | None = None  # the lease thread's
        self._thread: threading.Thread | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.nc: Client | None = None

    # -- from the service's loop ----------------------------------------------------------------
    async def start(self) -> None:
        """Start the lease thread: connect, find the bucket and the object store (waiting up to
        ``wait_s`` for ``gridpilot init`` to make them), then tick until :meth:`stop`."""
        self._loop = asyncio.get_running_loop()
        kloop = self._kloop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=kloop.run_forever, name=f"leases-{self.instance}", daemon=True
        )
        self._thread.start()
        try:
            await self._in_thread(self._setup())
        except BaseException:
            await self._close_thread()
            raise
        self.info.update(grids="", live_instances=1, fair_share=0, capacity="")
        self._in_thread_nowait(self._run())

    async def stop(self) -> None:
        """Hand every grid back now (rather than at expiry), leave, close the thread."""
        if self._kloop is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._in_thread(self._leave()), 10.0)
        await self._close_thread()

    async def abandon(self) -> None:
        """Stop keeping the leases without handing anything over or leaving, as a process
        killed would: the others take the grids over once the leases expire."""
        await self._close_thread()

    def holds(self, grid: str) -> bool:
        """True while this instance may act on ``grid``: its lease cannot have expired and no
        one else has written it. Thread-safe."""
        lease = self.owned.get(grid)
        return lease is not None and grid not in self._lost and self._leases.valid(lease)

    def failed(self, grid: str) -> None:
        """The grid's work failed (a model missing or broken): leave it to the others for
        RETRY_GRID_S. Thread-safe."""
        self._failed_grids.add(grid)

    # -- the thread ------------------------------------------------------------------------------
    async def _in_thread(self, coro: Awaitable[T]) -> T:
        assert self._kloop is not None
        fut: ThreadFuture[T] = asyncio.run_coroutine_threadsafe(coro, self._kloop)  # type: ignore[arg-type]
        return await asyncio.wrap_future(fut)

    def _in_thread_nowait(self, coro: Awaitable[None]) -> None:
        assert self._kloop is not None
        asyncio.run_coroutine_threadsafe(coro, self._kloop)  # type: ignore[arg-type]

    async def _close_thread(self) -> None:
        kloop, thread = self._kloop, self._thread
        if kloop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._in_thread(self._close()), 5.0)
        kloop.call_soon_threadsafe(kloop.stop)
        await asyncio.to_thread(thread.join, 5.0)
        if not thread.is_alive():
            kloop.close()
        self._kloop = self._thread = None

    async def _close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._ticker
        with contextlib.suppress(Exception):
            await self.view.stop()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()

    async def _setup(self) -> None:
        spec = next(b for b in subjects.BUCKETS if b.name == LEASES_BUCKET)
        if spec.ttl_s is None:
            raise ConfigError(f"KV {LEASES_BUCKET} needs a TTL for its leases to expire")
        nc = self.nc = await self._connect()
        js = nc.jetstream(timeout=OP_TIMEOUT_S)
        # the bucket and the object store are made by `gridpilot init` (or `up`), which may
        # come after this instance in a container deployment: wait for them, not exit
        kv = await wait_until_there(
            lambda: js.key_value(LEASES_BUCKET),
            missing=NOT_YET,
            what=f"KV {LEASES_BUCKET} (made by gridpilot init)",
            wait_s=self.wait_s,
            log=self.log,
        )
        self._leases = Leases(kv, self.instance, spec.ttl_s)
        self.view = LeaseView(kv, spec.ttl_s, on_update=self._lease_changed)
        await self.view.start()
        self.models = await wait_until_there(
            lambda: nc.jetstream().object_store(subjects.MODELS_STORE),
            missing=NOT_YET,
            what=f"object store {subjects.MODELS_STORE} (made by gridpilot init)",
            wait_s=self.wait_s,
            log=self.log,
        )

    async def _run(self) -> None:
        self._ticker = asyncio.current_task()
        first = True
        while True:
            started = time.monotonic()
            try:
                await self._tick(claim=not first)  # claim once the others could see this one
            except Exception:
                self.counters["lease_tick_failures"] += 1
                self.log.exception("lease tick failed")
            first = False
            await asyncio.sleep(max(0.0, self.tick_s - (time.monotonic() - started)))

    async def _leave(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._ticker
        for grid in list(self.owned):
            await self._give_up(grid, release=True, why="stopping")
        await asyncio.gather(*self._handing_over, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._leases.kv.delete(self.member_key)

    def _lease_changed(self, key: str, holder: str | None) -> None:
        """A lease of ours written by someone else: stop acting on that grid now; the next
        renewal fails its compare-and-set and gives the grid up."""
        grid = key.removeprefix(self.lease_prefix)
        if key.startswith(self.lease_prefix) and grid in self.owned and holder != self.instance:
            self._lost.add(grid)

    def _failed(self, what: str, exc: BaseException) -> None:
        self.counters[f"lease_{what}_errors"] += 1
        text = f"{what}: {exc!r}"
        if text not in self._errors:  # say each kind once
            self._errors.add(text)
            self.log.warning("lease operation failed", extra={"op": what, "error": repr(exc)})

    async def _tick(self, *, claim: bool) -> None:
        extra: dict[str, Any] = {} if self.capacity is None else {"capacity": self.capacity}
        try:  # first, so that it expires before this instance's leases do
            await asyncio.wait_for(self._leases.beat(self.member_key, **extra), OP_TIMEOUT_S)
        except Exception as exc:
            self._failed("member", exc)
        await self._renew()
        for grid in list(self._failed_grids):
            self._failed_grids.discard(grid)
            self.retry_at[grid] = time.monotonic() + RETRY_GRID_S
            await self._give_up(grid, release=True, why="failed")
        if self.view.stalled(self.member_key, 4 * self.tick_s):
            self.counters["lease_view_restarts"] += 1
            try:
                await self.view.start()
            except Exception as exc:
                self._failed("watch", exc)
        now = time.monotonic()
        if now >= self._grids_at:
            try:
                self.grids = await asyncio.wait_for(self._list_grids(), 2 * OP_TIMEOUT_S)
                self._grids_at = now + GRIDS_EVERY_S
            except Exception as exc:
                self._failed("grids", exc)
        self._judge(now)
        members = self.view.live(self.member_prefix)
        members.pop(self.member_key, None)
        caps = [self.view.capacity.get(k) for k in members] + [self.capacity]
        fair = share(len(self.grids), caps)
        limit = fair if self.capacity is None else min(fair, self.capacity)
        self.info.update(
            live_instances=len(caps),
            fair_share=fair,
            capacity="" if self.capacity is None else self.capacity,
        )
        for grid in [g for g in self.owned if g not in self.grids]:
            await self._give_up(grid, release=True, why="grid removed")
        if len(self.owned) > limit:
            if self.capacity is not None and len(self.owned) > self.capacity:
                # overloaded: the grids acquired last go first
                surplus = list(self.owned)[limit:]
                why = "above the capacity"
                self.counters["grids_shed"] += len(surplus)
            else:
                surplus = sorted(self.owned)[limit:]
                why = "above the fair share"
            for grid in surplus:
                await self._give_up(grid, release=True, why=why)
        if claim and len(self.owned) < limit:
            await self._claim(limit - len(self.owned))
        self.info["grids"] = ",".join(sorted(self.owned))

    def _judge(self, now: float) -> None:
        """Lower the capacity when the service cannot keep up; raise it slowly when it can."""
        overload = self.gauge.overload()  # sampled every tick, judged from time to time
        if now < self._judge_at or not self.owned:
            return
        held = len(self.owned)
        if overload > SHED_ABOVE and held > 1:
            self._strikes += 1
            if self._strikes < 2:  # once may be a burst: judge the next window too
                self._judge_at = now + self.judge_s
                return
            keep = max(math.floor(held * (1.0 - overload) * 0.95), math.ceil(held * (1 - MAX_SHED)))
            cap = max(1, min(held - 1, keep))
            self.log.warning(
                "overloaded; shedding grids",
                extra={
                    "held": held,
                    "capacity": cap,
                    "dropped_share": round(overload, 3),
                    "loop_lag_s": round(self.gauge.lag_s(), 2),
                },
            )
            self.counters["overloads"] += 1
            self.capacity = cap
            self._strikes = 0
            self._judge_at = now + self.judge_s
            self._grow_at = now + self.grow_s
            self.gauge.reset()
            return
        self._strikes = 0
        if self.capacity is not None and overload <= KEEPS_UP and now >= self._grow_at:
            if held >= self.capacity:  # it keeps up with all it may hold: try a fifth more
                self.capacity = self.capacity + max(1, self.capacity // 5)
                self.log.info("capacity raised", extra={"capacity": self.capacity})
            self._grow_at = now + self.grow_s

    async def _list_grids(self) -> list[str]:
        try:
            objects = await self.models.list(ignore_deletes=True)
        except nats.js.errors.NotFoundError:
            return []
        grids = []
        for obj in objects:
            grid = (obj.name or "").removesuffix(".json")
            if obj.name != f"{grid}.json" or not KV_KEY.match(f"{self.lease_prefix}{grid}"):
                continue
            try:
                if subjects.grid_token(grid) == grid:
                    grids.append(grid)
            except ConfigError:
                continue
        return sorted(grids)

    async def _renew(self) -> None:
        owned = list(self.owned.items())
        results: list[Any] = await asyncio.gather(
            *(asyncio.wait_for(self._leases.renew(lease), OP_TIMEOUT_S) for _, lease in owned),
            return_exceptions=True,
        )
        for (grid, lease), result in zip(owned, results, strict=True):
            if self.owned.get(grid) is not lease:
                continue
            if result is False:
                self.counters["leases_lost"] += 1
                await self._give_up(grid, release=False, why="lease taken by another instance")
            elif isinstance(result, BaseException):
                self._failed("renew", result)
                if not self._leases.valid(lease):
                    self.counters["leases_expired"] += 1
                    await self._give_up(grid, release=True, why="lease not renewed in time")

    async def _claim(self, room: int) -> None:
        now = time.monotonic()
        held = self.view.live(self.lease_prefix)
        free = [
            g
            for g in self.grids
            if g not in self.owned
            and f"{self.lease_prefix}{g}" not in held
            and self.retry_at.get(g, 0.0) <= now
        ]
        random.shuffle(free)  # instances claiming at once mostly try different grids
        for grid in free[:room]:
            try:
                lease = await asyncio.wait_for(
                    self._leases.claim(f"{self.lease_prefix}{grid}"), OP_TIMEOUT_S
                )
            except Exception as exc:
                self._failed("claim", exc)
                continue
            if lease is None:
                continue  # someone was quicker
            self._lost.discard(grid)
            self.owned[grid] = lease
            self.counters["leases_claimed"] += 1
            self.log.info("grid claimed", extra={"grid": grid})
            self._judge_at = time.monotonic() + self.judge_s  # starting it is work too
            self.gauge.reset()
            self._call(self._on_acquire(grid), grid, "acquire")

    def _call(self, coro: Awaitable[None], grid: str, what: str) -> ThreadFuture[None]:
        """Run a callback on the service's loop; its failure is logged."""
        assert self._loop is not None

        async def guarded() -> None:
            try:
                await coro
            except Exception:
                self.counters[f"sharing_{what}_errors"] += 1
                self.log.exception("grid callback failed", extra={"grid": grid, "op": what})

        return asyncio.run_coroutine_threadsafe(guarded(), self._loop)

    async def _give_up(self, grid: str, *, release: bool, why: str) -> None:
        """Stop acting on ``grid`` at once (``holds`` turns False); the service stops its work
        and then the lease is released if asked, on a task of its own: a service slow to stop
        delays no renewal of the other leases."""
        lease = self.owned.pop(grid, None)
        self._lost.discard(grid)
        if lease is None:
            return
        self.log.info("grid given up", extra={"grid": grid, "why": why})
        task = asyncio.ensure_future(self._hand_over(grid, lease if release else None))
        self._handing_over.add(task)
        task.add_done_callback(self._handing_over.discard)

    async def _hand_over(self, grid: str, lease: Lease | None) -> None:
        try:
            await asyncio.wait_for(
                asyncio.wrap_future(self._call(self._on_release(grid), grid, "release")),
                CALLBACK_S,
            )
        except TimeoutError:  # its loop is stuck: let the lease expire rather than hand it over
            self.counters["releases_late"] += 1
            self.log.warning("grid not stopped in time; its lease expires", extra={"grid": grid})
            return
        if lease is not None:
            await self._leases.release(lease)
