"""``gridpilot init`` and ``gridpilot health`` (what containers run instead of the supervisor)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest
from nats.aio.client import Client

from gridpilot.cli import main
from gridpilot.core.bus import stats
from gridpilot.core.config import ServiceConfig
from gridpilot.model import distribution
from gridpilot.platform.broker import EmbeddedNats
from gridpilot.platform.ops import health, init_platform
from gridpilot.services.monitoring.service import MonitoringService
from tests.conftest import ConnectAs


async def test_init_publishes_the_model_and_health_reads_heartbeats(
    admin_nc: Client,
    connect_as: ConnectAs,
    nats_server: EmbeddedNats,
    credentials: dict[str, str],
    tmp_path: Path,
) -> None:
    done = await init_platform(admin_nc, "cigre_mv", tmp_path)
    assert done[-1].startswith("published cigre_mv: 15 buses")
    assert (await distribution.fetch(admin_nc, "cigre_mv")).model.name == "cigre_mv"

    svc = MonitoringService(
        ServiceConfig(
            nats_url=nats_server.url, user="monitoring", password=credentials["monitoring"],
            grid="cigre_mv", data_dir=tmp_path, heartbeat_s=0.2,
        )
    )  # fmt: skip
    task = asyncio.create_task(svc.run(install_signals=False))
    try:
        probe = await connect_as("monitoring")  # the probe runs with the service's own identity
        deadline = time.monotonic() + 10
        ok, why = False, ""
        while not ok and time.monotonic() < deadline:
            ok, why = await health(probe, "monitoring", max_age_s=2)
            await asyncio.sleep(0.1)
        assert ok, why
        assert stats(probe).permission_denied == 0
    finally:
        svc.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
    ok, why = await health(admin_nc, "monitoring", max_age_s=0.01)  # stopped: too old
    assert not ok and "monitoring" in why
    ok, why = await health(admin_nc, "no_such_service", max_age_s=5)
    assert not ok and why == "no heartbeat of no_such_service yet"


def test_cli_health_and_init_use_the_environment(
    nats_server: EmbeddedNats,
    credentials: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("GRIDPILOT_NATS_URL", nats_server.url)
    monkeypatch.setenv("GRIDPILOT_NATS_USER", "admin")
    secret = tmp_path / "nats_admin"  # a mounted secret, as in the compose deployment
    secret.write_text(credentials["admin"] + "\n")
    monkeypatch.setenv("GRIDPILOT_NATS_PASSWORD_FILE", str(secret))
    monkeypatch.setenv("GRIDPILOT_DATA_DIR", str(tmp_path))
    assert main(["init", "--grid", "cigre_mv"]) == 0
    assert "published cigre_mv" in capsys.readouterr().out
    assert main(["health", "nothing_here", "--max-age", "1"]) == 1
    assert "unhealthy: no heartbeat of nothing_here yet" in capsys.readouterr().out
