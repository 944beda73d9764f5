"""Beat's jobs: re-dispatch stranded work, expire and clean up old uploads."""

import io
import os
from datetime import timedelta

import pytest
from django.utils import timezone

from uploads import storage
from uploads.models import UploadSession, UploadState
from uploads.services import chunk_store, uploads_cleanup, uploads_redispatch
from uploads.services.ingest import ManifestFile, UploadInit, upload_init
from uploads.services.leases import lease_claim, lease_renew
from uploads.services.maintenance import DELIVERY_FAILURE_CODES
from uploads.tests.helpers import content_md5

pytestmark = pytest.mark.django_db


def new_upload(user) -> UploadSession:
    request = UploadInit(
        files=[ManifestFile(name="a.dcm", size=1000)],
        metadata={},
        clinical_notes="",
        service_level="routine",
        chunk_size=256 * 1024,
        allow_partial=False,
        force_upload=False,
    )
    return upload_init(owner=user, request=request)


def test_only_one_of_two_racing_workers_gets_the_lease(user):
    session = new_upload(user)
    UploadSession.objects.filter(pk=session.pk).update(state=UploadState.PROCESSING)
    first = lease_claim(upload_id=session.pk, states=[UploadState.PROCESSING])
    second = lease_claim(upload_id=session.pk, states=[UploadState.PROCESSING])
    assert first and second is None
    assert lease_renew(upload_id=session.pk, token=first, state=UploadState.PROCESSING)
    assert not lease_renew(upload_id=session.pk, token="someone-else", state=UploadState.PROCESSING)


def test_expired_lease_can_be_taken_over(user):
    session = new_upload(user)
    UploadSession.objects.filter(pk=session.pk).update(
        state=UploadState.FORWARDING,
        lease_until=timezone.now() - timedelta(seconds=1),
        lease_owner="dead",
    )
    assert lease_claim(upload_id=session.pk, states=[UploadState.FORWARDING])


# Re-dispatch (on the real broker) is tested in test_services_redispatch.py.


def test_cleanup_expires_idle_receiving_uploads_and_deletes_their_bytes(user, settings):
    idle = new_upload(user)
    fresh = new_upload(user)
    old = timezone.now() - settings.UPLOAD_RESUME_WINDOW - timedelta(minutes=1)
    UploadSession.objects.filter(pk=idle.pk).update(created_at=old)
    uploads_cleanup()
    idle.refresh_from_db()
    assert idle.state == UploadState.FAILED and idle.error["code"] == "upload_expired"
    assert idle.files_deleted and not storage.stream_exists(upload_id=idle.pk)
    fresh.refresh_from_db()
    assert fresh.state == UploadState.RECEIVING and storage.stream_exists(upload_id=fresh.pk)


def test_a_recent_chunk_keeps_an_old_upload_resumable(user, settings):
    session = new_upload(user)
    data = os.urandom(1000)
    chunk_store(
        session=session, index=0, body=io.BytesIO(data), length=1000, content_md5=content_md5(data)
    )
    old = timezone.now() - settings.UPLOAD_RESUME_WINDOW - timedelta(minutes=1)
    UploadSession.objects.filter(pk=session.pk).update(created_at=old)
    uploads_cleanup()
    session.refresh_from_db()
    assert session.state == UploadState.RECEIVING


@pytest.mark.parametrize("code", sorted(DELIVERY_FAILURE_CODES))
def test_failed_deliveries_keep_their_files_through_the_retry_window(user, settings, code):
    unreachable = {"code": code, "message": "", "hint": ""}
    recent = new_upload(user)
    UploadSession.objects.filter(pk=recent.pk).update(
        state=UploadState.FAILED,
        failed_at=timezone.now(),
        received_at=timezone.now(),
        error=unreachable,
    )
    expired = new_upload(user)
    UploadSession.objects.filter(pk=expired.pk).update(
        state=UploadState.FAILED,
        received_at=timezone.now(),
        failed_at=timezone.now() - settings.PACS_RETRY_WINDOW - timedelta(hours=1),
        error=unreachable,
    )
    uploads_cleanup()
    assert storage.stream_exists(upload_id=recent.pk)
    assert not storage.stream_exists(upload_id=expired.pk)


def test_failures_that_no_retry_can_use_lose_their_files_at_once(user):
    """Checks that refused the files, or checking that kept crashing: only a new upload
    helps, so the bytes are not kept for the PACS retry window."""
    sessions = []
    for code in ("processing_failed", "invalid_files", "archive_too_large", "no_dicom_files"):
        session = new_upload(user)
        UploadSession.objects.filter(pk=session.pk).update(
            state=UploadState.FAILED,
            failed_at=timezone.now(),
            received_at=timezone.now(),
            error={"code": code, "message": "", "hint": ""},
        )
        sessions.append(session)
    assert uploads_cleanup() == len(sessions)
    assert not any(storage.stream_exists(upload_id=s.pk) for s in sessions)
    assert all(UploadSession.objects.filter(files_deleted=True, pk=s.pk) for s in sessions)


def test_processing_that_keeps_crashing_ends_failed_not_forever(user):
    session = new_upload(user)
    UploadSession.objects.filter(pk=session.pk).update(
        state=UploadState.PROCESSING, attempts=5, lease_until=timezone.now() - timedelta(seconds=1)
    )
    uploads_redispatch()
    session.refresh_from_db()
    assert session.state == UploadState.FAILED
    assert session.error["code"] == "processing_failed"
