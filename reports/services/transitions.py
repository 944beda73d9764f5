"""The report's state machine: one service per transition, and no other code writes
``Report.status`` or ``Report.signing``.

Each transition is one conditional UPDATE on the states it leaves, its row count checked:
two radiologists pressing "sign" at once, or a PACS result arriving while a radiologist
signs, leave exactly one winner and the other gets a 409. Every transition is audited with
its actor (None: RelayPACS itself, e.g. the PACS synchronisation) and emits a domain event
after commit. Payloads and audit details carry ids, states and digests, never report text.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import transaction
from django.db.models import Exists, Max, OuterRef, Q
from django.db.models.expressions import Combinable
from django.utils import timezone
from rest_framework import status

from accounts.models import Role, User
from relaypacs import events
from relaypacs.errors import ApplicationError

from ..models import (
    FINAL_STATUSES,
    OPEN_STATUSES,
    Report,
    ReportSource,
    ReportStatus,
    ReportVersion,
)
from .audit import report_audit

_EVENT_OF_STATUS = {
    ReportStatus.ASSIGNED: events.REPORT_ASSIGNED,
    ReportStatus.PENDING: events.REPORT_PENDING,
    ReportStatus.READY: events.REPORT_READY,
    ReportStatus.ADDITIONAL_DATA_REQUIRED: events.REPORT_ADDITIONAL_DATA_REQUIRED,
    ReportStatus.AMENDED: events.REPORT_AMENDED,
    ReportStatus.CANCELLED: events.REPORT_CANCELLED,
}


# The states each radiologist's transition leaves (none of them while ``signing``); the
# pages (reports.selectors.report_actions_for) offer a step only where its service
# would take it.
CLAIM_FROM = (ReportStatus.ASSIGNED,)
DRAFT_FROM = (ReportStatus.ASSIGNED, ReportStatus.PENDING)
SIGN_FROM = (ReportStatus.PENDING,)
AMEND_FROM = FINAL_STATUSES
ASK_FROM = (ReportStatus.ASSIGNED, ReportStatus.PENDING)
CANCEL_FROM = OPEN_STATUSES
# The transitions that only the report's reader (its assignee, or anyone for a report in
# the pool; administrators may take over) may take.
READER_ONLY = frozenset({"claim", "draft", "sign"})


def _conflict(report_id: int) -> ApplicationError:
    return ApplicationError(
        "report_state_conflict",
        "This report is no longer in a state that allows this step; someone may have "
        "changed it a moment ago.",
        "Reload the report to see where it stands, then try again.",
        status_code=status.HTTP_409_CONFLICT,
        extra={"report_id": report_id},
    )


def _read_by_another(report_id: int) -> ApplicationError:
    return ApplicationError(
        "report_read_by_another",
        "This report is being read by another radiologist; ask them or an administrator "
        "to reassign it.",
        "Meanwhile, pick another report from the worklist.",
        status_code=status.HTTP_409_CONFLICT,
        extra={"report_id": report_id},
    )


def _emit_after_commit(*, status_to: str, report: Report, actor: User | None, **extra: Any) -> None:
    name = _EVENT_OF_STATUS[ReportStatus(status_to)]
    payload = {
        "report_id": report.pk,
        "facility_id": report.facility_id,
        "sender_id": report.sender_id,
        "assignee_id": report.assignee_id,
        "actor_id": actor.pk if actor is not None else None,
        "status": status_to,
        **extra,
    }
    transaction.on_commit(lambda: events.emit(name, **payload))


def _move(
    *,
    report_id: int,
    from_statuses: Iterable[str],
    to_status: str | None,
    actor: User | None,
    transition: str,
    signing: bool | None = None,
    set_signing: bool | None = None,
    reader: User | None = None,
    condition: Q | Combinable | None = None,
    emit: bool = True,
    detail: dict[str, Any] | None = None,
    **fields: Any,
) -> Report:
    """The one conditional UPDATE every transition is made of; must run in a transaction.

    ``to_status`` None keeps the status (a change of text or of ``signing`` only);
    ``signing`` filters on the current value of ``signing``; ``set_signing`` writes it.
    ``reader``: the radiologist writing the report, who must be its assignee or take it
    from the pool (administrators may take over any). ``condition``: a further filter the
    report must match. Raises ApplicationError 409 report_state_conflict when the report
    is not in one of ``from_statuses`` (or not in that ``signing`` state, or does not
    match ``condition``), and 409 report_read_by_another when another radiologist has it.
    """
    now = timezone.now()
    queryset = Report.objects.filter(pk=report_id, status__in=list(from_statuses))
    if signing is not None:
        queryset = queryset.filter(signing=signing)
    if condition is not None:
        queryset = queryset.filter(condition)
    row = queryset.values_list("status", "assignee_id").first()
    if row is None:
        raise _conflict(report_id)
    previous, assignee_id = row
    if reader is not None and reader.role != Role.ADMIN and not reader.is_superuser:
        if assignee_id is not None and assignee_id != reader.pk:
            raise _read_by_another(report_id)
        queryset = queryset.filter(Q(assignee=reader) | Q(assignee__isnull=True))
    changes: dict[str, Any] = {"updated_at": now, **fields}
    if to_status is not None:
        changes["status"] = to_status
    if set_signing is not None:
        changes["signing"] = set_signing
    if queryset.filter(status=previous).update(**changes) != 1:
        raise _conflict(report_id)
    report = Report.objects.get(pk=report_id)
    report_audit(
        action="report_changed",
        report_id=report.pk,
        facility_id=report.facility_id,
        actor=actor,
        detail={
            "transition": transition,
            "from": previous,
            "to": report.status,
            **(detail or {}),
        },
    )
    if emit and to_status is not None and to_status != previous:
        _emit_after_commit(status_to=to_status, report=report, actor=actor)
    return report


def report_created(*, report: Report, actor: User | None) -> None:
    """Record and announce a report just made ``assigned`` (reports.services.intake)."""
    report_audit(
        action="report_changed",
        report_id=report.pk,
        facility_id=report.facility_id,
        actor=actor,
        detail={"transition": "create", "from": "", "to": report.status},
    )
    _emit_after_commit(status_to=report.status, report=report, actor=actor)


@transaction.atomic
def report_claim(*, report_id: int, actor: User) -> Report:
    """A radiologist takes a report off the worklist: assigned → pending, assigned to them.

    A report on another radiologist's worklist is theirs (409 report_read_by_another)."""
    return _move(
        report_id=report_id,
        from_statuses=CLAIM_FROM,
        to_status=ReportStatus.PENDING,
        actor=actor,
        transition="claim",
        reader=actor,
        assignee=actor,
    )


@transaction.atomic
def report_draft_save(*, report_id: int, actor: User, findings: str, impression: str) -> Report:
    """Save the text being written; a report still on the worklist is claimed by it.

    Only its assignee (or anyone, for a report in the pool) writes it; an administrator
    may take it over. 409 report_read_by_another otherwise."""
    return _move(
        report_id=report_id,
        from_statuses=DRAFT_FROM,
        to_status=ReportStatus.PENDING,
        actor=actor,
        transition="draft",
        signing=False,
        reader=actor,
        findings=findings,
        impression=impression,
        assignee=actor,
    )


def _require_text(*, findings: str, impression: str) -> None:
    if not findings.strip() and not impression.strip():
        raise ApplicationError(
            "report_empty",
            "A report cannot be signed without findings or an impression.",
            "Write the findings or the impression, then sign again.",
        )


def _version_create(
    *,
    report: Report,
    source: str,
    findings: str,
    impression: str,
    signed_by: User | None,
    signed_by_name: str,
    sop_instance_uid: str = "",
) -> ReportVersion:
    """A new version; one that RelayPACS renders (all but a PACS PDF) has its render task
    queued after commit, and recorded as dispatched."""
    latest = report.versions.aggregate(latest=Max("number"))["latest"] or 0
    now = timezone.now()
    rendered = source != ReportSource.PACS_PDF
    version = ReportVersion.objects.create(
        report=report,
        number=latest + 1,
        source=source,
        findings=findings,
        impression=impression,
        signed_by=signed_by,
        signed_by_name=signed_by_name,
        signed_at=now,
        sop_instance_uid=sop_instance_uid,
        render_dispatched_at=now if rendered else None,
        render_attempts=1 if rendered else 0,
    )
    if rendered:
        _render_after_commit(version.pk)
    return version


def _display_name(user: User) -> str:
    return user.full_name or user.get_full_name() or user.username


def _render_after_commit(version_id: int) -> None:
    from ..tasks import report_pdf_render_task

    # A broker that is down or silent costs the render a wait, never the signature: beat
    # queues renders that have no PDF again (reports_pdf_redispatch).
    transaction.on_commit(lambda: report_pdf_render_task.delay(version_id), robust=True)


@transaction.atomic
def report_sign(
    *, report_id: int, actor: User, findings: str | None = None, impression: str | None = None
) -> ReportVersion:
    """Sign the report being read: a new immutable version whose PDF a task renders.

    The report stays ``pending`` (with ``signing`` set) until the PDF is stored, then
    turns ``ready``. Raises 400 report_empty without text, 409 when not ``pending``, 409
    report_read_by_another when another radiologist is reading it.
    """
    current = Report.objects.filter(pk=report_id).values("findings", "impression").first()
    if current is None:
        raise _conflict(report_id)
    text_findings = current["findings"] if findings is None else findings
    text_impression = current["impression"] if impression is None else impression
    _require_text(findings=text_findings, impression=text_impression)
    report = _move(
        report_id=report_id,
        from_statuses=SIGN_FROM,
        to_status=None,
        actor=actor,
        transition="sign",
        signing=False,
        reader=actor,
        findings=text_findings,
        impression=text_impression,
        set_signing=True,
    )
    version = _version_create(
        report=report,
        source=ReportSource.RELAY,
        findings=text_findings,
        impression=text_impression,
        signed_by=actor,
        signed_by_name=_display_name(actor),
    )
    return version


@transaction.atomic
def report_amend(*, report_id: int, actor: User, findings: str, impression: str) -> ReportVersion:
    """Correct a signed report: a new version; the report turns ``amended`` when its PDF is
    stored, and the earlier versions stay downloadable, marked superseded."""
    _require_text(findings=findings, impression=impression)
    report = _move(
        report_id=report_id,
        from_statuses=AMEND_FROM,
        to_status=None,
        actor=actor,
        transition="amend",
        signing=False,
        findings=findings,
        impression=impression,
        set_signing=True,
    )
    version = _version_create(
        report=report,
        source=ReportSource.RELAY,
        findings=findings,
        impression=impression,
        signed_by=actor,
        signed_by_name=_display_name(actor),
    )
    return version


@transaction.atomic
def report_ask(*, report_id: int, actor: User, question: str) -> Report:
    """The radiologist asks the sender for more (priors, history, a missing series)."""
    if not question.strip():
        raise ApplicationError(
            "question_empty",
            "The question to the sending clinic is empty.",
            "Write what the clinic should send or answer, then ask again.",
        )
    return _move(
        report_id=report_id,
        from_statuses=ASK_FROM,
        to_status=ReportStatus.ADDITIONAL_DATA_REQUIRED,
        actor=actor,
        transition="ask",
        signing=False,
        question=question,
        answer="",
    )


@transaction.atomic
def report_reply(*, report_id: int, actor: User | None, answer: str) -> Report:
    """The sender's answer (or a new upload of the study) returns the report to ``pending``.

    An answer that arrives after the sender's new images already returned the report to
    ``pending`` (the app sends both, and the images may reach the PACS first) is still
    taken while that question has no answer yet: the report stays ``pending`` and the
    radiologist reads it on the report page. Raises 409 report_state_conflict otherwise.
    """
    try:
        return _move(
            report_id=report_id,
            from_statuses=[ReportStatus.ADDITIONAL_DATA_REQUIRED],
            to_status=ReportStatus.PENDING,
            actor=actor,
            transition="reply",
            answer=answer,
        )
    except ApplicationError as error:
        if error.code != "report_state_conflict" or not answer.strip():
            raise
    report = _move(
        report_id=report_id,
        from_statuses=[ReportStatus.PENDING],
        to_status=None,
        actor=actor,
        transition="late_reply",
        condition=~Q(question="") & Q(answer="") & Q(signing=False),
        answer=answer,
    )
    # The status stays pending, so _move told no one: say the answer arrived (its text is
    # not in the event; the assignee reads it on the report page).
    payload = {
        "report_id": report.pk,
        "facility_id": report.facility_id,
        "sender_id": report.sender_id,
        "assignee_id": report.assignee_id,
        "actor_id": actor.pk if actor is not None else None,
        "status": report.status,
    }
    transaction.on_commit(lambda: events.emit(events.REPORT_ANSWERED, **payload))
    return report


@transaction.atomic
def report_cancel(*, report_id: int, actor: User, reason: str = "") -> Report:
    """The study will not be reported (withdrawn, sent in error); final."""
    return _move(
        report_id=report_id,
        from_statuses=CANCEL_FROM,
        to_status=ReportStatus.CANCELLED,
        actor=actor,
        transition="cancel",
        signing=False,
        detail={"reason_given": bool(reason.strip())},
    )


@transaction.atomic
def report_pacs_preliminary(*, report_id: int, findings: str, sop_instance_uid: str) -> Report:
    """A preliminary (or unverified) SR from the PACS: the report is being read there.

    Only an open report that is not being signed takes it; raises 409 otherwise.
    """
    return _move(
        report_id=report_id,
        from_statuses=OPEN_STATUSES,
        to_status=ReportStatus.PENDING,
        actor=None,
        transition="pacs_preliminary",
        signing=False,
        findings=findings,
        source=ReportSource.PACS_SR,
        detail={"sop_instance_uid": sop_instance_uid},
    )


@transaction.atomic
def report_pacs_final(
    *,
    report_id: int,
    source: str,
    findings: str,
    impression: str,
    signed_by_name: str,
    sop_instance_uid: str,
) -> ReportVersion:
    """A final result from the PACS (verified SR or PDF): a new version, signed there.

    A PACS PDF is stored by the caller (reports.services.pdf.report_version_pdf_keep); an
    SR's PDF is rendered by the task queued after this transaction commits (never inside
    it). Either makes the report ``ready`` (first version) or ``amended`` (a report
    already final: never overwritten).
    """
    report = _move(
        report_id=report_id,
        from_statuses=[*OPEN_STATUSES, *FINAL_STATUSES],
        to_status=None,
        actor=None,
        transition="pacs_final",
        signing=False,
        findings=findings,
        impression=impression,
        source=source,
        set_signing=True,
        detail={"sop_instance_uid": sop_instance_uid},
    )
    return _version_create(
        report=report,
        source=source,
        findings=findings,
        impression=impression,
        signed_by=None,
        signed_by_name=signed_by_name,
        sop_instance_uid=sop_instance_uid,
    )


@transaction.atomic
def report_pdf_stored(*, version: ReportVersion) -> Report:
    """The PDF of the version being signed is stored: the report turns ``ready`` (its first
    version) or ``amended`` (a later one), and earlier versions become superseded.

    Only the report's latest version finishes its signing: a late task for an earlier
    version changes nothing. Raises 409 report_state_conflict for a report no longer
    ``signing`` or with a later version (which the PDF service treats as done).
    """
    report_status = Report.objects.filter(pk=version.report_id).values_list("status", flat=True)
    to_status = (
        ReportStatus.AMENDED
        if version.number > 1 and report_status.first() in FINAL_STATUSES
        else ReportStatus.READY
    )
    signer = version.signed_by
    report = _move(
        report_id=version.report_id,
        from_statuses=[*OPEN_STATUSES, *FINAL_STATUSES],
        to_status=to_status,
        actor=signer,
        transition="pdf_stored",
        signing=True,
        condition=~Exists(
            ReportVersion.objects.filter(report=OuterRef("pk"), number__gt=version.number)
        ),
        set_signing=False,
        signed_by=signer,
        signed_at=version.signed_at,
        emit=False,
        detail={"version": version.number, "pdf_sha256": version.pdf_sha256},
    )
    ReportVersion.objects.filter(report_id=version.report_id, number__lt=version.number).update(
        superseded=True
    )
    _emit_after_commit(status_to=report.status, report=report, actor=signer, version=version.number)
    return report
