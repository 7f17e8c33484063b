"""The twin's physics, free of I/O: loads and DER follow profiles with a stochastic deviation,
a power flow (power-grid-model) gives the truth, virtual devices measure it with noise.

Commands (switching, DER setpoints) change the grid; injections add gross errors or silence
devices. Time is simulated seconds since the epoch, driven by the caller.

Any switching is allowed, as in the field. Buses cut off from every source are dead: they read
zero, their loads go unserved and their generators off (power-grid-model leaves source-less
parts at zero). A power flow without a solution (a voltage collapse, say after moving a heavy
feeder onto a long tie) is a state of the twin, not an error: ``solved`` is False and
``failure`` says why until a later step solves again; meanwhile there is no truth to measure.
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
from power_grid_model.errors import (  # type: ignore[attr-defined]
    IterationDiverge,
    SparseMatrixError,
)

from gridpilot.core.errors import ModelError
from gridpilot.core.schemas import (
    Command,
    CommandKind,
    DeviceKind,
    Measurand,
    Measurement,
    MeasurementSet,
    SimTruth,
    Terminal,
)
from gridpilot.model.grid import GridModel
from gridpilot.model.pgm import Island, PgmNetwork
from gridpilot.model.placement import Device, Placement, rating_mva
from gridpilot.model.profiles import ProfileTable

C = ComponentType
DEVIATION_STD = 0.08  # loads deviate from their standard profile by about 8 %
DEVIATION_TAU_S = 600.0  # ... and the deviation changes over ten minutes


class TwinUnsolved(ModelError):
    """Asked for a measurement while the twin's power flow has no solution."""


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
        self.out: dict[ComponentType, np.ndarray] = {}
        self.steps = 0  # power flows calculated: tells a cache its values are old
        self.solved = False  # no power flow yet
        self.failure = ""  # why the last power flow found no solution
        self.t_s = math.nan
        self.t_ns = 0
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
        dead = set(self.net.dead_buses())
        self.dead_bus = dead  # buses without a source: they read zero
        self._dead_loads = np.array([ld.bus in dead for ld in self.model.loads], dtype=bool)
        self._dead_gens = np.array([g.bus in dead for g in self.model.generators], dtype=bool)
        branches = [(ln.id, ln.from_bus, ln.to_bus) for ln in self.model.lines]
        branches += [(t.id, t.hv_bus, t.lv_bus) for t in self.model.transformers]
        # a branch with both ends on dead buses carries nothing (one live end: charging)
        self.dead_branch = {b for b, f, t in branches if f in dead and t in dead}
        self.dead_load = {ld.id for ld in self.model.loads if ld.bus in dead}
        self.dead_gen = {g.id for g in self.model.generators if g.bus in dead}

    def dead_islands(self) -> list[Island]:
        """The parts of the grid that no source feeds."""
        return [i for i in self.net.islands() if not i.energised]

    def unserved_mw(self, island: Island | None = None) -> float:
        """Load that the dead buses (of ``island``, or all) would draw now, in MW."""
        dead = self._dead_loads
        if island is not None:
            buses = set(island.buses)
            dead = np.array([ld.bus in buses for ld in self.model.loads], dtype=bool)
        served = np.array([ld.in_service for ld in self.model.loads], dtype=bool)
        return float(np.nansum(self._load_upd["p_specified"][dead & served])) / 1e6

    def consequence(self, dead_before: set[str], solved_before: bool) -> str:
        """What the last change did to the grid, in words for the operator."""
        parts: list[str] = []
        lost = [b for b in self.net.bus_ids if b in self.dead_bus and b not in dead_before]
        back = [b for b in self.net.bus_ids if b in dead_before and b not in self.dead_bus]
        if lost:
            lost_set = set(lost)
            loads = np.array([ld.bus in lost_set for ld in self.model.loads], dtype=bool)
            mw = float(np.nansum(self._load_upd["p_specified"][loads])) / 1e6
            parts.append(f"{len(lost)} buses de-energised, {power_text(mw)} unserved")
        if back:
            parts.append(f"{len(back)} buses re-energised")
        if not lost and not back:
            n = len(self.dead_bus)
            parts.append(f"{n} buses remain de-energised" if n else "every bus energised")
        if not self.solved:
            parts.append(f"the power flow no longer solves ({self.failure})")
        elif not solved_before:
            parts.append("the power flow solves again")
        return "; ".join(parts)

    def restore_switches(self, closed: dict[str, bool]) -> list[str]:
        """Put switches into stored positions before the first step; returns the ids this
        grid does not have (a model changed since)."""
        unknown = sorted(set(closed) - set(self.closed))
        self.closed.update({k: v for k, v in closed.items() if k in self.closed})
        self._rebuild()
        return unknown

    def apply_command(self, cmd: Command) -> str:
        """Carry out a command; returns what changed, and for switching what it did to the
        grid (the power flow is solved again at once); raises ModelError for an impossible
        command. A power flow without a solution does not raise: see ``solved``."""
        if cmd.kind is CommandKind.SWITCH:
            if cmd.target not in self.closed:
                raise ModelError(f"unknown switch {cmd.target!r}")
            if cmd.closed is None:
                raise ModelError("a switch command needs 'closed': true or false")
            dead_before, solved_before = set(self.dead_bus), self.solved
            self.closed[cmd.target] = cmd.closed
            self._rebuild()
            what = f"switch {cmd.target} {'closed' if cmd.closed else 'opened'}"
            if math.isnan(self.t_s):
                return what  # not stepped yet: the first step will solve it
            self.step(self.t_s, t_ns=self.t_ns)
            return f"{what}; {self.consequence(dead_before, solved_before)}"
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

    def step(self, t_s: float, *, t_ns: int | None = None) -> bool:
        """Power flow at simulated time ``t_s``; True when it solves (``out`` then holds
        power-grid-model's output), False when it does not (``failure`` says why)."""
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
        self.steps += 1
        self.t_s = t_s
        # the exact instant for time stamps: a float of seconds since 1970 resolves only
        # about 0.2 µs, and frames, reports and the truth must carry the same nanoseconds
        self.t_ns = round(t_s * 1e9) if t_ns is None else t_ns
        try:
            self.out = self._pgm.calculate_power_flow(
                calculation_method=CalculationMethod.newton_raphson, error_tolerance=1e-9
            )
        except (IterationDiverge, SparseMatrixError) as exc:
            # no operating point: the grid as switched cannot carry its load (voltage
            # collapse); it may solve again when the load falls or the operator switches back
            self.solved = False
            self.failure = _first_sentence(str(exc))
            return False
        self.solved = True
        self.failure = ""
        return True

    def out_bus_v_pu(self, bus: str) -> float:
        """Voltage magnitude at a bus in the last power flow."""
        self._require_solution()
        return float(self.out[C.node]["u_pu"][self._bus_row[bus]])

    def _require_solution(self) -> None:
        if not self.solved:
            raise TwinUnsolved(f"the twin's power flow has no solution: {self.failure}")

    def truth(self, grid: str) -> SimTruth:
        self._require_solution()
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

    def powered(self, device: Device) -> bool:
        """Whether the device has supply. A smart meter lives on the supply it meters and
        falls silent when its bus is dead; PMUs, RTUs and inverter controllers sit in
        substations or cabinets on a battery-backed DC supply and go on reporting zeros."""
        if device.kind is not DeviceKind.METER:
            return True
        return not all(
            pt.mrid in self.dead_load or pt.mrid in self.dead_gen for pt in device.points
        )

    def measure(self, device: Device, grid: str, seq: int) -> MeasurementSet:
        """What ``device`` reports of the last power flow, with its noise and any injection.

        A dead bus reads exactly zero, and so does the power of dead equipment: a voltage
        transformer or a current transformer without primary quantity gives no signal, so
        there is nothing for the noise of the measuring chain to scale."""
        self._require_solution()
        out = self.out
        t_ns = self.t_ns
        ms: list[Measurement] = []
        for pt in device.points:
            if pt.measurand is Measurand.VOLTAGE:
                row = self._bus_row[pt.mrid]
                u = float(out[C.node]["u_pu"][row])
                ang = float(out[C.node]["u_angle"][row])
                sig = device.v_sigma_pu
                if pt.mrid in self.dead_bus:
                    u, va = 0.0, (0.0 if device.kind == "pmu" else None)
                elif device.kind == "pmu":
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
            if self._dead(pt.mrid, pt.terminal):
                p, q, n = 0.0, 0.0, [0.0, 0.0]
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

    def _dead(self, mrid: str, terminal: Terminal) -> bool:
        if terminal is Terminal.LOAD:
            return mrid in self.dead_load
        if terminal is Terminal.GEN:
            return mrid in self.dead_gen
        return mrid in self.dead_branch

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


def _first_sentence(text: str) -> str:
    """power-grid-model's message without its figures and its advice to validate the input:
    "Iteration failed to converge after 20 iterations"."""
    lines = text.strip().splitlines()
    return lines[0].split("!")[0].strip() if lines else "no solution"


def power_text(mw: float) -> str:
    """A power for the operator: MW on medium voltage, kW where low-voltage loads are small."""
    return f"{mw:.1f} MW" if abs(mw) >= 1.0 or mw == 0.0 else f"{mw * 1e3:.0f} kW"
