"""The web service: the operator HMI and the REST/WebSocket API, served by uvicorn inside the
service's own event loop, talking to the platform only through the bus."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import uvicorn

from gridpilot.core.config import ENV_PUBLIC_ORIGIN, env_text
from gridpilot.core.config import http_address as http_address  # re-exported
from gridpilot.core.config import https_files as https_files  # re-exported
from gridpilot.core.errors import ConfigError
from gridpilot.core.service import Service
from gridpilot.services.web.api import create_app
from gridpilot.services.web.bridge import Bridge
from gridpilot.services.web.protect import public_origin
from gridpilot.services.web.users import Tokens, UserStore


class WebService(Service):
    name = "web"

    async def setup(self) -> None:
        users = UserStore(self.config.data_dir)
        first = users.ensure_first_admin()
        if first is not None:
            # shown once, on the terminal of whoever started the service; never logged
            print(
                f"GridPilot: first start: user 'admin', one-time password {first} "
                "(to be changed at the first login)",
                file=sys.stderr,
                flush=True,
            )
        self.bridge = Bridge(self.nc)
        await self.bridge.start()
        public = env_text(ENV_PUBLIC_ORIGIN)
        app = create_app(
            bridge=self.bridge, users=users, tokens=Tokens(self.config.data_dir, users),
            grid=self.grid, public_origin=public_origin(public) if public else None,
        )  # fmt: skip
        host, port = http_address()
        cert, key = https_files()
        config = uvicorn.Config(
            app, host=host, port=port, log_level="warning", access_log=False, lifespan="on",
            ws_max_size=1 << 20, ssl_certfile=cert, ssl_keyfile=key,
        )  # fmt: skip
        self.server = _Server(config)
        self.spawn(self._serve(), name="http")
        url = f"{'https' if cert else 'http'}://{host}:{port}"
        self.info["http"] = url
        self.log.info("serving", extra={"http": url})

    async def _serve(self) -> None:
        try:
            await self.server.serve()
            if not self.server.started:
                host, port = http_address()
                raise ConfigError(f"cannot serve HTTP on {host}:{port} (in use?)")
        finally:
            if self.server.started:  # stopped by the service: close sockets and connections
                self.server.should_exit = True
                try:
                    await self.server.shutdown()
                except Exception as exc:  # stopping anyway: say why it may not have been clean
                    self.log.warning("http shutdown failed", extra={"error": repr(exc)})

    async def heartbeat(self) -> None:
        bridge = getattr(self, "bridge", None)
        if bridge is not None:
            self.info["live_clients"] = len(bridge.clients)
            self.counters["dropped_bad_payload"] = bridge.counters["dropped_bad_payload"]
        await super().heartbeat()


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the service handles SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def main(grid: str | None = None) -> int:
    return WebService.main(grid=grid)
