"""Uploads under way when a backup was made, after it is restored.

Upload bytes are temporary and never in a backup (uploads.management.backups), so a
restored database can say that chunks are stored whose bytes the upload storage no longer
has (a new host, a lost volume or bucket), or lack chunks that arrived after the backup
(their bytes may still be there, unclaimed). ``uploads_reconcile`` makes the rows true
again, upload by upload:

- **receiving**: chunk rows whose bytes are missing are removed (and their bytes taken
  off the upload's counter), so the status's ``missing_chunks`` lists them and the client
  sends them again (the app keeps the files until the upload is delivered); the upload's
  stream is prepared again so that those chunks can be written. Chunks that arrived after
  the backup have no row and are missing already. An upload past its resume window is
  left to the cleanup, which fails it with ``upload_expired``.
- **processing, needs confirmation, forwarding, waiting for the PACS**: the client sent
  everything and does not send again, and processing reads every byte once more. When a
  chunk's bytes are missing, the upload most likely went on after the backup and was
  delivered (its bytes removed once the PACS confirmed it), so the PACS destinations are
  asked first (``pacs.services.instances_confirm``, as forwarding confirms receipt):
  when they list every image the upload names (one destination, or every one with
  ``PACS_MODE=all``), it is completed (``transitions.upload_delivered``); when they answer
  without all of them (or it names no image yet), it fails with ``upload_lost_in_restore``
  and a sentence saying to send the study again; when a PACS cannot be reached, it is
  left as it is and counted, for a later ``manage.py reconcile_uploads`` to decide. With
  every byte there it goes on as before (beat re-dispatches its work once the lease in
  the restored row runs out).

Completed, cancelled and failed uploads need nothing. Idempotent; safe while the product
runs (a chunk marked stored had its bytes written first, and rows are read before the
storage is listed), though ``manage.py restore`` runs it before web and worker start.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.db.models import F, Sum
from django.utils import timezone

from pacs import selectors as pacs_selectors
from pacs import services as pacs_services
from relaypacs import events

from .. import storage
from ..models import (
    FileKind,
    Study,
    UploadChunk,
    UploadChunkCounter,
    UploadFile,
    UploadSession,
    UploadState,
)
from ..selectors import upload_expires_at
from .leases import lease_claim
from .removal import upload_files_delete
from .transitions import PAST_RECEIVING_STATES, upload_delivered, upload_lost_in_restore

logger = logging.getLogger(__name__)

# Uploads read per query: bounded for one query, and far above a day's uploads in flight.
RECONCILE_BATCH = 500
LOST_IN_RESTORE = {
    "code": "upload_lost_in_restore",
    "message": "The server was restored from a backup after this upload arrived, and the "
    "files it had received were lost.",
    "hint": "Send the study again as a new upload.",
}


@dataclass
class ReconcileSummary:
    """What ``uploads_reconcile`` did, for the restore command's output (counts only)."""

    checked: int = 0
    resumable: int = 0
    chunks_to_resend: int = 0
    failed: int = 0
    # Delivered after the backup: the PACS lists every image.
    completed: int = 0
    # Bytes gone and the PACS could not be asked: left for a later reconcile_uploads.
    unchecked: int = 0

    def sentence(self) -> str:
        if not self.checked:
            return "No upload was under way at backup time."
        sentence = (
            f"{self.checked} uploads were under way at backup time: "
            f"{self.resumable} lost {self.chunks_to_resend} chunks that their apps will "
            f"send again, and {self.failed} could not go on and were failed with a "
            "sentence asking to send the study again."
        )
        if self.completed:
            sentence += (
                f" {self.completed} had lost their files but were found delivered in the "
                "PACS, and were marked completed."
            )
        if self.unchecked:
            sentence += (
                f" {self.unchecked} lost their files but the PACS could not be asked "
                "whether it has them: run `manage.py reconcile_uploads` once the PACS "
                "answers."
            )
        return sentence


def uploads_reconcile(*, now: datetime | None = None) -> ReconcileSummary:
    """Reconcile every upload not yet completed, cancelled or failed with the bytes the
    upload storage holds (see the module's docstring). Raises StorageUnavailable or
    ApplicationError (503) when the storage cannot be read: the uploads not reached yet
    are unchanged, and running it again goes on."""
    now = now or timezone.now()
    summary = ReconcileSummary()
    states = [UploadState.RECEIVING, *PAST_RECEIVING_STATES]
    last: uuid.UUID | None = None
    while True:
        page = UploadSession.objects.filter(state__in=states).order_by("pk")
        if last is not None:
            page = page.filter(pk__gt=last)
        batch = list(page.values_list("pk", flat=True)[:RECONCILE_BATCH])
        if not batch:
            break
        for upload_id in batch:
            _upload_reconcile(upload_id=upload_id, now=now, summary=summary)
        last = batch[-1]
    if summary.checked:
        logger.warning(
            "reconciled %d uploads after a restore: %d resume (%d chunks to send again), %d failed",
            summary.checked,
            summary.resumable,
            summary.chunks_to_resend,
            summary.failed,
        )
    return summary


def _upload_reconcile(*, upload_id: uuid.UUID, now: datetime, summary: ReconcileSummary) -> None:
    session = UploadSession.objects.filter(pk=upload_id).first()
    if session is None:
        return
    summary.checked += 1
    stored = dict(
        UploadChunk.objects.filter(session_id=upload_id, stored=True).values_list("index", "size")
    )
    offsets = {index * session.chunk_size for index in stored}
    present = storage.chunks_present(upload_id=upload_id, offsets=offsets) if offsets else set()
    if session.state == UploadState.RECEIVING:
        if upload_expires_at(session=session) < now:
            return  # uploads_cleanup fails it (upload_expired)
        lost = sorted(index for index in stored if index * session.chunk_size not in present)
        if _receiving_restore(upload_id=upload_id, size=session.total_size, lost=lost) and lost:
            summary.resumable += 1
            summary.chunks_to_resend += len(lost)
        return
    complete = len(stored) == session.total_chunks and present == offsets
    if complete:
        return
    delivered = _delivered(session=session)
    if delivered is None:
        summary.unchecked += 1
        logger.warning(
            "upload %s lost its bytes in a restore and the PACS could not be asked whether "
            "it has the study; run reconcile_uploads again later",
            upload_id,
        )
        return
    if delivered and _complete(session=session, now=now):
        summary.completed += 1
        logger.warning("upload %s completed: the PACS lists every image after a restore", upload_id)
        return
    if upload_lost_in_restore(upload_id=upload_id, now=now, error=dict(LOST_IN_RESTORE)):
        summary.failed += 1
        logger.error("upload %s failed: its bytes were lost in a restore", upload_id)
        events.emit(
            events.UPLOAD_FAILED,
            upload_id=str(upload_id),
            owner_id=session.owner_id,
            code=LOST_IN_RESTORE["code"],
        )


@transaction.atomic
def _receiving_restore(*, upload_id: uuid.UUID, size: int, lost: list[int]) -> bool:
    """Under a lock on the upload's row, while it is still ``receiving`` (else False and
    nothing done: it moved on, or was cancelled, since it was read): prepare its stream
    again (on local disk, a missing assembly file is created) and forget the chunks
    ``lost``. A transition out of ``receiving`` waits for this to commit."""
    still_receiving = list(
        UploadSession.objects.select_for_update()
        .filter(pk=upload_id, state=UploadState.RECEIVING)
        .values_list("pk", flat=True)
    )
    if not still_receiving:
        return False
    storage.stream_create(upload_id=upload_id, size=size)
    if lost:
        _chunks_forget(upload_id=upload_id, indexes=lost)
    return True


def _delivered(*, session: UploadSession) -> bool | None:
    """Whether the PACS destinations list every image of ``session`` (in one of them, or
    in each with ``PACS_MODE=all``); None when one that could decide it did not answer.
    False when the upload names no image yet (processing had not recorded them) or no
    destination is configured."""
    by_study: dict[str, list[str]] = {}
    files = UploadFile.objects.filter(
        session=session, kind=FileKind.DICOM, added_by_relay=False
    ).values_list("study_instance_uid", "sop_instance_uid")
    for study_uid, sop_uid in files:
        by_study.setdefault(study_uid, []).append(sop_uid)
    targets = pacs_selectors.pacs_targets()
    if not by_study or not targets:
        return False
    every = pacs_selectors.pacs_mode() == "all"
    unreachable = False
    for target in targets:
        try:
            missing = pacs_services.instances_confirm(
                target=target, sop_instance_uids_by_study=by_study
            )
        except pacs_services.PacsUnavailable:
            unreachable = True
            continue
        except pacs_services.PacsRejected:
            missing = {"refused"}  # it cannot confirm anything
        if not missing and not every:
            return True
        if missing and every:
            return False
    if unreachable:
        return None
    return every


def _complete(*, session: UploadSession, now: datetime) -> bool:
    """Mark ``session`` completed as forwarding does once the PACS confirmed it: claimed
    (``forwarding`` under a lease of ours, only while nobody holds a live one and it is
    still in a state past receiving) and delivered in one transaction. False when the
    claim was refused (it moved on, or a worker holds it)."""
    with transaction.atomic():
        token = lease_claim(
            upload_id=session.id, states=PAST_RECEIVING_STATES, to_state=UploadState.FORWARDING
        )
        if token is None or not upload_delivered(
            upload_id=session.id, token=token, completed_at=now, warnings=session.warnings or []
        ):
            transaction.set_rollback(True)
            return False
        Study.objects.filter(session=session).update(pacs_state="received")
        upload_id = session.id

        def finish() -> None:
            upload_files_delete(upload_id=upload_id)
            events.emit(events.UPLOAD_COMPLETED, upload_id=str(upload_id))

        transaction.on_commit(finish)
    return True


def _chunks_forget(*, upload_id: uuid.UUID, indexes: list[int]) -> None:
    """Remove the stored chunks ``indexes`` and take their bytes off the counter (inside
    ``_receiving_restore``'s transaction)."""
    rows = UploadChunk.objects.filter(session_id=upload_id, stored=True, index__in=indexes)
    size = rows.aggregate(total=Sum("size"))["total"] or 0
    rows.delete()
    UploadChunkCounter.objects.filter(session_id=upload_id).update(
        bytes_received=F("bytes_received") - size
    )
