"""Pushing a notification to a device, through the stand-in push service: encrypted
(aes128gcm) to the subscription's keys, signed (vapid, ES256, exp within 24 h), the fixed
words only, and what the push service's answers do to the subscription."""

from __future__ import annotations

import json
import socket
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from accounts.clientinfo import ClientInfo
from accounts.models import AuthSession
from accounts.services import auth_session_revoke
from notifications import deliveries, push, services
from notifications.clients import webpush
from notifications.models import Notification, NotificationKind, PushSubscription
from notifications.services import NotificationDraft
from uploads.models import UploadState

from .conftest import SignedIn, make_upload, sign_in
from .push_service import PushService

pytestmark = pytest.mark.django_db

# What make_upload's study carries: none of it may reach a push.
PATIENT_FIELDS = ["Secret^Patient", "Secret", "PID-4242", "19700101"]


def _subscribe(signed: SignedIn, service: PushService, name: str) -> PushSubscription:
    push.push_subscription_save(
        user_id=signed.user.pk,
        session_id=signed.session.id,
        subscription=service.subscription(name),
    )
    return PushSubscription.objects.get(session_id=signed.session.id)


def _upload_completed(signed: SignedIn) -> Notification:
    """The notification the pipeline makes when an upload completes: deliveries' own
    handler of ``upload.completed``, for an upload whose study carries PATIENT_FIELDS."""
    upload = make_upload(owner=signed.user, state=UploadState.COMPLETED)
    assert upload.studies.get().patient_name == "Secret^Patient"  # something to leak
    assert deliveries.upload_event_deliver(name="upload.completed", upload_id=str(upload.id)) == 1
    return Notification.objects.filter(upload_id=upload.id, user=signed.user).get()


def test_a_notification_reaches_the_device_encrypted_signed_and_without_patient_data(
    signed_in, push_service: PushService
):
    subscription = _subscribe(signed_in, push_service, "phone")
    earlier = _upload_completed(signed_in)
    notification = _upload_completed(signed_in)
    started = time.time()
    outcome = push.push_deliver(notification_id=notification.pk, subscription_id=subscription.pk)
    assert outcome == webpush.PushOutcome.DELIVERED, push_service.problems
    [received] = push_service.pushes("phone")
    assert push_service.problems == []
    assert received.payload == {
        "title": notification.title,
        "body": notification.body,
        "url": f"/#/study/{notification.upload_id}",
        "tag": f"upload-{notification.upload_id}",
        "unread": 2,
        "kind": "upload_completed",
        "seq": notification.event_seq,
        "notification_id": notification.pk,
    }
    assert notification.title.startswith("CT study sent ")
    for secret in PATIENT_FIELDS:
        assert secret.encode() not in received.plaintext
    assert len(received.plaintext) <= push.PAYLOAD_MAX_BYTES
    # RFC 8292 with an expiry set here (12 h), not a library default.
    assert received.claims["aud"] == push_service.base
    assert started + 12 * 3600 - 5 <= received.claims["exp"] <= time.time() + 12 * 3600 + 5
    assert received.claims["sub"].startswith(("mailto:", "https://"))
    assert received.headers["authorization"].startswith("vapid t=")
    assert received.headers["content-encoding"] == "aes128gcm"
    assert received.headers["ttl"] == "86400"
    assert received.headers["urgency"] == "normal"
    assert received.headers["topic"] == f"notification-{notification.pk}"
    assert PushSubscription.objects.get().last_delivered_at is not None
    del earlier


def test_a_failure_is_urgent_and_a_report_or_plain_notification_opens_its_screen(
    signed_in, push_service: PushService
):
    subscription = _subscribe(signed_in, push_service, "tablet")
    failed = services.event_append(
        user_id=signed_in.user.pk,
        type="report.additional_data_required",
        report_id=77,
        notification=NotificationDraft(
            NotificationKind.REPORT_ADDITIONAL_DATA_REQUIRED, "Question about the study", "b"
        ),
    )
    plain = services.event_append(
        user_id=signed_in.user.pk,
        type="test",
        notification=NotificationDraft(NotificationKind.REPORT_READY, "Report ready", "b"),
    )
    for event in (failed, plain):
        notification = Notification.objects.get(event_seq=event.seq, user=signed_in.user)
        push.push_deliver(notification_id=notification.pk, subscription_id=subscription.pk)
    first, second = push_service.pushes("tablet")
    assert first.payload["url"] == "/#/reports/77" and first.payload["tag"] == "report-77"
    assert first.headers["urgency"] == "high"
    assert second.payload["url"] == "/#/notifications"
    assert second.payload["unread"] == 2


@pytest.mark.parametrize("status", [410, 404])
def test_a_subscription_the_push_service_no_longer_knows_is_deleted(
    signed_in, push_service: PushService, status, caplog
):
    subscription = _subscribe(signed_in, push_service, "gone")
    other = _subscribe(sign_in(signed_in.user), push_service, "other")
    notification = _upload_completed(signed_in)
    push_service.answer("gone", status)
    with caplog.at_level("INFO", logger="notifications.push"):
        outcome = push.push_deliver(
            notification_id=notification.pk, subscription_id=subscription.pk
        )
    assert outcome == webpush.PushOutcome.GONE
    assert list(PushSubscription.objects.values_list("pk", flat=True)) == [other.pk]
    assert f"answered {status}" in caplog.text
    assert push_service.base not in caplog.text and "Secret" not in caplog.text


@pytest.mark.parametrize("statuses", [(429,), (500,), (503, 429)])
def test_a_busy_push_service_is_retried_and_the_push_then_delivered(
    signed_in, push_service: PushService, statuses
):
    subscription = _subscribe(signed_in, push_service, "busy")
    notification = _upload_completed(signed_in)
    push_service.answer("busy", *statuses)
    for status in statuses:
        with pytest.raises(push.PushServiceBusy) as busy:
            push.push_deliver(notification_id=notification.pk, subscription_id=subscription.pk)
        assert busy.value.status_code == status
        if status == 429:
            assert busy.value.retry_after == 1
    assert (
        push.push_deliver(notification_id=notification.pk, subscription_id=subscription.pk)
        == webpush.PushOutcome.DELIVERED
    )
    assert len(push_service.pushes("busy")) == 1
    assert PushSubscription.objects.filter(pk=subscription.pk).exists()


def test_the_task_retries_a_busy_push_service_and_then_delivers(
    signed_in, push_service: PushService
):
    from notifications.tasks import push_deliver_task

    subscription = _subscribe(signed_in, push_service, "retried")
    notification = _upload_completed(signed_in)
    push_service.answer("retried", 500, 429)
    # Run as a worker would, eagerly: each retry (countdown skipped) runs at once.
    result = push_deliver_task.apply(
        kwargs={"notification_id": notification.pk, "subscription_id": subscription.pk}
    )
    assert result.get() == "delivered"
    assert [r.status for r in push_service.pushes("retried", status=None)] == [500, 429, 201]
    assert push_service.problems == []
    assert push_deliver_task.max_retries == 10 and push_deliver_task.acks_late is True
    assert (push_deliver_task.soft_time_limit, push_deliver_task.time_limit) == (30, 40)


def test_the_retry_waits_for_retry_after_within_the_cap():
    assert push.push_retry_countdown(retries=0, retry_after=None) <= 1
    assert 256 <= push.push_retry_countdown(retries=9, retry_after=None) <= 512
    assert push.push_retry_countdown(retries=0, retry_after=120) == 120
    assert push.push_retry_countdown(retries=0, retry_after=86400) == 600
    assert push.push_retry_countdown(retries=30, retry_after=None) <= 600
    assert webpush.retry_after_seconds("7") == 7
    assert webpush.retry_after_seconds("soon") is None
    in_a_minute = timezone.now() + timedelta(seconds=60)
    http_date = in_a_minute.strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert 55 <= (webpush.retry_after_seconds(http_date) or 0) <= 61


def test_a_push_service_that_cannot_be_reached_is_busy(signed_in, push_service: PushService):
    subscription = _subscribe(signed_in, push_service, "closed")
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    PushSubscription.objects.filter(pk=subscription.pk).update(
        endpoint=f"http://127.0.0.1:{closed_port}/push/closed"
    )
    notification = _upload_completed(signed_in)
    with pytest.raises(push.PushServiceBusy) as busy:
        push.push_deliver(notification_id=notification.pk, subscription_id=subscription.pk)
    assert busy.value.status_code is None


def test_a_refusal_is_not_retried_and_keeps_the_subscription(
    signed_in, push_service: PushService, caplog
):
    subscription = _subscribe(signed_in, push_service, "refuses")
    notification = _upload_completed(signed_in)
    push_service.answer("refuses", 413)
    outcome = push.push_deliver(notification_id=notification.pk, subscription_id=subscription.pk)
    assert outcome == webpush.PushOutcome.REFUSED
    assert PushSubscription.objects.filter(pk=subscription.pk).exists()
    assert "refused by the push service: 413" in caplog.text


def test_a_push_signed_with_another_key_is_refused_by_the_push_service(
    signed_in, push_service: PushService
):
    """The stand-in checks k= against the key the browser subscribed with."""
    subscription = _subscribe(signed_in, push_service, "k")
    notification = _upload_completed(signed_in)
    from cryptography.hazmat.primitives.asymmetric import ec

    from notifications.vapid import public_key_text

    push_service.vapid_public_key = public_key_text(
        ec.generate_private_key(ec.SECP256R1()).public_key()
    )
    outcome = push.push_deliver(notification_id=notification.pk, subscription_id=subscription.pk)
    assert outcome == webpush.PushOutcome.REFUSED
    assert push_service.problems and "403" in push_service.problems[0]


def test_a_signed_out_devices_subscription_gets_nothing(signed_in, push_service: PushService):
    subscription = _subscribe(signed_in, push_service, "out")
    notification = _upload_completed(signed_in)
    # Revoked in this (test) transaction: the subscription is still there until commit.
    auth_session_revoke(session=signed_in.session, reason="logout", client=ClientInfo(None, ""))
    assert (
        push.push_deliver(notification_id=notification.pk, subscription_id=subscription.pk) is None
    )
    assert (
        push.notification_push_queue(notification_id=notification.pk, user_id=signed_in.user.pk)
        == 0
    )
    assert push_service.received == []


def test_another_users_subscription_never_gets_a_notification(signed_in, push_service: PushService):
    from accounts.tests.factories import UserFactory

    theirs = _subscribe(sign_in(UserFactory()), push_service, "theirs")
    notification = _upload_completed(signed_in)
    assert push.push_deliver(notification_id=notification.pk, subscription_id=theirs.pk) is None
    assert push_service.received == []


def test_the_payload_stays_within_3990_bytes_whatever_the_body():
    notification = Notification(
        pk=5,
        user_id=1,
        kind="upload_failed",
        title="CT study sent 10:42 could not be delivered",
        body="Ж" * 5000,  # two bytes each in UTF-8
        event_seq=9,
    )
    encoded = push.push_payload(notification=notification, unread=3)
    assert len(encoded) <= push.PAYLOAD_MAX_BYTES == 3990
    decoded = json.loads(encoded.decode("utf-8"))
    assert decoded["title"] == notification.title and decoded["body"].endswith("…")
    assert decoded["unread"] == 3 and decoded["seq"] == 9
    short = Notification(pk=6, user_id=1, kind="upload_failed", title="t", body="b", event_seq=1)
    assert json.loads(push.push_payload(notification=short, unread=0))["body"] == "b"


def test_every_fixed_text_fits_a_push():
    from notifications import texts

    label = "CT/MR/US study sent 30 Nov 10:42"
    longest = max(
        [
            *texts.UPLOAD_FAILED_BODIES.values(),
            texts.upload_needs_attention(label=label)[1],
            texts.report_answered(label=label)[1],
        ],
        key=len,
    )
    notification = Notification(pk=1, user_id=1, kind="x", title=label, body=longest, event_seq=1)
    assert json.loads(push.push_payload(notification=notification, unread=1))["body"] == longest


def test_pruning_deletes_subscriptions_whose_session_ended_without_the_event(
    signed_in, push_service: PushService
):
    ended = _subscribe(signed_in, push_service, "lost-event")
    kept = _subscribe(sign_in(signed_in.user), push_service, "kept")
    # Revoked behind the service's back (the event lost): only pruning notices.
    type(signed_in.session).objects.filter(pk=signed_in.session.pk).update(
        revoked_at=signed_in.session.created_at
    )
    services.notifications_prune()
    assert list(PushSubscription.objects.values_list("pk", flat=True)) == [kept.pk]
    del ended


def test_a_deactivated_users_devices_get_no_push(signed_in, push_service: PushService):
    subscription = _subscribe(signed_in, push_service, "inactive")
    notification = _upload_completed(signed_in)
    assert (
        push.notification_push_queue(notification_id=notification.pk, user_id=signed_in.user.pk)
        == 1
    )
    type(signed_in.user).objects.filter(pk=signed_in.user.pk).update(is_active=False)
    assert (
        push.notification_push_queue(notification_id=notification.pk, user_id=signed_in.user.pk)
        == 0
    )
    # A task queued before the deactivation sends nothing either.
    assert (
        push.push_deliver(notification_id=notification.pk, subscription_id=subscription.pk) is None
    )
    assert push_service.paths == []


def test_an_idle_expired_device_gets_no_push_and_pruning_deletes_it(
    signed_in, push_service: PushService, settings
):
    idle = _subscribe(signed_in, push_service, "idle")
    awake = _subscribe(sign_in(signed_in.user), push_service, "awake")
    notification = _upload_completed(signed_in)
    AuthSession.objects.filter(pk=signed_in.session.pk).update(
        last_seen_at=timezone.now() - settings.AUTH_SESSION_IDLE_TIMEOUT - timedelta(minutes=1)
    )
    assert (
        push.notification_push_queue(notification_id=notification.pk, user_id=signed_in.user.pk)
        == 1
    )
    assert push.push_deliver(notification_id=notification.pk, subscription_id=idle.pk) is None
    assert push_service.paths == []
    services.notifications_prune()
    assert list(PushSubscription.objects.values_list("pk", flat=True)) == [awake.pk]


@pytest.mark.django_db(transaction=True)
def test_an_answer_for_the_old_endpoint_leaves_a_renewed_subscription(
    signed_in, push_service: PushService
):
    """The browser renewed its subscription (a new endpoint) while a push to the old one
    was on its way: the old one's 410 must not delete the new one."""
    subscription = _subscribe(signed_in, push_service, "old")
    notification = _upload_completed(signed_in)
    renewed = push_service.subscription("new")
    push_service.answer("old", 410)

    def renew_meanwhile(received: object) -> None:
        """The renewal, committed from another connection while the push is answered."""
        del received
        try:
            push.push_subscription_save(
                user_id=signed_in.user.pk, session_id=signed_in.session.id, subscription=renewed
            )
        finally:
            connection.close()

    push_service.on_push = renew_meanwhile
    outcome = push.push_deliver(notification_id=notification.pk, subscription_id=subscription.pk)
    assert outcome == webpush.PushOutcome.GONE
    assert PushSubscription.objects.get(pk=subscription.pk).endpoint == renewed["endpoint"]


def test_a_user_keeps_the_ten_most_recently_used_subscriptions(
    signed_in, push_service: PushService
):
    devices = [sign_in(signed_in.user) for _ in range(11)]
    for number, device in enumerate(devices[:10]):
        _subscribe(device, push_service, f"device-{number}")
    # Device 0 was pushed to lately: device 1 is the least recently used.
    PushSubscription.objects.filter(session_id=devices[0].session.id).update(
        last_delivered_at=timezone.now()
    )
    _subscribe(devices[10], push_service, "device-10")
    left = set(PushSubscription.objects.values_list("session_id", flat=True))
    assert len(left) == push.MAX_SUBSCRIPTIONS_PER_USER == 10
    assert devices[1].session.id not in left
    assert {devices[0].session.id, devices[10].session.id} <= left
