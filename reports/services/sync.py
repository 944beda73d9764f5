"""Status from the PACS: reports written in the hospital's own systems appear there as SR
or encapsulated PDF objects in the same study; the synchronisation takes them in."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from pydicom import Dataset

from accounts.models import AuditOutcome
from accounts.services.audit import audit_record
from pacs.errors import PacsRejected, PacsUnavailable
from pacs.selectors import PacsTarget, pacs_targets
from relaypacs.errors import ApplicationError
from uploads.selectors import relay_added_sop_instance_uids

from ..clients import (
    ENCAPSULATED_PDF,
    ReportArchiveClient,
    ReportObjectRef,
    ReportObjectUnreadable,
)
from ..models import (
    FINAL_STATUSES,
    OPEN_STATUSES,
    PacsReportObject,
    Report,
    ReportSource,
    ReportVersion,
)
from . import pdf, transitions

logger = logging.getLogger(__name__)

# Study Instance UIDs per QIDO-RS query: 100 UIDs of up to 64 characters make a query
# string of about 6.6 KB, below the 8 KB request line many servers and proxies accept;
# 10,000 open reports then take 100 queries per cycle.
QIDO_STUDY_BATCH = 100
# A final report still listens this long for a later result from the PACS (an amendment
# made there); after that its study is no longer asked about.
FINAL_REPORT_LISTEN = timedelta(days=30)
# A signed version whose PDF has not been stored this long after its render task was
# queued lost that task (a broker message lost, a worker killed): it is queued again. A
# render takes seconds; two minutes also covers a worker busy with a queue of them.
RENDER_GRACE = timedelta(minutes=2)
# A version whose render was queued this many times without a PDF fails for a reason a
# retry does not fix (a broken letterhead logo, a bug): it is logged as an error once and
# left for an administrator, instead of being queued at every cycle for ever.
RENDER_MAX_ATTEMPTS = 5
# Versions re-queued per cycle: after an outage, a backlog drains over a few cycles
# instead of flooding the queue at once.
REDISPATCH_BATCH = 200
# An object that could not be taken in (the database or the report store failed while it
# was applied) is tried again at later cycles, at growing intervals (APPLY_RETRY_FIRST,
# doubled at each failure up to APPLY_RETRY_LONGEST), so that an outage of the report
# store or of the database of a day is ridden out. One that still fails APPLY_GIVE_UP_AFTER
# after its first failure, and has failed at least APPLY_MAX_ATTEMPTS times, fails for a
# reason a retry does not fix (a bug, a store that refuses it): it is recorded as given
# up, logged as an error and audited once, and no longer retrieved at every cycle. The
# command ``manage.py reports_sync_retry`` makes the next cycle try given-up objects again.
APPLY_MAX_ATTEMPTS = 5
APPLY_RETRY_FIRST = timedelta(minutes=5)
APPLY_RETRY_LONGEST = timedelta(hours=6)
APPLY_GIVE_UP_AFTER = timedelta(hours=24)
# PacsReportObject.outcome of an object being tried again, and of one given up.
FAILING = "failing"
GAVE_UP = "gave_up"
_IMPRESSION_HEADINGS = frozenset({"impression", "impressions", "conclusion", "conclusions"})


@dataclass
class SyncSummary:
    """What one cycle did: counts only (for logs and the benchmark)."""

    studies: int = 0
    requests: int = 0
    objects_new: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    unreachable: list[str] = field(default_factory=list)


def sr_text(dataset: Dataset) -> tuple[str, str]:
    """(findings, impression) from an SR's TEXT content items, in document order.

    Items under an "Impression"/"Conclusion" heading (or so named) make the impression;
    the rest, the findings.
    """
    findings: list[str] = []
    impression: list[str] = []

    def meaning(item: Any) -> str:
        names = item.get("ConceptNameCodeSequence") or []
        return str(names[0].get("CodeMeaning", "")) if names else ""

    def walk(items: Any, in_impression: bool) -> None:
        for item in items or []:
            heading = meaning(item).strip().lower() in _IMPRESSION_HEADINGS
            if item.get("ValueType") == "TEXT" and item.get("TextValue"):
                (impression if in_impression or heading else findings).append(
                    str(item.TextValue).strip()
                )
            walk(item.get("ContentSequence"), in_impression or heading)

    walk(dataset.get("ContentSequence"), False)
    return "\n\n".join(findings), "\n\n".join(impression)


def sr_is_final(dataset: Dataset) -> bool:
    """COMPLETE and VERIFIED, and not flagged PRELIMINARY."""
    return (
        str(dataset.get("CompletionFlag", "")).upper() == "COMPLETE"
        and str(dataset.get("VerificationFlag", "")).upper() == "VERIFIED"
        and str(dataset.get("PreliminaryFlag", "")).upper() != "PRELIMINARY"
    )


def _verifier_name(dataset: Dataset) -> str:
    observers = dataset.get("VerifyingObserverSequence") or []
    if observers:
        name = str(observers[0].get("VerifyingObserverName", "") or "")
        return name.replace("^", " ").strip()
    return ""


@dataclass(frozen=True)
class ReportContent:
    """What a report object says, read from its dataset before anything is written."""

    final: bool
    findings: str = ""
    impression: str = ""
    signed_by_name: str = ""
    pdf: bytes | None = None


def _pdf_bytes(dataset: Dataset) -> bytes:
    data = bytes(dataset.EncapsulatedDocument)
    length = dataset.get("EncapsulatedDocumentLength")
    # The value is padded to an even length; the declared length gives the PDF as sent.
    data = data[: int(length)] if length else data
    if not data.startswith(b"%PDF-"):
        raise ReportObjectUnreadable("the encapsulated document is not a PDF")
    return data


def report_content(*, ref: ReportObjectRef, dataset: Dataset) -> ReportContent:
    """Read one report object. Raises ReportObjectUnreadable when its content is missing
    or malformed (the message names no value of the object)."""
    try:
        if ref.sop_class_uid == ENCAPSULATED_PDF:
            return ReportContent(final=True, pdf=_pdf_bytes(dataset))
        findings, impression = sr_text(dataset)
        final = sr_is_final(dataset)
        return ReportContent(
            final=final,
            findings=findings,
            impression=impression,
            signed_by_name=_verifier_name(dataset) if final else "",
        )
    except ReportObjectUnreadable:
        raise
    except Exception as exc:  # pydicom raises many kinds on malformed content
        raise ReportObjectUnreadable(type(exc).__name__) from None


def _apply(*, report_id: int, ref: ReportObjectRef, content: ReportContent) -> str:
    """Take one new report object into one report; returns the outcome (for the record).

    No PDF is rendered here: a final SR's render task is queued after commit."""
    if content.pdf is not None:
        version = transitions.report_pacs_final(
            report_id=report_id,
            source=ReportSource.PACS_PDF,
            findings="",
            impression="",
            signed_by_name="",
            sop_instance_uid=ref.sop_instance_uid,
        )
        pdf.report_version_pdf_keep(version_id=version.pk, data=content.pdf)
        return "final_pdf"
    if content.final:
        transitions.report_pacs_final(
            report_id=report_id,
            source=ReportSource.PACS_SR,
            findings=content.findings,
            impression=content.impression,
            signed_by_name=content.signed_by_name,
            sop_instance_uid=ref.sop_instance_uid,
        )
        return "final_sr"
    transitions.report_pacs_preliminary(
        report_id=report_id, findings=content.findings, sop_instance_uid=ref.sop_instance_uid
    )
    return "preliminary"


def _take_in(
    *,
    report_id: int,
    ref: ReportObjectRef,
    content: ReportContent | None,
    target: PacsTarget,
) -> str:
    """Apply and record one object atomically: it is read once, whatever the outcome.

    ``content`` None: the object could not be read, and is recorded ``unreadable``. An
    error while applying it (the database, the report store) rolls back what it applied:
    the failure is counted (``_failure_count``) and the object tried again at the next
    cycles, up to APPLY_MAX_ATTEMPTS in all.
    """
    try:
        with transaction.atomic():
            record, created = PacsReportObject.objects.get_or_create(
                report_id=report_id,
                sop_instance_uid=ref.sop_instance_uid,
                defaults={
                    "sop_class_uid": ref.sop_class_uid,
                    "target_key": target.key,
                    "outcome": "taking",
                },
            )
            if not created:
                # Tried again after a failure; locked, so that a cycle running at the same
                # time does not apply it twice.
                locked = PacsReportObject.objects.select_for_update().get(pk=record.pk)
                if locked.outcome != FAILING:
                    return "seen"
            if content is None:
                outcome = "unreadable"
            else:
                try:
                    with transaction.atomic():
                        outcome = _apply(report_id=report_id, ref=ref, content=content)
                except ApplicationError as exc:
                    if exc.code != "report_state_conflict":
                        raise
                    # Cancelled, being signed right now, or a preliminary result for a
                    # final report.
                    outcome = "ignored"
            PacsReportObject.objects.filter(pk=record.pk).update(outcome=outcome)
    except Exception as exc:
        return _failure_count(report_id=report_id, ref=ref, target=target, error=type(exc).__name__)
    return outcome


def retry_delay(failures: int) -> timedelta:
    """How long after its ``failures``-th failure in a row an object is tried again."""
    return min(APPLY_RETRY_FIRST * 2 ** min(max(failures - 1, 0), 16), APPLY_RETRY_LONGEST)


def _failure_count(*, report_id: int, ref: ReportObjectRef, target: PacsTarget, error: str) -> str:
    """Record one failed attempt at taking ``ref`` into the report; returns "failed" (tried
    again after ``retry_delay``) or GAVE_UP once it has failed for APPLY_GIVE_UP_AFTER and
    at least APPLY_MAX_ATTEMPTS times (logged as an error and audited, once). Logs and audit carry ids, counts and the kind of error only:
    messages of drivers and pydicom carry values."""
    try:
        with transaction.atomic():
            record, _ = PacsReportObject.objects.select_for_update().get_or_create(
                report_id=report_id,
                sop_instance_uid=ref.sop_instance_uid,
                defaults={
                    "sop_class_uid": ref.sop_class_uid,
                    "target_key": target.key,
                    "outcome": FAILING,
                },
            )
            if record.outcome != FAILING:
                return "seen"  # taken in meanwhile by a cycle running at the same time
            failures = record.failures + 1
            now = timezone.now()
            given_up = (
                failures >= APPLY_MAX_ATTEMPTS and now - record.seen_at >= APPLY_GIVE_UP_AFTER
            )
            PacsReportObject.objects.filter(pk=record.pk).update(
                failures=failures,
                outcome=GAVE_UP if given_up else FAILING,
                next_attempt_at=None if given_up else now + retry_delay(failures),
            )
            if given_up:
                facility_id = (
                    Report.objects.filter(pk=report_id)
                    .values_list("facility_id", flat=True)
                    .first()
                )
                audit_record(
                    action="data_import",
                    username="relaypacs",
                    facility_id=facility_id,
                    outcome=AuditOutcome.MINOR_FAILURE,
                    object_type="report",
                    object_id=str(report_id),
                    detail={
                        "phase": "report_sync_gave_up",
                        "sop_instance_uid": ref.sop_instance_uid,
                        "sop_class_uid": ref.sop_class_uid,
                        "attempts": failures,
                        "error": error,
                    },
                )
    except Exception as exc:
        logger.error(
            "report sync: report %s, object %s not taken in (%s), and the failure could not "
            "be recorded (%s); tried again next cycle",
            report_id,
            ref.sop_instance_uid,
            error,
            type(exc).__name__,
        )
        return "failed"
    if given_up:
        logger.error(
            "report sync: report %s, object %s not taken in (%s) in %d cycles; given up, "
            "no longer retried (manage.py reports_sync_retry tries it again)",
            report_id,
            ref.sop_instance_uid,
            error,
            failures,
        )
        return GAVE_UP
    logger.error(
        "report sync: report %s, object %s not taken in (%s), attempt %d; tried again in %s",
        report_id,
        ref.sop_instance_uid,
        error,
        failures,
        retry_delay(failures),
    )
    return "failed"


def _listening() -> Q:
    """The reports that wait for (or still take) a result from the PACS."""
    since = timezone.now() - FINAL_REPORT_LISTEN
    return Q(status__in=OPEN_STATUSES) | Q(status__in=FINAL_STATUSES, updated_at__gte=since)


def _listening_reports() -> dict[str, list[int]]:
    """Study Instance UID → ids of the listening reports of that study."""
    rows = (
        Report.objects.filter(_listening())
        .order_by("study_instance_uid", "pk")
        .values_list("study_instance_uid", "pk")
    )
    by_study: dict[str, list[int]] = defaultdict(list)
    for study_uid, pk in rows:
        by_study[study_uid].append(pk)
    return by_study


def _seen(report_ids: list[int]) -> set[tuple[int, str]]:
    """The objects taken into these reports, given up, or failing and not due to be tried
    again yet: all but those tried again this cycle."""
    due = Q(outcome=FAILING) & (
        Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=timezone.now())
    )
    return set(
        PacsReportObject.objects.filter(report_id__in=report_ids)
        .exclude(due)
        .values_list("report_id", "sop_instance_uid")
    )


def reports_sync_retry(*, report_id: int | None = None) -> int:
    """Make the next cycle try the given-up objects again (of one report, or all), with a
    fresh APPLY_GIVE_UP_AFTER: after the cause (an outage, a bug) was fixed. Returns how
    many objects were reset."""
    given_up = PacsReportObject.objects.filter(outcome=GAVE_UP)
    if report_id is not None:
        given_up = given_up.filter(report_id=report_id)
    return given_up.update(
        outcome=FAILING, failures=0, next_attempt_at=None, seen_at=timezone.now()
    )


def _read(*, client: ReportArchiveClient, ref: ReportObjectRef) -> ReportContent | None:
    """Retrieve and read one object; None when it is unreadable (logged by ids). Raises
    PacsUnavailable/PacsRejected when the PACS cannot be asked."""
    try:
        return report_content(ref=ref, dataset=client.retrieve(ref))
    except ReportObjectUnreadable as exc:
        logger.warning(
            "report sync: object %s (SOP class %s) is unreadable (%s); recorded, not retried",
            ref.sop_instance_uid,
            ref.sop_class_uid,
            exc,
        )
        return None


def _sync_target(
    *, target: PacsTarget, by_study: dict[str, list[int]], summary: SyncSummary
) -> None:
    studies = sorted(by_study)
    with ReportArchiveClient(target) as client:
        try:
            for start in range(0, len(studies), QIDO_STUDY_BATCH):
                batch = studies[start : start + QIDO_STUDY_BATCH]
                refs = [
                    ref
                    for ref in client.report_objects(study_instance_uids=batch)
                    if ref.study_instance_uid in by_study
                ]
                # The objects RelayPACS itself added to these studies (the clinic's note
                # for the reader) are never reports: known by the UIDs recorded when they
                # were made, they are not retrieved.
                ours = relay_added_sop_instance_uids(
                    sop_instance_uids=[ref.sop_instance_uid for ref in refs]
                )
                refs = [ref for ref in refs if ref.sop_instance_uid not in ours]
                if not refs:
                    continue
                report_ids = [pk for uid in batch for pk in by_study[uid]]
                seen = _seen(report_ids)
                for ref in refs:
                    wanting = [
                        pk
                        for pk in by_study[ref.study_instance_uid]
                        if (pk, ref.sop_instance_uid) not in seen
                    ]
                    if not wanting:
                        continue
                    content = _read(client=client, ref=ref)
                    summary.objects_new += 1
                    for report_id in wanting:
                        outcome = _take_in(
                            report_id=report_id, ref=ref, content=content, target=target
                        )
                        summary.outcomes[outcome] = summary.outcomes.get(outcome, 0) + 1
        finally:
            summary.requests += client.requests


def reports_sync(*, targets: list[PacsTarget] | None = None) -> SyncSummary:
    """One synchronisation cycle: ask each DICOMweb PACS, in batches of QIDO_STUDY_BATCH
    studies, for report objects in the studies of listening reports, and take in the new
    ones (WADO-RS). Idempotent: each object is taken into each report once.

    A PACS that cannot be reached is skipped for this cycle (named in the summary).
    """
    summary = SyncSummary()
    by_study = _listening_reports()
    summary.studies = len(by_study)
    if not by_study:
        return summary
    for target in targets if targets is not None else pacs_targets():
        if not target.dicomweb_url:
            continue
        try:
            _sync_target(target=target, by_study=by_study, summary=summary)
        except (PacsUnavailable, PacsRejected) as exc:
            logger.warning("report sync: %s skipped: %s", target.name, exc.detail)
            summary.unreachable.append(target.name)
    Report.objects.filter(_listening()).update(synced_at=timezone.now())
    logger.info(
        "report sync: %s studies, %s requests, %s new objects, %s",
        summary.studies,
        summary.requests,
        summary.objects_new,
        summary.outcomes,
    )
    return summary


def reports_pdf_redispatch() -> int:
    """Queue again the render of signed versions whose task was queued more than
    RENDER_GRACE ago without a PDF; returns how many were queued.

    Each is claimed by a conditional UPDATE of its dispatch time and attempt count, so two
    beat runs never queue one twice, and none is queued again before RENDER_GRACE. After
    RENDER_MAX_ATTEMPTS it is logged as an error, once, and no longer queued. Versions
    from a PACS PDF are not rendered (their PDF is the one received).
    """
    from ..tasks import report_pdf_render_task

    now = timezone.now()
    cutoff = now - RENDER_GRACE
    overdue = (
        ReportVersion.objects.filter(
            pdf_path="", report__signing=True, render_attempts__lte=RENDER_MAX_ATTEMPTS
        )
        .filter(
            Q(render_dispatched_at__lt=cutoff)
            # Versions signed before dispatches were recorded.
            | Q(render_dispatched_at__isnull=True, signed_at__lt=cutoff)
        )
        .exclude(source=ReportSource.PACS_PDF)
        .order_by("pk")
        .values_list("pk", "report_id", "render_attempts")[:REDISPATCH_BATCH]
    )
    queued = 0
    for version_id, report_id, attempts in overdue:
        claim = ReportVersion.objects.filter(pk=version_id, render_attempts=attempts)
        if attempts >= RENDER_MAX_ATTEMPTS:
            if claim.update(render_attempts=attempts + 1) == 1:
                logger.error(
                    "report %s version %s: no PDF after %s render attempts; no longer "
                    "retried, see the worker log",
                    report_id,
                    version_id,
                    attempts,
                )
            continue
        if claim.update(render_dispatched_at=now, render_attempts=attempts + 1) == 1:
            report_pdf_render_task.delay(version_id)
            queued += 1
    return queued
