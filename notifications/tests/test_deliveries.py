"""Domain events become stream events and notifications for the right people, in words
without patient data."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.conf import settings

from accounts.models import Role
from accounts.tests.factories import FacilityFactory, UserFactory
from notifications import texts
from notifications.models import Event, Notification
from relaypacs import events
from reports.tests.factories import ReportFactory
from uploads.models import UploadSession

from .conftest import make_upload

pytestmark = pytest.mark.django_db

PATIENT_DATA = ("Secret", "Patient", "PID-4242", "19700101", "1970")


def _no_patient_data(notification: Notification) -> None:
    for value in PATIENT_DATA:
        assert value not in notification.title and value not in notification.body


def test_upload_completed_tells_the_owner_that_the_pacs_received_it(technician):
    upload = make_upload(owner=technician, modalities=["CT"])
    events.emit(events.UPLOAD_COMPLETED, upload_id=str(upload.pk))
    notification = Notification.objects.get(user=technician)
    assert notification.kind == "upload_completed"
    assert notification.upload_id == upload.pk
    assert notification.title.startswith("CT study sent ")
    assert notification.title.endswith("was received by the PACS")
    _no_patient_data(notification)
    event = Event.objects.get(user=technician)
    assert event.data["type"] == "upload.completed"
    assert event.data["state"] == "completed"
    assert event.data["upload_id"] == str(upload.pk)
    assert event.data["notification"]["id"] == notification.pk
    assert event.data["unread_count"] == 1


def test_upload_failed_says_a_fixed_sentence_of_its_error_code(technician):
    # An error's own message may carry what a notification must not (an archive's entry
    # names, here a patient's name): the body is a fixed sentence chosen by the code.
    message = "The archive Secret_Patient_PID-4242.zip is damaged."
    upload = make_upload(
        owner=technician,
        state="failed",
        error={"code": "archive_corrupt", "message": message, "hint": "x"},
    )
    events.emit(events.UPLOAD_FAILED, upload_id=str(upload.pk), code="archive_corrupt")
    notification = Notification.objects.get(user=technician)
    assert notification.kind == "upload_failed"
    assert notification.body == texts.UPLOAD_FAILED_BODIES["archive_corrupt"]
    _no_patient_data(notification)


def test_an_unknown_error_code_gets_the_general_sentence(technician):
    upload = make_upload(
        owner=technician,
        state="failed",
        error={"code": "something_new", "message": "Secret^Patient broke it.", "hint": "x"},
    )
    events.emit(events.UPLOAD_FAILED, upload_id=str(upload.pk), code="something_new")
    notification = Notification.objects.get(user=technician)
    assert notification.body == "The upload stopped. Open it to see what to do."
    _no_patient_data(notification)


# Where the upload pipeline makes the errors it stores in UploadSession.error.
ERROR_SOURCES = [
    "uploads/services/forwarding.py",
    "uploads/services/processing.py",
    "uploads/services/maintenance.py",
    "uploads/archives.py",
    "pacs/errors.py",
]


def test_every_error_code_of_the_upload_pipeline_has_its_sentence():
    codes: set[str] = set()
    for name in ERROR_SOURCES:
        source = (Path(settings.BASE_DIR) / name).read_text()
        codes |= set(re.findall(r'"code": "([a-z_]+)"', source))
        codes |= set(re.findall(r'\bcode="([a-z_]+)"', source))
        codes |= set(re.findall(r'(?:ArchiveError|ArchiveLimitExceeded)\(\s*"([a-z_]+)"', source))
        codes |= set(re.findall(r'__init__\(\s*(?:self,\s*)?"([a-z_]+)"', source))
    assert {"pacs_unreachable", "no_dicom_files", "archive_corrupt", "pacs_rejected"} <= codes
    assert codes - set(texts.UPLOAD_FAILED_BODIES) == set()
    for body in texts.UPLOAD_FAILED_BODIES.values():
        assert body.endswith(".") and "{" not in body


def test_needs_confirmation_asks_for_attention_and_progress_states_make_events_only(technician):
    upload = make_upload(owner=technician)
    for name in [events.UPLOAD_RECEIVED, events.UPLOAD_FORWARDING, events.UPLOAD_WAITING_FOR_PACS]:
        events.emit(name, upload_id=str(upload.pk))
    events.emit(events.UPLOAD_NEEDS_CONFIRMATION, upload_id=str(upload.pk))
    states = list(
        Event.objects.filter(user=technician).order_by("seq").values_list("state", flat=True)
    )
    assert states == ["processing", "forwarding", "waiting_for_pacs", "needs_confirmation"]
    assert list(Notification.objects.values_list("kind", flat=True)) == ["upload_needs_attention"]


def test_upload_events_reach_only_the_owner(technician):
    other = UserFactory()
    upload = make_upload(owner=technician)
    events.emit(events.UPLOAD_COMPLETED, upload_id=str(upload.pk))
    assert not Event.objects.filter(user=other).exists()


def test_transitions_emit_the_forwarding_state_after_commit(
    technician, django_capture_on_commit_callbacks
):
    from uploads.services import transitions

    upload = make_upload(owner=technician, state="needs_confirmation")
    with django_capture_on_commit_callbacks(execute=True):
        assert transitions.upload_confirmed(upload_id=upload.pk)
    assert list(Event.objects.filter(user=technician).values_list("type", "state")) == [
        ("upload.forwarding", "forwarding")
    ]


def test_report_ready_and_question_go_to_the_senders(technician):
    owner = UserFactory()
    report = ReportFactory(
        sender=technician, facility=technician.facility, question="Any prior CT?"
    )
    report.uploads.add(make_upload(owner=owner))
    payload = {"report_id": report.pk, "sender_id": technician.pk, "assignee_id": None}
    events.emit(events.REPORT_READY, status="ready", **payload)
    events.emit(
        events.REPORT_ADDITIONAL_DATA_REQUIRED, status="additional_data_required", **payload
    )
    for user in (technician, owner):
        kinds = list(
            Notification.objects.filter(user=user).order_by("id").values_list("kind", flat=True)
        )
        assert kinds == ["report_ready", "report_additional_data_required"]
    question = Notification.objects.filter(
        user=technician, kind="report_additional_data_required"
    ).get()
    # The question is free text (it may name the patient): shown in the app only.
    assert "Any prior CT?" not in question.body
    assert question.body.startswith("The radiologist asked a question about the CT study sent ")
    assert question.body.endswith(". Open the report to answer.")
    assert question.report_id == report.pk
    assert question.title.startswith("Question about the CT study sent")
    _no_patient_data(question)


def test_report_assigned_goes_to_the_assignee_or_else_to_the_reading_pool(technician):
    facility = technician.facility
    elsewhere = FacilityFactory()
    reads_here = UserFactory(role=Role.RADIOLOGIST, facility=None)
    reads_here.reading_facilities.add(facility)
    reads_all = UserFactory(role=Role.RADIOLOGIST, facility=None)
    reads_elsewhere = UserFactory(role=Role.RADIOLOGIST, facility=None)
    reads_elsewhere.reading_facilities.add(elsewhere)
    pooled = ReportFactory(sender=technician, facility=facility)
    events.emit(events.REPORT_ASSIGNED, report_id=pooled.pk, status="assigned", assignee_id=None)
    assert set(
        Notification.objects.filter(kind="report_assigned").values_list("user_id", flat=True)
    ) == {reads_here.pk, reads_all.pk}
    # The sender follows the report's states without a notification.
    assert Event.objects.filter(user=technician, type="report.assigned").exists()
    assert not Notification.objects.filter(user=technician).exists()

    Notification.objects.all().delete()
    assigned = ReportFactory(sender=technician, facility=facility, assignee=reads_all)
    events.emit(
        events.REPORT_ASSIGNED, report_id=assigned.pk, status="assigned", assignee_id=reads_all.pk
    )
    assert list(Notification.objects.values_list("user_id", flat=True)) == [reads_all.pk]


def test_an_event_about_no_upload_is_ignored(technician):
    events.emit(events.UPLOAD_FAILED, upload_id="not-an-upload")
    events.emit(events.UPLOAD_COMPLETED, upload_id="00000000-0000-0000-0000-000000000000")
    assert not Event.objects.exists()


def test_a_retry_claimed_from_waiting_for_pacs_says_forwarding_again(
    technician, django_capture_on_commit_callbacks
):
    from uploads.services import transitions

    upload = make_upload(owner=technician, state="waiting_for_pacs")
    with django_capture_on_commit_callbacks(execute=True):
        assert transitions.upload_forwarding_claim(upload_id=upload.pk)
    assert list(Event.objects.filter(user=technician).values_list("type", "state")) == [
        ("upload.forwarding", "forwarding")
    ]
    # Taking over a forwarding upload (a lease ran out) is no change of state: no event.
    UploadSession.objects.filter(pk=upload.pk).update(lease_until=None)
    with django_capture_on_commit_callbacks(execute=True):
        assert transitions.upload_forwarding_claim(upload_id=upload.pk)
    assert Event.objects.filter(user=technician).count() == 1


def test_events_say_when_their_object_last_changed_and_its_state_then(technician):
    upload = make_upload(owner=technician, state="completed")
    events.emit(events.UPLOAD_FORWARDING, upload_id=str(upload.pk))  # delivered late
    upload.refresh_from_db()
    data = Event.objects.get(user=technician).data
    assert data["state"] == "forwarding"  # what the event stands for
    assert data["current_state"] == "completed"  # what the upload is now
    assert data["updated_at"] == upload.updated_at.isoformat()
    report = ReportFactory(sender=technician, facility=technician.facility)
    events.emit(events.REPORT_ASSIGNED, report_id=report.pk, status="assigned", assignee_id=None)
    data = Event.objects.get(user=technician, type="report.assigned").data
    assert (data["current_state"], data["updated_at"]) == (
        "assigned",
        report.updated_at.isoformat(),
    )


def test_when_one_of_the_pool_takes_a_report_the_others_offers_are_withdrawn(
    technician, django_capture_on_commit_callbacks
):
    from reports.services import transitions

    taker = UserFactory(role=Role.RADIOLOGIST, facility=None)
    other = UserFactory(role=Role.RADIOLOGIST, facility=None)
    report = ReportFactory(sender=technician, facility=technician.facility)
    events.emit(events.REPORT_ASSIGNED, report_id=report.pk, status="assigned", assignee_id=None)
    offer = Notification.objects.get(user=other, kind="report_assigned")
    assert offer.read_at is None
    with django_capture_on_commit_callbacks(execute=True):
        transitions.report_claim(report_id=report.pk, actor=taker)
    offer.refresh_from_db()
    assert offer.read_at is not None
    claimed = Event.objects.get(user=other, type="report.claimed")
    assert claimed.report_id == report.pk and claimed.state == "pending"
    assert claimed.data["notification_ids"] == [offer.pk]
    assert claimed.data["unread_count"] == 0
    assert claimed.data["assignee_id"] == taker.pk
    # The one who took it, and the sender, get report.pending only.
    assert not Event.objects.filter(type="report.claimed").exclude(user=other).exists()
    assert Event.objects.filter(user=taker, type="report.pending").exists()
    # Pending again later (an answer to a question): nobody is told twice.
    events.emit(events.REPORT_PENDING, report_id=report.pk, status="pending", assignee_id=taker.pk)
    assert Event.objects.filter(type="report.claimed").count() == 1


def test_a_late_answer_notifies_the_assignee_in_fixed_words(technician):
    reader = UserFactory(role=Role.RADIOLOGIST, facility=None)
    report = ReportFactory(
        sender=technician,
        facility=technician.facility,
        assignee=reader,
        question="Any prior CT?",
        answer="Secret Patient PID-4242 had one.",
    )
    events.emit(
        events.REPORT_ANSWERED,
        report_id=report.pk,
        sender_id=technician.pk,
        assignee_id=reader.pk,
        status="pending",
    )
    answered = Notification.objects.get(user=reader)
    assert answered.kind == "report_answered"
    assert answered.report_id == report.pk
    assert answered.body.startswith("The sender answered your question about the CT study sent ")
    assert answered.body.endswith(". Open the report to read it.")
    assert "had one" not in answered.body and "had one" not in answered.title
    _no_patient_data(answered)
    # The sender follows the report without a notification of their own answer.
    assert Event.objects.filter(user=technician, type="report.answered").exists()
    assert not Notification.objects.filter(user=technician).exists()
