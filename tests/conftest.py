"""Shared fixtures: one real embedded nats-server per test session, clients for each identity."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from pathlib import Path

import nats.js.errors
import pytest
from nats.aio.client import Client

from gridpilot.core import bus
from gridpilot.model import distribution
from gridpilot.platform.broker import EmbeddedNats, write_endpoints
from gridpilot.platform.permissions import (
    ADMIN,
    DEVICE_CREDENTIALS_FILE,
    device_logins,
    ensure_device_credentials,
    load_credentials,
)

ConnectAs = Callable[..., Awaitable[Client]]


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """A broker on free ports (not the platform's defaults, which a developer may be using)."""
    data_dir: Path = tmp_path_factory.mktemp("gridpilot-data")
    server = EmbeddedNats(data_dir=data_dir, port=0, monitor_port=0, mqtt_port=0)
    server.start()
    write_endpoints(data_dir, server.endpoints)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def credentials(nats_server: EmbeddedNats) -> dict[str, str]:
    """Password of every identity of the session's broker, by identity name."""
    return load_credentials(nats_server.data_dir)


MeterLogins = Callable[[str, Iterable[str]], Path]


@pytest.fixture
def meter_logins(nats_server: EmbeddedNats) -> MeterLogins:
    """``meter_logins(grid, devices)``: those meters get their own MQTT users on the session's
    broker (reloaded when one is new); returns the device_credentials.json path."""

    def _ensure(grid: str, devices: Iterable[str]) -> Path:
        if ensure_device_credentials(nats_server.data_dir, grid, devices):
            nats_server.reload()
        return nats_server.data_dir / DEVICE_CREDENTIALS_FILE

    return _ensure


def meter_login(nats_server: EmbeddedNats, grid: str, device: str) -> tuple[str, str]:
    """(MQTT user, password) of one meter of the session's broker, created if new."""
    if ensure_device_credentials(nats_server.data_dir, grid, [device]):
        nats_server.reload()
    return device_logins(nats_server.data_dir / DEVICE_CREDENTIALS_FILE, grid)[device]


@pytest.fixture
async def connect_as(
    nats_server: EmbeddedNats, credentials: dict[str, str]
) -> AsyncIterator[ConnectAs]:
    """``await connect_as("simulator")``: a client with that identity, closed after the test."""
    clients: list[Client] = []

    async def _connect(identity: str, **kwargs: object) -> Client:
        nc = await bus.connect(
            nats_server.url,
            user=identity,
            password=credentials[identity],
            name=f"test-{identity}",
            startup_timeout=5.0,
            **kwargs,  # type: ignore[arg-type]
        )
        clients.append(nc)
        return nc

    yield _connect
    for nc in clients:
        await nc.close()


@pytest.fixture
async def admin_nc(connect_as: ConnectAs) -> Client:
    """An admin client with every stream, bucket and object store in place."""
    nc = await connect_as(ADMIN)
    await bus.ensure_jetstream(nc)
    return nc


async def remove_grid(nc: Client, name: str) -> None:
    """Delete a grid's package and purge its delete marker, which a plain delete leaves listed
    (the other tests of the session list the grids)."""
    store = await nc.jetstream().object_store(distribution.BUCKET)
    with contextlib.suppress(nats.js.errors.NotFoundError):  # already gone
        await store.delete(f"{name}.json")
    meta = base64.urlsafe_b64encode(f"{name}.json".encode()).decode()
    await nc.jetstream().purge_stream(
        f"OBJ_{distribution.BUCKET}", subject=f"$O.{distribution.BUCKET}.M.{meta}"
    )
