"""One platform per data dir: a second `gridpilot up` on a data dir in use is refused before it
starts anything or touches the running platform's files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gridpilot.platform.datadir import LOCK_FILE, lock_data_dir

HOLD = (
    "import sys, time; from pathlib import Path; "
    "from gridpilot.platform.datadir import lock_data_dir; "
    "lock_data_dir(Path(sys.argv[1])); print('held', flush=True); time.sleep(60)"
)


def test_a_second_up_on_a_data_dir_in_use_is_refused_and_touches_nothing(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        endpoints = tmp_path / "endpoints.json"
        endpoints.write_text('{"nats": "nats://127.0.0.1:1"}\n')  # the running platform's
        done = subprocess.run(
            [sys.executable, "-m", "gridpilot", "up", "--no-live", "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        assert "already running with data dir" in done.stderr
        assert f"supervisor pid {holder.pid}" in done.stderr
        assert "Traceback" not in done.stderr
        assert endpoints.read_text() == '{"nats": "nats://127.0.0.1:1"}\n'
        assert not (tmp_path / "nats").exists()  # no broker was started
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_is_free_again_after_release_or_death(tmp_path: Path) -> None:
    lock = lock_data_dir(tmp_path)
    lock.release()
    lock_data_dir(tmp_path).release()
    # a killed holder leaves no stale lock: the kernel drops it with the process
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    lock_data_dir(tmp_path).release()
    assert (tmp_path / LOCK_FILE).exists()
