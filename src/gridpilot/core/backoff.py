"""Capped exponential back-off, shared by whatever retries: the gateways' links to field
devices, the historian's database writes, and a service waiting for its grid model.

Waits double from ``min_s`` up to ``max_s`` and start again from ``min_s`` after a success.
"""

from __future__ import annotations


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
