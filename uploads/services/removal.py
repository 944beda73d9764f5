"""Removing what an upload stored: its bytes (patient data), or the whole upload (admin)."""

from __future__ import annotations

import uuid

from django.db import transaction

from accounts.clientinfo import ClientInfo
from accounts.models import User
from accounts.services import audit_record

from .. import storage
from ..models import UploadSession, UploadState


def upload_files_delete(*, upload_id: uuid.UUID) -> bool:
    """Delete the upload's bytes; mark it ``files_deleted`` only once they are gone.

    Idempotent. Returns False when the files could not all be deleted (storage logs why,
    without patient data): the upload stays unmarked and ``uploads_cleanup`` tries again
    on its next run.
    """
    if not storage.stream_delete(upload_id=upload_id):
        return False
    UploadSession.objects.filter(pk=upload_id, files_deleted=False).update(files_deleted=True)
    if storage.stream_write_recreates():
        # A racing retry of a chunk can land in the bucket after the first pass (S3 puts
        # recreate what was deleted). Such a chunk re-reads the upload after landing
        # (chunks._ensure_still_wanted): if that read came before the mark above, this
        # second pass, after the mark, removes it; if after, the chunk removes itself.
        storage.stream_delete(upload_id=upload_id)
    return True


def failed_upload_files_delete(*, upload_id: uuid.UUID) -> bool | None:
    """Delete a ``failed`` upload's bytes, first marking them gone while it is still failed.

    The mark comes first so that a retry pressed at the same moment (it needs the files,
    see ``transitions.upload_retried``) either wins, and nothing is deleted, or is refused.
    Returns None when the upload left ``failed`` meanwhile (nothing done), False when the
    deletion failed (the mark is taken back, so ``uploads_cleanup`` tries again).
    """
    claimed = UploadSession.objects.filter(
        pk=upload_id, state=UploadState.FAILED, files_deleted=False
    ).update(files_deleted=True)
    if not claimed:
        return None
    if storage.stream_delete(upload_id=upload_id):
        return True
    UploadSession.objects.filter(pk=upload_id).update(files_deleted=False)
    return False


@transaction.atomic
def upload_admin_delete(*, session: UploadSession, by: User | None, client: ClientInfo) -> None:
    """Delete an upload from the admin, audited: its row (with its chunks, files and
    studies) now, its bytes once that commits.

    Should the bytes resist, the failure is logged and the folder, which no longer has an
    upload, is removed by the orphan sweep (``upload_folders_sweep``).
    """
    audit_record(
        action="instances_accessed",
        user=by,
        facility_id=session.facility_id,
        ip_address=client.ip_address,
        user_agent=client.user_agent,
        object_type="upload",
        object_id=str(session.pk),
        detail={
            "change": "deleted",
            "owner_id": session.owner_id,
            "state": session.state,
            "files_deleted": session.files_deleted,
        },
    )
    upload_id = session.pk
    session.delete()
    transaction.on_commit(lambda: storage.stream_delete(upload_id=upload_id))
