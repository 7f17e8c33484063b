"""The calculation engine adapter: a GridModel in power-grid-model's terms, and back.

Closed bus-bus switches are fused into one calculation node (power-grid-model's links upset its
Newton-Raphson estimator); line and transformer switches set the branch end status. Every
result is mapped back onto the GridModel's mRIDs, so callers never see engine ids.

A grid split by open switches is one calculation: power-grid-model solves each part that has
a source and leaves the others at zero (``energized`` 0). ``islands()`` says which parts have
no source, from the switch states alone, so that callers can name what is de-energised even
when the power flow of the supplied part does not solve.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from power_grid_model import (
    BranchSide,
    ComponentType,
    DatasetType,
    LoadGenType,
    WindingType,
    initialize_array,
)

from gridpilot.core.schemas import BranchStates, BusStates
from gridpilot.model.grid import GridModel

Array = npt.NDArray[np.float64]

# An ideal slack: pandapower's power flow treats the external grid as one.
SOURCE_SK_VA = 1e15


class _UnionFind:
    def __init__(self, items: list[str]) -> None:
        self.parent = {i: i for i in items}

    def find(self, x: str) -> str:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


@dataclass(frozen=True)
class Island:
    """A connected part of the grid: its buses (model order; the first names the island) and
    whether a source feeds it."""

    buses: tuple[str, ...]
    energised: bool

    @property
    def name(self) -> str:
        return self.buses[0]


def _islands(net: PgmNetwork) -> list[Island]:
    model = net.model
    uf = _UnionFind(net.bus_ids)
    # buses fused into one calculation node are one
    first_of_node: dict[int, str] = {}
    for b in net.bus_ids:
        uf.union(first_of_node.setdefault(net.node_of_bus[b], b), b)
    line, tr = net.input[ComponentType.line], net.input[ComponentType.transformer]
    for i, ln in enumerate(model.lines):
        if line["from_status"][i] and line["to_status"][i]:
            uf.union(ln.from_bus, ln.to_bus)
    for i, t in enumerate(model.transformers):
        if tr["from_status"][i] and tr["to_status"][i]:
            uf.union(t.hv_bus, t.lv_bus)
    fed = {uf.find(s.bus) for s in model.sources}
    members: dict[str, list[str]] = {}
    for b in net.bus_ids:
        members.setdefault(uf.find(b), []).append(b)
    return [Island(buses=tuple(bs), energised=root in fed) for root, bs in members.items()]


class PgmNetwork:
    """power-grid-model input arrays for a GridModel with given switch states."""

    def __init__(self, model: GridModel, *, closed: Mapping[str, bool] | None = None) -> None:
        self.model = model
        self.closed = {sw.id: sw.closed for sw in model.switches}
        if closed:
            self.closed.update({k: v for k, v in closed.items() if k in self.closed})
        bus_ids = [b.id for b in model.buses]
        uf = _UnionFind(bus_ids)
        for sw in model.switches:
            if sw.element_kind == "bus" and self.closed[sw.id]:
                uf.union(sw.bus, sw.element)
        reps = sorted({uf.find(b) for b in bus_ids}, key=bus_ids.index)
        self._next = 0
        node = initialize_array(DatasetType.input, ComponentType.node, len(reps))
        node["id"] = self._ids(len(reps))
        vn = {b.id: b.vn_kv for b in model.buses}
        node["u_rated"] = [vn[r] * 1e3 for r in reps]
        node_id_of_rep = dict(zip(reps, node["id"].tolist(), strict=True))
        row_of_rep = {r: i for i, r in enumerate(reps)}
        self.bus_ids = bus_ids
        self.node_of_bus = {b: node_id_of_rep[uf.find(b)] for b in bus_ids}
        self.bus_row = np.array([row_of_rep[uf.find(b)] for b in bus_ids], dtype=np.int64)

        open_end: set[tuple[str, str]] = {
            (sw.element, sw.bus)
            for sw in model.switches
            if sw.element_kind in ("line", "transformer") and not self.closed[sw.id]
        }
        line = initialize_array(DatasetType.input, ComponentType.line, len(model.lines))
        line["id"] = self._ids(len(model.lines))
        for i, ln in enumerate(model.lines):
            line["from_node"][i] = self.node_of_bus[ln.from_bus]
            line["to_node"][i] = self.node_of_bus[ln.to_bus]
            line["from_status"][i] = int(ln.in_service and (ln.id, ln.from_bus) not in open_end)
            line["to_status"][i] = int(ln.in_service and (ln.id, ln.to_bus) not in open_end)
            c = ln.c_nf * 1e-9
            line["r1"][i] = ln.r_ohm
            line["x1"][i] = ln.x_ohm
            line["c1"][i] = c
            line["tan1"][i] = ln.g_us * 1e-6 / (2 * math.pi * model.f_hz * c) if c > 0 else 0.0
            line["i_n"][i] = ln.i_max_ka * 1e3

        tr = initialize_array(DatasetType.input, ComponentType.transformer, len(model.transformers))
        tr["id"] = self._ids(len(model.transformers))
        for i, t in enumerate(model.transformers):
            tr["from_node"][i] = self.node_of_bus[t.hv_bus]
            tr["to_node"][i] = self.node_of_bus[t.lv_bus]
            tr["from_status"][i] = int(t.in_service and (t.id, t.hv_bus) not in open_end)
            tr["to_status"][i] = int(t.in_service and (t.id, t.lv_bus) not in open_end)
            tr["u1"][i] = t.vn_hv_kv * 1e3
            tr["u2"][i] = t.vn_lv_kv * 1e3
            tr["sn"][i] = t.sn_mva * 1e6
            tr["uk"][i] = t.vk_percent / 100.0
            tr["pk"][i] = t.vkr_percent / 100.0 * t.sn_mva * 1e6
            tr["i0"][i] = max(t.i0_percent / 100.0, t.pfe_kw * 1e3 / (t.sn_mva * 1e6))
            tr["p0"][i] = t.pfe_kw * 1e3
            clock = round(t.shift_deg / 30.0) % 12
            tr["clock"][i] = clock
            tr["winding_from"][i] = WindingType.wye_n
            tr["winding_to"][i] = WindingType.delta if clock % 2 else WindingType.wye_n
            lv_side = t.tap_side == "lv"
            tr["tap_side"][i] = BranchSide.to_side if lv_side else BranchSide.from_side
            tr["tap_pos"][i] = t.tap_pos
            tr["tap_min"][i] = t.tap_min
            tr["tap_max"][i] = t.tap_max
            tr["tap_nom"][i] = t.tap_neutral
            tap_kv = t.vn_lv_kv if lv_side else t.vn_hv_kv
            tr["tap_size"][i] = t.tap_step_percent / 100.0 * tap_kv * 1e3

        src = initialize_array(DatasetType.input, ComponentType.source, len(model.sources))
        src["id"] = self._ids(len(model.sources))
        src["node"] = [self.node_of_bus[s.bus] for s in model.sources]
        src["status"] = 1
        src["u_ref"] = [s.vm_pu for s in model.sources]
        src["u_ref_angle"] = [math.radians(s.va_deg) for s in model.sources]
        src["sk"] = SOURCE_SK_VA

        load = initialize_array(DatasetType.input, ComponentType.sym_load, len(model.loads))
        load["id"] = self._ids(len(model.loads))
        load["node"] = [self.node_of_bus[ld.bus] for ld in model.loads]
        load["status"] = [int(ld.in_service) for ld in model.loads]
        load["type"] = LoadGenType.const_power
        load["p_specified"] = [ld.p_mw * 1e6 for ld in model.loads]
        load["q_specified"] = [ld.q_mvar * 1e6 for ld in model.loads]

        gen = initialize_array(DatasetType.input, ComponentType.sym_gen, len(model.generators))
        gen["id"] = self._ids(len(model.generators))
        gen["node"] = [self.node_of_bus[gn.bus] for gn in model.generators]
        gen["status"] = [int(gn.in_service) for gn in model.generators]
        gen["type"] = LoadGenType.const_power
        gen["p_specified"] = [gn.p_mw * 1e6 for gn in model.generators]
        gen["q_specified"] = [gn.q_mvar * 1e6 for gn in model.generators]

        self.input: dict[ComponentType, np.ndarray] = {
            ComponentType.node: node,
            ComponentType.line: line,
            ComponentType.transformer: tr,
            ComponentType.source: src,
            ComponentType.sym_load: load,
            ComponentType.sym_gen: gen,
        }
        self.pgm_id: dict[tuple[str, str], int] = {}
        for kind, ids, arr in (
            ("line", [x.id for x in model.lines], line),
            ("transformer", [x.id for x in model.transformers], tr),
            ("source", [x.id for x in model.sources], src),
            ("load", [x.id for x in model.loads], load),
            ("gen", [x.id for x in model.generators], gen),
        ):
            for mrid, pid in zip(ids, arr["id"].tolist(), strict=True):
                self.pgm_id[(kind, mrid)] = pid
        self.branch_ids = [ln.id for ln in model.lines] + [t.id for t in model.transformers]
        self.branch_kind = {ln.id: "line" for ln in model.lines} | {
            t.id: "transformer" for t in model.transformers
        }
        self.n_nodes = len(reps)
        self._islands: list[Island] | None = None

    def islands(self) -> list[Island]:
        """The grid's galvanically connected parts for the switch states, in bus order: a part
        is energised when it holds a source; a branch connects only with both ends closed."""
        if self._islands is None:
            self._islands = _islands(self)
        return self._islands

    def dead_buses(self) -> list[str]:
        """Every bus of an island without a source, in model order."""
        return [b for isl in self.islands() if not isl.energised for b in isl.buses]

    def _ids(self, n: int) -> npt.NDArray[np.int64]:
        ids = np.arange(self._next, self._next + n, dtype=np.int64)
        self._next += n
        return ids

    def next_ids(self, n: int) -> npt.NDArray[np.int64]:
        """Fresh engine ids, for sensors added on top of the grid."""
        return self._ids(n)

    def bus_states(self, node_out: np.ndarray) -> BusStates:
        rows = self.bus_row
        return BusStates(
            id=self.bus_ids,
            v_pu=np.round(node_out["u_pu"][rows], 6).tolist(),
            va_deg=np.round(np.degrees(node_out["u_angle"][rows]), 5).tolist(),
            p_mw=np.round(node_out["p"][rows] / 1e6, 6).tolist(),
            q_mvar=np.round(node_out["q"][rows] / 1e6, 6).tolist(),
        )

    def branch_states(self, line_out: np.ndarray, trafo_out: np.ndarray) -> BranchStates:
        def cat(field: str, scale: float) -> list[float]:
            arr = np.concatenate([line_out[field], trafo_out[field]]) / scale
            return np.round(arr, 6).tolist()  # type: ignore[no-any-return]

        return BranchStates(
            id=self.branch_ids,
            p_from_mw=cat("p_from", 1e6),
            q_from_mvar=cat("q_from", 1e6),
            p_to_mw=cat("p_to", 1e6),
            q_to_mvar=cat("q_to", 1e6),
            i_from_ka=cat("i_from", 1e3),
            loading_pct=cat("loading", 0.01),
        )
