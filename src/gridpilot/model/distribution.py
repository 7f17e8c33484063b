"""Grid packages travel over the bus: the supervisor puts each grid's model, placement and
device registry into the ``gp_models`` object store once, and services fetch them instead of
importing pandapower."""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec
from nats.aio.client import Client

from gridpilot.core.errors import ModelError
from gridpilot.model.devices import (
    DeviceRegistry,
    default_registry,
    load_registry,
    registry_to_toml,
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
BUCKET = "gp_models"


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
    devices at ``field_host``: the simulator's host name when services run in containers)."""
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
        dpath.parent.mkdir(parents=True, exist_ok=True)
        dpath.write_text(registry_to_toml(default_registry(placement, model, host=field_host)))
        log.info("wrote default device registry", extra={"path": str(dpath)})
    devices = load_registry(dpath, placement, model)
    return GridPackage(model=model, placement=placement, devices=devices)


def package(model: GridModel, placement: Placement) -> GridPackage:
    """A package with the default device registry (for tests and tools)."""
    return GridPackage(model=model, placement=placement, devices=default_registry(placement, model))


async def publish(nc: Client, pkg: GridPackage) -> None:
    store = await nc.jetstream().object_store(BUCKET)
    await store.put(f"{pkg.model.name}.json", msgspec.json.encode(pkg))


async def fetch(nc: Client, grid: str) -> GridPackage:
    """The model, placement and device registry of ``grid`` from the object store."""
    try:
        store = await nc.jetstream().object_store(BUCKET)
        raw = (await store.get(f"{grid}.json")).data or b""
        pkg = msgspec.json.decode(raw, type=GridPackage)
    except Exception as exc:
        raise ModelError(
            f"no model for grid {grid!r} on the bus ({exc}); start the platform with "
            f"'gridpilot up --grid {grid}' which publishes it"
        ) from exc
    assert_valid_placement(pkg.placement, pkg.model)
    return pkg
