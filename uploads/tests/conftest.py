"""Fixtures of the upload pipeline tests: users, API clients, a real Celery worker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from accounts.tests.factories import UserFactory

# The session's Celery worker and storage folder are in uploads/tests/fixtures.py (shared
# by every app's tests); client_for is re-exported for the modules that import it here.
from uploads.tests.fixtures import TEST_LEASE_SECONDS, CeleryWorker, client_for

__all__ = ["TEST_LEASE_SECONDS", "CeleryWorker", "client_for"]


@pytest.fixture(autouse=True)
def _pipeline_settings(
    settings: Any, upload_storage_dir: Path, request: pytest.FixtureRequest
) -> None:
    """Point this process at the shared storage folder and, when present, the test Orthanc."""
    settings.UPLOAD_STORAGE_DIR = upload_storage_dir
    if "orthanc" in request.fixturenames or "orthanc_clean" in request.fixturenames:
        orthanc = request.getfixturevalue("orthanc")
        settings.PACS_DICOMWEB_URL = orthanc.dicomweb_url
        settings.PACS_ORTHANC_URL = orthanc.url
        settings.PACS_USERNAME, settings.PACS_PASSWORD = orthanc.auth


@pytest.fixture
def user(db: None) -> Any:
    return UserFactory()


@pytest.fixture
def api(user: Any) -> APIClient:
    return client_for(user)


@pytest.fixture
def other_api(db: None) -> APIClient:
    return client_for(UserFactory())


@pytest.fixture
def report_store(settings: Any, tmp_path: Path) -> Path:
    """A report store with one signed report PDF, as backups copy it (the backup tests)."""
    settings.REPORT_STORAGE_DIR = tmp_path / "reports"
    (tmp_path / "reports" / "4").mkdir(parents=True)
    (tmp_path / "reports" / "4" / "v1-report.pdf").write_bytes(b"%PDF-1.7 a signed report")
    return tmp_path / "reports"


@pytest.fixture
def drf_authenticated(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of the chunk PUTs DRF authenticated (or tried to). The lean chunk endpoint
    (uploads.chunk_endpoint) never authenticates through DRF: a chunk PUT it served itself,
    or refused itself, leaves this list as it was; one it passed on to Django adds to it."""
    from accounts.authentication import SessionJWTAuthentication
    from uploads.authentication import UploadTokenAuthentication

    reached: list[str] = []
    for cls in (SessionJWTAuthentication, UploadTokenAuthentication):

        def authenticate(self: Any, request: Any, _original: Any = cls.authenticate) -> Any:
            if request.path.endswith("/chunk"):
                reached.append(request.path)
            return _original(self, request)

        monkeypatch.setattr(cls, "authenticate", authenticate)
    return reached
