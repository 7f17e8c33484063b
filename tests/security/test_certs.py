"""``gridpilot certs``: the platform's own CA and certificates (<data-dir>/tls)."""

from __future__ import annotations

import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from gridpilot.cli import main
from gridpilot.core.errors import ConfigError
from gridpilot.platform.permissions import PERMISSIONS
from gridpilot.platform.tls import ensure_certs, pki

pytestmark = pytest.mark.security


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _sans(path: Path) -> set[str]:
    ext = _cert(path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(n.value) for n in ext}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_certs_cli_makes_a_ca_a_server_and_a_client_certificate_per_identity_and_edge(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "gp"
    argv = ["certs", "--data-dir", str(data_dir), "--hosts", "gp.example.org, 10.0.0.5"]
    assert main([*argv, "--edge", "site1", "--edge", "site-2"]) == 0
    assert "new" in capsys.readouterr().out
    p = pki(data_dir)
    assert _sans(p.server.cert) == {
        "localhost", "gp.example.org", str(ipaddress.ip_address("127.0.0.1")), "10.0.0.5"
    }  # fmt: skip
    usage = _cert(p.server.cert).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usage
    pairs = [p.client(i) for i in PERMISSIONS] + [p.edge("site1"), p.edge("site-2")]
    for pair in [p.server, *pairs]:
        assert _cert(pair.cert).issuer == _cert(p.ca).subject
        # each chains to the CA and matches its key (ssl refuses a mismatched pair)
        ctx = ssl.create_default_context(cafile=str(p.ca))
        ctx.load_cert_chain(str(pair.cert), str(pair.key))
    # every key, the CA's first, and every file and the folder: the owner's alone
    assert _mode(p.ca_key) == 0o600
    assert _mode(p.dir) == 0o700
    for f in p.dir.iterdir():
        assert _mode(f) & 0o077 == 0, f
    assert {_cert(x.cert).subject.rfc4514_string() for x in pairs} >= {
        "CN=gridpilot-admin,O=GridPilot",
        "CN=gridpilot-edge-site1,O=GridPilot",
    }


def test_certs_again_keeps_the_ca_and_the_certificates_renew_reissues_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "gp"
    assert main(["certs", "--data-dir", str(data_dir)]) == 0
    p = pki(data_dir)
    ca, ca_key, admin = p.ca.read_bytes(), p.ca_key.read_bytes(), p.client("admin").cert
    admin_serial = _cert(admin).serial_number
    capsys.readouterr()
    assert main(["certs", "--data-dir", str(data_dir)]) == 0
    assert "kept" in capsys.readouterr().out
    assert (p.ca.read_bytes(), p.ca_key.read_bytes()) == (ca, ca_key)
    assert _cert(admin).serial_number == admin_serial
    # a new host: the server certificate is issued again with the old ones kept, same CA
    assert main(["certs", "--data-dir", str(data_dir), "--hosts", "scada.local"]) == 0
    assert _sans(p.server.cert) == {"localhost", "127.0.0.1", "scada.local"}
    assert _cert(admin).serial_number == admin_serial
    assert main(["certs", "--data-dir", str(data_dir), "--renew", "--days", "30"]) == 0
    assert p.ca.read_bytes() == ca
    renewed = _cert(admin)
    assert renewed.serial_number != admin_serial
    assert (renewed.not_valid_after_utc - renewed.not_valid_before_utc).days == 30
    assert _sans(p.server.cert) == {"localhost", "127.0.0.1", "scada.local"}


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--hosts", "bad host!"], "neither an IP address nor a DNS name"),
        (["--hosts", "a..b"], "neither an IP address nor a DNS name"),
        (["--days", "0"], "--days must be 1..3650"),
        (["--edge", "no/slash"], "--edge 'no/slash'"),
    ],
)
def test_certs_refuses_bad_input_and_says_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], said: str
) -> None:
    assert main(["certs", "--data-dir", str(tmp_path / "gp"), *argv]) == 2
    assert said in capsys.readouterr().err
    assert not (tmp_path / "gp" / "tls" / "ca.key").exists()


def test_certs_in_a_folder_that_cannot_be_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["certs", "--data-dir", str(blocker)]) == 2
    err = capsys.readouterr().err
    assert f"cannot use {blocker / 'tls'} for the certificates" in err and "--data-dir" in err


def test_an_edges_copy_without_the_ca_key_is_used_as_it_is(tmp_path: Path) -> None:
    hub = ensure_certs(tmp_path / "hub", edges=["site1"]).pki
    edge_dir = tmp_path / "edge"
    (edge_dir / "tls").mkdir(parents=True)
    for f in hub.dir.iterdir():
        if f.name != "ca.key":
            (edge_dir / "tls" / f.name).write_bytes(f.read_bytes())
    assert ensure_certs(edge_dir).written == ()
    with pytest.raises(ConfigError, match="certificates are issued where the CA key is"):
        ensure_certs(edge_dir, renew=True)
