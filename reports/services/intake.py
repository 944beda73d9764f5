"""Reports are opened from uploads the PACS confirmed (the ``upload.completed`` event)."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.db.models import Count, F
from django.utils import timezone

from accounts.models import Facility, User
from uploads.models import Study, UploadSession, UploadState

from ..models import Report, ReportStatus
from ..selectors import reports_visible_to
from .transitions import report_created, report_reply

logger = logging.getLogger(__name__)

# upload.completed is delivered once, after commit, to subscribers that may fail (a
# database hiccup, a worker killed between commit and delivery); the sweep opens what it
# missed. It leaves an upload this long to its event, so that the two rarely meet (they
# may: opening is idempotent).
MISSING_REPORT_GRACE = timedelta(minutes=2)
# Only uploads completed this recently are swept: older ones predate the reports app or
# were looked at by hundreds of cycles already, and the query stays on recent rows.
MISSING_REPORT_WINDOW = timedelta(days=7)
# Uploads opened per sweep (one beat cycle): a backlog drains over a few cycles.
MISSING_REPORT_BATCH = 100


def _modality(study: Study) -> str:
    return "\\".join(sorted({str(m) for m in study.modalities or [] if m}))[:64]


def _facility(session: UploadSession) -> Facility | None:
    # TODO(UploadSession.facility): the upload's own facility (recorded when it was opened)
    # wins; the owner's facility of today is the fallback for uploads made before it existed.
    facility: Facility | None = getattr(session, "facility", None)
    return facility if facility is not None else session.owner.facility


def _may_see(*, user: User | None, report: Report) -> bool:
    """Whether ``user`` could see ``report`` before this upload (the reports API's rule)."""
    if user is None:
        return False
    return reports_visible_to(user=user).filter(pk=report.pk).exists()


def _report_for_study(*, session: UploadSession, study: Study, facility: Facility | None) -> None:
    defaults = {
        "sender": session.owner,
        "service_level": session.service_level,
        "patient_name": study.patient_name,
        "patient_id": study.patient_id,
        "patient_birth_date": study.patient_birth_date,
        "patient_sex": study.patient_sex,
        "study_date": study.study_date,
        "study_description": study.study_description,
        "accession_number": study.accession_number,
        "modality": _modality(study),
        "clinical_notes": session.clinical_notes,
    }
    try:
        with transaction.atomic():
            report, created = Report.objects.get_or_create(
                study_instance_uid=study.study_instance_uid,
                facility=facility,
                defaults=defaults,
            )
    except IntegrityError:  # another worker opened it a moment ago
        report, created = (
            Report.objects.get(study_instance_uid=study.study_instance_uid, facility=facility),
            False,
        )
    with transaction.atomic():
        attached = report.uploads.filter(pk=session.pk).exists()
        if not attached and not created and not _may_see(user=session.owner, report=report):
            # The files carry the Study Instance UID of a study a colleague sent, whose
            # report this sender may not see (a clinician, whose reports are those of their
            # own uploads). Attaching the upload would show them that report, and the
            # images would answer a question that was not theirs: the upload stays out of
            # it (its images are in the PACS study all the same). One report per study and
            # facility, so no second report is opened. Logged by ids only.
            logger.warning(
                "upload %s not attached to report %s of its study: its sender may not see "
                "that report",
                session.pk,
                report.pk,
            )
            return
        if not attached:
            report.uploads.add(session)
        if created:
            report_created(report=report, actor=session.owner)
        elif not attached and report.status == ReportStatus.ADDITIONAL_DATA_REQUIRED:
            # More images for the same study are the sender's answer to the question.
            report_reply(report_id=report.pk, actor=session.owner, answer=report.answer)


def reports_open_for_upload(*, upload_id: str) -> int:
    """Open (or attach to) the report of each study the upload delivered.

    One report per Study Instance UID and facility: a later upload of the same study
    attaches to it, and answers a question the radiologist asked, when its sender could
    already see that report; otherwise (a colleague's report this sender may not see) the
    upload is attached to no report and the report is left as it was (docs/reports.md). Idempotent: the same
    event delivered twice changes nothing the second time. Returns the number of studies.
    """
    try:
        pk = uuid.UUID(str(upload_id))
    except ValueError:
        return 0
    session = UploadSession.objects.select_related("owner__facility").filter(pk=pk).first()
    if session is None:
        return 0
    facility = _facility(session)
    studies = list(Study.objects.filter(session=session).order_by("id"))
    for study in studies:
        _report_for_study(session=session, study=study, facility=facility)
    return len(studies)


def reports_open_missing() -> int:
    """Open the reports that upload.completed did not (its subscriber failed): completed
    uploads of the last MISSING_REPORT_WINDOW, older than MISSING_REPORT_GRACE, with a
    study no report of theirs covers; at most MISSING_REPORT_BATCH per call.

    Idempotent (reports_open_for_upload is). Returns the number of uploads it opened
    reports for; an upload that fails is logged by id and tried again next time.
    """
    now = timezone.now()
    missing = (
        UploadSession.objects.filter(
            state=UploadState.COMPLETED,
            completed_at__lt=now - MISSING_REPORT_GRACE,
            completed_at__gte=now - MISSING_REPORT_WINDOW,
        )
        .annotate(
            study_count=Count("studies", distinct=True),
            report_count=Count("reports", distinct=True),
        )
        .filter(report_count__lt=F("study_count"))
        .order_by("completed_at", "pk")
        .values_list("pk", flat=True)[:MISSING_REPORT_BATCH]
    )
    opened = 0
    for upload_id in missing:
        try:
            reports_open_for_upload(upload_id=str(upload_id))
        except Exception as exc:
            logger.error("reports of upload %s not opened (%s)", upload_id, type(exc).__name__)
            continue
        opened += 1
    return opened
