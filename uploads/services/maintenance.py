"""Periodic work (celery beat): re-dispatch stranded work, remove expired data and orphans."""

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
from . import transitions
from .dispatch import FORWARD_TASK, PROCESS_TASK, dispatch_on_commit
from .removal import failed_upload_files_delete, upload_files_delete
from .transitions import DELIVERY_FAILURE_CODES, upload_expired

logger = logging.getLogger(__name__)

# Work queued but not claimed since (no lease) is left alone this long before beat
# looks at it.
UNCLAIMED_GRACE = timedelta(seconds=60)
# A message queued for an upload and not taken by a worker within this time is presumed
# lost (a broker restart, a worker killed between taking it and claiming the upload) and
# the work is queued once more. Until then beat does not queue it again: with every
# worker down or busy, a waiting upload gets one message per this interval, not one per
# beat run (15 s) piling up on the broker. A claim clears the mark, so work whose lease
# ran out is queued again at once.
REDISPATCH_AGAIN_AFTER = timedelta(minutes=5)
# Uploads handled per beat run: enough for any clinic backlog, bounded for one query.
REDISPATCH_BATCH = 500
# An upload whose processing was claimed this often without finishing kills its worker
# every time (a poison file): stop retrying it and tell the user. (Forwarding has its own
# limit, checked when it is claimed: forwarding.MAX_FORWARDING_INTERRUPTIONS.)
MAX_PROCESSING_ATTEMPTS = 5


def uploads_redispatch() -> int:
    """Queue work whose lease expired (a killed worker), that was never claimed, or whose
    retry time came; returns how many messages were queued.

    Each upload is queued at most once per REDISPATCH_AGAIN_AFTER while no worker claims
    it (``dispatched_at``), so beat never piles duplicate messages on the broker.
    """
    now = timezone.now()
    _fail_poisoned(now=now)
    not_queued = Q(dispatched_at__isnull=True) | Q(dispatched_at__lt=now - REDISPATCH_AGAIN_AFTER)
    unleased = Q(lease_until__isnull=True) | Q(lease_until__lt=now)
    stranded = Q(lease_until__lt=now) | Q(
        lease_until__isnull=True, updated_at__lt=now - UNCLAIMED_GRACE
    )
    work = [
        (PROCESS_TASK, Q(state=UploadState.PROCESSING) & stranded),
        (
            FORWARD_TASK,
            (Q(state=UploadState.FORWARDING) & stranded)
            | (Q(state=UploadState.WAITING_FOR_PACS, next_retry_at__lte=now) & unleased),
        ),
    ]
    sent = 0
    for task_name, due in work:
        candidates = UploadSession.objects.filter(due, not_queued).values_list("pk", flat=True)
        for upload_id in list(candidates[:REDISPATCH_BATCH]):
            # On the same terms again: a worker that claimed it meanwhile is not doubled.
            marked = UploadSession.objects.filter(due, not_queued, pk=upload_id).update(
                dispatched_at=now
            )
            if marked:
                dispatch_on_commit(task_name=task_name, upload_id=upload_id)
                sent += marked
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
        moved = transitions.upload_poisoned(
            upload_id=upload_id,
            now=now,
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


# An upload folder without a live upload is swept only once it has not changed for this
# long. upload_init creates the folder just before its row commits (milliseconds later),
# so an hour never takes the folder of an init in flight; an orphan (a rolled-back init,
# an admin deletion whose byte deletion failed) goes within two hourly sweeps.
ORPHAN_GRACE = timedelta(hours=1)
# Upload ids looked up per query by the sweep: bounded for one IN list.
SWEEP_BATCH = 500


def uploads_cleanup(*, now: datetime | None = None) -> int:
    """Delete the bytes of uploads that nothing can use any more; returns how many.

    Expired receiving sessions become ``failed`` (``upload_expired``). Bytes go at once
    for completed, cancelled and failed uploads, except failures of delivery
    (DELIVERY_FAILURE_CODES), which keep them for PACS_RETRY_WINDOW so that "retry" still
    works. A deletion that fails leaves ``files_deleted`` false and is tried again on the
    next run. Idempotent.
    """
    now = now or timezone.now()
    window = settings.UPLOAD_RESUME_WINDOW
    expired = (
        UploadSession.objects.filter(state=UploadState.RECEIVING)
        .annotate(last=Greatest("created_at", Coalesce("last_chunk_at", "created_at")))
        .filter(last__lt=now - window)
        .values_list("pk", "owner_id")
    )
    for upload_id, owner_id in list(expired[:REDISPATCH_BATCH]):
        moved = upload_expired(
            upload_id=upload_id,
            now=now,
            idle_since=now - window,
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
    delivery_failure = Q(error__code__in=sorted(DELIVERY_FAILURE_CODES))
    removable = UploadSession.objects.filter(files_deleted=False).filter(
        Q(state__in=[UploadState.CANCELLED, UploadState.COMPLETED])
        | Q(state=UploadState.FAILED, failed_at__lt=now - settings.PACS_RETRY_WINDOW)
        | Q(state=UploadState.FAILED, error__isnull=True)
        | Q(state=UploadState.FAILED, error__code__isnull=True)
        | (Q(state=UploadState.FAILED, error__isnull=False) & ~delivery_failure)
    )
    removed = failed = 0
    for upload_id, state in list(removable.values_list("pk", "state")[:REDISPATCH_BATCH]):
        if state == UploadState.FAILED:
            gone = failed_upload_files_delete(upload_id=upload_id)  # a retry may race us
            if gone is None:
                continue
        else:
            gone = upload_files_delete(upload_id=upload_id)
        if gone:
            removed += 1
        else:
            failed += 1
    if removed:
        logger.info("cleanup removed the files of %d uploads", removed)
    if failed:
        logger.error("cleanup could not remove the files of %d uploads; will retry", failed)
    return removed


def upload_folders_sweep(*, now: datetime | None = None) -> int:
    """Remove upload folders that no live upload owns; returns how many went.

    A folder is swept once it has not changed for ORPHAN_GRACE and its upload row is gone
    (an init rolled back after creating it, an admin deletion whose byte deletion failed,
    a row removed by hand) or is marked ``files_deleted`` (a worker still unpacking when
    the upload was cancelled wrote into it again). Idempotent; a folder that cannot be
    deleted is logged and tried again on the next run.
    """
    now = now or timezone.now()
    settled = [
        upload_id for upload_id, changed in storage.stored_uploads() if changed < now - ORPHAN_GRACE
    ]
    removed = 0
    for start in range(0, len(settled), SWEEP_BATCH):
        batch = settled[start : start + SWEEP_BATCH]
        live = set(
            UploadSession.objects.filter(pk__in=batch, files_deleted=False).values_list(
                "pk", flat=True
            )
        )
        for upload_id in batch:
            if upload_id not in live and storage.stream_delete(upload_id=upload_id):
                removed += 1
    if removed:
        logger.warning("sweep removed %d upload folders that no live upload owned", removed)
    # S3 mode: a multipart upload older than the resume window belongs to no running work
    # (a worker killed while publishing a large derived file); its parts are patient data.
    aborted = storage.multipart_uploads_abort(older_than=now - settings.UPLOAD_RESUME_WINDOW)
    if aborted:
        logger.warning("sweep aborted %d unfinished multipart uploads", aborted)
    return removed
