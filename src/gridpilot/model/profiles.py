"""Load and generation profiles: synthetic standard profiles and their evaluation at a time.

Profiles are per unit of an element's rating, one value per ``step_s`` seconds, repeated
cyclically (a week of 15-minute values by default). ``ProfileTable`` evaluates many at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

STEPS_PER_DAY = 96
DAYS = 7


def _hours() -> npt.NDArray[np.float64]:
    return np.arange(STEPS_PER_DAY * DAYS) * 24.0 / STEPS_PER_DAY


def _bump(h: npt.NDArray[np.float64], centre: float, width: float) -> npt.NDArray[np.float64]:
    d = (h - centre + 12.0) % 24.0 - 12.0
    return np.asarray(np.exp(-0.5 * (d / width) ** 2))


def standard_profiles() -> dict[str, list[float]]:
    """Synthetic weekly profiles shaped like the German standard load profiles (H0, G0)."""
    h = _hours()
    hod = h % 24.0
    day = (h // 24.0).astype(int)
    weekend = day >= 5
    residential = 0.35 + 0.35 * _bump(hod, 7.5, 1.2) + 0.65 * _bump(hod, 19.0, 2.0)
    residential = residential + 0.1 * _bump(hod, 12.5, 1.5) * weekend
    commercial = 0.3 + 0.65 * ((hod >= 7.5) & (hod <= 18.0)) * np.where(weekend, 0.3, 1.0)
    commercial = np.convolve(commercial, np.ones(5) / 5, mode="same")
    commercial[:2] = commercial[2]
    commercial[-2:] = commercial[-3]
    # PV: a clear-sky bell with a day-to-day cloudiness factor.
    clearness = np.array([1.0, 0.55, 0.85, 0.95, 0.4, 0.9, 0.75])[day]
    pv = np.clip(np.sin(np.pi * (hod - 6.0) / 14.0), 0.0, None) ** 1.5 * 0.85 * clearness
    # Wind: slow, irregular; a deterministic sum of incommensurate sines.
    wind = 0.45 + 0.2 * np.sin(h / 9.1) + 0.15 * np.sin(h / 3.7 + 1.0) + 0.08 * np.sin(h / 1.3)
    wind = np.clip(wind, 0.02, 1.0)
    out: dict[str, list[float]] = {}
    for name, p, q in (
        ("residential", residential, residential),
        ("commercial", commercial, commercial),
        ("pv", pv, np.zeros_like(pv)),
        ("wind", wind, np.zeros_like(wind)),
    ):
        out[f"{name}_p"] = np.round(p, 5).tolist()
        out[f"{name}_q"] = np.round(q, 5).tolist()
    return out


class ProfileTable:
    """Evaluates the profiles of a set of elements at one time, vectorised."""

    def __init__(
        self,
        profiles: Mapping[str, Sequence[float]],
        keys: Sequence[str],
        *,
        step_s: float,
    ) -> None:
        names = sorted(set(keys))
        missing = [k for k in names if k not in profiles]
        if missing:
            raise KeyError(f"profiles missing from the model: {missing[:5]}")
        lengths = {len(profiles[k]) for k in names} or {1}
        if len(lengths) != 1:
            raise ValueError("all profiles of one model must have the same length")
        self.step_s = step_s
        self.n_steps = lengths.pop()
        matrix = np.array([profiles[k] for k in names], dtype=np.float64).reshape(
            len(names), self.n_steps
        )
        index = {k: i for i, k in enumerate(names)}
        self._rows = matrix[[index[k] for k in keys]] if keys else np.zeros((0, self.n_steps))

    def at(self, t_s: float) -> npt.NDArray[np.float64]:
        """Per-unit value of every element's profile at ``t_s`` (linear interpolation)."""
        x = (t_s / self.step_s) % self.n_steps
        i0 = int(x)
        i1 = (i0 + 1) % self.n_steps
        w = x - i0
        return np.asarray(self._rows[:, i0] * (1.0 - w) + self._rows[:, i1] * w)
