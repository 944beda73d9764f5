"""The multiprocess directory's housekeeping: emptied at start, dead processes marked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from relaypacs.metrics import dead_processes_mark, multiproc_dir_reset


def test_the_directory_is_emptied_at_start(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_12345.db").write_bytes(b"an earlier run")
    multiproc_dir_reset(directory)
    assert directory.is_dir() and not list(directory.iterdir())


def test_a_process_that_exited_loses_its_live_gauges_but_keeps_its_counts(tmp_path: Path) -> None:
    exited = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = int(exited.stdout)
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for pid in (dead, running.pid):
            (tmp_path / f"counter_{pid}.db").write_bytes(b"")
            (tmp_path / f"gauge_livesum_{pid}.db").write_bytes(b"")
            (tmp_path / f"gauge_liveall_{pid}.db").write_bytes(b"")
        assert dead_processes_mark(tmp_path) == [dead]
        left = sorted(p.name for p in tmp_path.iterdir())
        assert left == sorted(
            [
                f"counter_{dead}.db",
                f"counter_{running.pid}.db",
                f"gauge_liveall_{running.pid}.db",
                f"gauge_livesum_{running.pid}.db",
            ]
        )
    finally:
        running.kill()
        running.wait()
