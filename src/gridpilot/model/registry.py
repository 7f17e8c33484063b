"""The grids GridPilot knows by name, and loading a grid model by name, code or file."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gridpilot.core.errors import ModelError, UnknownGridError
from gridpilot.model.grid import GridModel, decode_model, encode_model

log = logging.getLogger("gridpilot.model")


@dataclass(frozen=True)
class GridInfo:
    name: str
    description: str
    loader: Callable[[], Any]


def _cigre_mv() -> Any:
    import pandapower.networks as pn

    return pn.create_cigre_network_mv(with_der="pv_wind")


def _simbench(code: str) -> Callable[[], Any]:
    def load() -> Any:
        import simbench

        net = simbench.get_simbench_net(code)
        # simbench on pandapower 3 leaves tap_changer_type empty, so pandapower would ignore
        # the tap positions; GridPilot's own model applies them, so make pandapower agree.
        has_tap = net.trafo["tap_pos"].notna()
        net.trafo.loc[has_tap, "tap_changer_type"] = "Ratio"
        return net

    return load


BUILTIN: dict[str, GridInfo] = {
    g.name: g
    for g in (
        GridInfo("cigre_mv", "CIGRE MV benchmark with PV and wind DER, 15 buses", _cigre_mv),
        GridInfo(
            "lv_rural", "simbench 1-LV-rural1--0-sw, 15 buses", _simbench("1-LV-rural1--0-sw")
        ),
        GridInfo("mv_rural", "simbench 1-MV-rural--0-sw, 97 buses", _simbench("1-MV-rural--0-sw")),
        GridInfo(
            "mvlv_rural",
            "simbench 1-MVLV-rural-all-0-sw, MV with all LV grids, 5,479 buses",
            _simbench("1-MVLV-rural-all-0-sw"),
        ),
    )
}


def grid_names() -> list[str]:
    return list(BUILTIN)


def load_pandapower(name: str) -> Any:
    """The pandapower network behind a grid name, ``simbench:<code>`` or a JSON file path."""
    if name in BUILTIN:
        return BUILTIN[name].loader()
    if name.startswith("simbench:"):
        try:
            return _simbench(name.split(":", 1)[1])()
        except Exception as exc:
            raise ModelError(f"simbench could not load {name!r}: {exc}") from exc
    path = Path(name)
    if path.suffix == ".json":
        if not path.exists():
            raise ModelError(f"grid file {path} does not exist")
        import pandapower

        try:
            return pandapower.from_json(str(path))
        except Exception as exc:
            raise ModelError(f"{path} is not a pandapower JSON network: {exc}") from exc
    raise UnknownGridError(name, grid_names())


def grid_key(name: str) -> str:
    """The short name a grid is known by on the bus (file paths become their stem)."""
    if name.startswith("simbench:"):
        return name.split(":", 1)[1].replace("-", "_").lower().strip("_")
    if name.endswith(".json"):
        return Path(name).stem.replace("-", "_").replace(".", "_").lower()
    return name


def load_grid(name: str, *, cache_dir: Path | None = None) -> GridModel:
    """Load (and cache as JSON in ``cache_dir``) the GridModel of a grid."""
    from gridpilot.model.pandapower_import import from_pandapower

    key = grid_key(name)
    cache = cache_dir / f"{key}.model.json" if cache_dir else None
    if cache is not None and cache.exists():
        return decode_model(cache.read_bytes())
    log.info("building grid model", extra={"grid": key})
    net = load_pandapower(name)
    description = BUILTIN[name].description if name in BUILTIN else str(name)
    model = from_pandapower(net, name=key, description=description)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_bytes(encode_model(model))
    return model
