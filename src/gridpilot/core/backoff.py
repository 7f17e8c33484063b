"""Capped exponential back-off, shared by whatever retries: the gateways' links to field
devices, the historian's database writes, and a service waiting for its grid model.

Waits double from ``min_s`` up to ``max_s`` and start again from ``min_s`` after a success.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")
WAIT_MIN_S = 0.25  # the first retry of something not there yet; doubling up to
WAIT_MAX_S = 5.0
SAY_EVERY_S = 30.0  # one "waiting for ..." line this often, not one per retry


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


async def wait_until_there(
    attempt: Callable[[], Awaitable[T]],
    *,
    missing: type[BaseException] | tuple[type[BaseException], ...],
    what: str,
    wait_s: float,
    log: logging.Logger,
    extra: dict[str, Any] | None = None,
) -> T:
    """``attempt()``, retried with capped exponential back-off while it raises ``missing``
    (something another party creates: the grid model ``gridpilot init`` publishes, the buckets
    it makes), for up to ``wait_s`` seconds (0: one attempt), then that error again. Any other
    error ends the wait at once: waiting would not mend it.

    Says "waiting for <what>" on the first miss and then every ``SAY_EVERY_S`` seconds, so a
    long wait leaves a trace without a line per retry, and "<what> is there" once it is."""
    backoff = Backoff(WAIT_MIN_S, WAIT_MAX_S, names=("WAIT_MIN_S", "WAIT_MAX_S"))
    started = time.monotonic()
    said_at: float | None = None
    tries = 0
    while True:
        tries += 1
        try:
            result = await attempt()
        except missing as exc:
            now = time.monotonic()
            left = started + wait_s - now
            if left <= 0:
                raise
            delay = min(backoff.next(), left)
            if said_at is None or now - said_at >= SAY_EVERY_S:
                said_at = now
                log.warning(
                    f"waiting for {what}",
                    extra={
                        **(extra or {}),
                        "attempt": tries,
                        "retry_in_s": round(delay, 2),
                        "waited_s": round(now - started, 1),
                        "gives_up_in_s": round(left, 1),
                        "error": str(exc) or repr(exc),
                    },
                )
            await asyncio.sleep(delay)
            continue
        if tries > 1:
            log.info(
                f"{what} is there",
                extra={
                    **(extra or {}),
                    "attempt": tries,
                    "waited_s": round(time.monotonic() - started, 1),
                },
            )
        return result
