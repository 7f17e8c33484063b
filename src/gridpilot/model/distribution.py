"""Grid models travel over the bus: the supervisor puts each grid's model and placement into
the ``gp_models`` object store once, and services fetch them instead of importing pandapower."""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec
from nats.aio.client import Client

from gridpilot.core.errors import ModelError
from gridpilot.model.grid import GridModel, decode_model, encode_model
from gridpilot.model.placement import (
    Placement,
    assert_valid_placement,
    default_placement,
    load_placement,
    placement_to_toml,
)

log = logging.getLogger("gridpilot.model")
BUCKET = "gp_models"


def placement_path(data_dir: Path, grid: str) -> Path:
    return data_dir / "placements" / f"{grid}.toml"


def prepare(name: str, data_dir: Path) -> tuple[GridModel, Placement]:
    """Load a grid (cached under the data dir) and its placement file, written on first use."""
    from gridpilot.model.registry import load_grid

    model = load_grid(name, cache_dir=data_dir / "models")
    path = placement_path(data_dir, model.name)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(placement_to_toml(default_placement(model)))
        log.info("wrote default placement", extra={"path": str(path)})
    return model, load_placement(path, model)


async def publish(nc: Client, model: GridModel, placement: Placement) -> None:
    store = await nc.jetstream().object_store(BUCKET)
    await store.put(f"{model.name}.model.json", encode_model(model))
    await store.put(f"{model.name}.placement.json", msgspec.json.encode(placement))


async def fetch(nc: Client, grid: str) -> tuple[GridModel, Placement]:
    """The model and placement of ``grid`` from the object store."""
    try:
        store = await nc.jetstream().object_store(BUCKET)
        model = decode_model((await store.get(f"{grid}.model.json")).data or b"")
        raw = (await store.get(f"{grid}.placement.json")).data or b""
        placement = msgspec.json.decode(raw, type=Placement)
    except Exception as exc:
        raise ModelError(
            f"no model for grid {grid!r} on the bus ({exc}); start the platform with "
            f"'gridpilot up --grid {grid}' which publishes it"
        ) from exc
    assert_valid_placement(placement, model)
    return model, placement
