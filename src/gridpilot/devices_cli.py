"""``gridpilot devices list|revoke|rotate --grid G [DEVICE]``: the MQTT credential of each meter.

Every meter connects as its own NATS user (``meter.<grid>.<device>``), its password in
``device_credentials.json`` in the data dir. Revoking or rotating one updates that file and has
the running platform reload nats.conf (SIGUSR1 to its supervisor): the server closes the
connection of a revoked meter and refuses it from then on.
"""

from __future__ import annotations

import argparse
import fcntl
import os
from pathlib import Path

from gridpilot.core.errors import ConfigError
from gridpilot.platform import permissions
from gridpilot.platform.datadir import LOCK_FILE, RELOAD_SIGNAL

DATA_DIR_HELP = "the platform's data dir (default: GRIDPILOT_DATA_DIR or .gridpilot)"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``devices`` command and its subcommands."""
    devices = sub.add_parser("devices", help="credentials of the field devices (MQTT meters)")
    dsub = devices.add_subparsers(dest="devices_command", required=True)
    ls = dsub.add_parser("list", help="every meter of a grid and whether it may connect")
    revoke = dsub.add_parser(
        "revoke", help="take a meter's credential away (the running broker drops it at once)"
    )
    rotate = dsub.add_parser("rotate", help="give a meter a new password (printed once)")
    for command in (revoke, rotate):
        command.add_argument("device")
    for command in (ls, revoke, rotate):
        command.add_argument("--grid", required=True, help="the grid's name on the bus")
        command.add_argument("--data-dir", type=Path, default=None, help=DATA_DIR_HELP)


def running_supervisor(data_dir: Path) -> int | None:
    """The pid of the supervisor running on ``data_dir``, None if none is: it holds the data
    dir's lock (a stale pid of a dead one is never signalled)."""
    path = data_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else None
        return None  # we got the lock: nobody holds it
    finally:
        os.close(fd)


def reload_platform(data_dir: Path) -> str:
    """Ask the platform running on ``data_dir`` to reload nats.conf; says what happened."""
    pid = running_supervisor(data_dir)
    if pid is None:
        return f"no platform is running on {data_dir}: the change applies at its next start"
    os.kill(pid, RELOAD_SIGNAL)
    return f"asked the supervisor (pid {pid}) to reload nats.conf: applied within a second"


def run(args: argparse.Namespace) -> int:
    """Carry out ``gridpilot devices ...``."""
    from gridpilot.platform.locate import data_dir

    folder = data_dir(args.data_dir)
    path = folder / permissions.DEVICE_CREDENTIALS_FILE
    if not path.exists():
        raise ConfigError(
            f"{path} does not exist: start the platform once on {folder} (`gridpilot up "
            f"--data-dir {folder}`), which gives every meter of its grid a credential"
        )
    grid = args.grid
    if args.devices_command == "list":
        creds = permissions.device_credentials(folder, grid).get(grid)
        if not creds:
            raise ConfigError(f"no meters of grid {grid!r} in {path}")
        for cred in creds:
            state = "revoked" if cred.revoked else "active"
            print(f"{cred.device:32s} {permissions.device_user(grid, cred.device):48s} {state}")
        return 0
    if args.devices_command == "revoke":
        permissions.revoke_device(folder, grid, args.device)
        print(f"meter {args.device} of grid {grid}: credential revoked")
    else:
        password = permissions.rotate_device(folder, grid, args.device)
        print(f"meter {args.device} of grid {grid}: new credential (shown once)")
        print(f"  MQTT user:     {permissions.device_user(grid, args.device)}")
        print(f"  MQTT password: {password}")
    print(reload_platform(folder))
    return 0
