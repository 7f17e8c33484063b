"""The back-off every gateway client shares: doubling waits, capped, reset after success."""

from __future__ import annotations

import pytest

from gridpilot.core.backoff import Backoff


def test_waits_double_up_to_the_cap_and_start_again_after_a_success() -> None:
    b = Backoff(0.5, 3.0, names=("min_s", "max_s"))
    assert [b.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    b.reset()
    assert b.next() == 0.5
    assert [b.after_failures(n) for n in (0, 1, 2, 3, 9)] == [0.5, 0.5, 1.0, 2.0, 3.0]


def test_bad_bounds_name_the_settings() -> None:
    with pytest.raises(ValueError, match="need 0 < min_s <= max_s, not 2, 1"):
        Backoff(2, 1, names=("min_s", "max_s"))
