"""The staff web sign-in at /accounts/login/: the API's checks (password, two-step code,
lockout, audit) with a session cookie and CSRF, tied to a signed-in device that sign-out
and "sign out everywhere" end."""

from __future__ import annotations

import pytest
from django.test import Client
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.clientinfo import ClientInfo
from accounts.models import AuditEvent, AuthSession, Role, User
from accounts.services import auth_sessions_revoke_all
from accounts.tests.factories import UserFactory
from accounts.tests.helpers import PASSWORD, login

pytestmark = pytest.mark.django_db

CLINIC = {"REMOTE_ADDR": "192.0.2.10"}


def sign_in(client: Client, username: str, password: str = PASSWORD, otp: str = "", **extra):
    return client.post(
        "/accounts/login/",
        {"username": username, "password": password, "otp": otp, **extra},
        **CLINIC,
    )


def code_of(device: TOTPDevice) -> str:
    """The code the authenticator app shows now."""
    value = totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits)
    return f"{value:0{device.digits}d}"


@pytest.fixture
def reader():
    return UserFactory(role=Role.RADIOLOGIST)


def test_the_page_has_a_form_with_csrf_and_a_code_field(client):
    response = client.get("/accounts/login/?next=/reports/")
    html = response.content.decode()
    assert response.status_code == 200
    assert 'name="csrfmiddlewaretoken"' in html
    assert 'name="otp"' in html and 'autocomplete="one-time-code"' in html
    assert 'name="next" value="/reports/"' in html
    assert response["Cache-Control"].startswith("max-age=0")


def test_password_sign_in_starts_a_session_device_and_returns_to_the_page(client, reader):
    response = sign_in(client, reader.username, next="/reports/?status=all")
    assert response.status_code == 302 and response["Location"] == "/reports/?status=all"
    session = AuthSession.objects.get(user=reader)
    assert session.ip_address == "192.0.2.10" and session.revoked_at is None
    assert client.session["relaypacs_auth_session_id"] == str(session.id)
    event = AuditEvent.objects.get(action="login", user=reader)
    assert (event.object_type, event.object_id) == ("session", str(session.id))
    assert client.get("/reports/").status_code == 200
    reader.refresh_from_db()
    assert reader.last_login is not None


def test_without_a_page_to_return_to_the_role_s_page_opens(client, reader):
    assert sign_in(client, reader.username)["Location"] == "/accounts/"
    assert client.get("/accounts/")["Location"] == "/reports/"
    clinician = UserFactory(role=Role.CLINICIAN)
    other = Client()
    sign_in(other, clinician.username)
    assert "There is no staff page for your role." in other.get("/accounts/").content.decode()


def test_a_next_page_on_another_site_is_ignored(client, reader):
    response = sign_in(client, reader.username, next="https://evil.example/steal")
    assert response["Location"] == "/accounts/"


def test_a_wrong_password_is_a_sentence_and_is_audited(client, reader):
    response = sign_in(client, reader.username, password="not the password")
    assert response.status_code == 401
    html = response.content.decode()
    assert "The username or password is not correct" in html
    assert 'name="username"' in html  # the form again
    assert "_auth_user_id" not in client.session
    assert AuditEvent.objects.filter(action="login_failed", username=reader.username).exists()
    assert not AuthSession.objects.filter(user=reader).exists()


def test_the_sign_in_needs_the_csrf_token(reader):
    browser = Client(enforce_csrf_checks=True)
    assert sign_in(browser, reader.username).status_code == 403
    browser.get("/accounts/login/")
    token = browser.cookies["csrftoken"].value
    assert sign_in(browser, reader.username, csrfmiddlewaretoken=token).status_code == 302


def test_an_account_with_two_step_sign_in_needs_its_code(client, reader):
    device = TOTPDevice.objects.create(user=reader, name="authenticator", confirmed=True)
    without = sign_in(client, reader.username)
    assert without.status_code == 401
    assert "This account uses two-step sign-in" in without.content.decode()
    assert "Two-step sign-in code" in without.content.decode()
    wrong = sign_in(
        client, reader.username, otp="000000" if code_of(device) != "000000" else "111111"
    )
    assert wrong.status_code == 401
    assert "The two-step sign-in code is not correct or was already used." in wrong.content.decode()
    assert "_auth_user_id" not in client.session
    device.refresh_from_db()
    device.throttling_failure_count = 0
    device.throttling_failure_timestamp = None
    device.save()
    code = code_of(device)
    response = sign_in(client, reader.username, otp=code, next="/reports/")
    assert response.status_code == 302 and response["Location"] == "/reports/"
    assert client.get("/reports/").status_code == 200
    # The same code again (another browser) is refused: each code works once.
    replay = sign_in(Client(), reader.username, otp=code)
    assert replay.status_code == 401


def test_an_administrator_signed_in_with_a_code_opens_the_admin_site(client):
    chief = User.objects.create_superuser("chief", "chief@example.org", PASSWORD)
    device = TOTPDevice.objects.create(user=chief, name="authenticator", confirmed=True)
    assert sign_in(client, "chief", otp=code_of(device)).status_code == 302
    assert client.get("/admin/").status_code == 200


def test_failures_on_the_page_and_the_api_lock_together_with_the_page_s_sentence(client, reader):
    for _ in range(5):
        assert login(client, reader.username, "wrong", meta=CLINIC).status_code == 401
    for attempt in range(5):
        expected = 429 if attempt == 4 else 401
        assert sign_in(client, reader.username, password="wrong").status_code == expected
    locked = sign_in(client, reader.username)  # the right password, while locked
    assert locked.status_code == 429
    html = locked.content.decode()
    assert "locked after too many failed attempts" in html
    assert "Wait 15 minutes" in html
    assert 'name="username"' in html  # our page, not django-axes' plain text
    assert "_auth_user_id" not in client.session
    assert AuditEvent.objects.filter(action="account_locked", username=reader.username).count() == 1
    assert login(client, reader.username, meta=CLINIC).status_code == 429  # the API too


def test_sign_out_ends_the_session_and_its_device(client, reader):
    sign_in(client, reader.username)
    assert client.get("/accounts/logout/").status_code == 405  # a POST form only
    response = client.post("/accounts/logout/")
    assert response.status_code == 302 and response["Location"] == "/accounts/login/"
    assert AuthSession.objects.get(user=reader).revoked_reason == "logout"
    assert AuditEvent.objects.filter(action="logout", user=reader).exists()
    assert client.get("/reports/").status_code == 302
    assert "You have signed out." in client.get("/accounts/login/").content.decode()


def test_signing_out_everywhere_ends_the_web_session_too(client, reader):
    sign_in(client, reader.username)
    auth_sessions_revoke_all(user=reader, client=ClientInfo(None, ""), keep=None)
    response = client.get("/reports/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    page = client.get(response["Location"]).content.decode()
    assert "Your session has ended" in page


def test_an_admin_site_session_alone_does_not_open_staff_pages(client):
    chief = User.objects.create_superuser("chief", "chief@example.org", PASSWORD)
    client.force_login(chief)  # as the admin site's sign-in would
    assert client.get("/reports/")["Location"].startswith("/accounts/login/")
