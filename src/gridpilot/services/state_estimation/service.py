"""The state-estimation service: measurements in, one estimate per snapshot out.

Started for one grid (``--grid NAME``, what ``gridpilot up`` runs) it estimates that grid.
Started with ``--grid all`` it shares every grid in the object store ``gp_models`` with the
other instances started so: a lease per grid in KV ``gp_leases`` makes each grid estimated by
exactly one live instance; an instance holds at most its fair share (grids / live instances,
rounded up) and takes over the grids of one that died once their leases expire
(:mod:`gridpilot.core.sharing`, whose thread keeps the leases off the data path; an instance
that cannot keep up sheds the grids it took last).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from gridpilot.core import bus, subjects
from gridpilot.core.bus import refuse_oversize
from gridpilot.core.estimates import EstimateWriter, encode_layout, layout_key
from gridpilot.core.schemas import (
    CONDITION_REPEAT_S,
    AlarmKind,
    Condition,
    EstimateLayout,
    MeasurementSet,
    MeasurementSnapshot,
    ServiceState,
    Severity,
    StateEstimate,
    SwitchState,
    encode,
)
from gridpilot.core.service import Service
from gridpilot.core.sharing import TICK_S, GridSharing, LoadGauge
from gridpilot.model import distribution
from gridpilot.services.state_estimation.aligner import Aligner
from gridpilot.services.state_estimation.estimator import Estimator

KV_EVERY_S = 1.0
# A grid whose last estimate took less than this estimates on the event loop: the hop to a worker
# thread and back costs more than the estimate (half an instance's CPU at 50 small grids). A
# slower grid estimates in a thread, so that the loop keeps reading messages meanwhile.
INLINE_MS = 2.0
BACKLOG = 4  # snapshots queued beyond this are skipped: the latest state matters most
# A grid's first seconds (its first estimates in a thread, the model just built) tell nothing
# of the instance's load: its skipped snapshots count towards shedding only after this long.
WARMUP_S = 10.0

SHARED = "all"  # the grid argument that makes an instance share every grid with the others
INSTANCE_HEADER = "Gp-Instance"  # on every published estimate: the instance that made it
LEASE_PREFIX = "se."  # + grid: who estimates the grid (member.state_estimation.<instance>)
OP_TIMEOUT_S = 1.0  # reading the last topology takes no longer
CMD_STREAM = next(s.name for s in subjects.STREAMS if subjects.TOPOLOGY.wildcard() in s.subjects)


class GridEstimation:
    """One grid's pipeline: measurements and switch states in, aligner, estimator, estimates
    out (``gp.<grid>.state`` and KV ``gp_state``). Runs until its task is cancelled.

    ``may_publish`` (the lease still valid) is asked before every publication.
    """

    def __init__(
        self,
        svc: StateEstimationService,
        grid: str,
        *,
        info: dict[str, int | float | str],
        may_publish: Callable[[], bool] = lambda: True,
    ) -> None:
        self.svc = svc
        self.grid = grid
        self.info = info
        self.may_publish = may_publish
        self.active = True
        self.queue: deque[MeasurementSnapshot] = deque()
        self.wake = asyncio.Event()
        self.topology: dict[str, bool] | None = None
        self._kv_at = 0.0
        self._times: deque[float] = deque(maxlen=50)
        self._inline = False  # the next estimate on the event loop (the first: in a thread)
        self._subs: list[Subscription] = []
        self.task: asyncio.Future[None] | None = None
        self.sources: list[str] = []
        self.writer = EstimateWriter(grid)  # start() gives it the sensors and devices
        self._stored_layout = ""  # the layout id last written to KV
        self._oversize_said = 0.0  # when the oversize condition was last sent (0: not active)
        self._gauged_from = time.monotonic() + WARMUP_S  # see WARMUP_S

    async def start(self, pkg: distribution.GridPackage | None = None) -> None:
        """Fetch the model (unless given), build the estimator, subscribe."""
        svc = self.svc
        if pkg is None:
            pkg = await distribution.fetch(svc.nc, self.grid)
        model, placement = pkg.model, pkg.placement
        self.estimator = await asyncio.to_thread(Estimator, model, placement)
        self.aligner = Aligner(placement)
        self.sources = [d.id for d in placement.devices]
        self.writer = EstimateWriter(
            self.grid, sensors=_sensor_names(self.estimator), sources=self.sources
        )
        self.kv = await svc.nc.jetstream().key_value(subjects.STATE_BUCKET)
        svc.log.info(
            "model ready",
            extra={"grid": self.grid, "model": model.summary(), "devices": len(placement.devices)},
        )
        self._subs.append(
            await svc.subscribe(
                subjects.MEAS.format(grid=self.grid, source="*"),
                MeasurementSet,
                self.on_measurements,
            )
        )
        self._subs.append(
            await svc.subscribe(
                subjects.TOPOLOGY.format(grid=self.grid), SwitchState, self.on_topology
            )
        )
        await self._last_topology()

    async def run(self) -> None:
        """Start, then estimate until cancelled; unsubscribes on the way out."""
        try:
            await self.start()
            await asyncio.gather(self.poll(), self.estimate_loop())
        finally:
            self.active = False
            for sub in self._subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def stop(self) -> None:
        """Publish nothing more from now on; unsubscribe and end the tasks."""
        self.active = False
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task

    async def _last_topology(self) -> None:
        """Start from the switch states last reported (stream GP_CMD keeps them), not from the
        model's: the field reports them only on change and every minute."""
        subject = subjects.TOPOLOGY.format(grid=self.grid)
        try:
            js = self.svc.nc.jetstream(timeout=OP_TIMEOUT_S)
            raw = await js.get_last_msg(CMD_STREAM, subject)
            state = msgspec.json.decode(raw.data or b"", type=SwitchState)
        except nats.js.errors.NotFoundError:
            return
        except Exception as exc:
            self.svc.log.warning(
                "last topology unavailable", extra={"grid": self.grid, "error": str(exc)}
            )
            return
        await self.on_topology(state, None)

    async def on_measurements(self, mset: MeasurementSet, msg: Msg) -> None:
        if mset.grid != self.grid:
            self.svc._drop(msg.subject, f"grid {mset.grid!r} on a {self.grid} subject")
            return
        self._enqueue(self.aligner.add(mset))

    async def on_topology(self, state: SwitchState, _msg: Msg | None) -> None:
        if state.closed != {k: v for k, v in self.estimator.closed.items() if k in state.closed}:
            self.topology = state.closed
            self.wake.set()

    def _enqueue(self, snaps: list[MeasurementSnapshot]) -> None:
        counters = self.svc.counters
        gauge = self.svc.gauge
        gauged = time.monotonic() >= self._gauged_from
        for snap in snaps:
            self.queue.append(snap)
            counters["snapshots"] += 1
            gauge.arrived += gauged
        while len(self.queue) > BACKLOG:
            self.queue.popleft()
            counters["snapshots_skipped"] += 1
            gauge.dropped += gauged
        if snaps:
            self.wake.set()

    async def poll(self) -> None:
        while True:
            await asyncio.sleep(self.aligner.ref_period_s / 4)
            self._enqueue(self.aligner.poll())

    async def estimate_loop(self) -> None:
        svc, counters = self.svc, self.svc.counters
        subject = subjects.STATE.format(grid=self.grid)
        headers = {INSTANCE_HEADER: svc.instance}
        while True:
            await self.wake.wait()
            self.wake.clear()
            if self.topology is not None:
                closed, self.topology = self.topology, None
                await asyncio.to_thread(self.estimator.set_topology, closed)
                self.writer.expect(sensors=_sensor_names(self.estimator), sources=self.sources)
                counters["topology_changes"] += 1
                svc.log.info("topology changed; model rebuilt", extra={"grid": self.grid})
            while self.queue:
                snap = self.queue.popleft()
                if self._inline:
                    est = self.estimator.estimate(snap)
                else:
                    est = await asyncio.to_thread(self.estimator.estimate, snap)
                self._inline = est.solve_ms < INLINE_MS  # as the last one went
                if not (self.active and self.may_publish()):
                    # the lease ran out meanwhile (withheld), or the grid was given up
                    counters["estimates_withheld" if self.active else "estimates_given_up"] += 1
                    continue
                data = await self._encode(est)
                if data is None:
                    continue
                size = refuse_oversize(svc.nc, subject, data, headers, counters=counters)
                if size or self._oversize_said:
                    await self._oversize(size, "estimate")
                if size:
                    continue
                await svc.nc.publish(subject, data, headers=headers)
                counters[f"estimates_{est.status}"] += 1
                counters["bad_data_removed"] += len(est.bad_data)
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
                        svc.log.warning(
                            "KV put failed", extra={"grid": self.grid, "error": str(exc)}
                        )

    async def _encode(self, est: StateEstimate) -> bytes | None:
        """The estimate's message; its layout goes to KV first when new (None: it could not,
        the estimate is withheld, a later one tries again)."""
        msg, _ = self.writer.encode(est)
        layout = self.writer.layout
        if layout is None or layout.id == self._stored_layout or await self._store_layout(layout):
            return encode(msg)
        self.svc.counters["estimates_withheld_layout"] += 1
        return None

    async def _store_layout(self, layout: EstimateLayout) -> bool:
        svc = self.svc
        data = encode_layout(layout)
        subject = subjects.STATE_LAYOUT.format(grid=self.grid)
        size = refuse_oversize(svc.nc, subject, data, counters=svc.counters)
        if size:
            await self._oversize(size, "estimate layout")
            return False
        try:
            await self.kv.put(layout_key(layout.grid, layout.id), data)
        except (nats.errors.Error, TimeoutError) as exc:  # a broker restart: the next one retries
            svc.counters["layout_put_failures"] += 1
            svc.log.warning("layout put failed", extra={"grid": self.grid, "error": str(exc)})
            return False
        self._stored_layout = layout.id
        svc.counters["layouts_written"] += 1
        svc.log.info(
            "estimate layout written",
            extra={
                "grid": self.grid,
                "layout": layout.id,
                "bytes": len(data),
                "buses": len(layout.bus_id),
                "branches": len(layout.branch_id),
                "sensors": len(layout.sensor),
            },
        )
        await svc.nc.publish(subject, data)
        return True

    async def _oversize(self, size: int, what: str) -> None:
        """An estimate (or layout) the broker would refuse is not sent: the operator's view of
        the grid stops, an alarmable state. Report it (not_observable: the control room cannot
        observe the grid) until estimates fit again; ``size`` 0 clears it."""
        now = time.monotonic()
        active = size > 0
        if active and self._oversize_said and now - self._oversize_said < CONDITION_REPEAT_S:
            return
        self._oversize_said = now if active else 0.0
        limit = self.svc.nc.max_payload
        message = (
            f"state estimates of {self.grid} are not published: the {what} takes {size} bytes, "
            f"more than the broker's limit of {limit}"
            if active
            else f"state estimates of {self.grid} fit the broker's limit again"
        )
        condition = Condition(
            grid=self.grid,
            kind=AlarmKind.NOT_OBSERVABLE,
            mrid=self.svc.name,
            active=active,
            t_ns=time.time_ns(),
            severity=Severity.CRITICAL,
            value=float(size),
            limit=float(limit),
            message=message,
            reporter=self.svc.name,
        )
        await self.svc.publish(
            subjects.CONDITION.format(grid=self.grid, source=self.svc.name), condition
        )


def _sensor_names(estimator: Estimator) -> list[str]:
    """The measured (not pseudo) sensors whose residuals an estimate may report."""
    table = estimator.sensors
    return table.names[: len(table.v_keys) + table.n_real_p]


class StateEstimationService(Service):
    name = "state_estimation"

    @property
    def shared(self) -> bool:
        return self.grid == SHARED

    @property
    def heartbeat_key(self) -> str:
        return f"{self.name}.{self.instance}" if self.shared else self.name

    async def setup(self) -> None:
        self.runners: dict[str, GridEstimation] = {}
        self.gauge = LoadGauge()  # how far behind: snapshots skipped, the loop late
        if self.shared:
            await self._setup_shared()
            return
        runner = self.runners[self.grid] = GridEstimation(self, self.grid, info=self.info)
        pkg = await distribution.wait_for(
            self.nc, self.grid, wait_s=self.config.model_wait_s, log=self.log
        )
        await runner.start(pkg)
        self.spawn(runner.poll(), name="aligner")
        self.spawn(runner.estimate_loop(), name="estimate")

    # -- sharing the grids with the other instances (gridpilot.core.sharing) -------------------
    async def _setup_shared(self) -> None:
        loop = asyncio.get_running_loop()

        def on_event(event: str, error: BaseException | None) -> None:  # on the lease thread
            loop.call_soon_threadsafe(self._on_bus_event, event, error)

        async def connect() -> Client:  # the lease thread's own connection, same identity
            return await bus.connect(
                self.config.nats_url,
                user=self.config.user,
                password=self.config.password,
                name=f"{self.name}-{self.instance}-leases",
                on_event=on_event,
            )

        self.sharing = GridSharing(
            service=self.name,
            instance=self.instance,
            connect=connect,
            on_acquire=self._acquire,
            on_release=self._release,
            lease_prefix=LEASE_PREFIX,
            log=self.log,
            counters=self.counters,
            info=self.info,
            gauge=self.gauge,
            wait_s=self.config.model_wait_s,
        )
        await self.sharing.start()
        self.spawn(self.gauge.watch(), name="loop lag")
        self.spawn(self._reap(), name="reap")

    async def _acquire(self, grid: str) -> None:
        def may_publish() -> bool:
            if self.sharing.holds(grid):
                return True
            if grid not in self.sharing.owned:  # given up: on_release stops the runner next
                runner.active = False
            return False

        info: dict[str, int | float | str] = {}
        runner = GridEstimation(self, grid, info=info, may_publish=may_publish)
        self.runners[grid] = runner
        runner.task = asyncio.ensure_future(runner.run())
        self._show()

    async def _release(self, grid: str) -> None:
        runner = self.runners.pop(grid, None)
        if runner is not None:
            runner.active = False
            await runner.stop()
        self._show()

    async def _reap(self) -> None:
        """Grids whose pipeline failed (a model missing or broken) are left to the others."""
        while True:
            for grid, runner in list(self.runners.items()):
                task = runner.task
                if task is None or not task.done() or task.cancelled():
                    continue
                self.counters["grid_failures"] += 1
                self.log.error("grid failed", extra={"grid": grid, "error": repr(task.exception())})
                self.runners.pop(grid, None)
                self.sharing.failed(grid)
            self._show()
            await asyncio.sleep(TICK_S)

    def _show(self) -> None:
        rates = [r.info.get("estimates_per_s", 0) for r in self.runners.values()]
        self.info["estimates_per_s"] = round(sum(float(r) for r in rates), 2)

    async def teardown(self) -> None:
        if self.shared and hasattr(self, "sharing"):
            await self.sharing.stop()  # hand the grids over now rather than at expiry

    async def heartbeat(self) -> None:
        await super().heartbeat()
        if self.shared and self.state is ServiceState.STOPPING and self._kv_services is not None:
            # a stopped instance leaves no row behind in `gridpilot status`
            with contextlib.suppress(Exception):
                await self._kv_services.delete(self.heartbeat_key)


def main(grid: str | None = None) -> int:
    return StateEstimationService.main(grid=grid)
