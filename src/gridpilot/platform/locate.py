"""How a command finds the platform it talks to: the data dir (``--data-dir``, else
GRIDPILOT_DATA_DIR, else ``.gridpilot`` in this folder or the nearest parent that has one),
the endpoints the running supervisor wrote there, and the grid it runs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gridpilot.core.config import DEFAULT_DATA_DIR, env_text
from gridpilot.core.config import ENV_DATA_DIR as ENV_DATA_DIR  # re-exported
from gridpilot.core.errors import ConfigError
from gridpilot.platform.broker import ENDPOINTS_FILE, read_endpoints


class NotRunningError(ConfigError):
    """No platform runs with the data dir a command looked in."""

    def __init__(self, data_dir: Path, why: str) -> None:
        self.data_dir = data_dir
        super().__init__(
            f"no GridPilot platform is running with data dir {data_dir} ({why}); start one "
            f"with `gridpilot up --data-dir {data_dir}`, or point at a running one with "
            f"--data-dir DIR or {ENV_DATA_DIR}=DIR"
        )


def data_dir(given: Path | None) -> Path:
    """The data dir a command uses: the one given, else $GRIDPILOT_DATA_DIR, else the nearest
    ``.gridpilot`` folder (this folder or a parent) that holds a platform's endpoints, else
    ``./.gridpilot``."""
    if given is not None:
        return given
    env = env_text(ENV_DATA_DIR)
    if env:
        return Path(env)
    here = Path.cwd()
    for folder in (here, *here.parents):
        candidate = folder / DEFAULT_DATA_DIR
        if (candidate / ENDPOINTS_FILE).is_file():
            return candidate
    return DEFAULT_DATA_DIR


@dataclass(frozen=True)
class Platform:
    """A running platform, as its supervisor described itself in ``endpoints.json``."""

    data_dir: Path
    endpoints: dict[str, str]

    @property
    def grid(self) -> str:
        """The grid ``gridpilot up`` runs (its bus name), or "" when it did not say."""
        return self.endpoints.get("grid", "")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def platform(given: Path | None) -> Platform:
    """The platform running with the data dir :func:`data_dir` finds; NotRunningError when
    there is none (no endpoints file, or its supervisor has exited)."""
    folder = data_dir(given)
    if not (folder / ENDPOINTS_FILE).is_file():
        why = "it does not exist" if not folder.exists() else f"no {ENDPOINTS_FILE} in it"
        raise NotRunningError(folder, why)
    endpoints = read_endpoints(folder)
    pid_text = endpoints.get("supervisor_pid", "")
    if pid_text.isdigit() and not _alive(int(pid_text)):
        raise NotRunningError(folder, f"its supervisor (pid {pid_text}) has exited")
    return Platform(data_dir=folder, endpoints=endpoints)
