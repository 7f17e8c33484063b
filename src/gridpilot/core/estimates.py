"""State estimates on the bus: the ids once per topology, the values per estimate.

A full ``StateEstimate`` names every bus, branch and sensor in every message: on mvlv_rural
(5,479 buses) that is 1 MB per estimate, beyond NATS's 1 MiB payload limit once headers are
added. On the bus an estimate is an ``EstimateValues``: its values, rounded to what they mean,
aligned to an ``EstimateLayout`` that holds the ids and is written once per topology to KV
``gp_state`` (key ``layout.<grid>.<id>``) before any estimate refers to it.

``EstimateWriter`` makes both (the state-estimation service); ``EstimateReader`` turns a message
back into the full ``StateEstimate``, reading each layout from KV once (every consumer);
``expand`` does the same with a layout at hand (tests, benchmarks, the writer's own checks).

Resolutions, chosen by what a value means rather than what a float can hold:

- ``v_pu`` 1e-6 p.u.: 0.4 mV on a 400 V bus; ten times finer than the agreement asked of the
  estimator and an independent WLS (1e-5 p.u.), a hundred times finer than a PMU measures.
- ``va_deg`` 1e-5 degrees: a thousand times finer than a PMU's angle error (~0.01 degrees).
- powers whole W and var (1e-6 MW), currents whole mA (1e-6 kA), as the estimator rounds them;
  sent as integers ("-3776", not "-0.003776"): most flows of a grid with its LV feeders are a
  few kW, and the leading "0.00" of every one of them is what kept the values above half the
  payload limit on mvlv_rural.
- ``loading_pct`` 1e-3 %: 6 W on a 630 kVA transformer, 1e-5 of the 100 % an alarm is about.
- residual norms 1e-3 sigma, as the estimator rounds them.

Integers decode exactly: ``3776 / 1e6`` is the same double as ``round(x, 6)`` gave, so a round
trip changes nothing but ``loading_pct`` (rounded here). Non-finite values travel as null and
come back as NaN.
"""

from __future__ import annotations

import hashlib
import zlib
from collections import OrderedDict
from collections.abc import Sequence

import msgspec
import nats.js.errors
import numpy as np
from nats.aio.client import Client
from nats.js.kv import KeyValue

from gridpilot.core import schemas as s
from gridpilot.core import subjects
from gridpilot.core.errors import PayloadError

W_PER_MW = 1e6  # powers travel in W and var
MA_PER_KA = 1e6  # currents in mA
V_DECIMALS = 6
VA_DECIMALS = 5
LOADING_DECIMALS = 3
RESIDUAL_DECIMALS = 3
LAYOUT_ID_CHARS = 16  # hex digits of the layout's hash: 64 bits, no collision among a grid's few
# A layout larger than this is stored (and published) zlib-compressed: ids compress ninefold
# (mvlv_rural's 672 kB become 78 kB), so that layouts of grids far larger than the largest
# built-in one still fit a message; smaller ones stay plain JSON, readable with `nats kv get`.
LAYOUT_PLAIN_MAX = 64 * 1024
LAYOUT_MAX = 256 * 1024 * 1024  # what a compressed layout may expand to: more is not a layout


class EstimateRef(msgspec.Struct, frozen=True, kw_only=True):
    """What an EstimateValues is about, decoded without its values (to thin or route)."""

    grid: str
    t_ns: int
    layout: str = ""


class LayoutNotFoundError(PayloadError):
    """An estimate names a layout that KV gp_state does not hold."""

    def __init__(self, grid: str, layout: str) -> None:
        key = layout_key(grid, layout)
        super().__init__(
            subjects.STATE.format(grid=grid),
            f"the estimate refers to layout {layout!r}, which KV {subjects.STATE_BUCKET} does "
            f"not hold (key {key})",
        )


def layout_key(grid: str, layout: str) -> str:
    return subjects.STATE_LAYOUT_KEY.format(grid=grid, layout=layout)


def layout_id(
    bus_id: Sequence[str], branch_id: Sequence[str], sensor: Sequence[str], source: Sequence[str]
) -> str:
    """The same lists give the same id, in any process (a grid moving between instances)."""
    data = msgspec.json.encode([list(bus_id), list(branch_id), list(sensor), list(source)])
    return hashlib.sha256(data).hexdigest()[:LAYOUT_ID_CHARS]


def encode_layout(layout: s.EstimateLayout) -> bytes:
    """A layout as KV gp_state keeps it: JSON, zlib-compressed above LAYOUT_PLAIN_MAX."""
    data = s.encode(layout)
    return data if len(data) <= LAYOUT_PLAIN_MAX else zlib.compress(data, 6)


def decode_layout(data: bytes, *, where: str) -> s.EstimateLayout:
    """The layout in ``data`` (plain or compressed JSON); PayloadError if it is neither."""
    try:
        if data[:1] != b"{":
            inflate = zlib.decompressobj()
            data = inflate.decompress(data, LAYOUT_MAX)
            if inflate.unconsumed_tail:
                raise PayloadError(where, f"a layout larger than {LAYOUT_MAX} bytes")
        return s.decode(data, s.EstimateLayout)
    except (zlib.error, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise PayloadError(where, f"not a layout: {exc}") from None


# -- values ------------------------------------------------------------------------------------
def _rounded(values: Sequence[float], decimals: int) -> list[float | None]:
    """Rounded floats; NaN stays NaN, which msgspec writes as null. ``+ 0.0`` turns -0.0
    into 0.0 (one character less, the same value)."""
    out: list[float | None] = (
        np.round(np.asarray(values, dtype=np.float64), decimals) + 0.0
    ).tolist()
    return out


def _fixed(values: Sequence[float], scale: float) -> list[int | None]:
    """``values * scale`` as whole numbers; None where not finite."""
    scaled = np.rint(np.asarray(values, dtype=np.float64) * scale)
    finite = np.isfinite(scaled)
    if finite.all():
        whole: list[int | None] = scaled.astype(np.int64).tolist()
        return whole
    return [int(v) if ok else None for v, ok in zip(scaled.tolist(), finite.tolist(), strict=True)]


def _floats(values: Sequence[float | None], scale: float = 1.0) -> list[float]:
    """Back to floats in the StateEstimate's units; null becomes NaN."""
    arr = np.asarray(values, dtype=np.float64)  # None -> nan
    if scale != 1.0:
        arr = arr / scale
    out: list[float] = arr.tolist()
    return out


def _bus_values(b: s.BusStates) -> s.BusValues:
    return s.BusValues(
        v_pu=_rounded(b.v_pu, V_DECIMALS),
        va_deg=_rounded(b.va_deg, VA_DECIMALS),
        p_w=_fixed(b.p_mw, W_PER_MW),
        q_var=_fixed(b.q_mvar, W_PER_MW),
    )


def _branch_values(b: s.BranchStates) -> s.BranchValues:
    return s.BranchValues(
        p_from_w=_fixed(b.p_from_mw, W_PER_MW),
        q_from_var=_fixed(b.q_from_mvar, W_PER_MW),
        p_to_w=_fixed(b.p_to_mw, W_PER_MW),
        q_to_var=_fixed(b.q_to_mvar, W_PER_MW),
        i_from_ma=_fixed(b.i_from_ka, MA_PER_KA),
        loading_pct=_rounded(b.loading_pct, LOADING_DECIMALS),
    )


def _extended(base: list[str], names: Sequence[str], index: dict[str, int]) -> list[str]:
    """``base``, or ``base`` with the names it lacks appended (in order, once each)."""
    extra = [n for n in dict.fromkeys(names) if n not in index]
    return base + extra if extra else base


class EstimateWriter:
    """Encodes one grid's estimates for the bus; not thread-safe.

    ``sensors`` and ``sources`` are every sensor whose residual an estimate may report and every
    field device that may be missing: the layout lists them all, so that it changes with the
    topology (the bus and branch ids), not with each device that falls silent. A name an
    estimate brings that they lack is appended (a new layout), never lost.
    """

    def __init__(
        self, grid: str, *, sensors: Sequence[str] = (), sources: Sequence[str] = ()
    ) -> None:
        self.grid = grid
        self.layout: s.EstimateLayout | None = None
        self._sensors = list(dict.fromkeys(sensors))
        self._sources = list(dict.fromkeys(sources))
        self._rebase = True  # the next layout starts from the expected lists
        self._sensor_pos: dict[str, int] = {}
        self._source_pos: dict[str, int] = {}

    def expect(self, *, sensors: Sequence[str], sources: Sequence[str]) -> None:
        """The sensors and devices of the next estimates (after the model was rebuilt)."""
        sensors, sources = list(dict.fromkeys(sensors)), list(dict.fromkeys(sources))
        if sensors != self._sensors or sources != self._sources:
            self._sensors, self._sources = sensors, sources
            self._rebase = True

    def encode(self, est: s.StateEstimate) -> tuple[s.EstimateValues, s.EstimateLayout | None]:
        """The message for ``est``, and its layout when that is new: store the layout (KV
        gp_state) before publishing a message that refers to it."""
        new = self._layout_for(est)
        layout = self.layout
        residuals: list[float | None] = []
        missing: list[int] = []
        if layout is not None:
            if est.residual_sensor:
                residuals = [None] * len(layout.sensor)
                pos = self._sensor_pos
                norms = np.asarray(est.residual_norm, dtype=np.float64)
                rounded = np.round(norms, RESIDUAL_DECIMALS).tolist()
                for name, r in zip(est.residual_sensor, rounded, strict=True):
                    residuals[pos[name]] = r
            missing = [self._source_pos[src] for src in est.missing_sources]
        msg = s.EstimateValues(
            grid=est.grid,
            t_ns=est.t_ns,
            status=est.status,
            layout=layout.id if layout is not None else "",
            message=est.message,
            solver=est.solver,
            solve_ms=est.solve_ms,
            n_measurements=est.n_measurements,
            n_pseudo=est.n_pseudo,
            pseudo=est.pseudo,
            objective=est.objective,
            chi2_threshold=est.chi2_threshold,
            bad_data=est.bad_data,
            max_r_norm=est.max_r_norm,
            buses=_bus_values(est.buses) if est.buses is not None else None,
            branches=_branch_values(est.branches) if est.branches is not None else None,
            residual_norm=residuals,
            missing=missing,
            late_dropped=est.late_dropped,
        )
        return msg, new

    def _layout_for(self, est: s.StateEstimate) -> s.EstimateLayout | None:
        """Make the layout ``est`` needs the current one; return it if it is new."""
        old = self.layout
        if old is None and not (
            est.buses or est.branches or est.residual_sensor or est.missing_sources
        ):
            return None  # nothing to align: no layout yet
        if old is None or self._rebase:
            sensor_base, sensor_pos = self._sensors, _positions(self._sensors)
            source_base, source_pos = self._sources, _positions(self._sources)
        else:
            sensor_base, sensor_pos = old.sensor, self._sensor_pos
            source_base, source_pos = old.source, self._source_pos
        sensor = _extended(sensor_base, est.residual_sensor, sensor_pos)
        source = _extended(source_base, est.missing_sources, source_pos)
        bus_id = est.buses.id if est.buses is not None else (old.bus_id if old else [])
        branch_id = est.branches.id if est.branches is not None else (old.branch_id if old else [])
        if (
            old is not None
            and sensor is old.sensor
            and source is old.source
            and _same(bus_id, old.bus_id)
            and _same(branch_id, old.branch_id)
        ):
            return None
        layout = s.EstimateLayout(
            grid=est.grid,
            id=layout_id(bus_id, branch_id, sensor, source),
            bus_id=bus_id,
            branch_id=branch_id,
            sensor=sensor,
            source=source,
        )
        self._rebase = False
        self._sensor_pos = sensor_pos if sensor is sensor_base else _positions(sensor)
        self._source_pos = source_pos if source is source_base else _positions(source)
        self.layout = layout  # the same id again (a rebuild that changed nothing): not new
        return None if old is not None and old.id == layout.id else layout


def _positions(names: list[str]) -> dict[str, int]:
    return {n: i for i, n in enumerate(names)}


def _same(a: list[str], b: list[str]) -> bool:
    return a is b or a == b


# -- reading -------------------------------------------------------------------------------------
def expand(msg: s.EstimateValues, layout: s.EstimateLayout | None) -> s.StateEstimate:
    """The full StateEstimate of ``msg``, given the layout it names (None if it names none).

    Raises PayloadError when the message does not fit the layout."""
    subject = subjects.STATE.format(grid=msg.grid)
    if msg.layout and (layout is None or layout.id != msg.layout):
        raise PayloadError(subject, f"needs layout {msg.layout!r}, not {layout and layout.id!r}")
    if layout is None:
        if msg.buses or msg.branches or msg.residual_norm or msg.missing:
            raise PayloadError(subject, "values without a layout")
        layout = s.EstimateLayout(grid=msg.grid, id="", bus_id=[], branch_id=[])
    buses = branches = None
    if msg.buses is not None:
        b = msg.buses
        _check(subject, "buses", len(layout.bus_id), b.v_pu, b.va_deg, b.p_w, b.q_var)
        buses = s.BusStates(
            id=layout.bus_id,
            v_pu=_floats(b.v_pu),
            va_deg=_floats(b.va_deg),
            p_mw=_floats(b.p_w, W_PER_MW),
            q_mvar=_floats(b.q_var, W_PER_MW),
        )
    if msg.branches is not None:
        r = msg.branches
        columns = (r.p_from_w, r.q_from_var, r.p_to_w, r.q_to_var, r.i_from_ma, r.loading_pct)
        _check(subject, "branches", len(layout.branch_id), *columns)
        branches = s.BranchStates(
            id=layout.branch_id,
            p_from_mw=_floats(r.p_from_w, W_PER_MW),
            q_from_mvar=_floats(r.q_from_var, W_PER_MW),
            p_to_mw=_floats(r.p_to_w, W_PER_MW),
            q_to_mvar=_floats(r.q_to_var, W_PER_MW),
            i_from_ka=_floats(r.i_from_ma, MA_PER_KA),
            loading_pct=_floats(r.loading_pct),
        )
    if msg.residual_norm:
        _check(subject, "sensors", len(layout.sensor), msg.residual_norm)
    used = [i for i, r in enumerate(msg.residual_norm) if r is not None]
    if any(not 0 <= i < len(layout.source) for i in msg.missing):
        raise PayloadError(subject, f"a missing source beyond the layout's {len(layout.source)}")
    return s.StateEstimate(
        grid=msg.grid,
        t_ns=msg.t_ns,
        status=msg.status,
        message=msg.message,
        solver=msg.solver,
        solve_ms=msg.solve_ms,
        n_measurements=msg.n_measurements,
        n_pseudo=msg.n_pseudo,
        pseudo=msg.pseudo,
        objective=msg.objective,
        chi2_threshold=msg.chi2_threshold,
        bad_data=msg.bad_data,
        max_r_norm=msg.max_r_norm,
        buses=buses,
        branches=branches,
        residual_sensor=[layout.sensor[i] for i in used],
        residual_norm=[msg.residual_norm[i] for i in used],  # type: ignore[misc]
        missing_sources=[layout.source[i] for i in msg.missing],
        late_dropped=msg.late_dropped,
    )


def _check(subject: str, what: str, n: int, *columns: Sequence[object]) -> None:
    for col in columns:
        if len(col) != n:
            raise PayloadError(subject, f"{len(col)} values for the layout's {n} {what}")


class EstimateReader:
    """Turns estimate messages into full StateEstimates for one connection: reads the layout
    a message names from KV gp_state the first time, then keeps it (the ``keep`` latest).

    A layout the bucket does not hold raises LayoutNotFoundError (a PayloadError: drop the
    message, count it); a broker that does not answer raises what nats-py raised.
    """

    def __init__(self, nc: Client, *, keep: int = 16, timeout_s: float = 2.0) -> None:
        self._nc = nc
        self._keep = keep
        self._timeout_s = timeout_s
        self._kv: KeyValue | None = None
        self._layouts: OrderedDict[tuple[str, str], s.EstimateLayout] = OrderedDict()
        self.layouts_read = 0  # from KV, for tests and counters

    async def read(self, data: bytes) -> s.StateEstimate:
        """Decode raw message bytes (a PayloadError or msgspec error for bad ones)."""
        return await self.expand(s.decode(data, s.EstimateValues))

    async def expand(self, msg: s.EstimateValues) -> s.StateEstimate:
        layout = await self.layout(msg.grid, msg.layout) if msg.layout else None
        return expand(msg, layout)

    def cached(self, grid: str, layout: str) -> s.EstimateLayout | None:
        """The layout if already read (no I/O), else None."""
        return self._layouts.get((grid, layout))

    def remember(self, layout: s.EstimateLayout) -> None:
        """Keep a layout known otherwise (published on gp.<grid>.state.layout, or written)."""
        key = (layout.grid, layout.id)
        self._layouts[key] = layout
        self._layouts.move_to_end(key)
        while len(self._layouts) > self._keep:
            self._layouts.popitem(last=False)

    async def layout(self, grid: str, layout: str) -> s.EstimateLayout:
        known = self._layouts.get((grid, layout))
        if known is not None:
            self._layouts.move_to_end((grid, layout))
            return known
        if self._kv is None:
            js = self._nc.jetstream(timeout=self._timeout_s)
            self._kv = await js.key_value(subjects.STATE_BUCKET)
        try:
            entry = await self._kv.get(layout_key(grid, layout))
        except nats.js.errors.KeyNotFoundError:  # also a deleted key
            raise LayoutNotFoundError(grid, layout) from None
        found = decode_layout(entry.value or b"", where=layout_key(grid, layout))
        if (found.grid, found.id) != (grid, layout):
            raise PayloadError(layout_key(grid, layout), f"holds layout {found.id!r}")
        self.layouts_read += 1
        self.remember(found)
        return found
