"""The upload state machine: one service per transition.

Each is one conditional UPDATE on the state it leaves (and, for leased work, on the
worker's lease token), and returns whether its row count was 1: of a cancel and a worker
racing, exactly one wins, and the loser sees False and stops. No other code writes
``UploadSession.state``.

::

    receiving ─received─▶ processing ─checked─▶ forwarding ─delivered─▶ completed
                              │   └─checked─▶ needs_confirmation ─confirmed─┘ ▲
                              │                 forwarding ─waits─▶ waiting_for_pacs
                              ▼                      ▲ └──claim (when due)──┘
                            failed ─retried─▶ forwarding
    processing … waiting_for_pacs ─lost in a restore─▶ failed
    every state but completed and cancelled ─cancelled─▶ cancelled
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from relaypacs import events

from ..models import UploadSession, UploadState
from .leases import lease_claim, lease_release

# A cancel stops an upload in any of these; a completed study is in the PACS already.
CANCELLABLE_STATES = (
    UploadState.RECEIVING,
    UploadState.PROCESSING,
    UploadState.NEEDS_CONFIRMATION,
    UploadState.FORWARDING,
    UploadState.WAITING_FOR_PACS,
    UploadState.FAILED,
)


# Failures of delivery: the checked study is intact and "retry" sends it again, so its
# bytes are kept for PACS_RETRY_WINDOW after the failure. Every other failure (the checks
# refused the files, checking kept crashing, the upload expired while receiving) can only
# be uploaded again: nothing can use its bytes, so they are deleted at once.
DELIVERY_FAILURE_CODES = frozenset(
    {
        "pacs_unreachable",
        "pacs_unavailable",
        "pacs_not_listing",
        "pacs_rejected",
        "pacs_refused_instances",
        "no_pacs_configured",
        "forwarding_failed",
    }
)


def _move(
    *,
    upload_id: uuid.UUID,
    from_states: Iterable[str],
    files_deleted: bool | None = None,
    error__code__in: list[str] | None = None,
    **changes: Any,
) -> bool:
    queryset = UploadSession.objects.filter(pk=upload_id, state__in=list(from_states))
    if files_deleted is not None:
        queryset = queryset.filter(files_deleted=files_deleted)
    if error__code__in is not None:
        queryset = queryset.filter(error__code__in=error__code__in)
    return queryset.update(updated_at=timezone.now(), **changes) == 1


def _emit_after_commit(name: str, *, upload_id: uuid.UUID) -> None:
    """The progress event of a transition that happened, once its transaction commits."""
    transaction.on_commit(lambda: events.emit(name, upload_id=str(upload_id)))


def upload_received(*, upload_id: uuid.UUID) -> bool:
    """``receiving`` → ``processing``: every chunk arrived; the processing task is queued
    by the caller (``dispatched_at`` says so)."""
    now = timezone.now()
    return _move(
        upload_id=upload_id,
        from_states=[UploadState.RECEIVING],
        state=UploadState.PROCESSING,
        received_at=now,
        lease_until=None,
        dispatched_at=now,
    )


def upload_checked(
    *, upload_id: uuid.UUID, token: str, needs_confirmation: bool, warnings: list[str]
) -> bool:
    """``processing`` → ``forwarding`` (or ``needs_confirmation``), by the lease holder.
    Emits ``upload.forwarding`` after commit (the caller emits ``upload.needs_confirmation``)."""
    moved = lease_release(
        upload_id=upload_id,
        token=token,
        from_state=UploadState.PROCESSING,
        state=UploadState.NEEDS_CONFIRMATION if needs_confirmation else UploadState.FORWARDING,
        warnings=warnings,
    )
    if moved and not needs_confirmation:
        _emit_after_commit(events.UPLOAD_FORWARDING, upload_id=upload_id)
    return moved


def upload_processing_failed(*, upload_id: uuid.UUID, token: str, error: dict[str, str]) -> bool:
    """``processing`` → ``failed``, by the lease holder."""
    return lease_release(
        upload_id=upload_id,
        token=token,
        from_state=UploadState.PROCESSING,
        state=UploadState.FAILED,
        failed_at=timezone.now(),
        error=error,
    )


def upload_poisoned(*, upload_id: uuid.UUID, now: datetime, error: dict[str, str]) -> bool:
    """``processing`` → ``failed`` by beat, once the last worker's lease ran out (nobody
    holds the upload)."""
    return (
        UploadSession.objects.filter(
            pk=upload_id, state=UploadState.PROCESSING, lease_until__lt=now
        ).update(
            state=UploadState.FAILED,
            failed_at=now,
            updated_at=now,
            lease_until=None,
            lease_owner="",
            dispatched_at=None,
            error=error,
        )
        == 1
    )


def upload_expired(
    *, upload_id: uuid.UUID, now: datetime, idle_since: datetime, error: dict[str, str]
) -> bool:
    """``receiving`` → ``failed``: no chunk arrived since ``idle_since`` (the resume
    window). Re-checked in the UPDATE, so a chunk stored since the caller looked keeps the
    upload alive."""
    return (
        UploadSession.objects.filter(pk=upload_id, state=UploadState.RECEIVING)
        .filter(created_at__lt=idle_since)
        .filter(Q(last_chunk_at__isnull=True) | Q(last_chunk_at__lt=idle_since))
        .update(state=UploadState.FAILED, failed_at=now, updated_at=now, error=error)
        == 1
    )


# Past receiving, an upload needs every byte it received (processing reads them again).
PAST_RECEIVING_STATES = (
    UploadState.PROCESSING,
    UploadState.NEEDS_CONFIRMATION,
    UploadState.FORWARDING,
    UploadState.WAITING_FOR_PACS,
)


def upload_lost_in_restore(*, upload_id: uuid.UUID, now: datetime, error: dict[str, str]) -> bool:
    """Any state in PAST_RECEIVING_STATES → ``failed``: after a restore, bytes it needs
    are gone and the client no longer sends them (uploads.services.recovery). Drops the
    lease: a worker still holding it finds every later write refused."""
    return (
        UploadSession.objects.filter(pk=upload_id, state__in=PAST_RECEIVING_STATES).update(
            state=UploadState.FAILED,
            failed_at=now,
            updated_at=now,
            lease_until=None,
            lease_owner="",
            next_retry_at=None,
            dispatched_at=None,
            error=error,
        )
        == 1
    )


def upload_forwarding_claim(*, upload_id: uuid.UUID) -> str | None:
    """``forwarding`` (unleased or lease ran out) or ``waiting_for_pacs`` (retry time
    came) → ``forwarding`` under a new lease, in one conditional UPDATE per state left
    (a state is in one of them at a time). Returns the lease token, or
    None when the upload is not ours to forward (cancelled, held, not due). A claim out
    of ``waiting_for_pacs`` emits ``upload.forwarding`` after commit (the state changed)."""
    token = lease_claim(
        upload_id=upload_id,
        states=[UploadState.WAITING_FOR_PACS],
        due_only=True,
        to_state=UploadState.FORWARDING,
    )
    if token is not None:
        _emit_after_commit(events.UPLOAD_FORWARDING, upload_id=upload_id)
        return token
    return lease_claim(
        upload_id=upload_id,
        states=[UploadState.FORWARDING],
        due_only=True,
        to_state=UploadState.FORWARDING,
    )


def upload_delivered(*, upload_id: uuid.UUID, token: str, **fields: Any) -> bool:
    """``forwarding`` → ``completed``, by the lease holder (``fields``: receipt, when)."""
    return lease_release(
        upload_id=upload_id,
        token=token,
        from_state=UploadState.FORWARDING,
        state=UploadState.COMPLETED,
        next_retry_at=None,
        error=None,
        **fields,
    )


def upload_waits_for_pacs(
    *,
    upload_id: uuid.UUID,
    token: str,
    first_failure_at: datetime,
    next_retry_at: datetime,
    error: dict[str, Any],
) -> bool:
    """``forwarding`` → ``waiting_for_pacs`` until ``next_retry_at``, by the lease holder.
    Emits ``upload.waiting_for_pacs`` after commit."""
    moved = lease_release(
        upload_id=upload_id,
        token=token,
        from_state=UploadState.FORWARDING,
        state=UploadState.WAITING_FOR_PACS,
        first_pacs_failure_at=first_failure_at,
        next_retry_at=next_retry_at,
        error=error,
    )
    if moved:
        _emit_after_commit(events.UPLOAD_WAITING_FOR_PACS, upload_id=upload_id)
    return moved


def upload_forwarding_failed(*, upload_id: uuid.UUID, token: str, error: dict[str, Any]) -> bool:
    """``forwarding`` → ``failed``, by the lease holder."""
    return lease_release(
        upload_id=upload_id,
        token=token,
        from_state=UploadState.FORWARDING,
        state=UploadState.FAILED,
        failed_at=timezone.now(),
        next_retry_at=None,
        error=error,
    )


def upload_confirmed(*, upload_id: uuid.UUID) -> bool:
    """``needs_confirmation`` → ``forwarding``: a person confirmed; the caller queues it.
    Emits ``upload.forwarding`` after commit."""
    now = timezone.now()
    moved = _move(
        upload_id=upload_id,
        from_states=[UploadState.NEEDS_CONFIRMATION],
        state=UploadState.FORWARDING,
        lease_until=None,
        next_retry_at=None,
        dispatched_at=now,
    )
    if moved:
        _emit_after_commit(events.UPLOAD_FORWARDING, upload_id=upload_id)
    return moved


def upload_retry_due(*, upload_id: uuid.UUID) -> bool:
    """``waiting_for_pacs`` stays, due now: a person asked to try the PACS again."""
    now = timezone.now()
    return _move(
        upload_id=upload_id,
        from_states=[UploadState.WAITING_FOR_PACS],
        next_retry_at=now,
        dispatched_at=now,
    )


def upload_retried(*, upload_id: uuid.UUID) -> bool:
    """``failed`` → ``forwarding``: a person pressed retry; the caller queues it. Only a
    failure of delivery (the checks passed; DELIVERY_FAILURE_CODES) and only while the files
    remain (cleanup marks them gone before deleting them): an upload the checks refused is
    never sent, not even in the moment before its bytes are deleted. Emits
    ``upload.forwarding`` after commit."""
    now = timezone.now()
    moved = _move(
        upload_id=upload_id,
        from_states=[UploadState.FAILED],
        files_deleted=False,
        error__code__in=sorted(DELIVERY_FAILURE_CODES),
        state=UploadState.FORWARDING,
        error=None,
        failed_at=None,
        first_pacs_failure_at=None,
        next_retry_at=None,
        lease_until=None,
        lease_owner="",
        lease_expiries=0,
        attempts=0,
        dispatched_at=now,
    )
    if moved:
        _emit_after_commit(events.UPLOAD_FORWARDING, upload_id=upload_id)
    return moved


def upload_cancelled(*, upload_id: uuid.UUID) -> bool:
    """Any state in CANCELLABLE_STATES → ``cancelled``.

    Drops the lease, owner included: every later write of the worker that held it is
    conditional on its token and the state it expected, so none of them can undo the
    cancel, and the upload cannot be claimed again.
    """
    return _move(
        upload_id=upload_id,
        from_states=CANCELLABLE_STATES,
        state=UploadState.CANCELLED,
        lease_until=None,
        lease_owner="",
        next_retry_at=None,
        dispatched_at=None,
    )


__all__ = [
    "CANCELLABLE_STATES",
    "PAST_RECEIVING_STATES",
    "upload_cancelled",
    "upload_checked",
    "upload_confirmed",
    "upload_delivered",
    "upload_expired",
    "upload_forwarding_claim",
    "upload_forwarding_failed",
    "upload_lost_in_restore",
    "upload_poisoned",
    "upload_processing_failed",
    "upload_received",
    "upload_retried",
    "upload_retry_due",
    "upload_waits_for_pacs",
]
