"""Pipeline events in the audit trail carry the person (owner, or who acted) and the upload."""

import pytest

from accounts.models import AuditEvent
from accounts.tests.factories import UserFactory
from relaypacs import events

pytestmark = pytest.mark.django_db


def recorded(upload_id):
    return list(AuditEvent.objects.filter(object_id=upload_id).order_by("id"))


def test_every_pipeline_event_is_recorded_with_the_owner_and_the_upload():
    owner = UserFactory()
    events.emit(events.UPLOAD_STARTED, upload_id="u-1", owner_id=owner.pk)
    # Today's emitters send the owner with upload.started only.
    events.emit(events.UPLOAD_RECEIVED, upload_id="u-1")
    events.emit(events.PACS_RECEIPT, upload_id="u-1", destination="Main PACS", instances=3)
    events.emit(events.UPLOAD_COMPLETED, upload_id="u-1")
    trail = recorded("u-1")
    assert [e.detail["phase"] for e in trail] == [
        "started",
        "received",
        "acknowledged",
        "confirmed",
    ]
    for e in trail:
        assert (e.user, e.username, e.facility) == (owner, owner.username, owner.facility)
        assert (e.object_type, e.object_id, e.detail["owner_id"]) == ("upload", "u-1", owner.pk)
    assert "owner_from" not in trail[0].detail
    assert {e.detail.get("owner_from") for e in trail[1:]} == {"audit_trail"}
    assert trail[2].detail["destination"] == "Main PACS" and trail[2].detail["instances"] == 3


def test_an_owner_id_in_the_event_is_used_and_an_actor_is_recorded_as_who_acted():
    owner, admin = UserFactory(), UserFactory()
    events.emit(events.UPLOAD_FAILED, upload_id="u-2", owner_id=owner.pk, code="x")
    events.emit(events.UPLOAD_CANCELLED, upload_id="u-2", owner_id=owner.pk, actor_id=admin.pk)
    failed, cancelled = recorded("u-2")
    assert failed.user == owner and failed.detail["owner_id"] == owner.pk
    assert failed.detail["code"] == "x" and "owner_from" not in failed.detail
    assert cancelled.user == admin
    assert cancelled.detail["owner_id"] == owner.pk and cancelled.detail["actor_id"] == admin.pk


def test_an_event_of_an_unknown_owner_is_still_recorded():
    events.emit(events.UPLOAD_FAILED, upload_id="u-3", code="upload_expired")
    (failed,) = recorded("u-3")
    assert failed.user is None and failed.object_id == "u-3"
    assert failed.detail["owner_from"] == "unknown" and "owner_id" not in failed.detail
