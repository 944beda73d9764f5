import re

import pytest

from accounts.models import AuditEvent, Role, User
from accounts.tests.factories import UserFactory
from accounts.tests.helpers import PASSWORD, bearer, login

pytestmark = pytest.mark.django_db


@pytest.fixture
def me(client):
    user = UserFactory(full_name="Ann Smith")
    return user, bearer(login(client, user.username).json()["access"])


def test_profile_shows_username_role_and_facility_read_only(client, me):
    user, auth = me
    response = client.get("/api/v1/auth/me", **auth)
    assert response.status_code == 200
    body = response.json()
    assert body["username"] == user.username
    assert body["role"] == "radiographer"
    assert body["facility"]["code"] == user.facility.code
    assert body["twofactor_enabled"] is False
    changed = client.patch(
        "/api/v1/auth/me",
        {"full_name": "Ann Jones", "role": "admin", "username": "boss"},
        content_type="application/json",
        **auth,
    )
    assert changed.status_code == 200
    user.refresh_from_db()
    assert (user.full_name, user.role, user.username) == (
        "Ann Jones",
        Role.RADIOGRAPHER,
        changed.json()["username"],
    )


def test_a_new_email_is_used_once_its_link_is_followed(
    client, me, mailoutbox, django_capture_on_commit_callbacks
):
    user, auth = me
    old = user.email
    with django_capture_on_commit_callbacks(execute=True):
        response = client.patch(
            "/api/v1/auth/me",
            {"email": "ann@new.example", "current_password": PASSWORD},
            content_type="application/json",
            **auth,
        )
    assert response.json()["email"] == old
    assert response.json()["pending_email"] == "ann@new.example"
    assert mailoutbox[0].to == ["ann@new.example"]
    token = re.search(r"token=(\S+)", mailoutbox[0].body).group(1)
    assert (
        client.post(
            "/api/v1/auth/verify-email", {"token": token}, content_type="application/json"
        ).status_code
        == 200
    )
    user.refresh_from_db()
    assert user.email == "ann@new.example" and user.pending_email == ""


def test_upload_preferences_round_trip(client, me):
    _, auth = me
    assert client.get("/api/v1/auth/me/preferences", **auth).json() == {
        "default_service_level": "routine",
        "default_chunk_size": None,
        "duplicate_detection": True,
    }
    response = client.patch(
        "/api/v1/auth/me/preferences",
        {
            "default_service_level": "urgent",
            "default_chunk_size": 4 * 1024 * 1024,
            "duplicate_detection": False,
        },
        content_type="application/json",
        **auth,
    )
    assert response.json() == {
        "default_service_level": "urgent",
        "default_chunk_size": 4 * 1024 * 1024,
        "duplicate_detection": False,
    }
    cleared = client.patch(
        "/api/v1/auth/me/preferences",
        {"default_chunk_size": None},
        content_type="application/json",
        **auth,
    )
    assert cleared.json()["default_chunk_size"] is None
    assert cleared.json()["default_service_level"] == "urgent"


@pytest.mark.parametrize("chunk_size", [1024, 64 * 1024 * 1024])
def test_a_chunk_size_outside_the_limits_is_refused(client, me, chunk_size):
    _, auth = me
    response = client.patch(
        "/api/v1/auth/me/preferences",
        {"default_chunk_size": chunk_size},
        content_type="application/json",
        **auth,
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_chunk_size"


def test_gdpr_export_holds_my_data_only_and_is_audited(client, me):
    user, auth = me
    other = UserFactory()
    login(client, other.username)
    response = client.get("/api/v1/auth/me/export", **auth)
    assert response.status_code == 200
    assert "attachment" in response["Content-Disposition"]
    body = response.json()
    assert body["profile"]["username"] == user.username
    assert len(body["sessions"]) == 1
    assert {e["action"] for e in body["audit_events"]} == {"login", "export"}
    assert other.username not in response.content.decode()
    assert AuditEvent.objects.filter(action="export", user=user).exists()


def test_settings_need_a_signed_in_user(client):
    for path in ("/api/v1/auth/me", "/api/v1/auth/me/preferences", "/api/v1/auth/me/export"):
        assert client.get(path).status_code == 401


def test_the_upload_pipeline_reads_the_saved_preferences(client, me):
    from accounts.selectors import UploadPreferences, user_upload_preferences

    user, auth = me
    client.patch(
        "/api/v1/auth/me/preferences",
        {"default_service_level": "stat", "duplicate_detection": False},
        content_type="application/json",
        **auth,
    )
    user.refresh_from_db()
    assert user_upload_preferences(user=user) == UploadPreferences(
        service_level="stat", chunk_size=None, duplicate_detection=False
    )


@pytest.mark.parametrize(
    ("password", "error"),
    [
        (None, "current_password_required"),
        ("", "current_password_required"),
        ("nope", "invalid_current_password"),
    ],
)
def test_changing_the_email_needs_the_current_password(
    client, me, mailoutbox, django_capture_on_commit_callbacks, password, error
):
    user, auth = me
    body = {"email": "thief@evil.example", "full_name": "Someone Else"}
    if password is not None:
        body["current_password"] = password
    with django_capture_on_commit_callbacks(execute=True):
        response = client.patch("/api/v1/auth/me", body, content_type="application/json", **auth)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == error
    user.refresh_from_db()
    assert (user.pending_email, user.full_name) == ("", "Ann Smith")  # nothing saved
    assert mailoutbox == []


def test_the_full_name_or_the_same_email_needs_no_password(client, me):
    user, auth = me
    response = client.patch(
        "/api/v1/auth/me",
        {"full_name": "Ann Jones", "email": user.email.upper()},
        content_type="application/json",
        **auth,
    )
    assert response.status_code == 200, response.json()
    assert response.json()["full_name"] == "Ann Jones"
    assert response.json()["pending_email"] == ""


def test_a_new_email_link_opens_the_pwa_page_and_arrives_over_smtp(
    client, me, smtp_server, django_capture_on_commit_callbacks, settings
):
    settings.PUBLIC_BASE_URL = "https://relay.example.org"
    _, auth = me
    with django_capture_on_commit_callbacks(execute=True):
        client.patch(
            "/api/v1/auth/me",
            {"email": "ann@new.example", "current_password": PASSWORD},
            content_type="application/json",
            **auth,
        )
    (message,) = smtp_server.wait_for(1)
    assert message["To"] == "ann@new.example"
    assert "https://relay.example.org/verify-email?token=" in smtp_server.text(message)


def test_an_address_of_another_account_is_accepted_as_pending_and_its_owner_is_told(
    client, me, smtp_server, django_capture_on_commit_callbacks
):
    user, auth = me
    owner = UserFactory(username="owner", email="owner@clinic.example")
    with django_capture_on_commit_callbacks(execute=True):
        taken = client.patch(
            "/api/v1/auth/me",
            {"email": "OWNER@clinic.example", "current_password": PASSWORD},
            content_type="application/json",
            **auth,
        )
        free = client.patch(
            "/api/v1/auth/me",
            {"email": "free@clinic.example", "current_password": PASSWORD},
            content_type="application/json",
            **auth,
        )
    # The same answer as for a free address: it does not tell who has an account.
    assert taken.status_code == free.status_code == 200
    assert taken.json()["pending_email"] == "OWNER@clinic.example"
    assert set(taken.json()) == set(free.json())
    assert taken.json()["email"] == free.json()["email"] == user.email
    by_recipient = {m["To"]: m for m in smtp_server.wait_for(2)}
    assert set(by_recipient) == {owner.email, "free@clinic.example"}
    notice = by_recipient[owner.email]
    assert notice["Subject"] == "Someone tried to use your email address for another account"
    text = smtp_server.text(notice)
    assert "verify-email" not in text and "token=" not in text  # a notice, not a link
    assert "owner" in text and "Forgot your password?" in text
    owner.refresh_from_db()
    assert owner.email == "owner@clinic.example" and owner.pending_email == ""


def test_a_link_cannot_confirm_an_address_another_account_confirmed_meanwhile(
    client, me, mailoutbox, django_capture_on_commit_callbacks
):
    user, auth = me
    with django_capture_on_commit_callbacks(execute=True):
        client.patch(
            "/api/v1/auth/me",
            {"email": "shared@clinic.example", "current_password": PASSWORD},
            content_type="application/json",
            **auth,
        )
    token = re.search(r"token=(\S+)", mailoutbox[0].body).group(1)
    # Meanwhile another account registered with the address and confirmed it.
    UserFactory(username="quick", email="Shared@clinic.example", email_verified=True)
    response = client.post(
        "/api/v1/auth/verify-email", {"token": token}, content_type="application/json"
    )
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "email_taken" and error["message"] and error["hint"]
    user.refresh_from_db()
    assert user.email != "shared@clinic.example"
    assert User.objects.filter(email__iexact="shared@clinic.example").count() == 1


def test_a_registration_cannot_confirm_an_address_another_account_confirmed_meanwhile(
    client, mailoutbox, django_capture_on_commit_callbacks
):
    body = {
        "username": "late",
        "email": "race@clinic.example",
        "password": "Blue-Harbour-Lantern-42",
        "full_name": "Late Comer",
    }
    with django_capture_on_commit_callbacks(execute=True):
        client.post("/api/v1/auth/register", body, content_type="application/json")
    token = re.search(r"token=(\S+)", mailoutbox[0].body).group(1)
    UserFactory(username="early", email="race@clinic.example", email_verified=True)
    response = client.post(
        "/api/v1/auth/verify-email", {"token": token}, content_type="application/json"
    )
    assert response.status_code == 409
    assert not User.objects.get(username="late").email_verified
