"""Periodic work (celery beat): re-dispatch stranded work, remove expired data."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from relaypacs import events

from .. import storage
from ..models import UploadSession, UploadState
from .dispatch import FORWARD_TASK, PROCESS_TASK, dispatch_on_commit

logger = logging.getLogger(__name__)

# Work queued but not yet claimed is left alone this long before it is queued again.
UNCLAIMED_GRACE = timedelta(seconds=60)
# Uploads handled per beat run: enough for any clinic backlog, bounded for one query.
REDISPATCH_BATCH = 500
# An upload whose processing was claimed this often without finishing kills its worker
# every time (a poison file): stop retrying it and tell the user.
MAX_PROCESSING_ATTEMPTS = 5


def uploads_redispatch() -> int:
    """Queue work whose lease expired (a killed worker) or whose retry time came."""
    now = timezone.now()
    stale = Q(lease_until__lt=now) | Q(
        lease_until__isnull=True, updated_at__lt=now - UNCLAIMED_GRACE
    )
    _fail_poisoned(now=now)
    sent = 0
    for upload_id in UploadSession.objects.filter(stale, state=UploadState.PROCESSING).values_list(
        "pk", flat=True
    )[:REDISPATCH_BATCH]:
        dispatch_on_commit(task_name=PROCESS_TASK, upload_id=upload_id)
        sent += 1
    forwarding = UploadSession.objects.filter(
        Q(state=UploadState.FORWARDING, lease_until__lt=now)
        | Q(
            state=UploadState.FORWARDING,
            lease_until__isnull=True,
            updated_at__lt=now - UNCLAIMED_GRACE,
        )
        | Q(state=UploadState.WAITING_FOR_PACS, next_retry_at__lte=now)
        & (Q(lease_until__isnull=True) | Q(lease_until__lt=now))
    )
    for upload_id in forwarding.values_list("pk", flat=True)[:REDISPATCH_BATCH]:
        dispatch_on_commit(task_name=FORWARD_TASK, upload_id=upload_id)
        sent += 1
    if sent:
        logger.info("re-dispatched %d uploads", sent)
    return sent


def _fail_poisoned(*, now: datetime) -> None:
    poisoned = UploadSession.objects.filter(
        state=UploadState.PROCESSING,
        attempts__gte=MAX_PROCESSING_ATTEMPTS,
        lease_until__lt=now,
    )
    for upload_id, owner_id in list(poisoned.values_list("pk", "owner_id")[:REDISPATCH_BATCH]):
        moved = UploadSession.objects.filter(
            pk=upload_id, state=UploadState.PROCESSING, lease_until__lt=now
        ).update(
            state=UploadState.FAILED,
            failed_at=now,
            updated_at=now,
            lease_until=None,
            lease_owner="",
            error={
                "code": "processing_failed",
                "message": "The server could not check this upload's files: the check stopped "
                f"{MAX_PROCESSING_ATTEMPTS} times.",
                "hint": "Upload the study again; if it fails again, tell your RelayPACS "
                "administrator.",
            },
        )
        if moved:
            logger.error("upload %s failed: processing crashed repeatedly", upload_id)
            events.emit(
                events.UPLOAD_FAILED,
                upload_id=str(upload_id),
                owner_id=owner_id,
                code="processing_failed",
            )


def uploads_cleanup() -> int:
    """Delete the bytes of uploads that can no longer go anywhere; returns how many.

    Expired receiving sessions become ``failed`` (``upload_expired``). Failed uploads keep
    their files through the PACS retry window so that "retry" still works.
    """
    now = timezone.now()
    window = settings.UPLOAD_RESUME_WINDOW
    expired = (
        UploadSession.objects.filter(state=UploadState.RECEIVING)
        .annotate(last=Greatest("created_at", Coalesce("last_chunk_at", "created_at")))
        .filter(last__lt=now - window)
        .values_list("pk", "owner_id")
    )
    for upload_id, owner_id in list(expired[:REDISPATCH_BATCH]):
        moved = UploadSession.objects.filter(pk=upload_id, state=UploadState.RECEIVING).update(
            state=UploadState.FAILED,
            failed_at=now,
            updated_at=now,
            error={
                "code": "upload_expired",
                "message": "This upload stopped receiving data and expired.",
                "hint": "Start the upload again; the app can do this from the files it kept.",
            },
        )
        if moved:
            events.emit(
                events.UPLOAD_FAILED,
                upload_id=str(upload_id),
                owner_id=owner_id,
                code="upload_expired",
            )
    removable = UploadSession.objects.filter(files_deleted=False).filter(
        Q(state__in=[UploadState.CANCELLED, UploadState.COMPLETED])
        | Q(state=UploadState.FAILED, failed_at__lt=now - settings.PACS_RETRY_WINDOW)
        | Q(state=UploadState.FAILED, received_at__isnull=True)
    )
    removed = 0
    for upload_id in list(removable.values_list("pk", flat=True)[:REDISPATCH_BATCH]):
        storage.stream_delete(upload_id=upload_id)
        UploadSession.objects.filter(pk=upload_id).update(files_deleted=True)
        removed += 1
    if removed:
        logger.info("cleanup removed the files of %d uploads", removed)
    return removed
