"""An object the synchronisation fails to take in is tried again at the next cycles, a
bounded number of times, then given up (recorded, logged and audited without patient
data), against a real Orthanc and a report store that cannot be written."""

from __future__ import annotations

import logging
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone

from accounts.models import AuditEvent, AuditOutcome
from reports.models import PacsReportObject, ReportStatus
from reports.services import sync

from .factories import ReportFactory
from .test_services_sync import encapsulated_pdf, store

pytestmark = pytest.mark.django_db


@pytest.fixture
def unwritable_store(settings: Any, tmp_path: Path) -> Path:
    """A report store whose folder cannot be made: a file stands where it would go."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    settings.REPORT_STORAGE_DIR = blocker / "reports"
    return blocker


def _pdf_in_the_pacs(orthanc: Any) -> tuple[Any, str]:
    report = ReportFactory(patient_name="Secret^Patient")
    uid = store(orthanc, encapsulated_pdf(report.study_instance_uid, b"%PDF-1.4 Secret text"))
    return report, uid


def test_an_object_that_fails_is_tried_again_and_taken_in_once_the_store_works(
    orthanc_clean, unwritable_store, settings, tmp_path
):
    report, uid = _pdf_in_the_pacs(orthanc_clean)

    for attempt in (1, 2):
        summary = sync.reports_sync()
        assert (summary.objects_new, summary.outcomes) == (1, {"failed": 1})
        record = PacsReportObject.objects.get(report=report, sop_instance_uid=uid)
        assert (record.outcome, record.failures) == (sync.FAILING, attempt)
        report.refresh_from_db()
        assert report.status == ReportStatus.ASSIGNED and not report.versions.exists()
        _time_passes(record, sync.retry_delay(attempt))  # due again

    settings.REPORT_STORAGE_DIR = tmp_path / "reports"  # the store works again
    summary = sync.reports_sync()
    assert summary.outcomes == {"final_pdf": 1}
    report.refresh_from_db()
    assert report.status == ReportStatus.READY
    assert PacsReportObject.objects.get(report=report).outcome == "final_pdf"
    assert sync.reports_sync().objects_new == 0  # taken in once


def _time_passes(record: PacsReportObject, delta: timedelta) -> None:
    """Move the object's first failure and next attempt ``delta`` into the past."""
    PacsReportObject.objects.filter(pk=record.pk).update(
        seen_at=record.seen_at - delta,
        next_attempt_at=(record.next_attempt_at or timezone.now()) - delta,
    )


def test_an_object_that_keeps_failing_is_given_up_after_a_day_audited_once(
    orthanc_clean, unwritable_store, caplog
):
    report, uid = _pdf_in_the_pacs(orthanc_clean)

    with caplog.at_level(logging.INFO):
        assert sync.reports_sync().outcomes == {"failed": 1}
        record = PacsReportObject.objects.get(report=report, sop_instance_uid=uid)
        assert record.next_attempt_at is not None
        assert record.next_attempt_at - record.seen_at >= sync.APPLY_RETRY_FIRST
        # Not due yet: the next cycles leave it alone (the report store may be down for a
        # while; it is not given up after a few cycles).
        for _ in range(sync.APPLY_MAX_ATTEMPTS + 1):
            assert sync.reports_sync().outcomes == {}
        record.refresh_from_db()
        assert (record.outcome, record.failures) == (sync.FAILING, 1)
        # Each failure waits longer, up to the longest interval.
        delays = []
        for _ in range(sync.APPLY_MAX_ATTEMPTS):
            _time_passes(record, record.next_attempt_at - timezone.now() + timedelta(seconds=1))
            assert sync.reports_sync().outcomes == {"failed": 1}
            before = record.next_attempt_at
            record.refresh_from_db()
            delays.append(record.next_attempt_at - timezone.now())
            assert record.next_attempt_at > before
        assert delays == sorted(delays) and delays[0] < delays[-1] <= sync.APPLY_RETRY_LONGEST
        assert record.failures == sync.APPLY_MAX_ATTEMPTS + 1
        assert record.outcome == sync.FAILING  # many failures, but not a day yet
        # A day after the first failure, the next failure gives it up.
        _time_passes(record, sync.APPLY_GIVE_UP_AFTER)
        assert sync.reports_sync().outcomes == {sync.GAVE_UP: 1}
    record.refresh_from_db()
    assert (record.outcome, record.failures) == (sync.GAVE_UP, sync.APPLY_MAX_ATTEMPTS + 2)
    # No longer retrieved nor tried at every cycle.
    again = sync.reports_sync()
    assert (again.objects_new, again.outcomes) == (0, {})
    report.refresh_from_db()
    assert report.status == ReportStatus.ASSIGNED

    audit = AuditEvent.objects.get(action="data_import", object_id=str(report.pk))
    assert audit.outcome == AuditOutcome.MINOR_FAILURE
    assert audit.facility_id == report.facility_id
    assert audit.detail == {
        "phase": "report_sync_gave_up",
        "sop_instance_uid": uid,
        "sop_class_uid": record.sop_class_uid,
        "attempts": sync.APPLY_MAX_ATTEMPTS + 2,
        "error": audit.detail["error"],
    }
    assert audit.detail["error"] in {"NotADirectoryError", "FileExistsError", "OSError"}
    assert "given up" in caplog.text
    assert "Secret" not in caplog.text and "Secret" not in str(audit.detail)


def test_reports_sync_retry_makes_the_next_cycle_try_given_up_objects_again(
    orthanc_clean, unwritable_store, settings, tmp_path
):
    report, uid = _pdf_in_the_pacs(orthanc_clean)
    assert sync.reports_sync().outcomes == {"failed": 1}
    PacsReportObject.objects.filter(report=report).update(outcome=sync.GAVE_UP)
    assert sync.reports_sync().outcomes == {}
    settings.REPORT_STORAGE_DIR = tmp_path / "reports"  # the cause was fixed
    out = StringIO()
    call_command("reports_sync_retry", stdout=out)
    assert out.getvalue().startswith("1 given-up report object(s) will be tried again")
    record = PacsReportObject.objects.get(report=report, sop_instance_uid=uid)
    assert (record.outcome, record.failures, record.next_attempt_at) == (sync.FAILING, 0, None)
    assert sync.reports_sync().outcomes == {"final_pdf": 1}
    report.refresh_from_db()
    assert report.status == ReportStatus.READY
