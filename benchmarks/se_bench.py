"""State-estimation benchmark: GridPilot's estimator against raw power-grid-model and pandapower
on snapshots from the twin; prints a table and writes benchmarks/results/se.md.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import importlib.metadata
import os
import platform
import pstats
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np
from power_grid_model import CalculationMethod, DatasetType, PowerGridModel, initialize_array
from power_grid_model import ComponentType as C

from gridpilot.core.schemas import DeviceKind, Measurement, MeasurementSnapshot, Terminal
from gridpilot.model.grid import GridModel
from gridpilot.model.pandapower_reference import PandapowerReference, SensorValues, sensor_values
from gridpilot.model.placement import Placement, default_placement, rating_mva
from gridpilot.model.registry import load_grid, load_pandapower
from gridpilot.services.state_estimation.estimator import Estimator
from gridpilot.simulator.twin import Twin

GRIDS = ("cigre_mv", "lv_rural", "mv_rural", "mvlv_rural")
LARGE = {"mvlv_rural"}  # fewer snapshots, and only a few for pandapower
T0_S = 1_700_000_000.0 + 12 * 3600  # a noon, so PV injects
STEP_S = 1.0  # one snapshot per RTU scan
METER_LEAD_S = 300.0  # meters were read five minutes before the first snapshot
SILENT_METERS = 0.25  # ... but a quarter of them did not report: pseudo-measurements
GROSS_SIGMAS = 20.0
OUTPUTS = {C.node: None, C.line: None, C.transformer: None}  # voltages and flows
# The estimator also asks for the sensors' output: it needs their residuals.
OUTPUTS_WITH_SENSORS = {**OUTPUTS, C.sym_voltage_sensor: None, C.sym_power_sensor: None}
VOLTAGE_FIELDS = ("u_measured", "u_angle_measured")  # what changes per snapshot
POWER_FIELDS = ("p_measured", "q_measured", "p_sigma", "q_sigma")
RESULTS = Path(__file__).parent / "results" / "se.md"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Workload:
    snaps: list[MeasurementSnapshot]
    gross: list[MeasurementSnapshot]  # the same snapshots with one gross error
    truth: list[np.ndarray]  # bus voltage magnitudes, GridModel order
    gross_key: tuple[str, str, Terminal]
    gross_mw: float


def workload(model: GridModel, placement: Placement, n: int, seed: int) -> Workload:
    twin = Twin(model, placement, seed=seed)
    rng = np.random.default_rng(seed + 1)
    meters = [d for d in placement.devices if d.kind is DeviceKind.METER]
    silent = set(rng.choice(len(meters), int(SILENT_METERS * len(meters)), replace=False))
    twin.step(T0_S - METER_LEAD_S)
    read: list[Measurement] = []
    for i, d in enumerate(meters):
        if i not in silent:
            read += twin.measure(d, model.name, 0).measurements
    fast = [d for d in placement.devices if d.kind is not DeviceKind.METER]
    # The gross error goes on a branch flow of a primary substation's RTU (1 s scan).
    rtus = sorted((d for d in fast if d.kind is DeviceKind.RTU), key=lambda d: d.period_s)
    dev, pt = next(
        (d, p) for d in rtus for p in d.points if p.terminal in (Terminal.FROM, Terminal.TO)
    )
    err = GROSS_SIGMAS * dev.power_sigma_pct / 100.0 * rating_mva(model, pt.mrid, pt.terminal)
    key = (dev.id, pt.mrid, pt.terminal)
    w = Workload([], [], [], key, err)
    for k in range(n):
        t = T0_S + k * STEP_S
        twin.step(t)
        ms = list(read)
        for d in fast:
            ms += twin.measure(d, model.name, k + 1).measurements
        snap = MeasurementSnapshot(grid=model.name, t_ns=round(t * 1e9), measurements=ms)
        bad = [
            msgspec.structs.replace(m, p_mw=m.p_mw + err, q_mvar=m.q_mvar + err)
            if (m.source, m.mrid, m.terminal) == key and m.p_mw is not None and m.q_mvar is not None
            else m
            for m in ms
        ]
        w.snaps.append(snap)
        w.gross.append(msgspec.structs.replace(snap, measurements=bad))
        w.truth.append(twin.out[C.node]["u_pu"][twin.net.bus_row].copy())
    return w


class RawPgm:
    """What a power-grid-model user does per snapshot, with the estimator's sensor set."""

    def __init__(self, est: Estimator, values: SensorValues, method: CalculationMethod) -> None:
        s = est.sensors
        self.v_rows = np.flatnonzero(values.v_active)
        self.p_rows = np.flatnonzero(values.p_active)
        self.method = method
        self.v_upd = initialize_array(DatasetType.update, C.sym_voltage_sensor, len(self.v_rows))
        self.p_upd = initialize_array(DatasetType.update, C.sym_power_sensor, len(self.p_rows))
        volt, power = s.voltage[self.v_rows], s.power[self.p_rows]  # copies: ids, objects
        self.v_upd["id"], self.p_upd["id"] = volt["id"], power["id"]
        self.load(values)
        volt["u_sigma"] = s.v_sigma[self.v_rows]
        for f in VOLTAGE_FIELDS:
            volt[f] = self.v_upd[f]
        for f in POWER_FIELDS:
            power[f] = self.p_upd[f]
        data = dict(est.net.input) | {C.sym_voltage_sensor: volt, C.sym_power_sensor: power}
        self.model = PowerGridModel(data, system_frequency=est.model.f_hz)

    def same_set(self, values: SensorValues) -> bool:
        return np.array_equal(np.flatnonzero(values.v_active), self.v_rows) and np.array_equal(
            np.flatnonzero(values.p_active), self.p_rows
        )

    def load(self, values: SensorValues) -> None:
        """Fill the update arrays (not timed: a raw user has their values in arrays too)."""
        v, p = self.v_rows, self.p_rows
        self.v_upd["u_measured"] = values.u_measured[v]
        self.v_upd["u_angle_measured"] = values.u_angle[v]
        self.p_upd["p_measured"] = values.p_measured[p]
        self.p_upd["q_measured"] = values.q_measured[p]
        self.p_upd["p_sigma"] = values.p_sigma[p]
        self.p_upd["q_sigma"] = values.p_sigma[p]

    def update(self) -> None:
        self.model.update(
            update_data={C.sym_voltage_sensor: self.v_upd, C.sym_power_sensor: self.p_upd}
        )

    def calculate(self, outputs: dict = OUTPUTS) -> dict:
        nr = self.method is CalculationMethod.newton_raphson
        return self.model.calculate_state_estimation(
            calculation_method=self.method,
            error_tolerance=1e-8,
            max_iterations=50 if nr else 100,
            output_component_types=outputs,
        )


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    res = fn()
    return (time.perf_counter() - t0) * 1e3, res


def max_err(v: np.ndarray, truth: np.ndarray) -> float:
    ok = np.isfinite(truth) & np.isfinite(v)
    return float(np.max(np.abs(v[ok] - truth[ok]))) if ok.any() else float("nan")


@dataclass
class Series:
    ms: list[float] = field(default_factory=list)
    err: list[float] = field(default_factory=list)
    note: str = ""


def bench_grid(grid: str, n: int, n_pp: int, cache: Path) -> tuple[int, dict[str, Series]]:
    model = load_grid(grid, cache_dir=cache)
    placement = default_placement(model)
    log(f"[{grid}] {model.summary()}; generating {n} snapshots")
    w = workload(model, placement, n, seed=7)
    est = Estimator(model, placement)
    # Gross errors on separate estimators, so the clean one's state stays clean: one sees a
    # clean snapshot (untimed) before each corrupted one, so the error is new every time and
    # must be identified; the other sees only corrupted snapshots, so the error persists.
    est_new, est_old = Estimator(model, placement), Estimator(model, placement)
    values = [sensor_values(est.sensors, s) for s in w.snaps]
    first = est.estimate(w.snaps[0])  # warm-up: builds the calculation model
    if first.status != "converged":
        raise SystemExit(f"{grid}: estimator {first.status}: {first.message}")
    raw = RawPgm(est, values[0], CalculationMethod[first.solver])
    raw.update()
    raw.calculate()
    est_new.estimate(w.snaps[0])
    est_old.estimate(w.gross[0])
    res = {k: Series() for k in LABELS}
    found = {"gross_new": [0, 0], "gross_old": [0, 0]}  # snapshots where found, removals
    v_gp: list[np.ndarray] = []
    raw_gap = pp_gap = 0.0
    for k, snap in enumerate(w.snaps):
        ms, r = timed(lambda snap=snap: est.estimate(snap))
        res["gridpilot"].ms.append(ms)
        v_gp.append(np.array(r.buses.v_pu))
        res["gridpilot"].err.append(max_err(v_gp[k], w.truth[k]))
        if not raw.same_set(values[k]) or r.solver != first.solver:
            raise SystemExit(f"{grid}: snapshot {k} has another sensor set or method")
        raw.load(values[k])
        ms_u, _ = timed(raw.update)
        ms_c, out = timed(raw.calculate)
        res["raw_pgm"].ms.append(ms_u + ms_c)
        res["raw_pgm_calc"].ms.append(timed(raw.calculate)[0])
        v = out[C.node]["u_pu"][est.net.bus_row]
        res["raw_pgm"].err.append(max_err(v, w.truth[k]))
        raw_gap = max(raw_gap, max_err(v, v_gp[k]))
        est_new.estimate(snap)
        for key, e in (("gross_new", est_new), ("gross_old", est_old)):
            ms, g = timed(lambda e=e, k=k: e.estimate(w.gross[k]))
            res[key].ms.append(ms)
            if g.status == "converged":
                res[key].err.append(max_err(np.array(g.buses.v_pu), w.truth[k]))
            found[key][0] += any((b.source, b.mrid) == w.gross_key[:2] for b in g.bad_data)
            found[key][1] += len(g.bad_data)
        if k % 10 == 0:
            log(f"[{grid}] snapshot {k + 1}/{n}: gridpilot {res['gridpilot'].ms[-1]:.2f} ms")
    for key, (hits, removed) in found.items():
        res[key].note = (
            f"{hits}/{n} found ({GROSS_SIGMAS:.0f} sigma = {w.gross_mw:.3g} MW on "
            f"{w.gross_key[0]}/{w.gross_key[2]}); {removed / n:.1f} removed per estimate"
        )
    res["raw_pgm"].note = f"max abs(V - V GridPilot) {raw_gap:.1e}"
    res["raw_pgm_calc"].err = res["raw_pgm"].err
    ref = PandapowerReference(load_pandapower(grid), model, placement)
    log(f"[{grid}] pandapower: creating measurements and a warm-up estimate")
    warm = ref.estimate(w.snaps[0])
    for k in range(min(n_pp, n)):
        rr = ref.estimate(w.snaps[k])
        if rr.converged:
            res["pandapower"].ms.append(rr.seconds * 1e3)
            res["pandapower"].err.append(max_err(rr.v_pu, w.truth[k]))
            pp_gap = max(pp_gap, max_err(rr.v_pu, v_gp[k]))
        log(f"[{grid}] pandapower {k + 1}/{n_pp}: {rr.seconds:.2f} s, converged {rr.converged}")
    res["pandapower"].note = (
        f"{len(res['pandapower'].ms)}/{min(n_pp, n)} converged; max abs(V - V GridPilot) "
        f"{pp_gap:.1e}; creating its {warm.n_measurements} measurements took "
        f"{warm.setup_seconds:.1f} s once"
    )
    return len(model.buses), res


def profile_grid(grid: str, n: int, cache: Path) -> str:
    """Where GridPilot's time goes beyond the raw calculation."""
    model = load_grid(grid, cache_dir=cache)
    placement = default_placement(model)
    w = workload(model, placement, n, seed=7)
    est = Estimator(model, placement)
    first = est.estimate(w.snaps[0])
    values = [sensor_values(est.sensors, s) for s in w.snaps]
    raw = RawPgm(est, values[0], CalculationMethod[first.solver])
    parts: dict[str, list[float]] = {k: [] for k in PARTS}
    for k, snap in enumerate(w.snaps):
        parts["whole"].append(timed(lambda snap=snap: est.estimate(snap))[0])
        parts["mapping"].append(timed(lambda snap=snap: sensor_values(est.sensors, snap))[0])
        raw.load(values[k])
        parts["update"].append(timed(raw.update)[0])
        parts["calc"].append(timed(raw.calculate)[0])
        ms, out = timed(lambda: raw.calculate(OUTPUTS_WITH_SENSORS))
        parts["calc_sensors"].append(ms)
        t0 = time.perf_counter()
        est.net.bus_states(out[C.node])
        est.net.branch_states(out[C.line], out[C.transformer])
        parts["result"].append((time.perf_counter() - t0) * 1e3)
    lines = [f"Parts of a clean estimate on {grid}, timed apart without a profiler (median):"]
    lines += ["", "| part | median ms |", "| --- | ---: |"]
    lines += [f"| {label} | {np.median(parts[k]):.2f} |" for k, label in PARTS.items()]
    prof = cProfile.Profile()
    prof.enable()
    for snap in w.snaps:
        est.estimate(snap)
    prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    lines += ["", f"cProfile of {n} estimates on {grid}: top functions by own time, per estimate"]
    lines += ["", "| own ms | calls | function |", "| ---: | ---: | --- |"]
    top = sorted(stats.items(), key=lambda kv: -kv[1][2])[:10]
    for (file, line, name), (_cc, ncalls, tt, _ct, _callers) in top:
        where = f"{Path(file).name}:{line}({name})" if line else name
        lines.append(f"| {tt / n * 1e3:.2f} | {ncalls / n:.0f} | `{where}` |")
    return "\n".join(lines)


PARTS = {
    "whole": "Estimator.estimate, whole step",
    "mapping": "mapping the snapshot onto sensor rows + pseudo-measurements (replica)",
    "update": "PowerGridModel.update with the sensor values",
    "calc": "calculate_state_estimation, node/line/transformer output",
    "calc_sensors": "calculate_state_estimation, plus sensor output (as the estimator asks)",
    "result": "PgmNetwork.bus_states + branch_states (result lists)",
}


def machine() -> list[str]:
    def field_of(path: str, key: str) -> str:
        try:
            lines = Path(path).read_text().splitlines()
            return next(ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(key))
        except (OSError, StopIteration):
            return "0 unknown"

    cpu = field_of("/proc/cpuinfo", "model name")
    ram = f"{int(field_of('/proc/meminfo', 'MemTotal').split()[0]) / 2**20:.1f} GiB"
    ver = importlib.metadata.version
    try:
        numba = ver("numba")
    except importlib.metadata.PackageNotFoundError:
        numba = "not installed"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; load average at "
        f"the end {load} (other work on the machine makes p99 noisy)",
        f"- CPU: {cpu}, {os.cpu_count()} logical cores available; RAM {ram}",
        f"- {platform.system()} {platform.release()}, Python {platform.python_version()}",
        f"- numpy {ver('numpy')}, power-grid-model {ver('power-grid-model')}, "
        f"pandapower {ver('pandapower')}, scipy {ver('scipy')}, numba {numba}",
    ]


LABELS = {
    "gridpilot": "GridPilot Estimator.estimate",
    "raw_pgm": "raw PGM update + calculate",
    "raw_pgm_calc": "raw PGM calculate alone",
    "pandapower": "pandapower estimate()",
    "gross_new": "GridPilot, a new gross error",
    "gross_old": "GridPilot, a persisting gross error",
}


def table(rows: list[tuple[str, int, dict[str, Series]]]) -> list[str]:
    out = [
        "| grid | buses | method | n | median ms | p99 ms | / raw PGM | max abs(V) err p.u. "
        "| note |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for grid, buses, res in rows:
        base = float(np.median(res["raw_pgm"].ms))
        for key, s in res.items():
            if not s.ms:
                out.append(f"| {grid} | {buses} | {LABELS[key]} | 0 | - | - | - | - | {s.note} |")
                continue
            med, p99 = float(np.median(s.ms)), float(np.percentile(s.ms, 99))
            err = f"{max(s.err):.1e}" if s.err else "-"
            out.append(
                f"| {grid} | {buses} | {LABELS[key]} | {len(s.ms)} | {med:.2f} | {p99:.2f} | "
                f"{med / base:.2f} | {err} | {s.note} |"
            )
    return out


def targets(rows: list[tuple[str, int, dict[str, Series]]]) -> list[str]:
    """The issue's targets: within 1.5x of raw PGM, at least 20x faster than pandapower."""
    out = ["| grid | GridPilot / raw PGM (target <= 1.5) | pandapower / GridPilot (target >= 20) |"]
    out.append("| --- | ---: | ---: |")
    for grid, _, res in rows:
        gp = float(np.median(res["gridpilot"].ms))
        raw = gp / float(np.median(res["raw_pgm"].ms))
        pp = float(np.median(res["pandapower"].ms)) / gp if res["pandapower"].ms else float("nan")
        out.append(
            f"| {grid} | {raw:.2f} {'met' if raw <= 1.5 else 'missed'} | "
            f"{pp:.0f} {'met' if pp >= 20 else 'missed'} |"
        )
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--grids", nargs="+", default=list(GRIDS), choices=GRIDS)
    ap.add_argument("--snapshots", type=int, help="per grid (default 50; 20 on mvlv_rural)")
    ap.add_argument("--pp-snapshots", type=int, help="pandapower runs (default all; 3 large)")
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "gridpilot")
    ap.add_argument("--profile-grids", nargs="*", default=["mv_rural", "mvlv_rural"], choices=GRIDS)
    ap.add_argument("--out", type=Path, default=RESULTS, help="markdown results file")
    args = ap.parse_args(argv)
    cmd = sys.argv[1:] if argv is None else argv
    rows = []
    started = time.perf_counter()
    for grid in args.grids:
        n = args.snapshots or (20 if grid in LARGE else 50)
        n_pp = args.pp_snapshots or (3 if grid in LARGE else n)
        buses, res = bench_grid(grid, n, n_pp, args.cache_dir)
        rows.append((grid, buses, res))
    lines = [*table(rows), "", *targets(rows)]
    print("\n".join(lines))
    profiles = []
    for grid in args.profile_grids:
        log(f"profiling GridPilot on {grid}")
        profiles.append(profile_grid(grid, args.snapshots or 20, args.cache_dir))
        print(profiles[-1])
    doc = [
        "# State estimation benchmark",
        "",
        f"Command: `{' '.join(['python benchmarks/se_bench.py', *cmd])}` "
        f"({time.perf_counter() - started:.0f} s). Machine:",
        "",
        *machine(),
        "",
        "What is timed and how: benchmarks/README.md. Times per snapshot, warm-up excluded.",
        "",
        *lines,
        "",
        *[p + "\n" for p in profiles],
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(doc))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
