"""The statistics of a real upload: sent through the API, checked and delivered by the
session's real Celery worker to the real Orthanc; the worker's domain events keep the
rollups, and the stats answer what happened with every part of the time measured."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from accounts.models import Role
from accounts.tests.factories import FacilityFactory, UserFactory
from analytics.models import UploadRollup
from analytics.services import rollups_current, rollups_recomputed
from uploads.tests.fixtures import client_for
from uploads.tests.helpers import content_md5, iter_file_chunks, manifest, sample_paths

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
CHUNK = 256 * 1024
# The worker checks and delivers a few small files; generous on a loaded machine.
PIPELINE_SECONDS = 180


@pytest.fixture(autouse=True)
def _pipeline_settings(settings: Any, upload_storage_dir: Path, orthanc: Any) -> None:
    settings.UPLOAD_STORAGE_DIR = upload_storage_dir
    for name, value in orthanc.settings_overrides().items():
        setattr(settings, name, value)


def _poll(check: Any, what: str) -> Any:
    deadline = time.monotonic() + PIPELINE_SECONDS
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(what)


def test_a_delivered_upload_is_counted_with_each_part_of_its_time(
    celery_worker: Any, orthanc_clean: Any
) -> None:
    clinic = FacilityFactory(code="pipeline", name="Pipeline Clinic")
    tech = UserFactory(username="pipe-tech", role=Role.RADIOGRAPHER, facility=clinic)
    api = client_for(tech)
    paths = sample_paths()
    init = api.post(
        "/api/v1/upload/init",
        manifest(paths, chunk_size=CHUNK, service_level="urgent"),
        format="json",
    )
    assert init.status_code == 201, init.json()
    upload_id = init.json()["upload_id"]
    for index, data in iter_file_chunks(paths, CHUNK):
        answer = api.put(
            f"/api/v1/upload/{upload_id}/chunk?index={index}",
            data=data,
            content_type="application/octet-stream",
            HTTP_CONTENT_MD5=content_md5(data),
        )
        assert answer.status_code == 200, answer.json()
    assert api.post(f"/api/v1/upload/{upload_id}/complete").status_code == 202

    row = _poll(
        lambda: UploadRollup.objects.filter(grain="day", outcome="completed").first(),
        f"upload {upload_id} was not counted as completed",
    )
    assert (row.uploads, row.service_level, row.facility_id) == (1, "urgent", clinic.pk)
    assert (row.upload_timed, row.transfer_timed, row.processing_timed) == (1, 1, 1)
    assert row.forwarding_timed == 1 and row.confirmation_timed == 0
    assert row.upload_ms >= row.processing_ms + row.forwarding_ms
    assert not UploadRollup.objects.filter(outcome="in_progress").exists()
    assert rollups_current() == rollups_recomputed()[0]

    body = api.get("/api/v1/upload/stats", {"period": "1w"}).json()
    assert body["total_uploads"] == 1
    assert body["outcomes"]["completed"] == 1
    assert body["success_rate"] == 1.0
    assert all(
        v is not None for k, v in body["average_parts_seconds"].items() if k != "confirmation"
    )
