"""Appends racing on PostgreSQL, made deterministic: another transaction holds a user's
counter lock (it appended an event and has not committed) until the test sees the
second writer wait for that lock in pg_stat_activity."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.db import connection, transaction
from django.test import Client

from notifications import deliveries, services
from notifications.models import Event, Notification
from relaypacs import events

from .conftest import make_upload, sign_in

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL row locks"),
]

TIMEOUT = 10


def _waiting_for_a_lock() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )
        return int(cursor.fetchone()[0])


def _draft() -> services.NotificationDraft:
    return services.NotificationDraft("upload_completed", "CT study was received", "Done.")


@contextmanager
def counter_held(holder: Callable[[], Any]) -> Iterator[threading.Event]:
    """Run ``holder`` (it appends to a user's stream) in another thread's transaction and
    keep that transaction, with the user's counter lock, open until the yielded event is
    set (or the block ends)."""
    locked, release = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def hold() -> None:
        try:
            with transaction.atomic():
                holder()
                locked.set()
                release.wait(TIMEOUT)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failures.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert locked.wait(TIMEOUT), failures
        yield release
    finally:
        release.set()
        thread.join(TIMEOUT)
    assert not failures


def run_blocked(work: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Start ``work`` in a thread and return once it waits for a lock."""
    results: list[Any] = []

    def run() -> None:
        try:
            results.append(work())
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            results.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + TIMEOUT
    while _waiting_for_a_lock() < 1:
        assert time.monotonic() < deadline, "the second writer never waited for the lock"
        time.sleep(0.02)
    return thread, results


def test_the_later_read_state_event_has_the_later_unread_count(technician):
    first, second, _third = (
        services.event_append(user_id=technician.pk, type="upload.completed", notification=_draft())
        for _ in range(3)
    )
    ids = [
        Notification.objects.get(event_seq=event.seq, user=technician).pk
        for event in (first, second)
    ]
    with counter_held(
        lambda: services.notification_mark(user_id=technician.pk, notification_id=ids[0], read=True)
    ) as release:
        thread, _ = run_blocked(
            lambda: services.notification_mark(
                user_id=technician.pk, notification_id=ids[1], read=True
            )
        )
        release.set()
        thread.join(TIMEOUT)
    counts = list(
        Event.objects.filter(user=technician, type="notifications.read")
        .order_by("seq")
        .values_list("data__unread_count", flat=True)
    )
    assert counts == [2, 1]  # before: [2, 2], the second counted before it waited


def test_read_all_answers_the_unread_count_after_it_not_zero(technician):
    signed_in = sign_in(technician)
    for _ in range(2):
        services.event_append(user_id=technician.pk, type="upload.completed", notification=_draft())
    # A new notification is being made while the user marks all read: it stays unread.
    with counter_held(
        lambda: services.event_append(
            user_id=technician.pk, type="upload.completed", notification=_draft()
        )
    ) as release:
        thread, results = run_blocked(
            lambda: Client().post("/api/v1/notifications/read-all", **signed_in.headers).json()
        )
        release.set()
        thread.join(TIMEOUT)
    assert results == [{"marked": 2, "unread_count": 1}]
    last = Event.objects.filter(user=technician).order_by("seq").last()
    assert last.type == "notifications.read" and last.data["unread_count"] == 1


class _ReleaseOnWarning(logging.Handler):
    def __init__(self, release: threading.Event) -> None:
        super().__init__(level=logging.WARNING)
        self.unlock = release
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self.unlock.set()


def test_an_append_that_meets_a_transient_database_error_is_retried(technician):
    """The counter row is locked by another transaction and this connection gives up
    waiting after 300 ms (lock_timeout: OperationalError); the first retry finds it free."""
    upload = make_upload(owner=technician)
    logger = logging.getLogger("notifications.deliveries")
    with counter_held(
        lambda: services.event_append(user_id=technician.pk, type="upload.started")
    ) as release:
        handler = _ReleaseOnWarning(release)
        logger.addHandler(handler)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SET lock_timeout = '300ms'")
            deliveries.upload_event_deliver(name=events.UPLOAD_COMPLETED, upload_id=str(upload.pk))
        finally:
            logger.removeHandler(handler)
            if connection.connection is not None:
                with connection.cursor() as cursor:
                    cursor.execute("RESET lock_timeout")
    assert handler.messages, "no transient error was met"
    assert "attempt 1 of 3" in handler.messages[0] and "OperationalError" in handler.messages[0]
    assert str(upload.pk) in handler.messages[0]
    assert list(
        Event.objects.filter(user=technician).order_by("seq").values_list("seq", "type")
    ) == [(1, "upload.started"), (2, "upload.completed")]
    assert Notification.objects.filter(user=technician, kind="upload_completed").exists()
    assert deliveries.APPEND_ATTEMPTS == 3
