"""Service configuration from the environment (what the supervisor or a container sets)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gridpilot.core.errors import ConfigError

DEFAULT_DATA_DIR = Path(".gridpilot")
DEFAULT_GRID = "cigre_mv"


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
    # password of the mqtt_device identity its virtual meters connect with.
    mqtt_url: str = ""
    mqtt_password: str | None = None
    # The historian's database: a SQLite path or a postgresql:// URL; "" for the default,
    # <data_dir>/historian.sqlite.
    db_url: str = ""

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
        return cls(
            nats_url=env.get("GRIDPILOT_NATS_URL", "nats://127.0.0.1:14222"),
            user=env.get("GRIDPILOT_NATS_USER") or None,
            password=_secret("GRIDPILOT_NATS_PASSWORD"),
            grid=grid or env.get("GRIDPILOT_GRID", DEFAULT_GRID),
            data_dir=Path(env.get("GRIDPILOT_DATA_DIR", str(DEFAULT_DATA_DIR))),
            speed=speed,
            mqtt_url=env.get("GRIDPILOT_MQTT_URL", ""),
            mqtt_password=_secret("GRIDPILOT_MQTT_PASSWORD"),
            db_url=env.get("GRIDPILOT_DB", ""),
        )


def _secret(name: str) -> str | None:
    """``$NAME``, or the content of the file ``$NAME_FILE`` names (a mounted secret)."""
    path = os.environ.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text().strip() or None
        except OSError as exc:
            raise ConfigError(f"{name}_FILE={path}: cannot read it ({exc.strerror})") from None
    return os.environ.get(name) or None
