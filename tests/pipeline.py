"""Test helper: the data path without a bus — twin → schedule → aligner → estimator, and each
estimate through its bus encoding (values and layout) and back, as every consumer reads it."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from gridpilot.core.estimates import EstimateWriter, expand
from gridpilot.core.schemas import EstimateValues, SimTruth, StateEstimate, decode, encode
from gridpilot.model.grid import GridModel
from gridpilot.model.placement import Placement, default_placement
from gridpilot.model.registry import load_grid
from gridpilot.services.state_estimation.aligner import Aligner
from gridpilot.services.state_estimation.estimator import Estimator
from gridpilot.simulator.schedule import Schedule
from gridpilot.simulator.twin import Twin

CACHE = Path(__file__).parent / ".cache"
NOON = 1_750_000_000.0 - (1_750_000_000.0 % 86400) + 12 * 3600  # a fixed summer noon, UTC


@cache
def grid(name: str) -> GridModel:
    return load_grid(name, cache_dir=CACHE)


@dataclass
class Run:
    estimates: list[StateEstimate] = field(default_factory=list)
    truths: dict[int, SimTruth] = field(default_factory=dict)
    sizes: list[int] = field(default_factory=list)  # bytes of each estimate's bus message
    layouts: list[int] = field(default_factory=list)  # bytes of each new layout (JSON)

    def v_errors(self) -> list[float]:
        """Max |V| error of each converged estimate against the truth at its instant."""
        out = []
        for est in self.estimates:
            truth = self.truths[est.t_ns]
            assert est.buses is not None
            assert est.buses.id == truth.buses.id
            out.append(float(np.max(np.abs(np.subtract(est.buses.v_pu, truth.buses.v_pu)))))
        return out


class Pipeline:
    def __init__(
        self,
        name: str,
        *,
        placement: Placement | None = None,
        seed: int = 7,
        noise: bool = True,
        t0_s: float = NOON,
        wire: bool = True,
    ) -> None:
        self.model = grid(name)
        self.placement = placement or default_placement(self.model)
        self.twin = Twin(self.model, self.placement, seed=seed, noise=noise)
        self.schedule = Schedule(self.placement, t0_s)
        self.now = 0.0
        self.aligner = Aligner(self.placement, clock=lambda: self.now)
        self.estimator = Estimator(self.model, self.placement)
        self.t_s = t0_s
        self.tick_s = min(d.period_s for d in self.placement.devices)
        self.seq = 0
        self.silent: set[str] = set()
        self.wire = wire
        table = self.estimator.sensors
        self.writer = EstimateWriter(
            name,
            sensors=table.names[: len(table.v_keys) + table.n_real_p],
            sources=[d.id for d in self.placement.devices],
        )

    def _through_the_bus(self, est: StateEstimate, run: Run) -> StateEstimate:
        values, layout = self.writer.encode(est)
        if layout is not None:
            run.layouts.append(len(encode(layout)))
        data = encode(values)
        run.sizes.append(len(data))
        return expand(decode(data, EstimateValues), self.writer.layout)

    def run(self, seconds: float) -> Run:
        result = Run()
        for _ in range(round(seconds / self.tick_s)):
            self.twin.step(self.t_s)
            truth = self.twin.truth(self.model.name)
            result.truths[truth.t_ns] = truth
            snaps = []
            for dev in self.schedule.due(self.t_s):
                if dev.id in self.silent:
                    continue
                self.seq += 1
                snaps += self.aligner.add(self.twin.measure(dev, self.model.name, self.seq))
            self.now += self.tick_s
            snaps += self.aligner.poll()
            for snap in snaps:
                est = self.estimator.estimate(snap)
                result.estimates.append(self._through_the_bus(est, result) if self.wire else est)
            self.t_s += self.tick_s
        return result
