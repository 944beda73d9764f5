"""Reads of the notifications app: a user's stream after a position, their notifications."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from django.db.models import QuerySet

from .models import Event, EventCounter, Notification, NotificationKind

# Events sent per database read while catching up: a client a day behind gets its backlog
# in a few reads without one huge query.
REPLAY_BATCH = 500


@dataclass(frozen=True)
class CatchUp:
    """What a connection at ``after`` sends next.

    ``events``: the messages after it, in order. ``reset``: the client is further behind
    than the events kept (or ahead of them: another database), so it must reload its lists
    and continue from ``position``. ``more``: a full batch, read again at once.
    """

    position: int
    events: list[dict[str, Any]] = field(default_factory=list)
    reset: bool = False
    more: bool = False


def event_last_seq(*, user_id: int) -> int:
    """The number of the user's newest event (0 before their first)."""
    return EventCounter.objects.filter(pk=user_id).values_list("last_seq", flat=True).first() or 0


def events_last_seqs(*, user_ids: list[int]) -> dict[int, int]:
    """``{user id: newest event number}`` for users who have events, in one query."""
    return dict(EventCounter.objects.filter(pk__in=user_ids).values_list("pk", "last_seq"))


def events_after(*, user_id: int, after: int, limit: int = REPLAY_BATCH) -> CatchUp:
    """The user's events numbered above ``after``, oldest first.

    Numbers are given without gaps (models' docstring), so a first event other than
    ``after + 1`` means the ones in between were pruned: a reset.
    """
    last = event_last_seq(user_id=user_id)
    if after == last:
        return CatchUp(position=after)
    if after > last:
        return CatchUp(position=last, reset=True)
    rows = list(
        Event.objects.filter(user_id=user_id, seq__gt=after)
        .order_by("seq")
        .values_list("seq", "data")[:limit]
    )
    if not rows or rows[0][0] != after + 1:
        return CatchUp(position=last, reset=True)
    return CatchUp(position=rows[-1][0], events=[data for _, data in rows], more=len(rows) == limit)


def notifications_for(*, user_id: int, unread: bool | None = None) -> QuerySet[Notification]:
    """The user's notifications, newest first; ``unread`` True/False filters by read state."""
    queryset = Notification.objects.filter(user_id=user_id).order_by("-created_at", "-id")
    if unread is True:
        queryset = queryset.filter(read_at__isnull=True)
    elif unread is False:
        queryset = queryset.filter(read_at__isnull=False)
    return queryset


def notifications_unread_count(*, user_id: int) -> int:
    return Notification.objects.filter(user_id=user_id, read_at__isnull=True).count()


@dataclass(frozen=True)
class UploadFacts:
    """What a notification may say about an upload: never the patient."""

    owner_id: int | None
    state: str
    created_at: Any
    updated_at: Any
    modalities: list[str]
    studies: int
    error_code: str


def upload_facts(*, upload_id: str) -> UploadFacts | None:
    """The upload's owner, state (and when it last changed), when it was sent, its
    modalities and error code."""
    from uploads.models import Study, UploadSession  # noqa: PLC0415 - app registry

    try:
        uuid.UUID(upload_id)
    except ValueError:
        return None  # not an upload id: nothing to tell anyone
    row = (
        UploadSession.objects.filter(pk=upload_id)
        .values("owner_id", "state", "created_at", "updated_at", "error")
        .first()
    )
    if row is None:
        return None
    modalities: list[str] = []
    studies = 0
    for found in Study.objects.filter(session__pk=upload_id).values_list("modalities", flat=True):
        studies += 1
        for modality in found or []:
            if modality and modality not in modalities:
                modalities.append(str(modality))
    error = row["error"] if isinstance(row["error"], dict) else {}
    return UploadFacts(
        owner_id=row["owner_id"],
        state=row["state"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        modalities=modalities,
        studies=studies,
        error_code=str(error.get("code") or ""),
    )


@dataclass(frozen=True)
class ReportFacts:
    """What a notification may say about a report, and who hears about it."""

    status: str
    updated_at: Any
    modality: str
    sent_at: Any
    service_level: str
    senders: list[int]
    assignee_id: int | None
    facility_id: int | None


def report_facts(*, report_id: int) -> ReportFacts | None:
    """The report's status and wording facts; ``senders``: its sender and the owners of its
    uploads (who sent the study)."""
    from reports.models import Report  # noqa: PLC0415 - app registry
    from uploads.models import UploadSession  # noqa: PLC0415

    report = (
        Report.objects.filter(pk=report_id)
        .only(
            "status",
            "updated_at",
            "modality",
            "created_at",
            "service_level",
            "sender_id",
            "assignee_id",
            "facility_id",
        )
        .first()
    )
    if report is None:
        return None
    uploads = list(
        UploadSession.objects.filter(reports=report)
        .order_by("created_at")
        .values_list("owner_id", "created_at")
    )
    senders = [report.sender_id] if report.sender_id else []
    senders += [owner for owner, _ in uploads if owner and owner not in senders]
    return ReportFacts(
        status=report.status,
        updated_at=report.updated_at,
        modality=report.modality,
        sent_at=uploads[0][1] if uploads else report.created_at,
        service_level=report.service_level,
        senders=senders,
        assignee_id=report.assignee_id,
        facility_id=report.facility_id,
    )


def reading_pool(*, facility_id: int | None) -> list[int]:
    """Active radiologists who read this facility's reports (reports_visible_to: those
    assigned to the facility, and those assigned to none, who read every facility)."""
    from django.db.models import Q  # noqa: PLC0415

    from accounts.models import Role, User  # noqa: PLC0415

    reads_all = Q(reading_facilities__isnull=True)
    reads_it = Q(reading_facilities=facility_id) if facility_id is not None else Q(pk__in=[])
    return list(
        User.objects.filter(role=Role.RADIOLOGIST, is_active=True)
        .filter(reads_all | reads_it)
        .values_list("pk", flat=True)
        .distinct()
        .order_by("pk")
    )


def report_claim_recipients(*, report_id: int, assignee_id: int) -> list[int]:
    """Who must hear that a pooled report was taken: everyone but ``assignee_id`` offered
    the report (a ``report_assigned`` notification) since they last heard it was taken
    (their latest ``report.claimed`` event of it), in id order."""
    from django.db.models import Max  # noqa: PLC0415

    offered = dict(
        Notification.objects.filter(report_id=report_id, kind=NotificationKind.REPORT_ASSIGNED)
        .exclude(user_id=assignee_id)
        .order_by()
        .values("user_id")
        .annotate(last=Max("event_seq"))
        .values_list("user_id", "last")
    )
    if not offered:
        return []
    told = dict(
        Event.objects.filter(report_id=report_id, type="report.claimed", user_id__in=offered)
        .order_by()
        .values("user_id")
        .annotate(last=Max("seq"))
        .values_list("user_id", "last")
    )
    return sorted(
        user_id for user_id, last in offered.items() if (last or 0) > told.get(user_id, -1)
    )


# Sessions asked about per query (well under every database's limit of parameters).
SESSION_CHECK_BATCH = 500


def stream_sessions_on(*, keys: list[tuple[int, str | None]]) -> set[tuple[int, str | None]]:
    """Of ``(user id, session id)`` pairs of open streams, those that may go on: the user
    is active and the session (None: a token without one) is neither revoked nor idle,
    the rule of ``accounts.selectors.auth_session_is_on``, for many at once (two queries
    per SESSION_CHECK_BATCH). Read-only."""
    from django.conf import settings  # noqa: PLC0415
    from django.utils import timezone  # noqa: PLC0415

    from accounts.models import AuthSession, User  # noqa: PLC0415 - app registry

    cutoff = timezone.now() - settings.AUTH_SESSION_IDLE_TIMEOUT
    on: set[tuple[int, str | None]] = set()
    for start in range(0, len(keys), SESSION_CHECK_BATCH):
        batch = keys[start : start + SESSION_CHECK_BATCH]
        active = set(
            User.objects.filter(pk__in={u for u, _ in batch}, is_active=True).values_list(
                "pk", flat=True
            )
        )
        sids: dict[uuid.UUID, str] = {}
        for _, sid in batch:
            if sid is not None:
                try:
                    sids[uuid.UUID(sid)] = sid
                except ValueError:
                    continue
        live = {
            (user_id, sids[pk])
            for pk, user_id in AuthSession.objects.filter(
                pk__in=list(sids), revoked_at__isnull=True, last_seen_at__gte=cutoff
            ).values_list("pk", "user_id")
        }
        on.update(
            (user_id, sid)
            for user_id, sid in batch
            if user_id in active and (sid is None or (user_id, sid) in live)
        )
    return on
