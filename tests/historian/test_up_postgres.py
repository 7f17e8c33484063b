"""``gridpilot up --db postgresql://...``: the historian of the running platform on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import pytest

from gridpilot.core import subjects
from gridpilot.core.bus import connect
from gridpilot.core.schemas import HistoryQuery, HistoryReply, SeriesRef, decode, encode
from gridpilot.platform import permissions
from gridpilot.services.historian.backends import open_store

pytestmark = pytest.mark.slow


def start_up(data_dir: Path, db: str, log: IO[bytes]) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "gridpilot", "up", "--data-dir", str(data_dir), "--no-live"]
    return subprocess.Popen([*cmd, "--db", db], stdout=log, stderr=subprocess.STDOUT)


async def test_up_with_postgres_stores_estimates_and_measurements(
    tmp_path: Path, pg_url: str
) -> None:
    data_dir = tmp_path / "gp"
    log = (tmp_path / "up.log").open("wb")
    proc = start_up(data_dir, pg_url, log)
    try:
        deadline = time.monotonic() + 30
        while not (data_dir / "endpoints.json").exists():
            assert time.monotonic() < deadline and proc.poll() is None, "up did not start"
            await asyncio.sleep(0.1)
        url = json.loads((data_dir / "endpoints.json").read_text())["nats"]
        password = permissions.service_password(data_dir, permissions.VIEWER)
        nc = await connect(url, user="viewer", password=password, name="t", startup_timeout=10)
        try:
            query = HistoryQuery(
                series=[
                    SeriesRef(kind="est", mrid="bus_6", quantity="v_pu"),
                    SeriesRef(kind="meas", mrid="bus_6", quantity="bus.v_pu"),
                ],
                latest=True,
            )
            reply = HistoryReply(ok=False, error="no answer yet")
            while time.monotonic() < deadline + 30:
                try:
                    msg = await nc.request(
                        subjects.HISTORY_QUERY.format(grid="cigre_mv"), encode(query), timeout=2
                    )
                    reply = decode(msg.data, HistoryReply)
                except Exception as exc:  # the historian is not up yet
                    reply = HistoryReply(ok=False, error=repr(exc))
                if reply.ok and all(d.t_ns for d in reply.data):
                    break
                await asyncio.sleep(0.5)
            assert reply.ok, reply.error
            assert all(abs(d.value[0] - 1.0) < 0.1 for d in reply.data)
        finally:
            await nc.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        log.close()
    store = open_store(pg_url)  # it really was PostgreSQL, not the SQLite default
    try:
        assert store.count_samples("cigre_mv") > 0
    finally:
        store.close()
    assert not (data_dir / "historian.sqlite").exists()
