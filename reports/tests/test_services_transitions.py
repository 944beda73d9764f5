"""The report state machine: each transition conditional, audited, and announced."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from accounts.models import AuditEvent, Role
from accounts.tests.factories import UserFactory
from relaypacs import events
from relaypacs.errors import ApplicationError
from reports.models import ReportStatus, ReportVersion
from reports.services import pdf, transitions

from .factories import ReportFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def emitted() -> Any:
    seen: list[tuple[str, dict[str, Any]]] = []

    def record(sender: Any, name: str = "", **payload: Any) -> None:
        seen.append((name, payload))

    events.domain_event.connect(record, weak=False)
    yield seen
    events.domain_event.disconnect(record)


@pytest.fixture
def radiologist() -> Any:
    return UserFactory(role=Role.RADIOLOGIST, facility=None, full_name="Dr Ada Reader")


def trail(report_id: int) -> list[AuditEvent]:
    return list(
        AuditEvent.objects.filter(object_type="report", object_id=str(report_id)).order_by("id")
    )


def test_a_claimed_report_cannot_be_claimed_again(radiologist, django_capture_on_commit_callbacks):
    report = ReportFactory()
    with django_capture_on_commit_callbacks(execute=True):
        transitions.report_claim(report_id=report.pk, actor=radiologist)
    other = UserFactory(role=Role.RADIOLOGIST)
    with pytest.raises(ApplicationError) as caught:
        transitions.report_claim(report_id=report.pk, actor=other)
    assert caught.value.code == "report_state_conflict" and caught.value.status_code == 409
    report.refresh_from_db()
    assert (report.status, report.assignee) == (ReportStatus.PENDING, radiologist)


def test_every_transition_is_audited_with_its_actor_and_emitted_without_text(
    radiologist, emitted, django_capture_on_commit_callbacks
):
    report = ReportFactory()
    with django_capture_on_commit_callbacks(execute=True):
        transitions.report_ask(report_id=report.pk, actor=radiologist, question="Priors?")
        transitions.report_reply(report_id=report.pk, actor=report.sender, answer="None exist.")
        transitions.report_draft_save(
            report_id=report.pk, actor=radiologist, findings="Clear lungs.", impression=""
        )
        transitions.report_cancel(report_id=report.pk, actor=radiologist)
    assert [name for name, _ in emitted] == [
        events.REPORT_ADDITIONAL_DATA_REQUIRED,
        events.REPORT_PENDING,
        events.REPORT_CANCELLED,
    ]
    for _, payload in emitted:
        assert payload["report_id"] == report.pk
        assert not {"findings", "question", "answer", "patient_name"} & set(payload)
    rows = trail(report.pk)
    assert [(r.detail["transition"], r.detail["to"]) for r in rows] == [
        ("ask", "additional_data_required"),
        ("reply", "pending"),
        ("draft", "pending"),
        ("cancel", "cancelled"),
    ]
    assert [r.user for r in rows] == [radiologist, report.sender, radiologist, radiologist]
    assert {r.facility_id for r in rows} == {report.facility_id}
    assert all("Priors" not in str(r.detail) for r in rows)


def test_a_report_is_not_ready_until_its_pdf_is_stored_and_a_repeated_render_adds_nothing(
    radiologist, emitted, django_capture_on_commit_callbacks
):
    report = ReportFactory()
    transitions.report_claim(report_id=report.pk, actor=radiologist)
    with django_capture_on_commit_callbacks() as callbacks:  # the render task is not run
        version = transitions.report_sign(
            report_id=report.pk, actor=radiologist, findings="Clear lungs.", impression="Normal."
        )
    assert len(callbacks) == 1  # the render task, dispatched after commit
    report.refresh_from_db()
    assert (report.status, report.signing) == (ReportStatus.PENDING, True)
    with pytest.raises(ApplicationError):
        transitions.report_draft_save(
            report_id=report.pk, actor=radiologist, findings="changed", impression=""
        )
    with django_capture_on_commit_callbacks(execute=True):
        pdf.report_version_render(version_id=version.pk)
        # The same task delivered again, after the first finished (overlapping renders are
        # test_services_pdf's two-thread test): no second event, trail entry or file.
        pdf.report_version_render(version_id=version.pk)
    report.refresh_from_db()
    version.refresh_from_db()
    assert (report.status, report.signing, report.signed_by) == (
        ReportStatus.READY,
        False,
        radiologist,
    )
    assert version.pdf_path and len(version.pdf_sha256) == 64
    assert [name for name, _ in emitted] == [events.REPORT_READY]
    stored = [r for r in trail(report.pk) if r.detail["transition"] == "pdf_stored"]
    assert len(stored) == 1 and stored[0].detail["pdf_sha256"] == version.pdf_sha256
    assert [p.name for p in (pdf.report_storage_dir() / str(report.pk)).iterdir()] == [
        Path(version.pdf_path).name
    ]


def test_an_amendment_keeps_the_signed_version_and_its_pdf_unchanged(
    radiologist, django_capture_on_commit_callbacks
):
    report = ReportFactory()
    transitions.report_claim(report_id=report.pk, actor=radiologist)
    first = transitions.report_sign(
        report_id=report.pk, actor=radiologist, findings="Clear lungs.", impression=""
    )
    pdf.report_version_render(version_id=first.pk)
    first.refresh_from_db()
    first_bytes = (pdf.report_storage_dir() / first.pdf_path).read_bytes()
    second = transitions.report_amend(
        report_id=report.pk, actor=radiologist, findings="Small nodule.", impression="Follow up."
    )
    report.refresh_from_db()
    assert report.status == ReportStatus.READY  # the signed version stays current meanwhile
    pdf.report_version_render(version_id=second.pk)
    report.refresh_from_db()
    first.refresh_from_db()
    assert report.status == ReportStatus.AMENDED
    assert first.superseded and first.findings == "Clear lungs."
    assert (pdf.report_storage_dir() / first.pdf_path).read_bytes() == first_bytes
    assert ReportVersion.objects.filter(report=report).count() == 2
    with pytest.raises(PermissionError):
        first.save()


def test_signing_without_text_is_refused(radiologist):
    report = ReportFactory()
    transitions.report_claim(report_id=report.pk, actor=radiologist)
    with pytest.raises(ApplicationError) as caught:
        transitions.report_sign(report_id=report.pk, actor=radiologist, findings=" ")
    assert caught.value.code == "report_empty"


def test_a_late_render_of_an_earlier_version_does_not_finish_the_amendment(
    radiologist, emitted, django_capture_on_commit_callbacks
):
    report = ReportFactory()
    transitions.report_claim(report_id=report.pk, actor=radiologist)
    first = transitions.report_sign(
        report_id=report.pk, actor=radiologist, findings="Clear lungs.", impression=""
    )
    pdf.report_version_render(version_id=first.pk)
    corrector = UserFactory(role=Role.RADIOLOGIST, full_name="Dr Bo Corrector")
    second = transitions.report_amend(
        report_id=report.pk, actor=corrector, findings="Small nodule.", impression="Follow up."
    )
    with django_capture_on_commit_callbacks(execute=True):
        pdf.report_version_render(version_id=first.pk)  # version 1's task, late or again
    report.refresh_from_db()
    assert (report.status, report.signing, report.signed_by) == (
        ReportStatus.READY,
        True,
        radiologist,
    )
    assert emitted == []
    with django_capture_on_commit_callbacks(execute=True):
        pdf.report_version_render(version_id=second.pk)
    report.refresh_from_db()
    first.refresh_from_db()
    assert (report.status, report.signing, report.signed_by, report.findings) == (
        ReportStatus.AMENDED,
        False,
        corrector,
        "Small nodule.",
    )
    assert first.superseded
    assert [(name, payload["version"]) for name, payload in emitted] == [(events.REPORT_AMENDED, 2)]


def test_a_report_being_read_by_one_radiologist_cannot_be_taken_over_by_another(radiologist):
    report = ReportFactory()
    transitions.report_draft_save(
        report_id=report.pk, actor=radiologist, findings="Mine.", impression=""
    )
    other = UserFactory(role=Role.RADIOLOGIST)
    for attempt in (
        lambda: transitions.report_draft_save(
            report_id=report.pk, actor=other, findings="Theirs.", impression=""
        ),
        lambda: transitions.report_sign(report_id=report.pk, actor=other, findings="Theirs."),
    ):
        with pytest.raises(ApplicationError) as caught:
            attempt()
        assert caught.value.code == "report_read_by_another"
        assert caught.value.status_code == 409
        assert "another radiologist" in caught.value.message
    report.refresh_from_db()
    assert (report.status, report.assignee, report.findings, report.signing) == (
        ReportStatus.PENDING,
        radiologist,
        "Mine.",
        False,
    )
    assert not ReportVersion.objects.filter(report=report).exists()
    # An administrator may take it over (e.g. the reader is away).
    admin = UserFactory(role=Role.ADMIN)
    transitions.report_draft_save(
        report_id=report.pk, actor=admin, findings="Reassigned.", impression=""
    )
    report.refresh_from_db()
    assert (report.assignee, report.findings) == (admin, "Reassigned.")
    # And its reader (now the administrator) signs it.
    transitions.report_sign(report_id=report.pk, actor=admin)
    # A report on one radiologist's worklist is not claimed by another.
    on_worklist = ReportFactory(assignee=radiologist)
    with pytest.raises(ApplicationError) as caught:
        transitions.report_claim(report_id=on_worklist.pk, actor=other)
    assert caught.value.code == "report_read_by_another"
    transitions.report_claim(report_id=on_worklist.pk, actor=radiologist)


def test_an_answer_after_the_senders_new_images_is_still_taken_once(radiologist):
    report = ReportFactory()
    transitions.report_claim(report_id=report.pk, actor=radiologist)
    transitions.report_ask(report_id=report.pk, actor=radiologist, question="Any priors?")
    # The sender's added images reached the PACS first: back to pending, no answer yet.
    transitions.report_reply(report_id=report.pk, actor=None, answer="")
    report.refresh_from_db()
    assert (report.status, report.answer) == (ReportStatus.PENDING, "")
    transitions.report_reply(report_id=report.pk, actor=report.sender, answer="CT 2024, normal.")
    report.refresh_from_db()
    assert (report.status, report.answer) == (ReportStatus.PENDING, "CT 2024, normal.")
    assert trail(report.pk)[-1].detail["transition"] == "late_reply"
    # The question has its answer now: a second one is refused, the first is kept.
    with pytest.raises(ApplicationError) as caught:
        transitions.report_reply(report_id=report.pk, actor=report.sender, answer="Another.")
    assert caught.value.code == "report_state_conflict"
    report.refresh_from_db()
    assert report.answer == "CT 2024, normal."


def test_a_late_answer_tells_the_assignee_that_it_arrived(
    radiologist, emitted, django_capture_on_commit_callbacks
):
    report = ReportFactory()
    transitions.report_claim(report_id=report.pk, actor=radiologist)
    transitions.report_ask(report_id=report.pk, actor=radiologist, question="Any priors?")
    transitions.report_reply(report_id=report.pk, actor=None, answer="")
    emitted.clear()
    with django_capture_on_commit_callbacks(execute=True):
        transitions.report_reply(
            report_id=report.pk, actor=report.sender, answer="CT 2024, normal."
        )
    assert [name for name, _ in emitted] == [events.REPORT_ANSWERED]
    payload = emitted[0][1]
    assert payload["report_id"] == report.pk
    assert payload["assignee_id"] == radiologist.pk
    assert payload["status"] == ReportStatus.PENDING
    # The answer's text is not in the event.
    assert "CT 2024" not in repr(payload)
