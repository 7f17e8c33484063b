"""How every gateway client keeps its link to a field device: retry with doubling back-off,
capped so that a device that returns is read again within seconds, and quiet while the
platform starts.

``Backoff`` (in ``gridpilot.core.backoff``) is the arithmetic (waits double from ``min_s`` up
to ``max_s``, and start again from ``min_s`` once a connection worked); ``keep_connected`` is
the loop the stream clients (the PDC client, the IEC 104 master) run as their task: one session
at a time, the reason it ended reported, then a wait. A bug inside a session is logged and
retried like a lost link, so one bad frame handler cannot end the gateway's connection to a
device for good.

Gateways usually start before the simulator's (or a site's) devices listen. ``LinkNotices``
says how loud a failure is: a device not reachable yet is "waiting for" (info) during a start-up
grace; a device that was up and is lost, or one still unreachable after the grace, is a warning,
repeated at most every ``REPEAT_WARNING_S`` while it stays down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import NoReturn

from gridpilot.core.backoff import Backoff

log = logging.getLogger(__name__)

# A field link retries after 0.5 s, doubling up to LINK_RETRY_MAX_S: a device that returns is
# read again within 5 s (at most 4 s until the next attempt, then the connect, start-up and
# first data take well under a second on a LAN). 16 s and more left the operator without data
# long after a device was back.
LINK_RETRY_MIN_S = 0.5
LINK_RETRY_MAX_S = 4.0
# How long after a gateway starts a device may be unreachable without a warning: the platform
# starts the simulator and the gateways together, and the twin's devices listen only once it
# has loaded the grid (seconds; tens of seconds on a loaded machine or a large grid).
START_GRACE_S = 60.0
REPEAT_WARNING_S = 60.0  # while a device stays down, a warning this often (info in between)


def describe(error: BaseException) -> str:
    """A one-line reason for a failed connection: the type, and the message if it has one."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class LinkNotices:
    """How loud each failure of one device link is (a logging level).

    Quiet (info once, then debug) while the device has never been reached and the start-up
    grace lasts; a warning when a device that was up is lost, or when the grace ends with the
    device still unreachable; then a warning every ``repeat_s`` while it stays down."""

    def __init__(
        self,
        *,
        grace_s: float = START_GRACE_S,
        repeat_s: float = REPEAT_WARNING_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._grace_until = clock() + grace_s
        self._repeat_s = repeat_s
        self.ever_up = False
        self._down_since: float | None = None
        self._warned_at: float | None = None
        self._said_waiting = False

    def up(self) -> None:
        """The link worked (data flowed): the next failure is a loss."""
        self.ever_up = True
        self._down_since = None
        self._warned_at = None

    def failed(self) -> tuple[int, str]:
        """The level to log this failure at, and what it is: ``waiting`` (never reached yet),
        ``lost`` (the first failure after the link was up) or ``down`` (still)."""
        now = self._clock()
        first = self._down_since is None
        if first:
            self._down_since = now
        if not self.ever_up and now < self._grace_until:
            level = logging.DEBUG if self._said_waiting else logging.INFO
            self._said_waiting = True
            return level, "waiting"
        if self._warned_at is None or now - self._warned_at >= self._repeat_s:
            self._warned_at = now
            level = logging.WARNING
        else:
            level = logging.DEBUG
        return level, "lost" if first and self.ever_up else "down"

    def down_for_s(self) -> float:
        return 0.0 if self._down_since is None else self._clock() - self._down_since


async def keep_connected(
    session: Callable[[], Awaitable[str]],
    *,
    backoff: Backoff,
    worked: Callable[[], bool],
    on_down: Callable[[str, float], None],
    name: str,
    notices: LinkNotices | None = None,
) -> NoReturn:
    """Run ``session`` (which returns why it ended) again and again until cancelled.

    After each session, ``worked()`` says whether it got as far as exchanging data (then the
    back-off starts afresh) and ``on_down(reason, retry_in_s)`` is told before the wait.
    Each failure is logged here, as loud as ``notices`` (one per link) says.
    """
    notices = notices or LinkNotices()
    while True:
        try:
            reason = await session()
        except (OSError, TimeoutError) as error:
            reason = describe(error)
        except Exception as error:  # a bug must not end the reconnect loop for good
            log.exception("%s: session failed", name)
            reason = f"internal error: {error!r}"
        if worked():
            backoff.reset()
            notices.up()
        delay = backoff.next()
        on_down(reason, delay)
        level, what = notices.failed()
        if what == "waiting":
            log.log(level, "%s: waiting for the device (%s); retrying", name, reason)
        elif what == "lost":
            log.log(level, "%s: link lost (%s); retry in %.1f s", name, reason, delay)
        else:
            down_s = notices.down_for_s()
            log.log(level, "%s: down %.0f s (%s); retry in %.1f s", name, down_s, reason, delay)
        await asyncio.sleep(delay)
