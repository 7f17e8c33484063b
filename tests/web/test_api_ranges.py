"""Numbers the API refuses with 422 before anything reaches the bus: non-finite or
out-of-range setpoints (a string "NaN" once became "no limit"), injections and history ranges
(a bucket of 10**30 s once left the API waiting for a historian that never answered)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.web.conftest import GRID, Api, login

SETPOINT = f"/api/grids/{GRID}/commands/setpoint"
INJECT = f"/api/grids/{GRID}/training/inject"
HISTORY = f"/api/grids/{GRID}/history"


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"p_mw": "NaN"}, "p_mw must be a finite number, not nan"),
        ({"p_mw": "Infinity"}, "p_mw must be a finite number, not inf"),
        ({"q_mvar": "-inf"}, "q_mvar must be a finite number, not -inf"),
        ({"p_mw": -0.1}, "p_mw must be within 0..1.5 MW (the generator's rating), not -0.1"),
        ({"p_mw": 2.0}, "p_mw must be within 0..1.5 MW (the generator's rating), not 2.0"),
        ({"p_mw": 1.0, "q_mvar": 1e300}, "q_mvar must be within -1.5..1.5 Mvar"),
    ],
)
async def test_setpoints_out_of_range_are_422(api: Api, body: dict[str, Any], detail: str) -> None:
    operator = await login(api, "olga")
    r = await api.post(SETPOINT, json={"target": "wka_7", **body}, headers=operator)
    assert r.status_code == 422, r.text
    assert detail in r.json()["detail"]


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"error": "NaN"}, "error must be a finite number, not nan"),
        ({"error": 1e300}, "error must be within"),
        ({"error": 0.5, "duration_s": "Infinity"}, "duration_s must be a finite number"),
        ({"error": 0.5, "duration_s": -5}, "duration_s must be within 0.."),
    ],
)
async def test_injections_out_of_range_are_422(api: Api, body: dict[str, Any], detail: str) -> None:
    operator = await login(api, "olga")
    base = {"kind": "gross_error", "source": "rtu_trafo_0_12", "mrid": "trafo_0_12"}
    r = await api.post(INJECT, json={**base, **body}, headers=operator)
    assert r.status_code == 422, r.text
    assert detail in r.json()["detail"]


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({"bucket_s": 10**30}, "bucket_s must be within 0..31622400"),
        ({"bucket_s": 10**18}, "bucket_s must be within 0..31622400"),
        ({"limit": 0}, "limit must be within 1..200000"),
        ({"t_from_ns": -1}, "t_from_ns must be within 0.."),
        ({"t_to_ns": 2**64}, "t_to_ns must be within 0.."),
    ],
)
async def test_history_ranges_are_422(api: Api, params: dict[str, Any], detail: str) -> None:
    viewer = await login(api, "vic")
    r = await api.get(HISTORY, params={"mrid": "bus_1", **params}, headers=viewer)
    assert r.status_code == 422, r.text
    assert detail in r.json()["detail"]
