"""Reads on accounts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db.models import QuerySet
from django.utils import timezone

from .models import AuditEvent, AuthSession, Role, User

# The audit actions of the upload pipeline's events (accounts.subscribers).
UPLOAD_AUDIT_ACTIONS = ("data_import", "instances_transferred")


def auth_sessions_active(*, user: User) -> QuerySet[AuthSession]:
    """The user's sessions that still work: not revoked and not idle-expired, newest first."""
    cutoff = timezone.now() - settings.AUTH_SESSION_IDLE_TIMEOUT
    return AuthSession.objects.filter(
        user=user, revoked_at__isnull=True, last_seen_at__gte=cutoff
    ).order_by("-last_seen_at")


def auth_session_is_on(*, session_id: str, user_id: int) -> bool:
    """Whether the session is neither revoked nor idle-expired, and is ``user_id``'s.

    Read-only, unlike ``services.auth_session_touch``: it neither records use nor revokes
    an idle session, so a long-lived connection (the notification stream) can check its
    session without keeping it from idling out."""
    import uuid  # noqa: PLC0415 - only this selector parses ids

    try:
        sid = uuid.UUID(session_id)
    except ValueError:
        return False
    cutoff = timezone.now() - settings.AUTH_SESSION_IDLE_TIMEOUT
    return AuthSession.objects.filter(
        pk=sid, user_id=user_id, revoked_at__isnull=True, last_seen_at__gte=cutoff
    ).exists()


def audit_events_visible_to(*, user: User) -> QuerySet[AuditEvent]:
    """The audit events a user may read (see docs/security.md, *Audit trail*).

    admin: all; auditor with a facility: the events filed under that facility; auditor
    without a facility: all; every other role: none.
    """
    queryset = AuditEvent.objects.all()
    if not user.is_active:
        return queryset.none()
    if user.role == Role.ADMIN:
        return queryset
    if user.role == Role.AUDITOR:
        if user.facility_id is not None:
            return queryset.filter(facility_id=user.facility_id)
        return queryset
    return queryset.none()


def audit_events(
    *,
    viewer: User,
    since: datetime | None = None,
    until: datetime | None = None,
    username: str | None = None,
    facility_code: str | None = None,
    action: str | None = None,
    outcome: str | None = None,
) -> QuerySet[AuditEvent]:
    """The audit events ``viewer`` may read (``audit_events_visible_to``), oldest first,
    filtered by time (``since`` <= t < ``until``), user, facility, action and outcome."""
    queryset = (
        audit_events_visible_to(user=viewer)
        .select_related("facility")
        .order_by("occurred_at", "id")
    )
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
    if outcome:
        queryset = queryset.filter(outcome=outcome)
    return queryset


@dataclass(frozen=True)
class UploadOrigin:
    """Whose upload it is and the facility its events are filed under, as the trail
    recorded them with the upload's first event."""

    owner_id: int | None
    facility_id: int | None


def audit_upload_origin(*, upload_id: str) -> UploadOrigin | None:
    """The owner and facility of the first audit event of the upload, if any: later
    events and reads of the upload are filed under the same facility, so the trail needs
    nothing of the uploads app."""
    if not upload_id:
        return None
    row = (
        AuditEvent.objects.filter(
            object_type="upload",
            object_id=upload_id,
            action__in=UPLOAD_AUDIT_ACTIONS,
            detail__owner_id__isnull=False,
        )
        .order_by("occurred_at", "id")
        .values_list("detail__owner_id", "facility_id")
        .first()
    )
    if row is None:
        return None
    owner, facility_id = row
    try:
        owner_id = int(owner) if owner is not None else None
    except (TypeError, ValueError):
        owner_id = None
    return UploadOrigin(owner_id=owner_id, facility_id=facility_id)


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


def audit_events_of_object(*, object_type: str, object_id: str) -> QuerySet[AuditEvent]:
    """The audit events of one object (a report's own history, shown to those who may
    see that object), oldest first, with their users. Not the audit trail of
    ``audit_events_visible_to``: the caller decides who may see the object."""
    return (
        AuditEvent.objects.filter(object_type=object_type, object_id=object_id)
        .select_related("user")
        .order_by("occurred_at", "id")
    )
