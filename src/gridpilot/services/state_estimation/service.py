"""The state-estimation service: measurements in, one estimate per snapshot out."""

from __future__ import annotations

import asyncio
import time
from collections import deque

from nats.aio.msg import Msg

from gridpilot.core import subjects
from gridpilot.core.schemas import MeasurementSet, MeasurementSnapshot, SwitchState, encode
from gridpilot.core.service import Service
from gridpilot.model import distribution
from gridpilot.services.state_estimation.aligner import Aligner
from gridpilot.services.state_estimation.estimator import Estimator

KV_EVERY_S = 1.0
BACKLOG = 4  # snapshots queued beyond this are skipped: the latest state matters most


class StateEstimationService(Service):
    name = "state_estimation"

    async def setup(self) -> None:
        pkg = await distribution.fetch(self.nc, self.grid)
        model, placement = pkg.model, pkg.placement
        self.estimator = Estimator(model, placement)
        self.aligner = Aligner(placement)
        self.queue: deque[MeasurementSnapshot] = deque()
        self.wake = asyncio.Event()
        self.topology: dict[str, bool] | None = None
        self.kv = await self.nc.jetstream().key_value("gp_state")
        self._kv_at = 0.0
        self._times: deque[float] = deque(maxlen=50)
        self.log.info(
            "model ready", extra={"model": model.summary(), "devices": len(placement.devices)}
        )
        await self.subscribe(
            subjects.MEAS.format(grid=self.grid, source="*"), MeasurementSet, self.on_measurements
        )
        await self.subscribe(
            subjects.TOPOLOGY.format(grid=self.grid), SwitchState, self.on_topology
        )
        self.spawn(self._poll(), name="aligner")
        self.spawn(self._estimate_loop(), name="estimate")

    async def on_measurements(self, mset: MeasurementSet, msg: Msg) -> None:
        if mset.grid != self.grid:
            self._drop(msg.subject, f"grid {mset.grid!r} on a {self.grid} subject")
            return
        self._enqueue(self.aligner.add(mset))

    async def on_topology(self, state: SwitchState, _msg: Msg) -> None:
        if state.closed != {k: v for k, v in self.estimator.closed.items() if k in state.closed}:
            self.topology = state.closed
            self.wake.set()

    def _enqueue(self, snaps: list[MeasurementSnapshot]) -> None:
        for snap in snaps:
            self.queue.append(snap)
            self.counters["snapshots"] += 1
        while len(self.queue) > BACKLOG:
            self.queue.popleft()
            self.counters["snapshots_skipped"] += 1
        if snaps:
            self.wake.set()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.aligner.ref_period_s / 4)
            self._enqueue(self.aligner.poll())

    async def _estimate_loop(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            if self.topology is not None:
                closed, self.topology = self.topology, None
                await asyncio.to_thread(self.estimator.set_topology, closed)
                self.counters["topology_changes"] += 1
                self.log.info("topology changed; model rebuilt")
            while self.queue:
                snap = self.queue.popleft()
                est = await asyncio.to_thread(self.estimator.estimate, snap)
                data = encode(est)
                await self.nc.publish(subjects.STATE.format(grid=self.grid), data)
                self.counters[f"estimates_{est.status}"] += 1
                self.counters["bad_data_removed"] += len(est.bad_data)
                now = time.monotonic()
                self._times.append(now)
                if len(self._times) > 1:
                    rate = (len(self._times) - 1) / max(1e-9, self._times[-1] - self._times[0])
                    self.info["estimates_per_s"] = round(rate, 2)
                self.info["solve_ms"] = est.solve_ms
                self.info["status"] = est.status.value
                if now - self._kv_at >= KV_EVERY_S:
                    self._kv_at = now
                    try:
                        await self.kv.put(self.grid, data)
                    except Exception as exc:
                        self.log.warning("KV put failed", extra={"error": str(exc)})


def main(grid: str | None = None) -> int:
    return StateEstimationService.main(grid=grid)
