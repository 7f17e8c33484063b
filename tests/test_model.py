"""Grid model import, conversion and placement files."""

from __future__ import annotations

from pathlib import Path

import pandapower
import pytest

from gridpilot.core.errors import ConfigError, ModelError, UnknownGridError
from gridpilot.core.subjects import grid_token
from gridpilot.model.placement import (
    default_placement,
    load_placement,
    placement_to_toml,
    validate_placement,
)
from gridpilot.model.registry import grid_names, load_grid, load_pandapower
from tests.pipeline import CACHE, grid


def test_builtin_grids_are_listed() -> None:
    assert {"cigre_mv", "lv_rural", "mv_rural", "mvlv_rural"} <= set(grid_names())


def test_unknown_grid_names_the_choices() -> None:
    with pytest.raises(UnknownGridError, match="cigre_mv"):
        load_grid("atlantis")


def test_pandapower_json_file_keeps_ids(tmp_path: Path) -> None:
    net = load_pandapower("cigre_mv")
    path = tmp_path / "my-grid.json"
    pandapower.to_json(net, str(path))
    model = load_grid(str(path))
    assert model.name == "my_grid"
    assert [b.id for b in model.buses] == [b.id for b in grid("cigre_mv").buses]
    with pytest.raises(ModelError, match="does not exist"):
        load_grid(str(tmp_path / "missing.json"))


def test_unsupported_elements_are_refused_with_advice() -> None:
    net = load_pandapower("cigre_mv")
    pandapower.create_storage(net, bus=3, p_mw=0.1, max_e_mwh=1.0)
    from gridpilot.model.pandapower_import import from_pandapower

    with pytest.raises(ModelError, match="storage"):
        from_pandapower(net, name="x")


def test_cache_round_trip(tmp_path: Path) -> None:
    first = load_grid("cigre_mv", cache_dir=tmp_path)
    assert (tmp_path / "cigre_mv.model.json").exists()
    assert load_grid("cigre_mv", cache_dir=tmp_path) == first


@pytest.mark.slow
def test_several_thousand_bus_grid_loads() -> None:
    model = load_grid("mvlv_rural", cache_dir=CACHE)
    assert len(model.buses) > 5000
    assert not validate_placement(default_placement(model), model)


def test_placement_file_round_trip_and_errors(tmp_path: Path) -> None:
    model = grid("cigre_mv")
    placement = default_placement(model)
    path = tmp_path / "p.toml"
    path.write_text(placement_to_toml(placement))
    assert load_placement(path, model) == placement
    path.write_text(placement_to_toml(placement).replace('"bus_6"', '"bus_99"', 1))
    with pytest.raises(ConfigError, match="bus_99"):
        load_placement(path, model)
    path.write_text("grid = 3")
    with pytest.raises(ConfigError, match="not a valid placement"):
        load_placement(path, model)


def test_reserved_grid_name() -> None:
    assert grid_token("my.grid") == "my_grid"
    with pytest.raises(ConfigError):
        grid_token("svc")
