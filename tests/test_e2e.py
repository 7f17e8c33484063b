"""The whole platform as a user starts it: ``gridpilot up`` in a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import numpy as np
import pytest

from gridpilot.core import subjects
from gridpilot.core.bus import connect
from gridpilot.core.estimates import EstimateReader
from gridpilot.core.schemas import (
    EstimateStatus,
    Heartbeat,
    HistoryQuery,
    HistoryReply,
    SeriesRef,
    SimTruth,
    StateEstimate,
    decode,
    encode,
)
from gridpilot.platform import permissions
from gridpilot.platform.catalog import SERVICES

pytestmark = pytest.mark.slow


@pytest.fixture
def platform_up(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    data_dir = tmp_path / "gp"
    log = (tmp_path / "up.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gridpilot", "up", "--data-dir", str(data_dir), "--no-live"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    yield proc, data_dir
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    log.close()


async def _admin(data_dir: Path):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 30
    while not (data_dir / "endpoints.json").exists():
        assert time.monotonic() < deadline, "endpoints.json never appeared"
        await asyncio.sleep(0.1)
    url = json.loads((data_dir / "endpoints.json").read_text())["nats"]
    password = permissions.service_password(data_dir, permissions.ADMIN)
    return await connect(url, user="admin", password=password, name="e2e", startup_timeout=10)


async def test_up_estimates_survive_a_killed_estimator_and_stop_cleanly(
    platform_up: tuple[subprocess.Popen[bytes], Path],
) -> None:
    proc, data_dir = platform_up
    started = time.monotonic()
    nc = await _admin(data_dir)
    states: list[tuple[float, StateEstimate]] = []
    reader = EstimateReader(nc)
    truths: dict[int, SimTruth] = {}
    beats: dict[str, Heartbeat] = {}

    async def on_state(msg) -> None:  # type: ignore[no-untyped-def]
        states.append((time.monotonic(), await reader.read(msg.data)))

    async def on_truth(msg) -> None:  # type: ignore[no-untyped-def]
        t = msgspec.json.decode(msg.data, type=SimTruth)
        truths[t.t_ns] = t

    async def on_beat(msg) -> None:  # type: ignore[no-untyped-def]
        hb = msgspec.json.decode(msg.data, type=Heartbeat)
        beats[hb.service] = hb

    await nc.subscribe(subjects.STATE.format(grid="cigre_mv"), cb=on_state)
    await nc.subscribe(subjects.TRUTH.format(grid="cigre_mv"), cb=on_truth)
    await nc.subscribe(subjects.HEARTBEAT.wildcard(), cb=on_beat)
    try:
        while not states:
            assert time.monotonic() - started < 20, "no state estimate within 20 s of 'up'"
            assert proc.poll() is None, "gridpilot up exited"
            await asyncio.sleep(0.1)
        first_after_s = time.monotonic() - started
        await asyncio.sleep(10)  # ten seconds of estimates at 10 per second
        window = [s for _, s in states]
        assert len(window) >= 80
        assert all(s.status is EstimateStatus.CONVERGED for s in window)
        errors = [
            float(np.max(np.abs(np.subtract(s.buses.v_pu, truths[s.t_ns].buses.v_pu))))
            for s in window
            if s.t_ns in truths and s.buses is not None
        ]
        assert len(errors) >= 70 and max(errors) < 0.005

        # SIGKILL the estimator: the supervisor restarts it and estimates resume within 5 s
        pid = beats["state_estimation"].pid
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        await asyncio.sleep(0.3)
        n = len(states)
        while len(states) == n or states[-1][0] <= killed + 0.3:
            assert time.monotonic() - killed < 5.0, "estimates did not resume within 5 s"
            await asyncio.sleep(0.05)
        resumed_s = states[-1][0] - killed
        print(f"first estimate {first_after_s:.1f} s after up; resumed {resumed_s:.2f} s after")

        status = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "gridpilot", "status", "--json", "--data-dir", str(data_dir)],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        rows = {r["service"]: r for r in json.loads(status.stdout)}
        assert set(rows) == set(SERVICES)
        assert all(r["state"] == "running" and r["heartbeat_age_s"] < 3 for r in rows.values())
        assert rows["state_estimation"]["pid"] != pid

        # the historian (SQLite in the data dir) holds the estimates: ask for the latest
        v6 = SeriesRef(kind="est", mrid="bus_6", quantity="v_pu")
        query = HistoryQuery(series=[v6], latest=True)
        msg = await nc.request(
            subjects.HISTORY_QUERY.format(grid="cigre_mv"), encode(query), timeout=10
        )
        reply = decode(msg.data, HistoryReply)
        assert reply.ok, reply.error
        assert time.time_ns() - reply.data[0].t_ns[0] < 5e9
        assert (data_dir / "historian.sqlite").stat().st_size > 0
    finally:
        await nc.close()

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    # every child is gone with it
    for service in rows:
        with contextlib.suppress(KeyError):
            child = beats[service].pid
            with pytest.raises(ProcessLookupError):
                os.kill(child, 0)
