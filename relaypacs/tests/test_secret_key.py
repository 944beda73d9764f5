"""Without SECRET_KEY the embedded default makes one into DATA_DIR once; processes that
start together on an empty DATA_DIR (serve, worker, beat) agree on it and never read a
half-written file. CI once saw "The SECRET_KEY setting must not be empty" from that race;
its window is too narrow to hit on demand, so this guards the contract rather than
reproducing the race every run."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PRINT_KEY = "from django.conf import settings; print('KEY', settings.SECRET_KEY)"


def _start(data_dir: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SECRET_KEY")}
    env.update(DJANGO_SETTINGS_MODULE="relaypacs.settings.test", DATA_DIR=str(data_dir))
    return subprocess.Popen(
        [sys.executable, "-c", PRINT_KEY],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _key_of(process: subprocess.Popen[str]) -> str:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    return next(line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("KEY"))


def test_processes_starting_together_on_an_empty_data_dir_agree_on_one_secret_key(tmp_path):
    for attempt in range(3):
        data_dir = tmp_path / f"data{attempt}"
        processes = [_start(data_dir) for _ in range(6)]
        keys = {_key_of(process) for process in processes}
        assert len(keys) == 1
        (key,) = keys
        assert len(key) >= 50
        key_file = data_dir / ".secret_key"
        assert key_file.read_text() == key
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert [p.name for p in data_dir.iterdir() if p.name.startswith(".secret")] == [
            ".secret_key"
        ]  # no draft left behind
        # A later process (a restart) reads the same key.
        assert _key_of(_start(data_dir)) == key
