"""Range checks for the numbers in commands, injections and history queries, shared by the web
API (which answers 422) and by the services that execute them on the bus (which refuse with
``ok=False``), so that one rule holds wherever a message enters.

Each ``*_problem`` function returns "" when the message is acceptable, otherwise what is wrong
in one sentence. The ranges:

- DER setpoints: ``p_mw`` (an active power limit) finite and within 0..rating (the generator's
  rated ``p_mw`` when the checker knows it, else ``MAX_SETPOINT_MW``); ``q_mvar`` finite and
  within -rating..+rating (an inverter cannot supply more reactive than apparent power). None
  still means "no limit" / "no setpoint"; a NaN never does.
- Injections: ``error`` finite with ``|error| <= MAX_INJECT_ERROR`` (MW, Mvar or p.u.);
  ``duration_s`` finite and within 0..``MAX_INJECT_S`` simulated seconds.
- History queries: times in 0..``MAX_T_NS`` (a signed 64-bit nanosecond count, as the store
  keeps them), ``bucket_s`` 0 (raw) or up to ``MAX_BUCKET_S``, ``limit`` 1..``MAX_LIMIT``.
"""

from __future__ import annotations

import math

from gridpilot.core.schemas import Command, CommandKind, HistoryQuery, InjectRequest

MAX_SETPOINT_MW = 1000.0  # larger than any generator a distribution grid connects
MAX_INJECT_ERROR = 1.0e6  # a gross error larger than any measured value, still finite
MAX_INJECT_S = 366 * 86400.0  # a training disturbance lasts at most a (simulated) year
MAX_T_NS = 2**63 - 1
MAX_BUCKET_S = 366 * 86400  # one bucket per year at most
MAX_LIMIT = 200_000  # raw samples per series (the historian's reply limit)


def _number(name: str, value: float, low: float, high: float, unit: str) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return f"{name} must be a number, not {value!r}"
    if not math.isfinite(value):
        return f"{name} must be a finite number, not {value!r}"
    if not low <= value <= high:
        return f"{name} must be within {low:g}..{high:g}{' ' + unit if unit else ''}, not {value!r}"
    return ""


def setpoint_problem(p_mw: float | None, q_mvar: float | None, *, rating_mw: float | None) -> str:
    """What is wrong with a DER setpoint, or "" (None: no limit / no setpoint)."""
    rating = MAX_SETPOINT_MW if rating_mw is None else min(abs(rating_mw), MAX_SETPOINT_MW)
    what = "" if rating_mw is None else " (the generator's rating)"
    if p_mw is not None and (err := _number("p_mw", p_mw, 0.0, rating, "MW" + what)):
        return err
    if q_mvar is not None and (err := _number("q_mvar", q_mvar, -rating, rating, "Mvar" + what)):
        return err
    return ""


def command_problem(cmd: Command, *, rating_mw: float | None = None) -> str:
    """What is wrong with a command's numbers, or "" (switch commands carry none)."""
    if cmd.kind is CommandKind.DER_SETPOINT:
        return setpoint_problem(cmd.p_mw, cmd.q_mvar, rating_mw=rating_mw)
    return ""


def inject_problem(req: InjectRequest) -> str:
    return _number("error", req.error, -MAX_INJECT_ERROR, MAX_INJECT_ERROR, "") or _number(
        "duration_s", req.duration_s, 0.0, MAX_INJECT_S, "s"
    )


def history_problem(q: HistoryQuery) -> str:
    for name, value, high in (
        ("t_from_ns", q.t_from_ns, MAX_T_NS),
        ("t_to_ns", q.t_to_ns, MAX_T_NS),
        ("bucket_s", q.bucket_s, MAX_BUCKET_S),
        ("limit", q.limit, MAX_LIMIT),
    ):
        low = 1 if name == "limit" else 0
        if not low <= value <= high:
            return f"{name} must be within {low}..{high}, not {value}"
    return ""
