"""TLS on the leaf link between an edge and the hub, with real nats-server processes and a
throwaway CA made by the ``openssl`` CLI at test time. The link runs through a recording TCP
proxy, so the tests also see what crossed the wire: never the leaf password in clear."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from gridpilot.core import bus, subjects
from gridpilot.core import schemas as s
from gridpilot.core.errors import ConfigError
from gridpilot.platform.broker import (
    HUB_DOMAIN,
    EmbeddedNats,
    LeafTls,
    edge_domain,
    leaf_url,
    nats_server_binary,
    render_config,
)
from gridpilot.platform.permissions import leafnode_password
from gridpilot.platform.supervisor import Supervisor
from tests.test_cluster import mset
from tests.test_edge import HOST, Proxy, _admin, leafz, site_pair, wait_for

UNKNOWN_CA = "certificate signed by unknown authority"  # Go's x509.UnknownAuthorityError


@dataclass(frozen=True)
class Pki:
    ca: Path  # signed the hub's certificate
    other_ca: Path  # signed nothing of ours
    cert: Path  # the hub's, for 127.0.0.1 and localhost
    key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)


def _make_ca(d: Path, name: str) -> tuple[Path, Path]:
    cert, key = d / f"{name}.pem", d / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN=GridPilot test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.fail("the openssl CLI makes the test certificates: apt-get install openssl")
    d = tmp_path_factory.mktemp("pki")
    ca, ca_key = _make_ca(d, "ca")
    other_ca, _ = _make_ca(d, "other-ca")
    cert, key, csr, ext = d / "hub.pem", d / "hub.key", d / "hub.csr", d / "hub.ext"
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost",
    )  # fmt: skip
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-set_serial", "2", "-days", "2", "-out", str(cert), "-extfile", str(ext),
    )  # fmt: skip
    return Pki(ca=ca, other_ca=other_ca, cert=cert, key=key)


class RecordingProxy(Proxy):
    """The test's TCP proxy, keeping every byte it forwarded (both directions)."""

    def __init__(self, port: int, target: int) -> None:
        super().__init__(port, target)
        self._seen = bytearray()
        self._seen_lock = threading.Lock()

    @property
    def seen(self) -> bytes:
        with self._seen_lock:
            return bytes(self._seen)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:  # type: ignore[override]
        try:
            while data := src.recv(65536):
                with self._seen_lock:
                    self._seen += data
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def link(
    tmp_path: Path, *, hub_tls: LeafTls | None, scheme: str, hub_ca: Path | None
) -> contextlib.AbstractContextManager[tuple[EmbeddedNats, EmbeddedNats, RecordingProxy]]:
    """A hub (TLS with ``hub_tls``) and an edge whose remote is ``scheme://`` a recording proxy."""
    return site_pair(
        tmp_path, proxy_cls=RecordingProxy, hub_tls=hub_tls, scheme=scheme, hub_ca=hub_ca
    )


async def _probe_sub(hub_nc: Client) -> list[Msg]:
    got: list[Msg] = []

    async def on(msg: Msg) -> None:
        got.append(msg)

    await hub_nc.subscribe("gp.probe.>", cb=on)
    await hub_nc.flush()
    return got


def _assert_nothing_in_clear(proxy: RecordingProxy, hub: EmbeddedNats, *also: bytes) -> None:
    seen = proxy.seen
    assert seen, "nothing crossed the proxy: the edge never tried"
    assert leafnode_password(hub.data_dir).encode() not in seen
    assert b"CONNECT" not in seen  # the leaf's CONNECT (with the password) never went in clear
    for token in also:
        assert token not in seen


async def test_tls_edge_with_the_hubs_ca_forwards_measurements(pki: Pki, tmp_path: Path) -> None:
    with link(tmp_path, hub_tls=LeafTls(pki.cert, pki.key), scheme="tls", hub_ca=pki.ca) as (
        hub,
        edge,
        proxy,
    ):
        await wait_for(lambda: leafz(hub) == 1 and leafz(edge) == 1, 10, "the TLS leaf link")
        hub_nc, edge_nc = await _admin(hub), await _admin(edge)
        try:
            await bus.ensure_jetstream(hub_nc)
            await bus.ensure_jetstream(edge_nc)
            assert await bus.ensure_edge_source(
                edge_nc, hub_domain=HUB_DOMAIN, edge_domain=edge_domain("site1")
            )
            grid = f"t{uuid.uuid4().hex[:8]}"
            subject = subjects.MEAS.format(grid=grid, source="pmu_1")
            edge_js, hub_jsm = edge_nc.jetstream(), hub_nc.jsm()
            n = 200
            for i in range(n):
                await edge_js.publish(subject, s.encode(mset(grid, i)), timeout=2)
            counts = {"hub": 0}

            async def hub_has_all() -> None:
                while counts["hub"] < n:
                    info = await hub_jsm.stream_info("GP_MEAS", subjects_filter=subject)
                    counts["hub"] = int((info.state.subjects or {}).get(subject, 0))
                    if counts["hub"] < n:
                        await asyncio.sleep(0.1)

            await asyncio.wait_for(hub_has_all(), 20)
            assert counts["hub"] == n
            # live messages cross too (the probe for the refused links below)
            got = await _probe_sub(hub_nc)
            async with asyncio.timeout(10):
                while not got:
                    await edge_nc.publish(f"gp.probe.{grid}", b"x")
                    await edge_nc.flush()
                    await asyncio.sleep(0.1)
        finally:
            await hub_nc.close()
            await edge_nc.close()
        _assert_nothing_in_clear(proxy, hub, grid.encode(), b"pmu_1")


async def test_without_tls_the_password_crosses_in_clear(tmp_path: Path) -> None:
    """What the hub's warning says, and the control for the proxy's recording above."""
    with link(tmp_path, hub_tls=None, scheme="nats", hub_ca=None) as (hub, edge, proxy):
        await wait_for(lambda: leafz(hub) == 1 and leafz(edge) == 1, 10, "the plain leaf link")
        assert leafnode_password(hub.data_dir).encode() in proxy.seen
        assert b"CONNECT" in proxy.seen


@pytest.mark.parametrize(
    ("case", "hub_tls", "scheme", "ca", "why"),
    [
        # a second throwaway CA: the hub's certificate does not verify
        ("wrong CA", True, "tls", "other_ca", UNKNOWN_CA),
        # nats:// to a TLS hub: nats-server starts TLS as the hub asks, but checks the hub
        # against the system's roots, which do not know our CA (and --hub-ca needs tls://)
        ("nats:// edge, TLS hub", True, "nats", None, UNKNOWN_CA),
        # tls:// to a hub without TLS: no fallback to clear text (the hub sees a TLS hello
        # where it expects CONNECT and logs an authentication error)
        ("tls:// edge, plain hub", False, "tls", "ca", "connection closed: TLS Handshake Failure"),
    ],
    ids=["wrong-ca", "nats-edge-tls-hub", "tls-edge-plain-hub"],
)
async def test_refused_leaf_links(
    pki: Pki,
    tmp_path: Path,
    case: str,
    hub_tls: bool,
    scheme: str,
    ca: str | None,
    why: str,
) -> None:
    with link(
        tmp_path,
        hub_tls=LeafTls(pki.cert, pki.key) if hub_tls else None,
        scheme=scheme,
        hub_ca=getattr(pki, ca) if ca else None,
    ) as (hub, edge, proxy):
        hub_nc, edge_nc = await _admin(hub), await _admin(edge)
        try:
            got = await _probe_sub(hub_nc)

            def failures() -> int:
                log = edge.log_path.read_text(errors="replace")
                return sum(why in line for line in log.splitlines())

            # two failed attempts (the remote retries every second), each said why
            await wait_for(lambda: failures() >= 2, 10, f"{case}: the edge logged the refusal")
            await edge_nc.publish("gp.probe.x", b"x")
            await edge_nc.flush()
            count = failures()
            await wait_for(lambda: failures() > count, 10, f"{case}: one more attempt")
            assert leafz(hub) == 0 and leafz(edge) == 0
            assert got == []
        finally:
            await hub_nc.close()
            await edge_nc.close()
        _assert_nothing_in_clear(proxy, hub)
        print(
            f"\n{case}: the edge's log says: "
            + next(line for line in edge.log_path.read_text().splitlines() if why in line).split(
                "] ", 1
            )[1]
        )


# -- configuration and command line (fast) -----------------------------------------------------


def test_tls_config_renders_absolute_quoted_paths_that_nats_server_accepts(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    odd = tmp_path / 'certs with space, "quotes" and $dollar'
    odd.mkdir()
    for f in (pki.ca, pki.cert, pki.key):
        shutil.copy(f, odd / f.name)
    monkeypatch.chdir(odd)  # relative paths become absolute in the config
    common = {"host": HOST, "port": 1, "monitor_port": 2, "mqtt_port": 3, "name": "x"}
    hub = render_config(
        data_dir=tmp_path / "hub",
        leaf_port=17422,
        domain=HUB_DOMAIN,
        leaf_tls=LeafTls(Path(pki.cert.name), Path(pki.key.name)),
        **common,
    )
    assert f"cert_file: {json.dumps(str(odd / pki.cert.name))}" in hub
    assert f"key_file: {json.dumps(str(odd / pki.key.name))}" in hub and "timeout: 5" in hub
    edge = render_config(
        data_dir=tmp_path / "edge",
        hub_url=leaf_url("tls://hub.example:7422", "pw"),
        hub_ca=Path(pki.ca.name),
        domain="edge-s1",
        **common,
    )
    assert 'url: "tls://leafnode:pw@hub.example:7422"' in edge
    assert f"ca_file: {json.dumps(str(odd / pki.ca.name))}" in edge
    # tls:// without a CA: TLS against the system's roots; nats:// renders no tls block
    no_ca = render_config(data_dir=tmp_path / "edge", hub_url="tls://u:p@h:1", **common)
    assert "tls {" in no_ca and "ca_file" not in no_ca
    plain = render_config(data_dir=tmp_path / "edge", hub_url="nats-leaf://u:p@h:1", **common)
    assert "tls {" not in plain
    with pytest.raises(ConfigError, match="tls://"):
        render_config(
            data_dir=tmp_path / "edge", hub_url="nats-leaf://u:p@h:1", hub_ca=pki.ca, **common
        )
    for name, text in (("hub", hub), ("edge", edge)):
        conf = odd / f"{name}.conf"
        conf.write_text(text)
        done = subprocess.run(
            [str(nats_server_binary()), "-t", "-c", str(conf)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_leaf_url_keeps_tls() -> None:
    assert leaf_url("tls://hub.example:7422", "p/w") == "tls://leafnode:p%2Fw@hub.example:7422"
    assert leaf_url("TLS://hub.example", "pw") == "tls://leafnode:pw@hub.example:17422"
    assert leaf_url("tls://u:x@hub:1", None) == "tls://u:x@hub:1"


def test_supervisor_tls_roles(pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(pki.ca.parent)
    hub = Supervisor(
        grid="g",
        data_dir=tmp_path,
        leaf_listen=("0.0.0.0", 17422),
        leaf_tls=LeafTls(Path(pki.cert.name), Path(pki.key.name)),
    )
    broker = hub._embedded()
    assert broker.leaf_tls == LeafTls(pki.cert, pki.key)  # absolute
    note = hub.leaf_listen_note("tls://127.0.0.1:17422")
    assert "TLS only" in note and "WARNING" not in note
    plain = Supervisor(grid="g", data_dir=tmp_path, leaf_listen=("0.0.0.0", 17422))
    warning = plain.leaf_listen_note("nats-leaf://127.0.0.1:17422")
    assert "WARNING: the leaf link is not encrypted" in warning and "--leaf-cert" in warning
    edge = Supervisor(
        grid="g",
        data_dir=tmp_path,
        edge="s1",
        hub="tls://leafnode:pw@h:1",
        hub_ca=Path(pki.ca.name),
    )
    broker = edge._embedded()
    assert broker.hub_url == "tls://leafnode:pw@h:1" and broker.hub_ca == pki.ca
    with pytest.raises(ConfigError, match="tls://"):
        Supervisor(grid="g", data_dir=tmp_path, edge="s1", hub="nats://h:1", hub_ca=pki.ca)
    with pytest.raises(ConfigError, match="--leafnodes"):
        Supervisor(grid="g", data_dir=tmp_path, leaf_tls=LeafTls(pki.cert, pki.key))


def test_cli_tls_flag_errors(pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gridpilot.cli import main

    missing = tmp_path / "nowhere" / "hub.pem"
    secret = "s3cret-pw"
    cert, key, ca = str(pki.cert), str(pki.key), str(pki.ca)
    cases = [
        (["--leafnodes", "--leaf-cert", cert], "--leaf-cert and --leaf-key go together"),
        (["--leafnodes", "--leaf-key", key], "--leaf-cert and --leaf-key go together"),
        (["--leafnodes", "--leaf-cert", str(missing), "--leaf-key", key], str(missing)),
        (["--leafnodes", "--leaf-cert", cert, "--leaf-key", str(missing)], str(missing)),
        (["--leafnodes", "--leaf-cert", key, "--leaf-key", cert], "no PEM 'CERTIFICATE'"),
        (["--leafnodes", "--leaf-cert", cert, "--leaf-key", cert], "no PEM 'PRIVATE KEY'"),
        (["--leaf-cert", cert, "--leaf-key", key], "go with --leafnodes"),
        (
            ["--edge", "s1", "--hub", f"nats://leafnode:{secret}@h:1", "--hub-ca", ca],
            "use --hub tls://",
        ),
        (["--edge", "s1", "--hub", "tls://h:1", "--hub-ca", str(missing)], str(missing)),
        (["--hub-ca", ca], "--hub-ca goes with --edge"),
    ]
    for args, message in cases:
        code = main(["up", "--data-dir", str(tmp_path / "data"), *args])
        err = capsys.readouterr().err
        assert code == 2 and message in err, (args, err)
        assert err.startswith("gridpilot: error: ") and secret not in err
        if str(missing) in message:
            assert "--leaf" in err or "--hub-ca" in err  # names the flag as well as the file
    assert not (tmp_path / "data").exists()  # nothing started
