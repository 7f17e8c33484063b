"""Convert a pandapower network into a GridModel (the only module that touches pandapower).

Names become stable mRIDs (slugged, made unique); rated powers and profile names are kept so the
simulator can drive the grid over time.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from gridpilot.core.errors import ModelError
from gridpilot.model import grid as g
from gridpilot.model.profiles import DAYS, STEPS_PER_DAY, standard_profiles

_SUPPORTED = {"bus", "line", "trafo", "load", "sgen", "ext_grid", "switch"}
_IGNORED_IF_EMPTY = ("gen", "trafo3w", "shunt", "ward", "xward", "impedance", "storage", "dcline")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _ids(table: Any, prefix: str, taken: set[str]) -> list[str]:
    """Slugged names when they are present and unique, else ``<prefix>_<index>``."""
    names = [str(n) if isinstance(n, str) and n.strip() else "" for n in table["name"]]
    slugs = [_slug(n) for n in names]
    usable = all(slugs) and len(set(slugs)) == len(slugs) and not (set(slugs) & taken)
    ids = slugs if usable else [f"{prefix}_{i}" for i in table.index]
    taken.update(ids)
    return ids


def _num(value: Any, default: float = 0.0) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return default
    return default if math.isnan(f) else f


def _week(series: Any) -> list[float]:
    return [round(float(v), 5) for v in series.to_numpy()[: STEPS_PER_DAY * DAYS]]


def from_pandapower(net: Any, *, name: str, description: str = "") -> g.GridModel:
    for table in _IGNORED_IF_EMPTY:
        if table in net and len(net[table]) and net[table]["in_service"].any():
            raise ModelError(
                f"grid {name!r} has in-service {table} elements, which GridPilot does not model "
                "yet; take them out of service or convert them to loads/sgens first"
            )
    taken: set[str] = set()
    bus_ids = _ids(net.bus, "bus", taken)
    bus_of = dict(zip(net.bus.index, bus_ids, strict=True))
    buses = [
        g.Bus(
            id=bid,
            name=str(row["name"] or bid),
            vn_kv=float(row["vn_kv"]),
            v_min_pu=_num(row.get("min_vm_pu"), 0.95) or 0.95,
            v_max_pu=_num(row.get("max_vm_pu"), 1.05) or 1.05,
            **_geo(row.get("geo")),
        )
        for bid, (_, row) in zip(bus_ids, net.bus.iterrows(), strict=True)
    ]

    line_ids = _ids(net.line, "line", taken)
    line_of = dict(zip(net.line.index, line_ids, strict=True))
    lines = []
    for lid, (_, r) in zip(line_ids, net.line.iterrows(), strict=True):
        par = _num(r.get("parallel"), 1.0) or 1.0
        length = float(r["length_km"])
        lines.append(
            g.Line(
                id=lid,
                name=str(r["name"] or lid),
                from_bus=bus_of[r["from_bus"]],
                to_bus=bus_of[r["to_bus"]],
                r_ohm=float(r["r_ohm_per_km"]) * length / par,
                x_ohm=float(r["x_ohm_per_km"]) * length / par,
                c_nf=float(r["c_nf_per_km"]) * length * par,
                g_us=_num(r.get("g_us_per_km")) * length * par,
                i_max_ka=float(r["max_i_ka"]) * (_num(r.get("df"), 1.0) or 1.0) * par,
                in_service=bool(r["in_service"]),
            )
        )

    trafo_ids = _ids(net.trafo, "trafo", taken)
    trafo_of = dict(zip(net.trafo.index, trafo_ids, strict=True))
    trafos = []
    for tid, (_, r) in zip(trafo_ids, net.trafo.iterrows(), strict=True):
        par = _num(r.get("parallel"), 1.0) or 1.0
        has_tap = not math.isnan(_num(r.get("tap_pos"), math.nan))
        trafos.append(
            g.Transformer(
                id=tid,
                name=str(r["name"] or tid),
                hv_bus=bus_of[r["hv_bus"]],
                lv_bus=bus_of[r["lv_bus"]],
                sn_mva=float(r["sn_mva"]) * par,
                vn_hv_kv=float(r["vn_hv_kv"]),
                vn_lv_kv=float(r["vn_lv_kv"]),
                vk_percent=float(r["vk_percent"]),
                vkr_percent=float(r["vkr_percent"]),
                pfe_kw=_num(r.get("pfe_kw")) * par,
                i0_percent=_num(r.get("i0_percent")),
                shift_deg=_num(r.get("shift_degree")),
                tap_side=str(r.get("tap_side") or "hv") if has_tap else "hv",
                tap_pos=int(_num(r.get("tap_pos"))),
                tap_neutral=int(_num(r.get("tap_neutral"))),
                tap_min=int(_num(r.get("tap_min"))),
                tap_max=int(_num(r.get("tap_max"))),
                tap_step_percent=_num(r.get("tap_step_percent")) if has_tap else 0.0,
                in_service=bool(r["in_service"]),
            )
        )

    profiles = standard_profiles()
    sb_profiles = getattr(net, "profiles", None) if hasattr(net, "profiles") else None

    def load_profile(r: Any, default: str) -> str:
        prof = r.get("profile")
        if isinstance(prof, str) and sb_profiles is not None and "load" in sb_profiles:
            cols = sb_profiles["load"]
            if f"{prof}_pload" in cols:
                profiles.setdefault(f"sb_{prof}_p", _week(cols[f"{prof}_pload"]))
                profiles.setdefault(f"sb_{prof}_q", _week(cols[f"{prof}_qload"]))
                return f"sb_{prof}"
        return default

    def gen_profile(r: Any) -> str:
        prof = r.get("profile")
        if isinstance(prof, str) and sb_profiles is not None:
            for table in ("renewables", "powerplants"):
                cols = sb_profiles.get(table)
                if cols is not None and prof in cols:
                    profiles.setdefault(f"sb_{prof}_p", _week(cols[prof]))
                    profiles.setdefault(f"sb_{prof}_q", [0.0] * (STEPS_PER_DAY * DAYS))
                    return f"sb_{prof}"
        kind = str(r.get("type") or "").upper()
        return "wind" if kind.startswith("W") else "pv"

    load_ids = _ids(net.load, "load", taken)
    loads = []
    for lid, (_, r) in zip(load_ids, net.load.iterrows(), strict=True):
        scale = _num(r.get("scaling"), 1.0)
        p, q = float(r["p_mw"]) * scale, float(r["q_mvar"]) * scale
        if p == 0.0 and q == 0.0:
            continue  # an all-zero load is no injection; keeping it would hide zero-injection
        commercial = str(r["name"] or "").upper().find("CI") >= 0
        loads.append(
            g.Load(
                id=lid,
                name=str(r["name"] or lid),
                bus=bus_of[r["bus"]],
                p_mw=p,
                q_mvar=q,
                profile=load_profile(r, "commercial" if commercial else "residential"),
                in_service=bool(r["in_service"]),
            )
        )

    gen_ids = _ids(net.sgen, "sgen", taken)
    gens = []
    for gid, (_, r) in zip(gen_ids, net.sgen.iterrows(), strict=True):
        scale = _num(r.get("scaling"), 1.0)
        gens.append(
            g.Generator(
                id=gid,
                name=str(r["name"] or gid),
                bus=bus_of[r["bus"]],
                p_mw=float(r["p_mw"]) * scale,
                q_mvar=float(r["q_mvar"]) * scale,
                profile=gen_profile(r),
                kind=str(r.get("type") or ""),
                in_service=bool(r["in_service"]),
            )
        )

    src_ids = _ids(net.ext_grid, "source", taken)
    sources = [
        g.Source(
            id=sid,
            name=str(r["name"] or sid),
            bus=bus_of[r["bus"]],
            vm_pu=float(r["vm_pu"]),
            va_deg=_num(r.get("va_degree")),
        )
        for sid, (_, r) in zip(src_ids, net.ext_grid.iterrows(), strict=True)
        if bool(r["in_service"])
    ]
    if not sources:
        raise ModelError(f"grid {name!r} has no in-service external grid (slack)")

    sw_ids = _ids(net.switch, "sw", taken)
    switches = []
    for sid, (_, r) in zip(sw_ids, net.switch.iterrows(), strict=True):
        et = str(r["et"])
        if et == "b":
            element, kind = bus_of[r["element"]], "bus"
        elif et == "l":
            element, kind = line_of[r["element"]], "line"
        elif et == "t":
            element, kind = trafo_of[r["element"]], "transformer"
        else:
            raise ModelError(f"switch {sid}: element type {et!r} is not supported")
        switches.append(
            g.Switch(
                id=sid,
                name=str(r["name"] or sid),
                bus=bus_of[r["bus"]],
                element=element,
                element_kind=kind,
                closed=bool(r["closed"]),
            )
        )

    used = {ld.profile for ld in loads} | {gn.profile for gn in gens}
    kept = {k: v for k, v in profiles.items() if k.rsplit("_", 1)[0] in used}
    return g.GridModel(
        name=name,
        description=description,
        f_hz=float(getattr(net, "f_hz", 50.0) or 50.0),
        buses=buses,
        lines=lines,
        transformers=trafos,
        loads=loads,
        generators=gens,
        sources=sources,
        switches=switches,
        profile_step_s=900.0,
        profiles=kept,
    )


def _geo(value: object) -> dict[str, float]:
    """x and y of a pandapower bus's GeoJSON point; nothing when it has none or another shape."""
    if not isinstance(value, str) or not value:
        return {}
    try:
        point = json.loads(value)
        x, y = point["coordinates"][:2]
        if point.get("type") != "Point":
            return {}
        return {"x": float(x), "y": float(y)}
    except (ValueError, KeyError, TypeError):
        return {}
