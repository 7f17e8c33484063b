"""Estimates on the bus: ids once per layout, values per estimate, every message within the
broker's payload limit (core/estimates.py, the size guard in core/bus.py)."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from pathlib import Path

import msgspec
import nats.errors
import numpy as np
import pytest
from nats.aio.client import Client

from gridpilot.core import bus, subjects
from gridpilot.core.config import ServiceConfig
from gridpilot.core.errors import PayloadError
from gridpilot.core.estimates import (
    LAYOUT_PLAIN_MAX,
    EstimateReader,
    EstimateWriter,
    LayoutNotFoundError,
    decode_layout,
    encode_layout,
    expand,
    layout_key,
)
from gridpilot.core.schemas import (
    BranchStates,
    BusStates,
    EstimateStatus,
    EstimateValues,
    Heartbeat,
    ServiceState,
    StateEstimate,
    decode,
    encode,
)
from gridpilot.core.service import Service
from gridpilot.platform import permissions
from gridpilot.platform.broker import EmbeddedNats
from tests.conftest import ConnectAs
from tests.pipeline import Pipeline

HALF_MIB = 512 * 1024  # half of NATS's default max_payload: what an estimate may take


def estimate(
    *, buses: int = 3, t_ns: int = 1, sensors: list[str] | None = None, missing: list[str] = ()
) -> StateEstimate:
    ids = [f"bus_{i}" for i in range(buses)]
    names = sensors if sensors is not None else ["pmu_1/bus_0/voltage/bus"]
    return StateEstimate(
        grid="g",
        t_ns=t_ns,
        status=EstimateStatus.CONVERGED,
        buses=BusStates(
            id=ids,
            v_pu=[1.0123456789] * buses,
            va_deg=[-0.123456789] * buses,
            p_mw=[0.0037761] * buses,
            q_mvar=[-0.0000004] * buses,
        ),
        branches=BranchStates(
            id=["line_0"],
            p_from_mw=[12.3456789],
            q_from_mvar=[-1.0],
            p_to_mw=[-12.3],
            q_to_mvar=[0.9],
            i_from_ka=[0.0412346],
            loading_pct=[55.123456],
        ),
        residual_sensor=names,
        residual_norm=[0.5] * len(names),
        missing_sources=list(missing),
    )


def round_trip(writer: EstimateWriter, est: StateEstimate) -> StateEstimate:
    values, _ = writer.encode(est)
    return expand(decode(encode(values), EstimateValues), writer.layout)


@pytest.mark.parametrize("name", ["cigre_mv", "lv_rural", "mv_rural"])
def test_estimates_come_back_unchanged_but_for_loading_rounding(name: str) -> None:
    """The values are rounded to what they mean when the estimator makes them; the wire keeps
    exactly those (integers in W decode to the same doubles); loading goes to 1e-3 %."""
    raw = Pipeline(name, wire=False).run(1.0).estimates
    back = Pipeline(name, wire=True).run(1.0).estimates
    assert len(raw) == len(back) >= 5
    for a, b in zip(raw, back, strict=True):
        assert a.buses is not None and b.buses is not None
        assert a.branches is not None and b.branches is not None
        assert b.buses == a.buses
        loading = np.round(a.branches.loading_pct, 3).tolist()
        assert b.branches == msgspec.structs.replace(a.branches, loading_pct=loading)
        assert dict(zip(b.residual_sensor, b.residual_norm, strict=True)) == dict(
            zip(a.residual_sensor, a.residual_norm, strict=True)
        )
        assert (b.missing_sources, b.bad_data, b.objective) == (
            a.missing_sources,
            a.bad_data,
            a.objective,
        )


def test_values_are_rounded_to_their_meaning_and_non_finite_ones_travel_as_null() -> None:
    est = estimate()
    nan = float("nan")
    assert est.buses is not None
    with_nan = msgspec.structs.replace(
        est, buses=msgspec.structs.replace(est.buses, v_pu=[nan, 1.0, 1.0], p_mw=[nan, 0.0, 1.0])
    )
    writer = EstimateWriter("g")
    values, _ = writer.encode(with_nan)
    assert values.buses is not None and values.branches is not None
    wire = decode(encode(values), EstimateValues)  # NaN is written as null
    assert wire.buses is not None and wire.buses.v_pu == [None, 1.0, 1.0]
    assert values.buses.p_w == [None, 0, 1_000_000]
    assert values.buses.q_var == [0, 0, 0]  # -0.4 var: whole var
    assert values.branches.p_from_w == [12_345_679] and values.branches.i_from_ma == [41_235]
    assert values.branches.loading_pct == [55.123]
    back = expand(wire, writer.layout)
    assert back.buses is not None
    assert math.isnan(back.buses.v_pu[0]) and math.isnan(back.buses.p_mw[0])
    assert back.buses.v_pu[1:] == [1.0, 1.0] and back.buses.p_mw[1:] == [0.0, 1.0]
    assert back.buses.va_deg == [-0.12346] * 3


def test_a_layout_changes_with_the_ids_not_with_each_estimate() -> None:
    expected = ["pmu_1/bus_0/voltage/bus", "rtu_1/line_0/power/from"]
    writer = EstimateWriter("g", sensors=expected, sources=["pmu_1", "rtu_1"])
    _, first = writer.encode(estimate(sensors=expected[:1]))
    assert first is not None and first.sensor == expected and first.source == ["pmu_1", "rtu_1"]
    # another estimate, other sensors in use, a device missing: the same layout
    values, new = writer.encode(estimate(t_ns=2, sensors=expected[1:], missing=["pmu_1"]))
    assert new is None and values.layout == first.id
    assert values.residual_norm == [None, 0.5] and values.missing == [0]
    # a new topology (other bus ids): a new layout; back to the old ids: the old id again
    _, other = writer.encode(estimate(buses=4, t_ns=3))
    assert other is not None and other.id != first.id
    _, again = writer.encode(estimate(t_ns=4))
    assert again is not None and again.id == first.id
    # a second writer (another instance taking the grid over) names the same layout alike
    twin = EstimateWriter("g", sensors=expected, sources=["pmu_1", "rtu_1"])
    assert twin.encode(estimate())[1] == first


def test_names_the_layout_lacks_are_appended_never_lost() -> None:
    writer = EstimateWriter("g", sensors=["pmu_1/bus_0/voltage/bus"], sources=["pmu_1"])
    writer.encode(estimate())
    surprise = ["pmu_1/bus_0/voltage/bus", "pmu_9/bus_1/voltage/bus"]
    est = estimate(t_ns=2, sensors=surprise, missing=["pmu_9"])
    values, new = writer.encode(est)
    assert new is not None and new.sensor == surprise and new.source == ["pmu_1", "pmu_9"]
    back = expand(decode(encode(values), EstimateValues), writer.layout)
    assert back.residual_sensor == surprise and back.missing_sources == ["pmu_9"]


def test_not_converged_estimates_need_no_layout() -> None:
    failed = StateEstimate(grid="g", t_ns=1, status=EstimateStatus.NOT_OBSERVABLE, message="no V")
    writer = EstimateWriter("g")
    values, layout = writer.encode(failed)
    assert layout is None and values.layout == ""
    assert expand(decode(encode(values), EstimateValues), None) == failed


def test_values_that_do_not_fit_their_layout_are_refused() -> None:
    writer = EstimateWriter("g")
    values, layout = writer.encode(estimate())
    assert layout is not None
    assert values.buses is not None
    short = msgspec.structs.replace(values, buses=msgspec.structs.replace(values.buses, v_pu=[1.0]))
    with pytest.raises(PayloadError, match="1 values for the layout's 3 buses"):
        expand(short, layout)
    with pytest.raises(PayloadError, match="needs layout"):
        expand(values, None)
    with pytest.raises(PayloadError, match="missing source"):
        expand(msgspec.structs.replace(values, missing=[5]), layout)


def test_large_layouts_are_compressed_small_ones_stay_readable() -> None:
    small = EstimateWriter("g").encode(estimate())[1]
    assert small is not None
    assert encode_layout(small) == encode(small)  # plain JSON
    big = EstimateWriter("g").encode(estimate(buses=20_000))[1]
    assert big is not None
    data = encode_layout(big)
    assert len(encode(big)) > LAYOUT_PLAIN_MAX and len(data) < len(encode(big)) / 3
    assert decode_layout(data, where="k") == big
    with pytest.raises(PayloadError, match="not a layout"):
        decode_layout(b"\x78garbage", where="k")


@pytest.mark.slow
def test_mvlv_rural_estimates_take_under_half_the_payload_limit() -> None:
    """The largest built-in grid: 1 MB per estimate with its ids (the broker refused it)."""
    pipe = Pipeline("mvlv_rural")
    run = pipe.run(0.3)
    assert len(run.estimates) == 3
    full = max(len(encode(e)) for e in run.estimates)
    print(f"mvlv_rural: {max(run.sizes)} bytes per estimate, {full} with the ids inline")
    assert max(run.sizes) < HALF_MIB < full
    assert pipe.writer.layout is not None
    assert len(encode_layout(pipe.writer.layout)) < HALF_MIB


# -- on a real broker ---------------------------------------------------------------------------
async def put_layout(nc: Client, writer: EstimateWriter, est: StateEstimate) -> EstimateValues:
    values, layout = writer.encode(est)
    assert layout is not None
    kv = await nc.jetstream().key_value(subjects.STATE_BUCKET)
    await kv.put(layout_key(layout.grid, layout.id), encode_layout(layout))
    return values


async def test_readers_fetch_a_layout_once_and_name_one_that_is_missing(
    admin_nc: Client, connect_as: ConnectAs
) -> None:
    writer = EstimateWriter("g")
    values = await put_layout(admin_nc, writer, estimate())
    for identity in (
        permissions.MONITORING,
        permissions.HISTORIAN,
        permissions.WEB,
        permissions.VIEWER,
    ):
        reader = EstimateReader(await connect_as(identity))
        first = await reader.read(encode(values))
        again = await reader.expand(values)
        assert (
            first == again
            and first.buses is not None
            and first.buses.id == ["bus_0", "bus_1", "bus_2"]
        )
        assert reader.layouts_read == 1, identity
    unknown = msgspec.structs.replace(values, layout="0123456789abcdef")
    with pytest.raises(LayoutNotFoundError, match=r"layout\.g\.0123456789abcdef"):
        await EstimateReader(admin_nc).expand(unknown)


async def test_state_estimation_may_write_layouts_and_others_may_not(
    connect_as: ConnectAs, admin_nc: Client
) -> None:
    writer = EstimateWriter("g")
    values = await put_layout(await connect_as(permissions.STATE_ESTIMATION), writer, estimate())
    assert values.layout
    monitoring = await connect_as(permissions.MONITORING)
    kv = await monitoring.jetstream(timeout=2.0).key_value(subjects.STATE_BUCKET)
    with pytest.raises(Exception):  # noqa: B017 (refused: a time-out or a denial)
        await kv.put(layout_key("g", "forged"), b"{}")


def _blob(size: int) -> bytes:
    return b'"' + b"x" * (size - 2) + b'"'


async def test_the_size_guard_counts_headers_as_the_server_does(admin_nc: Client) -> None:
    """A message of exactly max_payload bytes (payload and header block) is delivered; one
    byte more is refused by the guard, counted, never sent."""
    limit = admin_nc.max_payload
    headers = {"Gp-Instance": "abcdef12"}
    got: list[int] = []

    async def on_msg(msg) -> None:  # type: ignore[no-untyped-def]
        got.append(len(msg.data))

    await admin_nc.subscribe("test.size", cb=on_msg)
    overhead = bus.message_size(b"", headers)
    fits = _blob(limit - overhead)
    counters: Counter[str] = Counter()
    assert bus.refuse_oversize(admin_nc, "test.size", fits, headers, counters=counters) == 0
    await admin_nc.publish("test.size", fits, headers=headers)
    await bus.barrier(admin_nc)
    deadline = time.monotonic() + 5
    while not got:
        assert time.monotonic() < deadline, "the message at the limit was not delivered"
        await asyncio.sleep(0.02)
    assert admin_nc.is_connected and got == [len(fits)]
    over = _blob(limit - overhead + 1)
    size = bus.refuse_oversize(admin_nc, "test.size", over, headers, counters=counters)
    assert size == limit + 1 and counters["dropped_oversize"] == 1


async def test_without_the_guard_headers_over_the_limit_cost_the_connection(
    nats_server: EmbeddedNats, credentials: dict[str, str], connect_as: ConnectAs
) -> None:
    """What happened to the estimator on mvlv_rural: nats-py checks the payload alone, the
    server counts the headers too and drops the connection, and nats-py gives it up. A
    connection made with core.bus.connect refuses such a message and keeps its connection."""
    raw = Client()  # nats-py as it comes, not core.bus.connect
    closed = asyncio.Event()

    async def on_closed() -> None:
        closed.set()

    await raw.connect(
        nats_server.url,
        user=permissions.ADMIN,
        password=credentials[permissions.ADMIN],
        allow_reconnect=False,
        closed_cb=on_closed,
    )
    payload = _blob(raw.max_payload - 10)  # below the limit, the headers take it over
    await raw.publish("test.size", payload, headers={"Gp-Instance": "abcdef12"})
    await asyncio.wait_for(closed.wait(), 5)
    assert not raw.is_connected

    guarded = await connect_as(permissions.ADMIN)
    with pytest.raises(nats.errors.MaxPayloadError):
        await guarded.publish("test.size", payload, headers={"Gp-Instance": "abcdef12"})
    await guarded.flush()
    assert guarded.is_connected
    assert bus.stats(guarded).dropped_oversize == 1


async def test_a_service_refuses_an_oversized_message_and_keeps_its_connection(
    connect_as: ConnectAs, tmp_path: Path
) -> None:
    config = ServiceConfig(nats_url="", user=None, password=None, grid="g", data_dir=tmp_path)
    svc = Service(config)
    svc.nc = await connect_as(permissions.ADMIN)
    huge = Heartbeat(
        service="x",
        grid="g",
        instance="i",
        pid=1,
        state=ServiceState.RUNNING,
        t_ns=0,
        uptime_s=0.0,
        info={"blob": "x" * svc.nc.max_payload},
    )
    await svc.publish("test.size", huge)
    assert svc.counters["dropped_oversize"] == 1 and svc.counters["msgs_out"] == 0
    await bus.barrier(svc.nc)
    assert svc.nc.is_connected
