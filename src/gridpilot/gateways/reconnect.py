"""How every gateway client keeps its link to a field device: retry with doubling back-off.

``Backoff`` (in ``gridpilot.core.backoff``) is the arithmetic (waits double from ``min_s`` up
to ``max_s``, and start again from ``min_s`` once a connection worked); ``keep_connected`` is
the loop the stream clients (the PDC client, the IEC 104 master) run as their task: one session
at a time, the reason it ended reported, then a wait. A bug inside a session is logged and
retried like a lost link, so one bad frame handler cannot end the gateway's connection to a
device for good.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import NoReturn

from gridpilot.core.backoff import Backoff

log = logging.getLogger(__name__)


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
