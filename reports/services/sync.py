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

from pacs.errors import PacsRejected, PacsUnavailable
from pacs.selectors import PacsTarget, pacs_targets
from relaypacs.errors import ApplicationError

from ..clients import ENCAPSULATED_PDF, ReportArchiveClient, ReportObjectRef
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
# A signed version whose PDF has not been stored this long after signing lost its render
# task (a broker message lost, a worker killed): it is dispatched again.
RENDER_GRACE = timedelta(minutes=2)
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


def _pdf_bytes(dataset: Dataset) -> bytes:
    data = bytes(dataset.EncapsulatedDocument)
    length = dataset.get("EncapsulatedDocumentLength")
    # The value is padded to an even length; the declared length gives the PDF as sent.
    return data[: int(length)] if length else data


def _apply(*, report_id: int, ref: ReportObjectRef, dataset: Dataset) -> str:
    """Take one new report object into one report; returns the outcome (for the record)."""
    if ref.sop_class_uid == ENCAPSULATED_PDF:
        version = transitions.report_pacs_final(
            report_id=report_id,
            source=ReportSource.PACS_PDF,
            findings="",
            impression="",
            signed_by_name="",
            sop_instance_uid=ref.sop_instance_uid,
        )
        pdf.report_version_pdf_keep(version_id=version.pk, data=_pdf_bytes(dataset))
        return "final_pdf"
    findings, impression = sr_text(dataset)
    if sr_is_final(dataset):
        version = transitions.report_pacs_final(
            report_id=report_id,
            source=ReportSource.PACS_SR,
            findings=findings,
            impression=impression,
            signed_by_name=_verifier_name(dataset),
            sop_instance_uid=ref.sop_instance_uid,
        )
        pdf.report_version_render(version_id=version.pk)
        return "final_sr"
    transitions.report_pacs_preliminary(
        report_id=report_id, findings=findings, sop_instance_uid=ref.sop_instance_uid
    )
    return "preliminary"


def _take_in(*, report_id: int, ref: ReportObjectRef, dataset: Dataset, target: PacsTarget) -> str:
    """Apply and record one object atomically: it is read once, whatever the outcome."""
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
            return "seen"
        try:
            with transaction.atomic():
                outcome = _apply(report_id=report_id, ref=ref, dataset=dataset)
        except ApplicationError as exc:
            if exc.code != "report_state_conflict":
                raise
            # Cancelled, being signed right now, or a preliminary result for a final report.
            outcome = "ignored"
        PacsReportObject.objects.filter(pk=record.pk).update(outcome=outcome)
    return outcome


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
    return set(
        PacsReportObject.objects.filter(report_id__in=report_ids).values_list(
            "report_id", "sop_instance_uid"
        )
    )


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
                    dataset = client.retrieve(ref)
                    summary.objects_new += 1
                    for report_id in wanting:
                        outcome = _take_in(
                            report_id=report_id, ref=ref, dataset=dataset, target=target
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
    """Dispatch again the render of signed versions whose PDF is overdue; returns how many.

    Versions from a PACS PDF are not rendered (their PDF is the one received).
    """
    from ..tasks import report_pdf_render_task

    overdue = ReportVersion.objects.filter(
        pdf_path="",
        report__signing=True,
        signed_at__lt=timezone.now() - RENDER_GRACE,
    ).exclude(source=ReportSource.PACS_PDF)
    ids = list(overdue.values_list("pk", flat=True))
    for version_id in ids:
        report_pdf_render_task.delay(version_id)
    return len(ids)
