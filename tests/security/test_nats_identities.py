"""What every NATS identity and every meter may do, probed on a live nats-server started with the
generated config, against a table written here by hand (not derived from permissions.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path

import aiomqtt
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from gridpilot import devices_cli
from gridpilot.cli import main as cli_main
from gridpilot.core import bus
from gridpilot.core.errors import PermissionDeniedError
from gridpilot.platform import permissions
from gridpilot.platform.broker import EmbeddedNats, render_config
from gridpilot.platform.datadir import lock_data_dir
from gridpilot.platform.supervisor import Supervisor
from gridpilot.simulator.mqtt_meters import FileLogins, MqttMeterFleet, ScaledClock, VirtualMeter

pytestmark = pytest.mark.security

GRID = "g"
METERS = ("m1", "m2", "m3")

# -- the probe ------------------------------------------------------------------------------------

ADMIN, SIM, SE, MON, VIEWER = "admin", "simulator", "state_estimation", "monitoring", "viewer"
MQTT_GW, MODBUS, C37, WEB, HIST, IEC104 = (
    "mqtt_gateway",
    "gateway_modbus",
    "gateway_c37118",
    "web",
    "historian",
    "gateway_iec104",
)
SERVICES = (SIM, SE, MON, VIEWER, MQTT_GW, MODBUS, C37, WEB, HIST, IEC104)
EVERYONE = SERVICES  # (admin may do everything: added below)

# subject class -> (concrete subject, who may publish, who may subscribe); admin may do both
# everywhere. "{me}" stands for the probing identity, "{other}" for another one.
EXPECTED: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "meas": ("gp.g.meas.pmu_1", (SIM, MQTT_GW, MODBUS, C37, IEC104), (SE, MON, WEB)),
    "meter raw": ("gp.g.meter.m1", (), (MQTT_GW,)),
    "topology": ("gp.g.topology", (SIM,), (SE, WEB)),
    "command": ("gp.g.command.sw_1", (WEB,), (SIM, MODBUS, IEC104)),
    "command result": ("gp.g.event.command", (SIM, MODBUS, IEC104), (VIEWER, WEB)),
    "state": ("gp.g.state", (SE,), (MON, VIEWER, WEB)),
    "state layout": ("gp.g.state.layout", (SE,), ()),
    "alarm": ("gp.g.alarm", (MON,), (VIEWER, WEB)),
    "alarm ack": ("gp.g.request.alarm.ack", (WEB,), (MON,)),
    "audit": ("gp.g.audit", (WEB,), ()),
    "heartbeat (simulator's)": ("gp.svc.simulator.heartbeat", (SIM,), (MON, VIEWER, WEB)),
    "condition (simulator's)": ("gp.g.condition.simulator", (SIM,), (MON,)),
    "truth": ("gp.g.sim.truth", (SIM,), ()),
    "sim inject": ("gp.g.request.sim.inject", (WEB,), (SIM,)),
    "history request": ("gp.g.request.history.query", (VIEWER, WEB), (HIST,)),
    # key-value buckets: put, direct get, stream info, watch (consumer create)
    "KV gp_state put": ("$KV.gp_state.g", (SE,), ()),
    "KV gp_state get": ("$JS.API.DIRECT.GET.KV_gp_state.$KV.gp_state.g", (VIEWER, WEB), ()),
    "KV gp_state info": ("$JS.API.STREAM.INFO.KV_gp_state", (SE, MON, VIEWER, WEB, HIST), ()),
    "KV gp_state watch": ("$JS.API.CONSUMER.CREATE.KV_gp_state", (VIEWER,), ()),
    "KV gp_services put (simulator's)": ("$KV.gp_services.simulator", (SIM,), ()),
    "KV gp_services get (simulator's)": (
        "$JS.API.DIRECT.GET.KV_gp_services.$KV.gp_services.simulator",
        (SIM, VIEWER),
        (),
    ),
    "KV gp_services info": ("$JS.API.STREAM.INFO.KV_gp_services", EVERYONE, ()),
    "KV gp_services watch": ("$JS.API.CONSUMER.CREATE.KV_gp_services", EVERYONE, ()),
    "KV gp_alarms put": ("$KV.gp_alarms.g", (MON,), ()),
    "KV gp_alarms get": (
        "$JS.API.DIRECT.GET.KV_gp_alarms.$KV.gp_alarms.g",
        (MON, VIEWER, WEB),
        (),
    ),
    "KV gp_alarms info": ("$JS.API.STREAM.INFO.KV_gp_alarms", (MON, VIEWER, WEB), ()),
    "KV gp_alarms watch": ("$JS.API.CONSUMER.CREATE.KV_gp_alarms", (VIEWER,), ()),
    "KV gp_leases put": ("$KV.gp_leases.se.g", (SE,), ()),
    "KV gp_leases get": ("$JS.API.DIRECT.GET.KV_gp_leases.$KV.gp_leases.se.g", (SE,), ()),
    "KV gp_leases info": ("$JS.API.STREAM.INFO.KV_gp_leases", (SE,), ()),
    "KV gp_leases watch": ("$JS.API.CONSUMER.CREATE.KV_gp_leases", (SE,), ()),
    "KV gp_twin put": ("$KV.gp_twin.g", (SIM,), ()),
    "KV gp_twin get": ("$JS.API.DIRECT.GET.KV_gp_twin.$KV.gp_twin.g", (SIM,), ()),
    "KV gp_twin info": ("$JS.API.STREAM.INFO.KV_gp_twin", (SIM,), ()),
    "KV gp_twin watch": ("$JS.API.CONSUMER.CREATE.KV_gp_twin", (), ()),
    "objects gp_models info": ("$JS.API.STREAM.INFO.OBJ_gp_models", EVERYONE, ()),
    "objects gp_models read meta": ("$JS.API.STREAM.MSG.GET.OBJ_gp_models", EVERYONE, ()),
    "objects gp_models write": ("$O.gp_models.C.x", (), ()),
    "stream delete": ("$JS.API.STREAM.DELETE.GP_MEAS", (), ()),
    "stream consumer (history)": ("$JS.API.CONSUMER.CREATE.GP_MEAS.hist", (HIST,), ()),
    "stream last message (topology)": ("$JS.API.STREAM.MSG.GET.GP_CMD", (SE,), ()),
    # the inbox each client really uses (its replies, JetStream answers, KV watches)
    "own inbox": ("{me}.x", (), EVERYONE),
    "another identity's inbox": ("{other}.x", (), ()),
    "shared inbox": ("_INBOX.x", (), ()),
}
# what core.bus.connect gives a user as its inbox prefix (nats-py's _INBOX before it did)
_prefix = getattr(bus, "inbox_prefix", lambda user: "_INBOX")


def subject_for(cls: str, identity: str) -> str:
    other = VIEWER if identity == WEB else WEB
    return EXPECTED[cls][0].format(me=_prefix(identity), other=_prefix(other))


# A meter over MQTT (topics with /): class -> (topic, allowed); subscriptions all refused.
MQTT_EXPECTED: dict[str, tuple[str, bool]] = {
    "own raw topic": ("gp/g/meter/m1", True),
    "another meter's raw topic": ("gp/g/meter/m2", False),
    "topology": ("gp/g/topology", False),
    "command result": ("gp/g/event/command", False),
    "meas": ("gp/g/meas/m1", False),
    "command": ("gp/g/command/sw_1", False),
    "state": ("gp/g/state", False),
    "alarm": ("gp/g/alarm", False),
    "heartbeat": ("gp/svc/simulator/heartbeat", False),
}
MQTT_SUBSCRIBE = ("gp/g/command/#", "gp/g/meter/m2", "gp/g/meter/m1", "gp/#", "#")


async def probe_mqtt(
    url: str, mqtt_url: str, user: str, password: str, admin: Client
) -> dict[tuple[str, str], bool]:
    """(class or topic, publish|subscribe) -> allowed, for one MQTT login. A publish passed if
    the admin sees it before the marker sent after it on the allowed own topic."""
    seen = await admin.subscribe("gp.>")
    await admin.flush()
    host, port = mqtt_url.removeprefix("mqtt://").rsplit(":", 1)
    results: dict[tuple[str, str], bool] = {}
    async with aiomqtt.Client(
        host,
        int(port),
        username=user,
        password=password,
        identifier=f"probe-{time.time_ns()}",
        protocol=aiomqtt.ProtocolVersion.V311,
        clean_session=True,
    ) as client:
        for cls, (topic, _) in MQTT_EXPECTED.items():
            await client.publish(topic, b"probe", qos=1, timeout=2.0)
            await client.publish("gp/g/meter/m1", b"marker", qos=1, timeout=2.0)
            msg = await seen.next_msg(timeout=2.0)
            results[(cls, "publish")] = msg.data == b"probe"
            if msg.data == b"probe":
                await seen.next_msg(timeout=2.0)  # its marker
        for topic in MQTT_SUBSCRIBE:
            granted = await client.subscribe(topic, qos=1, timeout=2.0)
            results[(topic, "subscribe")] = list(granted) != [0x80]
    await seen.unsubscribe()
    return results


def expected(identity: str, cls: str, op: str) -> bool:
    if identity == ADMIN:
        return True
    _, pub, sub = EXPECTED[cls]
    return identity in (pub if op == "publish" else sub)


async def _refused(nc: Client, op: str, subject: str) -> bool:
    st = bus.stats(nc)
    mark = st.permission_denied
    if op == "publish":
        try:
            await bus.publish_checked(nc, subject, b"probe")
        except PermissionDeniedError:
            return True
        return False
    sub = await nc.subscribe(subject)
    await bus.barrier(nc)
    refused = st.denied_since(mark, subject) is not None
    await sub.unsubscribe()
    return refused


async def probe_all(url: str, passwords: Mapping[str, str]) -> dict[tuple[str, str, str], bool]:
    """(identity, subject class, publish|subscribe) -> allowed, for every identity given."""
    results: dict[tuple[str, str, str], bool] = {}
    for identity, password in passwords.items():
        nc = await bus.connect(
            url, user=identity, password=password, name=f"probe-{identity}", startup_timeout=5.0
        )
        try:
            for cls in EXPECTED:
                for op in ("publish", "subscribe"):
                    subject = subject_for(cls, identity)
                    results[(identity, cls, op)] = not await _refused(nc, op, subject)
        finally:
            await nc.close()
    return results


def counts(results: Mapping[tuple[str, ...], bool]) -> dict[str, int]:
    return {"probes": len(results), "refused": sum(not ok for ok in results.values())}


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """A broker of its own (its users change here), with three meters of grid g."""
    data_dir: Path = tmp_path_factory.mktemp("security")
    permissions.ensure_device_credentials(data_dir, GRID, METERS)
    nats = EmbeddedNats(data_dir=data_dir, port=0, monitor_port=0, mqtt_port=0)
    nats.start()
    yield nats
    nats.stop()


@pytest.fixture
async def admin(server: EmbeddedNats) -> AsyncIterator[Client]:
    nc = await bus.connect(
        server.url,
        user=ADMIN,
        password=permissions.service_password(server.data_dir, ADMIN),
        name="admin",
        startup_timeout=5.0,
    )
    yield nc
    await nc.close()


def _login(server: EmbeddedNats, device: str) -> tuple[str, str]:
    path = server.data_dir / permissions.DEVICE_CREDENTIALS_FILE
    return permissions.device_logins(path, GRID)[device]


def _mqtt(server: EmbeddedNats, user: str, password: str, client_id: str) -> aiomqtt.Client:
    host, port = server.mqtt_url.removeprefix("mqtt://").rsplit(":", 1)
    return aiomqtt.Client(
        host,
        int(port),
        username=user,
        password=password,
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V311,
        clean_session=True,
    )


# -- (a) a meter publishes its own readings and nothing else ------------------------------------


async def test_meter_probe_matrix(server: EmbeddedNats, admin: Client) -> None:
    user, password = _login(server, "m1")
    results = await probe_mqtt(server.url, server.mqtt_url, user, password, admin)
    n = counts(results)
    print(f"\nMQTT probe (meter m1): {n['probes']} probes, {n['refused']} refused")
    want = {(cls, "publish"): ok for cls, (_, ok) in MQTT_EXPECTED.items()}
    want.update({(topic, "subscribe"): False for topic in MQTT_SUBSCRIBE})
    assert results == want


async def test_meter_publishes_only_its_own_raw_topic(server: EmbeddedNats, admin: Client) -> None:
    seen = await admin.subscribe("gp.g.>")
    await admin.flush()
    user, password = _login(server, "m1")
    assert user == "meter.g.m1"
    async with _mqtt(server, user, password, "sec-m1") as client:
        # nats-server acknowledges a refused QoS 1 PUBLISH and drops it: what arrives tells
        for topic in ("gp/g/topology", "gp/g/event/command", "gp/g/meter/m2", "gp/g/meas/m1"):
            await client.publish(topic, b"forged", qos=1, timeout=2.0)
        await client.publish("gp/g/meter/m1", b"reading", qos=1, timeout=2.0)
        granted = await client.subscribe("gp/g/command/#", qos=1, timeout=2.0)
        granted_inbox = await client.subscribe("_INBOX/#", qos=0, timeout=2.0)
        first = await seen.next_msg(timeout=2.0)
    # one connection's messages arrive in order: a forged one that passed would come first
    assert (first.subject, first.data) == ("gp.g.meter.m1", b"reading")
    assert list(granted) == [0x80] and list(granted_inbox) == [0x80]  # SUBACK: failure


async def test_meter_credential_is_for_mqtt_only_and_service_passwords_not_for_mqtt(
    server: EmbeddedNats,
) -> None:
    user, password = _login(server, "m1")
    with pytest.raises(PermissionDeniedError):
        await bus.connect(server.url, user=user, password=password, name="t", startup_timeout=2)
    sim = permissions.service_password(server.data_dir, SIM)
    with pytest.raises(aiomqtt.MqttError, match=r"(?i)not authori[sz]ed"):
        async with _mqtt(server, SIM, sim, "sec-sim"):
            pass
    # a meter's password is not another meter's
    with pytest.raises(aiomqtt.MqttError, match=r"(?i)not authori[sz]ed"):
        async with _mqtt(server, "meter.g.m2", password, "sec-m2"):
            pass


# -- (b) every identity against every subject class ---------------------------------------------


async def test_probe_matrix_matches_the_hand_written_table(server: EmbeddedNats) -> None:
    passwords = permissions.load_credentials(server.data_dir)
    assert set(passwords) == {ADMIN, *SERVICES}, "an identity without a row in EXPECTED"
    results = await probe_all(server.url, passwords)
    n = counts(results)
    print(f"\nNATS probe: {n['probes']} probes, {n['refused']} refused")
    report = os.environ.get("GRIDPILOT_PROBE_REPORT")
    if report:
        await asyncio.to_thread(Path(report).write_text, json.dumps(n) + "\n")
    wrong = sorted(
        f"{identity} {op} {cls} ({subject_for(cls, identity)}): "
        f"{'allowed' if ok else 'refused'}, expected the opposite"
        for (identity, cls, op), ok in results.items()
        if ok != expected(identity, cls, op)
    )
    assert not wrong, "\n".join(wrong)


# -- (c) inboxes --------------------------------------------------------------------------------


async def test_no_identity_reads_another_inbox_nor_the_shared_one(server: EmbeddedNats) -> None:
    passwords = permissions.load_credentials(server.data_dir)
    for identity in SERVICES:
        nc = await bus.connect(
            server.url, user=identity, password=passwords[identity], name="t", startup_timeout=5
        )
        try:
            assert nc._inbox_prefix == f"_INBOX_{identity}".encode()
            for subject in ("_INBOX.>", "*.>", ">", *(f"_INBOX_{o}.>" for o in SERVICES)):
                if subject == f"_INBOX_{identity}.>":
                    continue
                assert await _refused(nc, "subscribe", subject), f"{identity} reads {subject}"
        finally:
            await nc.close()


async def test_requests_and_jetstream_work_through_the_own_inbox(
    server: EmbeddedNats, admin: Client
) -> None:
    await bus.ensure_jetstream(admin)
    kv = await admin.jetstream().key_value("gp_state")
    await kv.put("g", b"estimate")
    viewer = await bus.connect(
        server.url,
        user=VIEWER,
        password=permissions.service_password(server.data_dir, VIEWER),
        name="viewer",
        startup_timeout=5,
    )
    try:
        entry = await (await viewer.jetstream().key_value("gp_state")).get("g")
        assert entry.value == b"estimate"
        watcher = await (await viewer.jetstream().key_value("gp_state")).watch("g")
        update = await watcher.updates(timeout=2.0)
        assert update is not None and update.value == b"estimate"
        await watcher.stop()
    finally:
        await viewer.close()


# -- (d) no clear password in nats.conf ---------------------------------------------------------


def test_nats_conf_holds_bcrypt_hashes_only(server: EmbeddedNats) -> None:
    data_dir = server.data_dir
    text = server.config_path.read_text()
    hub = render_config(
        data_dir=data_dir,
        host="127.0.0.1",
        port=1,
        monitor_port=2,
        mqtt_port=3,
        name="t",
        leaf_port=4,
    )
    secrets = [*permissions.load_credentials(data_dir).values()]
    secrets.append(permissions.leafnode_password(data_dir))
    secrets += [
        p
        for _, p in permissions.device_logins(
            data_dir / permissions.DEVICE_CREDENTIALS_FILE, GRID
        ).values()
    ]
    for conf in (text, hub):
        for secret in secrets:
            assert secret not in conf
        passwords = re.findall(r'password: "([^"]*)"', conf)
        assert passwords and all(p.startswith("$2b$04$") for p in passwords)
    meters = permissions.device_logins(data_dir / permissions.DEVICE_CREDENTIALS_FILE, GRID)
    assert len(re.findall(r'password: "', text)) == len(SERVICES) + 1 + len(meters)
    assert "mqtt_device" not in text  # the old shared meter identity is gone
    assert oct(server.config_path.stat().st_mode & 0o777) == "0o600"
    assert oct((data_dir / permissions.DEVICE_CREDENTIALS_FILE).stat().st_mode & 0o777) == "0o600"
    # a second render (a restart, a reload) reuses the hashes: no bcrypt work, same text
    again = render_config(
        data_dir=data_dir,
        host="127.0.0.1",
        port=1,
        monitor_port=2,
        mqtt_port=3,
        name="t",
        leaf_port=4,
    )
    assert again == hub


# -- (e) revoking a meter -----------------------------------------------------------------------


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def _connack(
    server: EmbeddedNats, user: str, password: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
    """A raw MQTT 3.1.1 CONNECT: the reader sees the server close the connection."""

    def s(text: str) -> bytes:
        return len(text.encode()).to_bytes(2, "big") + text.encode()

    host, port = server.mqtt_url.removeprefix("mqtt://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    body = s("MQTT") + bytes([4, 0xC2]) + (60).to_bytes(2, "big")
    body += s(f"sec-{time.time_ns()}") + s(user) + s(password)
    writer.write(bytes([0x10, len(body)]) + body)
    ack = await asyncio.wait_for(reader.readexactly(4), 2.0)
    return reader, writer, ack[3]


async def test_revoke_disconnects_the_meter_and_refuses_it(
    server: EmbeddedNats, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user, password = _login(server, "m3")
    other_user, other_password = _login(server, "m2")
    reader, writer, code = await _connack(server, user, password)
    other_reader, other_writer, other_code = await _connack(server, other_user, other_password)
    assert code == 0 and other_code == 0

    # the CLI with no platform running: the file changes, the running broker later
    assert (
        cli_main(["devices", "revoke", "--grid", GRID, "m3", "--data-dir", str(server.data_dir)])
        == 0
    )
    assert "no platform is running" in capsys.readouterr().out
    assert "m3" not in permissions.device_logins(
        server.data_dir / permissions.DEVICE_CREDENTIALS_FILE, GRID
    )
    # what the supervisor does on the CLI's signal
    sup = Supervisor(grid=GRID, data_dir=server.data_dir, live=False)
    sup.broker = server
    await sup.reload_broker()
    assert "nats.conf reloaded" in capsys.readouterr().out

    # the server closed the revoked meter's connection, and no other
    assert await asyncio.wait_for(reader.read(), 5.0) == b""
    await _close(writer)
    other_writer.write(b"\xc0\x00")  # PINGREQ
    assert await asyncio.wait_for(other_reader.readexactly(2), 2.0) == b"\xd0\x00"  # PINGRESP
    await _close(other_writer)
    # ... and refuses it from now on (CONNACK 5: not authorised)
    _, writer, code = await _connack(server, user, password)
    await _close(writer)
    assert code == 5
    assert "meter.g.m3" not in server.config_path.read_text()

    # rotate lets it in again, with the new password only
    new = permissions.rotate_device(server.data_dir, GRID, "m3")
    await sup.reload_broker()
    _, writer, code = await _connack(server, user, new)
    await _close(writer)
    assert code == 0


def test_cli_signals_the_running_supervisor(tmp_path: Path) -> None:
    """`gridpilot devices revoke` finds the supervisor through the data dir's lock and sends it
    SIGUSR1; a stale pid of a dead one is never signalled."""
    permissions.ensure_device_credentials(tmp_path, GRID, ["m1"])
    assert devices_cli.running_supervisor(tmp_path) is None
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, sys\n"
            "from pathlib import Path\n"
            "from gridpilot.platform.datadir import lock_data_dir\n"
            "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})\n"
            "lock = lock_data_dir(Path(sys.argv[1]))\n"
            "print('locked', flush=True)\n"
            "signal.sigwait({signal.SIGUSR1})\n"
            "print('reload', flush=True)\n",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        assert devices_cli.running_supervisor(tmp_path) == holder.pid
        assert (
            cli_main(["devices", "revoke", "--grid", GRID, "m1", "--data-dir", str(tmp_path)]) == 0
        )
        assert holder.stdout.readline() == "reload\n"
        assert holder.wait(5.0) == 0
    finally:
        if holder.poll() is None:
            holder.send_signal(signal.SIGTERM)
            holder.wait()
    assert devices_cli.running_supervisor(tmp_path) is None  # the lock died with it
    lock = lock_data_dir(tmp_path)
    lock.release()


async def test_rotate_ends_the_old_password(server: EmbeddedNats) -> None:
    user, old = _login(server, "m2")
    reader, writer, code = await _connack(server, user, old)
    assert code == 0
    new = permissions.rotate_device(server.data_dir, GRID, "m2")
    await asyncio.to_thread(server.reload)
    # the server re-checks every connection on reload: this one is refused and closed
    rest = await asyncio.wait_for(reader.read(), 5.0)  # all it sends until it closes
    assert rest in (b"", b"\x20\x02\x00\x05")  # maybe a CONNACK "not authorised" first
    await _close(writer)
    _, writer, code = await _connack(server, user, old)
    await _close(writer)
    assert code == 5
    _, writer, code = await _connack(server, user, new)
    await _close(writer)
    assert code == 0


async def test_a_revoked_meter_of_the_fleet_stops_and_the_others_go_on(
    server: EmbeddedNats, admin: Client
) -> None:
    path = server.data_dir / permissions.DEVICE_CREDENTIALS_FILE
    if permissions.ensure_device_credentials(server.data_dir, GRID, ["f1", "f2"]):
        await asyncio.to_thread(server.reload)
    got: list[str] = []
    progress = asyncio.Event()

    async def on_msg(msg: Msg) -> None:
        got.append(msg.subject.rsplit(".", 1)[1])
        progress.set()

    await admin.subscribe("gp.g.meter.*", cb=on_msg)
    await admin.flush()
    fleet = MqttMeterFleet(
        url=server.mqtt_url,
        logins=FileLogins(path, GRID),
        grid=GRID,
        meters=[VirtualMeter(device="f1"), VirtualMeter(device="f2")],
        reading=lambda device, t_ns: (0.001, 0.0),
        clock=ScaledClock(speed=900 / 0.05),  # a 900 s period every 50 ms
        period_s=900.0,
        retry_s=0.02,
    )

    async def until(pred: Callable[[], bool]) -> None:
        async with asyncio.timeout(5.0):
            while not pred():
                progress.clear()
                await progress.wait()

    task = asyncio.create_task(fleet.run())
    try:
        await until(lambda: {"f1", "f2"} <= set(got))
        permissions.revoke_device(server.data_dir, GRID, "f2")
        await asyncio.to_thread(server.reload)
        # f2 notices at its next reading, then finds no credential on each retry (checked at
        # each reading of f1, which goes on)
        await until(lambda: "f2" not in fleet.connected and fleet.refused >= 2)
        await bus.barrier(admin)  # whatever f2 sent before is in `got` now
        mark = len(got)
        await until(lambda: got[mark:].count("f1") >= 5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert "f2" not in got[mark:] and fleet.connected <= {"f1"}
