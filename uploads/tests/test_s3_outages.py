"""S3 mode when the storage goes away or the upload does: an outage of the bucket (a relay
in front of the real moto server that drops every connection) makes processing and
forwarding wait, never fail the upload or delete its bytes; a cancel racing a chunk PUT
or the publish of derived files leaves nothing of the upload in the bucket.

Uploads are received through the API and handed to the services directly, as in
``test_services_processing``, so that no worker of another test picks them up.
"""

from __future__ import annotations

import shutil
import zipfile
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.utils import timezone

from accounts.tests.factories import UserFactory
from uploads import dicom, storage
from uploads.models import FileKind, UploadFile, UploadSession, UploadState
from uploads.services.forwarding import upload_forward
from uploads.services.ingest import upload_cancel
from uploads.services.maintenance import MAX_PROCESSING_ATTEMPTS, _fail_poisoned
from uploads.services.processing import upload_process
from uploads.tests.fixtures import client_for
from uploads.tests.helpers import content_md5, iter_file_chunks, manifest, sample_paths, sop_uid
from uploads.tests.s3_server import S3Outage, S3ServerForTests
from uploads.tests.test_services_processing import CHUNK, received_upload

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def s3_outage(s3_settings: S3ServerForTests, settings: Any) -> Any:
    """This test process in S3 mode through a relay that the test takes down and up."""
    outage = S3Outage(s3_settings.endpoint_url)
    settings.S3_ENDPOINT_URL = outage.endpoint_url
    yield outage
    outage.close()


@pytest.fixture
def quick_s3(monkeypatch: pytest.MonkeyPatch, settings: Any, tmp_path: Path) -> None:
    """One attempt per S3 request (botocore's backoff would only slow the test down) and a
    scratch folder of this test's own."""
    from uploads.storage import s3

    monkeypatch.setattr(s3, "MAX_ATTEMPTS", 1)
    settings.UPLOAD_STORAGE_DIR = tmp_path / "uploads"


def _study(tmp_path: Path) -> tuple[list[Path], list[Path]]:
    """Loose images and a ZIP of more (derived files to publish); and every image."""
    images = sample_paths()[:6]
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in images[3:]:
            handle.write(path, arcname=f"DICOM/{path.name}")
    return [*images[:3], archive], images


def _lease(upload_id: Any) -> tuple[str, str, Any, int]:
    session = UploadSession.objects.get(pk=upload_id)
    return session.state, session.lease_owner, session.lease_until, session.attempts


@pytest.mark.e2e
def test_an_s3_outage_makes_processing_and_forwarding_wait_uncounted_then_it_completes(
    s3_outage, quick_s3, orthanc_clean, tmp_path, settings
):
    paths, images = _study(tmp_path)
    upload_id = received_upload(client_for(UserFactory()), paths, clinical_notes="Query fracture.")
    # One claim short of the poison limit: a counted outage would fail the upload.
    UploadSession.objects.filter(pk=upload_id).update(attempts=MAX_PROCESSING_ATTEMPTS - 1)

    s3_outage.down()
    for _ in range(2):
        with pytest.raises(storage.StorageUnavailable):
            upload_process(upload_id=upload_id)
    assert s3_outage.refused > 0
    # Given back at once (no lease held for UPLOAD_LEASE_SECONDS) and not counted.
    assert _lease(upload_id) == ("processing", "", None, MAX_PROCESSING_ATTEMPTS - 1)
    _fail_poisoned(now=timezone.now() + timedelta(seconds=settings.UPLOAD_LEASE_SECONDS + 60))
    session = UploadSession.objects.get(pk=upload_id)
    assert session.state == UploadState.PROCESSING and not session.files_deleted
    assert not UploadFile.objects.filter(session_id=upload_id, kind=FileKind.REJECTED).exists()

    s3_outage.up()
    assert upload_process(upload_id=upload_id) is True
    attempts = UploadSession.objects.get(pk=upload_id).attempts

    s3_outage.down()  # forwarding reads the images (and the derived files) from the bucket
    with pytest.raises(storage.StorageUnavailable):
        upload_forward(upload_id=upload_id)
    assert _lease(upload_id) == ("forwarding", "", None, attempts)
    assert UploadSession.objects.get(pk=upload_id).error is None

    s3_outage.up()
    upload_forward(upload_id=upload_id)

    session = UploadSession.objects.get(pk=upload_id)
    assert session.state == UploadState.COMPLETED, session.error
    for path in images:
        assert orthanc_clean.instance_file(sop_uid(path)) == path.read_bytes(), path.name
    assert s3_outage_keys(upload_id) == []


def s3_outage_keys(upload_id: Any) -> list[str]:
    from uploads.storage import s3

    listed = s3.client().list_objects_v2(Bucket=s3._bucket(), Prefix=f"uploads/{upload_id}/")
    return [item["Key"] for item in listed.get("Contents", [])]


def test_an_outage_inside_the_dicom_parser_is_not_taken_for_a_damaged_file(s3_outage, quick_s3):
    upload_id = received_upload(client_for(UserFactory()), sample_paths()[:2])
    real = dicom.dcmread
    calls = []

    def storage_goes_down_then_parse(*args: Any, **kwargs: Any) -> Any:
        # After inspect_instance read the DICM prefix, before pydicom reads the header:
        # pydicom's read error would be "the file is not valid DICOM".
        calls.append(1)
        s3_outage.down()
        return real(*args, **kwargs)

    with (
        mock.patch.object(dicom, "dcmread", side_effect=storage_goes_down_then_parse),
        pytest.raises(storage.StorageUnavailable),
    ):
        upload_process(upload_id=upload_id)

    assert calls  # the parser ran with the storage down
    assert _lease(upload_id)[:2] == ("processing", "")
    assert not UploadFile.objects.filter(session_id=upload_id, kind=FileKind.REJECTED).exists()
    s3_outage.up()
    assert upload_process(upload_id=upload_id) is True
    assert UploadFile.objects.filter(session_id=upload_id, kind=FileKind.DICOM).count() == 2


def test_a_chunk_that_lands_after_its_upload_was_cancelled_is_deleted_and_refused(
    s3_settings, settings, tmp_path
):
    settings.UPLOAD_STORAGE_DIR = tmp_path / "uploads"
    paths = sample_paths()[:2]
    api = client_for(UserFactory())
    init = api.post("/api/v1/upload/init", manifest(paths, chunk_size=CHUNK), format="json")
    assert init.status_code == 201, init.json()
    upload_id = init.json()["upload_id"]
    (first, data), *_ = list(iter_file_chunks(paths, CHUNK))
    real = storage.stream_write

    def cancelled_while_on_its_way(**kwargs: Any) -> None:
        # The state was checked before the write; the cancel (and its deletion of the
        # upload's objects) lands between that check and the PUT.
        upload_cancel(session=UploadSession.objects.get(pk=upload_id))
        assert s3_settings.keys(f"uploads/{upload_id}/") == []
        real(**kwargs)

    with mock.patch.object(
        storage, "stream_write", autospec=True, side_effect=cancelled_while_on_its_way
    ):
        response = api.put(
            f"/api/v1/upload/{upload_id}/chunk?index={first}",
            data=data,
            content_type="application/octet-stream",
            HTTP_CONTENT_MD5=content_md5(data),
        )

    assert response.status_code == 409, response.json()
    assert response.json()["error"]["code"] == "upload_not_receiving"
    assert s3_settings.keys(f"uploads/{upload_id}/") == []


def test_derived_files_published_while_the_upload_was_cancelled_are_deleted(
    s3_settings, settings, tmp_path
):
    settings.UPLOAD_STORAGE_DIR = tmp_path / "uploads"
    paths, _ = _study(tmp_path)
    upload_id = received_upload(client_for(UserFactory()), paths, clinical_notes="Query fracture.")
    real = storage.work_publish
    published: list[list[str]] = []

    def cancelled_while_publishing(*, upload_id: Any) -> None:
        # The cancel is taken by another node: this node's scratch folder stays.
        scratch = storage.work_dir(upload_id=upload_id)
        shutil.copytree(scratch, tmp_path / "kept")
        upload_cancel(session=UploadSession.objects.get(pk=upload_id))
        shutil.copytree(tmp_path / "kept", scratch)
        real(upload_id=upload_id)  # derived files go up after the cancel deleted the rest
        published.append([k for k in s3_settings.keys(f"uploads/{upload_id}/") if "/work/" in k])

    with mock.patch.object(
        storage, "work_publish", autospec=True, side_effect=cancelled_while_publishing
    ):
        assert upload_process(upload_id=upload_id) is False

    assert published and published[0]  # the race happened: files were put after the cancel
    assert UploadSession.objects.get(pk=upload_id).state == UploadState.CANCELLED
    assert s3_settings.keys(f"uploads/{upload_id}/") == []
    assert not storage.work_dir(upload_id=upload_id).exists()


def test_an_upload_cancelled_before_the_publish_publishes_nothing(s3_settings, settings, tmp_path):
    from uploads.services import processing

    settings.UPLOAD_STORAGE_DIR = tmp_path / "uploads"
    paths, _ = _study(tmp_path)
    upload_id = received_upload(client_for(UserFactory()), paths, clinical_notes="Query fracture.")
    real = processing.clinical_objects_make

    def cancelled_after_the_results_were_written(**kwargs: Any) -> Any:
        upload_cancel(session=UploadSession.objects.get(pk=upload_id))
        return real(**kwargs)

    with (
        mock.patch.object(
            processing,
            "clinical_objects_make",
            autospec=True,
            side_effect=cancelled_after_the_results_were_written,
        ),
        mock.patch.object(storage, "work_publish", autospec=True) as publish,
    ):
        assert upload_process(upload_id=upload_id) is False

    publish.assert_not_called()
    assert s3_settings.keys(f"uploads/{upload_id}/") == []
