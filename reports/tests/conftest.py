"""Fixtures of the reports tests: users of every role, API clients, reports, a worker."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from uploads.tests.fixtures import client_for

# Set before any worker starts, so that a Celery worker of this test session (which copies
# this environment) writes PDFs where the test process reads them.
REPORT_STORE = Path(
    os.environ.setdefault("REPORT_STORAGE_DIR", tempfile.mkdtemp(prefix="relaypacs-reports-"))
)


@pytest.fixture(scope="session", autouse=True)
def _remove_report_store() -> Iterator[None]:
    yield
    shutil.rmtree(REPORT_STORE, ignore_errors=True)


@pytest.fixture(autouse=True)
def _report_settings(settings: Any, request: pytest.FixtureRequest) -> None:
    settings.REPORT_STORAGE_DIR = REPORT_STORE
    if "orthanc" in request.fixturenames or "orthanc_clean" in request.fixturenames:
        orthanc = request.getfixturevalue("orthanc")
        for name, value in orthanc.settings_overrides().items():
            setattr(settings, name, value)


@pytest.fixture
def api_for() -> Any:
    return client_for
