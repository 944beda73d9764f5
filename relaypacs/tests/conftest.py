"""The product as `make run` starts it, once for this folder's end-to-end tests: two web
workers (so that a scrape must sum processes), JSON logs, and an administrator signed in."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from uploads.tests.product import REPO, RunningProduct, running_product


@dataclass
class SignedInProduct:
    running: RunningProduct
    access: str

    @property
    def base(self) -> str:
        return self.running.base


@pytest.fixture(scope="module")
def product(tmp_path_factory: pytest.TempPathFactory, orthanc: Any) -> Iterator[SignedInProduct]:
    with running_product(
        tmp_path_factory.mktemp("product"),
        orthanc,
        WEB_WORKERS="2",
        LOG_FORMAT="json",
        BEAT_HEARTBEAT_SECONDS="2",
    ) as running:
        subprocess.run(
            [sys.executable, "manage.py", "createsuperuser", "--noinput"],
            cwd=REPO,
            check=True,
            capture_output=True,
            timeout=120,
            env={
                **running.env,
                "DJANGO_SUPERUSER_USERNAME": "admin",
                "DJANGO_SUPERUSER_PASSWORD": "a long admin password",
                "DJANGO_SUPERUSER_EMAIL": "admin@example.org",
            },
        )
        login = requests.post(
            f"{running.base}/api/v1/auth/login",
            json={"username": "admin", "password": "a long admin password"},
            timeout=30,
        )
        assert login.status_code == 200, login.text
        yield SignedInProduct(running, login.json()["access"])
