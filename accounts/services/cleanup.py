"""Periodic deletion of sign-in records that no longer protect anything (Celery beat)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken

from ..models import AuthSession

# Ended sessions stay listed this long: the person's GDPR export and an administrator
# looking into a theft alert ("session_reuse_detected") still see the device, address and
# times of the last month. The audit trail keeps the lasting record of each sign-in.
AUTH_SESSION_RETENTION = timedelta(days=30)
# Rows deleted per statement: short transactions that never hold many row locks, while a
# backlog of a busy month still goes in a few seconds.
CLEANUP_BATCH_SIZE = 5000


@dataclass(frozen=True)
class AuthCleanupCounts:
    outstanding_tokens: int
    blacklisted_tokens: int
    sessions: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _delete_in_batches(queryset: QuerySet[Any]) -> int:
    """Delete the rows of ``queryset`` in batches of CLEANUP_BATCH_SIZE; returns how many."""
    model = queryset.model
    deleted = 0
    while ids := list(queryset.values_list("pk", flat=True)[:CLEANUP_BATCH_SIZE]):
        with transaction.atomic():
            _, per_model = model._default_manager.filter(pk__in=ids).delete()
        deleted += per_model.get(model._meta.label, 0)
    return deleted


def auth_records_cleanup(*, now: datetime | None = None) -> AuthCleanupCounts:
    """Delete refresh tokens past their expiry (with their blacklist rows) and sessions
    that ended, by revocation or by idling out, more than AUTH_SESSION_RETENTION ago.

    An expired refresh token is refused by its signature's expiry before any lookup, so
    its rows prove nothing any more (they expire REFRESH_TOKEN_LIFETIME after issue).
    Idempotent: running it twice deletes nothing the second time.
    """
    now = now or timezone.now()
    blacklisted = _delete_in_batches(BlacklistedToken.objects.filter(token__expires_at__lt=now))
    outstanding = _delete_in_batches(OutstandingToken.objects.filter(expires_at__lt=now))
    ended_before = now - AUTH_SESSION_RETENTION
    # A session is idle-expired AUTH_SESSION_IDLE_TIMEOUT after it was last seen, even if
    # nobody presented its tokens again to have it marked revoked.
    idle_before = ended_before - settings.AUTH_SESSION_IDLE_TIMEOUT
    sessions = _delete_in_batches(
        AuthSession.objects.filter(
            Q(revoked_at__lt=ended_before)
            | Q(revoked_at__isnull=True, last_seen_at__lt=idle_before)
        )
    )
    return AuthCleanupCounts(
        outstanding_tokens=outstanding, blacklisted_tokens=blacklisted, sessions=sessions
    )
