"""Grid packages travel over the bus: the supervisor (or ``gridpilot init``) puts each grid's
model, placement and device registry into the ``gp_models`` object store once, and services
fetch them instead of importing pandapower.

In a container deployment a service may start before ``gridpilot init`` has published its
grid: ``wait_for`` retries while the package is missing (start order does not matter, and the
orchestrator need not restart anything), but not when it is there and invalid.
"""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from gridpilot.core import subjects
from gridpilot.core.backoff import wait_until_there
from gridpilot.core.errors import ConfigError, ModelError
from gridpilot.model import allocation
from gridpilot.model.devices import (
    DeviceRegistry,
    default_registry,
    load_registry,
)
from gridpilot.model.grid import GridModel
from gridpilot.model.placement import (
    Placement,
    assert_valid_placement,
    default_placement,
    load_placement,
    placement_to_toml,
)

log = logging.getLogger("gridpilot.model")
BUCKET = subjects.MODELS_STORE


class ModelMissing(ModelError):
    """The grid's package is not in the object store (yet): worth waiting for, unlike a package
    that is there but invalid."""


class GridPackage(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a service needs about a grid: its model, placement and device registry."""

    model: GridModel
    placement: Placement
    devices: DeviceRegistry


def placement_path(data_dir: Path, grid: str) -> Path:
    return data_dir / "placements" / f"{grid}.toml"


def devices_path(data_dir: Path, grid: str) -> Path:
    return data_dir / "devices" / f"{grid}.toml"


def prepare(name: str, data_dir: Path, *, field_host: str = "127.0.0.1") -> GridPackage:
    """Load a grid (cached under the data dir), its placement and its device registry; the two
    files are written with their defaults on first use, for the operator to edit (the field
    devices at ``field_host``: the simulator's host name when services run in containers).

    A new device registry gets ports and identities of its own on this machine
    (``allocation``); an existing one is kept as it is, ports included, so a restart listens
    where the last start did."""
    from gridpilot.model.registry import load_grid

    model = load_grid(name, cache_dir=data_dir / "models")
    path = placement_path(data_dir, model.name)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(placement_to_toml(default_placement(model)))
        log.info("wrote default placement", extra={"path": str(path)})
    placement = load_placement(path, model)
    dpath = devices_path(data_dir, model.name)
    if not dpath.exists():
        allocation.new_registry(placement, model, data_dir, dpath, host=field_host)
        log.info("wrote the device registry", extra={"path": str(dpath)})
    devices = load_registry(dpath, placement, model)
    if not devices.site:
        devices = allocation.upgrade(devices, data_dir, dpath)
    return GridPackage(model=model, placement=placement, devices=devices)


def check_listen(pkg: GridPackage, data_dir: Path) -> None:
    """Before the simulator starts: ConfigError naming every virtual device that cannot listen
    on its port (another platform has it?) and what to do, so ``gridpilot up`` says so in the
    terminal instead of leaving a simulator that serves only part of its devices."""
    allocation.check_listen(pkg.devices, devices_path(data_dir, pkg.model.name))


def package(model: GridModel, placement: Placement) -> GridPackage:
    """A package with the default device registry (for tests and tools)."""
    return GridPackage(model=model, placement=placement, devices=default_registry(placement, model))


async def publish(nc: Client, pkg: GridPackage) -> None:
    store = await nc.jetstream().object_store(BUCKET)
    await store.put(f"{pkg.model.name}.json", msgspec.json.encode(pkg))


async def fetch(nc: Client, grid: str) -> GridPackage:
    """The model, placement and device registry of ``grid`` from the object store.

    ModelMissing when it is not there (or the store cannot be read yet); ModelError when it
    is there but does not decode, ConfigError when its placement does not fit its model."""
    try:
        store = await nc.jetstream().object_store(BUCKET)
        raw = (await store.get(f"{grid}.json")).data or b""
    except Exception as exc:
        why = f"not in object store {BUCKET}" if isinstance(exc, NotFoundError) else repr(exc)
        raise ModelMissing(
            f"no model for grid {grid!r} on the bus ({why}); publish it with "
            f"'gridpilot init --grid {grid}' (containers) or start the platform with "
            f"'gridpilot up --grid {grid}', which publishes it"
        ) from exc
    try:
        pkg = msgspec.json.decode(raw, type=GridPackage)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ModelError(
            f"the model of grid {grid!r} in object store {BUCKET} is not a grid package "
            f"({exc}); publish it again with 'gridpilot init --grid {grid}' of this version"
        ) from exc
    try:
        assert_valid_placement(pkg.placement, pkg.model)
    except ConfigError as exc:
        raise ConfigError(
            f"{exc}; fix placements/{grid}.toml and publish it again with "
            f"'gridpilot init --grid {grid}'"
        ) from None
    return pkg


async def wait_for(
    nc: Client, grid: str, *, wait_s: float, log: logging.Logger = log
) -> GridPackage:
    """``fetch``, retried with capped exponential back-off while the package is missing, for
    up to ``wait_s`` seconds (0: one attempt); an invalid package fails at once, as waiting
    would not mend it. Logs "waiting for the grid model" at the first miss and every 30 s."""
    try:
        return await wait_until_there(
            lambda: fetch(nc, grid),
            missing=ModelMissing,
            what="the grid model",
            wait_s=wait_s,
            log=log,
            extra={"grid": grid},
        )
    except ModelMissing as exc:
        raise ModelMissing(
            f"{exc}; gave up after waiting {wait_s:g} s (GRIDPILOT_MODEL_WAIT_S)"
        ) from exc.__cause__
