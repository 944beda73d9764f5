"""Writes of the notifications app: events appended to users' streams, notifications made
from domain events, read state, stream tickets, pruning.

Every append locks the user's ``EventCounter`` row (see models' docstring for why), so
appends for one user are serialised and their numbers commit in order. The wake-up of the
web processes (``wakeup.wake_user``) runs after commit: a woken reader always finds the
event in the database, which stays the truth when a wake-up is lost.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.db import transaction
from django.utils import timezone

from relaypacs.errors import ApplicationError

from . import push, wakeup
from .models import Event, EventCounter, Notification, NotificationKind, StreamTicket

# The stream event (not a domain event) telling the reading pool a report was taken.
REPORT_CLAIMED = "report.claimed"
# Events are kept this long (the issue: 7 days); a client further behind reloads its lists.
EVENT_RETENTION = timedelta(days=7)
# A stream ticket opens one connection within this time, once.
TICKET_LIFETIME = timedelta(seconds=30)
# Expired tickets and old events are deleted in batches this size, so that the pruning
# job never holds SQLite's one write lock for long while uploads are being written.
PRUNE_BATCH = 2000
# Read notifications are deleted after this long; unread ones are kept (the centre shows them).
READ_NOTIFICATION_RETENTION = timedelta(days=90)


@dataclass(frozen=True)
class NotificationDraft:
    """A notification to make with an event: kind, title and body (no patient data)."""

    kind: str
    title: str
    body: str


def notification_payload(*, notification: Notification) -> dict[str, Any]:
    """The JSON of a notification, as the REST list and the stream send it."""
    return {
        "id": notification.pk,
        "kind": notification.kind,
        "title": notification.title,
        "body": notification.body,
        "upload_id": str(notification.upload_id) if notification.upload_id else None,
        "report_id": notification.report_id,
        "created_at": notification.created_at.isoformat(),
        "read": notification.read_at is not None,
        "read_at": notification.read_at.isoformat() if notification.read_at else None,
    }


def _counter_locked(*, user_id: int) -> EventCounter:
    # The row is made once per user; ignore_conflicts makes two first appends race safely.
    EventCounter.objects.bulk_create([EventCounter(user_id=user_id)], ignore_conflicts=True)
    return EventCounter.objects.select_for_update().get(pk=user_id)


def event_append(
    *,
    user_id: int,
    type: str,
    upload_id: uuid.UUID | str | None = None,
    report_id: int | None = None,
    state: str = "",
    notification: NotificationDraft | None = None,
    extra: dict[str, Any] | None = None,
    with_unread_count: bool = False,
) -> Event:
    """Append one event (and its notification, if any) to ``user_id``'s stream.

    Atomic; takes the user's counter row lock until commit, so numbers are strictly
    increasing and commit in order. An event with a notification (or
    ``with_unread_count``) carries ``unread_count``, counted after the lock is taken: of
    two concurrent changes of one user's read state, the later event has the later count.
    Wakes the web processes after commit, and queues a notification's Web Push to the
    user's devices (push.notification_push_queue). Not idempotent: each call is a new event (a
    domain event delivered twice makes two).
    """
    upload_uuid = uuid.UUID(str(upload_id)) if upload_id else None
    with transaction.atomic():
        counter = _counter_locked(user_id=user_id)
        seq = counter.last_seq + 1
        EventCounter.objects.filter(pk=user_id).update(last_seq=seq)
        now = timezone.now()
        data: dict[str, Any] = {
            "id": seq,
            "type": type,
            "upload_id": str(upload_uuid) if upload_uuid else None,
            "report_id": report_id,
            "state": state,
            "created_at": now.isoformat(),
            **(extra or {}),
        }
        if notification is not None:
            made = Notification.objects.create(
                user_id=user_id,
                kind=notification.kind,
                title=notification.title,
                body=notification.body,
                upload_id=upload_uuid,
                report_id=report_id,
                event_seq=seq,
                created_at=now,
            )
            data["notification"] = notification_payload(notification=made)
            # Pushed to the user's devices once it is committed (push.py).
            transaction.on_commit(
                partial(push.notification_push_queue, notification_id=made.pk, user_id=user_id),
                robust=True,  # a broker that is down loses the push, never the event
            )
        if notification is not None or with_unread_count:
            data["unread_count"] = _unread_count(user_id=user_id)
        event = Event.objects.create(
            user_id=user_id,
            seq=seq,
            type=type,
            upload_id=upload_uuid,
            report_id=report_id,
            state=state,
            data=data,
            created_at=now,
        )
        transaction.on_commit(lambda: wakeup.wake_user(user_id=user_id))
    return event


def _unread_count(*, user_id: int) -> int:
    return Notification.objects.filter(user_id=user_id, read_at__isnull=True).count()


def _not_found() -> ApplicationError:
    return ApplicationError(
        "not_found",
        "This notification does not exist, or it is not yours.",
        "Reload the notification list.",
        status_code=404,
    )


def _read_state_changed(*, user_id: int, ids: list[int], read: bool) -> int:
    """Tell the user's other devices (an event on their stream) so their counts agree;
    returns the unread count the event carries."""
    event = event_append(
        user_id=user_id,
        type="notifications.read" if read else "notifications.unread",
        extra={"notification_ids": ids},
        with_unread_count=True,
    )
    return int(event.data["unread_count"])


@transaction.atomic
def notification_mark(*, user_id: int, notification_id: int, read: bool) -> Notification:
    """Mark one of the user's notifications read (or unread). Idempotent: marking a read
    notification read changes nothing and sends no event. 404 for another user's."""
    notification = (
        Notification.objects.select_for_update().filter(pk=notification_id, user_id=user_id).first()
    )
    if notification is None:
        raise _not_found()
    if (notification.read_at is not None) == read:
        return notification
    notification.read_at = timezone.now() if read else None
    notification.save(update_fields=["read_at"])
    _read_state_changed(user_id=user_id, ids=[notification.pk], read=read)
    return notification


@dataclass(frozen=True)
class ReadAll:
    """What marking all read did: how many changed, and the unread count after it (a
    notification made meanwhile stays unread)."""

    marked: int
    unread_count: int


@transaction.atomic
def notifications_mark_all_read(*, user_id: int) -> ReadAll:
    """Mark every unread notification of the user read. Idempotent: with nothing unread
    it changes nothing and sends no event."""
    ids = list(
        Notification.objects.filter(user_id=user_id, read_at__isnull=True).values_list(
            "pk", flat=True
        )
    )
    if not ids:
        return ReadAll(marked=0, unread_count=_unread_count(user_id=user_id))
    changed = Notification.objects.filter(pk__in=ids, read_at__isnull=True).update(
        read_at=timezone.now()
    )
    unread = _read_state_changed(user_id=user_id, ids=ids, read=True)
    return ReadAll(marked=changed, unread_count=unread)


@transaction.atomic
def report_claimed_tell(
    *, user_id: int, report_id: int, assignee_id: int | None, extra: dict[str, Any]
) -> Event:
    """Tell a radiologist who was offered a pooled report (``report.assigned``) that
    another radiologist took it: their unread ``report_assigned`` notifications of the
    report are marked read, and a ``report.claimed`` event (with ``notification_ids`` and
    ``unread_count``, like ``notifications.read``) goes on their stream."""
    ids = list(
        Notification.objects.filter(
            user_id=user_id,
            report_id=report_id,
            kind=NotificationKind.REPORT_ASSIGNED,
            read_at__isnull=True,
        ).values_list("pk", flat=True)
    )
    if ids:
        Notification.objects.filter(pk__in=ids).update(read_at=timezone.now())
    return event_append(
        user_id=user_id,
        type=REPORT_CLAIMED,
        report_id=report_id,
        state="pending",
        extra={**extra, "assignee_id": assignee_id, "notification_ids": ids},
        with_unread_count=True,
    )


def _digest(ticket: str) -> str:
    return hashlib.sha256(ticket.encode()).hexdigest()


def stream_ticket_issue(
    *, user_id: int, session_id: uuid.UUID | None, access_expires_at: datetime
) -> tuple[str, datetime]:
    """A new single-use ticket for opening the stream from a URL; returns it and its
    expiry. Only its digest is stored."""
    ticket = "tkt_" + secrets.token_urlsafe(32)
    expires_at = timezone.now() + TICKET_LIFETIME
    StreamTicket.objects.create(
        digest=_digest(ticket),
        user_id=user_id,
        session_id=session_id,
        access_expires_at=access_expires_at,
        expires_at=expires_at,
    )
    return ticket, expires_at


def stream_ticket_redeem(*, ticket: str) -> StreamTicket | None:
    """Use a ticket: one conditional UPDATE, so of two connections racing with the same
    ticket exactly one gets it. None when unknown, used or expired."""
    now = timezone.now()
    digest = _digest(ticket)
    used = StreamTicket.objects.filter(
        digest=digest, used_at__isnull=True, expires_at__gt=now
    ).update(used_at=now)
    if used != 1:
        return None
    return StreamTicket.objects.get(digest=digest)


def notifications_prune(*, now: datetime | None = None) -> int:
    """Delete events older than EVENT_RETENTION, used or expired tickets, read
    notifications older than READ_NOTIFICATION_RETENTION and push subscriptions of ended
    sessions; returns the events deleted.
    Safe to run twice, in batches of PRUNE_BATCH."""
    now = now or timezone.now()
    deleted = 0
    while True:
        ids = list(
            Event.objects.filter(created_at__lt=now - EVENT_RETENTION).values_list("pk", flat=True)[
                :PRUNE_BATCH
            ]
        )
        if not ids:
            break
        deleted += Event.objects.filter(pk__in=ids).delete()[0]
    StreamTicket.objects.filter(expires_at__lt=now - TICKET_LIFETIME).delete()
    Notification.objects.filter(
        read_at__isnull=False, created_at__lt=now - READ_NOTIFICATION_RETENTION
    ).delete()
    push.push_subscriptions_of_ended_sessions_delete()
    return deleted
