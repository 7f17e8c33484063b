"""``gridpilot up``: the broker and every service as separate OS processes, restarted with
back-off when they die, with a live summary of their health.

The supervisor also keeps them alive in the sense a Kubernetes liveness probe does: a child
whose heartbeat went stale (a hung or stopped process) is killed and started again, and the
embedded nats-server is started again on the same ports and JetStream store when it dies.
Every restart of a child is reported as a ``service_restarted`` condition (monitoring raises
the alarm), active until the new process beats.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from gridpilot.core import subjects
from gridpilot.core.bus import ENV_CA, connect, ensure_edge_source, ensure_jetstream
from gridpilot.core.errors import BusError, ConfigError
from gridpilot.core.schemas import CONDITION_REPEAT_S, Condition, Heartbeat, encode
from gridpilot.core.service import ENV_PENDING_BYTES
from gridpilot.model import distribution
from gridpilot.platform import permissions
from gridpilot.platform.broker import (
    ENV_LEAF_PASSWORD,
    HTTP_PORT,
    HUB_DOMAIN,
    MONITOR_PORT,
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
from gridpilot.platform.children import (
    CONDITION_SOURCE,
    STALE_AFTER_S,
    STARTUP_GRACE_S,
    Child,
)
from gridpilot.platform.datadir import RELOAD_SIGNAL, lock_data_dir
from gridpilot.platform.tls import (
    ENV_HTTP_CERT,
    ENV_HTTP_KEY,
    Pki,
    ensure_certs,
    pki,
    server_tls,
)
from gridpilot.platform.tls import service_env as tls_service_env
from gridpilot.services.web.users import UserStore

log = logging.getLogger("gridpilot.supervisor")

STOP_GRACE_S = 5.0
EDGE_SOURCE_RETRY_S = 5.0
BROKER_RETRY_FIRST_S = 0.5  # a broker that would not come back is tried again, doubling to
BROKER_RETRY_MAX_S = 10.0


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
        stale_after_s: float = STALE_AFTER_S,
        startup_grace_s: float = STARTUP_GRACE_S,
        tls: bool = False,
        monitor: bool = False,
    ) -> None:
        """``edge`` (a name) with ``hub`` (its URL): this site's broker is a leaf node of the
        hub's, in JetStream domain ``edge-<name>``, and runs the field side (EDGE_SERVICES);
        a ``tls://`` hub is verified against ``hub_ca`` (else the system's roots).
        ``leaf_listen`` (host, port): this site is a hub that accepts edges there, over TLS
        only with ``leaf_tls``. Every file is checked here, before anything starts.
        ``stale_after_s`` and ``startup_grace_s``: the liveness limits (see STALE_AFTER_S).
        ``tls``: TLS on every port (NATS with client certificates, routes, leaf link, MQTT,
        HTTPS) with the certificates of ``<data-dir>/tls`` (made when absent); an edge
        presents ``tls/edge-<name>.crt`` to its hub and verifies it against ``tls/ca.crt``.
        ``monitor``: open nats-server's monitoring port on 127.0.0.1 (it has no login)."""
        self.grid_name = grid
        if not 0 < stale_after_s <= startup_grace_s:
            raise ConfigError(
                f"need 0 < stale_after_s <= startup_grace_s, not {stale_after_s}, {startup_grace_s}"
            )
        self.stale_after_s = stale_after_s
        self.startup_grace_s = startup_grace_s
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
        if (tls or monitor) and nats_url:
            raise ConfigError(
                "--tls and --monitor configure the embedded broker, not one given by --nats-url "
                f"(for that: a tls:// URL, and {ENV_CA} naming its CA)"
            )
        if tls and edge is not None and hub and not is_tls_url(hub):
            raise ConfigError(
                "--tls on an edge needs a TLS hub: use --hub tls://HOST:PORT (the hub runs "
                "with --tls or --leaf-cert)"
            )
        self.tls = tls
        self.monitor = monitor
        self.pki: Pki | None = None
        self.leaf_client: LeafTls | None = None
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
        self.broker_restarts = 0
        self._broker_retry_at = 0.0
        self._broker_retry_s = BROKER_RETRY_FIRST_S
        self._bus_up_since: float | None = None  # None while the supervisor's link is down

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            # `gridpilot devices revoke|rotate` changed a credential: reload nats.conf. Not
            # SIGHUP: closing the terminal of a `gridpilot up` must still stop it.
            loop.add_signal_handler(RELOAD_SIGNAL, self.request_reload)
        self._private_data_dir()
        # before anything starts or is written: a second `up` on this data dir, or a device
        # port another platform holds, must leave the running platform's files alone
        self._lock = lock_data_dir(self.data_dir)
        try:
            if self.tls:
                await asyncio.to_thread(self._prepare_tls)
            pkg = await self._prepare_model()
            nc = await self._start_backbone()
            await self._publish_model(nc, pkg)
            self._start_children()
            await nc.subscribe(subjects.HEARTBEAT.wildcard(), cb=self._on_heartbeat)
            await self._watch()
        finally:
            await self._shutdown()

    def _private_data_dir(self) -> None:
        """Every file the platform writes (passwords, the historian's database, logs, the
        broker's config and store) is its owner's alone: umask 077 for this process and its
        children, and the data dir 0700 (an existing one is narrowed, and that is said)."""
        os.umask(0o077)
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        mode = stat.S_IMODE(self.data_dir.stat().st_mode)
        if mode != 0o700:
            os.chmod(self.data_dir, 0o700)
            log.warning(
                "data_dir event=narrowed path=%s mode_was=%s mode=0700", self.data_dir, oct(mode)
            )
            self._say(
                f"data dir {self.data_dir} was mode {oct(mode)[2:]}: now 0700 (only its owner "
                "may read the passwords, database and logs in it)"
            )

    def _prepare_tls(self) -> None:
        """The certificates of ``<data-dir>/tls``: made when absent, the edge's own too."""
        p = pki(self.data_dir)
        edges = None
        if self.edge is not None and not p.edge(self.edge).cert.exists():
            edges = [self.edge]
        issued = ensure_certs(self.data_dir, edges=edges)
        if issued.written:
            self._say(f"TLS: made {len(issued.written)} certificates in {p.dir} (CA {p.ca})")
        if self.edge is not None:
            pair = p.edge(self.edge)
            self.leaf_client = LeafTls(pair.cert, pair.key).checked()
            if self.hub_ca is None:
                self.hub_ca = pem_file(p.ca, "the hub's CA", "CERTIFICATE")
        self.pki = p

    def transport_note(self) -> str:
        """One line on how the platform's ports are protected."""
        if self.pki is None:
            return (
                "plain TCP on 127.0.0.1 (NATS, MQTT, HTTP): any local user can watch it; use "
                "--tls for TLS on every port (certificates: gridpilot certs)"
            )
        return f"TLS on every port (NATS with client certificates, MQTT, HTTPS); CA {self.pki.ca}"

    async def _start_backbone(self) -> Client:
        if self.external_url:
            url = self.external_url  # the broker's users: GRIDPILOT_NATS_USER/PASSWORD
            user, password = permissions.env_credentials(url)
            endpoints = {"nats": url, "mqtt": ""}
        else:
            self._say("starting NATS (JetStream, MQTT) ...")
            self._say(self.transport_note())
            self.broker = await asyncio.to_thread(self._embedded().start)
            if self.monitor:
                self._say(
                    f"WARNING: nats-server monitoring at {self.broker.monitor_url} has no login: "
                    "any local user can list every connection, user and subscription (/connz)"
                )
            url = self.broker.url
            user, password = (
                permissions.ADMIN,
                permissions.service_password(self.data_dir, permissions.ADMIN),
            )
            endpoints = self.broker.endpoints
        self.http_port = 0
        if "web" in self.services:
            self.http_port = pick_port("127.0.0.1", HTTP_PORT, [])
            scheme = "http" if self.pki is None else "https"
            endpoints = {**endpoints, "http": f"{scheme}://127.0.0.1:{self.http_port}"}
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
        nc = await connect(
            url,
            user=user,
            password=password,
            name="supervisor",
            on_event=self._on_bus_event,
            tls=None if self.pki is None else server_tls(self.pki).context(),
        )
        self._bus_up_since = time.monotonic()
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
        if self.leaf_tls is None and self.pki is None:
            return (
                f"{where}\nWARNING: the leaf link is not encrypted: edges send the leafnode "
                "password and every measurement in clear; give --leaf-cert and --leaf-key "
                "to require TLS (docs/operations.md, 'Cluster and edge')"
            )
        if self.pki is not None:
            cert = self.leaf_tls.cert if self.leaf_tls is not None else self.pki.server.cert
            return (
                f"{where}, TLS only, certificate {cert}; edges need a client certificate "
                f"from {self.pki.ca} (gridpilot certs --edge NAME) and connect with "
                "--tls --hub tls://HOST:PORT"
            )
        assert self.leaf_tls is not None
        return (
            f"{where}, TLS only, certificate {self.leaf_tls.cert}: edges connect with "
            "--hub tls://HOST:PORT (and --hub-ca CA.pem unless a public CA signed it)"
        )

    def _embedded(self) -> EmbeddedNats:
        common: dict[str, Any] = {
            "data_dir": self.data_dir,
            "tls": None if self.pki is None else server_tls(self.pki),
            "monitor_port": MONITOR_PORT if self.monitor else None,
        }
        if self.edge is not None:
            assert self.hub is not None
            return EmbeddedNats(
                **common,
                hub_url=leaf_url(self.hub, os.environ.get(ENV_LEAF_PASSWORD)),
                domain=edge_domain(self.edge),
                hub_ca=self.hub_ca,
                leaf_client=self.leaf_client,
            )
        if self.leaf_listen is not None:
            host, port = self.leaf_listen
            return EmbeddedNats(
                **common,
                leaf_host=host,
                leaf_port=port,
                domain=HUB_DOMAIN,
                leaf_tls=self.leaf_tls,
            )
        return EmbeddedNats(**common)

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

    def request_reload(self) -> None:
        """Render nats.conf again and have the embedded server reload it (on RELOAD_SIGNAL)."""
        self._tasks.append(asyncio.ensure_future(self.reload_broker()))

    async def reload_broker(self) -> None:
        """Apply the credential files as they are now: users gone (a revoked meter) are
        disconnected and refused from now on, rotated passwords take effect."""
        if self.broker is None:
            self._say(
                "reload asked, but the broker is not ours (--nats-url): nothing to do"
                if self.external_url
                else "reload asked before the broker started: it starts with the new credentials"
            )
            return
        try:
            await asyncio.to_thread(self.broker.reload)
        except (BusError, ConfigError) as exc:
            self._say(f"nats.conf not reloaded: {exc}")
            log.error("broker reload failed", extra={"error": str(exc)})
            return
        self._say(f"nats.conf reloaded (credentials in {self.data_dir})")
        log.info("broker reloaded", extra={"pid": self.broker.pid})

    async def _prepare_model(self) -> distribution.GridPackage:
        self._say(f"loading grid {self.grid_name} ...")
        pkg = await asyncio.to_thread(distribution.prepare, self.grid_name, self.data_dir)
        if not self.external_url:  # each meter's own MQTT user on our broker
            added = await asyncio.to_thread(
                permissions.ensure_device_credentials,
                self.data_dir,
                pkg.model.name,
                [m.device for m in pkg.devices.meter],
            )
            if added:
                self._say(
                    f"{added} meter credentials added to "
                    f"{self.data_dir / permissions.DEVICE_CREDENTIALS_FILE}"
                )
        if "simulator" in self.services:  # a device port taken: say so here, start nothing
            await asyncio.to_thread(distribution.check_listen, pkg, self.data_dir)
        return pkg

    async def _publish_model(self, nc: Client, pkg: distribution.GridPackage) -> None:
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
        passed = (ENV_PENDING_BYTES,)  # the operator's settings every service reads
        base = {
            k: v for k, v in os.environ.items() if not k.startswith("GRIDPILOT_") or k in passed
        }
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
            if self.pki is not None:
                env.update(tls_service_env(self.pki, name))
            if name == "web":
                env["GRIDPILOT_HTTP_PORT"] = str(self.http_port)
                if self.pki is not None:
                    env[ENV_HTTP_CERT] = str(self.pki.server.cert)
                    env[ENV_HTTP_KEY] = str(self.pki.server.key)
            if name == "historian" and self.db_url:
                env["GRIDPILOT_DB"] = self.db_url
            if name == "simulator" and self.endpoints.get("mqtt"):
                env["GRIDPILOT_MQTT_URL"] = self.endpoints["mqtt"]
                if self.broker is not None:  # each meter connects as its own user
                    env[permissions.ENV_DEVICE_CREDENTIALS] = str(
                        self.data_dir / permissions.DEVICE_CREDENTIALS_FILE
                    )
            child = Child(name=name, env=env, log_path=self.data_dir / "logs" / f"{name}.log")
            child.start(self.grid)
            self.children[name] = child

    def _on_bus_event(self, event: str, _error: BaseException | None) -> None:
        if event == "disconnected":
            self._bus_up_since = None
        elif event == "reconnected":
            self._bus_up_since = time.monotonic()

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
            if child.condition is not None:  # the restarted process is alive: clear it
                ended = msgspec.structs.replace(
                    child.condition,
                    active=False,
                    t_ns=time.time_ns(),
                    message=f"{child.condition.message}; running again (pid {hb.pid})",
                )
                child.condition = None
                await self._send_condition(ended)

    async def _watch(self) -> None:
        last_line = 0.0
        live = None
        if self.live and sys.stdout.isatty():
            from rich.live import Live

            live = Live(self.table(), refresh_per_second=2, transient=False)
            live.start()
        try:
            while not self._stop.is_set():
                await self._keep_broker()
                self._check_liveness()
                self._reap()
                await self._repeat_conditions()
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

    async def _keep_broker(self) -> None:
        """Start the embedded nats-server again, on its ports and store, when it died."""
        broker = self.broker
        now = time.monotonic()
        if broker is None or broker.is_running() or now < self._broker_retry_at:
            return
        code = broker.exit_code
        self._say(f"nats-server died (exit code {code}); restarting it on the same ports")
        log.warning("broker died", extra={"code": code, "url": broker.url})
        try:
            await asyncio.to_thread(broker.restart)
        except BusError as exc:
            self._broker_retry_at = time.monotonic() + self._broker_retry_s
            self._say(f"nats-server did not restart: {exc}; retrying in {self._broker_retry_s} s")
            self._broker_retry_s = min(BROKER_RETRY_MAX_S, self._broker_retry_s * 2)
            return
        self._broker_retry_s = BROKER_RETRY_FIRST_S
        self.broker_restarts += 1
        took = time.monotonic() - now
        self._say(f"nats-server restarted in {took:.1f} s (pid {broker.pid}, {broker.url})")
        log.info("broker restarted", extra={"pid": broker.pid, "took_s": round(took, 2)})

    def _check_liveness(self) -> None:
        """Kill a child whose heartbeat is stale; ``_reap`` starts it again."""
        if self._bus_up_since is None:
            return  # no heartbeat reaches us: nothing to judge by
        now = time.monotonic()
        for child in self.children.values():
            stale = child.silence(
                now,
                self._bus_up_since,
                stale_after_s=self.stale_after_s,
                startup_grace_s=self.startup_grace_s,
            )
            if stale is None or child.proc is None or child.kill_reason:
                continue
            pid = child.proc.pid
            child.kill(*stale)
            self._say(f"{child.name} (pid {pid}): {child.kill_reason}; restarting it")

    async def _repeat_conditions(self) -> None:
        """Send active conditions when due: at once, then every CONDITION_REPEAT_S."""
        now = time.monotonic()
        for child in self.children.values():
            cond = child.condition
            if cond is not None and now - child.condition_sent_at >= CONDITION_REPEAT_S:
                child.condition_sent_at = now
                await self._send_condition(cond)

    async def _send_condition(self, cond: Condition) -> None:
        # the broker may be down: the publish is buffered or dropped (counted), never raises
        # for that; the repeat brings an active one across
        subject = subjects.CONDITION.format(grid=self.grid, source=CONDITION_SOURCE)
        try:
            await self.nc.publish(subject, encode(cond))
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
            return  # shutting down
        log.info(
            "condition",
            extra={"kind": str(cond.kind), "mrid": cond.mrid, "active": cond.active},
        )

    def _reap(self) -> None:
        now = time.monotonic()
        for child in self.children.values():
            if child.proc is not None and child.proc.poll() is not None:
                child.exited(now, grid=self.grid)
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
        self._lock.release()
        self._say("stopped")

    # -- presentation -------------------------------------------------------------------------
    def rows(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [c.row(now) for c in self.children.values()]

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
