"""State-estimation benchmark: GridPilot's estimator against raw power-grid-model and pandapower
on snapshots from the twin; prints a table and writes benchmarks/results/se.md.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import importlib.metadata
import io
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
from gridpilot.model.pandapower_reference import (
    PandapowerReference,
    SensorValues,
    sensor_values,
)
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
METHODS = {m.name: m for m in (CalculationMethod.newton_raphson, CalculationMethod.iterative_linear)}
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
    rtus = sorted(
        (d for d in fast if d.kind is DeviceKind.RTU), key=lambda d: d.period_s
    )
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
            if (m.source, m.mrid, m.terminal) == key and m.p_mw is not None
            and m.q_mvar is not None
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
        data = dict(est.net.input)
        data[C.sym_voltage_sensor] = s.voltage[self.v_rows]
        data[C.sym_power_sensor] = s.power[self.p_rows]
        self.v_upd = initialize_array(DatasetType.update, C.sym_voltage_sensor, len(self.v_rows))
        self.p_upd = initialize_array(DatasetType.update, C.sym_power_sensor, len(self.p_rows))
        self.v_upd["id"] = data[C.sym_voltage_sensor]["id"]
        self.p_upd["id"] = data[C.sym_power_sensor]["id"]
        self.load(values)
        data[C.sym_voltage_sensor] = _apply(data[C.sym_voltage_sensor], self.v_upd)
        data[C.sym_power_sensor] = _apply(data[C.sym_power_sensor], self.p_upd)
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
        self.model.update(update_data={C.sym_voltage_sensor: self.v_upd, C.sym_power_sensor: self.p_upd})

    def calculate(self) -> dict:
        nr = self.method is CalculationMethod.newton_raphson
        return self.model.calculate_state_estimation(
            calculation_method=self.method,
            error_tolerance=1e-8,
            max_iterations=50 if nr else 100,
            output_component_types=OUTPUTS,
        )


def _apply(arr: np.ndarray, upd: np.ndarray) -> np.ndarray:
    out = arr.copy()
    for f in upd.dtype.names:
        if f != "id":
            out[f] = np.where(np.isnan(upd[f]), out[f], upd[f])
    return out


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    res = fn()
    return (time.perf_counter() - t0) * 1e3, res


def max_err(v: np.ndarray, truth: np.ndarray) -> float:
    ok = np.isfinite(truth) & np.isfinite(v)
    return float(np.max(np.abs(v[ok] - truth[ok]))) if ok.all() else float("nan")


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
    # A separate estimator for the gross-error series, as a persistent error would be: sharing
    # one would let the identification's trial models evict the clean model from its cache.
    est_bad = Estimator(model, placement)
    values = [sensor_values(est.sensors, s) for s in w.snaps]
    first = est.estimate(w.snaps[0])  # warm-up: builds the calculation model
    if first.status != "converged":
        raise SystemExit(f"{grid}: estimator {first.status}: {first.message}")
    raw = RawPgm(est, values[0], METHODS[first.solver])
    raw.update()
    raw.calculate()
    est_bad.estimate(w.gross[0])  # warm-up
    res = {k: Series() for k in ("gridpilot", "raw_pgm", "raw_pgm_calc", "pandapower", "gross")}
    flagged = builds = 0
    for k, snap in enumerate(w.snaps):
        ms, r = timed(lambda snap=snap: est.estimate(snap))
        res["gridpilot"].ms.append(ms)
        res["gridpilot"].err.append(max_err(np.array(r.buses.v_pu), w.truth[k]))
        if not raw.same_set(values[k]) or r.solver != first.solver:
            raise SystemExit(f"{grid}: snapshot {k} has another sensor set or method")
        raw.load(values[k])
        ms_u, _ = timed(raw.update)
        ms_c, out = timed(raw.calculate)
        res["raw_pgm"].ms.append(ms_u + ms_c)
        res["raw_pgm_calc"].ms.append(timed(raw.calculate)[0])
        v = out[C.node]["u_pu"][est.net.bus_row]
        res["raw_pgm"].err.append(max_err(v, w.truth[k]))
        res["raw_pgm_calc"].err.append(res["raw_pgm"].err[-1])
        cached = {id(m) for m in est_bad._models.values()}  # read only: counts model builds
        ms, g = timed(lambda k=k: est_bad.estimate(w.gross[k]))
        builds += len({id(m) for m in est_bad._models.values()} - cached)
        res["gross"].ms.append(ms)
        if g.status == "converged":
            res["gross"].err.append(max_err(np.array(g.buses.v_pu), w.truth[k]))
        flagged += any((b.source, b.mrid) == w.gross_key[:2] for b in g.bad_data)
        if k % 10 == 0:
            log(f"[{grid}] snapshot {k + 1}/{n}: gridpilot {res['gridpilot'].ms[-1]:.2f} ms")
    res["gross"].note = (
        f"{flagged}/{n} flagged ({GROSS_SIGMAS:.0f} sigma = {w.gross_mw:.3g} MW on "
        f"{w.gross_key[0]}/{w.gross_key[2]}); {builds / n:.1f} new PGM models per estimate"
    )
    ref = PandapowerReference(load_pandapower(grid), model, placement)
    setups = []
    for k in range(min(n_pp, n)):
        rr = ref.estimate(w.snaps[k])
        setups.append(rr.setup_seconds)
        if rr.converged:
            res["pandapower"].ms.append(rr.seconds * 1e3)
            res["pandapower"].err.append(max_err(rr.v_pu, w.truth[k]))
        log(f"[{grid}] pandapower {k + 1}/{n_pp}: {rr.seconds:.2f} s, converged {rr.converged}")
    res["pandapower"].note = (
        f"{len(res['pandapower'].ms)}/{min(n_pp, n)} converged; creating "
        f"{rr.n_measurements} measurements took {setups[0]:.1f} s once"
    )
    return len(model.buses), res


def profile_grid(grid: str, n: int, cache: Path) -> str:
    """Where GridPilot's time goes beyond the raw calculation (cProfile, cumulative)."""
    model = load_grid(grid, cache_dir=cache)
    placement = default_placement(model)
    w = workload(model, placement, n, seed=7)
    est = Estimator(model, placement)
    est.estimate(w.snaps[0])
    prof = cProfile.Profile()
    prof.enable()
    for s in w.snaps:
        est.estimate(s)
    prof.disable()
    st = pstats.Stats(prof)
    wanted = {
        "estimate": "Estimator.estimate (whole step)",
        "_solve": "  _solve (model lookup, slicing, update, calculate)",
        "calculate_state_estimation": "    PowerGridModel.calculate_state_estimation",
        "update": "    PowerGridModel.update",
        "_as_update": "    _as_update (input -> update dtype copies)",
        "_residuals": "  _residuals (weighted residuals, objective)",
        "_suspicious": "  _suspicious (chi-square and r_max test)",
        "pseudo_values": "  SensorTable.pseudo_values",
        "_result": "  _result (StateEstimate construction)",
        "bus_states": "    PgmNetwork.bus_states",
        "branch_states": "    PgmNetwork.branch_states",
    }
    found: dict[str, float] = {}
    for (_file, _line, name), (_cc, _nc, _tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        if name in wanted and (name != "update" or "power_grid_model" in _file):
            found[name] = found.get(name, 0.0) + ct
    lines = [f"cProfile of {n} estimates on {grid} (per estimate, profiler overhead included):", ""]
    lines += ["| part | ms | share |", "| --- | ---: | ---: |"]
    total = found.get("estimate", 1.0)
    for key, label in wanted.items():
        if key in found:
            ms = found[key] / n * 1e3
            lines.append(f"| {label.strip()} | {ms:.2f} | {found[key] / total:.0%} |")
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(8)
    top = [ln for ln in buf.getvalue().splitlines() if ln.strip()][-9:]
    return "\n".join([*lines, "", "Top functions by own time:", "", "```", *top, "```"])


def machine() -> list[str]:
    cpu = "unknown"
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
        mem = next(
            ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")
        )
        ram = f"{int(mem.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        ram = "unknown"
    ver = importlib.metadata.version
    try:
        numba = ver("numba")
    except importlib.metadata.PackageNotFoundError:
        numba = "not installed (pandapower runs its numba paths as plain Python)"
    return [
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
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
    "gross": "GridPilot, one gross error",
}


def table(rows: list[tuple[str, int, dict[str, Series]]]) -> list[str]:
    out = [
        "| grid | buses | method | n | median ms | p99 ms | / raw PGM | max abs(V) err p.u. | note |",
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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--grids", nargs="+", default=list(GRIDS), choices=GRIDS)
    ap.add_argument("--snapshots", type=int, help="per grid (default 50; 20 on mvlv_rural)")
    ap.add_argument("--pp-snapshots", type=int, help="pandapower runs (default all; 3 large)")
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "gridpilot")
    ap.add_argument("--profile-grid", default="mvlv_rural", help="'' to skip profiling")
    ap.add_argument("--out", type=Path, default=RESULTS, help="markdown results file")
    args = ap.parse_args(argv)
    rows = []
    started = time.perf_counter()
    for grid in args.grids:
        n = args.snapshots or (20 if grid in LARGE else 50)
        n_pp = args.pp_snapshots or (3 if grid in LARGE else n)
        buses, res = bench_grid(grid, n, n_pp, args.cache_dir)
        rows.append((grid, buses, res))
    lines = table(rows)
    print("\n".join(lines))
    prof = ""
    if args.profile_grid:
        log(f"profiling GridPilot on {args.profile_grid}")
        prof = profile_grid(args.profile_grid, args.snapshots or 20, args.cache_dir)
        print(prof)
    doc = [
        "# State estimation benchmark",
        "",
        f"Command: `python benchmarks/se_bench.py {' '.join(sys.argv[1:] if argv is None else argv)}`"
        f" ({time.perf_counter() - started:.0f} s). Machine:",
        "",
        *machine(),
        "",
        "Per snapshot, in this order, all in one process: GridPilot's estimator, raw "
        "power-grid-model (model built once with the same sensors; per snapshot `update` + "
        "`calculate_state_estimation` with the estimator's method), pandapower `estimate()` "
        "on the same measurements, and GridPilot on the same snapshot with one gross error. "
        "Warm-up calls are not timed. See benchmarks/README.md.",
        "",
        *lines,
        "",
        prof,
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(doc))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
