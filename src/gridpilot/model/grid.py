"""GridModel: GridPilot's own neutral description of a grid, serialisable and library-free.

Services receive it over the bus (object store ``gp_models``) and never import pandapower.
Every element carries a stable mRID (``id``) that survives every conversion.
"""

from __future__ import annotations

import msgspec


class Bus(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    vn_kv: float
    v_min_pu: float = 0.95
    v_max_pu: float = 1.05
    # where it is (longitude and latitude, or the source's own plane), when the source says
    x: float | None = None
    y: float | None = None


class Line(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    from_bus: str
    to_bus: str
    r_ohm: float
    x_ohm: float
    c_nf: float
    g_us: float
    i_max_ka: float
    in_service: bool = True


class Transformer(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    hv_bus: str
    lv_bus: str
    sn_mva: float
    vn_hv_kv: float
    vn_lv_kv: float
    vk_percent: float
    vkr_percent: float
    pfe_kw: float
    i0_percent: float
    shift_deg: float
    tap_side: str = "hv"  # "hv" or "lv"
    tap_pos: int = 0
    tap_neutral: int = 0
    tap_min: int = 0
    tap_max: int = 0
    tap_step_percent: float = 0.0
    in_service: bool = True


class Load(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    bus: str
    p_mw: float  # rated consumption; the profile scales it
    q_mvar: float
    profile: str  # key into GridModel.profiles (with suffix _p and _q)
    in_service: bool = True


class Generator(msgspec.Struct, frozen=True, kw_only=True):
    """A static generator (DER): PV, wind, CHP...; p_mw is its rating, the profile scales it."""

    id: str
    name: str
    bus: str
    p_mw: float
    q_mvar: float
    profile: str
    kind: str = ""
    in_service: bool = True


class Source(msgspec.Struct, frozen=True, kw_only=True):
    """The upstream grid: an ideal voltage source (slack)."""

    id: str
    name: str
    bus: str
    vm_pu: float
    va_deg: float


class Switch(msgspec.Struct, frozen=True, kw_only=True):
    """A switch between ``bus`` and ``element`` (another bus, or a line or transformer end)."""

    id: str
    name: str
    bus: str
    element: str
    element_kind: str  # "bus", "line" or "transformer"
    closed: bool


class GridModel(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    description: str
    f_hz: float
    buses: list[Bus]
    lines: list[Line]
    transformers: list[Transformer]
    loads: list[Load]
    generators: list[Generator]
    sources: list[Source]
    switches: list[Switch]
    # Normalised profiles (per unit of rating), one value per step, repeated cyclically.
    profile_step_s: float = 900.0
    profiles: dict[str, list[float]] = {}

    def summary(self) -> str:
        return (
            f"{self.name}: {len(self.buses)} buses, {len(self.lines)} lines, "
            f"{len(self.transformers)} transformers, {len(self.loads)} loads, "
            f"{len(self.generators)} generators, {len(self.switches)} switches"
        )


def encode_model(model: GridModel) -> bytes:
    return msgspec.json.encode(model)


def decode_model(data: bytes) -> GridModel:
    return msgspec.json.decode(data, type=GridModel)
