"""The twin's physics, free of I/O: loads and DER follow profiles with a stochastic deviation,
a power flow (power-grid-model) gives the truth, virtual devices measure it with noise.

Commands (switching, DER setpoints) change the grid; injections add gross errors or silence
devices. Time is simulated seconds since the epoch, driven by the caller.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from power_grid_model import (
    CalculationMethod,
    ComponentType,
    DatasetType,
    PowerGridModel,
    initialize_array,
)

from gridpilot.core.errors import ModelError
from gridpilot.core.schemas import (
    Command,
    CommandKind,
    Measurand,
    Measurement,
    MeasurementSet,
    SimTruth,
    Terminal,
)
from gridpilot.model.grid import GridModel
from gridpilot.model.pgm import PgmNetwork
from gridpilot.model.placement import Device, Placement, rating_mva
from gridpilot.model.profiles import ProfileTable

C = ComponentType
DEVIATION_STD = 0.08  # loads deviate from their standard profile by about 8 %
DEVIATION_TAU_S = 600.0  # ... and the deviation changes over ten minutes


@dataclass
class GrossError:
    source: str
    mrid: str
    measurand: Measurand
    error: float
    until_s: float


class Twin:
    """Quasi-static time-series power flow of one grid with its measuring devices."""

    def __init__(
        self, model: GridModel, placement: Placement, *, seed: int = 0, noise: bool = True
    ) -> None:
        self.model = model
        self.noise = 1.0 if noise else 0.0
        self.placement = placement
        self.rng = np.random.default_rng(seed)
        self.closed = {sw.id: sw.closed for sw in model.switches}
        self.setpoints: dict[str, tuple[float | None, float | None]] = {}
        self.gross: list[GrossError] = []
        self.outages: dict[str, float] = {}
        self._loads_p = ProfileTable(
            model.profiles, [f"{ld.profile}_p" for ld in model.loads], step_s=model.profile_step_s
        )
        self._loads_q = ProfileTable(
            model.profiles, [f"{ld.profile}_q" for ld in model.loads], step_s=model.profile_step_s
        )
        self._gens_p = ProfileTable(
            model.profiles,
            [f"{g.profile}_p" for g in model.generators],
            step_s=model.profile_step_s,
        )
        self._rated = (
            np.array([ld.p_mw for ld in model.loads]) * 1e6,
            np.array([ld.q_mvar for ld in model.loads]) * 1e6,
            np.array([g.p_mw for g in model.generators]) * 1e6,
            np.array([g.q_mvar for g in model.generators]) * 1e6,
        )
        self._deviation = np.zeros(len(model.loads))
        self._gen_deviation = np.zeros(len(model.generators))
        self._last_t: float | None = None
        self._gen_index = {g.id: i for i, g in enumerate(model.generators)}
        self._ratings: dict[tuple[str, Terminal], float] = {}
        self._rebuild()

    # -- the grid ---------------------------------------------------------------------------
    def _rebuild(self) -> None:
        self.net = PgmNetwork(self.model, closed=self.closed)
        self._pgm = PowerGridModel(self.net.input, system_frequency=self.model.f_hz)
        self._load_upd = initialize_array(DatasetType.update, C.sym_load, len(self.model.loads))
        self._load_upd["id"] = self.net.input[C.sym_load]["id"]
        self._gen_upd = initialize_array(DatasetType.update, C.sym_gen, len(self.model.generators))
        self._gen_upd["id"] = self.net.input[C.sym_gen]["id"]
        self._branch_row = {b: i for i, b in enumerate(self.net.branch_ids)}
        self._bus_row = {b: int(r) for b, r in zip(self.net.bus_ids, self.net.bus_row, strict=True)}
        self._load_row = {ld.id: i for i, ld in enumerate(self.model.loads)}

    def apply_command(self, cmd: Command) -> str:
        """Carry out a command; returns what changed, raises ModelError for an impossible one."""
        if cmd.kind is CommandKind.SWITCH:
            if cmd.target not in self.closed:
                raise ModelError(f"unknown switch {cmd.target!r}")
            if cmd.closed is None:
                raise ModelError("a switch command needs 'closed': true or false")
            self.closed[cmd.target] = cmd.closed
            self._rebuild()
            return f"switch {cmd.target} {'closed' if cmd.closed else 'opened'}"
        if cmd.target not in self._gen_index:
            raise ModelError(f"unknown generator {cmd.target!r}")
        self.setpoints[cmd.target] = (cmd.p_mw, cmd.q_mvar)
        return f"generator {cmd.target} setpoint p_mw={cmd.p_mw} q_mvar={cmd.q_mvar}"

    def _advance_deviation(self, t_s: float) -> None:
        dt = 0.0 if self._last_t is None else max(0.0, t_s - self._last_t)
        self._last_t = t_s
        if dt == 0.0:
            return
        a = math.exp(-dt / DEVIATION_TAU_S)
        b = DEVIATION_STD * math.sqrt(1.0 - a * a)
        self._deviation = a * self._deviation + b * self.rng.standard_normal(len(self._deviation))
        self._gen_deviation = a * self._gen_deviation + b * self.rng.standard_normal(
            len(self._gen_deviation)
        )

    def step(self, t_s: float, *, t_ns: int | None = None) -> dict[ComponentType, np.ndarray]:
        """Power flow at simulated time ``t_s``; returns power-grid-model's output."""
        self._advance_deviation(t_s)
        lp, lq, gp, gq = self._rated
        f = 1.0 + self._deviation
        self._load_upd["p_specified"] = lp * self._loads_p.at(t_s) * f
        self._load_upd["q_specified"] = lq * self._loads_q.at(t_s) * f
        gen_p = np.clip(gp * self._gens_p.at(t_s) * (1.0 + 0.5 * self._gen_deviation), 0.0, None)
        gen_q = gq.copy()
        for gid, (p, q) in self.setpoints.items():
            i = self._gen_index[gid]
            if p is not None:
                gen_p[i] = min(gen_p[i], p * 1e6)  # a setpoint curtails, it cannot add sun
            if q is not None:
                gen_q[i] = q * 1e6
        self._gen_upd["p_specified"] = gen_p
        self._gen_upd["q_specified"] = gen_q
        self._pgm.update(update_data={C.sym_load: self._load_upd, C.sym_gen: self._gen_upd})
        self.out = self._pgm.calculate_power_flow(
            calculation_method=CalculationMethod.newton_raphson, error_tolerance=1e-9
        )
        self.t_s = t_s
        # the exact instant for time stamps: a float of seconds since 1970 resolves only
        # about 0.2 µs, and frames, reports and the truth must carry the same nanoseconds
        self.t_ns = round(t_s * 1e9) if t_ns is None else t_ns
        return self.out

    def out_bus_v_pu(self, bus: str) -> float:
        """Voltage magnitude at a bus in the last power flow."""
        return float(self.out[C.node]["u_pu"][self._bus_row[bus]])

    def truth(self, grid: str) -> SimTruth:
        out = self.out
        return SimTruth(
            grid=grid,
            t_ns=self.t_ns,
            buses=self.net.bus_states(out[C.node]),
            branches=self.net.branch_states(out[C.line], out[C.transformer]),
        )

    # -- devices ----------------------------------------------------------------------------
    def silent(self, device_id: str, t_s: float) -> bool:
        until = self.outages.get(device_id)
        if until is None:
            return False
        if t_s >= until:
            del self.outages[device_id]
            return False
        return True

    def measure(self, device: Device, grid: str, seq: int) -> MeasurementSet:
        """What ``device`` reports of the last power flow, with its noise and any injection."""
        out = self.out
        t_ns = self.t_ns
        ms: list[Measurement] = []
        for pt in device.points:
            if pt.measurand is Measurand.VOLTAGE:
                row = self._bus_row[pt.mrid]
                u = float(out[C.node]["u_pu"][row])
                ang = float(out[C.node]["u_angle"][row])
                sig = device.v_sigma_pu
                if device.kind == "pmu":
                    # circular phasor error
                    z = u * complex(math.cos(ang), math.sin(ang))
                    z += complex(*(self.rng.standard_normal(2) * sig * self.noise).tolist())
                    u, va = abs(z), math.degrees(math.atan2(z.imag, z.real))
                else:
                    u, va = u + sig * self.noise * float(self.rng.standard_normal()), None
                u += self._gross(device.id, pt.mrid, Measurand.VOLTAGE)
                ms.append(
                    Measurement(
                        mrid=pt.mrid,
                        measurand=Measurand.VOLTAGE,
                        terminal=Terminal.BUS,
                        t_ns=t_ns,
                        v_pu=round(u, 7),
                        va_deg=None if va is None else round(va, 6),
                        source=device.id,
                    )
                )
                continue
            p, q = self._power(pt.mrid, pt.terminal)
            sig = device.power_sigma_pct / 100.0 * self._rating(pt.mrid, pt.terminal)
            n = (self.rng.standard_normal(2) * sig * self.noise).tolist()
            err = self._gross(device.id, pt.mrid, Measurand.POWER)
            ms.append(
                Measurement(
                    mrid=pt.mrid,
                    measurand=Measurand.POWER,
                    terminal=pt.terminal,
                    t_ns=t_ns,
                    p_mw=round(p + n[0] + err, 7),
                    q_mvar=round(q + n[1] + err, 7),
                    source=device.id,
                )
            )
        return MeasurementSet(
            grid=grid, source=device.id, kind=device.kind, t_ns=t_ns, seq=seq, measurements=ms
        )

    def _rating(self, mrid: str, terminal: Terminal) -> float:
        key = (mrid, terminal)
        if key not in self._ratings:
            self._ratings[key] = rating_mva(self.model, mrid, terminal)
        return self._ratings[key]

    def _power(self, mrid: str, terminal: Terminal) -> tuple[float, float]:
        out = self.out
        if terminal is Terminal.LOAD:
            r = self._load_row[mrid]
            arr = out[C.sym_load]
        elif terminal is Terminal.GEN:
            r = self._gen_index[mrid]
            arr = out[C.sym_gen]
        else:
            r = self._branch_row[mrid]
            n_lines = len(self.model.lines)
            arr, r = (out[C.line], r) if r < n_lines else (out[C.transformer], r - n_lines)
            side = "from" if terminal is Terminal.FROM else "to"
            return float(arr[f"p_{side}"][r]) / 1e6, float(arr[f"q_{side}"][r]) / 1e6
        return float(arr["p"][r]) / 1e6, float(arr["q"][r]) / 1e6

    def _gross(self, source: str, mrid: str, measurand: Measurand) -> float:
        total = 0.0
        for g in self.gross:
            same = g.source == source and g.mrid == mrid and g.measurand is measurand
            if same and self.t_s < g.until_s:
                total += g.error
        return total
