"""Self-registration makes an account that waits for an administrator's approval; an
invitation code (expiring, single- or multi-use, stored as a digest) approves it at once.
Accounts an administrator makes are usable at once."""

import re
import threading
from datetime import timedelta
from urllib.parse import parse_qs, urlparse

import pytest
from django.core.management import call_command
from django.db import connection, connections
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.clientinfo import ClientInfo
from accounts.models import Approval, AuditEvent, FacilityInvitation, Role, User
from accounts.services import invitation_create, user_approve, user_register
from accounts.tests.factories import FacilityFactory, UserFactory
from accounts.tests.helpers import bearer, login
from relaypacs.errors import ApplicationError

pytestmark = pytest.mark.django_db

STRONG = "Blue-Harbour-Lantern-42"
CLIENT = ClientInfo(ip_address="10.0.0.5", user_agent="pytest")
INIT_BODY = {"files": [{"name": "a.dcm", "size": 10}]}


def register(client, **changes):
    body = {
        "username": "jdoe",
        "email": "jdoe@clinic.example",
        "password": STRONG,
        "full_name": "Jane Doe",
        **changes,
    }
    return client.post("/api/v1/auth/register", body, content_type="application/json")


def confirm_email(client, message):
    link = re.search(r"https?://\S+", message.body).group(0)
    token = parse_qs(urlparse(link).query)["token"][0]
    answer = client.post(
        "/api/v1/auth/verify-email", {"token": token}, content_type="application/json"
    )
    assert answer.status_code == 200


def invitation(*, facility=None, role="", max_uses=1, expires_in=timedelta(days=1)):
    """A saved invitation and its code, made as the admin makes them."""
    made = FacilityInvitation(
        facility=facility or FacilityFactory(),
        role=role,
        max_uses=max_uses,
        expires_at=timezone.now() + expires_in,
    )
    code = invitation_create(invitation=made, by=None, client=CLIENT)
    return made, code


def upload_init(client, access):
    return client.post(
        "/api/v1/upload/init", INIT_BODY, content_type="application/json", **bearer(access)
    )


def test_a_self_registered_account_signs_in_and_edits_its_profile_but_waits_to_upload(
    client, mailoutbox, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = register(client, role="radiographer")
    assert response.status_code == 201
    assert response.json()["approval"] == "pending"
    user = User.objects.get(username="jdoe")
    assert user.approval == Approval.PENDING and user.facility is None
    confirm_email(client, mailoutbox[0])  # email confirmation works as before
    access = login(client, "jdoe", STRONG).json()["access"]
    me = client.get("/api/v1/auth/me", **bearer(access)).json()
    assert me["approval"] == "pending"
    edited = client.patch(
        "/api/v1/auth/me",
        {"full_name": "Jane Q. Doe"},
        content_type="application/json",
        **bearer(access),
    )
    assert edited.status_code == 200 and edited.json()["full_name"] == "Jane Q. Doe"

    refused = upload_init(client, access)
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["code"] == "account_pending_approval"
    assert "waiting for an administrator's approval" in error["message"]
    assert error["hint"]


def test_a_valid_invitation_code_approves_the_account_in_its_facility_and_role(
    client, mailoutbox, django_capture_on_commit_callbacks
):
    made, code = invitation(role=Role.RADIOGRAPHER)
    with django_capture_on_commit_callbacks(execute=True):
        # Typed in lower case with spaces: the code is compared without case or separators.
        response = register(
            client, role="clinician", invitation_code=code.lower().replace("-", " ")
        )
    assert response.status_code == 201, response.json()
    assert response.json()["approval"] == "approved"
    assert response.json()["role"] == "radiographer"
    user = User.objects.get(username="jdoe")
    assert (user.approval, user.role, user.facility_id) == (
        "approved",
        "radiographer",
        made.facility_id,
    )
    made.refresh_from_db()
    assert made.uses == 1
    registered = AuditEvent.objects.get(action="user_registered", user=user)
    assert (
        registered.facility_id == made.facility_id and registered.detail["approval"] == "approved"
    )
    # Still unverified: the email link works as before, then the account uploads.
    assert login(client, "jdoe", STRONG).status_code == 401
    confirm_email(client, mailoutbox[0])
    access = login(client, "jdoe", STRONG).json()["access"]
    assert upload_init(client, access).status_code == 201


def test_an_invitation_without_a_role_keeps_the_registrants_choice(client):
    made, code = invitation(role="")
    assert register(client, role="radiographer", invitation_code=code).status_code == 201
    assert User.objects.get(username="jdoe").role == "radiographer"


@pytest.mark.parametrize("case", ["expired", "used_up", "unknown"])
def test_an_expired_used_up_or_unknown_code_is_refused_and_makes_no_account(client, case):
    made, code = invitation(
        max_uses=1, expires_in=timedelta(seconds=-1) if case == "expired" else timedelta(days=1)
    )
    if case == "used_up":
        assert (
            register(
                client, username="first", email="first@clinic.example", invitation_code=code
            ).status_code
            == 201
        )
    if case == "unknown":
        code = "AAAA-BBBB-CCCC-DDDD"
    response = register(client, invitation_code=code)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_invitation_code"
    assert error["message"] == (
        "This invitation code is not valid: it may be mistyped, expired or used up."
    )
    assert not User.objects.filter(username="jdoe").exists()
    made.refresh_from_db()
    assert made.uses == (1 if case == "used_up" else 0)


def test_an_invalid_code_answers_the_same_for_a_taken_and_a_free_account(client):
    UserFactory(username="owner", email="jdoe@clinic.example")
    taken = register(client, invitation_code="WRONG-CODE")
    free = register(
        client, username="fresh", email="fresh@clinic.example", invitation_code="WRONG-CODE"
    )
    assert taken.status_code == free.status_code == 400
    assert taken.json() == free.json()


def test_a_valid_code_answers_the_same_and_counts_a_use_for_a_taken_account(client):
    UserFactory(username="owner", email="jdoe@clinic.example")
    made, code = invitation(max_uses=3)
    taken_email = register(client, username="someone", invitation_code=code)
    taken_username = register(
        client, username="OWNER", email="x@clinic.example", invitation_code=code
    )
    free = register(client, username="fresh", email="fresh@clinic.example", invitation_code=code)
    assert taken_email.status_code == taken_username.status_code == free.status_code == 201
    bodies = [r.json() for r in (taken_email, taken_username, free)]
    assert {b["approval"] for b in bodies} == {"approved"}
    assert [set(b) for b in bodies] == [set(bodies[2])] * 3
    # Every try used the code, so its count does not tell which made an account.
    made.refresh_from_db()
    assert made.uses == 3
    assert (
        register(
            client, username="late", email="late@clinic.example", invitation_code=code
        ).status_code
        == 400
    )
    assert set(
        User.objects.filter(approval="approved", facility=made.facility).values_list(
            "username", flat=True
        )
    ) == {"fresh"}


@pytest.mark.django_db(transaction=True)
def test_concurrent_registrations_use_a_single_use_code_once():
    made, code = invitation(max_uses=1)
    barrier = threading.Barrier(4)
    outcomes = []

    def attempt(n):
        try:
            barrier.wait()
            receipt = user_register(
                username=f"racer{n}",
                email=f"racer{n}@clinic.example",
                password=STRONG,
                full_name="Racer",
                invitation_code=code,
                client=CLIENT,
            )
            outcomes.append(receipt.approval)
        except ApplicationError as exc:
            outcomes.append(exc.code)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["approved"] + ["invalid_invitation_code"] * 3
    made.refresh_from_db()
    assert made.uses == 1
    assert User.objects.filter(username__startswith="racer").count() == 1


@pytest.fixture
def root(client):
    root = User.objects.create_superuser("root", "root@example.org", "Root-Password-123")
    client.force_login(root)
    return root


def test_an_admin_makes_an_invitation_code_that_is_shown_once_and_stored_as_a_digest(client, root):
    facility = FacilityFactory()
    response = client.post(
        "/admin/accounts/facilityinvitation/add/",
        {
            "facility": facility.pk,
            "role": "clinician",
            "label": "New ward staff",
            "max_uses": 5,
            "expires_at_0": (timezone.now() + timedelta(days=3)).strftime("%Y-%m-%d"),
            "expires_at_1": "12:00:00",
        },
        follow=True,
    )
    assert response.status_code == 200, response.content[:3000]
    shown = [str(m) for m in response.context["messages"]]
    code = re.search(r"[A-Z2-7]{4}(?:-[A-Z2-7]{4}){3}", " ".join(shown)).group(0)
    made = FacilityInvitation.objects.get()
    assert made.code_digest != code and code not in made.code_digest
    assert (made.max_uses, made.uses, made.created_by) == (5, 0, root)
    recorded = AuditEvent.objects.get(action="invitation_changed", object_id=str(made.pk))
    assert recorded.user == root and recorded.detail["change"] == "added"
    assert code not in str(recorded.detail)
    assert register(type(client)(), invitation_code=code).json()["approval"] == "approved"
    # The code is not shown again on the invitation's page.
    page = client.get(f"/admin/accounts/facilityinvitation/{made.pk}/change/")
    assert code not in page.content.decode()


def test_the_admin_lists_pending_accounts_and_approves_them_with_role_and_facility(client, root):
    waiting = [
        User.objects.create_user(f"new{n}", f"new{n}@clinic.example", STRONG, approval="pending")
        for n in range(2)
    ]
    settled = UserFactory()
    listed = client.get("/admin/accounts/user/", {"approval__exact": "pending"})
    assert listed.status_code == 200
    page = listed.content.decode()
    assert "new0" in page and "new1" in page and settled.username not in page

    facility = FacilityFactory()
    selected = [u.pk for u in waiting] + [settled.pk]
    asked = client.post(
        "/admin/accounts/user/",
        {"action": "approve_accounts", "_selected_action": selected},
    )
    assert asked.status_code == 200 and b"Approve" in asked.content
    done = client.post(
        "/admin/accounts/user/",
        {
            "action": "approve_accounts",
            "_selected_action": selected,
            "apply": "Approve",
            "role": "radiographer",
            "facility": facility.pk,
        },
    )
    assert done.status_code == 302
    for user in waiting:
        user.refresh_from_db()
        assert (user.approval, user.role, user.facility) == ("approved", "radiographer", facility)
        recorded = AuditEvent.objects.get(action="account_approved", object_id=str(user.pk))
        assert recorded.user == root and recorded.facility == facility
        assert recorded.event_type == "110136 Security Roles Changed"
        assert recorded.detail == {
            "old_role": "clinician",
            "new_role": "radiographer",
            "old_facility_id": None,
            "new_facility_id": facility.pk,
        }
    # The account approved already was left alone and is not recorded as approved.
    settled_before = (settled.role, settled.facility_id)
    settled.refresh_from_db()
    assert (settled.role, settled.facility_id) == settled_before
    assert not AuditEvent.objects.filter(
        action="account_approved", object_id=str(settled.pk)
    ).exists()


def test_approving_twice_changes_and_records_nothing_the_second_time():
    user = User.objects.create_user("new", "new@clinic.example", STRONG, approval="pending")
    facility = FacilityFactory()
    assert user_approve(user=user, role=Role.CLINICIAN, facility=facility, by=None, client=CLIENT)
    stale = User.objects.get(pk=user.pk)
    stale.approval = Approval.PENDING  # another admin's page, loaded before the first approval
    assert not user_approve(user=stale, role=Role.ADMIN, facility=None, by=None, client=CLIENT)
    user.refresh_from_db()
    assert (user.role, user.facility) == (Role.CLINICIAN, facility)
    assert AuditEvent.objects.filter(action="account_approved").count() == 1


def test_an_approved_account_can_start_an_upload_without_signing_in_again(client, mailoutbox):
    register(client)
    user = User.objects.get(username="jdoe")
    User.objects.filter(pk=user.pk).update(email_verified=True)
    access = login(client, "jdoe", STRONG).json()["access"]
    assert upload_init(client, access).status_code == 403
    user_approve(user=user, role=Role.CLINICIAN, facility=FacilityFactory(), by=None, client=CLIENT)
    assert client.get("/api/v1/auth/me", **bearer(access)).json()["approval"] == "approved"
    assert upload_init(client, access).status_code == 201


def test_accounts_an_administrator_makes_are_usable_at_once(client, root):
    facility = FacilityFactory()
    by_code = User.objects.create_user(
        "coded", "coded@clinic.example", STRONG, role=Role.RADIOGRAPHER, facility=facility
    )
    call_command("createsuperuser", "--noinput", username="boss", email="boss@example.org")
    added = client.post(
        "/admin/accounts/user/add/",
        {
            "username": "added",
            "usable_password": "true",
            "password1": STRONG,
            "password2": STRONG,
            "role": "clinician",
            "facility": facility.pk,
        },
    )
    assert added.status_code == 302, added.content[:3000]
    for username in ("coded", "boss", "added", "root"):
        assert User.objects.get(username=username).approval == Approval.APPROVED
    api = APIClient()
    access = login(api, by_code.username, STRONG).json()["access"]
    assert upload_init(api, access).status_code == 201


def test_existing_accounts_are_approved_by_the_migration():
    executor = MigrationExecutor(connection)
    executor.migrate([("accounts", "0003_backup_codes_to_digests")])
    old_user = executor.loader.project_state(
        ("accounts", "0003_backup_codes_to_digests")
    ).apps.get_model("accounts", "User")
    made = old_user.objects.create(
        username="from-before", email="b@clinic.example", email_verified=False
    )
    with connection.cursor() as cursor:  # PostgreSQL alters no table with rows of unchecked FKs
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())
    assert User.objects.get(pk=made.pk).approval == Approval.APPROVED


def test_staff_who_may_only_view_accounts_cannot_approve_them(client):
    from django.contrib.auth.models import Permission

    viewer = User.objects.create_user("viewer", "viewer@example.org", STRONG, is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_user"))
    client.force_login(viewer)
    waiting = User.objects.create_user("new9", "new9@clinic.example", STRONG, approval="pending")

    listed = client.get("/admin/accounts/user/")
    assert listed.status_code == 200
    assert b"approve_accounts" not in listed.content  # the action is not offered
    client.post(
        "/admin/accounts/user/",
        {
            "action": "approve_accounts",
            "_selected_action": [waiting.pk, viewer.pk],
            "apply": "Approve",
            "role": "admin",
            "facility": "",
        },
    )
    waiting.refresh_from_db()
    viewer.refresh_from_db()
    assert waiting.approval == "pending" and viewer.role != "admin"
    assert not AuditEvent.objects.filter(action="account_approved").exists()
