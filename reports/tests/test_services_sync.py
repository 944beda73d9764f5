"""Status from the PACS, against a real Orthanc: a test acting as the hospital's reporting
system stores SR and PDF objects into the study; one sync cycle takes them in."""

from __future__ import annotations

import io
import logging
import subprocess
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from accounts.models import Role
from accounts.tests.factories import UserFactory
from reports import tasks
from reports.clients import BASIC_TEXT_SR, ENCAPSULATED_PDF
from reports.models import PacsReportObject, ReportSource, ReportStatus, ReportVersion
from reports.services import pdf, sync, transitions

from .factories import ReportFactory

pytestmark = pytest.mark.django_db
DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"


def _base(sop_class: str, study_uid: str, modality: str) -> Dataset:
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "Synthetic^Test", "RELAYPACS-TEST", modality
    ds.InstanceNumber = 1
    return ds


def _code(meaning: str) -> Sequence:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "121071", "DCM", meaning
    return Sequence([code])


def text_sr(
    study_uid: str, text: str, *, completion: str, verification: str, sop_class=BASIC_TEXT_SR
) -> Dataset:
    ds = _base(sop_class, study_uid, "SR")
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = _code("Radiology Report")
    ds.CompletionFlag, ds.VerificationFlag = completion, verification
    if verification == "VERIFIED":
        observer = Dataset()
        observer.VerifyingObserverName = "Hospital^Radiologist"
        observer.VerifyingOrganization = "Hospital"
        observer.VerificationDateTime = "20250102120000"
        ds.VerifyingObserverSequence = Sequence([observer])
    item = Dataset()
    item.RelationshipType, item.ValueType, item.TextValue = "CONTAINS", "TEXT", text
    item.ConceptNameCodeSequence = _code("Finding")
    ds.ContentSequence = Sequence([item])
    return ds


def encapsulated_pdf(study_uid: str, data: bytes) -> Dataset:
    ds = _base(ENCAPSULATED_PDF, study_uid, "DOC")
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocumentLength = len(data)
    ds.EncapsulatedDocument = data + (b"\0" if len(data) % 2 else b"")
    return ds


def store(orthanc: Any, ds: Dataset) -> str:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    response = orthanc.session.post(f"{orthanc.url}/instances", data=buffer.getvalue(), timeout=30)
    response.raise_for_status()
    return str(ds.SOPInstanceUID)


def pdf_text(path) -> str:
    return subprocess.run(
        ["pdftotext", str(path), "-"], check=True, capture_output=True, text=True
    ).stdout


def sync_then_render(capture: Any) -> sync.SyncSummary:
    """One cycle, then the render tasks it queued after its commits, run here."""
    with capture() as callbacks:  # the dispatches are captured, not sent to the broker
        summary = sync.reports_sync()
    waiting = ReportVersion.objects.filter(pdf_path="").exclude(source="pacs_pdf")
    assert len(callbacks) == waiting.count()
    for version_id in waiting.values_list("pk", flat=True):
        tasks.report_pdf_render_task(version_id)
    return summary


@pytest.fixture
def report(orthanc_clean: Any) -> Any:
    return ReportFactory()


def test_an_unverified_sr_makes_the_report_pending(orthanc_clean, report):
    store(
        orthanc_clean,
        text_sr(
            report.study_instance_uid,
            "Draft text.",
            completion="PARTIAL",
            verification="UNVERIFIED",
        ),
    )
    summary = sync.reports_sync()
    report.refresh_from_db()
    assert (report.status, report.findings, report.source) == (
        ReportStatus.PENDING,
        "Draft text.",
        ReportSource.PACS_SR,
    )
    assert summary.outcomes == {"preliminary": 1}
    assert sync.reports_sync().objects_new == 0  # taken in once


def test_a_verified_sr_makes_the_report_ready_with_a_pdf_of_its_text(
    orthanc_clean, report, api_for, django_capture_on_commit_callbacks
):
    store(
        orthanc_clean,
        text_sr(
            report.study_instance_uid,
            "No fracture seen.",
            completion="COMPLETE",
            verification="VERIFIED",
        ),
    )
    with django_capture_on_commit_callbacks() as callbacks:
        sync.reports_sync()
    # Rendering waits for the sync's transaction to commit: the version is there, its PDF
    # not yet, and the report is not ready without it.
    version = report.versions.get()
    report.refresh_from_db()
    assert (version.pdf_path, report.status, report.signing) == ("", ReportStatus.ASSIGNED, True)
    assert len(callbacks) == 1
    tasks.report_pdf_render_task(version.pk)  # what the queued task does in a worker
    report.refresh_from_db()
    assert (report.status, report.findings) == (ReportStatus.READY, "No fracture seen.")
    response = api_for(report.sender).get(f"/api/v1/reports/{report.pk}/download")
    assert response.status_code == 200
    path = pdf.report_storage_dir() / "downloaded.pdf"
    path.write_bytes(b"".join(response.streaming_content))
    text = pdf_text(path)
    assert "No fracture seen." in text and "Hospital Radiologist" in text


def test_an_encapsulated_pdf_is_kept_as_received(orthanc_clean, report):
    received = pdf.report_pdf_bytes(
        report=report,
        version=ReportVersion(
            number=1, findings="From the PACS.", signed_at=report.created_at, source="pacs_pdf"
        ),
    )
    store(orthanc_clean, encapsulated_pdf(report.study_instance_uid, received))
    sync.reports_sync()
    report.refresh_from_db()
    version = report.versions.get()
    assert (report.status, report.source, version.source) == (
        ReportStatus.READY,
        "pacs_pdf",
        "pacs_pdf",
    )
    assert (pdf.report_storage_dir() / version.pdf_path).read_bytes() == received


def test_a_dose_sr_changes_nothing(orthanc_clean, report):
    store(
        orthanc_clean,
        text_sr(
            report.study_instance_uid,
            "Dose.",
            completion="COMPLETE",
            verification="VERIFIED",
            sop_class=DOSE_SR,
        ),
    )
    summary = sync.reports_sync()
    report.refresh_from_db()
    assert (report.status, report.findings, summary.objects_new) == (ReportStatus.ASSIGNED, "", 0)
    assert not PacsReportObject.objects.exists()


def test_a_report_ready_from_our_pages_is_amended_not_overwritten(
    orthanc_clean, report, django_capture_on_commit_callbacks
):
    reader = UserFactory(role=Role.RADIOLOGIST)
    transitions.report_claim(report_id=report.pk, actor=reader)
    ours = transitions.report_sign(report_id=report.pk, actor=reader, findings="Our reading.")
    pdf.report_version_render(version_id=ours.pk)
    store(
        orthanc_clean,
        text_sr(
            report.study_instance_uid,
            "Preliminary there.",
            completion="PARTIAL",
            verification="UNVERIFIED",
        ),
    )
    sync.reports_sync()
    report.refresh_from_db()
    assert (report.status, report.findings) == (ReportStatus.READY, "Our reading.")
    store(
        orthanc_clean,
        text_sr(
            report.study_instance_uid,
            "Final there.",
            completion="COMPLETE",
            verification="VERIFIED",
        ),
    )
    sync_then_render(django_capture_on_commit_callbacks)
    report.refresh_from_db()
    ours.refresh_from_db()
    assert (report.status, report.source) == (ReportStatus.AMENDED, ReportSource.PACS_SR)
    assert ours.superseded and ours.findings == "Our reading."
    assert [v.source for v in report.versions.order_by("number")] == ["relay", "pacs_sr"]


def test_one_query_asks_for_many_studies(orthanc_clean):
    reports = [ReportFactory() for _ in range(sync.QIDO_STUDY_BATCH + 5)]
    for r in reports[::50]:
        store(
            orthanc_clean,
            text_sr(r.study_instance_uid, "Seen.", completion="PARTIAL", verification="UNVERIFIED"),
        )
    summary = sync.reports_sync()
    assert summary.objects_new == 3
    # Two batches of a series query and an instance query each (a query that found
    # something asks once more for a next page), three WADO-RS retrievals: not one request
    # per study.
    assert summary.requests <= 2 * 4 + 3


def test_only_report_like_series_are_searched_for_report_objects(orthanc_clean, settings):
    """Instances are looked for only in SR, DOC and OT series, so that a PACS matching SOP
    classes by reading files reads no image; a PDF filed in an image series is found only
    with REPORT_SYNC_SERIES_MODALITIES empty (every series)."""
    report = ReportFactory()
    filed_as_ct = encapsulated_pdf(report.study_instance_uid, b"%PDF-1.4 filed in a CT series")
    filed_as_ct.Modality = "CT"
    store(orthanc_clean, filed_as_ct)
    assert sync.reports_sync().objects_new == 0

    settings.REPORT_SYNC_SERIES_MODALITIES = []
    assert sync.reports_sync().objects_new == 1


@pytest.mark.parametrize(
    "bad",
    ["pdf_without_document", "not_a_pdf"],
)
def test_one_unreadable_object_is_recorded_and_the_others_are_synced(orthanc_clean, bad, caplog):
    broken, fine = ReportFactory(), ReportFactory()
    if bad == "pdf_without_document":
        unreadable = encapsulated_pdf(broken.study_instance_uid, b"%PDF-1.4")
        del unreadable.EncapsulatedDocument
        del unreadable.EncapsulatedDocumentLength
    else:
        unreadable = encapsulated_pdf(broken.study_instance_uid, b"Patient^Secret text only")
    bad_uid = store(orthanc_clean, unreadable)
    store(
        orthanc_clean,
        text_sr(fine.study_instance_uid, "Draft.", completion="PARTIAL", verification="UNVERIFIED"),
    )
    with caplog.at_level(logging.INFO):
        summary = sync.reports_sync()
    assert summary.outcomes == {"preliminary": 1, "unreadable": 1}
    fine.refresh_from_db()
    broken.refresh_from_db()
    assert (fine.status, fine.findings) == (ReportStatus.PENDING, "Draft.")
    assert (broken.status, broken.signing) == (ReportStatus.ASSIGNED, False)
    assert not broken.versions.exists()
    record = PacsReportObject.objects.get(report=broken)
    assert (record.sop_instance_uid, record.outcome) == (bad_uid, "unreadable")
    assert "Synthetic" not in caplog.text and "Secret" not in caplog.text
    again = sync.reports_sync()
    assert (again.objects_new, again.outcomes) == (0, {})  # not retried at every cycle
