"""Celery entry points: thin wrappers over services, safe to run twice."""

from __future__ import annotations

import uuid

from celery import shared_task
from django.db import OperationalError

from .storage import StorageUnavailable

# Database hiccups and upload storage outages are retried here (for the storage, the
# service released the upload's lease first, without counting the attempt; after the last
# retry beat re-dispatches it until the storage is back). PACS outages are handled by the
# service (waiting_for_pacs with next_retry_at), and anything else is picked up again by
# beat once the upload's lease expires.
_RETRY = {
    "acks_late": True,
    "autoretry_for": (OperationalError, StorageUnavailable),
    "retry_backoff": True,
    "retry_jitter": True,
    "max_retries": 5,
}


# When forwarding right after processing finds the storage down: try again this soon
# (then upload_forward_task's own retries with backoff, then beat).
FORWARD_RETRY_SECONDS = 5


@shared_task(**_RETRY)
def upload_process_task(upload_id: str) -> None:
    from .metrics import stage_timer
    from .services import upload_forward, upload_process

    pk = uuid.UUID(upload_id)
    # Forwarding follows in this task rather than in a second message, which would first
    # wait for the broker; forwarding claims its own lease, so beat can still take it over.
    with stage_timer("process") as timing:
        processed = timing.counted = upload_process(upload_id=pk)
    if processed:
        try:
            with stage_timer("forward"):
                upload_forward(upload_id=pk)
        except StorageUnavailable:
            # Processing is done: a retry of this task would find nothing to process.
            upload_forward_task.apply_async(args=[upload_id], countdown=FORWARD_RETRY_SECONDS)


@shared_task(**_RETRY)
def upload_forward_task(upload_id: str) -> None:
    from .metrics import stage_timer
    from .services import upload_forward

    with stage_timer("forward"):
        upload_forward(upload_id=uuid.UUID(upload_id))


# No retry: hashing ahead only saves processing time; what it leaves, processing hashes.
@shared_task(acks_late=True)
def upload_prehash_task(upload_id: str) -> int:
    from .services.prehash import upload_prehash

    return upload_prehash(upload_id=uuid.UUID(upload_id))


@shared_task(acks_late=True)
def uploads_redispatch() -> int:
    from .services import uploads_redispatch as redispatch

    return redispatch()


@shared_task(acks_late=True)
def uploads_cleanup() -> int:
    from .services import uploads_cleanup as cleanup

    return cleanup()


@shared_task(acks_late=True)
def upload_folders_sweep() -> int:
    from .services.maintenance import upload_folders_sweep as sweep

    return sweep()


# No autoretry: a failed backup is logged, counted and audited by the service, and the
# next day's run tries again (an hour-long dump retried at once would repeat its cause).
@shared_task(acks_late=True)
def backup_scheduled_task() -> str | None:
    from .management.backups import backup_scheduled

    return backup_scheduled()
