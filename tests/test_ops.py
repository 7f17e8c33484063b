"""``gridpilot init`` and ``gridpilot health`` (what containers run instead of the supervisor)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

import pytest
from nats.aio.client import Client

from gridpilot.cli import main
from gridpilot.core.bus import connect, ensure_jetstream, stats
from gridpilot.core.config import ServiceConfig
from gridpilot.core.errors import ConfigError
from gridpilot.core.schemas import Heartbeat, ServiceState, encode
from gridpilot.model import distribution
from gridpilot.platform import permissions
from gridpilot.platform.broker import EmbeddedNats
from gridpilot.platform.ops import health, init_platform
from gridpilot.platform.permissions import env_credentials
from gridpilot.platform.supervisor import Supervisor
from gridpilot.services.monitoring.service import MonitoringService
from gridpilot.services.state_estimation.service import StateEstimationService
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


async def test_the_probe_of_a_shared_instance_follows_that_instance(
    admin_nc: Client,
    nats_server: EmbeddedNats,
    credentials: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two `--grid all` estimators, as two pods: each probe passes while its own instance runs,
    whatever the other does."""
    services = {
        name: StateEstimationService(
            ServiceConfig(
                nats_url=nats_server.url,
                user="state_estimation",
                password=credentials["state_estimation"],
                grid="all",
                data_dir=tmp_path,
                heartbeat_s=0.2,
                instance=name,
            )
        )
        for name in ("pod-a", "pod-b")
    }
    tasks = {n: asyncio.create_task(s.run(install_signals=False)) for n, s in services.items()}

    async def probe(instance: str | None) -> tuple[bool, str]:
        return await health(admin_nc, "state_estimation", max_age_s=2, instance=instance)

    async def probe_cli(instance: str) -> int:
        """`gridpilot health state_estimation` in that pod: GRIDPILOT_INSTANCE, no flag."""
        monkeypatch.setenv("GRIDPILOT_INSTANCE", instance)
        return await asyncio.to_thread(main, ["health", "state_estimation", "--max-age", "2"])

    monkeypatch.setenv("GRIDPILOT_NATS_URL", nats_server.url)
    monkeypatch.setenv("GRIDPILOT_NATS_USER", "state_estimation")
    monkeypatch.setenv("GRIDPILOT_NATS_PASSWORD", credentials["state_estimation"])
    try:
        deadline = time.monotonic() + 10
        while not all([(await probe("pod-a"))[0], (await probe("pod-b"))[0]]):
            assert time.monotonic() < deadline, [await probe("pod-a"), await probe("pod-b")]
            await asyncio.sleep(0.1)
        assert await probe_cli("pod-a") == 0 and await probe_cli("pod-b") == 0
        assert not (await probe("pod-c"))[0]

        services["pod-a"].stop()
        await asyncio.wait_for(tasks["pod-a"], 10)
        ok, why = await probe("pod-a")
        assert not ok and "state_estimation instance pod-a" in why
        assert (await probe("pod-b"))[0]
        assert (await probe(None))[0]  # without an instance: any (what it did before)
        assert await probe_cli("pod-a") == 1
        assert await probe_cli("pod-b") == 0
        assert await asyncio.to_thread(
            main, ["health", "state_estimation", "--max-age", "2", "--instance", "pod-b"]
        ) == 0  # fmt: skip
    finally:
        for svc in services.values():
            svc.stop()
        await asyncio.gather(*tasks.values(), return_exceptions=True)


def test_status_with_a_nats_url_connects_as_the_environment_says(
    nats_server: EmbeddedNats,
    credentials: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`gridpilot status --nats-url` against a broker with auth: GRIDPILOT_NATS_USER and
    GRIDPILOT_NATS_PASSWORD (or _FILE), unless the URL names a user."""
    beat = Heartbeat(
        service="cli_probe", grid="cigre_mv", instance="x", pid=1, state=ServiceState.RUNNING,
        t_ns=time.time_ns(), uptime_s=1.0, counters={}, info={},
    )  # fmt: skip

    async def seed(*, remove: bool = False) -> None:
        nc = await connect(
            nats_server.url, user="admin", password=credentials["admin"], name="test-seed"
        )
        try:
            await ensure_jetstream(nc)
            kv = await nc.jetstream().key_value("gp_services")
            await (kv.delete("cli_probe") if remove else kv.put("cli_probe", encode(beat)))
        finally:
            await nc.close()

    asyncio.run(seed())
    try:
        _check_status_credentials(nats_server, credentials, tmp_path, monkeypatch, capsys)
    finally:
        asyncio.run(seed(remove=True))


def _check_status_credentials(
    nats_server: EmbeddedNats,
    credentials: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in ("GRIDPILOT_NATS_USER", "GRIDPILOT_NATS_PASSWORD", "GRIDPILOT_NATS_PASSWORD_FILE"):
        monkeypatch.delenv(name, raising=False)
    status = ["status", "--data-dir", str(tmp_path), "--nats-url", nats_server.url, "--json"]
    assert main(status) == 2  # no credentials: refused, with a message
    err = capsys.readouterr().err
    assert "gridpilot: error: permission denied to connect as None" in err
    assert "set GRIDPILOT_NATS_USER and GRIDPILOT_NATS_PASSWORD" in err

    monkeypatch.setenv("GRIDPILOT_NATS_USER", "viewer")
    monkeypatch.setenv("GRIDPILOT_NATS_PASSWORD", credentials["viewer"])
    assert main(status) == 0
    rows = json.loads(capsys.readouterr().out)
    assert any(r["name"] == "cli_probe" and r["state"] == "running" for r in rows)

    monkeypatch.delenv("GRIDPILOT_NATS_PASSWORD")
    secret = tmp_path / "nats_viewer"  # a mounted secret
    secret.write_text(credentials["viewer"] + "\n")
    monkeypatch.setenv("GRIDPILOT_NATS_PASSWORD_FILE", str(secret))
    assert main(status) == 0
    capsys.readouterr()

    # a user in the URL wins over the environment's (here a wrong one)
    host = nats_server.url.removeprefix("nats://")
    in_url = [*status[:-2], f"nats://viewer:{credentials['viewer']}@{host}", "--json"]
    monkeypatch.setenv("GRIDPILOT_NATS_USER", "nobody")
    assert main(in_url) == 0
    capsys.readouterr()
    assert main(status) == 2  # the environment's user, not in the URL: refused
    assert "gridpilot: error:" in capsys.readouterr().err


def test_every_cli_connection_takes_its_credentials_from_one_helper(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GRIDPILOT_NATS_USER", "viewer")
    monkeypatch.setenv("GRIDPILOT_NATS_PASSWORD", "from-env")
    assert env_credentials("nats://a:4222") == ("viewer", "from-env")
    assert env_credentials("nats://a:4222,nats://u:p@b:4222") == (None, None)
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    monkeypatch.setenv("GRIDPILOT_NATS_PASSWORD_FILE", str(secret))
    assert env_credentials("nats://a:4222") == ("viewer", "from-file")
    monkeypatch.delenv("GRIDPILOT_NATS_USER")
    monkeypatch.delenv("GRIDPILOT_NATS_PASSWORD_FILE")
    monkeypatch.delenv("GRIDPILOT_NATS_PASSWORD")
    assert env_credentials("nats://a:4222") == (None, None)


def test_model_wait_and_instance_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("GRIDPILOT_MODEL_WAIT_S", "GRIDPILOT_INSTANCE"):
        monkeypatch.delenv(name, raising=False)
    config = ServiceConfig.from_env()
    assert (config.model_wait_s, config.instance) == (300.0, "")
    monkeypatch.setenv("GRIDPILOT_MODEL_WAIT_S", "0")
    monkeypatch.setenv("GRIDPILOT_INSTANCE", "state-estimation-7d9f8-x2k4q")
    config = ServiceConfig.from_env()
    assert (config.model_wait_s, config.instance) == (0.0, "state-estimation-7d9f8-x2k4q")
    assert MonitoringService(config).instance == "state-estimation-7d9f8-x2k4q"
    for value, message in [("soon", "a number of seconds"), ("-1", "must be >= 0")]:
        monkeypatch.setenv("GRIDPILOT_MODEL_WAIT_S", value)
        with pytest.raises(ConfigError, match=f"GRIDPILOT_MODEL_WAIT_S.*{message}"):
            ServiceConfig.from_env()
    monkeypatch.setenv("GRIDPILOT_MODEL_WAIT_S", "5")
    monkeypatch.setenv("GRIDPILOT_INSTANCE", "a.b")  # a dot would split the KV key
    with pytest.raises(ConfigError, match=r"GRIDPILOT_INSTANCE='a\.b': use up to 64 letters"):
        ServiceConfig.from_env()


async def test_up_on_a_broker_of_ones_own_logs_every_service_in_as_the_given_user(
    nats_server: EmbeddedNats,
    credentials: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`gridpilot up --nats-url URL` on a broker that needs a login: the supervisor and its
    services connect as GRIDPILOT_NATS_USER (here the password comes from a file)."""
    secret = tmp_path / "password"
    secret.write_text(credentials[permissions.ADMIN] + "\n")
    monkeypatch.setenv(permissions.ENV_USER, permissions.ADMIN)
    monkeypatch.delenv(permissions.ENV_PASSWORD, raising=False)
    monkeypatch.setenv(f"{permissions.ENV_PASSWORD}_FILE", str(secret))
    sup = Supervisor(
        grid="cigre_mv",
        data_dir=tmp_path / "data",
        nats_url=nats_server.url,
        services=["monitoring"],
        live=False,
    )
    task = asyncio.create_task(sup.run())
    try:
        deadline = time.monotonic() + 60
        while True:
            child = sup.children.get("monitoring")
            hb = child.heartbeat if child is not None else None
            if hb is not None and hb.state is ServiceState.RUNNING:
                break
            assert not task.done(), task.exception()
            assert time.monotonic() < deadline, "monitoring did not run within 60 s"
            await asyncio.sleep(0.2)
        assert child is not None and child.restarts == 0
    finally:
        sup.stop()
        await asyncio.wait_for(task, 30)


async def test_a_shared_instance_started_before_init_waits_for_the_buckets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`--grid all` in a container may start before `gridpilot init` made KV gp_leases and the
    model store: it waits for them (no exit, no restart) and then shares the grids."""
    server = EmbeddedNats(data_dir=tmp_path / "broker", port=0, monitor_port=0, mqtt_port=0)
    server.start()
    try:
        creds = permissions.load_credentials(server.data_dir)
        svc = StateEstimationService(
            ServiceConfig(
                nats_url=server.url,
                user=permissions.STATE_ESTIMATION,
                password=creds[permissions.STATE_ESTIMATION],
                grid="all",
                data_dir=tmp_path,
                heartbeat_s=0.2,
            )
        )
        caplog.set_level("INFO")
        task = asyncio.create_task(svc.run(install_signals=False))
        await asyncio.sleep(1.5)
        assert not task.done() and svc.state is ServiceState.STARTING
        waiting = [r for r in caplog.records if r.getMessage().startswith("waiting for KV")]
        assert len(waiting) == 1, [r.getMessage() for r in caplog.records]
        admin = await connect(
            server.url, user=permissions.ADMIN, password=creds[permissions.ADMIN], name="t"
        )
        try:
            await ensure_jetstream(admin)  # what init does first
            deadline = time.monotonic() + 10
            while svc.state is not ServiceState.RUNNING:
                assert time.monotonic() < deadline and not task.done()
                await asyncio.sleep(0.1)
            ok, why = await health(admin, "state_estimation", max_age_s=2, instance=svc.instance)
            assert ok, why
        finally:
            await admin.close()
            svc.stop()
            await asyncio.wait_for(task, 10)
    finally:
        server.stop()
