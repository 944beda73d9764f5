"""A session cookie tied to an AuthSession (the staff web's sign-in, the admin site's) ends
with it on every page, the admin site included: a sign-out everywhere, an administrator's
revocation or the idle timeout closes /admin/ at the next request."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.clientinfo import ClientInfo
from accounts.models import AuditEvent, AuthSession, User
from accounts.services import auth_session_revoke, auth_sessions_revoke_all
from accounts.tests.helpers import PASSWORD

pytestmark = pytest.mark.django_db

NOBODY = ClientInfo(None, "")


def code_of(device: TOTPDevice) -> str:
    value = totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits)
    return f"{value:0{device.digits}d}"


@pytest.fixture
def chief() -> User:
    return User.objects.create_superuser("chief", "chief@example.org", PASSWORD)


def staff_web_sign_in(client: Client, chief: User) -> AuthSession:
    device = TOTPDevice.objects.create(user=chief, name="authenticator", confirmed=True)
    response = client.post(
        "/accounts/login/", {"username": "chief", "password": PASSWORD, "otp": code_of(device)}
    )
    assert response.status_code == 302
    assert client.get("/admin/").status_code == 200
    return AuthSession.objects.get(user=chief)


def assert_admin_closed(client: Client) -> None:
    response = client.get("/admin/")
    assert response.status_code == 302
    assert response["Location"] == "/admin/login/?next=/admin/"
    assert "_auth_user_id" not in client.session  # the Django session ended too
    assert client.get("/admin/accounts/user/").status_code == 302


def test_signing_out_everywhere_closes_the_admin_opened_by_the_staff_web(client, chief):
    staff_web_sign_in(client, chief)
    auth_sessions_revoke_all(user=chief, client=NOBODY, keep=None)
    assert_admin_closed(client)


def test_an_administrator_revoking_the_device_closes_the_admin(client, chief):
    session = staff_web_sign_in(client, chief)
    auth_session_revoke(session=session, reason="admin", client=NOBODY)
    assert_admin_closed(client)
    page = client.get("/admin/login/?next=/admin/").content.decode()
    assert "Your session has ended" in page


def test_an_idle_staff_web_session_closes_the_admin(client, chief, settings):
    session = staff_web_sign_in(client, chief)
    AuthSession.objects.filter(pk=session.pk).update(
        last_seen_at=timezone.now() - settings.AUTH_SESSION_IDLE_TIMEOUT - timedelta(minutes=1)
    )
    assert_admin_closed(client)
    session.refresh_from_db()
    assert session.revoked_reason == "idle"


def test_using_the_admin_counts_as_use_of_the_session(client, chief):
    session = staff_web_sign_in(client, chief)
    old = timezone.now() - timedelta(hours=1)
    AuthSession.objects.filter(pk=session.pk).update(last_seen_at=old)
    assert client.get("/admin/").status_code == 200
    session.refresh_from_db()
    assert session.last_seen_at > old


def test_the_admin_sign_in_starts_a_session_that_a_revocation_ends(client, chief):
    response = client.post(
        "/admin/login/?next=/admin/", {"username": "chief", "password": PASSWORD}
    )
    assert response.status_code == 302
    session = AuthSession.objects.get(user=chief)
    assert client.session["relaypacs_auth_session_id"] == str(session.id)
    assert AuditEvent.objects.filter(action="login", user=chief, object_id=str(session.id)).exists()
    assert client.get("/admin/").status_code == 200
    auth_sessions_revoke_all(user=chief, client=NOBODY, keep=None)
    assert_admin_closed(client)


def test_the_admin_sign_in_with_a_code_still_works_and_is_revocable(client, chief):
    device = TOTPDevice.objects.create(user=chief, name="authenticator", confirmed=True)
    refused = client.post("/admin/login/?next=/admin/", {"username": "chief", "password": PASSWORD})
    assert refused.status_code == 200
    assert not AuthSession.objects.filter(user=chief).exists()
    response = client.post(
        "/admin/login/?next=/admin/",
        {"username": "chief", "password": PASSWORD, "otp_token": code_of(device)},
    )
    assert response.status_code == 302
    assert client.get("/admin/accounts/user/").status_code == 200
    auth_session_revoke(session=AuthSession.objects.get(user=chief), reason="admin", client=NOBODY)
    assert_admin_closed(client)


def test_a_session_without_an_auth_session_is_left_alone(client, chief):
    client.force_login(chief)  # e.g. a cookie from before sign-ins were tied to a session
    assert client.get("/admin/").status_code == 200


def test_the_session_cookie_lasts_at_most_a_working_day(settings):
    assert settings.SESSION_COOKIE_AGE == 12 * 3600


def test_signing_out_of_the_admin_ends_its_session(client, chief):
    client.post("/admin/login/?next=/admin/", {"username": "chief", "password": PASSWORD})
    assert client.post("/admin/logout/").status_code == 200
    session = AuthSession.objects.get(user=chief)
    assert session.revoked_reason == "logout"
    assert AuditEvent.objects.filter(action="logout", user=chief).exists()
    assert client.get("/admin/").status_code == 302
