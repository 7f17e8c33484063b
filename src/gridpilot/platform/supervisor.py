"""``gridpilot up``: the broker and every service as separate OS processes, restarted with
back-off when they die, with a live summary of their health."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from gridpilot.core import subjects
from gridpilot.core.bus import connect, ensure_edge_source, ensure_jetstream
from gridpilot.core.errors import ConfigError
from gridpilot.core.schemas import Heartbeat
from gridpilot.model import distribution
from gridpilot.platform import permissions
from gridpilot.platform.broker import (
    ENV_LEAF_PASSWORD,
    HTTP_PORT,
    HUB_DOMAIN,
    EmbeddedNats,
    LeafTls,
    edge_domain,
    is_tls_url,
    leaf_url,
    pem_file,
    pick_port,
    write_endpoints,
)
from gridpilot.platform.catalog import EDGE_SERVICES, HUB_SERVICES, SERVICES
from gridpilot.services.web.users import UserStore

log = logging.getLogger("gridpilot.supervisor")

BACKOFF_FIRST_S = 0.25
BACKOFF_MAX_S = 10.0
STABLE_AFTER_S = 30.0  # a child that ran this long starts its back-off afresh
STOP_GRACE_S = 5.0
EDGE_SOURCE_RETRY_S = 5.0


@dataclass
class Child:
    name: str
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    backoff_s: float = BACKOFF_FIRST_S
    started_at: float = 0.0
    start_at: float = 0.0
    last_exit: int | None = None
    heartbeat: Heartbeat | None = None
    heartbeat_at: float = field(default=0.0)

    def start(self, grid: str) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        out = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gridpilot", "run", self.name, "--grid", grid],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the supervisor, which stops children
        )
        out.close()
        self.started_at = time.monotonic()
        log.info("started", extra={"child": self.name, "pid": self.proc.pid})


class Supervisor:
    def __init__(
        self,
        *,
        grid: str,
        data_dir: Path,
        speed: float = 1.0,
        nats_url: str | None = None,
        services: list[str] | None = None,
        live: bool = True,
        db_url: str = "",
        edge: str | None = None,
        hub: str | None = None,
        leaf_listen: tuple[str, int] | None = None,
        leaf_tls: LeafTls | None = None,
        hub_ca: Path | None = None,
    ) -> None:
        """``edge`` (a name) with ``hub`` (its URL): this site's broker is a leaf node of the
        hub's, in JetStream domain ``edge-<name>``, and runs the field side (EDGE_SERVICES);
        a ``tls://`` hub is verified against ``hub_ca`` (else the system's roots).
        ``leaf_listen`` (host, port): this site is a hub that accepts edges there, over TLS
        only with ``leaf_tls``. Every file is checked here, before anything starts."""
        self.grid_name = grid
        self.data_dir = data_dir.resolve()
        self.speed = speed
        self.external_url = nats_url
        self.edge = edge
        self.hub = hub
        self.leaf_listen = leaf_listen
        if edge is not None:
            edge_domain(edge)  # validates the name
            if not hub:
                raise ConfigError("an edge needs the hub's URL (--hub nats://HOST:PORT)")
        if (edge is not None or leaf_listen is not None) and nats_url:
            raise ConfigError("--edge and --leafnodes need the embedded broker, not --nats-url")
        if leaf_tls is not None and leaf_listen is None:
            raise ConfigError("--leaf-cert and --leaf-key go with --leafnodes (a hub)")
        if hub_ca is not None:
            if edge is None or not hub:
                raise ConfigError("--hub-ca goes with --edge and --hub tls://HOST:PORT")
            if not is_tls_url(hub):
                # not the URL itself: it may hold the password
                raise ConfigError(
                    "--hub-ca verifies a TLS hub, but --hub is not a tls:// URL: use "
                    "--hub tls://HOST:PORT (the hub needs --leaf-cert and --leaf-key)"
                )
        self.leaf_tls = None if leaf_tls is None else leaf_tls.checked()
        self.hub_ca = None if hub_ca is None else pem_file(hub_ca, "--hub-ca", "CERTIFICATE")
        if services is None:
            services = list(
                EDGE_SERVICES
                if edge is not None
                else HUB_SERVICES
                if leaf_listen is not None
                else SERVICES
            )
        self.services = services
        self.live = live
        self.db_url = db_url
        self.broker: EmbeddedNats | None = None
        self.children: dict[str, Child] = {}
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.grid = ""

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            nc = await self._start_backbone()
            await self._publish_model(nc)
            self._start_children()
            await nc.subscribe(subjects.HEARTBEAT.wildcard(), cb=self._on_heartbeat)
            await self._watch()
        finally:
            await self._shutdown()

    async def _start_backbone(self) -> Client:
        if self.external_url:
            url = self.external_url  # the broker's users: GRIDPILOT_NATS_USER/PASSWORD
            user, password = permissions.env_credentials(url)
            endpoints = {"nats": url, "mqtt": "", "monitor": ""}
        else:
            self._say("starting NATS (JetStream, MQTT) ...")
            self.broker = await asyncio.to_thread(self._embedded().start)
            url = self.broker.url
            user, password = (
                permissions.ADMIN,
                permissions.service_password(self.data_dir, permissions.ADMIN),
            )
            endpoints = self.broker.endpoints
        self.http_port = 0
        if "web" in self.services:
            self.http_port = pick_port("127.0.0.1", HTTP_PORT, [])
            endpoints = {**endpoints, "http": f"http://127.0.0.1:{self.http_port}"}
            first = UserStore(self.data_dir).ensure_first_admin()
            if first is not None:
                self._say(
                    f"first start: log in at {endpoints['http']} as 'admin' with the one-time "
                    f"password {first} (you will be asked to change it); add users with "
                    "`gridpilot user add NAME --role viewer|operator|admin`"
                )
        # what the CLI reads to find this platform (gridpilot.platform.locate); the grid is
        # added once the model is loaded
        endpoints = {**endpoints, "supervisor_pid": str(os.getpid())}
        write_endpoints(self.data_dir, endpoints)
        self.endpoints = endpoints
        nc = await connect(url, user=user, password=password, name="supervisor")
        await ensure_jetstream(nc)
        self.url = url
        self.nc = nc
        if self.edge is not None:
            self._tasks.append(asyncio.create_task(self._source_to_hub(nc, self.edge)))
        if self.leaf_listen is not None:
            self._say(self.leaf_listen_note(endpoints["leafnode"]))
        return nc

    def leaf_listen_note(self, endpoint: str) -> str:
        """What a hub tells its operator about its leafnode listener: a warning without TLS."""
        where = (
            f"accepting edges at {endpoint} (user leafnode, password 'leafnode' in "
            f"{self.data_dir / permissions.CREDENTIALS_FILE})"
        )
        if self.leaf_tls is None:
            return (
                f"{where}\nWARNING: the leaf link is not encrypted: edges send the leafnode "
                "password and every measurement in clear; give --leaf-cert and --leaf-key "
                "to require TLS (docs/operations.md, 'Cluster and edge')"
            )
        return (
            f"{where}, TLS only, certificate {self.leaf_tls.cert}: edges connect with "
            "--hub tls://HOST:PORT (and --hub-ca CA.pem unless a public CA signed it)"
        )

    def _embedded(self) -> EmbeddedNats:
        if self.edge is not None:
            assert self.hub is not None
            return EmbeddedNats(
                data_dir=self.data_dir,
                hub_url=leaf_url(self.hub, os.environ.get(ENV_LEAF_PASSWORD)),
                domain=edge_domain(self.edge),
                hub_ca=self.hub_ca,
            )
        if self.leaf_listen is not None:
            host, port = self.leaf_listen
            return EmbeddedNats(
                data_dir=self.data_dir,
                leaf_host=host,
                leaf_port=port,
                domain=HUB_DOMAIN,
                leaf_tls=self.leaf_tls,
            )
        return EmbeddedNats(data_dir=self.data_dir)

    async def _source_to_hub(self, nc: Client, edge: str) -> None:
        """Have the hub's GP_MEAS source this edge's, once the hub is reachable."""
        while True:
            try:
                added = await ensure_edge_source(
                    nc, hub_domain=HUB_DOMAIN, edge_domain=edge_domain(edge)
                )
            except Exception as e:  # the link is down, or the hub is not up yet
                log.warning("hub not reachable yet: %r; retrying", e)
                await asyncio.sleep(EDGE_SOURCE_RETRY_S)
                continue
            self._say(
                f"the hub's GP_MEAS {'now sources' if added else 'sources'} this edge's "
                f"({edge_domain(edge)})"
            )
            return

    async def _publish_model(self, nc: Client) -> None:
        self._say(f"loading grid {self.grid_name} ...")
        pkg = await asyncio.to_thread(distribution.prepare, self.grid_name, self.data_dir)
        if "simulator" in self.services:  # a device port taken: say so here, start nothing
            await asyncio.to_thread(distribution.check_listen, pkg, self.data_dir)
        await distribution.publish(nc, pkg)
        model, placement = pkg.model, pkg.placement
        self.grid = model.name
        self.endpoints = {**self.endpoints, "grid": model.name}
        write_endpoints(self.data_dir, self.endpoints)
        self._say(
            f"{model.summary()}; {len(placement.devices)} devices "
            f"({distribution.placement_path(self.data_dir, model.name)})"
        )

    def _start_children(self) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("GRIDPILOT_")}
        base.update(
            GRIDPILOT_NATS_URL=self.url,
            GRIDPILOT_GRID=self.grid,
            GRIDPILOT_DATA_DIR=str(self.data_dir),
            GRIDPILOT_SPEED=str(self.speed),
        )
        if self.broker is None:  # a broker of the user's: every service as the one user given
            login = (
                permissions.ENV_USER,
                permissions.ENV_PASSWORD,
                f"{permissions.ENV_PASSWORD}_FILE",
            )
            base.update({k: v for k, v in os.environ.items() if k in login})
        for name in self.services:
            env = dict(base)
            if self.broker is not None:
                env.update(permissions.service_env(self.data_dir, name))
            if name == "web":
                env["GRIDPILOT_HTTP_PORT"] = str(self.http_port)
            if name == "historian" and self.db_url:
                env["GRIDPILOT_DB"] = self.db_url
            if name == "simulator" and self.endpoints.get("mqtt"):
                env["GRIDPILOT_MQTT_URL"] = self.endpoints["mqtt"]
                if self.broker is not None:
                    env["GRIDPILOT_MQTT_PASSWORD"] = permissions.service_password(
                        self.data_dir, permissions.MQTT_DEVICE
                    )
            child = Child(name=name, env=env, log_path=self.data_dir / "logs" / f"{name}.log")
            child.start(self.grid)
            self.children[name] = child

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            hb = msgspec.json.decode(msg.data, type=Heartbeat)
        except msgspec.MsgspecError:
            return
        child = self.children.get(hb.service)
        # only its own child's: instances started elsewhere (state_estimation --grid all) share
        # the service name
        if child is not None and child.proc is not None and child.proc.pid == hb.pid:
            child.heartbeat = hb
            child.heartbeat_at = time.monotonic()

    async def _watch(self) -> None:
        last_line = 0.0
        live = None
        if self.live and sys.stdout.isatty():
            from rich.live import Live

            live = Live(self.table(), refresh_per_second=2, transient=False)
            live.start()
        try:
            while not self._stop.is_set():
                self._reap()
                now = time.monotonic()
                if live is not None:
                    live.update(self.table())
                elif now - last_line >= 5.0:
                    last_line = now
                    self._say(self.summary_line())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 0.1)
        finally:
            if live is not None:
                live.stop()

    def _reap(self) -> None:
        now = time.monotonic()
        for child in self.children.values():
            if child.proc is not None and child.proc.poll() is not None:
                child.last_exit = child.proc.returncode
                ran = now - child.started_at
                child.backoff_s = (
                    BACKOFF_FIRST_S
                    if ran >= STABLE_AFTER_S
                    else min(
                        BACKOFF_MAX_S, child.backoff_s * 2 if child.restarts else child.backoff_s
                    )
                )
                child.start_at = now + child.backoff_s
                child.proc = None
                log.warning(
                    "child exited",
                    extra={
                        "child": child.name,
                        "code": child.last_exit,
                        "restart_in_s": child.backoff_s,
                    },
                )
            if child.proc is None and now >= child.start_at:
                child.restarts += 1
                child.start(self.grid)

    async def _shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        procs = [c.proc for c in self.children.values() if c.proc is not None]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for p in procs:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        with contextlib.suppress(Exception):
            await self.nc.drain()
        if self.broker is not None:
            await asyncio.to_thread(self.broker.stop)
        self._say("stopped")

    # -- presentation -------------------------------------------------------------------------
    def rows(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        out = []
        for c in self.children.values():
            hb = c.heartbeat
            out.append(
                {
                    "service": c.name,
                    "pid": c.proc.pid if c.proc else None,
                    "state": hb.state.value
                    if hb and c.proc
                    else ("restarting" if not c.proc else "starting"),
                    "heartbeat_age_s": round(now - c.heartbeat_at, 1) if hb else None,
                    "restarts": c.restarts,
                    "info": dict(hb.info) if hb else {},
                }
            )
        return out

    def table(self) -> Any:
        from rich.table import Table

        nats = self.endpoints.get("nats", "") if hasattr(self, "endpoints") else ""
        t = Table(title=f"GridPilot — grid {self.grid or self.grid_name} — {nats}")
        for col in ("service", "pid", "state", "heartbeat", "restarts", "info"):
            t.add_column(col)
        for r in self.rows():
            age = r["heartbeat_age_s"]
            info = ", ".join(f"{k}={v}" for k, v in r["info"].items())
            t.add_row(
                str(r["service"]),
                str(r["pid"] or "-"),
                str(r["state"]),
                "-" if age is None else f"{age:.1f}s ago",
                str(r["restarts"]),
                info,
            )
        return t

    def summary_line(self) -> str:
        return json.dumps({"grid": self.grid, "services": self.rows()})

    def _say(self, text: str) -> None:
        print(text, flush=True)
