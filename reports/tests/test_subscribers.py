"""upload.completed opens one report per study and facility; later uploads attach to it."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from django.utils import timezone
from pydicom.uid import generate_uid

from accounts.models import Role
from accounts.tests.factories import UserFactory
from relaypacs import events
from reports import tasks
from reports.models import Report, ReportStatus
from reports.services import intake, transitions
from reports.subscribers import report_on_domain_event
from uploads.models import Study, UploadSession, UploadState

pytestmark = pytest.mark.django_db


def completed_upload(owner, *study_uids, notes="Cough.", level="urgent"):
    session = UploadSession.objects.create(
        owner=owner,
        facility=owner.facility,
        state=UploadState.COMPLETED,
        total_size=1,
        chunk_size=1,
        total_chunks=1,
        clinical_notes=notes,
        service_level=level,
    )
    for uid in study_uids:
        Study.objects.create(
            session=session, study_instance_uid=uid, modalities=["MR", "CT"], instances=2
        )
    return session


def test_each_study_of_a_completed_upload_gets_one_assigned_report(
    django_capture_on_commit_callbacks,
):
    owner = UserFactory()
    first, second = generate_uid(), generate_uid()
    session = completed_upload(owner, first, second)
    with django_capture_on_commit_callbacks(execute=True):
        events.emit(events.UPLOAD_COMPLETED, upload_id=str(session.id))
        events.emit(events.UPLOAD_COMPLETED, upload_id=str(session.id))  # delivered twice
    reports = list(Report.objects.order_by("id"))
    assert [r.study_instance_uid for r in reports] == [first, second]
    for report in reports:
        assert (report.status, report.facility, report.sender) == (
            ReportStatus.ASSIGNED,
            owner.facility,
            owner,
        )
        assert (report.service_level, report.modality, report.clinical_notes) == (
            "urgent",
            "CT\\MR",
            "Cough.",
        )
        assert list(report.uploads.all()) == [session]


def test_a_later_upload_of_the_study_attaches_and_answers_the_question(
    django_capture_on_commit_callbacks,
):
    owner = UserFactory()
    uid = generate_uid()
    events.emit(events.UPLOAD_COMPLETED, upload_id=str(completed_upload(owner, uid).id))
    report = Report.objects.get()
    radiologist = UserFactory(role=Role.RADIOLOGIST)
    transitions.report_ask(report_id=report.pk, actor=radiologist, question="The priors?")
    later = completed_upload(owner, uid)
    events.emit(events.UPLOAD_COMPLETED, upload_id=str(later.id))
    report.refresh_from_db()
    assert Report.objects.count() == 1
    assert report.status == ReportStatus.PENDING
    assert report.uploads.count() == 2


def test_the_same_study_from_another_facility_is_another_report():
    uid = generate_uid()
    for owner in (UserFactory(), UserFactory()):
        events.emit(events.UPLOAD_COMPLETED, upload_id=str(completed_upload(owner, uid).id))
    assert Report.objects.filter(study_instance_uid=uid).count() == 2


def test_a_report_whose_creation_failed_is_opened_by_the_sweep(orthanc_clean):
    owner = UserFactory()
    uid = generate_uid()
    session = completed_upload(owner, uid)
    UploadSession.objects.filter(pk=session.pk).update(
        completed_at=timezone.now() - intake.MISSING_REPORT_GRACE - timedelta(seconds=1)
    )
    # The subscriber fails (here: is not there) when upload.completed is delivered.
    events.domain_event.disconnect(report_on_domain_event)
    try:
        events.emit(events.UPLOAD_COMPLETED, upload_id=str(session.id))
    finally:
        events.subscribe(report_on_domain_event)
    assert not Report.objects.exists()
    # Too recent, or long ago: not the sweep's.
    recent = completed_upload(owner, generate_uid())
    UploadSession.objects.filter(pk=recent.pk).update(completed_at=timezone.now())
    old = completed_upload(owner, generate_uid())
    UploadSession.objects.filter(pk=old.pk).update(
        completed_at=timezone.now() - intake.MISSING_REPORT_WINDOW - timedelta(days=1)
    )
    tasks.reports_sync_task()  # the beat job sweeps before it asks the PACS
    report = Report.objects.get()
    assert (report.study_instance_uid, report.status) == (uid, ReportStatus.ASSIGNED)
    assert list(report.uploads.all()) == [session]
    assert intake.reports_open_missing() == 0  # idempotent


def test_a_failing_subscriber_is_logged_without_the_text_of_its_error(caplog):
    def failing(sender, name="", **payload):
        raise ValueError("Patient^Secret 1234")

    events.domain_event.connect(failing, weak=False)
    try:
        with caplog.at_level(logging.ERROR, logger="relaypacs.events"):
            events.emit(events.UPLOAD_FAILED, upload_id="x")
    finally:
        events.domain_event.disconnect(failing)
    ours = [r.getMessage() for r in caplog.records if r.name == "relaypacs.events"]
    assert len(ours) == 1 and "ValueError" in ours[0] and "Secret" not in ours[0]


def test_a_study_uid_of_a_report_the_sender_may_not_see_attaches_nothing(
    django_capture_on_commit_callbacks,
):
    from reports.selectors import reports_visible_to

    radiographer = UserFactory(role=Role.RADIOGRAPHER)
    clinician = UserFactory(role=Role.CLINICIAN, facility=radiographer.facility)
    uid = generate_uid()
    with django_capture_on_commit_callbacks(execute=True):
        events.emit(events.UPLOAD_COMPLETED, upload_id=str(completed_upload(radiographer, uid).id))
    report = Report.objects.get()
    radiologist = UserFactory(role=Role.RADIOLOGIST)
    transitions.report_ask(report_id=report.pk, actor=radiologist, question="The priors?")
    # A clinician's files carry the colleague's Study Instance UID.
    theirs = completed_upload(clinician, uid)
    with django_capture_on_commit_callbacks(execute=True):
        events.emit(events.UPLOAD_COMPLETED, upload_id=str(theirs.id))
    report.refresh_from_db()
    assert Report.objects.count() == 1
    assert report.status == ReportStatus.ADDITIONAL_DATA_REQUIRED
    assert (report.question, report.answer) == ("The priors?", "")
    assert list(report.uploads.all()) != [] and theirs not in report.uploads.all()
    assert not reports_visible_to(user=clinician).filter(pk=report.pk).exists()
    # A colleague who already sees the facility's reports (a radiographer) attaches, and
    # their images answer the question as before.
    colleague = UserFactory(role=Role.RADIOGRAPHER, facility=radiographer.facility)
    with django_capture_on_commit_callbacks(execute=True):
        events.emit(events.UPLOAD_COMPLETED, upload_id=str(completed_upload(colleague, uid).id))
    report.refresh_from_db()
    assert report.status == ReportStatus.PENDING
    assert report.uploads.count() == 2
    assert not reports_visible_to(user=clinician).filter(pk=report.pk).exists()
