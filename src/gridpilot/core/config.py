"""Service configuration from the environment (what the supervisor or a container sets)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from gridpilot.core.errors import ConfigError

DEFAULT_DATA_DIR = Path(".gridpilot")
DEFAULT_GRID = "cigre_mv"
DEFAULT_MODEL_WAIT_S = 300.0
# An instance id becomes part of KV keys and lease values (state_estimation.<instance>).
INSTANCE_ID = re.compile(r"^[-_a-zA-Z0-9]{1,64}$")
HTTP_PORT = 18080  # the web service's (the supervisor picks a free one when it is taken)

# --- Environment variables: every name GridPilot reads is declared here, once, and read through
# this module (the supervisor or a container sets them; other modules import the names).
ENV_DATA_DIR = "GRIDPILOT_DATA_DIR"
ENV_GRID = "GRIDPILOT_GRID"
ENV_SPEED = "GRIDPILOT_SPEED"
ENV_MODEL_WAIT_S = "GRIDPILOT_MODEL_WAIT_S"
ENV_INSTANCE = "GRIDPILOT_INSTANCE"
ENV_NATS_URL = "GRIDPILOT_NATS_URL"
ENV_NATS_USER = "GRIDPILOT_NATS_USER"
ENV_NATS_PASSWORD = "GRIDPILOT_NATS_PASSWORD"  # or ..._FILE (env_secret)
# The TLS files a service connects with (set by `gridpilot up --tls`): the CA the server's
# certificate must chain to, and the service's own client certificate and key.
ENV_NATS_CA = "GRIDPILOT_NATS_CA"
ENV_NATS_CERT = "GRIDPILOT_NATS_CERT"
ENV_NATS_KEY = "GRIDPILOT_NATS_KEY"
# Overrides Service.pending_bytes: how much a service keeps for the broker while it is away
# (memory against what an outage costs); the supervisor passes it on to its children.
ENV_PENDING_BYTES = "GRIDPILOT_NATS_PENDING_BYTES"
ENV_MQTT_URL = "GRIDPILOT_MQTT_URL"
ENV_DEVICE_CREDENTIALS = "GRIDPILOT_DEVICE_CREDENTIALS_FILE"
ENV_DB = "GRIDPILOT_DB"
ENV_DB_PASSWORD = "GRIDPILOT_DB_PASSWORD"  # or ..._FILE (env_secret)
ENV_HISTORIAN_RAW_DAYS = "GRIDPILOT_HISTORIAN_RAW_DAYS"
ENV_HISTORIAN_AGG_DAYS = "GRIDPILOT_HISTORIAN_AGG_DAYS"
ENV_HISTORIAN_EST_PERIOD_S = "GRIDPILOT_HISTORIAN_EST_PERIOD_S"
ENV_HTTP_HOST = "GRIDPILOT_HTTP_HOST"
ENV_HTTP_PORT = "GRIDPILOT_HTTP_PORT"
# The web service's TLS files: set by the supervisor under `gridpilot up --tls`.
ENV_HTTP_CERT = "GRIDPILOT_HTTP_CERT"
ENV_HTTP_KEY = "GRIDPILOT_HTTP_KEY"
ENV_PUBLIC_ORIGIN = "GRIDPILOT_PUBLIC_ORIGIN"
ENV_LEAF_PASSWORD = "GRIDPILOT_LEAF_PASSWORD"  # an edge's password at its hub
ENV_DEBUG = "GRIDPILOT_DEBUG"  # the CLI shows tracebacks
ENV_XDG_STATE_HOME = "XDG_STATE_HOME"  # where the machine-wide port lock lives


def env(name: str) -> str | None:
    """The environment variable ``name`` as set (None when unset); ``name`` is one of the
    ``ENV_*`` names above."""
    return os.environ.get(name)


def env_text(name: str) -> str:
    """The environment variable ``name`` without surrounding blanks; "" when unset."""
    return os.environ.get(name, "").strip()


@dataclass(frozen=True, kw_only=True)
class ServiceConfig:
    nats_url: str
    user: str | None
    password: str | None
    grid: str
    data_dir: Path
    speed: float = 1.0
    heartbeat_s: float = 1.0
    # Only the simulator, which plays the field devices, gets these: the MQTT listener and the
    # file with the credential of each meter (GRIDPILOT_DEVICE_CREDENTIALS_FILE,
    # device_credentials.json): every virtual meter connects as its own user.
    mqtt_url: str = ""
    mqtt_credentials: Path | None = None
    # The historian's database: a SQLite path or a postgresql:// URL; "" for the default,
    # <data_dir>/historian.sqlite.
    db_url: str = ""
    # Its password when the URL has none (GRIDPILOT_DB_PASSWORD or the file
    # GRIDPILOT_DB_PASSWORD_FILE names: a mounted secret); libpq's PGPASSWORD works too.
    db_password: str | None = None
    # How long a service started before its grid model was published waits for it
    # (GRIDPILOT_MODEL_WAIT_S; 0: fail at once).
    model_wait_s: float = DEFAULT_MODEL_WAIT_S
    # The service's instance id (GRIDPILOT_INSTANCE, e.g. the pod's name): "" draws a random
    # one. The health probe reads the same variable to find this instance's heartbeat.
    instance: str = ""

    @classmethod
    def from_env(cls, *, grid: str | None = None) -> ServiceConfig:
        env = os.environ
        speed_text = env.get(ENV_SPEED, "1")
        try:
            speed = float(speed_text)
        except ValueError:
            raise ConfigError(f"{ENV_SPEED} must be a number, not {speed_text!r}") from None
        if not speed > 0:
            raise ConfigError(f"{ENV_SPEED} must be > 0, not {speed}")
        wait_text = env.get(ENV_MODEL_WAIT_S, str(DEFAULT_MODEL_WAIT_S))
        try:
            model_wait_s = float(wait_text)
        except ValueError:
            raise ConfigError(
                f"GRIDPILOT_MODEL_WAIT_S must be a number of seconds, not {wait_text!r}"
            ) from None
        if not model_wait_s >= 0:
            raise ConfigError(f"GRIDPILOT_MODEL_WAIT_S must be >= 0, not {model_wait_s}")
        return cls(
            nats_url=env.get(ENV_NATS_URL, "nats://127.0.0.1:14222"),
            user=env.get(ENV_NATS_USER) or None,
            password=env_secret(ENV_NATS_PASSWORD),
            grid=grid or env.get(ENV_GRID, DEFAULT_GRID),
            data_dir=Path(env.get(ENV_DATA_DIR, str(DEFAULT_DATA_DIR))),
            speed=speed,
            mqtt_url=env.get(ENV_MQTT_URL, ""),
            mqtt_credentials=(
                Path(env[ENV_DEVICE_CREDENTIALS]) if env.get(ENV_DEVICE_CREDENTIALS) else None
            ),
            db_url=env.get(ENV_DB, ""),
            db_password=env_secret(ENV_DB_PASSWORD),
            model_wait_s=model_wait_s,
            instance=env_instance(),
        )


def env_instance() -> str:
    """GRIDPILOT_INSTANCE, checked ("" when unset): a service's instance id, and the one its
    health probe, run in the same container, looks for."""
    instance = os.environ.get(ENV_INSTANCE, "").strip()
    if instance and not INSTANCE_ID.match(instance):
        raise ConfigError(
            f"GRIDPILOT_INSTANCE={instance!r}: use up to 64 letters, digits, '-' or '_' "
            "(a pod's name fits)"
        )
    return instance


def env_secret(name: str) -> str | None:
    """``$NAME``, or the content of the file ``$NAME_FILE`` names (a mounted secret)."""
    path = os.environ.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text().strip() or None
        except OSError as exc:
            raise ConfigError(f"{name}_FILE={path}: cannot read it ({exc.strerror})") from None
    return os.environ.get(name) or None


def pending_bytes(default: int) -> int:
    """``GRIDPILOT_NATS_PENDING_BYTES`` if set (a ConfigError unless a positive integer)."""
    text = env_text(ENV_PENDING_BYTES)
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"{ENV_PENDING_BYTES} must be a positive number of bytes, not {text!r}")
    return value


def http_address() -> tuple[str, int]:
    """Where the web service listens: GRIDPILOT_HTTP_HOST (127.0.0.1) and GRIDPILOT_HTTP_PORT
    (HTTP_PORT); a ConfigError for a port that is not one."""
    host = os.environ.get(ENV_HTTP_HOST, "127.0.0.1")
    text = os.environ.get(ENV_HTTP_PORT, str(HTTP_PORT))
    try:
        port = int(text)
    except ValueError:
        raise ConfigError(f"{ENV_HTTP_PORT} must be a port number, not {text!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{ENV_HTTP_PORT} must be 0..65535, not {port}")
    return host, port


def https_files() -> tuple[str | None, str | None]:
    """The certificate and key to serve HTTPS with (GRIDPILOT_HTTP_CERT and GRIDPILOT_HTTP_KEY,
    set by `gridpilot up --tls`); (None, None) for plain HTTP. A ConfigError when only one is
    set or one cannot be read."""
    cert = env_text(ENV_HTTP_CERT) or None
    key = env_text(ENV_HTTP_KEY) or None
    if (cert is None) != (key is None):
        raise ConfigError(f"{ENV_HTTP_CERT} and {ENV_HTTP_KEY} go together: set both or neither")
    for name, path in ((ENV_HTTP_CERT, cert), (ENV_HTTP_KEY, key)):
        if path is not None and not os.access(path, os.R_OK):
            raise ConfigError(f"{name}={path}: cannot read it")
    return cert, key
