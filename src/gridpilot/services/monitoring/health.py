"""Platform health, free of I/O: services whose heartbeats stopped (``service_down``) and
outages of the broker as monitoring's own connection saw them (``broker_outage``)."""

from __future__ import annotations

from dataclasses import dataclass

from gridpilot.core.schemas import AlarmKind, Heartbeat, ServiceState, Severity
from gridpilot.services.monitoring.table import Violation

# Services beat every second; `gridpilot health` calls a heartbeat older than 5 s unhealthy,
# and so does monitoring. A supervisor restart (a few seconds) stays below it unless it fails.
STALE_S = 5.0
SHARED_GRID = "all"  # the grid a state estimator sharing every grid reports


@dataclass
class _Beat:
    last_alive: float  # monotonic time of the last heartbeat of a live instance
    pid: int
    instance: str


class ServiceWatch:
    """The services of one grid, by name (any live instance keeps a service up)."""

    def __init__(self, grid: str, *, me: str, stale_s: float = STALE_S) -> None:
        self.grid = grid
        self.me = me
        self.stale_s = stale_s
        self.services: dict[str, _Beat] = {}
        self.down: set[str] = set()

    def adopt_down(self, services: set[str]) -> None:
        """Services whose service_down alarm is still raised (a restarted monitoring)."""
        self.down |= services

    def beat(self, hb: Heartbeat, now: float) -> tuple[str, str] | None:
        """A heartbeat; when the service was down, the id of its service_down alarm to clear
        and what to say."""
        if hb.grid not in (self.grid, SHARED_GRID) or hb.service == self.me:
            return None
        if hb.state is ServiceState.STOPPING:
            # Its last beat: it is not alive from now on. A service first heard this way
            # failed in its start (a crash loop never beats running): watch it from now.
            if hb.service not in self.services:
                self.services[hb.service] = _Beat(now, hb.pid, hb.instance)
            return None
        self.services[hb.service] = _Beat(now, hb.pid, hb.instance)
        if hb.service in self.down:
            self.down.discard(hb.service)
            message = f"service {hb.service} beats again (pid {hb.pid}, instance {hb.instance})"
            return f"{AlarmKind.SERVICE_DOWN}:{hb.service}", message
        return None

    def excuse(self, now: float) -> None:
        """Monitoring could not hear (its own broker connection was down): start again."""
        for beat in self.services.values():
            beat.last_alive = max(beat.last_alive, now)

    def check(self, now: float) -> list[Violation]:
        out = []
        for name, beat in self.services.items():
            if name in self.down or now - beat.last_alive <= self.stale_s:
                continue
            self.down.add(name)
            out.append(
                Violation(
                    AlarmKind.SERVICE_DOWN,
                    name,
                    round(now - beat.last_alive, 1),
                    self.stale_s,
                    Severity.CRITICAL,
                    f"service {name} (pid {beat.pid}, instance {beat.instance}) sent no "
                    f"heartbeat for {now - beat.last_alive:.0f} s (limit {self.stale_s:g} s)",
                )
            )
        return out


BROKER = "nats"


class BrokerWatch:
    """Outages of the broker as seen from monitoring's connection: ``check`` is called with
    whether the connection is up now and how many disconnects it has counted so far (a
    disconnect and reconnect between two checks still counts: it started at the last check).
    Returns the outage (start, end) once the connection is back."""

    def __init__(self, disconnects: int, now: float) -> None:
        self.disconnects = disconnects
        self.last_check = now
        self.down_since: float | None = None

    def check(self, connected: bool, disconnects: int, now: float) -> tuple[float, float] | None:
        if disconnects > self.disconnects and self.down_since is None:
            self.down_since = self.last_check
        self.disconnects = disconnects
        if not connected and self.down_since is None:
            self.down_since = self.last_check
        self.last_check = now
        if connected and self.down_since is not None:
            outage = (self.down_since, now)
            self.down_since = None
            return outage
        return None


def broker_outage(duration_s: float, url: str) -> Violation:
    return Violation(
        AlarmKind.BROKER_OUTAGE,
        BROKER,
        round(duration_s, 1),
        0.0,
        Severity.CRITICAL,
        f"the message broker ({url}) was unreachable for {duration_s:.1f} s: field data, "
        "estimates and commands of that time may be missing",
    )
