"""Processing a received upload: split the stream into files, verify, validate, describe."""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections import defaultdict
from typing import Any

from django.db import transaction
from django.utils import timezone

from relaypacs import events

from .. import storage
from ..dicom import DicomInfo, inspect_instance
from ..models import FileKind, Study, UploadFile, UploadSession, UploadState
from .dispatch import FORWARD_TASK, dispatch_on_commit
from .leases import lease_claim, lease_release, lease_renew

logger = logging.getLogger(__name__)

# Renew the lease at least this often while checking files (well under the lease length).
RENEW_EVERY_SECONDS = 10.0
HASH_BLOCK = 1024 * 1024


def _sha256_of(*, upload_id: uuid.UUID, f: UploadFile) -> str:
    digest = hashlib.sha256()
    with storage.open_range(upload_id=upload_id, offset=f.offset, size=f.size) as stream:
        while block := stream.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _apply_info(f: UploadFile, info: DicomInfo) -> None:
    f.kind = FileKind.DICOM
    f.reason = ""
    f.sop_class_uid = info.sop_class_uid[:64]
    f.sop_instance_uid = info.sop_instance_uid[:64]
    f.study_instance_uid = info.study_instance_uid[:64]
    f.series_instance_uid = info.series_instance_uid[:64]


def _normalise_name(name: str) -> str:
    return " ".join(name.upper().replace("^", " ").replace("=", " ").split())


def _studies_from(infos: list[DicomInfo]) -> list[dict[str, Any]]:
    by_study: dict[str, list[DicomInfo]] = defaultdict(list)
    for info in infos:
        by_study[info.study_instance_uid].append(info)
    studies = []
    for study_uid, members in by_study.items():
        first = members[0]
        series: dict[str, list[DicomInfo]] = defaultdict(list)
        for info in members:
            series[info.series_instance_uid].append(info)
        series_rows = []
        for series_uid, items in series.items():
            numbers = sorted(i.instance_number for i in items if i.instance_number is not None)
            gaps: list[int] = []
            if numbers:
                present = set(numbers)
                gaps = [n for n in range(numbers[0], numbers[-1] + 1) if n not in present][:100]
            series_rows.append(
                {
                    "series_instance_uid": series_uid,
                    "series_number": items[0].series_number,
                    "modality": items[0].modality,
                    "description": items[0].series_description,
                    "instances": len(items),
                    "instance_number_gaps": gaps,
                }
            )
        studies.append(
            {
                "study_instance_uid": study_uid,
                "patient_name": first.patient_name,
                "patient_id": first.patient_id,
                "patient_birth_date": first.patient_birth_date,
                "patient_sex": first.patient_sex,
                "study_date": first.study_date,
                "study_description": first.study_description,
                "accession_number": first.accession_number,
                "modalities": sorted({i.modality for i in members if i.modality}),
                "series": series_rows,
                "instances": len(members),
            }
        )
    return studies


def _mismatch_warnings(*, metadata: dict[str, str], studies: list[dict[str, Any]]) -> list[str]:
    warnings = []
    typed_name = _normalise_name(metadata.get("patient_name", ""))
    if typed_name:
        found = sorted({s["patient_name"] for s in studies})
        if not any(_normalise_name(n) == typed_name for n in found):
            warnings.append(
                f"The patient name you typed ({metadata['patient_name']}) differs from the "
                f"name in the images ({', '.join(found) or 'none'}). Confirm to send anyway."
            )
    typed_id = metadata.get("patient_id", "").strip()
    if typed_id:
        ids = sorted({s["patient_id"] for s in studies})
        if typed_id not in ids:
            warnings.append(
                f"The patient ID you typed ({typed_id}) differs from the ID in the images "
                f"({', '.join(ids) or 'none'}). Confirm to send anyway."
            )
    return warnings


def _fail(*, upload_id: uuid.UUID, token: str, code: str, message: str, hint: str) -> None:
    now = timezone.now()
    with transaction.atomic():
        failed = lease_release(
            upload_id=upload_id,
            token=token,
            from_state=UploadState.PROCESSING,
            state=UploadState.FAILED,
            failed_at=now,
            error={"code": code, "message": message, "hint": hint},
        )
        if failed:

            def remove() -> None:
                # Nothing of a refused upload can be retried: drop its bytes now (PHI).
                storage.stream_delete(upload_id=upload_id)
                UploadSession.objects.filter(pk=upload_id).update(files_deleted=True)
                events.emit(events.UPLOAD_FAILED, upload_id=str(upload_id), code=code)

            transaction.on_commit(remove)


def upload_process(*, upload_id: uuid.UUID) -> None:
    """Check every file of a received upload and decide what happens next.

    Idempotent: claims the lease on a ``processing`` upload or does nothing. Moves the
    upload to ``forwarding`` (and queues forwarding), ``needs_confirmation`` or ``failed``.
    Memory stays flat: files are byte ranges read as streams, pixel data is never loaded.
    """
    token = lease_claim(upload_id=upload_id, states=[UploadState.PROCESSING])
    if token is None:
        return
    session = UploadSession.objects.get(pk=upload_id)
    files = list(UploadFile.objects.filter(session=session).order_by("position"))
    infos: list[DicomInfo] = []
    seen: dict[str, str] = {}
    last_renew = time.monotonic()
    for f in files:
        if time.monotonic() - last_renew > RENEW_EVERY_SECONDS:
            if not lease_renew(upload_id=upload_id, token=token, state=UploadState.PROCESSING):
                logger.info("upload %s: lease lost while processing; stopping", upload_id)
                return
            last_renew = time.monotonic()
        if f.size == 0:
            f.kind, f.reason = FileKind.SKIPPED, "empty file"
            continue
        if f.sha256 and _sha256_of(upload_id=upload_id, f=f) != f.sha256:
            f.kind = FileKind.REJECTED
            f.reason = "the file changed on the way: its SHA-256 does not match the one sent"
            continue
        with storage.open_range(upload_id=upload_id, offset=f.offset, size=f.size) as stream:
            inspection = inspect_instance(stream=stream, size=f.size, name=f.name)
        if inspection.kind == "dicom" and inspection.info is not None:
            uid = inspection.info.sop_instance_uid
            if uid in seen:
                f.kind = FileKind.SKIPPED
                f.reason = f"the same image (SOP Instance UID) is also in {seen[uid]}; sent once"
                continue
            seen[uid] = f.name
            _apply_info(f, inspection.info)
            infos.append(inspection.info)
        else:
            f.kind = FileKind.SKIPPED if inspection.kind == "skipped" else FileKind.REJECTED
            f.reason = inspection.reason[:500]
    UploadFile.objects.bulk_update(
        files,
        [
            "kind",
            "reason",
            "sop_class_uid",
            "sop_instance_uid",
            "study_instance_uid",
            "series_instance_uid",
        ],
        batch_size=500,
    )
    studies = _studies_from(infos)
    with transaction.atomic():
        Study.objects.filter(session=session).delete()
        Study.objects.bulk_create(
            [
                Study(
                    session=session,
                    **{k: (v[:400] if isinstance(v, str) else v) for k, v in s.items()},
                )
                for s in studies
            ]
        )
    rejected = sum(1 for f in files if f.kind == FileKind.REJECTED)
    skipped = sum(1 for f in files if f.kind == FileKind.SKIPPED)
    logger.info(
        "upload %s processed: %d instances, %d rejected, %d skipped, %d studies",
        upload_id,
        len(infos),
        rejected,
        skipped,
        len(studies),
    )
    if not infos:
        _fail(
            upload_id=upload_id,
            token=token,
            code="no_dicom_files",
            message="None of the files in this upload is a DICOM image that can be sent.",
            hint="Check that you picked the study's image files (not only a DICOMDIR or "
            "documents), then upload again.",
        )
        return
    if rejected and not session.allow_partial:
        _fail(
            upload_id=upload_id,
            token=token,
            code="invalid_files",
            message=f"{rejected} of {len(files)} files are damaged or not valid DICOM, so "
            "nothing was sent to the PACS.",
            hint="See rejected_files for each file and reason. Copy the files again from "
            "the source, or upload again allowing a partial study.",
        )
        return
    mismatches = _mismatch_warnings(metadata=session.metadata, studies=studies)
    warnings = list(mismatches)
    if rejected:
        warnings.append(f"{rejected} damaged files are not sent (partial upload allowed).")
    needs_person = bool(mismatches)
    next_state = UploadState.NEEDS_CONFIRMATION if needs_person else UploadState.FORWARDING
    with transaction.atomic():
        moved = lease_release(
            upload_id=upload_id,
            token=token,
            from_state=UploadState.PROCESSING,
            state=next_state,
            warnings=warnings,
        )
        if moved and next_state == UploadState.FORWARDING:
            dispatch_on_commit(task_name=FORWARD_TASK, upload_id=upload_id)
        elif moved:
            transaction.on_commit(
                lambda: events.emit(events.UPLOAD_NEEDS_CONFIRMATION, upload_id=str(upload_id))
            )
