"""The supervisor's children: one service process each, restarted with back-off when it
exits and killed when its heartbeat goes stale (liveness, as a Kubernetes probe would), each
restart reported as a ``service_restarted`` condition until the new process beats."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gridpilot.core.schemas import AlarmKind, Condition, Heartbeat, Severity

log = logging.getLogger("gridpilot.supervisor")

BACKOFF_FIRST_S = 0.25
BACKOFF_MAX_S = 10.0
STABLE_AFTER_S = 30.0  # a child that ran this long starts its back-off afresh
# Liveness. Services beat every second once set up. A child that has beaten and is then silent
# for STALE_AFTER_S (15 missed beats; a Kubernetes probe's usual 3 failures x 5 s) is hung.
# Its first beat may take STARTUP_GRACE_S: Python and the imports take up to ~10 s on a loaded
# 2-core machine, and setting up a large grid (mvlv_rural, 5,479 buses: model, estimator,
# device registry) tens of seconds more. Ages count only while the supervisor's own connection
# is up, and from when it last came up: after a broker outage every child needs a moment to
# reconnect.
STALE_AFTER_S = 15.0
STARTUP_GRACE_S = 120.0
CONDITION_SOURCE = "supervisor"  # gp.<grid>.condition.supervisor


@dataclass
class Child:
    name: str
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    backoff_s: float = BACKOFF_FIRST_S
    started_at: float = 0.0
    start_at: float = 0.0
    last_exit: int | None = None
    heartbeat: Heartbeat | None = None
    heartbeat_at: float = field(default=0.0)
    kill_reason: str = ""  # why the supervisor killed it (a stale heartbeat)
    kill_silent_s: tuple[float, float] = (0.0, 0.0)  # then: silent for, allowed
    # the service_restarted condition, while active (until the new process beats)
    condition: Condition | None = None
    condition_sent_at: float = 0.0

    def start(self, grid: str) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        out = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gridpilot", "run", self.name, "--grid", grid],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the supervisor, which stops children
        )
        out.close()
        self.started_at = time.monotonic()
        self.heartbeat = None
        self.heartbeat_at = 0.0
        self.kill_reason = ""
        log.info("started", extra={"child": self.name, "pid": self.proc.pid})

    def silence(
        self, now: float, bus_up_since: float, *, stale_after_s: float, startup_grace_s: float
    ) -> tuple[float, float] | None:
        """(how long it has been silent, how long it may be) when that is too long, else
        None. Silence counts from its last beat, its start or the bus's return, the latest."""
        if self.proc is None:
            return None
        allowed = startup_grace_s if self.heartbeat is None else stale_after_s
        silent = now - max(self.heartbeat_at, self.started_at, bus_up_since)
        return (silent, allowed) if silent > allowed else None

    def kill(self, silent_s: float, allowed_s: float) -> None:
        """SIGKILL it for a stale heartbeat (a stopped or hung process handles nothing
        else); :meth:`exited` then reports why."""
        if self.proc is None:
            return
        self.kill_silent_s = (silent_s, allowed_s)
        if self.heartbeat is None:
            self.kill_reason = f"no heartbeat {silent_s:.0f} s after its start"
        else:
            self.kill_reason = f"heartbeat {silent_s:.0f} s old (limit {allowed_s:.0f} s)"
        log.warning(
            "child unresponsive; killing it",
            extra={"child": self.name, "pid": self.proc.pid, "reason": self.kill_reason},
        )
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()

    def exited(self, now: float, *, grid: str) -> None:
        """Its process ended: when to start it again, and the condition that reports it."""
        assert self.proc is not None
        self.last_exit = self.proc.returncode
        if self.kill_reason:
            silent, allowed = self.kill_silent_s
            why = f"was unresponsive: {self.kill_reason}"
            self._restarted(grid, why, round(silent, 1), allowed)
        else:
            self._restarted(grid, f"exited with code {self.last_exit}", float(self.last_exit))
        ran = now - self.started_at
        self.backoff_s = (
            BACKOFF_FIRST_S
            if ran >= STABLE_AFTER_S
            else min(BACKOFF_MAX_S, self.backoff_s * 2 if self.restarts else self.backoff_s)
        )
        self.start_at = now + self.backoff_s
        self.proc = None
        log.warning(
            "child exited",
            extra={"child": self.name, "code": self.last_exit, "restart_in_s": self.backoff_s},
        )

    def _restarted(self, grid: str, why: str, value: float, limit: float = 0.0) -> None:
        """An active service_restarted condition; ``value`` is its exit code, or how long it
        was silent (``limit``: how long it could be)."""
        self.condition = Condition(
            grid=grid,
            kind=AlarmKind.SERVICE_RESTARTED,
            mrid=self.name,
            active=True,
            t_ns=time.time_ns(),
            severity=Severity.WARNING,
            value=value,
            limit=limit,
            message=f"service {self.name} {why}; restarted (restart {self.restarts + 1})",
            reporter=CONDITION_SOURCE,
        )
        self.condition_sent_at = 0.0  # due now

    def row(self, now: float) -> dict[str, Any]:
        """What ``gridpilot up`` shows of it."""
        hb = self.heartbeat
        return {
            "service": self.name,
            "pid": self.proc.pid if self.proc else None,
            "state": hb.state.value
            if hb and self.proc
            else ("restarting" if not self.proc else "starting"),
            "heartbeat_age_s": round(now - self.heartbeat_at, 1) if hb else None,
            "restarts": self.restarts,
            "info": dict(hb.info) if hb else {},
        }
