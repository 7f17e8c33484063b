"""Several state-estimation instances (``--grid all``) share the grids: each grid estimated by
exactly one live instance, taken over within 5 s when its instance dies, given up at once
when its lease is lost.

The instances run as real processes (killed with SIGKILL) on a broker of this module's own:
they share every grid of the object store, so it must hold only the six grids published here.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from gridpilot import cli
from gridpilot.core import bus, subjects
from gridpilot.core.estimates import EstimateRef
from gridpilot.core.leases import MARGIN_S, Lease, Leases, LeaseView
from gridpilot.core.schemas import Heartbeat, MeasurementSet, SwitchState, encode
from gridpilot.model import distribution
from gridpilot.model.placement import default_placement
from gridpilot.platform import permissions
from gridpilot.platform.broker import EmbeddedNats, write_endpoints
from gridpilot.services.state_estimation.service import INSTANCE_HEADER, SHARED
from gridpilot.simulator.schedule import Schedule
from gridpilot.simulator.twin import Twin
from tests.conftest import ConnectAs
from tests.pipeline import NOON, grid

GRIDS = [f"so{i}" for i in range(6)]
INSTANCES = 3
TICK_S = 0.2  # wall seconds between measurement instants (0.1 s of grid time: half speed)
FAILOVER_S = 5.0


async def test_lease_claim_renew_steal_release_as_state_estimation(
    admin_nc: Client, connect_as: ConnectAs
) -> None:
    """What the instances do with gp_leases, with the state_estimation identity's rights."""
    se = await connect_as(permissions.STATE_ESTIMATION)
    kv = await se.jetstream().key_value("gp_leases")
    ttl = (await admin_nc.jetstream().stream_info("KV_gp_leases")).config.max_age
    assert ttl == subjects.LEASES_TTL_S
    a, b = Leases(kv, "a", ttl), Leases(kv, "b", ttl)
    view = LeaseView(kv, ttl)
    await view.start()
    key = f"se.lease_test_{time.time_ns()}"
    la = await a.claim(key)
    assert la is not None
    assert await b.claim(key) is None  # held
    assert await a.renew(la)
    await b.beat("member.state_estimation.b")

    async def seen() -> bool:
        return view.live("se.").get(key) == "a" and "member.state_estimation.b" in view.live("")

    await until("the view shows the lease and the member", seen, within_s=2)
    # taken over behind a's back: a's next renewal fails
    await (await admin_nc.jetstream().key_value("gp_leases")).put(key, b.value())
    assert not await a.renew(la)
    lb = Lease(key=key, revision=(await kv.get(key)).revision or 0, sent_at=time.monotonic())
    # a renewal that landed but whose reply was lost: the next one finds the key still b's
    await kv.update(key, b.value(), last=lb.revision)
    assert await b.renew(lb)
    assert await b.renew(lb)
    await a.release(la)  # a stale lease deletes nothing
    assert (await kv.get(key)).revision == lb.revision
    await b.release(lb)  # leaves a tombstone: a claim must take over from it

    async def gone() -> bool:
        return key not in view.live("se.")

    await until("the view drops the released key", gone, within_s=2)
    la = await a.claim(key)
    assert la is not None
    assert await a.renew(la)
    await view.stop()
    assert bus.stats(se).permission_denied == 0


def test_a_lease_is_used_only_while_it_cannot_have_expired() -> None:
    now = [100.0]
    leases = Leases(None, "a", 3.0, clock=lambda: now[0])  # type: ignore[arg-type]
    lease = Lease(key="se.g", revision=1, sent_at=100.0)
    now[0] = 100.0 + 3.0 - MARGIN_S - 0.01
    assert leases.valid(lease)
    now[0] = 100.0 + 3.0 - MARGIN_S
    assert not leases.valid(lease)
    # a watcher in which the member's own frequent writes stop showing has stalled
    view = LeaseView(None, 3.0, clock=lambda: now[0])  # type: ignore[arg-type]
    view.started_at = 200.0
    now[0] = 201.0
    assert not view.stalled("member.x", 2.0)  # just started
    view.entries["member.x"] = ("x", 201.5)
    now[0] = 203.0
    assert not view.stalled("member.x", 2.0)
    now[0] = 203.5
    assert view.stalled("member.x", 2.0)


async def test_streams_and_buckets_get_the_replicas_the_cluster_has(admin_nc: Client) -> None:
    def peers(info: dict[str, object]) -> int:
        return bus.replicas(SimpleNamespace(_server_info=info))  # type: ignore[arg-type]

    assert peers({}) == 1
    assert peers({"cluster": "c", "connect_urls": ["h1:4222", "h2:4222"]}) == 2
    assert peers({"cluster": "c", "connect_urls": [f"h{i}:4222" for i in range(5)]}) == 3
    assert bus.replicas(admin_nc) == 1  # the test broker runs alone
    info = await admin_nc.jetstream().stream_info("GP_STATE")
    assert info.config.num_replicas == 1


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(
        data_dir=tmp_path_factory.mktemp("scale-out"), port=0, monitor_port=0, mqtt_port=0
    )
    server.start()
    write_endpoints(server.data_dir, server.endpoints)  # for `gridpilot status`
    yield server
    server.stop()


@pytest.fixture
async def admin(broker: EmbeddedNats) -> AsyncIterator[Client]:
    creds = permissions.load_credentials(broker.data_dir)
    nc = await bus.connect(
        broker.url, user=permissions.ADMIN, password=creds[permissions.ADMIN], name="test-admin"
    )
    await bus.ensure_jetstream(nc)
    yield nc
    await nc.close()


def frames(n: int) -> list[list[MeasurementSet]]:
    """``n`` instants of cigre_mv's field reports (PMUs every instant, slower devices when due)."""
    model = grid("cigre_mv")
    placement = default_placement(model)
    twin = Twin(model, placement, seed=3)
    schedule = Schedule(placement, NOON)
    tick = min(d.period_s for d in placement.devices)
    out, seq = [], 0
    for i in range(n):
        t = NOON + i * tick
        twin.step(t)
        sets = []
        for dev in schedule.due(t):
            seq += 1
            sets.append(twin.measure(dev, model.name, seq))
        out.append(sets)
    return out


async def drive(nc: Client, ticks: list[list[MeasurementSet]]) -> None:
    """Publish every grid's reports, an instant every TICK_S, forever (replayed, time going on)."""
    span_ns = int(len(ticks) * 0.1e9)
    i = 0
    while True:
        started = time.monotonic()
        offset = (i // len(ticks)) * span_ns
        for g in GRIDS:
            for mset in ticks[i % len(ticks)]:
                m = msgspec.structs.replace(mset, grid=g, t_ns=mset.t_ns + offset)
                await nc.publish(
                    subjects.MEAS.format(grid=g, source=m.source), msgspec.json.encode(m)
                )
        i += 1
        await asyncio.sleep(max(0.0, TICK_S - (time.monotonic() - started)))


@dataclass(frozen=True)
class Seen:
    at: float  # monotonic
    grid: str
    t_ns: int
    instance: str


class Estimates:
    def __init__(self) -> None:
        self.seen: list[Seen] = []

    async def on_msg(self, msg: Msg) -> None:
        est = msgspec.json.decode(msg.data, type=EstimateRef)  # which grid and instant only
        instance = (msg.headers or {}).get(INSTANCE_HEADER, "")
        self.seen.append(Seen(time.monotonic(), est.grid, est.t_ns, instance))

    def by(self, since: float, until: float = float("inf")) -> dict[str, set[str]]:
        """Which instances published each grid's estimates in [since, until)."""
        out: dict[str, set[str]] = defaultdict(set)
        for s in self.seen:
            if since <= s.at < until:
                out[s.grid].add(s.instance)
        return out


async def leases(nc: Client) -> dict[str, str]:
    """grid -> the instance its lease names."""
    kv = await nc.jetstream().key_value("gp_leases")
    out = {}
    for key in await _keys(kv):
        if key.startswith("se."):
            with contextlib.suppress(Exception):
                entry = await kv.get(key)
                out[key[3:]] = json.loads(entry.value or b"")["instance"]
    return out


async def _keys(kv) -> list[str]:  # type: ignore[no-untyped-def]
    try:
        return list(await kv.keys())
    except Exception:
        return []


async def heartbeats(nc: Client) -> dict[str, Heartbeat]:
    """instance -> its latest heartbeat, for every shared state-estimation instance."""
    kv = await nc.jetstream().key_value("gp_services")
    out = {}
    for key in await _keys(kv):
        if key.startswith("state_estimation."):
            hb = msgspec.json.decode((await kv.get(key)).value or b"", type=Heartbeat)
            out[hb.instance] = hb
    return out


async def until(what: str, cond, within_s: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within_s
    while not await cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within_s} s: {what}")
        await asyncio.sleep(0.1)


def start_instance(broker: EmbeddedNats, log: Path) -> subprocess.Popen[bytes]:
    creds = permissions.load_credentials(broker.data_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPILOT_")}
    env.update(
        GRIDPILOT_NATS_URL=broker.url,
        GRIDPILOT_DATA_DIR=str(broker.data_dir),
        **permissions.service_env(broker.data_dir, permissions.STATE_ESTIMATION),
    )
    assert env[permissions.ENV_PASSWORD] == creds[permissions.STATE_ESTIMATION]
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gridpilot", "run", "state_estimation", "--grid", SHARED],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.mark.slow
async def test_instances_share_grids_fail_over_and_give_up_lost_leases(
    broker: EmbeddedNats, admin: Client, tmp_path: Path
) -> None:
    model = grid("cigre_mv")
    for g in GRIDS:
        renamed = msgspec.structs.replace(model, name=g)
        await distribution.publish(admin, distribution.package(renamed, default_placement(renamed)))
    # a tie switch reported closed before any instance started
    closed = {sw.id: sw.closed for sw in model.switches} | {"sw_1": True}
    topology = SwitchState(grid=GRIDS[-1], t_ns=time.time_ns(), closed=closed)
    await admin.jetstream().publish(subjects.TOPOLOGY.format(grid=GRIDS[-1]), encode(topology))
    estimates = Estimates()
    await admin.subscribe(subjects.STATE.wildcard(), cb=estimates.on_msg)
    driver = asyncio.ensure_future(drive(admin, await asyncio.to_thread(frames, 50)))
    logs = [tmp_path / f"se{i}.log" for i in range(INSTANCES)]
    procs = [start_instance(broker, log) for log in logs]
    try:
        await _scenario(broker, admin, procs, estimates)
    except BaseException:
        for log in logs:
            print(f"--- {log.name}\n{log.read_text()[-3000:]}")
        raise
    finally:
        driver.cancel()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    # the survivors stopped cleanly: they handed their grids back and left no heartbeat row
    assert await leases(admin) == {}
    assert len(await heartbeats(admin)) == 1  # the killed one's, as it last beat


def status_json(data_dir: Path) -> str:
    """What `gridpilot status --json` prints (as the read-only viewer identity)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["status", "--data-dir", str(data_dir), "--json"]) == 0
    return out.getvalue()


async def _scenario(
    broker: EmbeddedNats, admin: Client, procs: list[subprocess.Popen[bytes]], estimates: Estimates
) -> None:
    # -- three instances over six grids: two grids each, each grid from its lease holder ----
    async def shared_out() -> bool:
        held = await leases(admin)
        per = Counter(held.values())
        if set(held) != set(GRIDS) or sorted(per.values()) != [2] * INSTANCES:
            return False
        now = time.monotonic()
        recent = estimates.by(now - 1.0)
        return all(recent.get(g) == {held[g]} for g in GRIDS)

    t0 = time.monotonic()
    await until("each instance estimates two grids", shared_out, within_s=20)
    print(f"three instances share six grids after {time.monotonic() - t0:.1f} s")
    held = await leases(admin)
    beats = await heartbeats(admin)
    assert set(beats) == set(held.values())
    for instance, hb in beats.items():
        assert hb.grid == SHARED
        mine = sorted(g for g, owner in held.items() if owner == instance)
        assert hb.info["grids"] == ",".join(mine), hb.info
        assert hb.info["live_instances"] == INSTANCES
    # the owner of so5 started from the switch states stored in GP_CMD, not the model's
    assert sum(hb.counters.get("topology_changes", 0) for hb in beats.values()) >= 1
    rows = json.loads(await asyncio.to_thread(status_json, broker.data_dir))
    shown = {r["instance"]: r["info"]["grids"] for r in rows if r["service"] == "state_estimation"}
    assert shown == {i: hb.info["grids"] for i, hb in beats.items()}
    pid_of = {hb.instance: hb.pid for hb in beats.values()}

    # -- a lease taken by another holder: its instance stops estimating that grid at once ------
    victim_grid = GRIDS[0]
    loser = held[victim_grid]
    kv = await admin.jetstream().key_value("gp_leases")
    thief = json.dumps({"instance": "thief", "t_ns": time.time_ns()}).encode()
    stolen_at = time.monotonic()
    await kv.put(f"se.{victim_grid}", thief)
    while time.monotonic() - stolen_at < 3.0:  # the thief renews it for 3 s
        await asyncio.sleep(0.5)
        await kv.put(f"se.{victim_grid}", thief)
    released_at = time.monotonic()
    last = max(s.at for s in estimates.seen if s.grid == victim_grid and s.instance == loser)
    print(f"the old owner's last estimate of the stolen grid: {last - stolen_at:+.2f} s on")
    assert last - stolen_at < 1.0
    assert not estimates.by(stolen_at + 1.0, released_at).get(victim_grid)

    async def reclaimed() -> bool:
        return bool(estimates.by(released_at).get(victim_grid))

    await until("the stolen grid, once its lease expired, is estimated again", reclaimed, 8)
    print(
        f"a grid whose lease expired is estimated again {time.monotonic() - released_at:.1f} s on"
    )

    # -- an instance killed: its grids are estimated by the others within 5 s -----------------
    held = await leases(admin)
    victim = next(i for i in set(held.values()) if i != held[victim_grid])
    orphans = {g for g, owner in held.items() if owner == victim}
    proc = next(p for p in procs if p.pid == pid_of[victim])
    proc.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    proc.wait()

    async def taken_over() -> bool:
        by = estimates.by(killed_at)
        return all(by.get(g, set()) - {victim} for g in orphans)

    await until(f"{sorted(orphans)} taken over", taken_over, within_s=FAILOVER_S + 3)
    first = {
        g: min(
            s.at
            for s in estimates.seen
            if s.grid == g and s.at >= killed_at and s.instance != victim
        )
        for g in orphans
    }
    failover = max(first.values()) - killed_at
    each = ", ".join(f"{g} {t - killed_at:.2f} s" for g, t in sorted(first.items()))
    print(f"failover after SIGKILL: {failover:.2f} s ({each})")
    assert failover < FAILOVER_S

    async def rebalanced() -> bool:
        per = Counter((await leases(admin)).values())
        return sorted(per.values()) == [3, 3]

    await until("two instances, three grids each", rebalanced, within_s=5)

    # -- never two instances on one grid: no instant estimated twice, no interleaving ---------
    per_grid: dict[str, list[Seen]] = defaultdict(list)
    for s in estimates.seen:
        per_grid[s.grid].append(s)
    for g, seen in per_grid.items():
        instants = Counter(s.t_ns for s in seen)
        twice = [t for t, n in instants.items() if n > 1]
        assert not twice, f"{g}: {len(twice)} instants estimated twice"
        runs = [seen[0].instance]
        for s in seen[1:]:
            if s.instance != runs[-1]:
                runs.append(s.instance)
        # a handover ends one instance's run; interleaved estimates would make many runs
        assert len(runs) <= 6, (g, runs)
        assert all(s.instance for s in seen)
