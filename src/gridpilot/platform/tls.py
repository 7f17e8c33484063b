"""The platform's own PKI: a private CA, the server certificate every listener presents (NATS
client port, cluster routes, leaf nodes, MQTT, HTTPS) and one client certificate per NATS
identity and per edge, all under ``<data-dir>/tls`` (``gridpilot certs``, ``gridpilot up --tls``).

The CA's key never leaves the data dir (0600). An edge on another machine is given the CA
certificate, its own ``edge-<name>`` certificate and key, and a server certificate for its own
listeners (``gridpilot certs --hosts EDGE_HOST --edge NAME`` on the hub, then copy ``tls/``
without ``ca.key``): a data dir whose ``tls/`` has certificates but no CA key uses them as they
are.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gridpilot.core.bus import ENV_CA, ENV_CERT, ENV_KEY, client_context
from gridpilot.core.config import ENV_HTTP_CERT as ENV_HTTP_CERT  # re-exported (supervisor)
from gridpilot.core.config import ENV_HTTP_KEY as ENV_HTTP_KEY  # re-exported (supervisor)
from gridpilot.core.errors import ConfigError
from gridpilot.platform.broker import ServerTls
from gridpilot.platform.permissions import ADMIN, PERMISSIONS

log = logging.getLogger("gridpilot.tls")

TLS_DIR = "tls"
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER = "server"
DEFAULT_DAYS = 825  # what browsers accept for a server certificate at most
CA_DAYS = 3650
DEFAULT_HOSTS = ("localhost", "127.0.0.1")

_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
_DNS_RE = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?")
_NAME_RE = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class Pair:
    """A certificate and its private key (PEM files)."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """The files of ``<data-dir>/tls``."""

    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / CA_CERT

    @property
    def ca_key(self) -> Path:
        return self.dir / CA_KEY

    @property
    def server(self) -> Pair:
        return self.pair(SERVER)

    def client(self, identity: str) -> Pair:
        """The client certificate of a NATS identity (``admin``, ``web``, ...)."""
        return self.pair(f"client-{identity}")

    def edge(self, name: str) -> Pair:
        """The client certificate an edge presents on its leaf link to the hub."""
        return self.pair(f"edge-{name}")

    def pair(self, stem: str) -> Pair:
        return Pair(self.dir / f"{stem}.crt", self.dir / f"{stem}.key")


def pki(data_dir: Path) -> Pki:
    """The PKI of a data dir (the files may not exist yet)."""
    return Pki(Path(data_dir).absolute() / TLS_DIR)


def check_host(host: str) -> str:
    """``host`` as a SAN: an IP address or a DNS name; ConfigError otherwise."""
    text = host.strip()
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    name = text[2:] if text.startswith("*.") else text  # a wildcard: *.nats.example.org
    if name and _DNS_RE.fullmatch(name) and not name.replace(".", "").isdigit():
        return text.rstrip(".").lower()
    raise ConfigError(
        f"--hosts: {host!r} is neither an IP address nor a DNS name (use e.g. "
        "gridpilot.example.org or 10.0.0.5, separated by commas)"
    )


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def _write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)  # whatever the umask said
    os.replace(tmp, path)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _load_ca(p: Pki) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(p.ca.read_bytes())
        key = serialization.load_pem_private_key(p.ca_key.read_bytes(), password=None)
    except OSError as e:
        raise ConfigError(f"cannot read the CA in {p.dir}: {e.strerror or e}") from None
    except ValueError as e:
        raise ConfigError(
            f"the CA in {p.dir} is not a PEM certificate and key ({e}); move {p.dir} away "
            "to make a new one"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{p.ca_key}: not an EC key; move {p.dir} away to make a new CA")
    return cert, key


def _make_ca(p: Pki, days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "GridPilot"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"GridPilot CA {p.dir.parent.name}"),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=max(days, CA_DAYS)))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(p.ca_key, _key_pem(key))
    _write_private(p.ca, cert.public_bytes(serialization.Encoding.PEM))
    log.info("tls event=ca_created path=%s", p.ca)
    return cert, key


def _issue(
    pair: Pair,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    *,
    common_name: str,
    days: int,
    server_hosts: list[str] | None = None,
) -> None:
    ca_cert, ca_key = ca
    key = _new_key()
    now = _now()
    usage = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server_hosts is not None:
        usage.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "GridPilot"),
                    x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server_hosts is not None:
        builder = builder.add_extension(_san(server_hosts), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_private(pair.key, _key_pem(key))
    _write_private(pair.cert, cert.public_bytes(serialization.Encoding.PEM))


def server_hosts(p: Pki) -> list[str]:
    """The names and addresses the server certificate is valid for ([] when there is none)."""
    try:
        cert = x509.load_pem_x509_certificate(p.server.cert.read_bytes())
    except (OSError, ValueError):
        return []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n.value) for n in san]


@dataclass(frozen=True)
class Issued:
    """What :func:`ensure_certs` did: the PKI and the files it wrote (empty: all reused)."""

    pki: Pki
    created_ca: bool
    written: tuple[Path, ...]


def ensure_certs(
    data_dir: Path,
    *,
    hosts: list[str] | None = None,
    edges: list[str] | None = None,
    days: int = DEFAULT_DAYS,
    renew: bool = False,
) -> Issued:
    """Make what is missing of ``<data-dir>/tls``: the CA (reused when it exists), the server
    certificate (SANs localhost, 127.0.0.1 and ``hosts``; issued again when a host is new),
    one client certificate per NATS identity and one per edge in ``edges``. ``renew`` issues
    every leaf certificate again (same CA). ConfigError on a bad host, edge name or day count,
    or a folder that cannot be written."""
    if not 1 <= days <= 3650:
        raise ConfigError(f"--days must be 1..3650, not {days}")
    wanted_hosts = list(DEFAULT_HOSTS)
    for h in hosts or []:
        checked = check_host(h)
        if checked not in wanted_hosts:
            wanted_hosts.append(checked)
    for e in edges or []:
        if not _NAME_RE.fullmatch(e):
            raise ConfigError(f"--edge {e!r}: use letters, digits, '-' and '_' only")
    p = pki(data_dir)
    try:
        p.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(p.dir, 0o700)
        if not os.access(p.dir, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as e:
        raise ConfigError(
            f"cannot use {p.dir} for the certificates: {e.strerror or e}; give a data dir "
            "you can write (--data-dir DIR)"
        ) from None
    written: list[Path] = []
    created_ca = False
    if p.ca_key.exists():
        ca = _load_ca(p)
    elif p.ca.exists():
        # an edge's copy of the hub's PKI: use what is there, issue nothing
        missing = [
            str(f)
            for f in (p.server.cert, p.server.key)
            if not f.exists()
        ]  # fmt: skip
        if missing or renew or hosts or edges:
            raise ConfigError(
                f"{p.dir} has the CA certificate but not its key ({p.ca_key}): certificates "
                "are issued where the CA key is (run `gridpilot certs` there and copy the "
                f"files over){'; missing: ' + ', '.join(missing) if missing else ''}"
            )
        return Issued(p, False, ())
    else:
        ca = _make_ca(p, days)
        created_ca = True
        written += [p.ca, p.ca_key]
    server = p.server
    if renew or not server.cert.exists() or not set(wanted_hosts) <= set(server_hosts(p)):
        keep = [h for h in server_hosts(p) if h not in wanted_hosts]
        _issue(server, ca, common_name=wanted_hosts[-1] if hosts else "localhost",
               days=days, server_hosts=wanted_hosts + keep)  # fmt: skip
        written.append(server.cert)
    leaves = [(p.client(i), f"gridpilot-{i}") for i in PERMISSIONS]
    leaves += [(p.edge(e), f"gridpilot-edge-{e}") for e in edges or []]
    for pair, cn in leaves:
        if renew or not (pair.cert.exists() and pair.key.exists()):
            _issue(pair, ca, common_name=cn, days=days)
            written.append(pair.cert)
    return Issued(p, created_ca, tuple(written))


def service_env(p: Pki, identity: str) -> dict[str, str]:
    """The variables that hand a service process the CA and its client certificate."""
    pair = p.client(identity)
    return {ENV_CA: str(p.ca), ENV_CERT: str(pair.cert), ENV_KEY: str(pair.key)}


def platform_context(
    data_dir: Path, endpoints: dict[str, str], identity: str
) -> ssl.SSLContext | None:
    """For a CLI command: the client context to reach a platform that runs with TLS (its
    endpoints name a ``tls_ca``), presenting ``identity``'s certificate; None without TLS."""
    ca = endpoints.get("tls_ca", "")
    if not ca:
        return None
    p = Pki(Path(ca).parent)
    pair = p.client(identity)
    if not pair.cert.exists():
        raise ConfigError(
            f"the platform in {data_dir} runs with TLS but {pair.cert} is missing: run "
            f"`gridpilot certs --data-dir {data_dir}`"
        )
    return client_context(p.ca, pair.cert, pair.key)


def server_tls(p: Pki) -> ServerTls:
    """What the embedded broker needs for ``gridpilot up --tls``: the CA, the server
    certificate, and admin's client certificate for the supervisor's readiness probe."""
    admin = p.client(ADMIN)
    return ServerTls(p.ca, p.server.cert, p.server.key, admin.cert, admin.key)
