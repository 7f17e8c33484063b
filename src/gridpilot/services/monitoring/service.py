"""The monitoring service: owns the alarm table of one grid and publishes every change.

What raises and clears alarms:
- every estimate: voltage and thermal limits, not_observable (limits.py), bad data (baddata.py);
- the field data itself: communication loss of any device (comm.py);
- conditions other services report on gp.<grid>.condition.> (twin diverged, service restarted);
- heartbeats: services that stopped beating; its own broker connection: broker outages
  (health.py).
The table lives in KV gp_alarms (store.py) and survives restarts; acknowledgements come as
requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import msgspec
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from gridpilot.core import bus, subjects
from gridpilot.core.backoff import Backoff
from gridpilot.core.errors import PayloadError
from gridpilot.core.estimates import EstimateReader
from gridpilot.core.schemas import (
    AckRequest,
    Alarm,
    AlarmKind,
    Condition,
    EstimateValues,
    Heartbeat,
    Quality,
    Reply,
)
from gridpilot.core.service import Service
from gridpilot.model import distribution
from gridpilot.services.monitoring.baddata import BadDataWatch
from gridpilot.services.monitoring.comm import CommWatch
from gridpilot.services.monitoring.conditions import ConditionWatch
from gridpilot.services.monitoring.health import BrokerWatch, ServiceWatch, broker_outage
from gridpilot.services.monitoring.limits import EstimateCheck
from gridpilot.services.monitoring.store import OUTAGE_ERRORS, AlarmStore
from gridpilot.services.monitoring.table import LIMIT_KINDS, AlarmTable, Violation

# How often silence is checked. A PMU is lost after 0.3 s (three frames at 10/s); checking
# every 50 ms raises the alarm at most 50 ms after that. A check that runs late because this
# process's event loop was busy (a stall longer than STALL_S) is skipped once: the reports
# that arrived meanwhile wait in the socket and would otherwise look missing.
TICK_S = 0.05
STALL_S = 0.1
# A hub (gridpilot up --leafnodes) sees no measurement messages: the edge's leaf link denies
# gp.*.meas.> and the hub's stream sources them instead. Without any report for this long,
# each estimate stands for its devices: those not in its missing_sources delivered data.
REPORTS_QUIET_S = 2.0
# Reports waiting to be handled: a burst (thousands of meters read at the quarter hour on
# mvlv_rural) queues the PMU frames behind it. Silence is not judged on a backlog this long.
BACKLOG_MSGS = 50
_INVALID = int(Quality.INVALID)
# The kinds monitoring's own detectors raise and clear; every other kind comes from conditions.
OWN_KINDS = LIMIT_KINDS | {
    AlarmKind.BAD_DATA,
    AlarmKind.COMM_LOSS,
    AlarmKind.SERVICE_DOWN,
    AlarmKind.BROKER_OUTAGE,
}


class _Quality(msgspec.Struct):
    quality: int = 0


class _Report(msgspec.Struct):
    """What monitoring reads of a MeasurementSet: who sent it and whether any value is valid
    (decoding only these fields keeps thousands of meter readings cheap)."""

    source: str
    measurements: list[_Quality]


class MonitoringService(Service):
    name = "monitoring"

    async def setup(self) -> None:
        pkg = await distribution.wait_for(
            self.nc, self.grid, wait_s=self.config.model_wait_s, log=self.log
        )
        now = time.monotonic()
        self.estimates = EstimateCheck(pkg.model, started=now)
        self.comm = CommWatch(pkg.placement, speed=self.config.speed, now=now)
        self.bad_data = BadDataWatch()
        self.services = ServiceWatch(self.grid, me=self.name)
        self.store = AlarmStore(await self._bucket(), self.grid, log=self.log)
        stored = await self.store.load()
        self.table = AlarmTable(self.grid, stored)
        self.conditions = ConditionWatch()
        self._dirty = asyncio.Event()
        adopted = self._adopt(now)
        self.broker = BrokerWatch(bus.stats(self.nc).disconnects, now)
        self._last_report = float("-inf")  # no report yet
        self.info["active_alarms"] = len(self.table.alarms)
        self.log.info("alarm table loaded", extra={"active": len(stored)})
        g = self.grid
        self.reader = EstimateReader(self.nc)
        await self.subscribe(subjects.STATE.format(grid=g), EstimateValues, self.on_state)
        await self.subscribe(subjects.ALARM_ACK.format(grid=g), AckRequest, self.on_ack)
        self._reports = await self.subscribe(
            subjects.MEAS.format(grid=g, source=">"), _Report, self.on_report
        )
        await self.subscribe(
            subjects.CONDITION.format(grid=g, source="*"), Condition, self.on_condition
        )
        await self.subscribe(subjects.HEARTBEAT.wildcard(), Heartbeat, self.on_heartbeat)
        self.spawn(self._checks(), name="checks")
        self.spawn(self._persist(), name="persist")
        await self._publish(adopted)

    def _adopt(self, now: float) -> list[Alarm]:
        """Hand the raised alarms of the stored table to the detectors that clear them; the
        ones cleared at once (a lost device no longer in the placement: nothing would)."""
        changed = []
        lost = {a.mrid for a in self.table.raised(AlarmKind.COMM_LOSS)}
        gone = lost - set(self.comm.devices)
        for device in gone:
            message = f"{device} is no longer in the placement"
            cleared = self.table.clear(
                f"{AlarmKind.COMM_LOSS}:{device}", time.time_ns(), message=message
            )
            if cleared is not None:
                changed.append(cleared)
        self.comm.adopt_lost(lost - gone)
        self.bad_data.adopt_raised({a.mrid for a in self.table.raised(AlarmKind.BAD_DATA)})
        self.services.adopt_down({a.mrid for a in self.table.raised(AlarmKind.SERVICE_DOWN)})
        reported = {a.id for a in self.table.alarms.values() if a.kind not in OWN_KINDS}
        self.conditions.adopt(reported & self.table.raised_ids(), now)
        return changed

    async def _bucket(self) -> KeyValue:
        """KV gp_alarms; retried while the broker does not answer (not when it is missing)."""
        backoff = Backoff(0.2, 5.0, names=("min_s", "max_s"))
        while True:
            try:
                return await self.nc.jetstream().key_value(subjects.ALARMS_BUCKET)
            except nats.js.errors.BucketNotFoundError:
                raise
            except OUTAGE_ERRORS as exc:
                wait = backoff.next()
                self.log.warning(
                    "KV gp_alarms not reachable; retrying",
                    extra={"error": repr(exc), "retry_in_s": wait},
                )
                await asyncio.sleep(wait)

    # -- inputs ---------------------------------------------------------------------------------

    async def on_state(self, values: EstimateValues, msg: Msg) -> None:
        try:
            est = await self.reader.expand(values)
        except PayloadError as exc:  # its layout unknown, or values that do not fit it
            self._drop(msg.subject, str(exc))
            return
        self.counters["estimates_checked"] += 1
        now = time.monotonic()
        changed = self.estimates.apply(est, self.table, now)
        if now - self._last_report > REPORTS_QUIET_S:  # no measurements here: a hub
            self.counters["estimates_as_reports"] += 1
            for back in self.comm.heard_all_but(set(est.missing_sources), now):
                changed += self._back(back)
        to_raise, to_clear = self.bad_data.update(est)
        changed += self._activate(to_raise, est.t_ns)
        for alarm_id, message in to_clear:
            cleared = self.table.clear(alarm_id, est.t_ns, message=message)
            if cleared is not None:
                changed.append(cleared)
        await self._publish(changed)

    async def on_report(self, report: _Report, _msg: Msg) -> None:
        valid = any(not m.quality & _INVALID for m in report.measurements)
        now = time.monotonic()
        try:
            back = self.comm.heard(report.source, now, valid=valid)
        except KeyError:
            self.counters["reports_unknown_source"] += 1
            return
        self._last_report = now
        await self._publish(self._back(back))

    def _back(self, back: tuple[str, str] | None) -> list[Alarm]:
        """Clear the alarm of a device or service that is back: (alarm id, what to say)."""
        if back is None:
            return []
        alarm_id, message = back
        cleared = self.table.clear(alarm_id, time.time_ns(), message=message)
        return [] if cleared is None else [cleared]

    async def on_condition(self, cond: Condition, _msg: Msg) -> None:
        if cond.grid != self.grid:
            self.counters["conditions_other_grid"] += 1
            return
        self.counters["conditions"] += 1
        violation = self.conditions.report(cond, time.monotonic())
        if cond.active:
            changed = self.table.activate(violation, cond.t_ns)
        else:
            changed = self.table.clear(violation.id, cond.t_ns, message=cond.message)
        if changed is not None:
            await self._publish([changed])

    async def on_heartbeat(self, hb: Heartbeat, _msg: Msg) -> None:
        await self._publish(self._back(self.services.beat(hb, time.monotonic())))

    async def on_ack(self, req: AckRequest, msg: Msg) -> None:
        try:
            alarm = self.table.acknowledge(req.alarm_id, req.user, time.time_ns())
        except KeyError:
            await self.reply(msg, Reply(ok=False, error=f"no active alarm {req.alarm_id!r}"))
            return
        await self._publish([alarm])
        await self.reply(msg, Reply(ok=True))

    # -- periodic checks ------------------------------------------------------------------------

    async def _checks(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            due += TICK_S
            await asyncio.sleep(max(0.0, due - loop.time()))
            late = loop.time() - due
            if late > TICK_S:
                due = loop.time()  # do not run the missed ticks back to back
            await self._check(stalled=late > STALL_S)

    async def _check(self, *, stalled: bool = False) -> None:
        now = time.monotonic()
        connected = self.nc.is_connected
        outage = self.broker.check(connected, bus.stats(self.nc).disconnects, now)
        if not connected:
            return  # nothing arrives and nothing can be said: wait for the broker
        t_ns = time.time_ns()
        changed: list[Alarm] = []
        if outage is not None:
            start, end = outage
            # Whatever went silent during the outage went silent for us: start again.
            self.comm.excuse(end)
            self.services.excuse(end)
            at = self.nc.connected_url
            where = f"{at.hostname}:{at.port}" if at is not None else "nats"  # no credentials
            violation = broker_outage(end - start, where)
            changed += self._activate([violation], t_ns)
            cleared = self.table.clear(violation.id, t_ns)
            if cleared is not None:
                changed.append(cleared)
            self.counters["broker_outages"] += 1
        elif stalled:
            self.counters["checks_deferred"] += 1
        else:
            if self._reports.pending_msgs > BACKLOG_MSGS:
                self.counters["comm_checks_deferred_backlog"] += 1
            else:
                changed += self._activate(self.comm.check(now), t_ns)
            changed += self._activate(self.services.check(now), t_ns)
            for alarm_id, why in self.conditions.expired(now):
                cleared = self.table.clear(alarm_id, t_ns, message=why)
                if cleared is not None:
                    changed.append(cleared)
        self.info["devices_lost"] = len(self.comm.lost)
        self.info["services_down"] = len(self.services.down)
        await self._publish(changed)

    # -- outputs --------------------------------------------------------------------------------

    def _activate(self, violations: list[Violation], t_ns: int) -> list[Alarm]:
        out = []
        for v in violations:
            alarm = self.table.activate(v, t_ns)
            if alarm is not None:
                out.append(alarm)
        return out

    async def _publish(self, changed: list[Alarm]) -> None:
        if not changed:
            return
        for alarm in changed:
            self.counters[f"alarms_{alarm.state}"] += 1
            try:
                await self.publish(subjects.ALARM.format(grid=self.grid), alarm)
            except OUTAGE_ERRORS as exc:  # the table in KV still gets it
                self.counters["alarm_publish_failures"] += 1
                self.log.warning("alarm not published", extra={"error": repr(exc)})
            self.log.info(
                "alarm",
                extra={
                    "alarm": alarm.id,
                    "state": alarm.state.value,
                    "severity": alarm.severity.value,
                    "acknowledged": alarm.acknowledged,
                    "text": alarm.message,
                },
            )
        self.info["active_alarms"] = len(self.table.alarms)
        self._dirty.set()

    async def _persist(self) -> None:
        """Write the table after changes; through an outage, again until it is taken."""
        backoff = Backoff(0.2, 5.0, names=("min_s", "max_s"))
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if await self.store.save(list(self.table.alarms.values())):
                backoff.reset()
                continue
            self.counters["alarm_table_write_failures"] += 1
            self._dirty.set()
            await asyncio.sleep(backoff.next())

    async def teardown(self) -> None:
        dirty = getattr(self, "_dirty", None)  # None: setup did not get that far
        if dirty is not None and dirty.is_set():  # a last change not written yet
            with contextlib.suppress(*OUTAGE_ERRORS):
                await asyncio.wait_for(self.store.save(list(self.table.alarms.values())), 2.0)


def main(grid: str | None = None) -> int:
    return MonitoringService.main(grid=grid)
