"""Reads and queries of the upload pipeline."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from django.conf import settings
from django.db import connection
from django.db.migrations.recorder import MigrationRecorder
from django.db.models import Max, Min, Prefetch, Q, QuerySet
from django.db.models.fields.json import KT

from accounts.models import AuditEvent, AuditOutcome, Role, User

from .models import (
    FileKind,
    PacsStatus,
    RelayAddedObject,
    Study,
    UploadChunk,
    UploadFile,
    UploadSession,
    UploadState,
)
from .tokens import UploadTokenClaim

# The roles that reach at least their own uploads in uploads_visible_to.
ROLES_WITH_OWN_UPLOADS = frozenset({Role.CLINICIAN, Role.RADIOGRAPHER, Role.ADMIN})


def uploads_visible_to(*, user: User) -> QuerySet[UploadSession]:
    """The uploads a user's role lets them see and act on (see docs/security.md).

    clinician: their own; radiographer: their own and those made at their facility (the
    upload's ``facility``, recorded at init, not its owner's facility of today); admin:
    all; radiologist and auditor: none (they work on reports and the audit log). An
    account waiting for approval reaches its own uploads at most, whatever its role.
    """
    queryset = UploadSession.objects.all()
    if not user.is_active:
        return queryset.none()
    if not user.is_approved:
        return (
            queryset.filter(owner=user) if user.role in ROLES_WITH_OWN_UPLOADS else queryset.none()
        )
    if user.role == Role.ADMIN:
        return queryset
    if user.role == Role.RADIOGRAPHER and user.facility_id is not None:
        return queryset.filter(Q(owner=user) | Q(facility_id=user.facility_id))
    if user.role in (Role.CLINICIAN, Role.RADIOGRAPHER):
        return queryset.filter(owner=user)
    return queryset.none()


def upload_get_for(*, upload_id: uuid.UUID, user: User, auth: object) -> UploadSession:
    """The upload if this requester may act on it; Http404 otherwise (never 403).

    An upload token opens its own upload only; an access token opens the uploads the
    user's role and facility let them see (``uploads_visible_to``).
    """
    from django.http import Http404

    if isinstance(auth, UploadTokenClaim) and auth.upload_id != upload_id:
        raise Http404
    session = uploads_visible_to(user=user).filter(pk=upload_id).first()
    if session is None:
        raise Http404
    return session


def uploads_list(*, user: User, state: str | None = None) -> QuerySet[UploadSession]:
    queryset = uploads_visible_to(user=user).order_by("-created_at")
    if state:
        queryset = queryset.filter(state=state)
    return queryset


def upload_stored_chunk_indexes(*, session: UploadSession) -> set[int]:
    return set(
        UploadChunk.objects.filter(session=session, stored=True).values_list("index", flat=True)
    )


def upload_missing_chunks(*, session: UploadSession) -> list[int]:
    stored = upload_stored_chunk_indexes(session=session)
    return [i for i in range(session.total_chunks) if i not in stored]


class _ResumeWindowed(Protocol):
    @property
    def created_at(self) -> datetime: ...
    @property
    def last_chunk_at(self) -> datetime | None: ...


def upload_expires_at(*, session: _ResumeWindowed) -> datetime:
    """Resumable until the resume window after the last chunk (sliding) or after init."""
    last = session.last_chunk_at
    start = max(session.created_at, last) if last else session.created_at
    return start + settings.UPLOAD_RESUME_WINDOW


def _file_entry(f: UploadFile) -> dict[str, str]:
    return {"name": f.name, "reason": f.reason}


def relay_added_sop_instance_uids(*, sop_instance_uids: Iterable[str]) -> set[str]:
    """Those of ``sop_instance_uids`` that RelayPACS made itself and added to a study (the
    clinic's note for the reader, ``RelayAddedObject``), whatever the upload, and even
    once that upload was deleted.

    Known by the UIDs recorded when they were made, never by UID prefix: the default
    DICOM_UID_ROOT is pydicom's, which other software uses too. One query.
    """
    uids = {uid for uid in sop_instance_uids if uid}
    if not uids:
        return set()
    return set(
        RelayAddedObject.objects.filter(sop_instance_uid__in=uids).values_list(
            "sop_instance_uid", flat=True
        )
    )


def _receipt_summary(
    receipt: dict[str, Any] | None, *, relay_added: set[str]
) -> dict[str, Any] | None:
    """Per destination: what the PACS acknowledged and when receipt was confirmed. The
    counts are of the clinic's instances; the objects the relay added (``relay_added``),
    sent and confirmed with them, are not counted."""
    if not receipt:
        return None
    summary = {}
    for key, record in receipt.get("destinations", {}).items():
        confirmed = record.get("confirmed_instances")
        summary[key] = {
            "name": record.get("name", key),
            "acknowledged_instances": len(set(record.get("acknowledged", [])) - relay_added),
            "failed_instances": len(set(record.get("failed", {})) - relay_added),
            # Confirmation lists every instance of the upload, the relay's included.
            "confirmed_instances": (
                max(confirmed - len(relay_added), 0) if isinstance(confirmed, int) else confirmed
            ),
            "confirmed_at": record.get("confirmed_at"),
        }
    return summary


def upload_status(*, session: UploadSession) -> dict[str, Any]:
    """Everything a client needs to show progress and to resume after a crash."""
    stored = UploadChunk.objects.filter(session=session, stored=True).values_list("index", "size")
    indexes = set()
    received = 0
    for index, size in stored:
        indexes.add(index)
        received += size
    missing = (
        [i for i in range(session.total_chunks) if i not in indexes]
        if session.state == UploadState.RECEIVING
        else []
    )
    files = list(
        UploadFile.objects.filter(session=session)
        .filter(
            Q(kind__in=[FileKind.SKIPPED, FileKind.REJECTED])
            | Q(
                kind=FileKind.DICOM,
                pacs_status__in=[PacsStatus.FAILED, PacsStatus.ALREADY_DELIVERED],
            )
        )
        .only(
            "name",
            "reason",
            "kind",
            "pacs_status",
            "pacs_reason",
            "sop_instance_uid",
            "added_by_relay",
        )
    )
    dicom_files = UploadFile.objects.filter(session=session, kind=FileKind.DICOM)
    counts: dict[str, int] = {}
    relay_added: list[str] = []
    for status, uid, by_relay in dicom_files.values_list(
        "pacs_status", "sop_instance_uid", "added_by_relay"
    ):
        if by_relay:
            relay_added.append(uid)  # listed apart; the counts are the clinic's instances
            continue
        counts[status] = counts.get(status, 0) + 1
    failed = [
        {"sop_instance_uid": f.sop_instance_uid, "name": f.name, "reason": f.pacs_reason}
        for f in files
        # The relay's own object refused: a warning of the delivered upload, not an image.
        if f.kind == FileKind.DICOM and f.pacs_status == PacsStatus.FAILED and not f.added_by_relay
    ]
    already = [
        f.sop_instance_uid
        for f in files
        if f.kind == FileKind.DICOM and f.pacs_status == PacsStatus.ALREADY_DELIVERED
    ]
    studies = [
        {
            "study_instance_uid": s.study_instance_uid,
            "patient_name": s.patient_name,
            "patient_id": s.patient_id,
            "study_date": s.study_date,
            "study_description": s.study_description,
            "accession_number": s.accession_number,
            "modalities": s.modalities,
            "series": s.series,
            "instances": s.instances,
            "pacs_state": s.pacs_state,
        }
        for s in session.studies.all()
    ]
    return {
        "upload_id": str(session.id),
        "state": session.state,
        "state_label": session.get_state_display(),
        "bytes_received": received,
        "total_size": session.total_size,
        "chunk_size": session.chunk_size,
        "total_chunks": session.total_chunks,
        "missing_chunks": missing,
        "service_level": session.service_level,
        "metadata": session.metadata,
        "clinical_notes": session.clinical_notes,
        "studies": studies,
        "pacs": {
            "destination": session.destination or None,
            "receipt": _receipt_summary(session.receipt, relay_added=set(relay_added)),
            "acknowledged_instances": counts.get(PacsStatus.STORED, 0),
            "already_delivered_instances": already,
            "pending_instances": counts.get(PacsStatus.PENDING, 0),
            "failed_instances": failed,
            "relay_added_instances": relay_added,
            "next_retry_at": session.next_retry_at.isoformat() if session.next_retry_at else None,
            "attempts": session.attempts,
        },
        "rejected_files": [_file_entry(f) for f in files if f.kind == FileKind.REJECTED],
        "skipped_files": [_file_entry(f) for f in files if f.kind == FileKind.SKIPPED],
        "warnings": session.warnings,
        "error": session.error,
        "created_at": session.created_at.isoformat(),
        "completed_at": session.completed_at.isoformat() if session.completed_at else None,
        "expires_at": upload_expires_at(session=session).isoformat(),
    }


@dataclass(frozen=True)
class UploadFacts:
    """What the statistics (analytics) need of an upload: no patient data."""

    upload_id: uuid.UUID
    facility_id: int | None
    state: str
    total_size: int
    service_level: str
    modality: str
    created_at: datetime
    received_at: datetime | None
    completed_at: datetime | None
    failed_at: datetime | None
    next_retry_at: datetime | None


# Uploads read per round trip by upload_facts over every upload (two queries each).
UPLOAD_FACTS_BATCH = 2000
# Modalities kept in statistics; a study's modality list is short codes (CT, MR, XC...).
MODALITY_MAX_LENGTH = 16


def _modality_of(studies: Iterable[Study], hint: str | None) -> str:
    """The modality the clinic sent: of the first study, its first modality that is not
    SR (the relay adds an SR note to studies), else SR; without studies (not checked yet,
    or refused) the modality typed at init; else ""."""
    for study in studies:
        modalities = [str(m).upper() for m in (study.modalities or []) if m]
        images = [m for m in modalities if m != "SR"]
        if images or modalities:
            return (images or modalities)[0][:MODALITY_MAX_LENGTH]
    return (hint or "").strip().upper()[:MODALITY_MAX_LENGTH]


def upload_facts(*, upload_ids: Iterable[uuid.UUID] | None = None) -> Iterator[UploadFacts]:
    """The facts of the given uploads (every upload when None), streamed in batches of
    UPLOAD_FACTS_BATCH: two queries per batch, whatever the number of studies. Uploads
    that do not exist are left out."""
    queryset = (
        UploadSession.objects.order_by("pk")
        .annotate(modality_hint=KT("metadata__modality"))
        .only(
            "id",
            "facility_id",
            "state",
            "total_size",
            "service_level",
            "created_at",
            "received_at",
            "completed_at",
            "failed_at",
            "next_retry_at",
        )
        .prefetch_related(
            Prefetch("studies", queryset=Study.objects.only("id", "session_id", "modalities"))
        )
    )
    if upload_ids is not None:
        queryset = queryset.filter(pk__in=list(upload_ids))
    for session in queryset.iterator(chunk_size=UPLOAD_FACTS_BATCH):
        yield UploadFacts(
            upload_id=session.id,
            facility_id=session.facility_id,
            state=session.state,
            total_size=session.total_size,
            service_level=session.service_level,
            modality=_modality_of(session.studies.all(), session.modality_hint),  # type: ignore[attr-defined]
            created_at=session.created_at,
            received_at=session.received_at,
            completed_at=session.completed_at,
            failed_at=session.failed_at,
            next_retry_at=session.next_retry_at,
        )


def backup_scheduled_last_written_at() -> datetime | None:
    """When beat's daily backup (``uploads.management.backups.backup_scheduled``) last
    wrote a whole backup, from the audit trail it records that in ("export" of a backup,
    outcome success, scheduled); None when it never did. A backup by hand (``manage.py
    backup``) writes no audit record, so it does not count: it says nothing about the
    schedule running. One query on the indexed ``action`` (export events are about one a
    day: the daily backup and the rare export of a user's own data)."""
    at: datetime | None = AuditEvent.objects.filter(
        action="export",
        object_type="backup",
        outcome=AuditOutcome.SUCCESS,
        detail__scheduled=True,
    ).aggregate(at=Max("occurred_at"))["at"]
    return at


def database_created_at() -> datetime | None:
    """When this database was created: the time its first migration was applied (the
    earliest row of django_migrations, a table of some hundred rows). A restored database
    keeps the time of the one it was backed up from. None before any migration."""
    applied = MigrationRecorder(connection).migration_qs
    at: datetime | None = applied.aggregate(at=Min("applied"))["at"]
    return at
