"""End to end with a real worker and Orthanc: a study sent through the upload API opens an
``assigned`` report; signed through the API, a worker renders its PDF and it turns ready."""

from __future__ import annotations

import time
from typing import Any

import pytest

from accounts.models import Role
from accounts.tests.factories import UserFactory
from uploads.tests.fixtures import client_for
from uploads.tests.helpers import sample_paths
from uploads.tests.test_pipeline_e2e import FINAL, send_upload, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def poll(fetch: Any, done: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    value = fetch()
    while not done(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"not done in {timeout} s: {value}")
        time.sleep(0.2)
        value = fetch()
    return value


def test_an_upload_opens_a_report_that_is_signed_and_downloaded(
    settings, upload_storage_dir, celery_worker, orthanc_clean
):
    settings.UPLOAD_STORAGE_DIR = upload_storage_dir
    sender = client_for(UserFactory(role=Role.CLINICIAN))
    reader = client_for(UserFactory(role=Role.RADIOLOGIST))
    upload = send_upload(
        sender,
        sample_paths(["test_files/CT_small.dcm"]),
        clinical_notes="Fall from a ladder.",
        service_level="urgent",
    )
    assert wait_for(sender, upload["upload_id"], FINAL)["state"] == "completed"
    url = f"/api/v1/reports/upload/{upload['upload_id']}"
    report = poll(lambda: sender.get(url), lambda r: r.status_code == 200).json()
    assert (report["status"], report["service_level"]) == ("assigned", "urgent")
    assert report["upload_ids"] == [upload["upload_id"]]
    rid = report["id"]
    assert reader.post(f"/api/v1/reports/{rid}/claim").status_code == 200
    signed = reader.post(f"/api/v1/reports/{rid}/sign", {"findings": "No fracture."})
    assert signed.status_code == 200 and signed.json()["status"] == "pending"
    ready = poll(
        lambda: sender.get(f"/api/v1/reports/{rid}").json(), lambda r: r["status"] == "ready"
    )
    assert ready["versions"][0]["pdf_available"] and not ready["signing"]
    download = sender.get(f"/api/v1/reports/{rid}/download")
    assert download.status_code == 200
    assert b"".join(download.streaming_content).startswith(b"%PDF-")
