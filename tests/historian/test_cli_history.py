"""``gridpilot history export/import`` on a real SQLite database, as a user runs them."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from gridpilot.cli import main
from gridpilot.services.historian.backends import open_store


def test_import_then_export_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "backfill.csv"
    lines = ["time,grid,kind,source,mrid,quantity,value,quality"]
    lines += [
        f"2026-11-25T00:{m:02d}:00Z,g,meas,rtu_1,bus_1,bus.v_pu,{1 + m / 1000},0" for m in range(60)
    ]
    csv.write_text("\n".join(lines) + "\n")
    db = str(tmp_path / "h.sqlite")
    assert main(["history", "import", str(csv), "--db", db]) == 0
    assert "60 samples imported" in capsys.readouterr().out
    assert main(["history", "import", str(csv), "--db", db]) == 0  # again: nothing doubled
    assert "0 samples imported" in capsys.readouterr().out
    out = tmp_path / "out.parquet"
    args = ["--db", db, "--from", "2026-11-25T00:30", "--to", "2026-11-25T01:00:00+00:00"]
    assert main(["history", "export", str(out), *args]) == 0
    table = pq.read_table(out)
    assert table.num_rows == 30 and table.column("value")[0].as_py() == pytest.approx(1.030)
    store = open_store(db)
    try:
        assert store.count_samples("g") == 60
    finally:
        store.close()


def test_bad_input_is_refused_with_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "h.sqlite")
    assert main(["history", "export", "x.csv", "--db", db, "--from", "yesterday"]) == 2
    assert "'yesterday' is not a time: use ISO-8601" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("time,grid,kind,source,mrid,quantity,value\n2026-11-25T00:00Z,g,meas,r,b,q,x\n")
    assert main(["history", "import", str(bad), "--db", db]) == 2
    assert "bad.csv:2" in capsys.readouterr().err
    missing = tmp_path / "nowhere"
    assert main(["history", "export", "x.csv", "--data-dir", str(missing), "--from", "0"]) == 2
    assert "no historian database" in capsys.readouterr().err


def test_a_database_that_fails_is_an_error_the_user_can_act_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """StoreError is a GridPilotError: one line saying what is wrong, exit code 2 (not the
    "unexpected" of a bug)."""
    db = tmp_path / "h.sqlite"
    db.write_bytes(b"not a database, but a file of the same name " * 100)
    assert main(["history", "export", "x.csv", "--db", str(db), "--from", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gridpilot: error: SQLite database") and "not a database" in err
    assert "unexpected" not in err
