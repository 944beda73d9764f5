"""The notifications admin: notifications and stream events shown (never added or edited),
notifications marked read through the service, push subscriptions revoked through the
app's service and audited, their secrets never shown whole, and nothing for staff
without the permissions."""

from __future__ import annotations

import base64
import uuid

import pytest
from django.utils import timezone

from accounts.models import AuditEvent, User
from accounts.tests.factories import UserFactory
from notifications.models import Event, Notification, NotificationKind, PushSubscription
from notifications.push import push_status
from notifications.services import event_append

from .conftest import sign_in

pytestmark = pytest.mark.django_db

NOTIFICATIONS = "/admin/notifications/notification/"
EVENTS = "/admin/notifications/event/"
SUBSCRIPTIONS = "/admin/notifications/pushsubscription/"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


P256DH = _b64(b"\x04" + bytes(range(1, 65)))
AUTH = _b64(b"secret-auth-16by")
ENDPOINT_PATH = "fcm/send/dGhpcy1pcy1hLWNhcGFiaWxpdHktdXJsLW5ldmVyLXNob3du"


@pytest.fixture
def root(client):
    root = User.objects.create_superuser("root", "root@example.org", "Root-Password-123")
    client.force_login(root)
    return root


@pytest.fixture
def staff_without_permissions(client):
    user = UserFactory(username="plain-staff")
    User.objects.filter(pk=user.pk).update(is_staff=True)
    user.refresh_from_db()
    assert not user.get_all_permissions()
    client.force_login(user)
    return user


@pytest.fixture
def history():
    ann = UserFactory(username="ann")
    ben = UserFactory(username="ben")
    upload_id = uuid.uuid4()
    done = Notification.objects.create(
        user=ann,
        kind=NotificationKind.UPLOAD_COMPLETED,
        title="Upload complete",
        body="Your study reached the PACS.",
        upload_id=upload_id,
    )
    failed = Notification.objects.create(
        user=ben,
        kind=NotificationKind.UPLOAD_FAILED,
        title="Upload failed",
        read_at=timezone.now(),
    )
    # Through the service, as the app appends them (it numbers each user's stream).
    event_append(user_id=ann.pk, type="upload.completed", upload_id=upload_id)
    event_append(user_id=ben.pk, type="report.ready", report_id=7)
    signed = sign_in(ann)
    subscription = PushSubscription.objects.create(
        user=ann,
        session=signed.session,
        endpoint=f"https://fcm.googleapis.com/{ENDPOINT_PATH}",
        p256dh=P256DH,
        auth=AUTH,
    )
    return {
        "ann": ann,
        "ben": ben,
        "done": done,
        "failed": failed,
        "upload_id": upload_id,
        "subscription": subscription,
        "signed": signed,
    }


def test_the_lists_and_pages_render_for_a_superuser(client, root, history):
    for url, words in (
        (NOTIFICATIONS, ["Upload complete", "Upload failed"]),
        (EVENTS, ["upload.completed", "report.ready"]),
        (SUBSCRIPTIONS, ["fcm.googleapis.com", "ann"]),
    ):
        page = client.get(url)
        assert page.status_code == 200, url
        for word in words:
            assert word in page.content.decode(), (url, word)
    for url in (
        f"{NOTIFICATIONS}{history['done'].pk}/change/",
        f"{EVENTS}{Event.objects.first().pk}/change/",
        f"{SUBSCRIPTIONS}{history['subscription'].pk}/change/",
    ):
        assert client.get(url).status_code == 200, url


def test_search_and_filters_narrow_the_notifications(client, root, history):
    def titles(query):
        page = client.get(NOTIFICATIONS + query)
        assert page.status_code == 200, query
        return {n.title for n in page.context["cl"].result_list}

    assert titles("?q=ann") == {"Upload complete"}
    assert titles(f"?q={history['upload_id']}") == {"Upload complete"}
    assert titles("?read=no") == {"Upload complete"}
    assert titles("?read=yes") == {"Upload failed"}
    assert titles(f"?kind={NotificationKind.UPLOAD_FAILED}") == {"Upload failed"}
    events = client.get(EVENTS + "?type=report.ready").context["cl"].result_list
    assert [e.report_id for e in events] == [7]
    assert [e.user.username for e in client.get(EVENTS + "?q=ben").context["cl"].result_list] == [
        "ben"
    ]


def test_notifications_and_events_cannot_be_added_changed_or_deleted(client, root, history):
    done = history["done"]
    assert client.get(f"{NOTIFICATIONS}add/").status_code == 403
    assert client.get(f"{EVENTS}add/").status_code == 403
    # The page is the read-only view: no form to save, and a POST changes nothing.
    page = client.get(f"{NOTIFICATIONS}{done.pk}/change/")
    assert not page.context["has_change_permission"]
    assert 'name="_save"' not in page.content.decode()
    client.post(f"{NOTIFICATIONS}{done.pk}/change/", {"title": "changed"})
    done.refresh_from_db()
    assert done.title == "Upload complete"
    assert client.get(f"{NOTIFICATIONS}{done.pk}/delete/").status_code == 403
    event = Event.objects.get(user=history["ann"])
    assert client.get(f"{EVENTS}{event.pk}/delete/").status_code == 403
    assert client.post(
        EVENTS, {"action": "delete_selected", "_selected_action": [event.pk]}
    ).status_code in {200, 302}
    assert Event.objects.filter(pk=event.pk).exists()


def test_mark_read_goes_through_the_service_and_tells_the_users_devices(client, root, history):
    done, ann = history["done"], history["ann"]
    last = Event.objects.filter(user=ann).order_by("-seq").first().seq
    response = client.post(
        NOTIFICATIONS,
        {"action": "mark_read", "_selected_action": [done.pk, history["failed"].pk]},
    )
    assert response.status_code == 302
    done.refresh_from_db()
    assert done.read_at is not None
    # The user's stream hears of it (their other devices update their counts); the one
    # already read changes nothing and sends nothing.
    told = Event.objects.get(user=ann, seq__gt=last)
    assert told.type == "notifications.read" and told.data["notification_ids"] == [done.pk]
    assert not Event.objects.filter(user=history["ben"], type="notifications.read").exists()
    client.post(NOTIFICATIONS, {"action": "mark_unread", "_selected_action": [done.pk]})
    done.refresh_from_db()
    assert done.read_at is None


def test_each_run_of_mark_read_or_unread_is_one_audit_event(client, root, history):
    done, failed = history["done"], history["failed"]
    second = Notification.objects.create(
        user=history["ben"], kind=NotificationKind.UPLOAD_COMPLETED, title="Second"
    )
    client.post(
        NOTIFICATIONS,
        {"action": "mark_read", "_selected_action": [done.pk, failed.pk, second.pk]},
    )
    # One event for the run, naming the two it changed (the one read already is not).
    (marked,) = AuditEvent.objects.filter(action="notifications_marked")
    assert marked.user == root and marked.object_type == "notification"
    assert marked.detail == {
        "change": "changed",
        "read": True,
        "count": 2,
        "notification_ids": [done.pk, second.pk],
        "user_ids": sorted([history["ann"].pk, history["ben"].pk]),
    }
    client.post(NOTIFICATIONS, {"action": "mark_unread", "_selected_action": [done.pk]})
    unread = AuditEvent.objects.filter(action="notifications_marked").latest("pk")
    assert unread.pk != marked.pk
    assert unread.detail["read"] is False and unread.detail["notification_ids"] == [done.pk]
    # A run that changes nothing records nothing.
    client.post(NOTIFICATIONS, {"action": "mark_unread", "_selected_action": [done.pk]})
    assert AuditEvent.objects.filter(action="notifications_marked").count() == 2
    # The audit export filters by it (its list of actions was built with it in).
    from accounts.apis import AuditExportApi

    choices = AuditExportApi.AuditExportFilterSerializer().fields["action"].choices
    assert "notifications_marked" in choices


def test_a_push_subscriptions_secrets_are_never_shown_whole(client, root, history):
    subscription = history["subscription"]
    for url in (SUBSCRIPTIONS, f"{SUBSCRIPTIONS}{subscription.pk}/change/"):
        text = client.get(url).content.decode()
        assert P256DH not in text and AUTH not in text, url
        assert ENDPOINT_PATH not in text, url
        assert "fcm.googleapis.com" in text
    detail = client.get(f"{SUBSCRIPTIONS}{subscription.pk}/change/").content.decode()
    assert f"{P256DH[:6]}… ({len(P256DH)} characters)" in detail
    assert client.get(f"{SUBSCRIPTIONS}add/").status_code == 403
    client.post(f"{SUBSCRIPTIONS}{subscription.pk}/change/", {"auth": "x"})
    subscription.refresh_from_db()
    assert subscription.auth == AUTH


def test_deleting_a_push_subscription_revokes_it_through_the_service_and_is_audited(
    client, root, history
):
    subscription, signed = history["subscription"], history["signed"]
    assert push_status(session_id=signed.session.id).subscribed
    response = client.post(f"{SUBSCRIPTIONS}{subscription.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not PushSubscription.objects.filter(pk=subscription.pk).exists()
    # What the app asks on that device: not subscribed any more (it may subscribe again).
    assert not push_status(session_id=signed.session.id).subscribed
    recorded = AuditEvent.objects.get(action="push_subscription_revoked")
    assert recorded.user == root and recorded.object_id == str(subscription.pk)
    assert recorded.detail["user_id"] == history["ann"].pk
    assert recorded.detail["change"] == "deleted"


def test_deleting_several_subscriptions_at_once_revokes_each(client, root, history):
    other = sign_in(history["ben"])
    second = PushSubscription.objects.create(
        user=history["ben"],
        session=other.session,
        endpoint="https://updates.push.services.mozilla.com/wpush/v2/abc",
        p256dh=P256DH,
        auth=AUTH,
    )
    response = client.post(
        SUBSCRIPTIONS,
        {
            "action": "delete_selected",
            "_selected_action": [history["subscription"].pk, second.pk],
            "post": "yes",
        },
    )
    assert response.status_code == 302
    assert not PushSubscription.objects.exists()
    assert AuditEvent.objects.filter(action="push_subscription_revoked").count() == 2


def test_the_signed_in_filter_tells_revoked_devices_apart(client, root, history):
    revoked = sign_in(history["ben"])
    revoked.session.revoked_at = timezone.now()
    revoked.session.save(update_fields=["revoked_at"])
    PushSubscription.objects.create(
        user=history["ben"],
        session=revoked.session,
        endpoint="https://web.push.apple.com/QGabc",
        p256dh=P256DH,
        auth=AUTH,
    )

    def users(query):
        return [
            s.user.username for s in client.get(SUBSCRIPTIONS + query).context["cl"].result_list
        ]

    assert users("?session=active") == ["ann"]
    assert users("?session=revoked") == ["ben"]
    assert users("?q=ben") == ["ben"]


def test_staff_without_the_permissions_see_and_change_nothing(
    client, staff_without_permissions, history
):
    for url in (
        NOTIFICATIONS,
        EVENTS,
        SUBSCRIPTIONS,
        f"{NOTIFICATIONS}{history['done'].pk}/change/",
        f"{SUBSCRIPTIONS}{history['subscription'].pk}/change/",
        f"{SUBSCRIPTIONS}{history['subscription'].pk}/delete/",
    ):
        assert client.get(url).status_code == 403, url
    client.post(f"{SUBSCRIPTIONS}{history['subscription'].pk}/delete/", {"post": "yes"})
    client.post(NOTIFICATIONS, {"action": "mark_read", "_selected_action": [history["done"].pk]})
    assert PushSubscription.objects.filter(pk=history["subscription"].pk).exists()
    history["done"].refresh_from_db()
    assert history["done"].read_at is None
    index = client.get("/admin/").content.decode()
    assert "pushsubscription" not in index and "notification/" not in index


def test_view_permission_alone_shows_but_neither_marks_nor_revokes(client, history):
    from django.contrib.auth.models import Permission

    viewer = UserFactory(username="viewer")
    User.objects.filter(pk=viewer.pk).update(is_staff=True)
    viewer.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="notifications",
            codename__in=["view_notification", "view_pushsubscription"],
        )
    )
    client.force_login(viewer)
    assert client.get(NOTIFICATIONS).status_code == 200
    page = client.get(SUBSCRIPTIONS)
    assert page.status_code == 200
    assert client.get(f"{SUBSCRIPTIONS}{history['subscription'].pk}/delete/").status_code == 403
    client.post(NOTIFICATIONS, {"action": "mark_read", "_selected_action": [history["done"].pk]})
    history["done"].refresh_from_db()
    assert history["done"].read_at is None
    assert "mark_read" not in client.get(NOTIFICATIONS).content.decode()


# --- The Administrator role (not a superuser): the managed group's permissions ---------


def _with_role(username: str, role: str) -> User:
    from accounts.services.roles import user_role_access_apply

    user = UserFactory(username=username, role=role)
    user_role_access_apply(user=user)  # what every service that sets a role calls
    assert not user.is_superuser
    return user


def test_an_administrator_sees_the_lists_and_pages_and_uses_the_actions(client, history):
    from accounts.models import Role

    ada = _with_role("ada", Role.ADMIN)
    client.force_login(ada)
    done, subscription = history["done"], history["subscription"]
    for url in (
        NOTIFICATIONS,
        EVENTS,
        SUBSCRIPTIONS,
        f"{NOTIFICATIONS}{done.pk}/change/",
        f"{EVENTS}{Event.objects.first().pk}/change/",
        f"{SUBSCRIPTIONS}{subscription.pk}/change/",
        f"{SUBSCRIPTIONS}{subscription.pk}/delete/",
    ):
        assert client.get(url).status_code == 200, url
    index = client.get("/admin/").content.decode()
    for url in (NOTIFICATIONS, EVENTS, SUBSCRIPTIONS):
        assert url in index, url
    # What the pages offer, and nothing more: the two marks, no adding, editing or
    # deleting of notifications or events.
    assert set(client.get(NOTIFICATIONS).context["action_form"].fields["action"].choices) >= {
        ("mark_read", "Mark as read (for the user, on every device)"),
        ("mark_unread", "Mark as unread"),
    }
    assert "delete_selected" not in client.get(NOTIFICATIONS).content.decode()
    assert "delete_selected" not in client.get(EVENTS).content.decode()
    assert client.get(f"{NOTIFICATIONS}add/").status_code == 403
    assert not client.get(f"{NOTIFICATIONS}{done.pk}/change/").context["has_change_permission"]
    assert client.get(f"{EVENTS}{Event.objects.first().pk}/delete/").status_code == 403

    client.post(NOTIFICATIONS, {"action": "mark_read", "_selected_action": [done.pk]})
    done.refresh_from_db()
    assert done.read_at is not None
    marked = AuditEvent.objects.get(action="notifications_marked")
    assert marked.user == ada and marked.detail["notification_ids"] == [done.pk]

    # Revoking a device's subscription: through the service, audited as before.
    response = client.post(f"{SUBSCRIPTIONS}{subscription.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not PushSubscription.objects.filter(pk=subscription.pk).exists()
    assert not push_status(session_id=history["signed"].session.id).subscribed
    revoked = AuditEvent.objects.get(action="push_subscription_revoked")
    assert revoked.user == ada and revoked.object_id == str(subscription.pk)


def test_a_radiographer_is_sent_to_the_admin_sign_in_and_changes_nothing(client, history):
    from accounts.models import Role

    client.force_login(_with_role("rita", Role.RADIOGRAPHER))
    subscription = history["subscription"]
    for url in (NOTIFICATIONS, EVENTS, SUBSCRIPTIONS, f"{SUBSCRIPTIONS}{subscription.pk}/delete/"):
        response = client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"], url
    client.post(f"{SUBSCRIPTIONS}{subscription.pk}/delete/", {"post": "yes"})
    client.post(NOTIFICATIONS, {"action": "mark_read", "_selected_action": [history["done"].pk]})
    assert PushSubscription.objects.filter(pk=subscription.pk).exists()
    history["done"].refresh_from_db()
    assert history["done"].read_at is None
    assert not AuditEvent.objects.filter(
        action__in=["notifications_marked", "push_subscription_revoked"]
    ).exists()
