"""Claiming and renewing work on an upload: the lease that makes every task safe to run twice."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import Case, F, Q, When
from django.utils import timezone

from ..models import UploadSession


def lease_claim(
    *,
    upload_id: uuid.UUID,
    states: Iterable[str],
    due_only: bool = False,
    to_state: str | None = None,
) -> str | None:
    """Take the upload's lease if it is in ``states`` and nobody holds a live lease.

    Returns the lease token, or None when someone else holds the work or the state moved
    on. One conditional UPDATE: of two workers racing, exactly one gets a row count of 1,
    and with ``to_state`` the state changes in that same statement, so a cancel lands
    either before the claim (which then fails) or after it (and wins, see
    ``upload_cancelled``). With ``due_only``, an upload waiting for a retry is claimed only
    once its time came. Taking over a lease that ran out counts in ``lease_expiries``;
    the claim clears ``dispatched_at`` (the queued message was taken).
    """
    now = timezone.now()
    queryset = UploadSession.objects.filter(pk=upload_id, state__in=list(states)).filter(
        Q(lease_until__isnull=True) | Q(lease_until__lt=now)
    )
    if due_only:
        queryset = queryset.filter(Q(next_retry_at__isnull=True) | Q(next_retry_at__lte=now))
    token = uuid.uuid4().hex
    changes: dict[str, Any] = {"state": to_state} if to_state is not None else {}
    claimed = queryset.update(
        lease_until=now + timedelta(seconds=settings.UPLOAD_LEASE_SECONDS),
        lease_owner=token,
        attempts=F("attempts") + 1,
        # A lease still set here ran out: its holder died or hung without releasing it.
        lease_expiries=Case(
            When(lease_until__isnull=False, then=F("lease_expiries") + 1),
            default=F("lease_expiries"),
        ),
        dispatched_at=None,
        updated_at=now,
        **changes,
    )
    return token if claimed == 1 else None


def lease_renew(*, upload_id: uuid.UUID, token: str, state: str) -> bool:
    """Extend our lease while the upload is still in ``state``. False means stop working:
    it was cancelled, or our lease lapsed and another worker took over."""
    now = timezone.now()
    return (
        UploadSession.objects.filter(pk=upload_id, state=state, lease_owner=token).update(
            lease_until=now + timedelta(seconds=settings.UPLOAD_LEASE_SECONDS), updated_at=now
        )
        == 1
    )


def lease_release(*, upload_id: uuid.UUID, token: str, from_state: str, **changes: Any) -> bool:
    """Apply ``changes`` (usually a state transition) and drop the lease, if still ours
    and the upload is still in ``from_state``. The work ended without a crash, so the
    count of leases that ran out in a row starts again."""
    now = timezone.now()
    return (
        UploadSession.objects.filter(pk=upload_id, state=from_state, lease_owner=token).update(
            lease_until=None, lease_owner="", lease_expiries=0, updated_at=now, **changes
        )
        == 1
    )
