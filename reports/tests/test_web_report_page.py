"""The study and report page at /reports/<id>/: what the radiologist reads, and every step
(claim, draft, sign, ask, amend, cancel) as a POST form through the same services as the
API, with CSRF, a sentence for a stale step, the PDF per version and the history."""

from __future__ import annotations

import pytest
from django.test import Client

from accounts.models import Role
from accounts.tests.factories import UserFactory
from reports.models import Report, ReportStatus, ReportVersion
from reports.services import pdf, transitions
from uploads.models import Study, UploadSession

from .factories import ReportFactory
from .web_helpers import csrf_token_of, report_received, signed_in

pytestmark = pytest.mark.django_db


@pytest.fixture
def reader():
    return UserFactory(role=Role.RADIOLOGIST, facility=None, full_name="Dr Reader")


def upload_of(
    report: Report, *, series: list[dict], warnings: list[str], notes: str = ""
) -> UploadSession:
    upload = UploadSession.objects.create(
        owner=report.sender,
        facility=report.facility,
        state="completed",
        total_size=1000,
        chunk_size=1000,
        total_chunks=1,
        clinical_notes=notes or report.clinical_notes,
        service_level=report.service_level,
        warnings=warnings,
    )
    Study.objects.create(
        session=upload,
        study_instance_uid=report.study_instance_uid,
        patient_name=report.patient_name,
        series=series,
        instances=sum(s["instances"] for s in series),
    )
    report.uploads.add(upload)
    return upload


SERIES = [
    {
        "series_instance_uid": "1.2.3.1",
        "series_number": 3,
        "modality": "CT",
        "description": "Axial 1 mm",
        "instances": 118,
        "expected_instances": 120,
        "instance_number_gaps": [17, 18],
    },
    {
        "series_instance_uid": "1.2.3.2",
        "series_number": 4,
        "modality": "CT",
        "description": "Scout",
        "instances": 2,
        "expected_instances": 2,
        "instance_number_gaps": [],
    },
]


def test_the_page_shows_patient_study_series_notes_sender_and_warnings(reader, settings):
    settings.PACS_VIEWER_URL = ""
    report = report_received(
        12,
        patient_name="DOE^JANE",
        patient_id="P-1",
        patient_birth_date="19800102",
        accession_number="ACC-9",
        clinical_notes="Fall from a ladder; pain in the left wrist.",
        service_level="urgent",
    )
    report.sender.full_name = "Colin Clinic"
    report.sender.save()
    upload_of(
        report,
        series=SERIES,
        warnings=["Series 3: 118 of 120 images (missing image numbers 17, 18)."],
    )
    response = signed_in(reader).get(f"/reports/{report.pk}/")
    assert response.status_code == 200
    html = response.content.decode()
    for text in [
        "DOE, JANE",
        "ID P-1",
        "born 1980-01-02",
        "ACC-9",
        "Fall from a ladder; pain in the left wrist.",
        "Colin Clinic",
        report.facility.name,
        "118 of 120 images",
        "missing image numbers 17, 18",
        "2 images",
        "how many images the scanner made is not recorded",
        "Warnings of this upload",
        "Urgent",
        "On the worklist",
        "12 min ago",
    ]:
        assert text in html, text
    assert 'id="viewer-link"' not in html  # PACS_VIEWER_URL unset: no link


def test_the_viewer_link_follows_the_setting(reader, settings):
    settings.PACS_VIEWER_URL = (
        "https://pacs.example.org/ui/app/#/filtered-studies?StudyInstanceUID={study_uid}"
    )
    report = report_received(5)
    html = signed_in(reader).get(f"/reports/{report.pk}/").content.decode()
    assert (
        f'href="https://pacs.example.org/ui/app/#/filtered-studies?StudyInstanceUID={report.study_instance_uid}"'
        in html
    )


def test_claim_draft_sign_and_the_pdf_of_each_version(reader):
    report = report_received(5)
    client = signed_in(reader)
    page = client.get(f"/reports/{report.pk}/").content.decode()
    assert 'id="claim"' in page and 'id="sign"' not in page  # sign only once being read

    response = client.post(f"/reports/{report.pk}/claim")
    assert response.status_code == 302 and response["Location"] == f"/reports/{report.pk}/"
    report.refresh_from_db()
    assert (report.status, report.assignee) == (ReportStatus.PENDING, reader)
    page = client.get(f"/reports/{report.pk}/").content.decode()
    assert "The report is yours" in page and 'id="sign"' in page

    client.post(f"/reports/{report.pk}/draft", {"findings": "Draft text.", "impression": ""})
    report.refresh_from_db()
    assert report.findings == "Draft text."

    response = client.post(
        f"/reports/{report.pk}/sign", {"findings": "No fracture.", "impression": "Normal wrist."}
    )
    assert response.status_code == 302
    report.refresh_from_db()
    assert report.signing and report.status == ReportStatus.PENDING
    page = client.get(f"/reports/{report.pk}/").content.decode()
    assert '<meta http-equiv="refresh" content="3">' in page  # waits for the PDF
    assert 'id="editor-form"' not in page
    assert "PDF being made" in page

    version = ReportVersion.objects.get(report=report)
    pdf.report_version_render(version_id=version.pk)  # what the worker's task does
    report.refresh_from_db()
    assert report.status == ReportStatus.READY
    page = client.get(f"/reports/{report.pk}/").content.decode()
    assert f'href="/reports/{report.pk}/pdf?version=1"' in page
    download = client.get(f"/reports/{report.pk}/pdf?version=1")
    assert download.status_code == 200
    assert download["Content-Type"] == "application/pdf"
    assert b"".join(download.streaming_content).startswith(b"%PDF-")
    assert "History" in page and "Signed" in page and "PDF stored" in page

    # Amend: a second version; the first stays downloadable, superseded.
    response = client.post(
        f"/reports/{report.pk}/amend", {"findings": "Hairline fracture.", "impression": "Fracture."}
    )
    assert response.status_code == 302
    pdf.report_version_render(version_id=ReportVersion.objects.get(report=report, number=2).pk)
    report.refresh_from_db()
    assert report.status == ReportStatus.AMENDED
    page = client.get(f"/reports/{report.pk}/").content.decode()
    assert "superseded" in page and f"/reports/{report.pk}/pdf?version=2" in page
    assert client.get(f"/reports/{report.pk}/pdf?version=1").status_code == 200
    assert client.get(f"/reports/{report.pk}/pdf?version=9").status_code == 404


def test_a_pdf_asked_for_before_signing_returns_to_the_page_with_a_sentence(reader):
    report = report_received(5)
    client = signed_in(reader)
    response = client.get(f"/reports/{report.pk}/pdf", follow=True)
    assert response.status_code == 200
    assert "This report has no PDF yet: it has not been signed." in response.content.decode()


def test_ask_shows_the_question_and_the_senders_reply(reader):
    report = report_received(5)
    client = signed_in(reader)
    empty = client.post(f"/reports/{report.pk}/ask", {"question": "  "})
    assert empty.status_code == 400
    assert "The question to the sending clinic is empty." in empty.content.decode()
    response = client.post(f"/reports/{report.pk}/ask", {"question": "Any prior CT?"})
    assert response.status_code == 302
    report.refresh_from_db()
    assert report.status == ReportStatus.ADDITIONAL_DATA_REQUIRED
    page = client.get(f"/reports/{report.pk}/").content.decode()
    assert "Any prior CT?" in page and "Waiting for the clinic's answer." in page
    transitions.report_reply(report_id=report.pk, actor=report.sender, answer="Yes, from 2023.")
    page = client.get(f"/reports/{report.pk}/").content.decode()
    assert "Yes, from 2023." in page
    assert "Answer from the clinic" in page  # in the history
    assert "Being read" in page


def test_cancel(reader):
    report = report_received(5)
    client = signed_in(reader)
    assert (
        client.post(f"/reports/{report.pk}/cancel", {"reason": "Sent in error"}).status_code == 302
    )
    report.refresh_from_db()
    assert report.status == ReportStatus.CANCELLED
    page = client.get(f"/reports/{report.pk}/").content.decode()
    assert "This study will not be reported." in page and 'id="cancel"' not in page


def test_a_stale_sign_shows_a_sentence_and_keeps_the_text(reader):
    """Two radiologists on the same page: the second sign finds it signed already."""
    other = UserFactory(role=Role.RADIOLOGIST)
    report = report_received(5)
    first, second = signed_in(reader), signed_in(other)
    assert (
        first.post(f"/reports/{report.pk}/draft", {"findings": "a", "impression": ""}).status_code
        == 302
    )
    response = second.post(
        f"/reports/{report.pk}/sign", {"findings": "My own text", "impression": ""}
    )
    assert response.status_code == 409
    html = response.content.decode()
    assert "This report is being read by another radiologist" in html
    assert "My own text" in html  # nothing typed is lost
    assert (
        first.post(
            f"/reports/{report.pk}/sign", {"findings": "Final", "impression": ""}
        ).status_code
        == 302
    )
    again = first.post(f"/reports/{report.pk}/sign", {"findings": "Final", "impression": ""})
    assert again.status_code == 409
    assert "no longer in a state that allows this step" in again.content.decode()


def test_a_report_read_by_another_offers_no_writing(reader):
    other = UserFactory(role=Role.RADIOLOGIST, full_name="Dr Other")
    report = ReportFactory(status=ReportStatus.PENDING, assignee=other, findings="Theirs")
    page = signed_in(reader).get(f"/reports/{report.pk}/").content.decode()
    assert 'id="editor-form"' not in page and 'id="claim"' not in page
    assert "Being read by Dr Other" in page


def test_an_unknown_step_is_not_found(reader):
    report = report_received(5)
    assert signed_in(reader).post(f"/reports/{report.pk}/approve").status_code == 404


def test_steps_need_the_csrf_token(reader):
    report = report_received(5)
    client = signed_in(reader, enforce_csrf=True)
    refused = client.post(f"/reports/{report.pk}/claim")
    assert refused.status_code == 403
    report.refresh_from_db()
    assert report.status == ReportStatus.ASSIGNED
    token = csrf_token_of(client, f"/reports/{report.pk}/")
    assert (
        client.post(f"/reports/{report.pk}/claim", {"csrfmiddlewaretoken": token}).status_code
        == 302
    )
    report.refresh_from_db()
    assert report.status == ReportStatus.PENDING


def test_steps_are_refused_to_other_roles():
    report = report_received(5)
    technician = UserFactory(role=Role.RADIOGRAPHER, facility=report.facility)
    response = signed_in(technician).post(f"/reports/{report.pk}/claim")
    assert response.status_code == 403
    report.refresh_from_db()
    assert report.status == ReportStatus.ASSIGNED


def test_next_study_goes_to_the_next_waiting_one_in_worklist_order(reader):
    stat = report_received(5, service_level="stat")
    urgent = report_received(50, service_level="urgent")
    routine = report_received(60, service_level="routine")
    report_received(70, service_level="routine", status=ReportStatus.READY)
    taken = report_received(
        80, service_level="routine", assignee=UserFactory(role=Role.RADIOLOGIST)
    )
    client: Client = signed_in(reader)
    assert client.get(f"/reports/{stat.pk}/next")["Location"] == f"/reports/{urgent.pk}/"
    assert client.get(f"/reports/{urgent.pk}/next")["Location"] == f"/reports/{routine.pk}/"
    assert client.get(f"/reports/{routine.pk}/next")["Location"] == f"/reports/{stat.pk}/"  # wraps
    assert taken.pk  # on another radiologist's list: never offered


def test_the_page_documents_its_shortcuts(reader):
    report = report_received(5)
    client = signed_in(reader)
    client.post(f"/reports/{report.pk}/claim")
    html = client.get(f"/reports/{report.pk}/").content.decode()
    assert 'data-shortcut="sign"' in html and 'data-shortcut="next"' in html
    assert "<kbd>Alt</kbd>+<kbd>S</kbd> sign" in html
    assert "/static/reports/shortcuts.js" in html


def test_the_pages_run_under_the_products_content_security_policy(reader):
    """Production sends script-src 'self' and style-src 'self' (relaypacs/settings/csp.py):
    no inline script, style or event handler on these pages."""
    report = report_received(5)
    client = signed_in(reader)
    for url in ["/reports/", f"/reports/{report.pk}/", "/accounts/login/"]:
        html = client.get(url).content.decode()
        assert "<script>" not in html and "<style" not in html, url
        assert ' style="' not in html and " onclick=" not in html, url
