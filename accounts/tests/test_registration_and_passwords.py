import re
from datetime import timedelta
from urllib.parse import parse_qs, urlparse

import pytest
from django.contrib.auth.hashers import BCryptSHA256PasswordHasher
from django.core import signing

from accounts.models import AuditEvent, Role, User
from accounts.tests.factories import UserFactory
from accounts.tests.helpers import PASSWORD, bearer, login, refresh

pytestmark = pytest.mark.django_db

STRONG = "Blue-Harbour-Lantern-42"


def register(client, **changes):
    body = {
        "username": "jdoe",
        "email": "jdoe@clinic.example",
        "password": STRONG,
        "full_name": "Jane Doe",
        **changes,
    }
    return client.post("/api/v1/auth/register", body, content_type="application/json")


def link_in(message):
    return re.search(r"https?://\S+", message.body).group(0)


def token_in(message):
    return parse_qs(urlparse(link_in(message)).query)["token"][0]


def test_registration_creates_an_unverified_clinician_and_emails_a_link(
    client, mailoutbox, django_capture_on_commit_callbacks, settings
):
    with django_capture_on_commit_callbacks(execute=True):
        response = register(client)
    assert response.status_code == 201, response.json()
    assert response.json() == {
        "username": "jdoe",
        "email": "jdoe@clinic.example",
        "full_name": "Jane Doe",
        "role": "clinician",
        "email_verified": False,
        "approval": "pending",
    }
    assert len(mailoutbox) == 1
    assert mailoutbox[0].to == ["jdoe@clinic.example"]
    assert link_in(mailoutbox[0]).startswith(f"{settings.PUBLIC_BASE_URL}/verify-email?token=")


def test_unverified_account_cannot_sign_in_until_the_link_is_followed(
    client, mailoutbox, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        register(client)
    refused = login(client, "jdoe", STRONG)
    assert refused.status_code == 401
    # The same answer as a wrong password (see test_sign_in_privacy.py).
    assert refused.json()["error"]["code"] == "invalid_credentials"
    verified = client.post(
        "/api/v1/auth/verify-email",
        {"token": token_in(mailoutbox[0])},
        content_type="application/json",
    )
    assert verified.status_code == 200
    assert verified.json() == {"username": "jdoe", "email_verified": True}
    assert login(client, "jdoe", STRONG).status_code == 200


def test_links_of_the_old_form_still_verify_by_get(
    client, mailoutbox, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        register(client)
    # Emails sent before the PWA page existed pointed at the API itself.
    verified = client.get("/api/v1/auth/verify-email", {"token": token_in(mailoutbox[0])})
    assert verified.status_code == 200
    assert verified.json() == {"username": "jdoe", "email_verified": True}


def test_a_forged_or_expired_verification_link_is_refused(client, settings):
    user = UserFactory(email_verified=False)
    forged = client.post(
        "/api/v1/auth/verify-email", {"token": "abc:def"}, content_type="application/json"
    )
    assert forged.status_code == 400
    assert forged.json()["error"]["code"] == "invalid_verification_link"
    token = signing.dumps({"u": user.pk, "e": user.email}, salt="relaypacs.verify-email.v1")
    settings.AUTH_EMAIL_LINK_MAX_AGE = timedelta(seconds=-1)
    expired = client.post(
        "/api/v1/auth/verify-email", {"token": token}, content_type="application/json"
    )
    assert expired.status_code == 400
    user.refresh_from_db()
    assert not user.email_verified


@pytest.mark.parametrize("role", [Role.RADIOLOGIST, Role.ADMIN, Role.AUDITOR])
def test_self_registration_cannot_take_a_higher_role(client, role):
    response = register(client, role=role)
    assert response.status_code == 400
    assert not User.objects.filter(username="jdoe").exists()


def test_self_registration_may_choose_radiographer(client):
    assert register(client, role="radiographer").json()["role"] == "radiographer"


@pytest.mark.parametrize(
    ("password", "why"),
    [
        ("Short-1a", "too short"),
        ("alllowercaseletters", "one kind of character"),
        ("Q1w2e3r4t5y6", "common"),
        ("Jdoe@clinic.example1", "similar to the email address"),
        ("123456789012345", "numeric"),
    ],
)
def test_weak_passwords_are_refused_with_reasons(client, password, why):
    response = register(client, password=password)
    assert response.status_code == 400, why
    error = response.json()["error"]
    assert error["code"] == "weak_password"
    assert error["problems"] and error["hint"]


def test_base_settings_hash_with_bcrypt_sha256():
    from relaypacs.settings import base

    assert base.PASSWORD_HASHERS[0] == "django.contrib.auth.hashers.BCryptSHA256PasswordHasher"
    hasher = BCryptSHA256PasswordHasher()
    encoded = hasher.encode(STRONG, hasher.salt())
    assert encoded.startswith("bcrypt_sha256$$2b$12$")  # cost 12
    assert hasher.verify(STRONG, encoded)


def test_password_change_needs_the_current_password_and_signs_out_other_devices(client):
    user = UserFactory()
    here = login(client, user.username).json()
    elsewhere = login(client, user.username).json()
    wrong = client.post(
        "/api/v1/auth/password",
        {"current_password": "nope", "new_password": STRONG},
        content_type="application/json",
        **bearer(here["access"]),
    )
    assert wrong.status_code == 400
    assert wrong.json()["error"]["code"] == "invalid_current_password"
    changed = client.post(
        "/api/v1/auth/password",
        {"current_password": PASSWORD, "new_password": STRONG},
        content_type="application/json",
        **bearer(here["access"]),
    )
    assert changed.json() == {"revoked": 1}
    assert client.get("/api/v1/uploads", **bearer(here["access"])).status_code == 200
    assert client.get("/api/v1/uploads", **bearer(elsewhere["access"])).status_code == 401
    assert refresh(client, elsewhere["refresh"]).status_code == 401
    assert login(client, user.username, STRONG).status_code == 200
    assert AuditEvent.objects.filter(action="password_changed", user=user).exists()


def test_password_reset_by_email_sets_a_new_password_once(
    client, mailoutbox, django_capture_on_commit_callbacks
):
    user = UserFactory()
    signed_in = login(client, user.username).json()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/api/v1/auth/password-reset", {"email": user.email}, content_type="application/json"
        )
    assert response.status_code == 202
    uid, token = re.search(r"uid=([\w-]+)&token=([\w-]+)", mailoutbox[0].body).groups()
    body = {"uid": uid, "token": token, "new_password": STRONG}
    confirm = client.post(
        "/api/v1/auth/password-reset/confirm", body, content_type="application/json"
    )
    assert confirm.status_code == 204
    assert login(client, user.username, STRONG).status_code == 200
    assert client.get("/api/v1/uploads", **bearer(signed_in["access"])).status_code == 401
    again = client.post(
        "/api/v1/auth/password-reset/confirm", body, content_type="application/json"
    )
    assert again.json()["error"]["code"] == "invalid_reset_link"


def test_password_reset_for_an_unknown_address_looks_the_same(
    client, mailoutbox, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/api/v1/auth/password-reset",
            {"email": "nobody@x.example"},
            content_type="application/json",
        )
    assert response.status_code == 202
    assert mailoutbox == []
