"""The web service's only window on the platform: the bus.

It keeps what the operator screens show (models, the latest estimate, switch states, alarms,
service heartbeats, the latest report of each device) from subscriptions and KV, fans live
updates out to browser connections, and sends commands, acknowledgements, history queries and
training injections on the operator's behalf. It holds no grid logic of its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from gridpilot.core import operate, subjects
from gridpilot.core import schemas as s
from gridpilot.core.bus import BUS_FAILURES
from gridpilot.core.errors import BusError, GridPilotError, PayloadError
from gridpilot.core.estimates import EstimateReader
from gridpilot.model import distribution
from gridpilot.model.distribution import GridPackage

log = logging.getLogger(__name__)
T = TypeVar("T", bound=msgspec.Struct)

COMMAND_TIMEOUT_S = 15.0
REQUEST_TIMEOUT_S = 10.0
LIVE_ESTIMATES_PER_S = 2.0  # to each browser: the latest estimate, at most this often
# An estimate is stale once no newer one came for this many of its grid's estimate intervals
# (measured here, in wall time: the simulation speed and the placement set the pace), and never
# sooner than STALE_MIN_S: a missed estimate or two is jitter, three is an outage.
STALE_PERIODS = 3.0
STALE_MIN_S = 5.0
MAX_FLAGGED = 2000  # measurements of doubtful quality sent to a browser at most
# Outages of the bus or the broker: what a request can fail with besides an answer.
BUS_ERRORS = BUS_FAILURES


class Unavailable(GridPilotError):
    """The platform did not answer (a service down, the broker unreachable): HTTP 503."""


class NotFound(GridPilotError):
    """An unknown grid, switch, alarm...: HTTP 404."""


@dataclass(eq=False)  # each connection is its own client (hashable by identity)
class LiveClient:
    """One browser connection of one grid: a small queue, and the newest estimate waiting."""

    grid: str
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=lambda: asyncio.Queue(256))
    estimate: dict[str, Any] | None = None
    layout: str = ""  # the estimate layout whose ids this browser was sent
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: int = 0

    def send(self, event: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1  # a stalled browser loses events, never the platform
        self.wake.set()


@dataclass(frozen=True, slots=True)
class Freshness:
    """How old a grid's latest estimate is, as this service received it (wall time), and
    whether that is too old to show as live. ``age_s`` is None when no estimate arrived live
    (none yet, or only the one stored in KV when this service started: its age is unknown, so
    it is stale until a live one comes)."""

    age_s: float | None
    stale: bool
    stale_after_s: float

    def to_dict(self) -> dict[str, Any]:
        age = None if self.age_s is None else round(self.age_s, 1)
        return {"age_s": age, "stale": self.stale, "stale_after_s": self.stale_after_s}


ID_KEYS = ("bus_id", "branch_id")  # sent to a browser once per layout


def compact_estimate(est: s.StateEstimate, *, layout: str = "") -> dict[str, Any]:
    """What the diagram needs of an estimate (the full one is at GET .../estimate).

    With ``layout`` (the id of the estimate's EstimateLayout) the ids may be left out of the
    next estimates of the same layout: the browser keeps them from this one."""
    out: dict[str, Any] = {
        "type": "estimate",
        "layout": layout,
        "t_ns": est.t_ns,
        "status": est.status,
        "message": est.message,
        "n_measurements": est.n_measurements,
        "missing_sources": est.missing_sources,
        "bad_data": [b.sensor for b in est.bad_data],
    }
    if est.buses is not None:
        out["bus_id"] = est.buses.id
        out["v_pu"] = [round(v, 5) for v in est.buses.v_pu]
    if est.branches is not None:
        out["branch_id"] = est.branches.id
        out["loading_pct"] = [round(v, 2) for v in est.branches.loading_pct]
        out["p_from_mw"] = [round(v, 4) for v in est.branches.p_from_mw]
    return out


class Bridge:
    def __init__(self, nc: Client, *, service: str = "web") -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.service = service
        self.packages: dict[str, GridPackage] = {}
        self.estimates: dict[str, s.StateEstimate] = {}
        self.reader = EstimateReader(nc)
        self.switches: dict[str, dict[str, bool]] = {}
        self.heartbeats: dict[str, s.Heartbeat] = {}
        self.devices: dict[str, dict[str, s.MeasurementSet]] = {}
        # grid -> (device, mrid, measurand, terminal) -> quality bits, of the measurements whose
        # latest report was not good (schemas.Quality): what the diagram marks as suspect
        self.flagged: dict[str, dict[tuple[str, str, str, str], int]] = {}
        self.clients: set[LiveClient] = set()
        self.received_s: dict[str, float] = {}  # grid -> wall time its latest estimate came
        self.interval_s: dict[str, float] = {}  # grid -> smoothed wall time between estimates
        self._results: dict[str, asyncio.Future[s.CommandResult]] = {}
        self.counters: dict[str, int] = {"dropped_bad_payload": 0}

    async def start(self) -> None:
        subs: list[tuple[str, Callable[[Msg], Awaitable[None]]]] = [
            (subjects.STATE.wildcard(), self._on_state),
            (subjects.TOPOLOGY.wildcard(), self._on_topology),
            (subjects.ALARM.wildcard(), self._on_alarm),
            (subjects.COMMAND_RESULT.wildcard(), self._on_result),
            (subjects.HEARTBEAT.wildcard(), self._on_heartbeat),
            (subjects.MEAS.wildcard(), self._on_meas),
        ]
        for subject, cb in subs:
            await self.nc.subscribe(subject, cb=self._guarded(cb))

    def _guarded(self, cb: Callable[[Msg], Awaitable[None]]) -> Callable[[Msg], Awaitable[None]]:
        async def run(msg: Msg) -> None:
            try:
                await cb(msg)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                self.counters["dropped_bad_payload"] += 1
                log.warning(
                    "dropped bad message", extra={"subject": msg.subject, "reason": str(exc)[:200]}
                )

        return run

    # -- what the screens read --------------------------------------------------------------
    async def grids(self) -> list[str]:
        try:
            store = await self.js.object_store(distribution.BUCKET)
            names = [o.name or "" for o in await store.list(ignore_deletes=True)]
        except nats.js.errors.NotFoundError:  # no store yet, or an empty one
            names = []
        except BUS_ERRORS as exc:
            raise Unavailable(f"cannot list the grids: {exc!r}") from None
        return sorted(n.removesuffix(".json") for n in names if n.endswith(".json"))

    async def package(self, grid: str) -> GridPackage:
        if grid not in self.packages:
            if grid not in await self.grids():
                raise NotFound(f"unknown grid {grid!r}")
            self.packages[grid] = await distribution.fetch(self.nc, grid)
        return self.packages[grid]

    def switch_states(self, pkg: GridPackage) -> dict[str, bool]:
        states = {sw.id: sw.closed for sw in pkg.model.switches}
        states.update(self.switches.get(pkg.model.name, {}))
        return states

    async def estimate(self, grid: str) -> s.StateEstimate | None:
        await self.package(grid)
        if grid in self.estimates:
            return self.estimates[grid]
        try:
            kv = await self.js.key_value(subjects.STATE_BUCKET)
            entry = await kv.get(grid)
            est = await self.reader.read(entry.value or b"")
        except (nats.js.errors.BucketNotFoundError, nats.js.errors.KeyNotFoundError):
            return None  # no estimate yet
        except (PayloadError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise Unavailable(f"the latest estimate of {grid} cannot be read: {exc}") from None
        except BUS_ERRORS as exc:
            raise Unavailable(f"cannot read the latest estimate of {grid}: {exc!r}") from None
        self.estimates[grid] = est
        return est

    def freshness(self, grid: str) -> Freshness:
        """The age of ``grid``'s latest estimate and whether it is stale (see Freshness)."""
        stale_after = max(STALE_MIN_S, STALE_PERIODS * self.interval_s.get(grid, 0.0))
        received = self.received_s.get(grid)
        if received is None:
            return Freshness(age_s=None, stale=True, stale_after_s=stale_after)
        age = max(0.0, time.time() - received)
        return Freshness(age_s=age, stale=age > stale_after, stale_after_s=stale_after)

    def _received(self, grid: str) -> None:
        now = time.time()
        last = self.received_s.get(grid)
        # the pace is learnt from the gaps between estimates, but not from an outage's gap:
        # that would make the next outage look live for longer
        if last is not None and now - last <= self.freshness(grid).stale_after_s:
            gap = now - last
            smoothed = self.interval_s.get(grid, gap)
            self.interval_s[grid] = smoothed + 0.2 * (gap - smoothed)
        self.received_s[grid] = now

    async def alarms(self, grid: str) -> list[s.Alarm]:
        await self.package(grid)
        try:
            kv = await self.js.key_value(subjects.ALARMS_BUCKET)
            entry = await kv.get(grid)
        except (nats.js.errors.BucketNotFoundError, nats.js.errors.KeyNotFoundError):
            return []  # no alarm table yet: no alarm
        except BUS_ERRORS as exc:  # an outage is not an empty alarm list
            raise Unavailable(f"cannot read the alarms of {grid}: {exc!r}") from None
        return msgspec.json.decode(entry.value or b"[]", type=list[s.Alarm])

    # -- what the operator does -------------------------------------------------------------
    async def command(self, cmd: s.Command) -> s.CommandResult:
        """Store the command in GP_CMD (the executor picks it up) and wait for its result,
        with the twin's report of what it did to the grid (core.operate, as the CLI)."""
        try:
            return await operate.execute(self.nc, cmd, timeout_s=COMMAND_TIMEOUT_S)
        except BusError as exc:
            raise Unavailable(str(exc)) from None

    async def request(
        self, spec: subjects.SubjectSpec, grid: str, req: msgspec.Struct, reply: type[T]
    ) -> T:
        subject = spec.format(grid=grid)
        try:
            msg = await self.nc.request(subject, s.encode(req), timeout=REQUEST_TIMEOUT_S)
        except BUS_ERRORS as exc:  # no responders, timeout, broker gone
            who = " or ".join(spec.subscribers)
            raise Unavailable(
                f"no answer on {subject}: is {who} running for grid {grid}? ({exc!r})"
            ) from None
        return s.decode(msg.data, reply)

    async def audit(self, record: s.AuditRecord) -> None:
        try:
            await operate.write_audit(self.nc, record)
        except BusError as exc:  # an action must not be lost silently from the trail
            raise Unavailable(str(exc)) from None

    def new_command_id(self) -> str:
        return f"web-{uuid.uuid4().hex[:12]}"

    # -- live -------------------------------------------------------------------------------
    def connect(self, grid: str) -> LiveClient:
        client = LiveClient(grid=grid)
        self.clients.add(client)
        return client

    def disconnect(self, client: LiveClient) -> None:
        self.clients.discard(client)

    def _fan_out(self, grid: str, event: dict[str, Any]) -> None:
        for c in self.clients:
            if c.grid == grid:
                c.send(event)

    async def _on_state(self, msg: Msg) -> None:
        values = s.decode(msg.data, s.EstimateValues)
        try:
            est = await self.reader.expand(values)
        except PayloadError as exc:  # its layout unknown, or values that do not fit it
            self.counters["dropped_bad_payload"] += 1
            log.warning("dropped estimate", extra={"subject": msg.subject, "reason": str(exc)})
            return
        self.estimates[est.grid] = est
        self._received(est.grid)
        full = compact_estimate(est, layout=values.layout)
        lean = {k: v for k, v in full.items() if k not in ID_KEYS}
        with_ids = len(lean) < len(full)
        for c in self.clients:
            if c.grid == est.grid:
                # latest wins, the sender paces it; the ids go with the first estimate of a
                # layout new to the browser, and with any that replaces one not yet sent
                unsent_ids = c.estimate is not None and "bus_id" in c.estimate
                c.estimate = full if c.layout != values.layout or unsent_ids else lean
                if with_ids:
                    c.layout = values.layout
                c.wake.set()

    async def _on_topology(self, msg: Msg) -> None:
        topo = s.decode(msg.data, s.SwitchState)
        self.switches[topo.grid] = dict(topo.closed)
        self._fan_out(topo.grid, {"type": "topology", "t_ns": topo.t_ns, "closed": topo.closed})

    async def _on_alarm(self, msg: Msg) -> None:
        alarm = s.decode(msg.data, s.Alarm)
        self._fan_out(alarm.grid, {"type": "alarm", "alarm": msgspec.to_builtins(alarm)})

    async def _on_result(self, msg: Msg) -> None:
        result = s.decode(msg.data, s.CommandResult)
        future = self._results.get(result.command_id)
        if future is not None and not future.done():
            future.set_result(result)
        self._fan_out(
            result.grid, {"type": "command_result", "result": msgspec.to_builtins(result)}
        )

    async def _on_heartbeat(self, msg: Msg) -> None:
        hb = s.decode(msg.data, s.Heartbeat)
        self.heartbeats[hb.service] = hb

    async def _on_meas(self, msg: Msg) -> None:
        mset = s.decode(msg.data, s.MeasurementSet)
        self.devices.setdefault(mset.grid, {})[mset.source] = mset
        flagged = self.flagged.setdefault(mset.grid, {})
        for m in mset.measurements:
            key = (mset.source, m.mrid, m.measurand, m.terminal)
            if m.quality:
                flagged[key] = m.quality
            elif flagged:
                flagged.pop(key, None)

    def flagged_measurements(self, grid: str) -> list[dict[str, Any]]:
        """The measurements of ``grid`` whose latest report had a quality other than good
        (invalid, questionable, substituted, old data...), at most MAX_FLAGGED."""
        out = []
        for (source, mrid, measurand, terminal), quality in self.flagged.get(grid, {}).items():
            out.append(
                {"source": source, "mrid": mrid, "measurand": measurand, "terminal": terminal,
                 "quality": quality}
            )  # fmt: skip
            if len(out) >= MAX_FLAGGED:
                break
        return out

    def services(self) -> list[dict[str, Any]]:
        now = time.time_ns()
        return [
            {
                "service": hb.service,
                "grid": hb.grid,
                "state": hb.state,
                "heartbeat_age_s": round((now - hb.t_ns) / 1e9, 1),
                "uptime_s": hb.uptime_s,
                "pid": hb.pid,
                "info": hb.info,
                "counters": hb.counters,
            }
            for hb in sorted(self.heartbeats.values(), key=lambda h: h.service)
        ]
