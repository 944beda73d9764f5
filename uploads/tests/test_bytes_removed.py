"""Patient data left behind: after every way an upload ends, its storage folder is gone.

Completed, cancelled, failed while checking, failed while delivering (once the PACS retry
window has passed), expired, rolled back at init and deleted in the admin: nothing of the
upload stays in the upload storage. A deletion that fails (a real file system refusal,
not a mock) leaves ``files_deleted`` false and a later cleanup or sweep removes the bytes.
Time is moved by passing ``now`` or by updating timestamps in the database, never slept.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import resource
import signal
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.db import transaction
from django.utils import timezone

from accounts.models import AuditEvent, User
from relaypacs.errors import ApplicationError
from uploads import storage
from uploads.models import FileKind, UploadFile, UploadSession, UploadState
from uploads.services import upload_retry
from uploads.services.ingest import ManifestFile, UploadInit, upload_init
from uploads.services.maintenance import ORPHAN_GRACE, upload_folders_sweep, uploads_cleanup
from uploads.tasks import upload_process_task
from uploads.tests.broker import private_queue
from uploads.tests.helpers import sample_paths
from uploads.tests.test_pipeline_e2e import send_upload

pytestmark = pytest.mark.django_db(transaction=True)

# ioctl numbers of linux/fs.h: read and set an inode's flags (what chattr does).
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_IMMUTABLE_FL = 0x10


@pytest.fixture(autouse=True)
def own_storage(settings: Any, tmp_path: Path) -> Iterator[Path]:
    """A storage root of this test alone, so that the sweep sees only this test's folders.

    The tasks these tests cause go to a queue no worker reads: the session's worker (if
    an earlier module started it) uses the shared storage root and would take these
    uploads' leases, then fail on files it cannot find. The tests run the tasks themselves.
    """
    root = tmp_path / "upload-storage"
    settings.UPLOAD_STORAGE_DIR = root
    with private_queue():
        yield root


def folder(upload_id: Any) -> Path:
    return Path(django_settings.UPLOAD_STORAGE_DIR) / str(upload_id)


def holds_nothing_of(upload_id: Any) -> bool:
    return not folder(upload_id).exists() and all(
        found != upload_id for found, _ in storage.stored_uploads()
    )


def _set_immutable(path: Path, on: bool) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        flags = array.array("i", [0])
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags, True)
        flags[0] = flags[0] | FS_IMMUTABLE_FL if on else flags[0] & ~FS_IMMUTABLE_FL
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, flags)
    finally:
        os.close(fd)


@contextmanager
def undeletable(upload_id: Any) -> Iterator[None]:
    """Make the file system refuse to delete the upload's stream, for real.

    As root (where permissions do not stop a delete) the stream is marked immutable, as
    ``chattr +i`` does; otherwise its folder is made read-only.
    """
    stream = folder(upload_id) / "stream.bin"
    if os.geteuid() == 0:
        try:
            _set_immutable(stream, True)
        except OSError as exc:
            pytest.skip(f"this file system cannot mark a file immutable ({exc.strerror})")
        try:
            yield
        finally:
            _set_immutable(stream, False)
    else:
        os.chmod(folder(upload_id), 0o500)
        try:
            yield
        finally:
            os.chmod(folder(upload_id), 0o700)


def new_upload(owner: User, size: int = 1000) -> UploadSession:
    return upload_init(
        owner=owner,
        request=UploadInit(
            files=[ManifestFile(name="Doe^Jane/a.dcm", size=size)],
            metadata={},
            clinical_notes="",
            service_level="routine",
            chunk_size=256 * 1024,
            allow_partial=False,
            force_upload=False,
        ),
    )


def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"not an image\n" * 100)
    return path


# --- every path ---------------------------------------------------------------------------


def test_a_completed_upload_leaves_nothing_in_storage(api, orthanc_clean):
    upload = send_upload(api, sample_paths()[:2])
    assert folder(upload["upload_id"]).exists()

    upload_process_task(upload["upload_id"])

    session = UploadSession.objects.get(pk=upload["upload_id"])
    assert session.state == UploadState.COMPLETED, session.error
    assert session.files_deleted and holds_nothing_of(session.pk)


def test_a_cancelled_upload_leaves_nothing_in_storage(api):
    init = api.post(
        "/api/v1/upload/init", {"files": [{"name": "a.dcm", "size": 1000}]}, format="json"
    )
    upload_id = init.json()["upload_id"]
    assert folder(upload_id).exists()

    assert api.delete(f"/api/v1/upload/{upload_id}").status_code == 204

    session = UploadSession.objects.get(pk=upload_id)
    assert session.state == UploadState.CANCELLED
    assert session.files_deleted and holds_nothing_of(upload_id)


def test_an_upload_refused_by_the_checks_leaves_nothing_in_storage(api, tmp_path):
    upload = send_upload(api, [text_file(tmp_path)])

    upload_process_task(upload["upload_id"])

    session = UploadSession.objects.get(pk=upload["upload_id"])
    assert session.state == UploadState.FAILED and session.error["code"] == "no_dicom_files"
    assert session.files_deleted and holds_nothing_of(session.pk)


def test_an_upload_whose_checking_kept_crashing_loses_its_bytes_at_the_next_cleanup(user):
    """Nothing can retry a processing failure: its bytes go at once, not after the PACS
    retry window (which is for failures of delivery)."""
    session = new_upload(user)
    now = timezone.now()
    UploadSession.objects.filter(pk=session.pk).update(
        state=UploadState.FAILED,
        received_at=now,
        failed_at=now,
        error={"code": "processing_failed", "message": "", "hint": ""},
    )

    uploads_cleanup(now=now)

    session.refresh_from_db()
    assert session.files_deleted and holds_nothing_of(session.pk)


def test_a_failed_delivery_keeps_its_bytes_for_retry_until_the_retry_window_passed(api, settings):
    upload = send_upload(api, sample_paths()[:1])
    upload_id = upload["upload_id"]
    UploadFile.objects.filter(session_id=upload_id).update(kind=FileKind.DICOM)
    failed_at = timezone.now()
    UploadSession.objects.filter(pk=upload_id).update(
        state=UploadState.FAILED,
        failed_at=failed_at,
        error={"code": "pacs_unreachable", "message": "", "hint": ""},
    )

    uploads_cleanup(now=failed_at + settings.PACS_RETRY_WINDOW - timedelta(minutes=1))

    session = UploadSession.objects.get(pk=upload_id)
    assert folder(upload_id).exists() and not session.files_deleted
    assert upload_retry(session=session).state in {
        UploadState.FORWARDING,
        UploadState.COMPLETED,
    }

    UploadSession.objects.filter(pk=upload_id).update(
        state=UploadState.FAILED,
        failed_at=failed_at,
        error={"code": "pacs_unreachable", "message": "", "hint": ""},
    )
    uploads_cleanup(now=failed_at + settings.PACS_RETRY_WINDOW + timedelta(minutes=1))

    session.refresh_from_db()
    assert session.files_deleted and holds_nothing_of(upload_id)


def test_an_expired_upload_leaves_nothing_in_storage(user, settings):
    session = new_upload(user)

    uploads_cleanup(now=timezone.now() + settings.UPLOAD_RESUME_WINDOW + timedelta(minutes=1))

    session.refresh_from_db()
    assert session.state == UploadState.FAILED and session.error["code"] == "upload_expired"
    assert session.files_deleted and holds_nothing_of(session.pk)


class _RolledBack(Exception):
    pass


def test_an_init_rolled_back_by_its_caller_is_swept_after_the_grace_period(user):
    with pytest.raises(_RolledBack), transaction.atomic():
        upload_id = new_upload(user).pk
        raise _RolledBack
    assert not UploadSession.objects.filter(pk=upload_id).exists()
    assert folder(upload_id).exists()  # an outer rollback is not seen by upload_init

    assert upload_folders_sweep(now=timezone.now()) == 0  # an init may still be in flight
    assert folder(upload_id).exists()

    assert upload_folders_sweep(now=timezone.now() + ORPHAN_GRACE + timedelta(seconds=1)) == 1
    assert holds_nothing_of(upload_id)


@contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """A real "file too large" (EFBIG) for any file grown past ``limit`` in this process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_an_init_that_fails_after_creating_its_folder_removes_it_at_once(user, own_storage):
    storage.storage_root()
    with file_size_limit(1024 * 1024), pytest.raises(OSError) as raised:
        new_upload(user, size=4 * 1024 * 1024)

    assert raised.value.errno == errno.EFBIG
    assert not UploadSession.objects.exists()
    assert list(own_storage.iterdir()) == []


@pytest.fixture
def admin_client(client: Any) -> Any:
    root = User.objects.create_superuser("root", "root@example.org", "Root-Password-123")
    client.force_login(root)
    client.root = root
    return client


def test_an_upload_deleted_in_the_admin_leaves_nothing_and_is_audited(admin_client, user):
    session = new_upload(user)

    response = admin_client.post(
        f"/admin/uploads/uploadsession/{session.pk}/delete/", {"post": "yes"}
    )

    assert response.status_code == 302, response.content[:2000]
    assert not UploadSession.objects.filter(pk=session.pk).exists()
    assert holds_nothing_of(session.pk)
    recorded = AuditEvent.objects.get(action="instances_accessed", object_id=str(session.pk))
    assert recorded.user == admin_client.root
    assert recorded.detail["change"] == "deleted" and recorded.detail["owner_id"] == user.pk


def test_uploads_deleted_with_the_admins_bulk_action_leave_nothing(admin_client, user):
    sessions = [new_upload(user), new_upload(user)]

    response = admin_client.post(
        "/admin/uploads/uploadsession/",
        {
            "action": "delete_selected",
            "_selected_action": [str(s.pk) for s in sessions],
            "post": "yes",
        },
    )

    assert response.status_code == 302, response.content[:2000]
    assert not UploadSession.objects.exists()
    assert all(holds_nothing_of(s.pk) for s in sessions)
    audited = AuditEvent.objects.filter(action="instances_accessed")
    assert sorted(audited.values_list("object_id", flat=True)) == sorted(
        str(s.pk) for s in sessions
    )


# --- deletions that fail are retried -------------------------------------------------------


def test_a_cancel_whose_deletion_fails_stays_marked_and_the_next_cleanup_deletes(api, caplog):
    init = api.post(
        "/api/v1/upload/init", {"files": [{"name": "Doe^Jane.dcm", "size": 1000}]}, format="json"
    )
    upload_id = init.json()["upload_id"]

    with undeletable(upload_id):
        assert api.delete(f"/api/v1/upload/{upload_id}").status_code == 204
        assert uploads_cleanup() == 0  # still refused: tried again, still marked

    session = UploadSession.objects.get(pk=upload_id)
    assert session.state == UploadState.CANCELLED
    assert not session.files_deleted and folder(upload_id).exists()
    assert f"could not delete the files of upload {upload_id}" in caplog.text
    assert "Doe" not in caplog.text and "stream.bin" not in caplog.text

    assert uploads_cleanup() == 1

    session.refresh_from_db()
    assert session.files_deleted and holds_nothing_of(upload_id)


def test_a_refused_upload_whose_deletion_fails_is_deleted_by_the_next_cleanup(api, tmp_path):
    upload = send_upload(api, [text_file(tmp_path)])
    upload_id = upload["upload_id"]

    with undeletable(upload_id):
        upload_process_task(upload_id)

    session = UploadSession.objects.get(pk=upload_id)
    assert session.state == UploadState.FAILED and not session.files_deleted

    uploads_cleanup()

    session.refresh_from_db()
    assert session.files_deleted and holds_nothing_of(upload_id)


def test_an_admin_deletion_whose_bytes_resist_is_finished_by_the_sweep(admin_client, user):
    session = new_upload(user)

    with undeletable(session.pk):
        admin_client.post(f"/admin/uploads/uploadsession/{session.pk}/delete/", {"post": "yes"})
    assert not UploadSession.objects.filter(pk=session.pk).exists()
    assert folder(session.pk).exists()

    upload_folders_sweep(now=timezone.now() + ORPHAN_GRACE + timedelta(seconds=1))

    assert holds_nothing_of(session.pk)


# --- the sweep --------------------------------------------------------------------------------


def test_the_sweep_removes_what_a_late_worker_wrote_after_the_bytes_were_deleted(user):
    """A worker still unpacking when the upload was cancelled writes its work folder again."""
    session = new_upload(user)
    UploadSession.objects.filter(pk=session.pk).update(state=UploadState.CANCELLED)
    uploads_cleanup()
    assert holds_nothing_of(session.pk)
    (storage.work_reset(upload_id=session.pk) / "Doe^Jane.dcm").write_bytes(b"late")

    upload_folders_sweep(now=timezone.now() + ORPHAN_GRACE + timedelta(seconds=1))

    assert holds_nothing_of(session.pk)


def test_the_sweep_keeps_live_uploads_and_what_is_not_an_upload_folder(user, own_storage):
    live = new_upload(user)
    other = own_storage / "operator-notes"
    other.mkdir()
    (own_storage / "not-a-uuid.bin").write_bytes(b"x")

    assert upload_folders_sweep(now=timezone.now() + ORPHAN_GRACE + timedelta(days=30)) == 0

    assert storage.stream_exists(upload_id=live.pk)
    assert other.is_dir() and (own_storage / "not-a-uuid.bin").exists()


def test_the_sweep_runs_hourly_on_the_beat_schedule():
    entry = django_settings.CELERY_BEAT_SCHEDULE["uploads-sweep"]
    assert entry["task"] == "uploads.tasks.upload_folders_sweep"
    assert entry["schedule"] == 3600
    assert timedelta(minutes=30) <= ORPHAN_GRACE  # far longer than any init takes


def test_only_folders_named_exactly_as_an_upload_id_count_as_upload_folders(own_storage):
    upload_id = uuid.uuid4()
    storage.stream_create(upload_id=upload_id, size=10)
    (own_storage / upload_id.hex).mkdir()  # the same id, spelled otherwise: not ours
    (own_storage / f"{{{upload_id}}}").mkdir()

    assert [found for found, _ in storage.stored_uploads()] == [upload_id]
    assert storage.stream_delete(upload_id=upload_id) and holds_nothing_of(upload_id)
    assert storage.stream_delete(upload_id=upload_id)  # nothing there: deleted already


def test_a_retry_that_races_the_cleanup_of_its_files_is_refused_not_sent_without_them(
    api, settings
):
    upload = send_upload(api, sample_paths()[:1])
    upload_id = upload["upload_id"]
    UploadFile.objects.filter(session_id=upload_id).update(kind=FileKind.DICOM)
    failed_at = timezone.now()
    UploadSession.objects.filter(pk=upload_id).update(
        state=UploadState.FAILED,
        failed_at=failed_at,
        error={"code": "pacs_unreachable", "message": "", "hint": ""},
    )
    # The person opened the upload (still failed, files there) and presses retry just as
    # the cleanup, a week later, removes the files.
    seen_by_the_retry = UploadSession.objects.get(pk=upload_id)
    uploads_cleanup(now=failed_at + settings.PACS_RETRY_WINDOW + timedelta(minutes=1))

    with pytest.raises(ApplicationError) as refused:
        upload_retry(session=seen_by_the_retry)

    assert refused.value.code == "nothing_to_retry"
    session = UploadSession.objects.get(pk=upload_id)
    assert session.state == UploadState.FAILED and session.files_deleted
    assert holds_nothing_of(upload_id)


def test_a_retry_pressed_before_the_cleanup_keeps_the_files(api, settings):
    upload = send_upload(api, sample_paths()[:1])
    upload_id = upload["upload_id"]
    UploadFile.objects.filter(session_id=upload_id).update(kind=FileKind.DICOM)
    failed_at = timezone.now() - settings.PACS_RETRY_WINDOW - timedelta(minutes=1)
    UploadSession.objects.filter(pk=upload_id).update(
        state=UploadState.FAILED,
        failed_at=failed_at,
        error={"code": "pacs_unreachable", "message": "", "hint": ""},
    )
    # The cleanup listed the upload as removable, then the retry won the row.
    upload_retry(session=UploadSession.objects.get(pk=upload_id))
    from uploads.services.removal import failed_upload_files_delete

    assert failed_upload_files_delete(upload_id=upload_id) is None
    session = UploadSession.objects.get(pk=upload_id)
    assert not session.files_deleted and folder(upload_id).exists()
