"""After a restore: uploads under way are reconciled with the bytes the upload storage still
holds (uploads.services.recovery), on local disk and in S3 (the moto server)."""

from __future__ import annotations

import io
import os
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from relaypacs.errors import ApplicationError
from uploads import storage
from uploads.models import UploadChunk, UploadChunkCounter, UploadSession, UploadState
from uploads.selectors import upload_status
from uploads.services import chunk_store, upload_complete, upload_retry
from uploads.services.ingest import ManifestFile, UploadInit, upload_init
from uploads.services.recovery import uploads_reconcile
from uploads.tests.helpers import content_md5

pytestmark = pytest.mark.django_db

CHUNK = 256 * 1024
CHUNKS = 4


def _new_upload(user: Any) -> UploadSession:
    request = UploadInit(
        files=[ManifestFile(name="a.dcm", size=CHUNK * CHUNKS)],
        metadata={},
        clinical_notes="",
        service_level="routine",
        chunk_size=CHUNK,
        allow_partial=False,
        force_upload=True,
    )
    return upload_init(owner=user, request=request)


def _send(session: UploadSession, index: int) -> bytes:
    data = bytes([index + 1]) * CHUNK
    chunk_store(
        session=session,
        index=index,
        body=io.BytesIO(data),
        length=len(data),
        content_md5=content_md5(data),
    )
    return data


def _counter(session: UploadSession) -> int:
    return UploadChunkCounter.objects.get(session=session).bytes_received


def _lose_local_bytes(session: UploadSession) -> None:
    shutil.rmtree(Path(storage.storage_root()) / str(session.pk))


def test_a_receiving_upload_whose_bytes_are_gone_asks_for_every_chunk_again(user, settings):
    settings.UPLOAD_STORAGE = "local"
    session = _new_upload(user)
    for index in (0, 1):
        _send(session, index)
    _lose_local_bytes(session)  # a new host: upload bytes are never in a backup

    summary = uploads_reconcile()

    assert (summary.checked, summary.resumable, summary.chunks_to_resend) == (1, 1, 2)
    session.refresh_from_db()
    status = upload_status(session=session)
    assert status["state"] == UploadState.RECEIVING
    assert status["missing_chunks"] == [0, 1, 2, 3]
    assert status["bytes_received"] == 0 and _counter(session) == 0
    # The stream is back, so the chunks sent again are stored.
    sent = [_send(session, index) for index in range(CHUNKS)]
    upload_complete(session=session)
    with storage.open_range(upload_id=session.pk, offset=0, size=CHUNK * CHUNKS) as reader:
        assert reader.read() == b"".join(sent)
    assert uploads_reconcile().resumable == 0  # idempotent: nothing more to forget


def test_in_s3_only_the_chunks_missing_from_the_bucket_are_asked_for_again(
    user, s3_settings, settings
):
    session = _new_upload(user)
    for index in (0, 1, 2):
        _send(session, index)
    client = s3_settings.client()
    client.delete_object(Bucket=s3_settings.bucket, Key=f"uploads/{session.pk}/chunks/{CHUNK:020d}")

    summary = uploads_reconcile()

    assert (summary.resumable, summary.chunks_to_resend) == (1, 1)
    status = upload_status(session=session)
    assert status["missing_chunks"] == [1, 3]
    assert _counter(session) == 2 * CHUNK == status["bytes_received"]
    assert set(UploadChunk.objects.filter(session=session).values_list("index", flat=True)) == {
        0,
        2,
    }
    _send(session, 1)
    _send(session, 3)
    assert upload_status(session=session)["missing_chunks"] == []
    storage.stream_delete(upload_id=session.pk)


def test_an_upload_past_receiving_whose_bytes_are_gone_fails_with_a_sentence(user, settings):
    settings.UPLOAD_STORAGE = "local"
    lost, intact = _new_upload(user), _new_upload(user)
    for session in (lost, intact):
        for index in range(CHUNKS):
            _send(session, index)
        upload_complete(session=session)  # processing (the task waits on no worker here)
    UploadSession.objects.filter(pk=intact.pk).update(state=UploadState.FORWARDING)
    _lose_local_bytes(lost)

    summary = uploads_reconcile()

    assert (summary.checked, summary.failed, summary.resumable) == (2, 1, 0)
    lost.refresh_from_db()
    intact.refresh_from_db()
    assert intact.state == UploadState.FORWARDING and intact.error is None
    assert lost.state == UploadState.FAILED and lost.lease_until is None
    error = upload_status(session=lost)["error"]
    assert error["code"] == "upload_lost_in_restore"
    assert error["message"] == (
        "The server was restored from a backup after this upload arrived, and the files it "
        "had received were lost."
    )
    assert error["hint"] == "Send the study again as a new upload."
    with pytest.raises(ApplicationError) as refused:
        upload_retry(session=lost)
    assert refused.value.code == "nothing_to_retry"


def test_an_upload_past_its_resume_window_is_left_to_the_cleanup(user, settings):
    settings.UPLOAD_STORAGE = "local"
    session = _new_upload(user)
    _send(session, 0)
    old = timezone.now() - settings.UPLOAD_RESUME_WINDOW - timedelta(minutes=5)
    UploadSession.objects.filter(pk=session.pk).update(created_at=old, last_chunk_at=old)
    _lose_local_bytes(session)

    assert uploads_reconcile().resumable == 0
    assert UploadChunk.objects.filter(session=session, stored=True).count() == 1
    assert not os.path.exists(Path(storage.storage_root()) / str(session.pk))


def _past_receiving(user: Any, dicom: Any) -> UploadSession:
    """An upload that was forwarding at backup time, naming one image (``dicom``)."""
    from uploads.models import FileKind, UploadFile

    session = _new_upload(user)
    for index in range(CHUNKS):
        _send(session, index)
    upload_complete(session=session)
    UploadFile.objects.filter(session=session).update(
        kind=FileKind.DICOM,
        sop_instance_uid=dicom.sop_instance_uid,
        study_instance_uid=dicom.study_instance_uid,
    )
    UploadSession.objects.filter(pk=session.pk).update(state=UploadState.FORWARDING)
    return session


def test_an_upload_the_pacs_lists_after_the_restore_is_completed_and_one_it_lacks_fails(
    user, settings, orthanc_clean, dicom_test_files, django_capture_on_commit_callbacks
):
    from accounts.models import AuditEvent
    from pacs import selectors as pacs_selectors
    from pacs.models import DeliveredInstance
    from uploads.models import PacsStatus, UploadFile

    settings.UPLOAD_STORAGE = "local"
    stored, absent = dicom_test_files[0], dicom_test_files[1]
    orthanc_clean.session.post(
        f"{orthanc_clean.url}/instances", data=stored.path.read_bytes(), timeout=30
    ).raise_for_status()
    delivered, lost = _past_receiving(user, stored), _past_receiving(user, absent)
    _lose_local_bytes(delivered)  # delivered after the backup: its bytes were removed
    _lose_local_bytes(lost)

    with django_capture_on_commit_callbacks(execute=True):
        summary = uploads_reconcile()

    # The receipt records a delivery writes: per destination, per image, and audited.
    (target,) = pacs_selectors.pacs_targets()
    delivered.refresh_from_db()
    record = delivered.receipt["destinations"][target.key]  # type: ignore[index]
    assert record["name"] == target.name and record["confirmed_at"]
    assert record["confirmed_instances"] == 1 and record["found_after_restore"] is True
    assert record["acknowledged"] == [stored.sop_instance_uid]
    assert delivered.destination == target.name
    assert list(
        DeliveredInstance.objects.filter(target_key=target.key).values_list(
            "sop_instance_uid", "study_instance_uid"
        )
    ) == [(stored.sop_instance_uid, stored.study_instance_uid)]
    assert set(
        UploadFile.objects.filter(session=delivered).values_list("pacs_status", flat=True)
    ) == {PacsStatus.STORED}
    upload_status_now = upload_status(session=delivered)
    assert upload_status_now["pacs"]["receipt"][target.key]["confirmed_instances"] == 1
    receipts = AuditEvent.objects.filter(
        action="instances_transferred", object_id=str(delivered.pk)
    )
    assert {(e.detail.get("phase"), e.detail.get("instances")) for e in receipts} >= {
        ("acknowledged", 1)
    }
    assert not DeliveredInstance.objects.filter(sop_instance_uid=absent.sop_instance_uid)

    assert (summary.checked, summary.completed, summary.failed, summary.unchecked) == (2, 1, 1, 0)
    delivered.refresh_from_db()
    lost.refresh_from_db()
    assert delivered.state == UploadState.COMPLETED and delivered.error is None
    assert delivered.completed_at is not None and delivered.lease_owner == ""
    assert lost.state == UploadState.FAILED
    assert lost.error["code"] == "upload_lost_in_restore"  # type: ignore[index]
    assert "1 had lost their files but were found delivered in the PACS" in summary.sentence()
    assert uploads_reconcile().checked == 0  # idempotent: both are settled


def test_when_the_pacs_cannot_be_asked_the_upload_is_left_for_a_later_reconcile(
    user, settings, orthanc_clean, dicom_test_files
):
    settings.UPLOAD_STORAGE = "local"
    dicom = dicom_test_files[0]
    orthanc_clean.session.post(
        f"{orthanc_clean.url}/instances", data=dicom.path.read_bytes(), timeout=30
    ).raise_for_status()
    session = _past_receiving(user, dicom)
    _lose_local_bytes(session)
    orthanc_clean.stop()
    try:
        summary = uploads_reconcile()
    finally:
        orthanc_clean.start()

    assert (summary.unchecked, summary.failed, summary.completed) == (1, 0, 0)
    assert "run `manage.py reconcile_uploads` once the PACS answers" in summary.sentence()
    session.refresh_from_db()
    assert session.state == UploadState.FORWARDING and session.error is None

    later = uploads_reconcile()  # the PACS answers again

    assert (later.completed, later.unchecked) == (1, 0)
    session.refresh_from_db()
    assert session.state == UploadState.COMPLETED


def test_a_receiving_upload_that_moved_on_since_it_was_read_is_left_alone(user, settings):
    from uploads.services.recovery import upload_chunks_forget

    settings.UPLOAD_STORAGE = "local"
    session = _new_upload(user)
    for index in range(CHUNKS):
        _send(session, index)
    upload_complete(session=session)  # processing, after reconcile read it as receiving

    assert upload_chunks_forget(upload_id=session.pk, size=session.total_size, lost=[0, 1]) is False
    assert UploadChunk.objects.filter(session=session, stored=True).count() == CHUNKS
    assert _counter(session) == CHUNK * CHUNKS
    UploadSession.objects.filter(pk=session.pk).update(state=UploadState.RECEIVING)
    assert upload_chunks_forget(upload_id=session.pk, size=session.total_size, lost=[0, 1]) is True
    assert UploadChunk.objects.filter(session=session, stored=True).count() == CHUNKS - 2
    assert _counter(session) == CHUNK * (CHUNKS - 2)


def test_the_receipt_of_an_upload_found_delivered_keeps_what_a_worker_wrote_meanwhile(
    user, settings, orthanc_clean, dicom_test_files
):
    """The receipt is built from the row as it is once the upload is claimed, not from
    the copy read before the (slow) PACS queries: a destination record a worker wrote in
    between, and its warnings, stay."""
    from pacs import selectors as pacs_selectors
    from uploads.services.recovery import _complete

    settings.UPLOAD_STORAGE = "local"
    dicom = dicom_test_files[0]
    stale = _past_receiving(user, dicom)  # read by reconcile before it asks the PACS
    worker_record = {"name": "Other PACS", "acknowledged": ["1.2.3"], "confirmed_at": "x"}
    UploadSession.objects.filter(pk=stale.pk).update(
        receipt={"destinations": {"other": worker_record}}, warnings=["a worker's warning"]
    )
    (target,) = pacs_selectors.pacs_targets()

    assert _complete(
        session=stale,
        now=timezone.now(),
        confirmed=[target],
        instances=[(dicom.sop_instance_uid, dicom.study_instance_uid)],
    )

    stale.refresh_from_db()
    destinations = stale.receipt["destinations"]  # type: ignore[index]
    assert destinations["other"] == worker_record
    assert destinations[target.key]["found_after_restore"] is True
    assert destinations[target.key]["acknowledged"] == [dicom.sop_instance_uid]
    assert stale.warnings == ["a worker's warning"]
    assert stale.state == UploadState.COMPLETED
