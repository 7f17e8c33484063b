"""The gridpilot command: listings, and clear errors for what a user can get wrong; run as a
user runs it (a process, from another folder) with and without a platform."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gridpilot.cli import main
from gridpilot.core import schemas as s
from gridpilot.platform.broker import EmbeddedNats, write_endpoints
from gridpilot.platform.permissions import CREDENTIALS_FILE
from tests.conftest import ConnectAs

SIMBENCH_GRID = "1_mv_semiurb__0_sw"  # what `up --grid simbench:1-MV-semiurb--0-sw` runs as


def gridpilot(
    *argv: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``gridpilot ARGV`` in its own process, in ``cwd``, without GRIDPILOT_DATA_DIR unless
    ``env`` sets it."""
    base = {k: v for k, v in os.environ.items() if k != "GRIDPILOT_DATA_DIR"}
    return subprocess.run(
        [sys.executable, "-m", "gridpilot", *argv],
        cwd=cwd,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The error a user reads: one ``gridpilot: error:`` line, never a traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gridpilot: error: "), proc.stderr
    return lines[0]


@pytest.fixture
def project(nats_server: EmbeddedNats, tmp_path: Path) -> Path:
    """A project folder whose ``.gridpilot`` is a running platform of grid SIMBENCH_GRID (the
    session's broker; its endpoints as a supervisor writes them, with this process's pid)."""
    data = tmp_path / "project" / ".gridpilot"
    data.mkdir(parents=True)
    shutil.copy(nats_server.data_dir / CREDENTIALS_FILE, data / CREDENTIALS_FILE)
    endpoints = {**nats_server.endpoints, "grid": SIMBENCH_GRID, "supervisor_pid": str(os.getpid())}
    write_endpoints(data, endpoints)
    return data.parent


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
    assert "no GridPilot platform is running" in err and "gridpilot up" in err


def test_commands_without_a_platform_say_so_in_one_line(tmp_path: Path) -> None:
    elsewhere = tmp_path / "some" / "folder"
    elsewhere.mkdir(parents=True)
    for argv in (
        ["status"],
        ["inject", "clear"],
        ["history", "query", "--mrid", "bus_1"],
        ["inject", "clear", "--grid", "simbench:1-MV-semiurb--0-sw"],
    ):
        proc = gridpilot(*argv, cwd=elsewhere)
        assert proc.returncode == 2, (argv, proc.stderr)
        line = one_error_line(proc)
        assert "no GridPilot platform is running with data dir .gridpilot" in line
        assert "gridpilot up" in line and "GRIDPILOT_DATA_DIR" in line
    # a supervisor that has exited left its endpoints behind: not running either
    data = tmp_path / "stale"
    write_endpoints(data, {"nats": "nats://127.0.0.1:1", "supervisor_pid": "999999999"})
    proc = gridpilot("status", cwd=elsewhere, env={"GRIDPILOT_DATA_DIR": str(data)})
    assert "(pid 999999999) has exited" in one_error_line(proc)


def test_user_add_refuses_a_data_dir_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "typo"
    proc = gridpilot(
        "user", "add", "olga", "--role", "operator", "--data-dir", str(missing), cwd=tmp_path
    )
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert f"data dir {missing} does not exist" in line and "gridpilot up --data-dir" in line
    assert not missing.exists()
    proc = gridpilot(
        "user", "add", "olga", "--role", "operator", cwd=tmp_path
    )  # no .gridpilot here
    assert "data dir .gridpilot does not exist" in one_error_line(proc)
    assert not (tmp_path / ".gridpilot").exists()


async def test_commands_find_the_platform_and_its_grid_from_any_folder(
    project: Path, connect_as: ConnectAs, tmp_path: Path
) -> None:
    """From a sub-folder (nearest .gridpilot), or anywhere with GRIDPILOT_DATA_DIR or
    --data-dir, commands reach the platform and default to its grid; --grid takes the name as
    typed to ``up``; a request nobody answers is one line, not NoRespondersError."""
    import asyncio

    deep = project / "a" / "b"
    deep.mkdir(parents=True)
    nc = await connect_as("admin")
    asked: list[str] = []

    async def simulator(msg: object) -> None:
        asked.append(msg.subject)  # type: ignore[attr-defined]
        await msg.respond(s.encode(s.Reply(ok=True)))  # type: ignore[attr-defined]

    await nc.subscribe(f"gp.{SIMBENCH_GRID}.request.sim.inject", cb=simulator)
    await nc.flush()
    data = str(project / ".gridpilot")
    runs = [
        (deep, {}, ["inject", "clear"]),
        (tmp_path, {"GRIDPILOT_DATA_DIR": data}, ["inject", "clear"]),
        (
            tmp_path,
            {},
            ["inject", "clear", "--data-dir", data, "--grid", "simbench:1-MV-semiurb--0-sw"],
        ),
        (deep, {}, ["inject", "clear", "--grid", SIMBENCH_GRID]),
    ]
    for cwd, env, argv in runs:
        proc = await asyncio.to_thread(gridpilot, *argv, cwd=cwd, env=env)
        assert (proc.returncode, proc.stdout.strip()) == (0, "ok"), (argv, proc.stderr)
    assert asked == [f"gp.{SIMBENCH_GRID}.request.sim.inject"] * len(runs)

    proc = await asyncio.to_thread(gridpilot, "inject", "clear", "--grid", "cigre_mv", cwd=deep)
    assert proc.returncode == 2
    assert (
        "nothing answers on gp.cigre_mv.request.sim.inject: is the simulator running"
        in one_error_line(proc)
    )
    proc = await asyncio.to_thread(gridpilot, "history", "query", "--mrid", "bus_1", cwd=deep)
    assert f"nothing answers on gp.{SIMBENCH_GRID}.request.history.query" in one_error_line(proc)

    proc = await asyncio.to_thread(gridpilot, "status", "--json", cwd=deep)
    assert proc.returncode == 0 and isinstance(json.loads(proc.stdout), list), proc.stderr
    proc = await asyncio.to_thread(gridpilot, "user", "add", "olga", "--role", "viewer", cwd=deep)
    assert proc.returncode == 0 and "one-time password" in proc.stdout, proc.stderr
    assert (project / ".gridpilot" / "users.json").is_file()


@pytest.mark.slow
def test_commands_reach_a_real_platform_from_a_sub_folder(tmp_path: Path) -> None:
    """``gridpilot up`` in a project folder; commands run from a folder below it find it, its
    grid and its simulator, and say it is gone once it has stopped."""
    import signal
    import time

    project = tmp_path / "project"
    below = project / "src" / "deep"
    below.mkdir(parents=True)
    log = (tmp_path / "up.log").open("wb")
    env = {k: v for k, v in os.environ.items() if k != "GRIDPILOT_DATA_DIR"}
    up = subprocess.Popen(
        [sys.executable, "-m", "gridpilot", "up", "--no-live"],
        cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        endpoints = project / ".gridpilot" / "endpoints.json"
        deadline = time.monotonic() + 90
        while True:  # the supervisor says which grid it runs once the model is published
            assert up.poll() is None, (tmp_path / "up.log").read_text()[-2000:]
            assert time.monotonic() < deadline, (tmp_path / "up.log").read_text()[-2000:]
            if endpoints.exists() and json.loads(endpoints.read_text()).get("grid"):
                break
            time.sleep(0.3)
        assert json.loads(endpoints.read_text())["supervisor_pid"] == str(up.pid)
        deadline = time.monotonic() + 60
        while True:  # the simulator answers once it runs
            proc = gridpilot("inject", "clear", cwd=below)
            if proc.returncode == 0:
                break
            assert "nothing answers on gp.cigre_mv.request.sim.inject" in one_error_line(proc)
            assert time.monotonic() < deadline, proc.stderr
            time.sleep(1)
        assert proc.stdout.strip() == "ok"
        status = gridpilot("status", "--json", cwd=below)
        assert status.returncode == 0, status.stderr
        assert "simulator" in {row["service"] for row in json.loads(status.stdout)}
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=30)
        log.close()
    proc = gridpilot("status", cwd=below)
    assert proc.returncode == 2
    assert "no GridPilot platform is running" in one_error_line(proc)
