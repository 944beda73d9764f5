"""Receiving an upload: init, chunks, complete, and the client's controls over it."""

from __future__ import annotations

import errno
import hashlib
import logging
import math
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.http import Http404
from django.utils import timezone

from accounts.models import User
from accounts.selectors import user_upload_preferences
from relaypacs import events
from relaypacs.errors import ApplicationError

from .. import storage
from ..models import (
    FINAL_STATES,
    FileKind,
    PacsStatus,
    ServiceLevel,
    Study,
    UploadChunk,
    UploadFile,
    UploadSession,
    UploadState,
)
from ..selectors import uploads_visible_to
from ..tokens import upload_token_issue
from . import transitions
from .chunks import upload_ensure_receiving
from .dispatch import FORWARD_TASK, PROCESS_TASK, dispatch_on_commit
from .recovery import upload_chunks_forget
from .removal import upload_files_delete

logger = logging.getLogger(__name__)

METADATA_FIELDS = (
    "patient_name",
    "patient_id",
    "patient_birth_date",
    "patient_sex",
    "study_date",
    "modality",
    "study_description",
    "accession_number",
)
DATE_FIELDS = ("patient_birth_date", "study_date")
# The fields images joining an earlier study (metadata.study_instance_uid) take from that
# study's Study row, whatever was typed (Study has them under the same names).
STUDY_OWN_FIELDS = (
    "patient_name",
    "patient_id",
    "patient_birth_date",
    "patient_sex",
    "study_date",
    "study_description",
    "accession_number",
)
# A DICOM UID (PS3.5 9.1): digits and dots, at most 64 characters.
STUDY_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
# Longest file name kept (a relative path from a folder pick can be long).
MAX_NAME_LENGTH = 1024
# A CD of thousands of images is normal; beyond this a manifest is a mistake or an attack.
MAX_FILES = 100_000
# Rounds of flush-and-check one complete makes: another round is needed only when a
# concurrent complete forgot chunks a power cut lost and the client re-sent them in
# between, so a third is already a second power cut's worth of bad luck.
COMPLETE_ROUNDS = 3


@dataclass(frozen=True)
class ManifestFile:
    name: str
    size: int
    sha256: str = ""


@dataclass(frozen=True)
class UploadInit:
    files: list[ManifestFile]
    metadata: dict[str, str]
    clinical_notes: str
    service_level: str | None  # None: the user's preference
    chunk_size: int | None  # None: the user's preference, else the server default
    allow_partial: bool
    force_upload: bool


def _manifest_error(detail: str) -> ApplicationError:
    return ApplicationError(
        "invalid_manifest",
        f"The list of files to upload is not valid: {detail}.",
        "The app should list every file with its name and size in bytes; "
        "pick the files again and retry.",
    )


def _normalise_date(value: str, field: str) -> str:
    value = value.strip()
    if not value:
        return ""
    for pattern in ("%Y%m%d", "%Y-%m-%d"):
        try:
            return datetime.strptime(value, pattern).date().strftime("%Y%m%d")  # noqa: DTZ007
        except ValueError:
            continue
    raise _manifest_error(f"{field} must be a date as YYYYMMDD or YYYY-MM-DD")


def manifest_parse(*, data: Any) -> UploadInit:
    """Validate an init request body; raises ApplicationError before anything is stored."""
    if not isinstance(data, dict):
        raise _manifest_error("the request body must be a JSON object")
    files_raw = data.get("files")
    if not isinstance(files_raw, list) or not files_raw:
        raise _manifest_error("it names no files")
    if len(files_raw) > MAX_FILES:
        raise _manifest_error(f"it names more than {MAX_FILES} files")
    files: list[ManifestFile] = []
    for position, item in enumerate(files_raw, start=1):
        if not isinstance(item, dict):
            raise _manifest_error(f"file {position} is not an object with name and size")
        name = item.get("name")
        size = item.get("size")
        sha = item.get("sha256") or ""
        if not isinstance(name, str) or not name.strip():
            raise _manifest_error(f"file {position} has no name")
        if len(name) > MAX_NAME_LENGTH:
            raise _manifest_error(f"file {position} has a name longer than {MAX_NAME_LENGTH}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise _manifest_error(f"file {position} needs a size that is a whole number of bytes")
        if not isinstance(sha, str) or (sha and not re.fullmatch(r"[0-9a-fA-F]{64}", sha)):
            raise _manifest_error(f"file {position} has a sha256 that is not 64 hex digits")
        files.append(ManifestFile(name=name, size=size, sha256=sha.lower()))
    if sum(f.size for f in files) == 0:
        raise _manifest_error("all files are empty")

    metadata_raw = data.get("metadata") or {}
    if not isinstance(metadata_raw, dict):
        raise _manifest_error("metadata must be an object")
    metadata: dict[str, str] = {}
    for key in METADATA_FIELDS:
        value = metadata_raw.get(key)
        if value is None:
            continue
        if not isinstance(value, str | int):
            raise _manifest_error(f"metadata.{key} must be text")
        text = str(value).strip()
        metadata[key] = _normalise_date(text, key) if key in DATE_FIELDS else text[:400]
    metadata = {k: v for k, v in metadata.items() if v}
    study_uid = metadata_raw.get("study_instance_uid")
    if study_uid is not None and study_uid != "":
        if (
            not isinstance(study_uid, str)
            or len(study_uid) > 64
            or not STUDY_UID.fullmatch(study_uid)
        ):
            raise _manifest_error(
                "metadata.study_instance_uid must be a DICOM UID (digits and dots)"
            )
        metadata["study_instance_uid"] = study_uid

    notes = data.get("clinical_notes") or ""
    if not isinstance(notes, str):
        raise _manifest_error("clinical_notes must be text")
    level = data.get("service_level") or None
    if level is not None and level not in ServiceLevel.values:
        raise _manifest_error("service_level must be routine, urgent, emergency or stat")

    chunk_size = data.get("chunk_size")
    if chunk_size is not None and (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, int)
        or not settings.UPLOAD_MIN_CHUNK_SIZE <= chunk_size <= settings.UPLOAD_MAX_CHUNK_SIZE
    ):
        raise ApplicationError(
            "invalid_chunk_size",
            f"The chunk size must be between {settings.UPLOAD_MIN_CHUNK_SIZE // 1024} KiB and "
            f"{settings.UPLOAD_MAX_CHUNK_SIZE // (1024 * 1024)} MiB.",
            "Leave chunk_size out to use the default of 1 MiB.",
        )
    for flag in ("allow_partial", "force_upload"):
        if not isinstance(data.get(flag, False), bool):
            raise _manifest_error(f"{flag} must be true or false")
    return UploadInit(
        files=files,
        metadata=metadata,
        clinical_notes=notes,
        service_level=str(level) if level else None,
        chunk_size=chunk_size,
        allow_partial=bool(data.get("allow_partial", False)),
        force_upload=bool(data.get("force_upload", False)),
    )


def duplicate_key(*, metadata: dict[str, str]) -> str:
    """SHA-256 of patient name + study date + modality; empty when there is nothing to compare."""
    name = " ".join(metadata.get("patient_name", "").upper().replace("^", " ").split())
    study_date = metadata.get("study_date", "")
    if not name or not study_date:
        return ""
    modality = metadata.get("modality", "").upper()
    return hashlib.sha256(f"{name}|{study_date}|{modality}".encode()).hexdigest()


def _find_duplicate(*, owner: User, key: str) -> UploadSession | None:
    if not key:
        return None
    since = timezone.now() - settings.UPLOAD_DUPLICATE_WINDOW
    scope = Q(owner=owner)
    if owner.facility_id:
        # Uploads made at this clinic, wherever their owners work today.
        scope |= Q(facility_id=owner.facility_id)
    return (
        UploadSession.objects.filter(scope, duplicate_key=key, created_at__gte=since)
        .exclude(state__in=[UploadState.CANCELLED, UploadState.FAILED])
        .order_by("-created_at")
        .first()
    )


def upload_init(*, owner: User, request: UploadInit) -> UploadSession:
    """Open an upload session for the manifest, sized on disk, ready for chunks.

    What the request leaves out (chunk size, service level) comes from the user's upload
    preferences; the duplicate check runs unless ``force_upload`` or the user turned it off.

    The upload records the owner's facility of now (``facility``): visibility follows
    it, so moving the owner to another clinic later does not move the upload.

    Raises 403 ``account_pending_approval`` (a self-registered account an administrator
    has not approved yet), 413 ``upload_too_large``, 507 ``insufficient_storage`` or 409
    ``possible_duplicate`` (unless ``force_upload``).
    """
    if not owner.is_approved:
        raise ApplicationError(
            "account_pending_approval",
            "Your account is waiting for an administrator's approval, so it cannot send "
            "studies yet.",
            "Ask your RelayPACS administrator to approve your account; you can send studies "
            "as soon as they have.",
            status_code=403,
        )
    total = sum(f.size for f in request.files)
    if total > settings.UPLOAD_MAX_TOTAL_SIZE:
        raise ApplicationError(
            "upload_too_large",
            f"This study is {total / 1024**3:.1f} GiB; the server accepts at most "
            f"{settings.UPLOAD_MAX_TOTAL_SIZE / 1024**3:.1f} GiB in one upload.",
            "Send the study in several parts (for example one series at a time).",
            status_code=413,
        )
    if storage.free_bytes() - settings.UPLOAD_DISK_RESERVE < total:
        raise ApplicationError(
            "insufficient_storage",
            "The server does not have enough free disk space for this study right now.",
            "Try again later, and tell your RelayPACS administrator.",
            status_code=507,
        )
    metadata = request.metadata
    study_uid = metadata.get("study_instance_uid")
    joined = (
        Study.objects.filter(
            study_instance_uid=study_uid, session__in=uploads_visible_to(user=owner)
        )
        .order_by("-id")
        .first()
        if study_uid
        else None
    )
    if joined is not None:
        # The images join that study: its patient and study, as the server recorded them
        # from the study's DICOM files, go into the converted images, never what was typed
        # (a typo, or another patient, would put a second patient in one PACS study).
        metadata = {
            **{k: v for k, v in metadata.items() if k not in STUDY_OWN_FIELDS},
            **{k: getattr(joined, k) for k in STUDY_OWN_FIELDS if getattr(joined, k)},
        }
    if study_uid and joined is None:
        # Photos are added only to a study this account may see (one it or its facility
        # sent): the UID alone must not let anyone write into another clinic's study.
        raise ApplicationError(
            "unknown_study",
            "The study these images are meant to join was not sent from this account or "
            "its clinic, or an administrator has removed it from RelayPACS.",
            "Send the images as a new study, or ask the clinic that sent the study to add them.",
            status_code=404,
        )
    key = duplicate_key(metadata=metadata)
    preferences = user_upload_preferences(user=owner)
    if not request.force_upload and preferences.duplicate_detection:
        earlier = _find_duplicate(owner=owner, key=key)
        if earlier is not None:
            when = earlier.created_at.date().isoformat()
            extra = {"duplicate_uploaded_at": when}
            # Named only to someone allowed to open it (a colleague's upload stays unnamed).
            if uploads_visible_to(user=owner).filter(pk=earlier.pk).exists():
                extra["duplicate_of"] = str(earlier.id)
            raise ApplicationError(
                "possible_duplicate",
                f"A study for this patient, date and modality was already uploaded at your "
                f"clinic on {when}.",
                "Check that this is not the same study. If it is a different one, choose "
                "'Send anyway'.",
                status_code=409,
                extra=extra,
            )
    chunk_size = request.chunk_size or preferences.chunk_size or settings.UPLOAD_DEFAULT_CHUNK_SIZE
    upload_id = uuid.uuid4()
    with storage.stream_removed_on_error(upload_id=upload_id), transaction.atomic():
        session = UploadSession.objects.create(
            id=upload_id,
            owner=owner,
            facility_id=owner.facility_id,
            total_size=total,
            chunk_size=chunk_size,
            total_chunks=math.ceil(total / chunk_size),
            metadata=metadata,
            clinical_notes=request.clinical_notes,
            service_level=request.service_level or preferences.service_level,
            allow_partial=request.allow_partial,
            force_upload=request.force_upload,
            duplicate_key=key,
        )
        offset = 0
        rows = []
        for position, item in enumerate(request.files):
            rows.append(
                UploadFile(
                    session=session,
                    position=position,
                    name=item.name,
                    size=item.size,
                    offset=offset,
                    sha256=item.sha256,
                    kind=FileKind.PENDING if item.size else FileKind.SKIPPED,
                    reason="" if item.size else "empty file",
                )
            )
            offset += item.size
        UploadFile.objects.bulk_create(rows, batch_size=1000)
        storage.stream_create(upload_id=session.id, size=total)
        transaction.on_commit(
            lambda: events.emit(
                events.UPLOAD_STARTED,
                upload_id=str(session.id),
                owner_id=owner.pk,
                facility_id=session.facility_id,
            )
        )
    return session


def upload_token_refresh(*, session: UploadSession, user: User, session_id: str | None) -> str:
    """A new upload token for the upload's owner ``user``, tied to their sign-in session
    ``session_id``. Upload tokens send chunks, and chunks come from the owner only: anyone
    else (an administrator or a colleague who may follow the upload) is refused with 403
    ``permission_denied`` and reads the status with their access token instead."""
    if session.owner_id != user.pk:
        raise ApplicationError(
            "permission_denied",
            "Only the person who started this upload can get a key to send its files.",
            "You can follow this upload's status while signed in; its files come from the "
            "device of the person who started it.",
            status_code=403,
        )
    return upload_token_issue(upload_id=session.id, user_id=user.pk, session_id=session_id)


def _incomplete(
    *, session: UploadSession, missing: list[int], reason: str = ""
) -> ApplicationError:
    if reason == "lost":
        message = (
            f"The server lost {len(missing)} of {session.total_chunks} chunks before they "
            "were safely on its disk (a power cut or a crash of the server)."
        )
    elif reason == "resent":
        message = (
            f"The server lost track of {len(missing)} of {session.total_chunks} chunks while "
            "they were being sent again, so it cannot take the study yet."
        )
    else:
        message = f"{len(missing)} of {session.total_chunks} chunks have not arrived yet."
    return ApplicationError(
        "upload_incomplete",
        message,
        "Send the chunks listed in missing_chunks, then complete again.",
        status_code=409,
        extra={"missing_chunks": missing[:1000]},
    )


# What a client that honours Retry-After waits before it completes again after the disk
# refused to store the upload's bytes: a disk error is not over in seconds, and the client
# sends every chunk again before that complete (the PWA waits at least Retry-After, at
# most 5 minutes, and says on the study's card when it tries again).
STORAGE_RETRY_AFTER_SECONDS = 60


def _storage_refused() -> ApplicationError:
    return ApplicationError(
        "storage_unavailable",
        "The server's disk could not store this study safely just now, so the server asks "
        "for all of it again.",
        "The app sends the study again by itself after a short wait; tell your RelayPACS "
        "administrator if this keeps happening.",
        status_code=503,
        retry_after=STORAGE_RETRY_AFTER_SECONDS,
    )


@dataclass(frozen=True)
class _Stored:
    """A stored chunk as complete checks it."""

    pk: int
    chunk: storage.StoredChunk
    received_at: datetime | None  # when it was marked stored: after its write returned


def _stored_chunks(*, upload_id: uuid.UUID) -> dict[int, _Stored]:
    """The upload's stored chunks by index."""
    return {
        index: _Stored(pk=pk, chunk=storage.StoredChunk(size=size, md5=md5), received_at=at)
        for pk, index, size, md5, at in UploadChunk.objects.filter(
            session_id=upload_id, stored=True
        ).values_list("pk", "index", "size", "md5", "received_at")
    }


def _chunks_lost(*, session: UploadSession, stored: dict[int, _Stored]) -> list[int] | None:
    """Flush the upload's bytes, then the indexes of ``stored`` whose bytes the storage
    does not hold: acknowledged, then lost in a power cut before this flush. None when the
    disk refused the flush or the read-back of a chunk. [] where an acknowledged write is
    durable by itself (S3: and no request is made).

    The check costs one ``lseek`` per chunk; a chunk is read back where its range has a
    hole, and whatever the holes say when it was received before this machine last
    booted (``storage.writes_maybe_lost``: on a filesystem that does not report holes, or
    ext4 ``data=writeback``, a crash loses a write without a hole). A chunk received
    since the boot is never read back: only a reboot loses page-cache writes."""
    if storage.stream_writes_durable():
        return []
    size = session.chunk_size
    try:
        storage.stream_flush(upload_id=session.id)
        verify = storage.writes_maybe_lost(
            written_at={index * size: row.received_at for index, row in stored.items()}
        )
        present = storage.chunks_present(
            upload_id=session.id,
            chunks={index * size: row.chunk for index, row in stored.items()},
            verify_offsets=verify,
        )
    except OSError as exc:
        # The kernel reports a failed write-back once and may then call its pages clean,
        # so a later flush can succeed without the bytes: none written before can be
        # trusted to be on disk (nor any the disk cannot read back), and every chunk is
        # asked for again.
        logger.error(
            "could not flush or read back upload %s on disk (%s); its chunks will be sent again",
            session.id,
            errno.errorcode.get(exc.errno or 0, type(exc).__name__),
        )
        return None
    return sorted(index for index in stored if index * size not in present)


def upload_complete(*, session: UploadSession) -> UploadSession:
    """Hand a fully received upload to the worker. Calling it again is harmless.

    This is where the server takes the upload, so it is where its bytes become durable:
    on local disk the assembly file is flushed (``storage.stream_flush``, outside any
    transaction: on SQLite one would hold every writer for the flush) and every stored
    chunk is checked on disk (``storage.chunks_present``, see ``_chunks_lost``). Chunks a
    power cut lost between their answer and now are forgotten
    (``recovery.upload_chunks_forget``: their bytes leave ``bytes_received``) and named
    in ``missing_chunks``, for the client, which keeps the files until the upload is
    completed, to send again. The move to ``processing`` then happens under a lock on the
    upload's row, and only if the stored chunks are still the very rows that were flushed
    and checked: a concurrent complete that forgot a chunk (and the client re-sent it,
    unflushed) sends this one round again. A cancel racing it wins or loses whole (every
    change is conditional on ``receiving``).

    Each round (read the chunks, flush, check, forget or take) runs under
    ``storage.stream_complete_lock``, so concurrent completes of one upload take turns:
    Linux reports a failed write-back to the first flush only, and the second complete,
    whose flush then succeeds, must find the chunks the first forgot. No database lock is
    held while waiting for it or flushing.

    A flush (or read-back) the disk refuses counts every chunk lost (the kernel may drop
    the bytes it could not write and call them clean): they are forgotten, so that the
    client sends them all again, and complete answers 503 ``storage_unavailable`` with
    Retry-After, so that it waits before it does.

    Raises 409 ``upload_incomplete`` (with ``missing_chunks``) or ``upload_not_receiving``,
    503 ``storage_unavailable``, Http404 when the upload was deleted meanwhile (the 404
    an unknown upload gets).
    """
    try:
        return _upload_complete_rounds(session=session)
    except storage.CompleteLockBusy:
        raise ApplicationError(
            "storage_unavailable",
            "The server is still saving this study to its disk for an earlier request.",
            "Finish the upload again in a few seconds (the app does so by itself).",
            status_code=503,
            retry_after=5,
        ) from None


def _upload_complete_rounds(*, session: UploadSession) -> UploadSession:
    checked: set[int] = set()
    for _ in range(COMPLETE_ROUNDS):
        if not _still_receiving(session):
            return session
        with storage.stream_complete_lock(upload_id=session.id):
            stored = _stored_chunks(upload_id=session.id)
            missing = [index for index in range(session.total_chunks) if index not in stored]
            if missing:
                raise _incomplete(session=session, missing=missing)
            lost = _chunks_lost(session=session, stored=stored)
            checked = {row.pk for row in stored.values()}
            if lost is None:
                if upload_chunks_forget(
                    upload_id=session.id, size=session.total_size, lost=sorted(stored)
                ):
                    raise _storage_refused()
            elif lost:
                if upload_chunks_forget(upload_id=session.id, size=session.total_size, lost=lost):
                    raise _incomplete(session=session, missing=lost, reason="lost")
            elif _upload_take(session=session, checked=checked):
                _refresh(session)
                return session
        _refresh(session)  # it moved on, or its chunks changed: look again
    if not _still_receiving(session):
        return session
    # Chunks forgotten and re-sent at every round by concurrent completes: ask for those
    # not flushed and checked (sent again, the stored ones are accepted without a write),
    # and the next complete flushes them.
    current = _stored_chunks(upload_id=session.id)
    unchecked = [
        index
        for index in range(session.total_chunks)
        if index not in current or current[index].pk not in checked
    ]
    raise _incomplete(session=session, missing=unchecked, reason="resent")


def _refresh(session: UploadSession) -> None:
    """Read ``session`` again; Http404 (as for an unknown upload) when it was deleted."""
    try:
        session.refresh_from_db()
    except UploadSession.DoesNotExist:
        raise Http404 from None


def _still_receiving(session: UploadSession) -> bool:
    """Whether ``session`` is receiving. Raises 409 ``upload_not_receiving`` when it was
    cancelled or failed (any later state: complete was done)."""
    if session.state in (UploadState.CANCELLED, UploadState.FAILED):
        upload_ensure_receiving(session)
    return session.state == UploadState.RECEIVING


@transaction.atomic
def _upload_take(*, session: UploadSession, checked: set[int]) -> bool:
    """``receiving`` -> ``processing`` under a lock on the upload's row, when its stored
    chunks are exactly the rows ``checked`` (flushed and found on disk); the processing
    task and ``upload.received`` follow the commit. False when it is no longer receiving
    or its chunks changed since they were checked."""
    locked = list(
        UploadSession.objects.select_for_update()
        .filter(pk=session.id, state=UploadState.RECEIVING)
        .values_list("pk", flat=True)
    )
    if not locked:
        return False
    now_stored = set(
        UploadChunk.objects.filter(session_id=session.id, stored=True).values_list("pk", flat=True)
    )
    if now_stored != checked:
        return False
    if transitions.upload_received(upload_id=session.id):
        # The event first (after-commit callbacks run in the order registered): a
        # worker can take the task and emit ``upload.forwarding`` within milliseconds,
        # and every client must hear ``upload.received`` before it.
        transaction.on_commit(
            lambda: events.emit(
                events.UPLOAD_RECEIVED, upload_id=str(session.id), owner_id=session.owner_id
            )
        )
        dispatch_on_commit(task_name=PROCESS_TASK, upload_id=session.id)
    return True


def upload_cancel(*, session: UploadSession, actor: User | None = None) -> None:
    """Stop all work on the upload and delete its files. 409 once completed; idempotent.

    One conditional UPDATE that also drops the worker's lease (``upload_cancelled``): a
    worker still busy with the upload finds that every write it makes next is refused, and
    stops; nothing it does can undo the cancel. What it had already sent to the PACS stays
    there. ``actor`` is who cancelled (the owner, a colleague or an administrator)."""
    if session.state == UploadState.COMPLETED:
        raise ApplicationError(
            "upload_completed",
            "This study was already delivered to the PACS and cannot be cancelled.",
            "Ask the PACS administrator if the study must be removed there.",
            status_code=409,
        )
    if session.state == UploadState.CANCELLED:
        return
    with transaction.atomic():
        if not transitions.upload_cancelled(upload_id=session.id):
            session.refresh_from_db()
            if session.state == UploadState.COMPLETED:
                upload_cancel(session=session, actor=actor)
            return
        upload_id, owner_id = session.id, session.owner_id
        actor_id = actor.pk if actor is not None else None

        def remove() -> None:
            upload_files_delete(upload_id=upload_id)  # on failure, uploads_cleanup retries
            events.emit(
                events.UPLOAD_CANCELLED,
                upload_id=str(upload_id),
                owner_id=owner_id,
                actor_id=actor_id,
            )

        transaction.on_commit(remove)


def upload_confirm(*, session: UploadSession) -> UploadSession:
    """A person confirmed an upload that needed confirmation: forward it."""
    with transaction.atomic():
        if not transitions.upload_confirmed(upload_id=session.id):
            session.refresh_from_db()
            if session.state in (
                UploadState.FORWARDING,
                UploadState.WAITING_FOR_PACS,
                UploadState.COMPLETED,
            ):
                return session
            raise ApplicationError(
                "nothing_to_confirm",
                "This upload is not waiting for a confirmation.",
                "Check its status.",
                status_code=409,
                extra={"state": session.state},
            )
        dispatch_on_commit(task_name=FORWARD_TASK, upload_id=session.id)
    session.refresh_from_db()
    return session


def upload_retry(*, session: UploadSession) -> UploadSession:
    """Retry forwarding now: from ``waiting_for_pacs``, or from ``failed`` while the files remain."""
    with transaction.atomic():
        if session.state == UploadState.WAITING_FOR_PACS:
            if transitions.upload_retry_due(upload_id=session.id):
                dispatch_on_commit(task_name=FORWARD_TASK, upload_id=session.id)
        elif (
            session.state == UploadState.FAILED
            and (session.error or {}).get("code") in transitions.DELIVERY_FAILURE_CODES
            and not session.files_deleted
            and session.received_at is not None
            and UploadFile.objects.filter(session=session, kind=FileKind.DICOM).exists()
        ):
            UploadFile.objects.filter(session=session, pacs_status=PacsStatus.FAILED).update(
                pacs_status=PacsStatus.PENDING, pacs_reason=""
            )
            if not transitions.upload_retried(upload_id=session.id):
                session.refresh_from_db()
                raise _nothing_to_retry(session)
            dispatch_on_commit(task_name=FORWARD_TASK, upload_id=session.id)
        elif session.state in FINAL_STATES or session.state == UploadState.RECEIVING:
            raise _nothing_to_retry(session)
        # needs_confirmation, processing, forwarding: the work goes on by itself
    session.refresh_from_db()
    return session


def _nothing_to_retry(session: UploadSession) -> ApplicationError:
    return ApplicationError(
        "nothing_to_retry",
        f"There is nothing to retry: this upload is {session.get_state_display().lower()}.",
        "A failed upload whose files were removed must be uploaded again.",
        status_code=409,
        extra={"state": session.state},
    )


__all__ = [
    "ManifestFile",
    "UploadInit",
    "manifest_parse",
    "upload_cancel",
    "upload_complete",
    "upload_confirm",
    "upload_init",
    "upload_retry",
    "upload_token_refresh",
]
