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

# Environment variables a service reads its TLS files from (core/bus.connect, the simulator's
# MQTT meters, the web service): set by the supervisor under `gridpilot up --tls`.
ENV_HTTP_CERT = "GRIDPILOT_HTTP_CERT"
ENV_HTTP_KEY = "GRIDPILOT_HTTP_KEY"


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
        speed_text = env.get("GRIDPILOT_SPEED", "1")
        try:
            speed = float(speed_text)
        except ValueError:
            raise ConfigError(f"GRIDPILOT_SPEED must be a number, not {speed_text!r}") from None
        if not speed > 0:
            raise ConfigError(f"GRIDPILOT_SPEED must be > 0, not {speed}")
        wait_text = env.get("GRIDPILOT_MODEL_WAIT_S", str(DEFAULT_MODEL_WAIT_S))
        try:
            model_wait_s = float(wait_text)
        except ValueError:
            raise ConfigError(
                f"GRIDPILOT_MODEL_WAIT_S must be a number of seconds, not {wait_text!r}"
            ) from None
        if not model_wait_s >= 0:
            raise ConfigError(f"GRIDPILOT_MODEL_WAIT_S must be >= 0, not {model_wait_s}")
        return cls(
            nats_url=env.get("GRIDPILOT_NATS_URL", "nats://127.0.0.1:14222"),
            user=env.get("GRIDPILOT_NATS_USER") or None,
            password=env_secret("GRIDPILOT_NATS_PASSWORD"),
            grid=grid or env.get("GRIDPILOT_GRID", DEFAULT_GRID),
            data_dir=Path(env.get("GRIDPILOT_DATA_DIR", str(DEFAULT_DATA_DIR))),
            speed=speed,
            mqtt_url=env.get("GRIDPILOT_MQTT_URL", ""),
            mqtt_credentials=(
                Path(env["GRIDPILOT_DEVICE_CREDENTIALS_FILE"])
                if env.get("GRIDPILOT_DEVICE_CREDENTIALS_FILE")
                else None
            ),
            db_url=env.get("GRIDPILOT_DB", ""),
            db_password=env_secret("GRIDPILOT_DB_PASSWORD"),
            model_wait_s=model_wait_s,
            instance=env_instance(),
        )


def env_instance() -> str:
    """GRIDPILOT_INSTANCE, checked ("" when unset): a service's instance id, and the one its
    health probe, run in the same container, looks for."""
    instance = os.environ.get("GRIDPILOT_INSTANCE", "").strip()
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
