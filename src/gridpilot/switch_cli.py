"""``gridpilot switch TARGET open|close``: switching from the command line, through the same
path as the HMI (stream GP_CMD, select-before-operate at the RTU by the IEC 104 gateway, or
the simulator for a switch no RTU operates) and into the same audit trail, as user
``cli:<login>``. Exit code 0 when the switch operated, 1 when refused; errors say why."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import time
import uuid
from pathlib import Path

from gridpilot.core import bus, operate
from gridpilot.core.errors import GridPilotError, PermissionDeniedError
from gridpilot.core.operate import NoResult
from gridpilot.core.schemas import Command, CommandKind
from gridpilot.core.subjects import grid_token
from gridpilot.model import distribution
from gridpilot.model.grid import GridModel, Switch
from gridpilot.platform import locate, permissions
from gridpilot.platform.tls import platform_context

CONNECT_S = 5.0  # a platform that runs answers at once


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "switch",
        help="open or close a switch as the HMI does (select-before-operate, audit trail)",
    )
    p.add_argument("target", help="the switch: its id (sw_4) or its name (S1)")
    p.add_argument("action", choices=["open", "close"])
    p.add_argument("--grid", default=None, help="default: the grid the platform runs")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="the running platform's data dir (default: GRIDPILOT_DATA_DIR, else the "
        "nearest .gridpilot)",
    )


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_switch(args))


def find_switch(model: GridModel, target: str) -> Switch:
    """The switch ``target`` names: its id, else its name when only one switch has it."""
    for sw in model.switches:
        if sw.id == target:
            return sw
    named = [sw for sw in model.switches if sw.name == target]
    if len(named) == 1:
        return named[0]
    if named:
        ids = ", ".join(sw.id for sw in named)
        raise GridPilotError(f"{len(named)} switches are named {target!r} ({ids}): give the id")
    known = [sw.id if sw.name == sw.id else f"{sw.id} ({sw.name})" for sw in model.switches]
    listed = ", ".join(known[:20]) + (f" and {len(known) - 20} more" if len(known) > 20 else "")
    raise GridPilotError(f"no switch {target!r} in grid {model.name}; its switches: {listed}")


def cli_user() -> str:
    try:
        login = getpass.getuser()
    except (KeyError, OSError):  # no login name for this uid (a container)
        login = "unknown"
    return f"cli:{login}"


async def _switch(args: argparse.Namespace) -> int:
    from gridpilot.model.registry import grid_key

    platform = locate.platform(args.data_dir)
    grid = grid_token(grid_key(args.grid)) if args.grid else platform.grid
    if not grid:
        raise GridPilotError(
            f"the platform in {platform.data_dir} does not say its grid; give --grid"
        )
    url = platform.endpoints.get("nats", "")
    if not url:
        raise locate.NotRunningError(platform.data_dir, "its endpoints name no NATS server")
    try:
        nc = await bus.connect(
            url,
            user=permissions.ADMIN,
            password=permissions.service_password(platform.data_dir, permissions.ADMIN),
            name="cli-switch",
            connect_timeout=2.0,
            startup_timeout=CONNECT_S,
            tls=platform_context(platform.data_dir, platform.endpoints, permissions.ADMIN),
        )
    except PermissionDeniedError as exc:
        raise GridPilotError(
            f"{exc}: credentials.json in {platform.data_dir} does not fit"
        ) from None
    user = cli_user()
    try:
        pkg = await distribution.fetch(nc, grid)
        switch = find_switch(pkg.model, args.target)
        cmd = Command(
            id=f"cli-{uuid.uuid4().hex[:12]}",
            grid=grid,
            kind=CommandKind.SWITCH,
            target=switch.id,
            issued_by=user,
            t_ns=time.time_ns(),
            closed=args.action == "close",
        )
        try:
            result = await operate.execute(nc, cmd)
        except NoResult as exc:
            audit = operate.command_audit(cmd, None, user=user, role="admin", error=str(exc))
            await operate.write_audit(nc, audit)
            raise
        await operate.write_audit(nc, operate.command_audit(cmd, result, user=user, role="admin"))
    finally:
        await nc.close()
    name = switch.id if switch.name == switch.id else f"{switch.id} ({switch.name})"
    if not result.ok:
        done = "opened" if args.action == "open" else "closed"
        print(f"refused: switch {name} not {done} ({result.executed_by}): {result.error}")
        return 1
    print(f"done by {result.executed_by}: {result.change}")
    return 0
