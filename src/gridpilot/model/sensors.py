"""The sensor table: every measurement a placement can deliver, plus one pseudo-measurement per
load and generator, laid out as power-grid-model sensor arrays filled per snapshot."""

from __future__ import annotations

import numpy as np
from power_grid_model import ComponentType, DatasetType, MeasuredTerminalType, initialize_array

from gridpilot.core.schemas import DeviceKind, Measurand, Terminal
from gridpilot.model.pgm import PgmNetwork
from gridpilot.model.placement import Placement, rating_mva
from gridpilot.model.profiles import ProfileTable

_TERMINAL_TYPE = {
    Terminal.FROM: MeasuredTerminalType.branch_from,
    Terminal.TO: MeasuredTerminalType.branch_to,
    Terminal.LOAD: MeasuredTerminalType.load,
    Terminal.GEN: MeasuredTerminalType.generator,
}
_ELEMENT_KIND = {Terminal.LOAD: "load", Terminal.GEN: "gen"}

PSEUDO = "pseudo"


class SensorTable:
    """Voltage and power sensor rows for one network and placement."""

    def __init__(self, net: PgmNetwork, placement: Placement) -> None:
        model = net.model
        # The calculation nodes each element touches, to find a suspect's neighbours.
        ends: dict[str, tuple[str, ...]] = {ln.id: (ln.from_bus, ln.to_bus) for ln in model.lines}
        ends |= {t.id: (t.hv_bus, t.lv_bus) for t in model.transformers}
        ends |= {ld.id: (ld.bus,) for ld in model.loads}
        ends |= {gn.id: (gn.bus,) for gn in model.generators}
        p_nodes: list[tuple[int, ...]] = []
        u_rated = {b.id: b.vn_kv * 1e3 for b in model.buses}
        v_keys: list[tuple[str, str]] = []
        v_node: list[int] = []
        v_sigma: list[float] = []
        v_rated: list[float] = []
        v_pmu: list[bool] = []
        p_keys: list[tuple[str, str, Terminal]] = []
        p_obj: list[int] = []
        p_type: list[int] = []
        p_sigma: list[float] = []
        p_rating: list[float] = []
        p_meter: list[bool] = []
        for dev in placement.devices:
            for pt in dev.points:
                if pt.measurand is Measurand.VOLTAGE:
                    v_keys.append((dev.id, pt.mrid))
                    v_node.append(net.node_of_bus[pt.mrid])
                    v_sigma.append(dev.v_sigma_pu * u_rated[pt.mrid])
                    v_rated.append(u_rated[pt.mrid])
                    v_pmu.append(dev.kind is DeviceKind.PMU)
                    continue
                kind = _ELEMENT_KIND.get(pt.terminal) or net.branch_kind[pt.mrid]
                rating = rating_mva(model, pt.mrid, pt.terminal) * 1e6
                p_keys.append((dev.id, pt.mrid, pt.terminal))
                p_obj.append(net.pgm_id[(kind, pt.mrid)])
                p_nodes.append(tuple(net.node_of_bus[b] for b in ends[pt.mrid]))
                p_type.append(_TERMINAL_TYPE[pt.terminal])
                p_sigma.append(dev.power_sigma_pct / 100.0 * rating)
                p_rating.append(rating)
                p_meter.append(dev.kind is DeviceKind.METER)
        self.n_real_p = len(p_keys)
        # One pseudo row per appliance, used whenever no fresh real value covers it.
        pseudo_pct = placement.pseudo.power_sigma_pct / 100.0
        rated_p: list[float] = []
        rated_q: list[float] = []
        profiles: list[str] = []
        for term, items in ((Terminal.LOAD, model.loads), (Terminal.GEN, model.generators)):
            for it in items:
                rating = rating_mva(model, it.id, term) * 1e6
                p_keys.append((PSEUDO, it.id, term))
                p_obj.append(net.pgm_id[(_ELEMENT_KIND[term], it.id)])
                p_nodes.append((net.node_of_bus[it.bus],))
                p_type.append(_TERMINAL_TYPE[term])
                p_sigma.append(pseudo_pct * rating)
                p_rating.append(rating)
                p_meter.append(False)
                rated_p.append(it.p_mw * 1e6)
                rated_q.append(it.q_mvar * 1e6)
                profiles.append(it.profile)
        self.v_keys = v_keys
        self.v_nodes = [(n,) for n in v_node]
        self.p_nodes = p_nodes
        self.p_keys = p_keys
        self.v_index = {k: i for i, k in enumerate(v_keys)}
        self.p_index = {k: i for i, k in enumerate(p_keys)}
        self.v_pmu = np.array(v_pmu, dtype=bool)
        self.v_pmu_list = v_pmu
        self.v_sigma = np.array(v_sigma, dtype=np.float64)
        self.v_rated = np.array(v_rated, dtype=np.float64)
        self.p_sigma = np.array(p_sigma, dtype=np.float64)
        self.p_rating = np.array(p_rating, dtype=np.float64)
        self.p_meter = np.array(p_meter, dtype=bool)
        self.pseudo_rated_p = np.array(rated_p)
        self.pseudo_rated_q = np.array(rated_q)
        self.p_profiles = ProfileTable(
            model.profiles, [f"{p}_p" for p in profiles], step_s=model.profile_step_s
        )
        self.q_profiles = ProfileTable(
            model.profiles, [f"{p}_q" for p in profiles], step_s=model.profile_step_s
        )
        # For each real power row on an appliance: the pseudo row it makes unnecessary.
        first_pseudo = self.n_real_p
        pseudo_row = {(k[1], k[2]): i for i, k in enumerate(p_keys) if k[0] == PSEUDO}
        self.covers = np.array(
            [pseudo_row.get((k[1], k[2]), -1) for k in p_keys[:first_pseudo]], dtype=np.int64
        )
        self.drift_per_s = placement.pseudo.meter_drift_pct_per_15min / 100.0 / 900.0

        self.voltage = initialize_array(
            DatasetType.input, ComponentType.sym_voltage_sensor, len(v_keys)
        )
        self.voltage["id"] = net.next_ids(len(v_keys))
        self.voltage["measured_object"] = v_node
        self.voltage["u_sigma"] = v_sigma
        self.power = initialize_array(
            DatasetType.input, ComponentType.sym_power_sensor, len(p_keys)
        )
        self.power["id"] = net.next_ids(len(p_keys))
        self.power["measured_object"] = p_obj
        self.power["measured_terminal_type"] = p_type
        self.names = [f"{k[0]}/{k[1]}/voltage/bus" for k in v_keys] + [
            f"{k[0]}/{k[1]}/power/{k[2]}" for k in p_keys
        ]

    def pseudo_values(self, t_s: float) -> tuple[np.ndarray, np.ndarray]:
        """Pseudo P and Q (W, var) of every appliance from its profile at ``t_s``."""
        return self.pseudo_rated_p * self.p_profiles.at(
            t_s
        ), self.pseudo_rated_q * self.q_profiles.at(t_s)


def chi2_threshold(dof: int, alpha: float, _cache: dict[tuple[int, float], float] = {}) -> float:  # noqa: B006
    key = (dof, alpha)
    if key not in _cache:
        from scipy.stats import chi2

        _cache[key] = float(chi2.ppf(1.0 - alpha, max(dof, 1)))
    return _cache[key]
