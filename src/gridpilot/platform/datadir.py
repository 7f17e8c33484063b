"""One platform per data dir: the supervisor holds an exclusive lock on ``supervisor.lock`` in
it for as long as it runs, so a second ``gridpilot up`` on the same data dir is refused before
it starts a broker or rewrites the running platform's files."""

from __future__ import annotations

import fcntl
import os
import signal
from pathlib import Path

from gridpilot.core.errors import ConfigError

LOCK_FILE = "supervisor.lock"
# what `gridpilot devices revoke|rotate` sends the supervisor holding the lock, for it to
# reload nats.conf (not SIGHUP: closing the terminal of a `gridpilot up` must still stop it)
RELOAD_SIGNAL = signal.SIGUSR1


class DataDirLock:
    """The held lock; released by :meth:`release` or when the process ends (the kernel drops
    a dead process's locks, so a killed supervisor leaves nothing stale behind)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None


def lock_data_dir(data_dir: Path) -> DataDirLock:
    """Take the data dir's lock, or raise ConfigError naming the supervisor that holds it."""
    path = Path(data_dir) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ConfigError(
            f"a GridPilot platform is already running with data dir {data_dir} (supervisor "
            f"pid {holder}): stop it first (Ctrl-C in its terminal, or kill {holder}), or start "
            "this one with its own --data-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return DataDirLock(path, fd)
