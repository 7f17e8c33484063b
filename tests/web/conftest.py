"""The web API served by uvicorn on a real port, over the session's real broker."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import websockets
from litestar import Litestar
from nats.aio.client import Client

from gridpilot.core.bus import ensure_jetstream
from gridpilot.core.config import ServiceConfig
from gridpilot.model import distribution
from gridpilot.model.placement import default_placement
from gridpilot.platform.broker import EmbeddedNats, pick_port
from gridpilot.services.web.api import create_app
from gridpilot.services.web.bridge import Bridge
from gridpilot.services.web.service import _Server as Server
from gridpilot.services.web.users import Role, Tokens, UserStore
from tests.conftest import ConnectAs
from tests.pipeline import grid as load

GRID = "cigre_mv"
PASSWORDS = {"vic": "viewer-pass-1", "olga": "operator-pass-1", "ada": "admin-pass-12"}


class Api(httpx.AsyncClient):
    """An HTTP client of the app served by uvicorn on a real port, plus its WebSocket URL."""

    ws_url: str
    bridge: Bridge  # the app's window on the bus (tests look at what it holds)
    app: Litestar  # the app itself (its route table)
    users: UserStore  # the app's users (tests add some)
    tokens: Tokens  # its sessions (tests issue some without signing in)

    def websocket_connect(self, path: str, headers: dict[str, str] | None = None) -> Any:
        return websockets.connect(self.ws_url + path, additional_headers=headers or {})


@contextlib.asynccontextmanager
async def serve(
    web_nc: Client, data_dir: Path, *, clock: Callable[[], int] = time.time_ns
) -> AsyncIterator[Api]:
    """The app over ``web_nc`` (a connection as the web identity) on a free port, with the
    users of PASSWORDS in ``data_dir``; the grid must be published already. ``clock`` is the
    sessions' and login throttle's (ns)."""
    users = UserStore(data_dir)
    users.add("vic", Role.VIEWER, PASSWORDS["vic"])
    users.add("olga", Role.OPERATOR, PASSWORDS["olga"])
    users.add("ada", Role.ADMIN, PASSWORDS["ada"])
    bridge = Bridge(web_nc)
    await bridge.start()
    tokens = Tokens(data_dir, users, clock=clock)
    app = create_app(bridge=bridge, users=users, tokens=tokens, grid=GRID)
    port = pick_port("127.0.0.1", 0, [])
    server = Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    try:
        async with Api(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            client.ws_url = f"ws://127.0.0.1:{port}"
            client.bridge = bridge
            client.app = app
            client.users = users
            client.tokens = tokens
            yield client
    finally:
        server.should_exit = True
        await task


async def publish_grid(admin_nc: Client) -> None:
    await ensure_jetstream(admin_nc)
    model = load(GRID)
    await distribution.publish(admin_nc, distribution.package(model, default_placement(model)))


@pytest.fixture
async def api(admin_nc: Client, connect_as: ConnectAs, tmp_path: Path) -> AsyncIterator[Api]:
    await publish_grid(admin_nc)
    async with serve(await connect_as("web"), tmp_path) as client:
        yield client


async def login(client: Api, user: str) -> dict[str, str]:
    r = await client.post("/api/auth/login", json={"user": user, "password": PASSWORDS[user]})
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


@pytest.fixture
async def services(
    nats_server: EmbeddedNats, credentials: dict[str, str], tmp_path: Path
) -> AsyncIterator[list[Any]]:
    running: list[tuple[Any, asyncio.Task[None]]] = []

    def start(cls: Any) -> Any:
        svc = cls(
            ServiceConfig(
                nats_url=nats_server.url, user=cls.name, password=credentials[cls.name],
                grid=GRID, data_dir=tmp_path, heartbeat_s=0.2,
            )
        )  # fmt: skip
        running.append((svc, asyncio.create_task(svc.run(install_signals=False))))
        return svc

    yield [start]
    for svc, _ in running:
        svc.stop()
    for _, task in running:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)


# -- the browser tests' platform, browser and page (tests/web/hmi_support.py) ----------------
@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """``gridpilot up`` on a fresh data dir, with users made beforehand through the CLI."""
    from tests.web.hmi_support import run_platform

    yield from run_platform(tmp_path_factory)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from tests.web.hmi_support import run_browser

    yield from run_browser()


@pytest.fixture
def page(browser: Any, platform: Any) -> Iterator[Any]:
    """A fresh browser context (no cookie) per test; JavaScript exceptions fail the test."""
    from tests.web.hmi_support import open_page

    yield from open_page(browser, platform)
