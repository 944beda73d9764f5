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
  ``PACS_MODE=all``), it is completed (``transitions.upload_delivered``) with the receipt
  records a delivery writes (per destination and per image, and ``pacs.receipt``); when
  they answer without all of them (or it names no image yet), it fails with
  ``upload_lost_in_restore``
  and a sentence saying to send the study again; when a PACS cannot be reached, it is
  left as it is and counted, for a later ``manage.py reconcile_uploads`` to decide. With
  every byte there it goes on as before (beat re-dispatches its work once the lease in
  the restored row runs out).

Every upload checked forgets the SHA-256 results its files got while it was arriving
(``prehash``): processing hashes the bytes as they are now.

Completed, cancelled and failed uploads need nothing. Idempotent; safe while the product
runs (a chunk marked stored had its bytes written first, and rows are read before the
storage is listed), though ``manage.py restore`` runs it before web and worker start.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from pacs import selectors as pacs_selectors
from pacs import services as pacs_services
from relaypacs import events

from .. import storage
from ..models import (
    FileKind,
    PacsStatus,
    Study,
    UploadChunk,
    UploadChunkCounter,
    UploadFile,
    UploadSession,
    UploadState,
)
from ..selectors import upload_expires_at
from .leases import lease_claim
from .prehash import prehash_forget
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
    # The bytes on disk may not be those hashed before the backup (a folder copied back):
    # processing hashes every file again.
    prehash_forget(upload_id=upload_id)
    rows = list(
        UploadChunk.objects.filter(session_id=upload_id, stored=True).values_list(
            "index", "size", "md5", "received_at"
        )
    )
    stored = {index: storage.StoredChunk(size=size, md5=md5) for index, size, md5, _ in rows}
    chunks = {index * session.chunk_size: chunk for index, chunk in stored.items()}
    offsets = set(chunks)
    # A receiving upload was never flushed whole (complete does that): its chunks written
    # before this machine's boot are read back, as complete reads them (a restore often
    # follows a crash). Later states were flushed by their complete.
    verify = (
        storage.writes_maybe_lost(
            written_at={index * session.chunk_size: at for index, _, _, at in rows}
        )
        if session.state == UploadState.RECEIVING
        else set()
    )
    present = (
        storage.chunks_present(upload_id=upload_id, chunks=chunks, verify_offsets=verify)
        if chunks
        else set()
    )
    if session.state == UploadState.RECEIVING:
        if upload_expires_at(session=session) < now:
            return  # uploads_cleanup fails it (upload_expired)
        lost = sorted(index for index in stored if index * session.chunk_size not in present)
        if upload_chunks_forget(upload_id=upload_id, size=session.total_size, lost=lost) and lost:
            summary.resumable += 1
            summary.chunks_to_resend += len(lost)
        return
    complete = len(stored) == session.total_chunks and present == offsets
    if complete:
        return
    instances = _clinic_instances(session=session)
    delivered = _delivered(session=session, instances=instances)
    if delivered is None:
        summary.unchecked += 1
        logger.warning(
            "upload %s lost its bytes in a restore and the PACS could not be asked whether "
            "it has the study; run reconcile_uploads again later",
            upload_id,
        )
        return
    if delivered and _complete(session=session, now=now, confirmed=delivered, instances=instances):
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
def upload_chunks_forget(*, upload_id: uuid.UUID, size: int, lost: list[int]) -> bool:
    """Under a lock on the upload's row, while it is still ``receiving`` (else False and
    nothing done: it moved on, or was cancelled, since it was read): prepare its stream
    again (on local disk, a missing assembly file is created) and forget the chunks
    ``lost`` (stored chunks whose bytes the storage no longer has: lost in a restore, or
    in a power cut before complete flushed them), so that ``missing_chunks`` lists them
    and the client sends them again. A transition out of ``receiving`` waits for this to
    commit. Idempotent."""
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


def _clinic_instances(*, session: UploadSession) -> list[tuple[str, str]]:
    """(SOP Instance UID, Study Instance UID) of every image the clinic sent in
    ``session`` that processing recorded (the relay's own objects left out)."""
    return list(
        UploadFile.objects.filter(session=session, kind=FileKind.DICOM, added_by_relay=False)
        .order_by("position")
        .values_list("sop_instance_uid", "study_instance_uid")
    )


def _delivered(
    *, session: UploadSession, instances: list[tuple[str, str]]
) -> list[pacs_selectors.PacsTarget] | None:
    """The PACS destinations that list every image of ``instances`` (the first that does,
    or each of them with ``PACS_MODE=all``); an empty list when the upload is not
    delivered (they answer without all of them, the upload names no image yet, or no
    destination is configured); None when one that could decide it did not answer."""
    by_study: dict[str, list[str]] = {}
    for sop_uid, study_uid in instances:
        by_study.setdefault(study_uid, []).append(sop_uid)
    targets = pacs_selectors.pacs_targets()
    if not by_study or not targets:
        return []
    every = pacs_selectors.pacs_mode() == "all"
    unreachable = False
    confirmed: list[pacs_selectors.PacsTarget] = []
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
            return [target]
        if missing and every:
            return []
        if not missing:
            confirmed.append(target)
    if unreachable:
        return None
    return confirmed if every else []


def _receipt_found_after_restore(
    *,
    receipt: dict[str, Any] | None,
    confirmed: list[pacs_selectors.PacsTarget],
    clinic_uids: list[str],
    instances_total: int,
    now: datetime,
) -> dict[str, Any]:
    """``receipt`` with a record per destination in ``confirmed``, as a delivery writes
    it: every clinic image acknowledged, confirmed now, marked ``found_after_restore``."""
    result = dict(receipt or {})
    destinations = dict(result.get("destinations") or {})
    for target in confirmed:
        record = dict(destinations.get(target.key) or {})
        record.update(
            name=target.name,
            acknowledged=sorted(set(record.get("acknowledged") or []) | set(clinic_uids)),
            failed={
                uid: reason
                for uid, reason in (record.get("failed") or {}).items()
                if uid not in clinic_uids
            },
            confirmed_at=now.isoformat(),
            # As forwarding counts them: every instance of the upload, the relay's too.
            confirmed_instances=instances_total,
            updated_at=now.isoformat(),
            found_after_restore=True,
        )
        destinations[target.key] = record
    result["destinations"] = destinations
    return result


def _complete(
    *,
    session: UploadSession,
    now: datetime,
    confirmed: list[pacs_selectors.PacsTarget],
    instances: list[tuple[str, str]],
) -> bool:
    """Mark ``session`` completed as forwarding does once the PACS confirmed it: claimed
    (``forwarding`` under a lease of ours, only while nobody holds a live one and it is
    still in a state past receiving), and in the same transaction its receipt records
    written as a delivery writes them (per destination in ``confirmed``: confirmed now,
    every image listed, marked ``found_after_restore``; a receipt row per image and
    destination, ``pacs.services.deliveries_record``; the images marked stored) and the
    upload delivered. After commit: ``pacs.receipt`` per destination (audited as
    instances transferred) and ``upload.completed``. False when the claim was refused
    (it moved on, or a worker holds it)."""
    clinic_uids = sorted({sop_uid for sop_uid, _ in instances})
    with transaction.atomic():
        token = lease_claim(
            upload_id=session.id, states=PAST_RECEIVING_STATES, to_state=UploadState.FORWARDING
        )
        if token is None:
            transaction.set_rollback(True)
            return False
        # The receipt from the row as it is now (ours under the lease): what a worker
        # wrote while the PACS were being asked is kept, not overwritten by the copy read
        # before.
        current = UploadSession.objects.select_for_update().get(pk=session.id)
        relay_added = list(
            UploadFile.objects.filter(session=session, added_by_relay=True).values_list(
                "sop_instance_uid", "pacs_status"
            )
        )
        receipt = _receipt_found_after_restore(
            receipt=current.receipt,
            confirmed=confirmed,
            clinic_uids=clinic_uids,
            instances_total=len(clinic_uids) + len(relay_added),
            now=now,
        )
        if not upload_delivered(
            upload_id=session.id,
            token=token,
            completed_at=now,
            warnings=current.warnings or [],
            receipt=receipt,
            destination=", ".join(target.name for target in confirmed),
        ):
            transaction.set_rollback(True)
            return False
        for target in confirmed:
            pacs_services.deliveries_record(
                target_key=target.key, instances=instances, delivered_at=now
            )
        UploadFile.objects.filter(
            session=session, kind=FileKind.DICOM, added_by_relay=False
        ).exclude(pacs_status=PacsStatus.ALREADY_DELIVERED).update(
            pacs_status=PacsStatus.STORED, pacs_reason=""
        )
        Study.objects.filter(session=session).update(pacs_state="received")
        upload_id = session.id
        names = [target.name for target in confirmed]
        clinic = len(clinic_uids)
        relay_stored = sum(status != PacsStatus.FAILED for _, status in relay_added)

        def finish() -> None:
            upload_files_delete(upload_id=upload_id)
            for name in names:
                events.emit(
                    events.PACS_RECEIPT,
                    upload_id=str(upload_id),
                    destination=name,
                    instances=clinic,
                    relay_added_instances=relay_stored,
                )
            events.emit(events.UPLOAD_COMPLETED, upload_id=str(upload_id))

        transaction.on_commit(finish)
    return True


def _chunks_forget(*, upload_id: uuid.UUID, indexes: list[int]) -> None:
    """Remove the stored chunks ``indexes`` and take their bytes off the counter (inside
    ``upload_chunks_forget``'s transaction). The rows are locked and removed by primary
    key, so the counter loses exactly the bytes of the rows removed, even beside a chunk
    PUT that stores one of them meanwhile."""
    rows = list(
        UploadChunk.objects.select_for_update()
        .filter(session_id=upload_id, stored=True, index__in=indexes)
        .values_list("pk", "size")
    )
    if not rows:
        return
    UploadChunk.objects.filter(pk__in=[pk for pk, _ in rows]).delete()
    UploadChunkCounter.objects.filter(session_id=upload_id).update(
        bytes_received=F("bytes_received") - sum(size for _, size in rows)
    )
