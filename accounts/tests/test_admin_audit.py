"""What an administrator does to accounts, 2FA devices and lockout records in the Django
admin is audit-logged; a password set there signs the user out everywhere."""

import pytest
from axes.models import AccessAttempt
from django_otp.plugins.otp_static.models import StaticDevice
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.models import AuditEvent, AuthSession, User
from accounts.tests.factories import UserFactory
from accounts.tests.helpers import login, refresh

pytestmark = pytest.mark.django_db

STRONG = "Blue-Harbour-Lantern-42"


@pytest.fixture
def root(client):
    root = User.objects.create_superuser("root", "root@example.org", "Root-Password-123")
    client.force_login(root)
    return root


def event(action, obj):
    """The audit event of ``action`` on ``obj`` (ids of different models may be equal)."""
    return AuditEvent.objects.get(
        action=action, object_type=obj._meta.model_name, object_id=str(obj.pk)
    )


def test_a_password_set_by_an_admin_is_audited_and_signs_the_user_out(client, root):
    user = UserFactory()
    api_client = type(client)()
    tokens = [login(api_client, user.username).json() for _ in range(2)]
    response = client.post(
        f"/admin/accounts/user/{user.pk}/password/",
        {"usable_password": "true", "password1": STRONG, "password2": STRONG},
    )
    assert response.status_code == 302, response.content[:2000]
    recorded = event("password_set_by_admin", user)
    assert recorded.user == root
    assert recorded.event_type == "110137 User Security Attributes Changed"
    assert recorded.detail == {"usable_password": True}
    for pair in tokens:
        assert refresh(api_client, pair["refresh"]).status_code == 401
    assert not AuthSession.objects.filter(user=user, revoked_at__isnull=True).exists()
    assert login(api_client, user.username, STRONG).status_code == 200


def test_an_invalid_admin_password_form_changes_and_records_nothing(client, root):
    user = UserFactory()
    response = client.post(
        f"/admin/accounts/user/{user.pk}/password/",
        {"usable_password": "true", "password1": STRONG, "password2": "different"},
    )
    assert response.status_code == 200
    assert not AuditEvent.objects.filter(action="password_set_by_admin").exists()


def test_creating_a_user_in_the_admin_is_audited(client, root):
    response = client.post(
        "/admin/accounts/user/add/",
        {
            "username": "newbie",
            "usable_password": "true",
            "password1": STRONG,
            "password2": STRONG,
            "role": "radiologist",
            "facility": "",
        },
    )
    assert response.status_code == 302, response.content[:3000]
    newbie = User.objects.get(username="newbie")
    recorded = event("user_created", newbie)
    assert recorded.user == root
    assert recorded.detail["username"] == "newbie" and recorded.detail["role"] == "radiologist"


def test_deleting_a_user_in_the_admin_is_audited_and_the_record_outlives_the_account(client, root):
    user = UserFactory()
    user_id, username = user.pk, user.username
    response = client.post(f"/admin/accounts/user/{user_id}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not User.objects.filter(pk=user_id).exists()
    recorded = AuditEvent.objects.get(action="user_deleted", object_id=str(user_id))
    assert recorded.user == root and recorded.detail["username"] == username


def test_deleting_users_with_the_bulk_action_audits_each(client, root):
    users = [UserFactory(), UserFactory()]
    response = client.post(
        "/admin/accounts/user/",
        {"action": "delete_selected", "_selected_action": [u.pk for u in users], "post": "yes"},
    )
    assert response.status_code == 302
    recorded = AuditEvent.objects.filter(action="user_deleted")
    assert sorted(recorded.values_list("object_id", flat=True)) == sorted(str(u.pk) for u in users)


def test_2fa_device_edits_in_the_admin_are_audited(client, root):
    from django.contrib import admin
    from django.test import RequestFactory

    user = UserFactory()
    totp = TOTPDevice.objects.create(user=user, name="phone", confirmed=True)
    request = RequestFactory().post("/admin/", REMOTE_ADDR="10.1.2.3")
    request.user = root
    totp.confirmed = False
    admin.site._registry[TOTPDevice].save_model(request, totp, form=None, change=True)
    changed = event("twofactor_device_changed", totp)
    assert changed.detail == {
        "change": "changed",
        "user_id": user.pk,
        "confirmed": False,
        "fields": [],
    }
    assert changed.user == root and changed.ip_address == "10.1.2.3"

    static = StaticDevice.objects.create(user=user, name="backup", confirmed=True)
    response = client.post(f"/admin/otp_static/staticdevice/{static.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    deleted = event("twofactor_device_changed", static)
    assert deleted.detail["change"] == "deleted" and deleted.object_type == "staticdevice"


def test_deleting_a_lockout_record_in_the_admin_is_audited(client, root):
    attempt = AccessAttempt.objects.create(
        username="locked-out",
        ip_address="10.0.0.7",
        user_agent="test",
        get_data="",
        post_data="",
        http_accept="*/*",
        path_info="/api/v1/auth/login",
        failures_since_start=10,
    )
    response = client.post(f"/admin/axes/accessattempt/{attempt.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    recorded = event("lockout_records_changed", attempt)
    assert recorded.event_type == "110129 Security Configuration"
    assert recorded.detail == {
        "change": "deleted",
        "username": "locked-out",
        "ip_address": "10.0.0.7",
    }
    assert recorded.user == root
