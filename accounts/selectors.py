"""Reads on accounts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

from .models import AuditEvent, AuthSession, User


def auth_sessions_active(*, user: User) -> QuerySet[AuthSession]:
    """The user's sessions that still work: not revoked and not idle-expired, newest first."""
    cutoff = timezone.now() - settings.AUTH_SESSION_IDLE_TIMEOUT
    return AuthSession.objects.filter(
        user=user, revoked_at__isnull=True, last_seen_at__gte=cutoff
    ).order_by("-last_seen_at")


def audit_events(
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    username: str | None = None,
    facility_code: str | None = None,
    action: str | None = None,
) -> QuerySet[AuditEvent]:
    """Audit events, oldest first, filtered by time (``since`` <= t < ``until``), user,
    facility and action."""
    queryset = AuditEvent.objects.select_related("facility").order_by("occurred_at", "id")
    if since is not None:
        queryset = queryset.filter(occurred_at__gte=since)
    if until is not None:
        queryset = queryset.filter(occurred_at__lt=until)
    if username:
        queryset = queryset.filter(username=username)
    if facility_code:
        queryset = queryset.filter(facility__code=facility_code)
    if action:
        queryset = queryset.filter(action=action)
    return queryset


@dataclass(frozen=True)
class UploadPreferences:
    """What a user's new uploads start with; ``chunk_size`` None means the server default."""

    service_level: str
    chunk_size: int | None
    duplicate_detection: bool


def user_upload_preferences(*, user: User) -> UploadPreferences:
    """For the upload pipeline (``upload_init``): the user's saved upload preferences."""
    return UploadPreferences(
        service_level=user.default_service_level or "routine",
        chunk_size=user.default_chunk_size,
        duplicate_detection=user.duplicate_detection,
    )
