"""The gridpilot command: listings, and clear errors for what a user can get wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from gridpilot.cli import main


def test_grids_lists_builtin_grids(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["grids"]) == 0
    out = capsys.readouterr().out
    assert "cigre_mv" in out and "mvlv_rural" in out and "simbench:" in out


def test_placement_prints_toml(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["placement", "--grid", "cigre_mv"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# GridPilot measurement placement for grid cigre_mv")
    assert '[[devices]]\nid = "pmu_bus_1"' in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "no_such_service"], "unknown service 'no_such_service'"),
        (["placement", "--grid", "atlantis"], "unknown grid 'atlantis'"),
        (["up", "--speed", "0"], "--speed must be > 0"),
    ],
)
def test_user_errors_exit_2_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_status_without_a_running_platform(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "start" in err
