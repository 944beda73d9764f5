"""Mark read in the admin while another request marks one of the same notifications: the
audit record of the run counts only what the run changed (PostgreSQL: real row locks)."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, connections, transaction
from django.utils import timezone

from accounts.models import AuditEvent, User
from accounts.tests.factories import UserFactory
from notifications.models import Notification, NotificationKind

pytestmark = pytest.mark.django_db(transaction=True)

NOTIFICATIONS = "/admin/notifications/notification/"


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks need PostgreSQL")
def test_a_notification_marked_meanwhile_is_not_counted_in_the_admins_run(client):
    root = User.objects.create_superuser("root", "root@example.org", "Root-Password-123")
    client.force_login(root)
    ann = UserFactory(username="ann")
    first, second = (
        Notification.objects.create(user=ann, kind=NotificationKind.UPLOAD_COMPLETED, title=t)
        for t in ("First", "Second")
    )
    locked = threading.Event()
    go = threading.Event()
    errors: list[BaseException] = []

    def other_request() -> None:
        """Ann's phone marks the first one read, inside a transaction the admin must wait for."""
        try:
            with transaction.atomic():
                Notification.objects.select_for_update().get(pk=first.pk)
                locked.set()
                go.wait(10)
                Notification.objects.filter(pk=first.pk).update(read_at=timezone.now())
        except BaseException as exc:  # noqa: BLE001 (reported by the main thread)
            errors.append(exc)
        finally:
            connections.close_all()

    def go_once_the_admin_waits() -> None:
        """Let the other request commit only once the admin's run waits for its lock (a
        backend of this database waiting on a row lock), so the test shows the wait."""
        try:
            deadline = time.monotonic() + 30
            with connections["default"].cursor() as cursor:
                while time.monotonic() < deadline:
                    cursor.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND wait_event_type = 'Lock'"
                    )
                    if cursor.fetchone()[0]:
                        break
                    time.sleep(0.02)
                else:
                    errors.append(AssertionError("the admin's run never waited for the lock"))
        finally:
            go.set()
            connections.close_all()

    thread = threading.Thread(target=other_request)
    thread.start()
    try:
        assert locked.wait(10)
        threading.Thread(target=go_once_the_admin_waits).start()
        response = client.post(
            NOTIFICATIONS, {"action": "mark_read", "_selected_action": [first.pk, second.pk]}
        )
        assert response.status_code == 302
    finally:
        go.set()
        thread.join(10)
    assert not errors
    (marked,) = AuditEvent.objects.filter(action="notifications_marked")
    assert marked.detail["count"] == 1
    assert marked.detail["notification_ids"] == [second.pk]
    assert Notification.objects.filter(read_at__isnull=True).count() == 0
