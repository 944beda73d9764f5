"""The daily backup runs on its own queue (CELERY_TASK_ROUTES): the worker that
``manage.py serve`` starts for processing never takes it, the backup worker beside it
does, and a worker started without ``-Q`` takes both (the compose stack runs a
backup-worker service of its own: relaypacs/tests/test_deploy_compose.py). Real Celery
workers on the real Redis and on the embedded (files) broker, the embedded default's
SQLite database."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.conf import settings as django_settings

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
# A worker imports Django and the app's tasks: seconds, more on a loaded machine.
WORKER_READY_SECONDS = 90
BACKUP_DONE_SECONDS = 120
# What a worker logs when it takes the task (its start-up banner lists every task).
RECEIVED = "Task uploads.tasks.backup_scheduled_task["


@contextmanager
def _worker(env: dict[str, str], log: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "relaypacs",
                "worker",
                "--loglevel=INFO",
                "--without-mingle",
                "--without-gossip",
                *args,
            ],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + WORKER_READY_SECONDS
        while b" ready." not in log.read_bytes():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield process
    finally:
        # What the test checks is done: no warm shutdown to wait for (on the embedded
        # broker a worker's took up to 30 s here, twice per run).
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _send(env: dict[str, str], task: str = "backup_scheduled_task") -> None:
    done = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "shell",
            "-c",
            f"from uploads.tasks import {task}; {task}.delay()",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def _wait_for_backups(target: Path, count: int) -> None:
    deadline = time.monotonic() + BACKUP_DONE_SECONDS
    while len(list(target.glob("relaypacs-backup-*"))) < count:
        assert time.monotonic() < deadline, f"no backup {count} under {target}"
        time.sleep(0.2)


@pytest.mark.parametrize("broker", ["redis", "embedded"])
def test_the_backup_runs_on_its_own_worker_and_a_worker_without_queues_takes_it(tmp_path, broker):
    queue = f"h-backup-test-{secrets.token_hex(4)}"  # no other worker on this Redis takes it
    target = tmp_path / "backups"
    env = {
        **{k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
        "DJANGO_SETTINGS_MODULE": "relaypacs.settings.dev",
        "DATA_DIR": str(tmp_path / "data"),
        # The embedded default's broker is files in DATA_DIR (`make run`).
        "CELERY_BROKER_URL": (
            django_settings.CELERY_BROKER_URL if broker == "redis" else "filesystem://"
        ),
        "CELERY_QUEUE": queue,
        "BACKUP_TARGET": str(target),
    }
    migrated = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--verbosity", "0"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert migrated.returncode == 0, migrated.stderr
    processing, backups = tmp_path / "processing.log", tmp_path / "backups.log"
    # As `manage.py serve` starts them.
    with (
        _worker(env, processing, "--hostname=worker@%h", f"--queues={queue}"),
        _worker(env, backups, "--pool=solo", "--hostname=backups@%h", f"--queues={queue}-backups"),
    ):
        _send(env)
        _wait_for_backups(target, 1)
        assert RECEIVED in backups.read_text()
        assert RECEIVED not in processing.read_text()
        # Processing's tasks never reach the backup worker.
        _send(env, "uploads_cleanup")
        deadline = time.monotonic() + BACKUP_DONE_SECONDS
        while "Task uploads.tasks.uploads_cleanup[" not in processing.read_text():
            assert time.monotonic() < deadline, processing.read_text()
            time.sleep(0.2)
        assert "Task uploads.tasks.uploads_cleanup[" not in backups.read_text()

    either = tmp_path / "either.log"
    with _worker(env, either, "--hostname=either@%h"):  # no -Q: every queue of the app
        _send(env)
        _wait_for_backups(target, 2)
        assert RECEIVED in either.read_text()
