"""The historian service on a real broker and real databases: ingest from the streams, the
query API over request/reply, and no loss or duplicate across SIGKILLs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client

from gridpilot.core import schemas as s
from gridpilot.core import subjects
from gridpilot.core.bus import ensure_jetstream
from gridpilot.core.config import ServiceConfig
from gridpilot.platform.broker import EmbeddedNats
from gridpilot.platform.permissions import HISTORIAN
from gridpilot.services.historian.backends import open_store
from gridpilot.services.historian.service import HistorianService
from tests.estimates import publish_estimate

HOUR_NS = 3600 * 10**9
T0 = (time.time_ns() // HOUR_NS - 1) * HOUR_NS  # the last whole hour: within raw retention


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "historian.sqlite")
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def grid() -> str:
    """A grid of its own per test: the consumers (and streams' subjects) are per grid."""
    return f"h{uuid.uuid4().hex[:8]}"


def config(nats_server: EmbeddedNats, password: str, grid: str, tmp_path: Path, db: str):
    return ServiceConfig(
        nats_url=nats_server.url,
        user=HISTORIAN,
        password=password,
        grid=grid,
        data_dir=tmp_path,
        heartbeat_s=0.2,
        db_url=db,
    )


@pytest.fixture
async def historian(
    admin_nc: Client,
    nats_server: EmbeddedNats,
    credentials: dict[str, str],
    grid: str,
    tmp_path: Path,
    db_url: str,
) -> AsyncIterator[HistorianService]:
    await ensure_jetstream(admin_nc)
    svc = HistorianService(config(nats_server, credentials[HISTORIAN], grid, tmp_path, db_url))
    task = asyncio.create_task(svc.run(install_signals=False))
    yield svc
    svc.stop()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(task, 10)


def mset(grid: str, i: int, *, source: str = "pmu_1", mrid: str = "bus_1") -> s.MeasurementSet:
    t = T0 + i * 100_000_000
    m = s.Measurement(
        mrid=mrid,
        measurand=s.Measurand.VOLTAGE,
        terminal=s.Terminal.BUS,
        t_ns=t,
        v_pu=1.0 + (i % 10) / 1000,
        source=source,
    )
    return s.MeasurementSet(
        grid=grid, source=source, kind=s.DeviceKind.PMU, t_ns=t, seq=i, measurements=[m]
    )


async def until(pred: Callable[[], bool], within_s: float = 20.0) -> None:
    deadline = time.monotonic() + within_s
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.05)


async def ask(nc: Client, subject: str, req: msgspec.Struct, reply: type) -> object:
    msg = await nc.request(subject, s.encode(req), timeout=10)
    return s.decode(msg.data, reply)


async def test_stores_every_stream_and_answers_queries(
    historian: HistorianService, admin_nc: Client, grid: str
) -> None:
    js = admin_nc.jetstream()
    for i in range(1200):  # two minutes of 10 frames/s
        await js.publish(subjects.MEAS.format(grid=grid, source="pmu_1"), s.encode(mset(grid, i)))
    await js.publish(subjects.MEAS.format(grid=grid, source="pmu_1"), b'{"not": "a set"}')
    est = s.StateEstimate(
        grid=grid,
        t_ns=T0,
        status=s.EstimateStatus.CONVERGED,
        buses=s.BusStates(
            id=["bus_1", "bus_2"], v_pu=[1.01, 0.99], va_deg=[0, -1], p_mw=[1, 2], q_mvar=[0, 0]
        ),
    )
    thinned = msgspec.structs.replace(est, t_ns=T0 + 100_000_000)  # same second: not stored
    for e in (est, thinned):
        await publish_estimate(admin_nc, e, stream=True)
    alarm = s.Alarm(
        id="voltage_low:bus_2",
        grid=grid,
        kind=s.AlarmKind.VOLTAGE_LOW,
        mrid="bus_2",
        state=s.AlarmState.RAISED,
        severity=s.Severity.CRITICAL,
        value=0.89,
        limit=0.9,
        raised_t_ns=T0,
        t_ns=T0,
    )
    cmd = s.Command(
        id="c1",
        grid=grid,
        kind=s.CommandKind.SWITCH,
        target="sw_1",
        issued_by="op",
        t_ns=T0,
        closed=False,
    )
    for subject, obj in (
        (subjects.ALARM.format(grid=grid), alarm),
        (subjects.ALARM.format(grid=grid), alarm),  # a duplicate publish: stored once
        (subjects.COMMAND.format(grid=grid, target="sw_1"), cmd),
    ):
        await js.publish(subject, s.encode(obj))

    await until(lambda: historian.counters["samples_new"] >= 1200 + 8)
    # the duplicate may land in a later batch than the two new events: wait for all three
    await until(
        lambda: historian.counters["events_new"] + historian.counters["events_duplicate"] >= 3
    )
    await until(lambda: historian.counters["dropped_bad_payload"] >= 1)
    # the thinned estimate comes after the stored one on GP_STATE, but may be handled after
    # the samples above were counted: wait for it, then check it was thinned once
    await until(lambda: historian.counters["estimates_thinned"] >= 1)
    assert historian.counters["estimates_thinned"] == 1
    assert historian.counters["events_duplicate"] == 1
    assert historian.counters["events_new"] == 2

    nc = admin_nc
    series = await ask(
        nc, subjects.HISTORY_SERIES.format(grid=grid), s.SeriesRequest(), s.SeriesReply
    )
    assert isinstance(series, s.SeriesReply) and series.ok
    assert s.SeriesRef(kind="meas", mrid="bus_1", quantity="bus.v_pu", source="pmu_1") in (
        series.series
    )
    assert len([r for r in series.series if r.kind == "est"]) == 8  # two buses, four quantities

    v = s.SeriesRef(kind="meas", mrid="bus_1", quantity="bus.v_pu")
    t1 = T0 + 120 * 10**9
    raw = await ask(
        nc,
        subjects.HISTORY_QUERY.format(grid=grid),
        s.HistoryQuery(series=[v], t_from_ns=T0, t_to_ns=t1, limit=1000),
        s.HistoryReply,
    )
    assert isinstance(raw, s.HistoryReply) and raw.ok, raw
    [data] = raw.data
    assert len(data.t_ns) == 1000 and data.truncated and data.t_ns[0] == T0
    agg = await ask(
        nc,
        subjects.HISTORY_QUERY.format(grid=grid),
        s.HistoryQuery(series=[v], t_from_ns=T0, t_to_ns=t1, bucket_s=60),
        s.HistoryReply,
    )
    assert isinstance(agg, s.HistoryReply) and agg.ok
    [minutes] = agg.data
    assert minutes.count == [600, 600]
    assert minutes.min == [1.0, 1.0] and minutes.max == pytest.approx([1.009, 1.009])
    assert minutes.avg == pytest.approx([1.0045, 1.0045])
    latest = await ask(
        nc,
        subjects.HISTORY_QUERY.format(grid=grid),
        s.HistoryQuery(
            series=[v, s.SeriesRef(kind="est", mrid="bus_2", quantity="v_pu")], latest=True
        ),
        s.HistoryReply,
    )
    assert isinstance(latest, s.HistoryReply) and latest.ok
    assert [d.t_ns for d in latest.data] == [[T0 + 1199 * 100_000_000], [T0]]
    assert latest.data[1].value == [0.99]
    events = await ask(
        nc,
        subjects.HISTORY_EVENTS.format(grid=grid),
        s.EventsQuery(t_from_ns=T0, t_to_ns=t1),
        s.EventsReply,
    )
    assert isinstance(events, s.EventsReply) and events.ok
    assert sorted(e.kind for e in events.events) == ["alarm", "command"]
    assert s.decode(events.events[0].payload.encode(), s.Alarm).mrid == "bus_2" or (
        s.decode(events.events[1].payload.encode(), s.Alarm).mrid == "bus_2"
    )


async def test_estimates_are_stored_with_their_layout_and_unknown_layouts_dropped(
    historian: HistorianService, admin_nc: Client, grid: str
) -> None:
    orphan = s.EstimateValues(
        grid=grid,
        t_ns=T0,
        status=s.EstimateStatus.CONVERGED,
        layout="0" * 16,  # no such layout in KV gp_state
        buses=s.BusValues(v_pu=[1.0], va_deg=[0.0], p_w=[0], q_var=[0]),
    )
    await admin_nc.jetstream().publish(subjects.STATE.format(grid=grid), s.encode(orphan))
    est = s.StateEstimate(
        grid=grid,
        t_ns=T0 + 10**9,  # a second later: not thinned
        status=s.EstimateStatus.CONVERGED,
        buses=s.BusStates(id=["bus_7"], v_pu=[0.98], va_deg=[-2.5], p_mw=[0.004], q_mvar=[0]),
    )
    await publish_estimate(admin_nc, est, stream=True)
    await until(lambda: historian.counters["samples_new"] >= 4)
    assert historian.counters["dropped_bad_payload"] == 1
    query = s.HistoryQuery(
        series=[s.SeriesRef(kind="est", mrid="bus_7", quantity="p_mw", source="se")],
        t_from_ns=T0,
        t_to_ns=T0 + 10 * 10**9,
    )
    reply = await ask(admin_nc, subjects.HISTORY_QUERY.format(grid=grid), query, s.HistoryReply)
    assert isinstance(reply, s.HistoryReply) and reply.ok, reply
    assert reply.data[0].t_ns == [T0 + 10**9] and reply.data[0].value == [0.004]


async def test_bad_queries_get_clear_errors(
    historian: HistorianService, admin_nc: Client, grid: str
) -> None:
    await until(lambda: historian.state is s.ServiceState.RUNNING)
    subject = subjects.HISTORY_QUERY.format(grid=grid)
    cases = [
        (s.HistoryQuery(series=[]), "at least one series"),
        (
            s.HistoryQuery(series=[s.SeriesRef(kind="x", mrid="a", quantity="v")], latest=True),
            "unknown series kind 'x'",
        ),
        (
            s.HistoryQuery(
                series=[s.SeriesRef(kind="est", mrid="nowhere", quantity="v_pu")], latest=True
            ),
            "no est series nowhere/v_pu",
        ),
        (
            s.HistoryQuery(
                series=[s.SeriesRef(kind="est", mrid="b", quantity="v_pu", source="se")],
                t_from_ns=5,
                t_to_ns=5,
            ),
            "empty time range",
        ),
        (
            s.HistoryQuery(
                series=[s.SeriesRef(kind="est", mrid="b", quantity="v_pu", source="se")],
                t_from_ns=0,
                t_to_ns=365 * 86400 * 10**9,
                bucket_s=1,
            ),
            "buckets asked for",
        ),
    ]
    for query, error in cases:
        reply = await ask(admin_nc, subject, query, s.HistoryReply)
        assert isinstance(reply, s.HistoryReply) and not reply.ok and error in reply.error
    msg = await admin_nc.request(subject, b'{"series": 3}', timeout=5)
    assert b"bad request" in msg.data
    assert historian.counters["queries_refused"] == len(cases)


async def test_out_of_range_queries_and_store_failures_still_get_answers(
    historian: HistorianService, admin_nc: Client, grid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bucket of 10**18 s once overflowed in the store and the historian never replied (the
    API then timed out with 503): ranges are checked first, and any failure is an answer."""
    await until(lambda: historian.state is s.ServiceState.RUNNING)
    subject = subjects.HISTORY_QUERY.format(grid=grid)
    ref = s.SeriesRef(kind="est", mrid="b", quantity="v_pu", source="se")
    cases = [
        (s.HistoryQuery(series=[ref], t_to_ns=10**9, bucket_s=10**18), "bucket_s must be within"),
        (s.HistoryQuery(series=[ref], t_from_ns=-(2**62), t_to_ns=10**9), "t_from_ns must be"),
        (s.HistoryQuery(series=[ref], t_to_ns=10**9, limit=0), "limit must be within 1.."),
    ]
    for query, error in cases:
        reply = await ask(admin_nc, subject, query, s.HistoryReply)
        assert isinstance(reply, s.HistoryReply) and not reply.ok and error in reply.error

    def broken(*_: object, **__: object) -> object:
        raise RuntimeError("the store lost its mind")

    monkeypatch.setattr(historian.store, "aggregate", broken)
    reply = await ask(
        admin_nc, subject, s.HistoryQuery(series=[ref], t_to_ns=10**9, bucket_s=60), s.HistoryReply
    )
    assert isinstance(reply, s.HistoryReply) and not reply.ok
    assert "RuntimeError: the store lost its mind" in reply.error
    assert historian.counters["query_errors"] == 1
    assert historian.counters["queries_refused"] == len(cases) + 1


def run_historian(
    nats_server: EmbeddedNats, password: str, grid: str, data_dir: Path, db: str
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPILOT_")}
    env.update(
        GRIDPILOT_NATS_URL=nats_server.url,
        GRIDPILOT_NATS_USER=HISTORIAN,
        GRIDPILOT_NATS_PASSWORD=password,
        GRIDPILOT_DATA_DIR=str(data_dir),
        GRIDPILOT_DB=db,
    )
    return subprocess.Popen(
        [sys.executable, "-m", "gridpilot", "run", "historian", "--grid", grid],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(data_dir / f"historian-{time.monotonic_ns()}.log").open("wb"),
    )


@pytest.mark.slow
async def test_sigkill_during_ingest_loses_nothing_and_duplicates_nothing(
    admin_nc: Client,
    nats_server: EmbeddedNats,
    credentials: dict[str, str],
    grid: str,
    tmp_path: Path,
    db_url: str,
) -> None:
    await ensure_jetstream(admin_nc)
    n = 6000
    js = admin_nc.jetstream()
    proc = run_historian(nats_server, credentials[HISTORIAN], grid, tmp_path, db_url)
    kills = 0
    try:
        for i in range(n):
            await js.publish(
                subjects.MEAS.format(grid=grid, source="pmu_1"), s.encode(mset(grid, i))
            )
            if i % 1500 == 750:  # mid-stream: kill it hard, start it again
                await asyncio.sleep(0.3)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                proc = run_historian(nats_server, credentials[HISTORIAN], grid, tmp_path, db_url)
        store = open_store(db_url)
        try:
            try:
                await until(lambda: store.count_samples(grid) >= n, within_s=60)
            except TimeoutError:
                raise AssertionError(f"{store.count_samples(grid)} of {n} stored") from None
            await asyncio.sleep(1.0)  # anything redelivered late would show up as extra rows
            assert store.count_samples(grid) == n
            key = next(k for k in store.series(grid) if k.quantity == "bus.v_pu")
            got = store.raw([key], T0, T0 + n * 100_000_000, limit=n + 10)[key]
            assert got.t_ns == [T0 + i * 100_000_000 for i in range(n)]
        finally:
            store.close()
    finally:
        proc.terminate()
        proc.wait(10)
    assert kills == 4
