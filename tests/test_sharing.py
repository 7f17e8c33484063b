"""GridSharing (gridpilot.core.sharing) on a real nats-server, as the state_estimation identity:
instances share the grids fairly, take over a dead one's, keep renewing while the service's
event loop is blocked, and an overloaded one sheds the grids it took last to the others.

The instances run in this process, each with its lease thread and connection; the broker is
this module's own, so that the object store holds only the grids published here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import msgspec
import nats.js.errors
import pytest
from nats.aio.client import Client

from gridpilot.core import bus
from gridpilot.core.sharing import LAG_SHED, GridSharing, LoadGauge, share
from gridpilot.model import distribution
from gridpilot.model.placement import default_placement
from gridpilot.platform import permissions
from gridpilot.platform.broker import EmbeddedNats
from tests.pipeline import grid

GRIDS = [f"sh{i}" for i in range(6)]
PREFIX = "se."  # the state_estimation identity's lease keys


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(
        data_dir=tmp_path_factory.mktemp("sharing"), port=0, monitor_port=0, mqtt_port=0
    )
    server.start()
    yield server
    server.stop()


async def connect(broker: EmbeddedNats, identity: str, name: str) -> Client:
    creds = permissions.load_credentials(broker.data_dir)
    return await bus.connect(broker.url, user=identity, password=creds[identity], name=name)


@pytest.fixture
async def admin(broker: EmbeddedNats) -> AsyncIterator[Client]:
    nc = await connect(broker, permissions.ADMIN, "test-admin")
    await bus.ensure_jetstream(nc)
    model = grid("cigre_mv")
    for g in GRIDS:
        renamed = msgspec.structs.replace(model, name=g)
        await distribution.publish(nc, distribution.package(renamed, default_placement(renamed)))
    yield nc
    await nc.close()


class Instance:
    """A GridSharing with callbacks that record what the service was told."""

    def __init__(self, broker: EmbeddedNats, name: str, *, judge_s: float = 5.0) -> None:
        self.name = name
        self.acquired: list[str] = []  # in order
        self.working: set[str] = set()
        self.gauge = LoadGauge(window_s=judge_s)
        self.counters: Counter[str] = Counter()
        self.sharing = GridSharing(
            service=permissions.STATE_ESTIMATION,
            instance=name,
            connect=lambda: connect(broker, permissions.STATE_ESTIMATION, f"se-{name}-leases"),
            on_acquire=self.on_acquire,
            on_release=self.on_release,
            lease_prefix=PREFIX,
            log=logging.getLogger(f"test.sharing.{name}"),
            counters=self.counters,
            gauge=self.gauge,
            judge_s=judge_s,
        )

    async def on_acquire(self, g: str) -> None:
        assert g not in self.working
        self.acquired.append(g)
        self.working.add(g)

    async def on_release(self, g: str) -> None:
        self.working.discard(g)


@pytest.fixture
async def instances(broker: EmbeddedNats, admin: Client) -> AsyncIterator[list[Instance]]:
    made: list[Instance] = []
    yield made
    for inst in made:
        await inst.sharing.stop()

    async def clean() -> bool:
        return not await leases(admin)

    await until("the leases handed back", clean, within_s=5)


async def leases(nc: Client) -> dict[str, str]:
    """grid -> the instance its lease names."""
    kv = await nc.jetstream().key_value("gp_leases")
    out = {}
    try:
        keys = await kv.keys()
    except nats.js.errors.NoKeysError:
        return {}
    for key in keys:
        if key.startswith(PREFIX):
            try:
                entry = await kv.get(key)
            except nats.js.errors.KeyNotFoundError:  # released since keys() listed it
                continue
            out[key.removeprefix(PREFIX)] = json.loads(entry.value or b"")["instance"]
    return out


async def until(what: str, cond: Callable[[], Awaitable[bool]], within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while not await cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within_s} s: {what}")
        await asyncio.sleep(0.1)


async def start(broker: EmbeddedNats, made: list[Instance], name: str, **kw: float) -> Instance:
    inst = Instance(broker, name, **kw)
    await inst.sharing.start()
    made.append(inst)
    return inst


def split(admin: Client, sizes: dict[str, int]) -> Callable[[], Awaitable[bool]]:
    """True once the leases name these instances, with these many grids each, and each
    instance works on exactly the grids it holds."""

    async def cond() -> bool:
        held = await leases(admin)
        return set(held) == set(GRIDS) and Counter(held.values()) == Counter(sizes)

    return cond


def test_the_share_covers_the_grids_with_what_each_instance_can_carry() -> None:
    assert share(6, [None, None]) == 3
    assert share(7, [None, None, None]) == 3
    assert share(200, [None]) == 200
    assert share(6, [1, None]) == 5  # one overloaded instance carries 1: the other 5
    assert share(6, [2, 2, None]) == 2
    assert share(10, [2, 3]) == 3  # cannot be covered: each as many as it can
    assert share(0, [None]) == 0


def test_the_gauge_reads_dropped_work_and_a_late_loop() -> None:
    now = [0.0]
    gauge = LoadGauge(window_s=2.0, clock=lambda: now[0])
    assert gauge.overload() == 0.0
    gauge.arrived, gauge.dropped = 100, 25
    now[0] = 1.0
    assert gauge.overload() == pytest.approx(0.25)
    assert gauge.lag_s() == 0.0  # not watched: no lag
    gauge.beat_at, gauge.every_s = 1.0, 0.1
    now[0] = 5.1  # the loop has not woken up for 4 s; the drops above left the window
    assert gauge.overload() == LAG_SHED
    gauge.beat_at = 5.1
    assert gauge.overload() == 0.0


async def test_two_instances_share_fairly_and_one_takes_over_when_the_other_dies(
    broker: EmbeddedNats, admin: Client, instances: list[Instance]
) -> None:
    a = await start(broker, instances, "a")
    await until("a alone holds every grid", split(admin, {"a": 6}), within_s=5)
    assert a.working == set(GRIDS)
    b = await start(broker, instances, "b")
    await until("a and b hold three each", split(admin, {"a": 3, "b": 3}), within_s=6)
    await until("each works on what it holds", lambda: _working(admin, [a, b]), within_s=3)
    assert not a.working & b.working
    assert all(a.sharing.holds(g) for g in a.working)
    assert not any(a.sharing.holds(g) for g in b.working)
    for inst in (a, b):  # the lease threads' own connections, as state_estimation: all allowed
        assert inst.sharing.nc is not None
        assert bus.stats(inst.sharing.nc).permission_denied == 0

    await a.sharing.abandon()  # as if killed: no hand-over, no goodbye
    died = time.monotonic()
    instances.remove(a)
    await until("b took a's grids over", split(admin, {"b": 6}), within_s=8)
    print(f"takeover after {time.monotonic() - died:.1f} s")
    assert b.working == set(GRIDS)
    # the dead one would no longer act on its grids (its leases could have expired)
    assert not any(a.sharing.holds(g) for g in GRIDS)
    assert b.counters["leases_expired"] == 0


async def _working(admin: Client, insts: list[Instance]) -> bool:
    held = await leases(admin)
    return all(i.working == {g for g, h in held.items() if h == i.name} for i in insts)


async def test_renewals_go_on_while_the_service_loop_is_blocked(
    broker: EmbeddedNats, admin: Client, instances: list[Instance]
) -> None:
    a = await start(broker, instances, "a")
    b = await start(broker, instances, "b")
    await until("a and b hold three each", split(admin, {"a": 3, "b": 3}), within_s=8)
    kv = await admin.jetstream().key_value("gp_leases")
    before = {g: (await kv.get(f"{PREFIX}{g}")).revision for g in GRIDS}
    # a handler that blocks the service's event loop (its connection is read on this loop
    # too) for twice the leases' TTL: renewals on this loop would let every lease lapse
    busy_until = time.monotonic() + 2 * a.sharing._leases.ttl_s
    while time.monotonic() < busy_until:  # busy, as a handler decoding a flood would be
        pass
    assert all(a.sharing.holds(g) for g in a.working)
    assert all(b.sharing.holds(g) for g in b.working)
    after = {g: (await kv.get(f"{PREFIX}{g}")).revision for g in GRIDS}
    assert all((after[g] or 0) > (before[g] or 0) for g in GRIDS), (before, after)
    assert await split(admin, {"a": 3, "b": 3})()
    for inst in (a, b):
        assert inst.counters["leases_expired"] == 0
        assert inst.counters["leases_lost"] == 0
        assert inst.counters["leases_claimed"] == 3


async def test_an_overloaded_instance_sheds_the_grids_it_took_last(
    broker: EmbeddedNats, admin: Client, instances: list[Instance]
) -> None:
    a = await start(broker, instances, "a", judge_s=1.0)
    await until("a alone holds every grid", split(admin, {"a": 6}), within_s=5)
    b = await start(broker, instances, "b", judge_s=1.0)
    await until("a and b hold three each", split(admin, {"a": 3, "b": 3}), within_s=6)
    await until("each works on what it holds", lambda: _working(admin, [a, b]), within_s=3)
    kept = [g for g in a.acquired if g in a.working]  # in the order a acquired them
    assert len(kept) == 3

    async def overload() -> None:  # a drops half the work that arrives
        while True:
            a.gauge.arrived += 10
            a.gauge.dropped += 5
            b.gauge.arrived += 10
            await asyncio.sleep(0.05)

    feeder = asyncio.ensure_future(overload())
    try:
        # two windows overloaded each time, half its grids at most: 3 -> 2 -> 1
        await until("a sheds two grids to b", split(admin, {"a": 1, "b": 5}), within_s=12)
    finally:
        feeder.cancel()
    assert a.sharing.capacity == 1
    assert a.working == {kept[0]}  # the grids it took last went first
    await until("b works on the shed grids", lambda: _working(admin, [a, b]), within_s=3)
    assert a.counters["grids_shed"] == 2 and a.counters["overloads"] == 2
    assert a.counters["leases_expired"] == 0 and b.counters["leases_expired"] == 0
    assert b.sharing.capacity is None
    assert a.sharing.view.capacity.get("member.state_estimation.a") == 1
