"""Regenerate the golden state-estimation cases (run from the repository root):

    python -m tests.data.state_estimation.make_golden

Only rerun when a change to the estimator is meant to change its results; review the diff.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgspec

from gridpilot.core.schemas import Measurand, MeasurementSnapshot
from gridpilot.model.placement import placement_to_toml
from gridpilot.services.state_estimation.estimator import Estimator
from gridpilot.simulator.twin import GrossError
from tests.pipeline import NOON, Pipeline

HERE = Path(__file__).parent


def main() -> None:
    case = HERE / "cigre_mv_gross_error"
    case.mkdir(exist_ok=True)
    pipe = Pipeline("cigre_mv", seed=2026)
    pipe.twin.step(NOON)
    pipe.twin.gross.append(
        GrossError("rtu_trafo_0_12", "trafo_0_12", Measurand.POWER, 1.5, until_s=NOON + 1e6)
    )
    measurements = [
        m for d in pipe.placement.devices for m in pipe.twin.measure(d, "cigre_mv", 1).measurements
    ]
    snap = MeasurementSnapshot(grid="cigre_mv", t_ns=round(NOON * 1e9), measurements=measurements)
    est = Estimator(pipe.model, pipe.placement).estimate(snap)
    truth = pipe.twin.truth("cigre_mv")
    assert est.buses is not None
    (case / "placement.toml").write_text(placement_to_toml(pipe.placement))
    (case / "snapshot.json").write_bytes(msgspec.json.format(msgspec.json.encode(snap)))
    (case / "expected.json").write_text(
        json.dumps(
            {
                "status": est.status.value,
                "bad_data": [b.sensor for b in est.bad_data],
                "v_pu": est.buses.v_pu,
                "va_deg": est.buses.va_deg,
                "truth_v_pu": truth.buses.v_pu,
            },
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
