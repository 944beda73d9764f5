"""The user's own settings: profile, upload preferences, and a GDPR export of their data."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import transaction

from relaypacs.errors import ApplicationError

from ..clientinfo import ClientInfo
from ..models import AuditEvent, AuthSession, User
from .audit import audit_record
from .mail import email_change_attempt_notice_queue, verification_email_queue
from .reauth import current_password_confirm

SERVICE_LEVELS = ("routine", "urgent", "emergency", "stat")


@transaction.atomic
def profile_update(
    *,
    user: User,
    full_name: str | None,
    email: str | None,
    current_password: str | None = None,
    client: ClientInfo,
) -> User:
    """Change the full name at once; a new email address is used once the link sent to it
    is followed (until then it waits in ``pending_email``).

    A new email address needs the account's password: the address is where password
    reset links go, so changing it takes the account over. Raises
    ``current_password_required`` / ``invalid_current_password`` (400); nothing is saved
    when one is raised. An address another account already uses is accepted and shown as
    pending like any other, so the answer does not tell who has an account; its owner is
    emailed a notice instead of a link, and no link can confirm it (email_verify checks
    again).
    """
    changed: list[str] = []
    if full_name is not None and full_name != user.full_name:
        user.full_name = full_name
        changed.append("full_name")
    if email is not None:
        email = User.objects.normalize_email(email)
        if email.lower() != user.email.lower():
            current_password_confirm(user=user, password=current_password)
            owner = (
                User.objects.filter(email__iexact=email).exclude(pk=user.pk).order_by("pk").first()
            )
            user.pending_email = email
            changed.append("pending_email")
            if owner is not None:
                email_change_attempt_notice_queue(owner=owner)
            else:
                verification_email_queue(user=user, email=email)
    if changed:
        user.save(update_fields=changed)
        audit_record(
            action="profile_changed",
            user=user,
            ip_address=client.ip_address,
            user_agent=client.user_agent,
            detail={"fields": changed},
        )
    return user


def preferences_update(
    *,
    user: User,
    default_service_level: str | None = None,
    default_chunk_size: int | None = None,
    duplicate_detection: bool | None = None,
    clear_chunk_size: bool = False,
) -> User:
    """Save the upload preferences the PWA starts new uploads with.

    Raises ``invalid_chunk_size`` (400) outside the server's limits and
    ``invalid_service_level`` (400) for an unknown level.
    """
    changed: list[str] = []
    if default_service_level is not None:
        if default_service_level not in SERVICE_LEVELS:
            raise ApplicationError(
                "invalid_service_level",
                "This service level is not known.",
                "Choose routine, urgent, emergency or stat.",
            )
        user.default_service_level = default_service_level
        changed.append("default_service_level")
    if clear_chunk_size:
        user.default_chunk_size = None
        changed.append("default_chunk_size")
    elif default_chunk_size is not None:
        low, high = settings.UPLOAD_MIN_CHUNK_SIZE, settings.UPLOAD_MAX_CHUNK_SIZE
        if not low <= default_chunk_size <= high:
            raise ApplicationError(
                "invalid_chunk_size",
                f"The chunk size must be between {low // 1024} KiB and {high // 1024 // 1024} MiB.",
                "Leave it empty to use the server's default; smaller chunks suit slow links.",
            )
        user.default_chunk_size = default_chunk_size
        changed.append("default_chunk_size")
    if duplicate_detection is not None:
        user.duplicate_detection = duplicate_detection
        changed.append("duplicate_detection")
    if changed:
        user.save(update_fields=changed)
    return user


def user_data_export(*, user: User, client: ClientInfo) -> dict[str, Any]:
    """Everything the accounts app holds about the user, as JSON-ready data (GDPR art. 15/20).

    The export is audited ("Export"). Uploads are listed by the upload API.
    """
    sessions = AuthSession.objects.filter(user=user).order_by("created_at")
    events = AuditEvent.objects.filter(user=user).order_by("occurred_at", "id")
    audit_record(
        action="export",
        user=user,
        ip_address=client.ip_address,
        user_agent=client.user_agent,
        object_type="user",
        object_id=str(user.pk),
        detail={"kind": "gdpr_export"},
    )
    return {
        "profile": {
            "username": user.username,
            "email": user.email,
            "pending_email": user.pending_email,
            "full_name": user.full_name,
            "role": user.role,
            "facility": user.facility.code if user.facility else None,
            "email_verified": user.email_verified,
            "approval": user.approval,
            "date_joined": user.date_joined.isoformat(),
            "last_login": user.last_login.isoformat() if user.last_login else None,
        },
        "preferences": {
            "default_service_level": user.default_service_level,
            "default_chunk_size": user.default_chunk_size,
            "duplicate_detection": user.duplicate_detection,
        },
        "sessions": [
            {
                "id": str(s.id),
                "user_agent": s.user_agent,
                "ip_address": s.ip_address,
                "created_at": s.created_at.isoformat(),
                "last_seen_at": s.last_seen_at.isoformat(),
                "revoked_at": s.revoked_at.isoformat() if s.revoked_at else None,
            }
            for s in sessions
        ],
        "audit_events": [
            {
                "occurred_at": e.occurred_at.isoformat(),
                "action": e.action,
                "event_id": e.event_id,
                "outcome": e.outcome,
                "ip_address": e.ip_address,
                "object_type": e.object_type,
                "object_id": e.object_id,
            }
            for e in events.iterator(chunk_size=2000)
        ],
    }
