"""The server POSTs to an address a browser gave: only to a push service's (a host name
resolving to public addresses, port 443), checked when it is saved and again for each
push, connecting to the address checked; never following a redirect, never reading an
answer's body. No internet needed: IP literals, and names that resolve to loopback."""

from __future__ import annotations

import ipaddress
import json
import time

import pytest

from notifications import push
from notifications.clients import webpush
from notifications.models import PushSubscription

from .conftest import SignedIn
from .push_service import PushService, wait_for_body_sent

pytestmark = pytest.mark.django_db

URL = "/api/v1/notifications/push-subscriptions"

INSIDE_ADDRESSES = [
    "127.0.0.1",  # loopback
    "127.8.9.10",
    "10.1.2.3",  # private (RFC 1918)
    "172.16.0.1",
    "192.168.1.1",
    "100.64.0.1",  # shared (carrier-grade NAT)
    "169.254.169.254",  # link-local: the cloud metadata service
    "0.0.0.0",  # unspecified
    "224.0.0.1",  # multicast
    "240.0.0.1",  # reserved
    "255.255.255.255",
    "192.0.2.1",  # documentation
    "::1",
    "::",
    "fd00::1",  # unique local
    "fe80::1",  # link-local
    "ff02::1",  # multicast
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:8.8.8.8",
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "2001:db8::1",  # documentation
]


@pytest.mark.parametrize("address", INSIDE_ADDRESSES)
def test_no_inside_address_is_public(address):
    assert not webpush._address_is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "142.250.74.42", "2606:4700:4700::1111"])
def test_a_push_services_public_address_is(address):
    assert webpush._address_is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "endpoint",
    [
        *(
            f"https://{a}/push/x" if ":" not in a else f"https://[{a}]/push/x"
            for a in INSIDE_ADDRESSES
        ),
        "https://8.8.8.8/push/x",  # a literal, even a public one: push services have names
        "https://localhost/push/x",  # a name resolving to loopback
        "https://LocalHost./push/x",
        "https://2130706433/push/x",  # 127.0.0.1 written as one number: the resolver takes it
        "https://0x7f.1/push/x",
        "https://push.example.org:8443/push/x",  # not 443
        "https://no-such-host.invalid/push/x",  # does not resolve
    ],
)
def test_an_endpoint_that_is_not_a_push_services_is_refused(endpoint):
    with pytest.raises(webpush.EndpointRefused) as refused:
        webpush.endpoint_addresses(endpoint=endpoint, allow_insecure=False)
    assert "push address" in str(refused.value)
    assert endpoint.split("/")[2] not in str(refused.value)


def test_the_test_setting_lets_loopback_and_any_port_through_but_nothing_else():
    assert webpush.endpoint_addresses(
        endpoint="http://localhost:8123/push/x", allow_insecure=True
    ) == ("127.0.0.1",)
    assert webpush.endpoint_addresses(
        endpoint="http://127.0.0.1:9/push/x", allow_insecure=True
    ) == ("127.0.0.1",)
    for inside in ("10.1.2.3", "169.254.169.254", "[fd00::1]", "[::ffff:127.0.0.1]"):
        with pytest.raises(webpush.EndpointRefused):
            webpush.endpoint_addresses(endpoint=f"http://{inside}/push/x", allow_insecure=True)


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://169.254.169.254/latest/meta-data",
        "https://localhost/push/x",
        "https://[::1]/push/x",
        "https://10.1.2.3/push/x",
        "https://[fd12:3456::1]/push/x",
    ],
)
def test_saving_a_subscription_to_an_inside_address_is_refused_in_words(
    client, signed_in: SignedIn, push_service: PushService, settings, endpoint
):
    settings.WEB_PUSH_ALLOW_INSECURE_ENDPOINTS = False
    body = push_service.subscription("inside")
    body["endpoint"] = endpoint
    response = client.post(
        URL, data=json.dumps(body), content_type="application/json", **signed_in.headers
    )
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid_push_subscription"
    assert "push address" in error["message"] and endpoint not in error["message"]
    assert not PushSubscription.objects.exists()


def _subscribed(signed: SignedIn, service: PushService, name: str) -> PushSubscription:
    push.push_subscription_save(
        user_id=signed.user.pk,
        session_id=signed.session.id,
        subscription=service.subscription(name),
    )
    return PushSubscription.objects.get(session_id=signed.session.id)


def _notification(signed: SignedIn) -> int:
    from notifications import services
    from notifications.models import Notification, NotificationKind
    from notifications.services import NotificationDraft

    event = services.event_append(
        user_id=signed.user.pk,
        type="test",
        notification=NotificationDraft(NotificationKind.REPORT_READY, "Report ready", "b"),
    )
    return Notification.objects.get(event_seq=event.seq, user=signed.user).pk


def test_an_endpoint_refused_at_send_time_is_not_sent_to_and_is_deleted(
    signed_in, push_service: PushService, settings, caplog
):
    """What DNS rebinding looks like to the server: the address checked when the
    subscription was saved is an inside one when the push is sent."""
    subscription = _subscribed(signed_in, push_service, "rebound")
    settings.WEB_PUSH_ALLOW_INSECURE_ENDPOINTS = False  # 127.0.0.1 is now an inside address
    with caplog.at_level("INFO", logger="notifications.push"):
        outcome = push.push_deliver(
            notification_id=_notification(signed_in), subscription_id=subscription.pk
        )
    assert outcome == webpush.PushOutcome.UNSAFE
    assert push_service.paths == []
    assert not PushSubscription.objects.exists()
    assert "not a public address" in caplog.text and push_service.base not in caplog.text


def test_a_host_that_does_not_resolve_at_send_time_is_retried_not_deleted(
    signed_in, push_service: PushService
):
    subscription = _subscribed(signed_in, push_service, "unresolved")
    port = push_service.base.rsplit(":", 1)[1]
    PushSubscription.objects.filter(pk=subscription.pk).update(
        endpoint=f"http://no-such-host.invalid:{port}/push/unresolved"
    )
    with pytest.raises(push.PushServiceBusy):
        push.push_deliver(notification_id=_notification(signed_in), subscription_id=subscription.pk)
    assert PushSubscription.objects.filter(pk=subscription.pk).exists()
    assert push_service.paths == []


def test_the_push_connects_to_the_address_checked_not_a_new_lookup(push_service: PushService):
    """A name that resolves to nothing now still reaches the address that was checked:
    the connection never looks the name up again (DNS rebinding cannot redirect it)."""
    port = push_service.base.rsplit(":", 1)[1]
    with webpush.PushSession(("127.0.0.1",)) as session:
        response = session.post(f"http://push.rebinding.invalid:{port}/push/pinned", data=b"x")
        with response:
            assert response.status_code == 404  # the stand-in answered: no such device
    assert push_service.paths == ["/push/pinned"]


@pytest.mark.parametrize("status", [307, 302, 301, 308])
def test_a_redirect_is_not_followed_and_the_subscription_is_deleted(
    signed_in, push_service: PushService, status, caplog
):
    subscription = _subscribed(signed_in, push_service, "redirects")
    push_service.answer("redirects", status)
    outcome = push.push_deliver(
        notification_id=_notification(signed_in), subscription_id=subscription.pk
    )
    assert outcome == webpush.PushOutcome.UNSAFE
    assert push_service.paths == ["/push/redirects"]  # not /push/redirects-redirected
    assert not PushSubscription.objects.exists()
    assert f"it answered {status}" in caplog.text and push_service.base not in caplog.text


BIG_BODY_BYTES = 256 * 1024 * 1024  # far more than any socket buffer holds


@pytest.mark.parametrize(
    ("status", "outcome"), [(201, "delivered"), (500, "busy"), (400, "refused"), (307, "unsafe")]
)
def test_an_answers_body_is_never_read(signed_in, push_service: PushService, status, outcome):
    subscription = _subscribed(signed_in, push_service, "big")
    push_service.answer("big", status)
    push_service.big_body("big", BIG_BODY_BYTES)
    started = time.monotonic()
    try:
        result = push.push_deliver(
            notification_id=_notification(signed_in), subscription_id=subscription.pk
        )
    except push.PushServiceBusy:
        result = webpush.PushOutcome.BUSY
    assert result == outcome
    assert time.monotonic() - started < 10
    assert wait_for_body_sent(push_service, "big") < BIG_BODY_BYTES / 4


def test_the_timeouts_are_bounded():
    assert webpush.TIMEOUT_SECONDS == (5.0, 10.0)


@pytest.mark.parametrize(
    ("endpoint", "aud"),
    [
        ("https://FCM.GoogleAPIs.com/fcm/send/x", "https://fcm.googleapis.com"),
        (
            "https://updates.push.services.mozilla.com:443/wpush/v2/x",
            "https://updates.push.services.mozilla.com",
        ),
        ("https://web.push.apple.com:8443/x", "https://web.push.apple.com:8443"),
        ("http://127.0.0.1:80/push/x", "http://127.0.0.1"),
        ("http://[::1]:8080/push/x", "http://[::1]:8080"),
    ],
)
def test_the_audience_is_the_normalised_origin(endpoint, aud):
    assert webpush.audience(endpoint) == aud
