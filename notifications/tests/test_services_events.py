"""Event numbering, catch-up, reset and pruning."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import close_old_connections
from django.utils import timezone

from accounts.tests.factories import UserFactory
from notifications import selectors, services
from notifications.models import Event, Notification, StreamTicket

pytestmark = pytest.mark.django_db


def test_each_users_events_are_numbered_from_one_without_gaps(technician):
    other = UserFactory()
    for _ in range(3):
        services.event_append(user_id=technician.pk, type="upload.started")
    services.event_append(user_id=other.pk, type="upload.started")
    assert list(
        Event.objects.filter(user=technician).order_by("seq").values_list("seq", flat=True)
    ) == [1, 2, 3]
    assert list(Event.objects.filter(user=other).values_list("seq", flat=True)) == [1]


@pytest.mark.django_db(transaction=True)
def test_concurrent_producers_get_contiguous_numbers_that_commit_in_order(technician):
    """Eight threads (eight PostgreSQL connections) appending at once: every number once,
    1..N, and a reader polling meanwhile never sees a number before a smaller one."""
    per_thread, threads = 15, 8
    seen: list[int] = []
    done = threading.Event()

    def produce() -> None:
        try:
            for _ in range(per_thread):
                services.event_append(user_id=technician.pk, type="upload.started")
        finally:
            close_old_connections()

    def read() -> None:
        position = 0
        try:
            while not done.is_set() or position < per_thread * threads:
                batch = selectors.events_after(user_id=technician.pk, after=position)
                assert not batch.reset
                for event in batch.events:
                    assert event["id"] == position + 1
                    position = event["id"]
                    seen.append(position)
        finally:
            close_old_connections()

    reader = threading.Thread(target=read)
    reader.start()
    workers = [threading.Thread(target=produce) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    done.set()
    reader.join(timeout=60)
    assert seen == list(range(1, per_thread * threads + 1))


def test_catch_up_returns_what_was_missed_in_order(technician):
    for name in ["upload.started", "upload.received", "upload.forwarding", "upload.completed"]:
        services.event_append(user_id=technician.pk, type=name)
    batch = selectors.events_after(user_id=technician.pk, after=1)
    assert [e["type"] for e in batch.events] == [
        "upload.received",
        "upload.forwarding",
        "upload.completed",
    ]
    assert [e["id"] for e in batch.events] == [2, 3, 4]
    assert batch.position == 4 and not batch.reset
    assert selectors.events_after(user_id=technician.pk, after=4).events == []


def test_a_client_behind_the_kept_events_is_told_to_reload(technician):
    for _ in range(3):
        services.event_append(user_id=technician.pk, type="upload.started")
    Event.objects.filter(user=technician, seq__lte=2).update(
        created_at=timezone.now() - timedelta(days=8)
    )
    assert services.notifications_prune() == 2
    assert selectors.events_after(user_id=technician.pk, after=2).events[0]["id"] == 3
    behind = selectors.events_after(user_id=technician.pk, after=1)
    assert behind.reset and behind.position == 3
    ahead = selectors.events_after(user_id=technician.pk, after=99)  # another database
    assert ahead.reset and ahead.position == 3


def test_prune_keeps_a_week_and_drops_old_tickets_and_old_read_notifications(technician):
    services.event_append(user_id=technician.pk, type="upload.started")
    ticket, _ = services.stream_ticket_issue(
        user_id=technician.pk,
        session_id=None,
        access_expires_at=timezone.now() + timedelta(minutes=5),
    )
    StreamTicket.objects.update(expires_at=timezone.now() - timedelta(minutes=5))
    old = Notification.objects.create(
        user=technician,
        kind="upload_completed",
        title="t",
        read_at=timezone.now(),
        created_at=timezone.now() - timedelta(days=100),
    )
    unread_old = Notification.objects.create(
        user=technician,
        kind="upload_completed",
        title="t",
        created_at=timezone.now() - timedelta(days=100),
    )
    assert services.notifications_prune() == 0
    assert Event.objects.filter(user=technician).count() == 1
    assert not StreamTicket.objects.exists()
    assert not Notification.objects.filter(pk=old.pk).exists()
    assert Notification.objects.filter(pk=unread_old.pk).exists()


def test_a_ticket_is_used_once_and_only_within_its_lifetime(technician):
    ticket, _ = services.stream_ticket_issue(
        user_id=technician.pk,
        session_id=None,
        access_expires_at=timezone.now() + timedelta(minutes=5),
    )
    assert not StreamTicket.objects.filter(digest=ticket).exists()  # only its digest is kept
    assert services.stream_ticket_redeem(ticket=ticket) is not None
    assert services.stream_ticket_redeem(ticket=ticket) is None
    late, _ = services.stream_ticket_issue(
        user_id=technician.pk,
        session_id=None,
        access_expires_at=timezone.now() + timedelta(minutes=5),
    )
    StreamTicket.objects.filter(used_at__isnull=True).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert services.stream_ticket_redeem(ticket=late) is None


def test_beat_prunes_with_the_notifications_task(technician, settings):
    from notifications.tasks import notifications_prune_task

    assert (
        settings.CELERY_BEAT_SCHEDULE["notifications-prune"]["task"]
        == "notifications.tasks.notifications_prune_task"
    )
    services.event_append(user_id=technician.pk, type="upload.started")
    Event.objects.update(created_at=timezone.now() - timedelta(days=7, minutes=1))
    assert notifications_prune_task.apply().get() == 1
    assert not Event.objects.exists()
