import pytest
from django.contrib.admin.sites import site
from django.test import RequestFactory
from rest_framework.throttling import ScopedRateThrottle

from accounts.admin import RelayUserAdmin
from accounts.models import AuditEvent, User
from accounts.tests.factories import UserFactory
from accounts.tests.helpers import login

pytestmark = pytest.mark.django_db

CLINIC = {"REMOTE_ADDR": "192.0.2.10"}
OTHER_CLINIC = {"REMOTE_ADDR": "198.51.100.7"}


def fail(client, user, times, meta=CLINIC):
    """``times`` wrong passwords; the tenth is answered with the lockout itself."""
    for attempt in range(1, times + 1):
        expected = 429 if attempt >= 10 else 401
        assert login(client, user.username, "wrong password", meta=meta).status_code == expected


def test_ten_failures_lock_the_username_from_that_address(client):
    user = UserFactory()
    fail(client, user, 10)
    locked = login(client, user.username, meta=CLINIC)
    assert locked.status_code == 429
    error = locked.json()["error"]
    assert error["code"] == "sign_in_locked"
    assert "administrator" in error["hint"]
    assert AuditEvent.objects.filter(action="account_locked", username=user.username).exists()


def test_nine_failures_then_success_resets_the_count(client):
    user = UserFactory()
    fail(client, user, 9)
    assert login(client, user.username, meta=CLINIC).status_code == 200
    fail(client, user, 9)
    assert login(client, user.username, meta=CLINIC).status_code == 200


def test_a_lockout_does_not_reach_colleagues_or_other_addresses(client):
    user, colleague = UserFactory(), UserFactory()
    fail(client, user, 10)
    assert login(client, colleague.username, meta=CLINIC).status_code == 200
    assert login(client, user.username, meta=OTHER_CLINIC).status_code == 200


def test_an_administrator_unlocks_from_the_admin(client):
    user = UserFactory()
    admin_user = User.objects.create_superuser("root", "root@example.org", "x")
    fail(client, user, 10)
    request = RequestFactory().post("/admin/accounts/user/")
    request.user = admin_user
    request._messages = type("M", (), {"add": lambda *a, **k: None})()
    RelayUserAdmin(User, site).unlock_sign_in(request, User.objects.filter(pk=user.pk))
    assert login(client, user.username, meta=CLINIC).status_code == 200
    event = AuditEvent.objects.get(action="account_unlocked", object_id=str(user.pk))
    assert event.user == admin_user and event.object_id == str(user.pk)


def test_a_clinics_morning_of_sign_ins_is_not_rate_limited(client):
    users = [UserFactory() for _ in range(25)]
    for user in users:
        assert login(client, user.username, meta=CLINIC).status_code == 200


@pytest.mark.parametrize(
    ("path", "scope", "body"),
    [
        ("/api/v1/auth/login", "auth_login", {"username": "x", "password": "y"}),
        ("/api/v1/auth/register", "auth_register", {}),
        ("/api/v1/auth/password-reset", "auth_password_reset", {"email": "a@b.example"}),
    ],
)
def test_login_register_and_reset_are_rate_limited(client, monkeypatch, path, scope, body):
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {scope: "3/hour"})
    for _ in range(3):
        client.post(path, body, content_type="application/json")
    response = client.post(path, body, content_type="application/json")
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limited"
    assert response["Retry-After"]


def test_role_change_in_the_admin_is_audited_and_ends_sessions(client):
    user = UserFactory(role="clinician")
    admin_user = User.objects.create_superuser("root", "root@example.org", "x")
    tokens = login(client, user.username).json()
    request = RequestFactory().post("/admin/")
    request.user = admin_user
    user.role = "radiologist"
    RelayUserAdmin(User, site).save_model(request, user, form=None, change=True)
    event = AuditEvent.objects.get(action="role_changed", object_id=str(user.pk))
    assert event.detail == {"old_role": "clinician", "new_role": "radiologist"}
    assert event.event_type == "110136 Security Roles Changed"
    response = client.get("/api/v1/uploads", HTTP_AUTHORIZATION=f"Bearer {tokens['access']}")
    assert response.status_code == 401
