"""Ports and identities of a data dir's virtual field devices, chosen once and kept.

Two platforms on one machine (each ``gridpilot up`` with its own data dir) must not share a
device port, or the second one's simulator cannot listen and its gateways read the first
one's devices. So a new device registry gets ports that are free now and that no other data
dir on this machine records, and identities (PMU ID codes, RTU common addresses) no other
records either; station names and serial numbers carry the data dir's random ``site`` id.
The registry keeps them: a restart listens on the same ports, so gateways and operators'
notes stay valid, and a registry edited by hand keeps what its user wrote.

Other data dirs are known from a small index per user (``$XDG_STATE_HOME/gridpilot``, else
``~/.local/state/gridpilot``): the paths of the data dirs that got a registry here. A file
lock on it makes two first starts at the same moment choose one after the other. Data dirs
that are gone drop out of it. Without a writable home (a container), only the ports in use
now are avoided.

Ports are scanned upwards from the protocols' base ports, below the range the kernel hands
out for outgoing connections: a port from that range could be in use by some connection the
next time the simulator starts. A field host that is a name (``gridpilot init --field-host
simulator``) is another container's network: its devices keep the base ports, which the
deployment's network policies open.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import json
import logging
import os
import random
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from gridpilot.core.config import ENV_XDG_STATE_HOME, env
from gridpilot.core.errors import ConfigError
from gridpilot.model.devices import (
    DER_PORT,
    PMU_BASE_PORT,
    RTU_BASE_PORT,
    DeviceRegistry,
    default_registry,
    registry_to_toml,
    serial_number,
    station_name,
)
from gridpilot.model.grid import GridModel
from gridpilot.model.placement import Placement

log = logging.getLogger("gridpilot.model")

SITE_HEX = 6  # a data dir's site id: 6 hex digits (16.7 million), fits station names
PORT_SCAN = 5000  # ports tried above each base port before giving up
IDENTITY_MAX = 0xFFFE  # ID codes and common addresses: 1..65534 (65535 is broadcast in 104)
INDEX_FILE = "data_dirs.json"
LOCK_FILE = "data_dirs.lock"
# the platform's own listeners (broker, monitor, MQTT, leaf nodes, web): never a device's
RESERVED_PORTS = frozenset({14222, 18222, 11883, 17422, 18080})


class PortTakenError(ConfigError):
    """A virtual device cannot listen on its port: another program (or platform) has it."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        self.host = host
        self.port = port
        self.reason = reason
        super().__init__(f"cannot listen on {host}:{port}: {reason}")


def listen_address(host: str) -> str:
    """Where a virtual device listens, given the host the registry tells the gateways.

    An address (or ``localhost``) is listened on as such. A name is the simulator's host or
    container as the gateways know it (``gridpilot init --field-host simulator``): the devices
    listen on every interface, as a name need not resolve inside its own container when it
    starts (podman's DNS, measured here) and the container's network bounds who reaches them.
    """
    if host == "localhost":
        return host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return "0.0.0.0"
    return host


def local_host(host: str) -> bool:
    """Whether the devices at ``host`` listen on this machine's own network (not a name)."""
    return listen_address(host) != "0.0.0.0"


def listen_problem(host: str, port: int) -> str | None:
    """Why a device at ``host`` could not listen on ``port`` now, or None when it could.

    Binds as the device servers do (SO_REUSEADDR: a closed connection's TIME_WAIT leftovers
    do not count)."""
    try:
        infos = socket.getaddrinfo(
            listen_address(host), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        return f"{host} is not an address of this machine ({exc})"
    for family, kind, proto, _name, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                return describe_bind_error(exc)
    return None


def describe_bind_error(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "the port is taken by another program"
    return exc.strerror or str(exc)


# -- what other data dirs use ------------------------------------------------------------------


@dataclass
class Used:
    """Ports and identities that data dirs on this machine record, and where."""

    ports: dict[int, tuple[str, Path]] = field(default_factory=dict)  # -> (device, registry)
    idcodes: set[int] = field(default_factory=set)
    common_addresses: set[int] = field(default_factory=set)
    sites: set[str] = field(default_factory=set)

    def add(self, path: Path) -> None:
        """What the registry at ``path`` records; a file that does not read adds nothing
        (it is the other data dir's to mend)."""
        try:
            data = msgspec.toml.decode(path.read_bytes())
        except (OSError, msgspec.DecodeError):
            return
        if not isinstance(data, dict):
            return
        if isinstance(data.get("site"), str):
            self.sites.add(data["site"])
        for kind in ("pmu", "rtu", "der"):
            for dev in _tables(data.get(kind)):
                if isinstance(dev.get("port"), int):
                    self.ports.setdefault(dev["port"], (str(dev.get("device", "?")), path))
                if isinstance(dev.get("idcode"), int):
                    self.idcodes.add(dev["idcode"])
                if isinstance(dev.get("common_address"), int):
                    self.common_addresses.add(dev["common_address"])


def _tables(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def state_dir() -> Path:
    base = env(ENV_XDG_STATE_HOME) or str(Path.home() / ".local" / "state")
    return Path(base) / "gridpilot"


@contextlib.contextmanager
def machine_lock() -> Iterator[Path | None]:
    """Hold this user's allocation lock; yields the index's path (None: no writable home)."""
    folder = state_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = (folder / LOCK_FILE).open("a")
    except OSError as exc:
        log.warning(
            "no index of data dirs: only ports in use now are avoided",
            extra={"path": str(folder), "error": str(exc)},
        )
        yield None
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield folder / INDEX_FILE
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_index(index: Path) -> list[str]:
    try:
        paths = json.loads(index.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        log.warning("index of data dirs unreadable; starting afresh", extra={"error": str(exc)})
        return []
    return [p for p in paths if isinstance(p, str)] if isinstance(paths, list) else []


def _registries(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "devices").glob("*.toml"))


def used_elsewhere(index: Path | None, data_dir: Path, own: Path) -> tuple[Used, list[str]]:
    """What every other registry of this machine's data dirs records (and this data dir's
    other grids'), with the index's data dirs that still exist."""
    used = Used()
    alive: list[str] = []
    known = _read_index(index) if index is not None else []
    for entry in dict.fromkeys([*known, str(data_dir)]):
        folder = Path(entry)
        if not (folder / "devices").is_dir():
            continue
        alive.append(entry)
        for path in _registries(folder):
            if path.resolve() != own.resolve():
                used.add(path)
    return used, alive


def recorded_by(port: int, own: Path) -> str | None:
    """Which other registry of this machine records ``port``: "<device> in <path>, another
    data dir" (or another grid's of the same data dir)."""
    data_dir = own.parent.parent
    with machine_lock() as index:
        used, _ = used_elsewhere(index, data_dir, own)
    if port not in used.ports:
        return None
    device, path = used.ports[port]
    mine = path.resolve().parent.parent == data_dir.resolve()
    return f"{device} in {path}, " + ("this data dir's other grid" if mine else "another data dir")


# -- a new registry ------------------------------------------------------------------------------


def new_registry(
    placement: Placement, model: GridModel, data_dir: Path, path: Path, *, host: str
) -> DeviceRegistry:
    """The registry of a data dir's first start, written to ``path``: ports free now and in
    no other data dir's registry, identities no other data dir uses, a new site id."""
    data_dir = data_dir.resolve()
    with machine_lock() as index:
        used, alive = used_elsewhere(index, data_dir, path)
        site = new_site(used.sites)
        registry = assign(default_registry(placement, model, host=host, site=site), used, host=host)
        _write(path, registry_to_toml(registry))
        if index is not None:
            _write_index(index, alive if str(data_dir) in alive else [*alive, str(data_dir)])
    log.info(
        "device ports and identities chosen",
        extra={"path": str(path), "site": site, "ports": sorted(ports_of(registry))},
    )
    return registry


def upgrade(registry: DeviceRegistry, data_dir: Path, path: Path) -> DeviceRegistry:
    """Give a registry of an earlier version (no site) a site, and the station names and
    serial numbers it gives, keeping all it had (ports, ID codes, addresses: its user's);
    written back to ``path``, the old file kept as ``<path>.bak``."""
    with machine_lock() as index:
        used, alive = used_elsewhere(index, data_dir.resolve(), path)
        registry = with_identities(registry, new_site(used.sites))
        path.with_name(path.name + ".bak").write_bytes(path.read_bytes())
        _write(path, registry_to_toml(registry))
        if index is not None and str(data_dir.resolve()) not in alive:
            _write_index(index, [*alive, str(data_dir.resolve())])
    log.warning(
        "device registry of an earlier version: added a site id, station names and serial "
        "numbers; ports and addresses kept",
        extra={"path": str(path), "site": registry.site},
    )
    return registry


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_index(index: Path, paths: list[str]) -> None:
    tmp = index.with_name(f".{index.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(paths, indent=1) + "\n")
        os.replace(tmp, index)
    except OSError as exc:
        log.warning("index of data dirs not written", extra={"error": str(exc)})


def new_site(taken: set[str]) -> str:
    while True:
        site = secrets.token_hex(SITE_HEX // 2)
        if site not in taken:
            return site


def ports_of(registry: DeviceRegistry) -> set[int]:
    return (
        {p.port for p in registry.pmu}
        | {r.port for r in registry.rtu}
        | {d.port for d in registry.der}
    )


def assign(registry: DeviceRegistry, used: Used, *, host: str) -> DeviceRegistry:
    """``registry`` with free ports (on a local host) and unused ID codes and common
    addresses; each kind from its base port up, identities from a point the site picks."""
    rng = random.Random(registry.site)
    replace = msgspec.structs.replace
    taken = set(used.ports) | set(RESERVED_PORTS)

    def port(base: int) -> int:
        for candidate in range(base, base + PORT_SCAN):
            if candidate not in taken and listen_problem(host, candidate) is None:
                taken.add(candidate)
                return candidate
        raise ConfigError(
            f"no free port for the virtual field devices in {base}..{base + PORT_SCAN - 1}"
        )

    def identities(count: int, avoid: set[int]) -> list[int]:
        if count + len(avoid) > IDENTITY_MAX:
            raise ConfigError("no free ID codes or common addresses left on this machine")
        start = rng.randrange(1, IDENTITY_MAX + 1)
        out: list[int] = []
        value = start
        while len(out) < count:
            if value not in avoid:
                out.append(value)
            value = value % IDENTITY_MAX + 1
        return out

    # a named host is another container's network: keep the base ports (module docstring)
    pmu_ports = [p.port for p in registry.pmu]
    rtu_ports = [r.port for r in registry.rtu]
    ders = list(registry.der)
    if local_host(host):
        der_port = port(DER_PORT) if registry.der else DER_PORT
        ders = [replace(d, port=der_port) for d in registry.der]
        pmu_ports = [port(PMU_BASE_PORT) for _ in registry.pmu]
        rtu_ports = [port(RTU_BASE_PORT) for _ in registry.rtu]
    idcodes = identities(len(registry.pmu), used.idcodes)
    cas = identities(len(registry.rtu), used.common_addresses)
    pmus = [
        replace(p, port=n, idcode=i)
        for p, n, i in zip(registry.pmu, pmu_ports, idcodes, strict=True)
    ]
    rtus = [
        replace(r, port=n, common_address=a)
        for r, n, a in zip(registry.rtu, rtu_ports, cas, strict=True)
    ]
    return replace(registry, pmu=pmus, rtu=rtus, der=ders)


def with_identities(registry: DeviceRegistry, site: str) -> DeviceRegistry:
    """A registry of an earlier version (no site) with a site and the station names and serial
    numbers it gives; everything it had (ports, ID codes, addresses) is kept."""
    replace = msgspec.structs.replace
    return replace(
        registry,
        site=site,
        pmu=[replace(p, station=p.station or station_name(site, p.device)) for p in registry.pmu],
        der=[replace(d, serial=d.serial or serial_number(site, d.device)) for d in registry.der],
    )


# -- before the simulator starts --------------------------------------------------------------


def servers(registry: DeviceRegistry) -> list[tuple[str, str, int]]:
    """Every server the virtual devices listen with: (what it is, host, port). The DER
    inverters of one host and port share one Modbus server."""
    out = [(f"PMU {p.device} (ID code {p.idcode})", p.host, p.port) for p in registry.pmu]
    out += [
        (f"RTU {r.device} (common address {r.common_address})", r.host, r.port)
        for r in registry.rtu
    ]
    inverters: dict[tuple[str, int], list[str]] = {}
    for d in registry.der:
        inverters.setdefault((d.host, d.port), []).append(f"{d.device} (unit {d.unit})")
    for (host, port), names in inverters.items():
        label = "DER inverter" if len(names) == 1 else "DER inverters"
        out.append((f"{label} {', '.join(names)}", host, port))
    return out


def advice(path: Path) -> str:
    """What to do about a device port that is taken."""
    return (
        "is another GridPilot platform running with this data dir, or one whose registry has "
        f"these ports? Stop it, or give the devices free ports in {path} and start again"
    )


def check_listen(registry: DeviceRegistry, path: Path) -> None:
    """ConfigError naming every virtual device that could not listen on its port now (with
    the other data dir whose registry has that port, if one does); nothing when all can."""
    problems = []
    for what, host, port in servers(registry):
        if not local_host(host):
            continue  # listens in another container, which has its own ports
        why = listen_problem(host, port)
        if why is None:
            continue
        owner = recorded_by(port, path)
        hint = f" ({owner})" if owner else ""
        problems.append(f"  {what}: {host}:{port}: {why}{hint}")
    if problems:
        raise ConfigError(
            f"the virtual field devices of grid {registry.grid} cannot listen:\n"
            + "\n".join(problems[:20])
            + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
            + f"\n{advice(path)}"
        )
