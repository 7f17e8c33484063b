"""How every gateway client keeps its link to a field device: retry with doubling back-off.

``Backoff`` is the arithmetic (waits double from ``min_s`` up to ``max_s``, and start again from
``min_s`` once a connection worked); ``keep_connected`` is the loop the stream clients (the PDC
client, the IEC 104 master) run as their task: one session at a time, the reason it ended
reported, then a wait. A bug inside a session is logged and retried like a lost link, so one
bad frame handler cannot end the gateway's connection to a device for good.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import NoReturn

log = logging.getLogger(__name__)


class Backoff:
    def __init__(self, min_s: float, max_s: float, *, names: tuple[str, str]) -> None:
        if not 0 < min_s <= max_s:
            raise ValueError(f"need 0 < {names[0]} <= {names[1]}, not {min_s}, {max_s}")
        self.min_s = min_s
        self.max_s = max_s
        self._next_s = min_s

    def after_failures(self, failures: int) -> float:
        """The wait after ``failures`` consecutive failures (the first waits ``min_s``)."""
        return min(self.min_s * 2.0 ** max(failures - 1, 0), self.max_s)

    def next(self) -> float:
        """The wait before the next attempt; each call doubles the one after."""
        delay = self._next_s
        self._next_s = min(delay * 2, self.max_s)
        return delay

    def reset(self) -> None:
        self._next_s = self.min_s


def describe(error: BaseException) -> str:
    """A one-line reason for a failed connection: the type, and the message if it has one."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


async def keep_connected(
    session: Callable[[], Awaitable[str]],
    *,
    backoff: Backoff,
    worked: Callable[[], bool],
    on_down: Callable[[str, float], None],
    name: str,
) -> NoReturn:
    """Run ``session`` (which returns why it ended) again and again until cancelled.

    After each session, ``worked()`` says whether it got as far as exchanging data (then the
    back-off starts afresh) and ``on_down(reason, retry_in_s)`` is told before the wait.
    """
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
        delay = backoff.next()
        on_down(reason, delay)
        await asyncio.sleep(delay)
