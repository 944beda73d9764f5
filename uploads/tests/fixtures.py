"""Fixtures shared by every app's tests (registered in the root conftest.py with
``pytest_plugins``): the upload storage folder and the one real Celery worker of a test
session. Defined once, so that no second worker (with other settings) consumes the
broker's messages: reports' tests used to import these into their own conftest, which made
pytest start a second session worker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings as django_settings
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import RefreshToken

REPO = Path(__file__).resolve().parents[2]
# A Celery worker boots in about two seconds here; give a slow CI machine ten times that.
WORKER_READY_SECONDS = 40
# Lease and retry timings of the test worker: short, so crash recovery shows within a test.
TEST_LEASE_SECONDS = 5


@pytest.fixture(scope="session")
def upload_storage_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("upload-storage")


def client_for(user: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {RefreshToken.for_user(user).access_token}")
    return client


class CeleryWorker:
    """A real ``celery worker`` process on the test database, broker and Orthanc."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "relaypacs",
                "worker",
                "--loglevel=INFO",
                "--concurrency=2",
                "--without-mingle",
                "--without-gossip",
                f"--hostname=test-{os.getpid()}@%h",
                "--beat",
                f"--schedule={self.log_path.parent / 'celerybeat-schedule'}",
            ],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + WORKER_READY_SECONDS
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as handle:
                handle.seek(offset)
                if b" ready." in handle.read():
                    return
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"Celery worker did not start; see {self.log_path}")

    def kill9(self) -> None:
        """SIGKILL the worker and its pool processes at once, as a crash would."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture(scope="session")
def celery_worker(
    django_db_setup: None,
    django_db_blocker: Any,
    orthanc: Any,
    upload_storage_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[CeleryWorker]:
    from django.db import connection

    name = connection.settings_dict["NAME"]
    broker = django_settings.CELERY_BROKER_URL
    redis.Redis.from_url(broker).flushdb()  # no stale messages from an earlier run
    data_dir = tmp_path_factory.mktemp("worker-data")
    user, password = orthanc.auth
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "relaypacs.settings.test",
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{name}",
        "CELERY_BROKER_URL": broker,
        "DATA_DIR": str(data_dir),
        "UPLOAD_STORAGE_DIR": str(upload_storage_dir),
        "PACS_DICOMWEB_URL": orthanc.dicomweb_url,
        "PACS_ORTHANC_URL": orthanc.url,
        "PACS_USERNAME": user,
        "PACS_PASSWORD": password,
        "UPLOAD_LEASE_SECONDS": str(TEST_LEASE_SECONDS),
        "PACS_RETRY_BASE_SECONDS": "1",
        "PACS_RETRY_MAX_SECONDS": "2",
        "PACS_TIMEOUT_SECONDS": "10",
        "PACS_STOW_BATCH_BYTES": str(4 * 1024 * 1024),
        "REDISPATCH_INTERVAL_SECONDS": "1",
    }
    worker = CeleryWorker(env, data_dir / "worker.log")
    worker.start()
    yield worker
    worker.stop()


# The S3 protocol server (moto, a process of its own) of the S3-mode tests, for every app.
from uploads.tests.s3_server import s3_server, s3_settings  # noqa: E402, F401
