"""The push-subscription API: one subscription per signed-in device, checked like a push
service would need it, ended with the device's session."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from accounts.clientinfo import ClientInfo
from accounts.services import auth_session_revoke, auth_sessions_revoke_all
from accounts.tests.factories import UserFactory
from notifications.models import PushSubscription
from notifications.vapid import b64url_decode

from .conftest import sign_in
from .push_service import PushService

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/api/v1/notifications/push-subscriptions"


@pytest.fixture(autouse=True)
def _vapid_key_in_a_temporary_folder(settings, tmp_path):
    """Not the checkout's DATA_DIR (the push_service fixture does the same)."""
    settings.WEB_PUSH_KEY_DIR = tmp_path / "push"


def _post(client, signed, body):
    return client.post(
        URL, data=json.dumps(body), content_type="application/json", **signed.headers
    )


def test_status_gives_the_vapid_key_to_subscribe_with(client, signed_in, settings, tmp_path):
    settings.WEB_PUSH_KEY_DIR = tmp_path / "push"
    response = client.get(URL, **signed_in.headers)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["enabled"] is True and body["subscribed"] is False
    point = b64url_decode(body["vapid_public_key"])
    assert "=" not in body["vapid_public_key"] and len(point) == 65 and point[0] == 4
    ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)  # a P-256 point


def test_subscribe_replace_and_delete_this_devices_subscription(
    client, signed_in, push_service: PushService
):
    first = push_service.subscription("first")
    created = _post(client, signed_in, first)
    assert created.status_code == 201, created.content
    assert created.json() == {"subscribed": True}
    assert client.get(URL, **signed_in.headers).json()["subscribed"] is True
    stored = PushSubscription.objects.get()
    assert stored.session_id == signed_in.session.id and stored.user_id == signed_in.user.pk
    assert stored.endpoint == first["endpoint"] and stored.auth == first["keys"]["auth"]

    second = push_service.subscription("second")
    replaced = _post(client, signed_in, second)
    assert replaced.status_code == 200, replaced.content
    assert list(PushSubscription.objects.values_list("endpoint", flat=True)) == [second["endpoint"]]

    assert client.delete(URL, **signed_in.headers).status_code == 204
    assert not PushSubscription.objects.exists()
    assert client.delete(URL, **signed_in.headers).status_code == 204  # idempotent
    assert client.get(URL, **signed_in.headers).json()["subscribed"] is False


def test_another_device_and_another_user_are_not_touched(
    client, signed_in, push_service: PushService
):
    other_device = sign_in(signed_in.user)
    someone_else = sign_in(UserFactory())
    assert _post(client, other_device, push_service.subscription("mine-2")).status_code == 201
    assert _post(client, someone_else, push_service.subscription("theirs")).status_code == 201
    assert _post(client, signed_in, push_service.subscription("mine-1")).status_code == 201
    assert client.delete(URL, **signed_in.headers).status_code == 204
    left = set(PushSubscription.objects.values_list("endpoint", flat=True))
    assert left == {push_service.endpoint("mine-2"), push_service.endpoint("theirs")}
    assert client.get(URL, **someone_else.headers).json()["subscribed"] is True


def test_a_browser_signed_in_again_by_someone_else_takes_its_endpoint_over(
    client, signed_in, push_service: PushService
):
    subscription = push_service.subscription("shared-browser")
    assert _post(client, signed_in, subscription).status_code == 201
    colleague = sign_in(UserFactory())
    assert _post(client, colleague, subscription).status_code == 201
    only = PushSubscription.objects.get()
    assert only.user_id == colleague.user.pk


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"endpoint": "https://"}, "not one a push service uses"),
        ({"endpoint": "ftp://push.example.org/x"}, "not a secure (https) address"),
        ({"endpoint": "http://push.example.org/x"}, "not a secure (https) address"),
        ({"endpoint": "https://user:pw@push.example.org/x"}, "not one a push service uses"),
        ({"endpoint": "https://push.example.org/" + "a" * 2100}, "not one a push service uses"),
        ({"endpoint": None}, "no address"),
        ({"keys": None}, "no encryption keys"),
        ({"keys": {"p256dh": _b64(b"\x04" + b"\x01" * 64), "auth": _b64(b"a" * 16)}}, "key"),
        ({"keys": {"p256dh": "not base64!", "auth": _b64(b"a" * 16)}}, "encryption key"),
        ({"keys": {"p256dh": None, "auth": _b64(b"a" * 16)}}, "encryption key"),
        ("auth15", "authentication secret"),
    ],
)
def test_a_subscription_a_push_service_could_not_use_is_refused_in_words(
    client, signed_in, push_service: PushService, change, words
):
    body = push_service.subscription("x")
    if change == "auth15":
        body["keys"]["auth"] = _b64(b"a" * 15)
    else:
        body.update(change)
    response = _post(client, signed_in, body)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid_push_subscription"
    assert words in error["message"] and error["hint"].endswith(".")
    assert "p256dh" not in error["message"] + error["hint"]
    assert not PushSubscription.objects.exists()


def test_http_endpoints_need_the_setting_and_a_loopback_host(client, signed_in, settings):
    body = PushService(base="http://127.0.0.1:9").subscription("loop")
    settings.WEB_PUSH_ALLOW_INSECURE_ENDPOINTS = False
    assert _post(client, signed_in, body).status_code == 400
    settings.WEB_PUSH_ALLOW_INSECURE_ENDPOINTS = True
    assert _post(client, signed_in, body).status_code == 201
    remote = PushService(base="http://192.0.2.1").subscription("remote")
    assert _post(client, signed_in, remote).status_code == 400


def test_push_subscriptions_need_a_signed_in_device(client, push_service: PushService):
    assert client.get(URL).status_code == 401
    assert client.post(URL).status_code == 401
    assert client.delete(URL).status_code == 401
    from uploads.tests.fixtures import client_for

    without_session = client_for(UserFactory())  # a token with no sid (scripts, tests)
    response = without_session.post(URL, push_service.subscription("s"), format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "push_needs_signed_in_device"
    assert without_session.get(URL).json()["subscribed"] is False


def test_with_push_off_the_status_says_so_and_subscribing_is_refused(
    client, signed_in, settings, push_service: PushService
):
    settings.WEB_PUSH_ENABLED = False
    assert client.get(URL, **signed_in.headers).json() == {
        "vapid_public_key": "",
        "subscribed": False,
        "enabled": False,
    }
    response = _post(client, signed_in, push_service.subscription("off"))
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "push_not_configured"


def test_signing_out_deletes_the_devices_subscription(client, signed_in, push_service: PushService):
    from rest_framework_simplejwt.tokens import RefreshToken

    refresh = RefreshToken.for_user(signed_in.user)
    refresh["sid"] = str(signed_in.session.id)
    assert _post(client, signed_in, push_service.subscription("leaving")).status_code == 201
    kept = sign_in(signed_in.user)
    assert _post(client, kept, push_service.subscription("staying")).status_code == 201
    out = client.post(
        "/api/v1/auth/logout", data={"refresh": str(refresh)}, content_type="application/json"
    )
    assert out.status_code in (200, 204), out.content
    assert list(PushSubscription.objects.values_list("endpoint", flat=True)) == [
        push_service.endpoint("staying")
    ]


def test_every_revocation_of_a_session_deletes_its_subscription(
    client, signed_in, push_service: PushService
):
    devices = [sign_in(signed_in.user) for _ in range(3)]
    for number, device in enumerate(devices):
        assert _post(client, device, push_service.subscription(f"d{number}")).status_code == 201
    auth_session_revoke(session=devices[0].session, reason="revoked", client=ClientInfo(None, ""))
    assert PushSubscription.objects.count() == 2
    auth_sessions_revoke_all(
        user=signed_in.user, client=ClientInfo(None, ""), keep=devices[2].session.id
    )
    assert list(PushSubscription.objects.values_list("endpoint", flat=True)) == [
        push_service.endpoint("d2")
    ]
    devices[2].session.delete()  # sessions cleaned up long after: the row goes with them
    assert not PushSubscription.objects.exists()


def test_the_openapi_schema_lists_the_push_endpoint(client):
    schema = client.get("/api/v1/schema/?format=json").json()
    operations = schema["paths"]["/api/v1/notifications/push-subscriptions"]
    assert set(operations) >= {"get", "post", "delete"}


def test_two_sign_ins_saving_one_endpoint_at_once_is_retried_not_a_500(
    signed_in, push_service: PushService
):
    """The other session's insert of the same endpoint commits while this save waits on
    it: the unique endpoint fails this save's insert once, and the retry takes it over."""
    import threading
    import time

    from django.db import connection, connections, transaction

    from notifications import push

    other = sign_in(signed_in.user)
    body = push_service.subscription("shared")
    inserted, release = threading.Event(), threading.Event()

    def other_session_saves() -> None:
        try:
            with transaction.atomic():
                PushSubscription.objects.create(
                    user=signed_in.user,
                    session_id=other.session.id,
                    endpoint=body["endpoint"],
                    p256dh=body["keys"]["p256dh"],
                    auth=body["keys"]["auth"],
                )
                inserted.set()
                assert release.wait(30)
        finally:
            connection.close()

    def release_once_the_save_waits() -> None:
        try:
            deadline = time.monotonic() + 30
            with connections["default"].cursor() as cursor:
                while time.monotonic() < deadline:
                    cursor.execute(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE wait_event_type = 'Lock' AND datname = current_database()"
                    )
                    if cursor.fetchone()[0]:
                        break
                    time.sleep(0.01)  # a poll with a deadline
        finally:
            release.set()
            connection.close()

    racing = threading.Thread(target=other_session_saves)
    racing.start()
    assert inserted.wait(30)
    releasing = threading.Thread(target=release_once_the_save_waits)
    releasing.start()
    created = push.push_subscription_save(
        user_id=signed_in.user.pk, session_id=signed_in.session.id, subscription=body
    )
    racing.join(30)
    releasing.join(30)
    assert created is True
    assert list(PushSubscription.objects.values_list("session_id", flat=True)) == [
        signed_in.session.id
    ]
