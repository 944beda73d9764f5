"""Celery entry points: thin wrappers over services, safe to run twice."""

from __future__ import annotations

import uuid

from celery import shared_task
from django.db import OperationalError

# Only database hiccups are retried here; PACS outages are handled by the service
# (waiting_for_pacs with next_retry_at), and anything else is picked up again by beat
# once the upload's lease expires.
_RETRY = {
    "acks_late": True,
    "autoretry_for": (OperationalError,),
    "retry_backoff": True,
    "retry_jitter": True,
    "max_retries": 5,
}


@shared_task(**_RETRY)
def upload_process_task(upload_id: str) -> None:
    from .services import upload_forward, upload_process

    pk = uuid.UUID(upload_id)
    # Forwarding follows in this task rather than in a second message, which would first
    # wait for the broker; forwarding claims its own lease, so beat can still take it over.
    if upload_process(upload_id=pk):
        upload_forward(upload_id=pk)


@shared_task(**_RETRY)
def upload_forward_task(upload_id: str) -> None:
    from .services import upload_forward

    upload_forward(upload_id=uuid.UUID(upload_id))


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
