"""The ``gridpilot`` command: up, run, status, grids, placement, inject, docs.

A command that talks to a running platform finds it from any folder (``--data-dir``, else
GRIDPILOT_DATA_DIR, else the nearest ``.gridpilot``: gridpilot.platform.locate) and works on
its grid unless ``--grid`` names another, as the user typed it (``simbench:<code>`` too).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from gridpilot.cli_common import (
    DATA_DIR_HELP,
    DATA_DIR_UP_HELP,
    GRID_HELP,
    bus_error,
    bus_errors,
    resolve_grid,
)
from gridpilot.cli_common import client as _client
from gridpilot.cli_common import connect_url as _connect_url
from gridpilot.cli_common import platform_client as _platform_client
from gridpilot.core import subjects
from gridpilot.core.config import (
    DEFAULT_DATA_DIR,
    DEFAULT_GRID,
    ENV_DATA_DIR,
    ENV_DEBUG,
    env,
    env_text,
)
from gridpilot.core.errors import GridPilotError
from gridpilot.platform.broker import LEAF_PORT, LeafTls


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gridpilot", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start the broker and every service")
    up.add_argument("--grid", default=DEFAULT_GRID, help="grid name, simbench:<code> or a .json")
    up.add_argument("--speed", type=float, default=1.0, help="simulated seconds per second")
    up.add_argument("--data-dir", type=Path, default=None, help=DATA_DIR_UP_HELP)
    up.add_argument(
        "--nats-url",
        default=None,
        help="use this NATS server instead of embedding (if it needs a login, every service "
        "connects as GRIDPILOT_NATS_USER with GRIDPILOT_NATS_PASSWORD or _PASSWORD_FILE)",
    )
    up.add_argument("--no-live", action="store_true", help="print summary lines, not a table")
    up.add_argument(
        "--db",
        default="",
        help="historian database: postgresql://user:pass@host/db (default: SQLite in the data dir)",
    )
    up.add_argument(
        "--edge",
        nargs="?",
        const=_default_edge_name(),
        default=None,
        metavar="NAME",
        help="run as an edge site NAME (default: this host's name): the broker is a leaf node "
        "of --hub, measurements are stored here and forwarded; runs the field-side services",
    )
    up.add_argument(
        "--hub",
        default=None,
        metavar="URL",
        help="with --edge: the hub's leafnode address nats://HOST:PORT, or tls://HOST:PORT "
        "when the hub requires TLS (its password in GRIDPILOT_LEAF_PASSWORD, or in the URL as "
        "nats://leafnode:PASSWORD@HOST:PORT)",
    )
    up.add_argument(
        "--hub-ca",
        type=Path,
        default=None,
        metavar="CA.pem",
        help="with --hub tls://...: verify the hub's certificate against this CA (PEM) instead "
        "of the system's roots",
    )
    up.add_argument(
        "--leafnodes",
        nargs="?",
        const=f"0.0.0.0:{LEAF_PORT}",
        default=None,
        metavar="HOST:PORT",
        help=f"run as a hub accepting edges there (default 0.0.0.0:{LEAF_PORT}); runs the "
        "control-room services",
    )
    up.add_argument(
        "--leaf-cert",
        type=Path,
        default=None,
        metavar="CERT.pem",
        help="with --leafnodes: the hub's TLS certificate (PEM, with its chain); the edges must "
        "then connect with --hub tls://HOST:PORT. Without it the leaf link is not encrypted",
    )
    up.add_argument(
        "--leaf-key",
        type=Path,
        default=None,
        metavar="KEY.pem",
        help="with --leaf-cert: its private key (PEM)",
    )
    up.add_argument(
        "--tls",
        action="store_true",
        help="TLS on every port: NATS (services present client certificates), cluster routes, "
        "leaf link (edges present client certificates), MQTT (mqtts) and the HMI (https), with "
        "the certificates in <data-dir>/tls (made when absent: see `gridpilot certs`)",
    )
    up.add_argument(
        "--monitor",
        action="store_true",
        help="also open nats-server's monitoring port on 127.0.0.1 (no login: it lists every "
        "connection, user and subscription)",
    )

    certs = sub.add_parser(
        "certs", help="make the private CA and the certificates `up --tls` uses (<data-dir>/tls)"
    )
    certs.add_argument("--data-dir", type=Path, default=None, help=DATA_DIR_UP_HELP)
    certs.add_argument(
        "--hosts",
        default="",
        metavar="H1,H2",
        help="names and addresses the server certificate is also valid for (always: "
        "localhost, 127.0.0.1)",
    )
    certs.add_argument(
        "--edge",
        action="append",
        default=[],
        metavar="NAME",
        help="also a client certificate for edge NAME's leaf link (repeatable)",
    )
    certs.add_argument(
        "--days", type=int, default=825, help="validity of the issued certificates (default 825)"
    )
    certs.add_argument(
        "--renew", action="store_true", help="issue every certificate again (the CA is kept)"
    )

    run = sub.add_parser("run", help="run one service in this process")
    run.add_argument("service")
    run.add_argument(
        "--grid",
        default=None,
        help="the grid (default: GRIDPILOT_GRID); state_estimation also takes 'all': share "
        "every grid on the bus with the other instances started so",
    )

    st = sub.add_parser("status", help="every service with its state and heartbeat age")
    st.add_argument("--data-dir", type=Path, default=None, help=DATA_DIR_HELP)
    st.add_argument(
        "--nats-url",
        default=None,
        help="ask this NATS server instead of the platform in --data-dir; connects as "
        "GRIDPILOT_NATS_USER/PASSWORD when set, or as the user in the URL",
    )
    st.add_argument("--json", action="store_true")

    sub.add_parser("grids", help="the grids available")

    pl = sub.add_parser("placement", help="print a grid's default measurement placement (TOML)")
    pl.add_argument(
        "--grid", default=None, help=f"grid name or simbench:<code> (default: {DEFAULT_GRID})"
    )

    inj = sub.add_parser("inject", help="inject a gross error or a comm outage into the twin")
    inj.add_argument("kind", choices=["gross_error", "comm_outage", "clear"])
    inj.add_argument("--source", default="", help="device id")
    inj.add_argument("--mrid", default="", help="measured equipment (gross errors)")
    inj.add_argument("--measurand", default="power", choices=["power", "voltage"])
    inj.add_argument("--error", type=float, default=0.0, help="added to p/q (MW) or v (p.u.)")
    inj.add_argument("--duration", type=float, default=60.0, help="simulated seconds")
    inj.add_argument("--grid", default=None, help=GRID_HELP)
    inj.add_argument("--data-dir", type=Path, default=None, help=DATA_DIR_HELP)

    from gridpilot import history_cli, switch_cli

    history_cli.add_parser(sub)
    switch_cli.add_parser(sub)
    from gridpilot import alarms_cli

    alarms_cli.add_parser(sub)

    from gridpilot import devices_cli

    devices_cli.add_parser(sub)

    from gridpilot import apps_cli

    apps_cli.add_parser(sub)

    user = sub.add_parser("user", help="operator accounts of the web HMI and API")
    usub = user.add_subparsers(dest="user_command", required=True)
    add = usub.add_parser("add", help="create a user (prints a generated password)")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=["viewer", "operator", "admin"])
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    ls = usub.add_parser("list", help="every user and role")
    rm = usub.add_parser("remove", help="delete a user (its sessions end at once)")
    rm.add_argument("name")
    end = usub.add_parser(
        "end-sessions",
        help="end the web sessions of a user, or of everyone (they log in again); works while "
        "the platform runs or not",
    )
    end.add_argument("name", nargs="?", default=None, help="the user (default: every user)")
    for command in (add, ls, rm, end):
        command.add_argument("--data-dir", type=Path, default=None, help=DATA_DIR_HELP)

    init = sub.add_parser(
        "init",
        help="create streams and buckets and publish a grid's model (containers; `up` does it "
        "itself); connects with GRIDPILOT_NATS_URL/USER/PASSWORD",
    )
    init.add_argument("--grid", default=None, help="default: GRIDPILOT_GRID or cigre_mv")
    init.add_argument(
        "--field-host", default="127.0.0.1", help="where the field devices (the simulator) are"
    )
    init.add_argument(
        "--cluster-size", type=int, default=1, help="wait for this many NATS servers first"
    )
    health = sub.add_parser(
        "health",
        help="exit 0 when SERVICE reported running lately (a container probe); connects with "
        "GRIDPILOT_NATS_URL/USER/PASSWORD",
    )
    health.add_argument("service")
    health.add_argument("--max-age", type=float, default=5.0, help="seconds (default 5)")
    health.add_argument(
        "--instance",
        default=None,
        help="only this instance's heartbeat (default: GRIDPILOT_INSTANCE, which the service "
        "in the same container uses as its instance; unset: any instance)",
    )

    docs = sub.add_parser("docs", help="generate the subject and payload reference")
    docs.add_argument("--out", type=Path, default=Path("docs"))
    return p


def _default_edge_name() -> str:
    import re
    import socket

    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0]) or "edge"


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    try:
        return host or "0.0.0.0", int(port)
    except ValueError:
        raise GridPilotError(f"--leafnodes {text!r}: use HOST:PORT or PORT") from None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except GridPilotError as exc:
        print(f"gridpilot: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # A bug or an error no command expected: still one line for the user (a traceback
        # helps only a developer, who asks for it with GRIDPILOT_DEBUG=1).
        if env(ENV_DEBUG):
            raise
        print(
            f"gridpilot: error: {type(exc).__name__}: {exc or 'no detail'} (unexpected; "
            "GRIDPILOT_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    if args.command in ("up", "run", "user", "certs", "init"):
        # what these write into the data dir (passwords, keys, databases, logs) is private
        os.umask(0o077)
    if args.command == "up":
        import logging

        from gridpilot.core.logs import setup_logging
        from gridpilot.platform.supervisor import Supervisor

        setup_logging(service="supervisor", grid=args.grid, level=logging.WARNING)
        if not args.speed > 0:
            raise GridPilotError(f"--speed must be > 0, not {args.speed}")
        if args.hub and args.edge is None:
            raise GridPilotError("--hub goes with --edge")
        if args.edge is not None and args.leafnodes:
            raise GridPilotError("a site is an edge (--edge) or a hub (--leafnodes), not both")
        if (args.leaf_cert is None) != (args.leaf_key is None):
            raise GridPilotError("--leaf-cert and --leaf-key go together: give both or neither")

        data_dir = args.data_dir or Path(env_text(ENV_DATA_DIR) or DEFAULT_DATA_DIR)
        sup = Supervisor(
            grid=args.grid,
            data_dir=data_dir,
            speed=args.speed,
            nats_url=args.nats_url,
            live=not args.no_live,
            db_url=args.db,
            edge=args.edge,
            hub=args.hub,
            leaf_listen=_host_port(args.leafnodes) if args.leafnodes else None,
            leaf_tls=LeafTls(cert=args.leaf_cert, key=args.leaf_key) if args.leaf_cert else None,
            hub_ca=args.hub_ca,
            tls=args.tls,
            monitor=args.monitor,
        )
        asyncio.run(sup.run())
        return 0
    if args.command == "certs":
        return _certs(args)
    if args.command == "run":
        from gridpilot.platform.catalog import SERVICES, service_main

        if args.service not in SERVICES:
            raise GridPilotError(
                f"unknown service {args.service!r}; use one of {', '.join(SERVICES)}"
            )
        from gridpilot.model.registry import grid_key

        # the bus name of a grid given as to `up` (simbench:<code>, a file); "all" stays
        grid = grid_key(args.grid) if args.grid and args.grid != "all" else args.grid
        return service_main(args.service)(grid=grid)
    if args.command == "grids":
        from gridpilot.model.registry import BUILTIN

        for info in BUILTIN.values():
            print(f"{info.name:12s} {info.description}")
        print("simbench:<code>  any simbench code, e.g. simbench:1-MV-urban--0-sw")
        print("<file>.json      a pandapower network saved with pandapower.to_json")
        return 0
    if args.command == "placement":
        from gridpilot.model.placement import default_placement, placement_to_toml
        from gridpilot.model.registry import load_grid

        print(placement_to_toml(default_placement(load_grid(args.grid or DEFAULT_GRID))), end="")
        return 0
    if args.command == "status":
        return asyncio.run(_status(args))
    if args.command == "inject":
        return asyncio.run(_inject(args))
    if args.command == "user":
        return _user(args)
    if args.command in ("init", "health"):
        return asyncio.run(_ops(args))
    if args.command == "history":
        from gridpilot import history_cli

        return history_cli.run(args)
    if args.command == "switch":
        from gridpilot import switch_cli

        return switch_cli.run(args)
    if args.command == "alarms":
        from gridpilot import alarms_cli

        return alarms_cli.run(args)
    if args.command == "devices":
        from gridpilot import devices_cli

        return devices_cli.run(args)
    if args.command == "apps":
        from gridpilot import apps_cli

        return apps_cli.run(args)
    if args.command == "docs":
        from gridpilot.docs import write_docs

        for path in write_docs(args.out):
            print(path)
        return 0
    raise AssertionError(args.command)


def _certs(args: argparse.Namespace) -> int:
    from gridpilot.platform.tls import ensure_certs, server_hosts

    os.umask(0o077)  # keys, and the folder they are in, are the owner's alone
    data_dir = args.data_dir or Path(env_text(ENV_DATA_DIR) or DEFAULT_DATA_DIR)
    hosts = [h for h in (x.strip() for x in args.hosts.split(",")) if h]
    issued = ensure_certs(data_dir, hosts=hosts, edges=args.edge, days=args.days, renew=args.renew)
    p = issued.pki
    print(f"CA {p.ca} ({'new' if issued.created_ca else 'kept'}; its key {p.ca_key}, mode 0600)")
    print(f"server certificate {p.server.cert} for {', '.join(server_hosts(p))}")
    if issued.written:
        print(f"wrote {len(issued.written)} certificates in {p.dir}")
    else:
        print(f"every certificate in {p.dir} already existed (--renew issues them again)")
    print(f"start the platform with them: gridpilot up --tls --data-dir {data_dir}")
    return 0


def _user(args: argparse.Namespace) -> int:
    from gridpilot.platform.locate import data_dir
    from gridpilot.services.web.users import Role, UserStore

    folder = data_dir(args.data_dir)
    if not folder.is_dir():
        # the users file belongs to a platform's data dir: creating one here silently would
        # give users to a platform that never reads them
        raise GridPilotError(
            f"data dir {folder} does not exist: start the platform once with `gridpilot up "
            f"--data-dir {folder}` (it creates it), or name an existing one with --data-dir DIR "
            "or GRIDPILOT_DATA_DIR=DIR"
        )
    users = UserStore(folder)
    if args.user_command == "end-sessions":
        from gridpilot.services.web.sessions import AuthDb, SessionStore

        sessions = SessionStore(AuthDb(folder))
        if args.name is None:
            print(f"ended {sessions.end_all()} session(s) of every user")
        elif users.get(args.name) is None:
            raise GridPilotError(f"no user {args.name!r}: `gridpilot user list` shows them")
        else:
            print(f"ended {sessions.end_user(args.name)} session(s) of {args.name}")
        return 0
    if args.user_command == "add":
        given = sys.stdin.readline().rstrip("\n") if args.password_stdin else None
        password = users.add(args.name, Role(args.role), given, must_change=given is None)
        if given is None:
            print(f"user {args.name} ({args.role}): one-time password {password}")
            print("(to be changed at the first login)")
        else:
            print(f"user {args.name} ({args.role}) added")
        return 0
    if args.user_command == "remove":
        from gridpilot.services.web.sessions import AuthDb, SessionStore

        users.remove(args.name)
        ended = SessionStore(AuthDb(folder)).end_user(args.name)
        print(f"user {args.name} removed ({ended} session(s) ended)")
        return 0
    for u in users.list():
        note = "  (one-time password not changed yet)" if u.must_change else ""
        print(f"{u.name:20s} {u.role}{note}")
    return 0


async def _ops(args: argparse.Namespace) -> int:
    from gridpilot.core.config import ServiceConfig
    from gridpilot.platform.ops import health, init_platform

    config = ServiceConfig.from_env(grid=getattr(args, "grid", None))
    nc = await _connect_url(config.nats_url, name=f"cli-{args.command}")
    try:
        if args.command == "init":
            lines = await init_platform(
                nc, config.grid, config.data_dir, field_host=args.field_host,
                cluster_size=args.cluster_size,
            )  # fmt: skip
            for line in lines:
                print(line)
            return 0
        instance = config.instance if args.instance is None else args.instance
        ok, why = await health(nc, args.service, max_age_s=args.max_age, instance=instance or None)
    finally:
        await nc.close()
    print(("healthy: " if ok else "unhealthy: ") + why)
    return 0 if ok else 1


async def _status(args: argparse.Namespace) -> int:
    import msgspec
    from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NoKeysError

    from gridpilot.core.schemas import Heartbeat

    nc = await _client(args.data_dir, args.nats_url)
    try:
        try:
            kv = await nc.jetstream().key_value(subjects.SERVICES_BUCKET)
            keys = await kv.keys()
        except (BucketNotFoundError, NoKeysError):
            keys = []  # no service has reported yet
        except bus_errors() as exc:
            raise bus_error(exc, subjects.SERVICES_BUCKET, "key-value store") from None
        rows: list[dict[str, Any]] = []
        now = time.time_ns()
        for key in sorted(keys):
            try:
                entry = await kv.get(key)
                hb = msgspec.json.decode(entry.value or b"", type=Heartbeat)
            except (KeyNotFoundError, msgspec.DecodeError, msgspec.ValidationError):
                continue  # gone since listed, or not a heartbeat: no service to show
            rows.append(
                {
                    "service": hb.service,
                    # the instances of a service sharing its grids beat under service.<instance>
                    "name": key,
                    "instance": hb.instance,
                    "grid": hb.grid,
                    "state": hb.state.value,
                    "pid": hb.pid,
                    "heartbeat_age_s": round((now - hb.t_ns) / 1e9, 1),
                    "uptime_s": hb.uptime_s,
                    "info": hb.info,
                    "counters": hb.counters,
                }
            )
    finally:
        await nc.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no service has reported yet")
        return 1
    width = max(18, *(len(r["name"]) for r in rows))
    print(f"{'service':{width}s} {'grid':10s} {'state':9s} {'pid':>7s} {'heartbeat':>10s}  info")
    for r in rows:
        info = ", ".join(f"{k}={v}" for k, v in r["info"].items())
        print(
            f"{r['name']:{width}s} {r['grid']:10s} {r['state']:9s} {r['pid']:>7d} "
            f"{r['heartbeat_age_s']:>9.1f}s  {info}"
        )
    return 0


async def _inject(args: argparse.Namespace) -> int:
    from gridpilot.core.schemas import InjectRequest, Measurand, Reply, decode, encode

    req = InjectRequest(
        kind=args.kind,
        source=args.source,
        mrid=args.mrid,
        measurand=Measurand(args.measurand),
        error=args.error,
        duration_s=args.duration,
    )
    from gridpilot.platform import locate

    platform = locate.platform(args.data_dir)
    subject = subjects.SIM_INJECT.format(grid=resolve_grid(args.grid, platform))
    nc = await _platform_client(platform, identity="admin")
    try:
        msg = await nc.request(subject, encode(req), timeout=5)
    except bus_errors() as exc:  # no responders, a timeout, the broker gone: one line each
        raise bus_error(exc, subject, "simulator") from None
    finally:
        await nc.close()
    reply = decode(msg.data, Reply)
    print("ok" if reply.ok else f"refused: {reply.error}")
    return 0 if reply.ok else 1
