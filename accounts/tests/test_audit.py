import csv
import io
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.utils import timezone

from accounts.models import AuditEvent, Role
from accounts.services import audit_record
from accounts.tests.factories import FacilityFactory, UserFactory
from accounts.tests.helpers import bearer, login
from relaypacs import events

pytestmark = pytest.mark.django_db


def rows(response):
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/csv")
    body = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(body)))


def export(client, requester, **params):
    access = login(client, requester.username).json()["access"]
    return client.get("/api/v1/auth/audit/events.csv", params, **bearer(access))


def test_sign_in_success_and_failure_are_audited_with_dicom_vocabulary(client):
    user = UserFactory()
    login(client, user.username, "wrong", meta={"REMOTE_ADDR": "10.0.0.9"})
    login(client, user.username)
    failed = AuditEvent.objects.get(action="login_failed", username=user.username)
    assert failed.event_id == "110114 User Authentication"
    assert failed.event_type == "110122 Login"
    assert failed.outcome == "4" and failed.ip_address == "10.0.0.9"
    assert failed.username == user.username
    ok = AuditEvent.objects.get(action="login", user=user)
    assert ok.outcome == "0" and ok.user == user and ok.facility == user.facility


def test_the_audit_trail_cannot_be_changed_or_deleted():
    event = audit_record(action="login", username="someone")
    event.action = "logout"
    with pytest.raises(PermissionError):
        event.save()
    with pytest.raises(PermissionError):
        event.delete()
    with pytest.raises(PermissionError):
        AuditEvent.objects.filter(pk=event.pk).update(action="logout")
    with pytest.raises(PermissionError):
        AuditEvent.objects.all().delete()


def test_upload_events_become_data_import_and_instances_transferred():
    owner = UserFactory()
    events.emit(events.UPLOAD_STARTED, upload_id="u-1", owner_id=owner.pk)
    events.emit(events.PACS_RECEIPT, upload_id="u-1", destination="Main PACS", instances=12)
    started = AuditEvent.objects.get(action="data_import", object_id="u-1")
    assert started.event_id == "110107 Data Import"
    assert started.user == owner and started.object_id == "u-1"
    sent = AuditEvent.objects.get(action="instances_transferred", object_id="u-1")
    assert sent.event_id == "110104 DICOM Instances Transferred"
    assert sent.detail["instances"] == 12


@pytest.mark.parametrize("role", [Role.CLINICIAN, Role.RADIOGRAPHER, Role.RADIOLOGIST])
def test_only_auditors_and_admins_export_the_audit_trail(client, role):
    response = export(client, UserFactory(role=role))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"


def test_auditor_exports_csv_filtered_by_user_facility_action_and_date(client):
    here, there = FacilityFactory(), FacilityFactory()
    alice = UserFactory(facility=here)
    bob = UserFactory(facility=there)
    auditor = UserFactory(role=Role.AUDITOR, facility=None)  # sees every facility's events
    audit_record(action="password_changed", user=alice)
    audit_record(action="password_changed", user=bob)
    audit_record(action="twofactor_enabled", user=alice)
    old = audit_record(action="password_changed", user=alice)
    with connection.cursor() as cursor:  # the app cannot backdate an event; the test can
        cursor.execute(
            "UPDATE accounts_auditevent SET occurred_at = %s WHERE id = %s",
            [timezone.now() - timedelta(days=40), old.pk],
        )
    today = timezone.now().date().isoformat()
    by_user = rows(
        export(client, auditor, user=alice.username, action="password_changed", date_from=today)
    )
    assert [r["username"] for r in by_user] == [alice.username]
    assert by_user[0]["event_type"] == "110137 User Security Attributes Changed"
    by_facility = rows(export(client, auditor, facility=there.code))
    assert {r["username"] for r in by_facility} == {bob.username}
    everything = rows(export(client, auditor, user=alice.username))
    assert len(everything) == 3
    assert AuditEvent.objects.filter(action="audit_log_used", user=auditor).count() == 3


def test_csv_cells_cannot_become_spreadsheet_formulas(client):
    audit_record(action="login_failed", username="=HYPERLINK(1)")
    admin = UserFactory(role=Role.ADMIN)
    exported = rows(export(client, admin, action="login_failed"))
    assert exported[0]["username"] == "'=HYPERLINK(1)"


def test_export_rejects_an_unknown_action(client):
    response = export(client, UserFactory(role=Role.AUDITOR), action="nonsense")
    assert response.status_code == 400


def test_reading_an_upload_status_is_audited_once_per_hour_per_user(client):
    from uploads.models import UploadSession

    owner = UserFactory()
    upload = UploadSession.objects.create(
        owner=owner, total_size=10, chunk_size=256 * 1024, total_chunks=1
    )
    access = login(client, owner.username).json()["access"]
    for _ in range(3):  # the PWA polls its progress
        assert client.get(f"/api/v1/upload/{upload.id}/status", **bearer(access)).status_code == 200
    events_ = AuditEvent.objects.filter(action="instances_accessed", user=owner)
    assert [(e.user, e.object_id) for e in events_] == [(owner, str(upload.id))]
    assert events_[0].event_id == "110103 DICOM Instances Accessed"


def test_a_refused_status_read_is_not_an_access(client):
    from uploads.models import UploadSession

    upload = UploadSession.objects.create(
        owner=UserFactory(), total_size=10, chunk_size=256 * 1024, total_chunks=1
    )
    stranger = UserFactory(role=Role.CLINICIAN)
    access = login(client, stranger.username).json()["access"]
    assert client.get(f"/api/v1/upload/{upload.id}/status", **bearer(access)).status_code == 404
    assert not AuditEvent.objects.filter(action="instances_accessed", user=stranger).exists()


def test_deactivating_a_user_in_the_admin_is_audited_and_signs_them_out(client):
    from django.contrib.admin.sites import site
    from django.test import RequestFactory

    from accounts.admin import RelayUserAdmin
    from accounts.models import User

    user = UserFactory()
    root = User.objects.create_superuser("root", "root@example.org", "x")
    tokens = login(client, user.username).json()
    request = RequestFactory().post("/admin/")
    request.user = root
    user.is_active = False
    RelayUserAdmin(User, site).save_model(request, user, form=None, change=True)
    event = AuditEvent.objects.get(action="role_changed", object_id=str(user.pk))
    assert event.detail == {"old_is_active": True, "new_is_active": False}
    assert event.user == root
    assert (
        client.post(
            "/api/v1/auth/refresh", {"refresh": tokens["refresh"]}, content_type="application/json"
        ).status_code
        == 401
    )


def test_an_auditor_with_a_facility_reads_that_facilitys_trail_only(client):
    here, there = FacilityFactory(), FacilityFactory()
    alice, bob = UserFactory(facility=here), UserFactory(facility=there)
    for user in (alice, bob):
        audit_record(action="password_changed", user=user)
    audit_record(action="login_failed", username="nobody")  # filed under no facility
    local = UserFactory(role=Role.AUDITOR, facility=here)
    assert {r["username"] for r in rows(export(client, local, action="password_changed"))} == {
        alice.username
    }
    assert rows(export(client, local, action="login_failed")) == []
    # Asking for another facility gives nothing rather than that facility's events.
    assert rows(export(client, local, facility=there.code)) == []
    everywhere = UserFactory(role=Role.AUDITOR, facility=None)
    assert {r["username"] for r in rows(export(client, everywhere, action="password_changed"))} == {
        alice.username,
        bob.username,
    }
    assert len(rows(export(client, everywhere, action="login_failed"))) == 1
    admin = UserFactory(role=Role.ADMIN, facility=here)  # administrators see everything
    assert len(rows(export(client, admin, action="password_changed"))) == 2


def test_an_auditor_in_the_admin_sees_the_same_events_as_in_the_export(client):
    here, there = FacilityFactory(), FacilityFactory()
    audit_record(action="password_changed", user=UserFactory(username="alice", facility=here))
    audit_record(action="password_changed", user=UserFactory(username="bob", facility=there))
    auditor = UserFactory(role=Role.AUDITOR, facility=here, is_staff=True)
    auditor.user_permissions.add(Permission.objects.get(codename="view_auditevent"))
    client.force_login(auditor)
    page = client.get("/admin/accounts/auditevent/", {"action__exact": "password_changed"})
    assert page.status_code == 200
    assert ">alice<" in page.content.decode() and ">bob<" not in page.content.decode()


def test_an_uploads_events_are_filed_under_its_facility_after_its_owner_moved(client):
    here, there = FacilityFactory(), FacilityFactory()
    owner = UserFactory(role=Role.RADIOGRAPHER, facility=here)
    events.emit(events.UPLOAD_STARTED, upload_id="u-9", owner_id=owner.pk, facility_id=here.pk)
    owner.facility = there
    owner.save(update_fields=["facility"])
    events.emit(events.UPLOAD_RECEIVED, upload_id="u-9", owner_id=owner.pk)
    events.emit(events.UPLOAD_COMPLETED, upload_id="u-9")
    trail = AuditEvent.objects.filter(object_id="u-9")
    assert trail.count() == 3
    assert set(trail.values_list("facility_id", flat=True)) == {here.pk}
    assert {
        r["object_id"] for r in rows(export(client, UserFactory(role=Role.AUDITOR, facility=here)))
    } >= {"u-9"}
    assert "u-9" not in {
        r["object_id"] for r in rows(export(client, UserFactory(role=Role.AUDITOR, facility=there)))
    }


def test_reading_an_upload_is_filed_under_the_uploads_facility(
    client, django_capture_on_commit_callbacks
):
    clinic = FacilityFactory()
    owner = UserFactory(role=Role.RADIOGRAPHER, facility=clinic)
    owner_access = login(client, owner.username).json()["access"]
    with django_capture_on_commit_callbacks(execute=True):
        made = client.post(
            "/api/v1/upload/init",
            {"files": [{"name": "a.dcm", "size": 10}]},
            content_type="application/json",
            **bearer(owner_access),
        )
    upload_id = made.json()["upload_id"]
    started = AuditEvent.objects.get(action="data_import", object_id=upload_id)
    assert started.facility == clinic
    admin = UserFactory(role=Role.ADMIN, facility=None)
    access = login(client, admin.username).json()["access"]
    assert client.get(f"/api/v1/upload/{upload_id}/status", **bearer(access)).status_code == 200
    read = AuditEvent.objects.get(action="instances_accessed", object_id=upload_id)
    assert read.user == admin and read.facility == clinic
