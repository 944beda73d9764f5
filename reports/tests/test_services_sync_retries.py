"""An object the synchronisation fails to take in is tried again at the next cycles, a
bounded number of times, then given up (recorded, logged and audited without patient
data), against a real Orthanc and a report store that cannot be written."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

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

    settings.REPORT_STORAGE_DIR = tmp_path / "reports"  # the store works again
    summary = sync.reports_sync()
    assert summary.outcomes == {"final_pdf": 1}
    report.refresh_from_db()
    assert report.status == ReportStatus.READY
    assert PacsReportObject.objects.get(report=report).outcome == "final_pdf"
    assert sync.reports_sync().objects_new == 0  # taken in once


def test_an_object_that_keeps_failing_is_given_up_after_the_limit_audited_once(
    orthanc_clean, unwritable_store, caplog
):
    report, uid = _pdf_in_the_pacs(orthanc_clean)

    with caplog.at_level(logging.INFO):
        outcomes = [sync.reports_sync().outcomes for _ in range(sync.APPLY_MAX_ATTEMPTS)]
    assert outcomes == [{"failed": 1}] * (sync.APPLY_MAX_ATTEMPTS - 1) + [{sync.GAVE_UP: 1}]
    record = PacsReportObject.objects.get(report=report, sop_instance_uid=uid)
    assert (record.outcome, record.failures) == (sync.GAVE_UP, sync.APPLY_MAX_ATTEMPTS)
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
        "attempts": sync.APPLY_MAX_ATTEMPTS,
        "error": audit.detail["error"],
    }
    assert audit.detail["error"] in {"NotADirectoryError", "FileExistsError", "OSError"}
    assert "given up" in caplog.text
    assert "Secret" not in caplog.text and "Secret" not in str(audit.detail)
