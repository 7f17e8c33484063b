"""Leases in a KV bucket whose keys expire (``gp_leases``): at most one live holder per key.

A holder claims a key with ``create`` (refused while the key exists) and renews it with a
compare-and-set on the revision it wrote last; a holder that dies stops renewing, the server
drops the key once the bucket's TTL has passed, and the key can be claimed again. Members
rewrite a key of their own every tick, so who is alive is what the bucket holds.

The server decides every claim and renewal; :class:`LeaseView` (a watcher) only tells which
keys look free or held, to pick what to try.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import nats.js.errors
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

Clock = Callable[[], float]

# A holder stops using a lease this long before the server could drop it (its own write
# happened after it was sent, so the key lives at least ttl_s from then).
MARGIN_S = 0.5


@dataclass
class Lease:
    key: str
    revision: int
    sent_at: float  # monotonic: when the write that made ``revision`` was sent


def capacity_of(value: bytes | None) -> int | None:
    """The capacity (most grids) a membership value states, None if it states none."""
    try:
        doc = json.loads(value or b"")
    except ValueError:
        return None
    cap = doc.get("capacity") if isinstance(doc, dict) else None
    return cap if isinstance(cap, int) and not isinstance(cap, bool) and cap >= 0 else None


def holder_of(value: bytes | None) -> str | None:
    """The instance named in a lease or membership value, None if it names none."""
    try:
        doc = json.loads(value or b"")
    except ValueError:
        return None
    holder = doc.get("instance") if isinstance(doc, dict) else None
    return holder if isinstance(holder, str) else None


class Leases:
    """Claim, renew and release keys of a TTL bucket as ``holder``."""

    def __init__(
        self, kv: KeyValue, holder: str, ttl_s: float, *, clock: Clock = time.monotonic
    ) -> None:
        self.kv = kv
        self.holder = holder
        self.ttl_s = ttl_s
        self.clock = clock

    def value(self, **extra: int | str) -> bytes:
        """A lease or membership value: the holder, when, and ``extra`` (what else the holder
        tells the others, e.g. its capacity)."""
        return json.dumps({"instance": self.holder, "t_ns": time.time_ns(), **extra}).encode()

    async def claim(self, key: str) -> Lease | None:
        """The lease on ``key`` if nobody holds it, else None.

        nats-py's ``create`` also takes over a deleted or purged key: its tombstone makes the
        plain create fail, and it retries as an update on the tombstone's revision.
        """
        sent = self.clock()
        try:
            revision = await self.kv.create(key, self.value())
        except nats.js.errors.KeyWrongLastSequenceError:
            return None
        return Lease(key=key, revision=revision, sent_at=sent)

    async def renew(self, lease: Lease) -> bool:
        """Rewrite the lease if it is still the one this holder wrote; False if it was lost.

        Errors other than a lost compare-and-set (the server unreachable) are raised: the lease
        may still be held, until :meth:`valid` says otherwise.
        """
        sent = self.clock()
        try:
            lease.revision = await self.kv.update(lease.key, self.value(), last=lease.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            # A renewal whose reply was lost may have landed: then the key still names us.
            try:
                entry = await self.kv.get(lease.key)
            except nats.js.errors.KeyNotFoundError:
                return False
            if holder_of(entry.value) != self.holder or entry.revision is None:
                return False
            lease.revision = entry.revision  # when it was written is unknown: keep sent_at
            return True
        lease.sent_at = sent
        return True

    def valid(self, lease: Lease) -> bool:
        """True while the server cannot have dropped the lease yet (it is safe to act on it)."""
        return self.clock() - lease.sent_at < self.ttl_s - MARGIN_S

    async def release(self, lease: Lease) -> None:
        """Delete the key if it is still this lease (compare-and-set); best effort."""
        with contextlib.suppress(Exception):
            await self.kv.delete(lease.key, last=lease.revision)

    async def beat(self, key: str, **extra: int | str) -> None:
        """Rewrite a membership key: it says this holder is alive for another TTL (and
        ``extra``, see :meth:`value`)."""
        await self.kv.put(key, self.value(**extra))


class LeaseView:
    """The keys of the bucket and their holders, kept current by a watcher.

    A deleted key goes at once; a key that expires by age leaves no event, so a key not
    rewritten within the TTL counts as gone.
    """

    def __init__(
        self,
        kv: KeyValue,
        ttl_s: float,
        *,
        clock: Clock = time.monotonic,
        on_update: Callable[[str, str | None], None] | None = None,
    ) -> None:
        self.kv = kv
        self.ttl_s = ttl_s
        self.clock = clock
        self.on_update = on_update  # (key, holder or None when deleted), as the events come
        self.entries: dict[str, tuple[str | None, float]] = {}
        self.capacity: dict[str, int] = {}  # key -> the capacity its value states
        self.started_at = clock()
        self._task: asyncio.Task[None] | None = None
        self._watcher: KeyValue.KeyWatcher | None = None

    async def start(self, *, timeout_s: float = 2.0) -> None:
        """Watch the bucket; returns once the keys it holds now are known (or after timeout)."""
        await self.stop()
        self.entries.clear()
        self.capacity.clear()
        self.started_at = self.clock()
        watcher = self._watcher = await self.kv.watchall()
        ready = asyncio.Event()
        self._task = asyncio.ensure_future(self._follow(watcher, ready))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ready.wait(), timeout_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()  # type: ignore[no-untyped-call]
            self._watcher = None

    async def _follow(self, watcher: KeyValue.KeyWatcher, ready: asyncio.Event) -> None:
        async for entry in watcher:
            if entry is None:  # the keys held at the start have all arrived
                ready.set()
                continue
            holder = None
            self.capacity.pop(entry.key, None)
            if entry.operation in (KV_DEL, KV_PURGE):
                self.entries.pop(entry.key, None)
            else:
                holder = holder_of(entry.value)
                self.entries[entry.key] = (holder, self.clock())
                cap = capacity_of(entry.value)
                if cap is not None:
                    self.capacity[entry.key] = cap
            if self.on_update is not None:
                self.on_update(entry.key, holder)
            if entry.delta == 0:
                ready.set()

    def live(self, prefix: str) -> dict[str, str | None]:
        """Every key under ``prefix`` rewritten within the TTL, with its holder."""
        now = self.clock()
        return {
            key: holder
            for key, (holder, seen) in self.entries.items()
            if key.startswith(prefix) and now - seen < self.ttl_s
        }

    def stalled(self, key: str, seconds: float) -> bool:
        """True when ``key``, which its holder rewrites often, has not shown for ``seconds``
        after the watcher started: the watcher missed writes and needs a restart."""
        got = self.entries.get(key)
        now = self.clock()
        return now - self.started_at >= seconds and (got is None or now - got[1] >= seconds)
