"""The admin site a clinic's IT person runs: the role decides who may use it, its index is
grouped by what an administrator looks after, the user page has no raw permission lists,
the sign-in asks for no device and a lockout is one audit event. Django's test client
against the real admin and PostgreSQL."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.models import AuditEvent, Role, User
from accounts.services.roles import ADMIN_GROUP_NAME
from accounts.tests.factories import FacilityFactory, UserFactory
from accounts.tests.helpers import login

pytestmark = pytest.mark.django_db

STRONG = "Blue-Harbour-Lantern-42"
LIBRARY_SECTIONS = {"axes", "otp_totp", "otp_static", "token_blacklist", "auth"}


@pytest.fixture
def root(client):
    root = User.objects.create_superuser("root", "root@example.org", STRONG)
    client.force_login(root)
    return root


def admin_sign_in(username: str, password: str = STRONG, **extra: str) -> Client:
    browser = Client()
    response = browser.post(
        "/admin/login/?next=/admin/", {"username": username, "password": password, **extra}
    )
    assert response.status_code == 302, response.content[:2000]
    return browser


def change_form(user: User, **changes: object) -> dict[str, object]:
    """What the user page posts when saved unchanged, with ``changes``."""
    form: dict[str, object] = {
        "username": user.username,
        "full_name": user.full_name,
        "email": user.email,
        "role": user.role,
        "facility": user.facility_id or "",
    }
    for flag in ("email_verified", "is_active"):
        if getattr(user, flag):
            form[flag] = "on"
    form.update(changes)
    return form


def add_admin_in_the_admin(client: Client, username: str) -> User:
    response = client.post(
        "/admin/accounts/user/add/",
        {
            "username": username,
            "usable_password": "true",
            "password1": STRONG,
            "password2": STRONG,
            "full_name": "Ada Admin",
            "email": f"{username}@example.org",
            "role": Role.ADMIN,
            "facility": "",
        },
    )
    assert response.status_code == 302, response.content[:3000]
    return User.objects.get(username=username)


# --- item 15: the role decides ----------------------------------------------------------


def test_an_administrator_made_in_the_admin_reaches_the_admin_and_can_change_users(client, root):
    new_admin = add_admin_in_the_admin(client, "ada")
    assert new_admin.is_staff and not new_admin.is_superuser
    assert new_admin.groups.filter(name=ADMIN_GROUP_NAME).exists()
    created = AuditEvent.objects.get(action="user_created", object_id=str(new_admin.pk))
    assert created.detail["is_staff"] is True

    browser = admin_sign_in("ada")
    assert browser.get("/admin/").status_code == 200
    colleague = UserFactory(role=Role.CLINICIAN, full_name="Colin Clinician")
    page = browser.get(f"/admin/accounts/user/{colleague.pk}/change/")
    assert page.status_code == 200
    saved = browser.post(
        f"/admin/accounts/user/{colleague.pk}/change/",
        change_form(colleague, role=Role.RADIOGRAPHER),
    )
    assert saved.status_code == 302, saved.content[:3000]
    colleague.refresh_from_db()
    assert colleague.role == Role.RADIOGRAPHER and not colleague.is_staff


def test_an_administrator_cannot_change_a_superusers_account(client, root):
    add_admin_in_the_admin(client, "ada")
    browser = admin_sign_in("ada")
    page = browser.get(f"/admin/accounts/user/{root.pk}/change/")
    assert page.status_code == 200 and 'name="role"' not in page.content.decode()  # view only
    saved = browser.post(
        f"/admin/accounts/user/{root.pk}/change/", change_form(root, role=Role.CLINICIAN)
    )
    assert saved.status_code == 403
    root.refresh_from_db()
    assert root.role == Role.ADMIN


def test_demoting_an_administrator_removes_access_at_once_and_is_audited(client, root):
    new_admin = add_admin_in_the_admin(client, "ada")
    browser = admin_sign_in("ada")
    assert browser.get("/admin/").status_code == 200

    saved = client.post(
        f"/admin/accounts/user/{new_admin.pk}/change/", change_form(new_admin, role=Role.CLINICIAN)
    )
    assert saved.status_code == 302, saved.content[:3000]
    new_admin.refresh_from_db()
    assert not new_admin.is_staff
    assert not new_admin.groups.filter(name=ADMIN_GROUP_NAME).exists()
    # Her open admin page is refused at the next request, not at her next sign-in.
    assert browser.get("/admin/").status_code == 302
    event = AuditEvent.objects.get(action="role_changed", object_id=str(new_admin.pk))
    assert event.user == root
    assert event.detail == {
        "old_role": Role.ADMIN,
        "new_role": Role.CLINICIAN,
        "old_is_staff": True,
        "new_is_staff": False,
    }

    promoted = client.post(
        f"/admin/accounts/user/{new_admin.pk}/change/", change_form(new_admin, role=Role.ADMIN)
    )
    assert promoted.status_code == 302
    # The role change revoked her sessions, the admin sign-in's too: she signs in again.
    assert browser.get("/admin/").status_code == 302
    assert admin_sign_in("ada").get("/admin/").status_code == 200


def test_approving_an_account_as_administrator_gives_it_the_admin_site(client, root):
    pending = UserFactory(role=Role.CLINICIAN, approval="pending")
    response = client.post(
        "/admin/accounts/user/",
        {
            "action": "approve_accounts",
            "_selected_action": [pending.pk],
            "apply": "1",
            "role": Role.ADMIN,
            "facility": "",
        },
    )
    assert response.status_code == 302, response.content[:2000]
    pending.refresh_from_db()
    assert pending.role == Role.ADMIN and pending.is_staff
    assert AuditEvent.objects.filter(
        action="admin_access_changed", object_id=str(pending.pk), detail__is_staff=True
    ).exists()


def test_the_managed_group_holds_the_permissions_an_administrator_needs(db):
    group = Group.objects.get(name=ADMIN_GROUP_NAME)
    codenames = set(group.permissions.values_list("codename", flat=True))
    assert {"change_user", "add_facility", "view_auditevent", "change_uploadsession"} <= codenames
    assert "delete_auditevent" not in codenames


def test_staff_ticked_by_hand_on_another_role_is_not_kept_at_migrate(db):
    from accounts.services.roles import users_role_access_sync

    clinician = UserFactory(role=Role.CLINICIAN)
    User.objects.filter(pk=clinician.pk).update(is_staff=True)
    superuser = User.objects.create_superuser("boss", "boss@example.org", STRONG)
    User.objects.filter(pk=superuser.pk).update(role=Role.RADIOLOGIST)
    assert users_role_access_sync() == 1
    clinician.refresh_from_db()
    superuser.refresh_from_db()
    assert not clinician.is_staff
    assert superuser.is_staff and superuser.is_superuser  # superusers stay superusers


# --- item 16: the index, the user page, the sign-in, lockouts ---------------------------


def test_the_index_is_grouped_into_sections_in_order(client, root):
    response = client.get("/admin/")
    assert response.status_code == 200
    sections = [app["name"] for app in response.context["app_list"]]
    assert sections == [
        "People",
        "Uploads",
        "PACS",
        "Security",
        "Audit",
        "Reports",
        "Notifications",
        "Statistics",
    ]
    by_name = {
        app["name"]: [m["name"] for m in app["models"]] for app in response.context["app_list"]
    }
    assert by_name["People"][:3] == ["Users", "Pending approvals (0)", "Facilities"]
    assert by_name["Uploads"][:2] == ["Uploads", "Studies"]
    assert by_name["PACS"][:2] == ["PACS destinations", "PACS health"]
    assert by_name["Audit"] == ["Audit trail"]
    content = response.content.decode()
    assert "RelayPACS administration" in content
    assert "Studys" not in content


def test_the_index_has_no_library_sections(client, root):
    response = client.get("/admin/")
    labels = {app["app_label"] for app in response.context["app_list"]}
    assert not labels & LIBRARY_SECTIONS
    security = next(app for app in response.context["app_list"] if app["name"] == "Security")
    urls = " ".join(model["admin_url"] for model in security["models"])
    for library in (
        "/admin/axes/",
        "/admin/otp_totp/",
        "/admin/otp_static/",
        "/admin/token_blacklist/",
    ):
        assert library in urls
    content = response.content.decode()
    for heading in ("Axes", "OTP_TOTP", "OTP_STATIC", "Token Blacklist"):
        assert f">{heading}<" not in content


def test_pending_approvals_links_to_the_accounts_waiting(client, root):
    UserFactory(approval="pending")
    response = client.get("/admin/")
    people = next(app for app in response.context["app_list"] if app["name"] == "People")
    pending = next(m for m in people["models"] if m["object_name"] == "PendingApprovals")
    assert pending["name"] == "Pending approvals (1)"
    assert client.get(pending["admin_url"]).status_code == 200


def test_the_user_page_has_no_raw_permission_widgets_or_duplicate_names(client, root):
    user = UserFactory(facility=FacilityFactory())
    content = client.get(f"/admin/accounts/user/{user.pk}/change/").content.decode()
    for raw in ("user_permissions", "groups", "first_name", "last_name", 'name="is_staff"'):
        assert raw not in content
    assert 'name="full_name"' in content and 'name="role"' in content
    assert "Can use this admin site" in content
    add_page = client.get("/admin/accounts/user/add/").content.decode()
    assert 'name="role"' in add_page and "user_permissions" not in add_page


def test_a_failed_admin_sign_in_shows_no_empty_device_picker(db):
    chief = User.objects.create_superuser("chief", "chief@example.org", STRONG)
    TOTPDevice.objects.create(user=chief, name="phone", confirmed=True)
    browser = Client()
    for password in (STRONG, "wrong password"):  # code missing / password wrong
        response = browser.post(
            "/admin/login/?next=/admin/", {"username": "chief", "password": password}
        )
        assert response.status_code == 200
        content = response.content.decode()
        assert "errornote" in content
        assert "<select" not in content and "otp_device" not in content
        assert "Get OTP Challenge" not in content
        assert 'name="otp_token"' in content


def test_one_lockout_is_one_audit_event(client):
    user = UserFactory()
    clinic = {"REMOTE_ADDR": "192.0.2.10"}
    statuses = [login(client, user.username, "wrong", meta=clinic).status_code for _ in range(12)]
    assert statuses == [401] * 9 + [429] * 3
    locked = AuditEvent.objects.filter(action="account_locked", username=user.username)
    assert locked.count() == 1
    assert locked.get().ip_address == "192.0.2.10"
    # The attempts refused while locked are failed sign-ins, not new lockouts.
    refused = AuditEvent.objects.filter(
        action="login_failed", username=user.username, detail__reason="sign_in_locked"
    )
    assert refused.count() == 2


def test_a_lockout_at_the_admin_sign_in_is_one_audit_event(db):
    User.objects.create_superuser("chief", "chief@example.org", STRONG)
    browser = Client(REMOTE_ADDR="192.0.2.11")
    statuses = [
        browser.post("/admin/login/", {"username": "chief", "password": "wrong"}).status_code
        for _ in range(12)
    ]
    assert statuses[-1] == 429
    assert AuditEvent.objects.filter(action="account_locked", username="chief").count() == 1
