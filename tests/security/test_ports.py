"""What the embedded broker listens on, and that with TLS it talks to nobody in clear text:
no monitoring port unless asked for, TLS-only NATS and MQTT, client certificates required on
the client and leafnode ports."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from gridpilot.core import bus
from gridpilot.core.errors import BusError
from gridpilot.platform.broker import (
    HUB_DOMAIN,
    EmbeddedNats,
    LeafTls,
    edge_domain,
    leaf_url,
    pick_port,
    render_config,
)
from gridpilot.platform.permissions import (
    ADMIN,
    DEVICE_CREDENTIALS_FILE,
    device_logins,
    ensure_device_credentials,
    leafnode_password,
    service_password,
)
from gridpilot.platform.tls import Pki, ensure_certs, server_tls
from tests.security.netprobe import listening_ports, plain_mqtt_connect, plain_nats_connect

pytestmark = pytest.mark.security

HOST = "127.0.0.1"


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return ensure_certs(tmp_path_factory.mktemp("pki"), edges=["site1"]).pki


@pytest.fixture
def tls_broker(tmp_path: Path, pki: Pki) -> Iterator[EmbeddedNats]:
    ensure_device_credentials(tmp_path, "probe", ["m1"])  # a meter's MQTT user
    broker = EmbeddedNats(data_dir=tmp_path, port=0, mqtt_port=0, tls=server_tls(pki)).start()
    yield broker
    broker.stop()


def test_no_monitoring_port_by_default(tmp_path: Path) -> None:
    broker = EmbeddedNats(data_dir=tmp_path, port=0, mqtt_port=0).start()
    try:
        assert "http:" not in broker.config_path.read_text()
        assert "monitor" not in broker.endpoints
        assert broker.pid is not None
        # what the server listens on: the client port and MQTT, nothing else (no /connz)
        assert listening_ports(broker.pid) == {_port(broker.url), _port(broker.mqtt_url)}
        with pytest.raises(BusError, match="without a monitoring port"):
            _ = broker.monitor_url
    finally:
        broker.stop()


def test_the_monitoring_port_is_opt_in_and_on_loopback(tmp_path: Path) -> None:
    broker = EmbeddedNats(data_dir=tmp_path, port=0, monitor_port=0, mqtt_port=0).start()
    try:
        assert broker.pid is not None
        monitor = _port(broker.monitor_url)
        assert broker.endpoints["monitor"] == f"http://{HOST}:{monitor}"
        assert monitor in listening_ports(broker.pid)
        assert f'http: "{HOST}:{monitor}"' in broker.config_path.read_text()
    finally:
        broker.stop()


def test_render_config_puts_tls_on_every_listener(tmp_path: Path, pki: Pki) -> None:
    from gridpilot.platform.broker import ClusterConfig

    text = render_config(
        data_dir=tmp_path, host=HOST, port=1, monitor_port=None, mqtt_port=3, name="x",
        cluster=ClusterConfig("c", 4, ("nats-route://127.0.0.1:4",)), leaf_port=5,
        domain=HUB_DOMAIN, tls=server_tls(pki),
    )  # fmt: skip
    # client port, MQTT, routes, leafnodes: four tls blocks; three of them verify clients
    assert text.count("tls {") == 4
    assert text.count("verify: true") == 3
    assert text.count(f'ca_file: "{pki.ca}"') == 3
    assert "http:" not in text


async def test_tls_broker_serves_a_client_with_a_certificate_only(
    tls_broker: EmbeddedNats, pki: Pki
) -> None:
    assert tls_broker.url.startswith("tls://") and tls_broker.mqtt_url.startswith("mqtts://")
    password = service_password(tls_broker.data_dir, ADMIN)
    admin = pki.client(ADMIN)
    nc = await bus.connect(
        tls_broker.url, user=ADMIN, password=password, name="t",
        tls=bus.client_context(pki.ca, admin.cert, admin.key),
    )  # fmt: skip
    try:
        await bus.ensure_jetstream(nc)
        assert nc.connected_url is not None
    finally:
        await nc.close()
    # the CA alone (no client certificate): the handshake fails
    with pytest.raises((BusError, ssl.SSLError, OSError, asyncio.TimeoutError)):
        await bus.connect(
            tls_broker.url, user=ADMIN, password=password, name="t", connect_timeout=1,
            startup_timeout=2, tls=bus.client_context(pki.ca),
        )  # fmt: skip


def _meter(broker: EmbeddedNats) -> tuple[str, str]:
    """The MQTT user and password of the probe grid's meter m1."""
    path = broker.data_dir / DEVICE_CREDENTIALS_FILE
    return device_logins(path, "probe")["m1"]


def test_tls_broker_refuses_clear_text_nats_and_mqtt(tls_broker: EmbeddedNats) -> None:
    password = service_password(tls_broker.data_dir, ADMIN)
    info, after = plain_nats_connect(HOST, _port(tls_broker.url), ADMIN, password)
    assert info.startswith(b"INFO ")
    assert json.loads(info[5:].split(b"\r\n")[0])["tls_required"] is True
    assert b"PONG" not in after  # never logged in
    meter, mqtt_password = _meter(tls_broker)
    answer = plain_mqtt_connect(HOST, _port(tls_broker.mqtt_url), meter, mqtt_password)
    assert not answer.startswith(b"\x20")  # no CONNACK: TLS first


async def test_mqtts_with_the_platforms_ca_publishes(tls_broker: EmbeddedNats, pki: Pki) -> None:
    meter, password = _meter(tls_broker)
    port = _port(tls_broker.mqtt_url)
    async with aiomqtt.Client(
        HOST, port, username=meter, password=password, identifier="tls-probe",
        protocol=aiomqtt.ProtocolVersion.V311, tls_context=bus.client_context(pki.ca),
    ) as client:  # fmt: skip
        await client.publish("gp/probe/meter/m1", b"{}", qos=1, timeout=5)
    # a client that does not know the CA gets no session
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(
            HOST, port, username=meter, password=password, identifier="tls-probe-2",
            protocol=aiomqtt.ProtocolVersion.V311, tls_context=ssl.create_default_context(),
        ):  # fmt: skip
            pass


def _edge(tmp_path: Path, name: str, leaf_port: int, pki: Pki, client: bool) -> EmbeddedNats:
    pair = pki.edge("site1")
    return EmbeddedNats(
        data_dir=tmp_path / name,
        port=0,
        monitor_port=0,
        mqtt_port=0,
        hub_url=leaf_url(f"tls://{HOST}:{leaf_port}", leafnode_password(tmp_path / "hub")),
        domain=edge_domain(name),
        hub_ca=pki.ca,
        leaf_client=LeafTls(pair.cert, pair.key) if client else None,
        tls=server_tls(pki),
    )


def _leafz(server: EmbeddedNats) -> int:
    import urllib.request

    with urllib.request.urlopen(server.monitor_url + "/leafz", timeout=2) as resp:
        return int(json.load(resp).get("leafnodes", 0))


async def _until(pred: object, within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not pred():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what}: not within {within_s} s"
        await asyncio.sleep(0.05)


async def test_an_edge_without_a_client_certificate_is_refused(tmp_path: Path, pki: Pki) -> None:
    leaf_port = pick_port(HOST, 0, [])
    # the monitoring port (opt-in) only to read /leafz
    hub = EmbeddedNats(
        data_dir=tmp_path / "hub", port=0, monitor_port=0, mqtt_port=0, leaf_host=HOST,
        leaf_port=leaf_port, domain=HUB_DOMAIN, tls=server_tls(pki),
    )  # fmt: skip
    anonymous = _edge(tmp_path, "anon", leaf_port, pki, client=False)
    known = _edge(tmp_path, "site1", leaf_port, pki, client=True)
    hub.start()
    try:
        assert hub.endpoints["leafnode"] == f"tls://{HOST}:{leaf_port}"
        anonymous.start()
        await _until(
            lambda: "didn't provide a certificate" in hub.log_path.read_text(),
            15,
            "the hub refusing the edge without a certificate",
        )
        assert _leafz(hub) == 0 and _leafz(anonymous) == 0
        known.start()
        await _until(lambda: _leafz(known) == 1, 15, "the edge with a certificate linking")
        assert _leafz(hub) == 1 and _leafz(anonymous) == 0
    finally:
        known.stop()
        anonymous.stop()
        hub.stop()
