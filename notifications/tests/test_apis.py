"""The REST API of notifications: a user's own, newest first, read state, tickets."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.tests.factories import UserFactory
from notifications import services
from notifications.models import Event, Notification, StreamTicket
from notifications.services import NotificationDraft

from .conftest import sign_in

pytestmark = pytest.mark.django_db


def _notify(user, title="CT study sent 10:42 was received by the PACS"):
    event = services.event_append(
        user_id=user.pk,
        type="upload.completed",
        state="completed",
        notification=NotificationDraft("upload_completed", title, "body"),
    )
    return Notification.objects.get(event_seq=event.seq, user=user)


def test_list_is_newest_first_with_unread_count_and_filter(client, signed_in):
    first, second, third = (_notify(signed_in.user, f"n{i}") for i in range(3))
    services.notification_mark(user_id=signed_in.user.pk, notification_id=first.pk, read=True)
    _notify(UserFactory())  # someone else's
    body = client.get("/api/v1/notifications", **signed_in.headers).json()
    assert [n["id"] for n in body["results"]] == [third.pk, second.pk, first.pk]
    assert body["unread_count"] == 2 and body["count"] == 3
    assert body["results"][2]["read"] is True
    unread = client.get("/api/v1/notifications?unread=true", **signed_in.headers).json()
    assert [n["id"] for n in unread["results"]] == [third.pk, second.pk]
    assert unread["unread_count"] == 2
    read = client.get("/api/v1/notifications?unread=false", **signed_in.headers).json()
    assert [n["id"] for n in read["results"]] == [first.pk]


def test_the_list_costs_the_same_queries_for_many_notifications(client, signed_in):
    _notify(signed_in.user)
    with CaptureQueriesContext(connection) as few:
        client.get("/api/v1/notifications", **signed_in.headers)
    for _ in range(20):
        _notify(signed_in.user)
    with CaptureQueriesContext(connection) as many:
        client.get("/api/v1/notifications", **signed_in.headers)
    assert len(many) == len(few)


def test_mark_read_unread_and_all_read(client, signed_in):
    one, two = _notify(signed_in.user), _notify(signed_in.user)
    read = client.post(f"/api/v1/notifications/{one.pk}/read", **signed_in.headers)
    assert read.status_code == 200, read.content
    assert read.json()["notification"]["read"] is True and read.json()["unread_count"] == 1
    again = client.post(f"/api/v1/notifications/{one.pk}/read", **signed_in.headers)
    assert again.json()["unread_count"] == 1  # idempotent
    unread = client.post(f"/api/v1/notifications/{one.pk}/unread", **signed_in.headers)
    assert unread.json()["notification"]["read"] is False and unread.json()["unread_count"] == 2
    everything = client.post("/api/v1/notifications/read-all", **signed_in.headers)
    assert everything.json() == {"marked": 2, "unread_count": 0}
    assert not Notification.objects.filter(read_at__isnull=True).exists()
    # Other devices hear about read state on the stream.
    types = list(
        Event.objects.filter(user=signed_in.user).order_by("seq").values_list("type", flat=True)
    )
    assert types[-3:] == ["notifications.read", "notifications.unread", "notifications.read"]
    assert (
        Event.objects.filter(user=signed_in.user).order_by("seq").last().data["unread_count"] == 0
    )
    del two


def test_another_users_notification_is_not_found(client, signed_in):
    theirs = _notify(UserFactory())
    response = client.post(f"/api/v1/notifications/{theirs.pk}/read", **signed_in.headers)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert Notification.objects.get(pk=theirs.pk).read_at is None


def test_notifications_need_a_sign_in(client):
    response = client.get("/api/v1/notifications")
    assert response.status_code == 401
    assert set(response.json()["error"]) >= {"code", "message", "hint"}
    assert client.post("/api/v1/notifications/ticket").status_code == 401


def test_a_ticket_is_issued_to_a_signed_in_user_and_stored_as_a_digest(client, signed_in):
    response = client.post("/api/v1/notifications/ticket", **signed_in.headers)
    assert response.status_code == 201, response.content
    ticket = response.json()["ticket"]
    stored = StreamTicket.objects.get()
    assert stored.digest != ticket and ticket not in stored.digest
    assert str(stored.session_id) == str(signed_in.session.id)


def test_the_openapi_schema_lists_the_notification_endpoints(client):
    schema = client.get("/api/v1/schema/?format=json").json()
    for path in [
        "/api/v1/notifications",
        "/api/v1/notifications/{notification_id}/read",
        "/api/v1/notifications/{notification_id}/unread",
        "/api/v1/notifications/read-all",
        "/api/v1/notifications/ticket",
    ]:
        assert path in schema["paths"], path
    listed = schema["paths"]["/api/v1/notifications"]["get"]["responses"]
    assert listed["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/NotificationPageOutput"
    )
    assert "unread_count" in schema["components"]["schemas"]["NotificationPageOutput"]["properties"]
    assert "401" in listed


def test_sign_in_helper_makes_a_session_token(signed_in):
    assert sign_in(signed_in.user).session.user_id == signed_in.user.pk
