"""The report API: RBAC over every endpoint, transitions with events and audit, the list."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import AuditEvent, Role
from accounts.tests.factories import FacilityFactory, UserFactory
from relaypacs import events
from reports.models import Report, ReportStatus
from reports.services import pdf, transitions
from uploads.models import UploadSession

from .factories import ReportFactory

pytestmark = pytest.mark.django_db

ENDPOINTS = [
    ("get", "/api/v1/reports/{id}"),
    ("get", "/api/v1/reports/upload/{upload}"),
    ("get", "/api/v1/reports/{id}/download"),
    ("post", "/api/v1/reports/{id}/reply"),
    ("post", "/api/v1/reports/{id}/claim"),
    ("post", "/api/v1/reports/{id}/draft"),
    ("post", "/api/v1/reports/{id}/sign"),
    ("post", "/api/v1/reports/{id}/ask"),
    ("post", "/api/v1/reports/{id}/amend"),
    ("post", "/api/v1/reports/{id}/cancel"),
]
READER_ENDPOINTS = {"claim", "draft", "sign", "ask", "amend", "cancel"}


@pytest.fixture
def setting() -> dict[str, Any]:
    """A ready report of clinic A, sent by a clinician of A, with its upload."""
    clinic_a, clinic_b = FacilityFactory(), FacilityFactory()
    sender = UserFactory(role=Role.CLINICIAN, facility=clinic_a)
    report = ReportFactory(facility=clinic_a, sender=sender)
    upload = UploadSession.objects.create(
        owner=sender, facility=clinic_a, total_size=1, chunk_size=1, total_chunks=1
    )
    report.uploads.add(upload)
    reader = UserFactory(role=Role.RADIOLOGIST, facility=None)
    transitions.report_claim(report_id=report.pk, actor=reader)
    version = transitions.report_sign(report_id=report.pk, actor=reader, findings="Clear.")
    pdf.report_version_render(version_id=version.pk)
    return {"a": clinic_a, "b": clinic_b, "sender": sender, "report": report, "upload": upload}


def call(client: Any, method: str, path: str, setting: dict[str, Any]) -> Any:
    url = path.format(id=setting["report"].pk, upload=setting["upload"].pk)
    return getattr(client, method)(url, {}, format="json") if method == "post" else client.get(url)


def forbidden(role: str, method: str, path: str) -> bool:
    """A radiographer changes no report; a radiologist answers no question."""
    action = path.rsplit("/", 1)[-1]
    if role == Role.RADIOGRAPHER:
        return action in READER_ENDPOINTS
    return role == Role.RADIOLOGIST and action == "reply"


@pytest.mark.parametrize(
    ("role", "facility", "sees"),
    [
        (Role.CLINICIAN, "a", False),  # a colleague's upload: not theirs
        (Role.CLINICIAN, "b", False),
        (Role.RADIOGRAPHER, "a", True),
        (Role.RADIOGRAPHER, "b", False),
        (Role.RADIOLOGIST, "b", True),
        (Role.ADMIN, "b", True),
        (Role.AUDITOR, "a", False),
    ],
)
def test_rbac_over_every_report_endpoint(api_for, setting, role, facility, sees):
    client = api_for(UserFactory(role=role, facility=setting[facility]))
    listed = client.get("/api/v1/reports").json()["results"]
    assert [r["id"] for r in listed] == ([setting["report"].pk] if sees else [])
    for method, path in ENDPOINTS:
        status = call(client, method, path, setting).status_code
        if not sees:
            assert status == 404, (path, status)
        elif forbidden(role, method, path):
            assert status == 403, (path, status)
        else:
            assert status in (200, 400, 409), (path, status)  # allowed; state decides


@pytest.mark.parametrize(("reads", "sees"), [(("a",), True), (("b",), False), (("a", "b"), True)])
def test_a_radiologist_assigned_facilities_reads_only_their_reports(api_for, setting, reads, sees):
    reader = UserFactory(role=Role.RADIOLOGIST, facility=None)
    reader.reading_facilities.set([setting[name] for name in reads])
    client = api_for(reader)
    listed = client.get("/api/v1/reports").json()["results"]
    assert [r["id"] for r in listed] == ([setting["report"].pk] if sees else [])
    detail = client.get(f"/api/v1/reports/{setting['report'].pk}")
    assert detail.status_code == (200 if sees else 404)
    claim = client.post(f"/api/v1/reports/{setting['report'].pk}/claim", {}, format="json")
    assert (claim.status_code == 404) is not sees


def test_the_sender_sees_their_report_and_downloads_its_pdf(api_for, setting):
    client = api_for(setting["sender"])
    body = client.get(f"/api/v1/reports/upload/{setting['upload'].pk}").json()
    assert body["id"] == setting["report"].pk
    for key in (
        "id",
        "status",
        "upload_ids",
        "study_instance_uid",
        "service_level",
        "source",
        "assignee",
        "findings",
        "impression",
        "question",
        "versions",
    ):
        assert key in body
    assert body["status"] == "ready" and body["upload_ids"] == [str(setting["upload"].pk)]
    assert body["versions"][0]["pdf_available"] is True
    download = client.get(f"/api/v1/reports/{body['id']}/download")
    assert download.status_code == 200 and download["Content-Type"] == "application/pdf"
    assert b"".join(download.streaming_content).startswith(b"%PDF-")
    # A client that asks for a PDF only gets it too (not 406).
    asked = client.get(f"/api/v1/reports/{body['id']}/download", HTTP_ACCEPT="application/pdf")
    assert asked.status_code == 200 and asked["Content-Type"] == "application/pdf"
    assert b"".join(asked.streaming_content).startswith(b"%PDF-")


def test_download_before_signing_is_a_409_with_a_sentence(api_for):
    report = ReportFactory()
    body = api_for(UserFactory(role=Role.ADMIN)).get(f"/api/v1/reports/{report.pk}/download")
    assert body.status_code == 409
    error = body.json()["error"]
    assert error["code"] == "report_not_ready" and error["message"].endswith(".")
    # Asked for a PDF only, the error is still the one JSON error shape.
    pdf_only = api_for(UserFactory(role=Role.ADMIN)).get(
        f"/api/v1/reports/{report.pk}/download", HTTP_ACCEPT="application/pdf"
    )
    assert pdf_only.status_code == 409 and pdf_only["Content-Type"] == "application/json"
    assert pdf_only.json()["error"]["code"] == "report_not_ready"


def test_the_transitions_through_the_api_with_events_and_audit(
    api_for, django_capture_on_commit_callbacks
):
    seen: list[str] = []

    def record(sender: Any, name: str = "", **payload: Any) -> None:
        if name.startswith("report."):
            seen.append(name)

    events.domain_event.connect(record, weak=False)
    try:
        report = ReportFactory()
        reader = UserFactory(role=Role.RADIOLOGIST)
        client, sender = api_for(reader), api_for(report.sender)
        with django_capture_on_commit_callbacks(execute=True):
            assert client.post(f"/api/v1/reports/{report.pk}/claim").json()["status"] == "pending"
            asked = client.post(f"/api/v1/reports/{report.pk}/ask", {"question": "Priors?"})
            assert asked.json()["status"] == "additional_data_required"
            replied = sender.post(f"/api/v1/reports/{report.pk}/reply", {"answer": "None."})
            assert replied.json()["status"] == "pending"
            again = sender.post(f"/api/v1/reports/{report.pk}/reply", {"answer": "None."})
            assert again.status_code == 409
            assert again.json()["error"]["code"] == "report_state_conflict"
            draft = {"findings": "Clear lungs.", "impression": "Normal."}
            assert client.post(f"/api/v1/reports/{report.pk}/draft", draft).status_code == 200
            signed = client.post(f"/api/v1/reports/{report.pk}/sign", {})
            # The render task runs in a worker; here the report waits for its PDF.
            assert (signed.json()["status"], signed.json()["signing"]) == ("pending", True)
        assert seen == [
            events.REPORT_PENDING,
            events.REPORT_ADDITIONAL_DATA_REQUIRED,
            events.REPORT_PENDING,
        ]
        transitions_done = [
            e.detail["transition"]
            for e in AuditEvent.objects.filter(object_type="report").order_by("id")
        ]
        assert transitions_done == ["claim", "ask", "reply", "draft", "sign"]
    finally:
        events.domain_event.disconnect(record)


def test_the_list_filters_sorts_and_keeps_its_query_count(api_for):
    facility = FacilityFactory()
    client = api_for(UserFactory(role=Role.RADIOLOGIST))
    for _ in range(3):
        ReportFactory(facility=facility, modality="CT\\SR", service_level="urgent")
        ReportFactory(facility=facility, modality="MR")
    with CaptureQueriesContext(connection) as few:
        assert client.get("/api/v1/reports").status_code == 200
    for _ in range(20):
        ReportFactory(facility=facility, modality="MR")
    with CaptureQueriesContext(connection) as many:
        body = client.get("/api/v1/reports?sort=-service_level").json()
    assert len(many) == len(few)
    assert body["count"] == 26 and len(body["results"]) == 26
    ct = client.get("/api/v1/reports?modality=ct&service_level=urgent").json()
    assert ct["count"] == 3
    assert client.get("/api/v1/reports?status=nonsense").status_code == 400
    assert Report.objects.filter(status=ReportStatus.ASSIGNED).count() == 26


def test_another_radiologists_draft_or_sign_is_a_409_with_a_sentence(api_for):
    report = ReportFactory()
    reader, other = UserFactory(role=Role.RADIOLOGIST), UserFactory(role=Role.RADIOLOGIST)
    mine = {"findings": "Mine.", "impression": ""}
    assert api_for(reader).post(f"/api/v1/reports/{report.pk}/draft", mine).status_code == 200
    for action in ("draft", "sign"):
        response = api_for(other).post(
            f"/api/v1/reports/{report.pk}/{action}", {"findings": "Theirs.", "impression": ""}
        )
        assert response.status_code == 409, action
        error = response.json()["error"]
        assert error["code"] == "report_read_by_another"
        assert error["message"] == (
            "This report is being read by another radiologist; ask them or an administrator "
            "to reassign it."
        )
    report.refresh_from_db()
    assert (report.assignee, report.findings) == (reader, "Mine.")
