"""What the ``gridpilot`` command and its sub-command modules (``history_cli``, ...) share: help
texts, the grid a command works on, connections to the running platform and the one line a
failed bus request becomes. Here so that those modules need not import ``gridpilot.cli``,
which imports them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gridpilot.core.errors import GridPilotError

if TYPE_CHECKING:
    from nats.aio.client import Client

    from gridpilot.platform.locate import Platform


DATA_DIR_HELP = (
    "the platform's data dir (default: GRIDPILOT_DATA_DIR, else the nearest .gridpilot in this "
    "folder or a parent)"
)
DATA_DIR_UP_HELP = (
    "where the platform keeps its data (default: GRIDPILOT_DATA_DIR, else ./.gridpilot)"
)
GRID_HELP = "grid name as given to `up` (simbench:<code> too); default: the running platform's"


def resolve_grid(given: str | None, platform: Platform) -> str:
    """The bus name of the grid a command works on: ``--grid`` as the user typed it
    (``simbench:1-MV-semiurb--0-sw`` is ``1_mv_semiurb__0_sw``), else the running platform's."""
    from gridpilot.model.registry import grid_key

    if given:
        return grid_key(given.strip())
    if not platform.grid:
        raise GridPilotError(
            f"the platform in {platform.data_dir} has not published its grid yet (still "
            "starting?): wait, or name one with --grid"
        )
    return platform.grid


def bus_errors() -> tuple[type[Exception], ...]:
    """What a request over the bus can fail with besides an answer (for ``except``):
    core.bus.BUS_FAILURES, imported when needed (the CLI starts without nats-py)."""
    from gridpilot.core.bus import BUS_FAILURES

    return BUS_FAILURES


def bus_error(exc: Exception, subject: str, who: str) -> GridPilotError:
    """A request to ``who`` (the service that answers ``subject``) that failed, as the one line
    a user reads (core.bus.bus_error)."""
    from gridpilot.core import bus

    return bus.bus_error(exc, subject, who)


async def connect_url(url: str, *, name: str) -> Client:
    """A connection to ``url`` as GRIDPILOT_NATS_USER / GRIDPILOT_NATS_PASSWORD(_FILE) say, or as
    the user in the URL: what every command given a NATS URL (``--nats-url``, or
    GRIDPILOT_NATS_URL for init and health) connects with."""
    from gridpilot.core.bus import connect
    from gridpilot.core.errors import PermissionDeniedError
    from gridpilot.platform.permissions import env_credentials

    user, password = env_credentials(url)
    try:
        return await connect(url, user=user, password=password, name=name, connect_timeout=3)
    except PermissionDeniedError as exc:
        raise GridPilotError(
            f"{exc}; set GRIDPILOT_NATS_USER and GRIDPILOT_NATS_PASSWORD (or "
            "GRIDPILOT_NATS_PASSWORD_FILE) to a user of that server, or write it into the URL "
            "(nats://USER:PASSWORD@HOST:PORT)"
        ) from None


async def client(data_dir: Path | None, nats_url: str | None, identity: str = "viewer") -> Client:
    """A connection as ``identity`` to the running platform (``data_dir`` or the one
    gridpilot.platform.locate finds; NotRunningError when none runs); or to a URL, as
    GRIDPILOT_NATS_USER / GRIDPILOT_NATS_PASSWORD say (or the user in the URL)."""
    from gridpilot.platform import locate

    if nats_url:
        return await connect_url(nats_url, name="cli")
    return await platform_client(locate.platform(data_dir), identity)


async def platform_client(platform: Platform, identity: str = "viewer") -> Client:
    """A connection as ``identity`` to a running platform's broker."""
    from gridpilot.core.bus import connect
    from gridpilot.core.errors import BusError
    from gridpilot.platform import permissions

    url = platform.endpoints.get("nats", "")
    if not url:
        raise GridPilotError(f"{platform.data_dir}: its endpoints name no NATS server")
    from gridpilot.platform.tls import platform_context

    password = permissions.service_password(platform.data_dir, identity)
    tls = platform_context(platform.data_dir, platform.endpoints, identity)
    try:
        return await connect(
            url, user=identity, password=password, name="cli", connect_timeout=2,
            startup_timeout=5, tls=tls,
        )  # fmt: skip
    except BusError as exc:
        raise GridPilotError(
            f"the platform in {platform.data_dir} runs, but its broker does not answer at "
            f"{url} ({exc}); see `gridpilot up`'s output"
        ) from None
