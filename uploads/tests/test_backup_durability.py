"""Backups that survive a power cut and processes killed mid-way
(uploads.management.backups): a folder backup is on disk before its manifest says it is
whole, and the scratch folders a killed backup leaves are removed by the next one, never
one still in use. On the real PostgreSQL test database and the real filesystem."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from uploads.management import backups

pytestmark = pytest.mark.django_db

REPO = Path(__file__).resolve().parents[2]
# A child process takes a few seconds to start Django on a loaded machine.
CHILD_READY_SECONDS = 60


def test_a_folder_backup_is_on_disk_before_its_manifest_and_its_rename_is_durable(
    settings, tmp_path, report_store, monkeypatch
):
    settings.DATA_DIR = tmp_path
    target = tmp_path / "backups"
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        events.append(("fsync", path))
        real_fsync(fd)

    def rename(source: Any, destination: Any, *args: Any, **kwargs: Any) -> None:
        events.append(("rename", str(destination)))
        real_rename(source, destination, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)

    final = backups.backup_create(target=target, keep=7)

    partial = next(p for kind, p in events if kind == "fsync" and p.endswith(".partial"))
    order = [(kind, Path(p).name if kind == "fsync" else p) for kind, p in events]
    synced = [name for kind, name in order if kind == "fsync"]
    # Every file, then the manifest, then the folder's entries, then the rename, then
    # the target's entry for the renamed folder.
    assert synced[:2] == ["database.dump", "reports.tar"]
    assert synced[2:] == [backups.MANIFEST, Path(partial).name, target.name]
    renamed = order.index(("rename", str(final)))
    assert (
        order.index(("fsync", Path(partial).name)) < renamed < order.index(("fsync", target.name))
    )
    assert (final / backups.MANIFEST).is_file()


def _hold_scratch_in_a_child(data_dir: Path) -> tuple[subprocess.Popen[str], Path]:
    """A process that makes a scratch folder as a SQLite backup into a bucket does, and
    keeps it (until it is killed)."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import django, time; django.setup()\n"
            "from uploads.management.backups import _private_tempdir\n"
            "with _private_tempdir() as folder:\n"
            "    (folder / 'database.sqlite3').write_bytes(b'a copy of the database')\n"
            "    print(folder, flush=True)\n"
            "    time.sleep(600)\n",
        ],
        cwd=REPO,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "relaypacs.settings.dev",
            "DATA_DIR": str(data_dir),
        },
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert child.stdout is not None
    line = child.stdout.readline()  # blocks until the folder exists, or the child died
    assert line, f"the child ended with {child.wait(timeout=CHILD_READY_SECONDS)}"
    return child, Path(line.strip())


def test_scratch_left_by_a_killed_backup_goes_at_the_next_backup_and_one_in_use_stays(
    settings, tmp_path, report_store
):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    settings.DATA_DIR = data_dir
    killed, left_behind = _hold_scratch_in_a_child(data_dir)
    running, in_use = _hold_scratch_in_a_child(data_dir)
    try:
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait(timeout=30)
        assert (left_behind / "database.sqlite3").exists()  # SIGKILL ran no cleanup
        # Before the owner file existed (an older release): only once a day old.
        legacy_old = data_dir / ".relaypacs-backup-k2j4l5m6"
        legacy_new = data_dir / ".relaypacs-backup-a1b2c3d4"
        for folder in (legacy_old, legacy_new):
            folder.mkdir()
            (folder / "database.sqlite3").write_bytes(b"old copy")
        day_and_more = time.time() - backups.UNFINISHED_AGE.total_seconds() - 60
        os.utime(legacy_old / "database.sqlite3", (day_and_more, day_and_more))
        os.utime(legacy_old, (day_and_more, day_and_more))
        # A backup folder being written into DATA_DIR itself is the target's, not scratch.
        partial = data_dir / ".relaypacs-backup-20200101T000000000000Z.partial"
        partial.mkdir()

        with backups._private_tempdir() as ours:  # one of this process, in use too
            backups.backup_run(target=str(tmp_path / "backups"), keep=7)

            assert not left_behind.exists()
            assert not legacy_old.exists()
            assert (in_use / "database.sqlite3").exists()
            assert ours.is_dir() and legacy_new.is_dir() and partial.is_dir()
    finally:
        os.killpg(running.pid, signal.SIGKILL)
        running.wait(timeout=30)
    # Its owner is gone now: the next backup (or restore) removes it.
    assert backups.scratch_sweep() == [in_use]
