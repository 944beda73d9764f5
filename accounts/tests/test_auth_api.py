import pytest
from django.core.management import call_command

from accounts.models import Role, User
from accounts.tests.factories import UserFactory

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery"


def login(client, username, password=PASSWORD):
    return client.post(
        "/api/v1/auth/login",
        {"username": username, "password": password},
        content_type="application/json",
    )


def test_login_returns_access_and_refresh(client):
    user = UserFactory()
    response = login(client, user.username)
    assert response.status_code == 200
    assert set(response.json()) == {"access", "refresh"}


def test_wrong_password_is_401_with_a_sentence(client):
    user = UserFactory()
    response = login(client, user.username, "wrong")
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "invalid_credentials"
    assert error["message"].endswith(".") and error["hint"]


def test_unverified_account_cannot_sign_in(client):
    user = UserFactory(email_verified=False)
    assert login(client, user.username).status_code == 401


def test_refresh_rotates_and_the_old_token_stops_working(client):
    user = UserFactory()
    refresh = login(client, user.username).json()["refresh"]
    rotated = client.post(
        "/api/v1/auth/refresh", {"refresh": refresh}, content_type="application/json"
    )
    assert rotated.status_code == 200
    assert rotated.json()["refresh"] != refresh
    reused = client.post(
        "/api/v1/auth/refresh", {"refresh": refresh}, content_type="application/json"
    )
    assert reused.status_code == 401
    assert reused.json()["error"]["code"] == "invalid_refresh_token"


def test_logout_blacklists_the_refresh_token(client):
    user = UserFactory()
    refresh = login(client, user.username).json()["refresh"]
    assert (
        client.post(
            "/api/v1/auth/logout", {"refresh": refresh}, content_type="application/json"
        ).status_code
        == 204
    )
    again = client.post(
        "/api/v1/auth/refresh", {"refresh": refresh}, content_type="application/json"
    )
    assert again.status_code == 401
    # Logging out twice is harmless.
    assert (
        client.post(
            "/api/v1/auth/logout", {"refresh": refresh}, content_type="application/json"
        ).status_code
        == 204
    )


def test_createsuperuser_noinput_makes_a_verified_admin_who_can_sign_in(client, monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", PASSWORD)
    call_command(
        "createsuperuser", "--noinput", username="root", email="root@example.org", verbosity=0
    )
    user = User.objects.get(username="root")
    assert user.role == Role.ADMIN and user.email_verified and user.facility is None
    assert login(client, "root").status_code == 200
