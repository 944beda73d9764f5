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

# A fresh folder of this session, always: a REPORT_STORAGE_DIR the developer exported
# (their real report store) is neither written nor removed by the tests. Set in the
# environment before any worker starts, so that a Celery worker of this test session
# (which copies this environment) writes PDFs where the test process reads them.
REPORT_STORE = Path(tempfile.mkdtemp(prefix="relaypacs-reports-"))
_EXPORTED_REPORT_STORE = os.environ.get("REPORT_STORAGE_DIR")
os.environ["REPORT_STORAGE_DIR"] = str(REPORT_STORE)


@pytest.fixture(scope="session", autouse=True)
def _remove_report_store() -> Iterator[None]:
    yield
    shutil.rmtree(REPORT_STORE, ignore_errors=True)  # the folder made above, only
    if _EXPORTED_REPORT_STORE is None:
        os.environ.pop("REPORT_STORAGE_DIR", None)
    else:
        os.environ["REPORT_STORAGE_DIR"] = _EXPORTED_REPORT_STORE


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
