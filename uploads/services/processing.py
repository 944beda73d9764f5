"""Processing a received upload: split the stream into files, verify, validate, describe."""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
import threading
import time
import uuid
from collections import defaultdict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, BinaryIO

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import F
from pydicom.uid import generate_uid

from relaypacs import events

from .. import storage
from ..archives import (
    ArchiveBudget,
    ArchiveError,
    ArchiveLimitExceeded,
    ArchiveLimits,
    archive_kind,
    expand_rar,
    expand_zip,
)
from ..clinical_object import ClinicalObjectFailed, clinical_objects_make
from ..dicom import DicomInfo, Inspection, inspect_instance, sniff_reason, wrap_without_meta
from ..imaging import ImageConversionError, PatientContext, SeriesContext, convert_image, image_kind
from ..models import FileKind, RelayAddedObject, Study, UploadFile, UploadSession, UploadState
from . import transitions
from .hashing import HASH_BLOCK, HashingStopped, sha256_of
from .leases import lease_claim, lease_release, lease_renew
from .prehash import prehashed_sha256s
from .removal import upload_files_delete

logger = logging.getLogger(__name__)

# Renew the lease at least this often while checking files, and at least three times per
# lease length, so that two renewals can fail (a busy database) before it runs out.
RENEW_EVERY_SECONDS = 10.0
# The heartbeat stops renewing after this long, so a worker stuck in one file (a decoder
# that never returns) lets its lease lapse: beat re-dispatches the upload and the poison
# limit ends it. The largest upload (20 GiB, plus up to 40 GiB unpacked) is checked well
# within an hour even on a slow disk; four hours is a hang, not work.
MAX_PROCESSING_SECONDS = 4 * 3600.0
# Files of the manifest up to this size are read once into memory, hashed inline and
# checked from that copy (head, header): for 2,000 files of 0.5 MB, three opens per file
# and the hand-over of each to a hash thread cost more than the hashing itself
# (bench/RESULTS.md). One HASH_BLOCK, so memory stays at one block and a lost lease still
# stops the loop within about 1 MiB (it is checked before each file).
INLINE_MAX_BYTES = HASH_BLOCK
# Enough of a file's start to recognise ZIP, RAR, JPEG and PNG signatures.
HEAD_BYTES = 16
# Archives inside an archive are unpacked once more; deeper nesting is not followed.
MAX_ARCHIVE_DEPTH = 2
# What checking a file decides about it.
CHECKED_FIELDS = [
    "kind",
    "reason",
    "sop_class_uid",
    "sop_instance_uid",
    "study_instance_uid",
    "series_instance_uid",
]


# Threads that hash the manifest's files ahead of the header checks: hashlib releases the
# GIL, so one file is hashed while the previous one's header is parsed, and on two cores
# two large files are hashed at once (1 GB studies, in one run on a busy machine:
# processing of 10 x 100 MB 3.4 -> 2.4 s, of 256 x 4 MB 2.4 -> 1.4 s; bench/RESULTS.md).
# Each thread holds one HASH_BLOCK.
HASH_THREADS = 2


class _Hashes:
    """The SHA-256 of every manifest file larger than INLINE_MAX_BYTES that was sent with
    one (smaller ones are hashed inline, see ``_inline``), computed in HASH_THREADS
    threads in manifest order, ahead of the loop that checks the files. ``of(f)`` gives
    the hex digest (computed now when it was not queued) and raises what hashing raised
    (StorageUnavailable, OSError, and HashingStopped once ``lost`` is set). Every hash
    checks ``lost`` (the heartbeat's: the lease is gone) and ``close()`` before each
    block, so a cancel, a lost lease or ``close()`` stops it within one HASH_BLOCK.
    ``close()`` cancels what has not started and waits for the threads."""

    def __init__(
        self,
        *,
        upload_id: uuid.UUID,
        files: list[UploadFile],
        lost: threading.Event,
        known: dict[int, str],
    ) -> None:
        self.upload_id = upload_id
        self._lost = lost
        self._known = known
        self._closing = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=HASH_THREADS, thread_name_prefix="sha256")
        self._ahead: dict[int, Future[str]] = {
            f.pk: self._pool.submit(sha256_of, upload_id=upload_id, f=f, stop=self._stopped)
            for f in files
            if f.sha256 and f.size and not _inline(f) and f.pk not in known
        }

    def _stopped(self) -> bool:
        return self._lost.is_set() or self._closing.is_set()

    def known(self, f: UploadFile) -> str | None:
        """The hash taken while the upload was arriving (``prehash``), if it still holds."""
        return self._known.get(f.pk) if f.pk is not None else None

    def of(self, f: UploadFile) -> str:
        if (digest := self.known(f)) is not None:
            return digest
        future = self._ahead.pop(f.pk, None) if f.pk is not None else None
        if future is None:
            return sha256_of(upload_id=self.upload_id, f=f, stop=self._stopped)
        return future.result()

    def close(self) -> None:
        self._closing.set()
        self._pool.shutdown(wait=True, cancel_futures=True)


def _inline(f: UploadFile) -> bool:
    """Whether ``f`` is checked from one in-memory read (see INLINE_MAX_BYTES): files of
    the manifest only, derived files are read from the work folder as they are."""
    return not f.path and 0 < f.size <= INLINE_MAX_BYTES


def _checked_fields_save(files: list[UploadFile]) -> None:
    """Write CHECKED_FIELDS of each of ``files`` (saved rows) in one executemany of a plain
    UPDATE per row: the ORM's ``filter(pk=...).update()`` compiles the query again for
    every row, about 0.3 ms of CPU each here (0.6 s for a study of 2,000 images), and
    ``bulk_update`` builds a CASE over every row for each field (five times slower)."""
    if not files:
        return
    quote = connection.ops.quote_name
    by_name = {field.name: field for field in UploadFile._meta.concrete_fields}
    fields = [by_name[name] for name in CHECKED_FIELDS]
    # Columns as the model maps them (``column`` is a field's db_column, else its attname;
    # None in the type stubs only).
    columns = [quote(field.column or field.attname) for field in fields]
    pk = UploadFile._meta.pk
    sql = (
        f"UPDATE {quote(UploadFile._meta.db_table)} SET "  # noqa: S608 - names from the model
        + ", ".join(f"{column} = %s" for column in columns)
        + f" WHERE {quote(pk.column or pk.attname)} = %s"
    )
    rows = [
        [field.get_db_prep_save(getattr(f, field.attname), connection) for field in fields] + [f.pk]
        for f in files
    ]
    with connection.cursor() as cursor:
        cursor.executemany(sql, rows)


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
            missing = 0
            gaps: list[int] = []
            if numbers:
                present = set(numbers)
                missing = numbers[-1] - numbers[0] + 1 - len(present)
                gaps = [n for n in range(numbers[0], numbers[-1] + 1) if n not in present][:100]
            series_rows.append(
                {
                    "series_instance_uid": series_uid,
                    "series_number": items[0].series_number,
                    "modality": items[0].modality,
                    "description": items[0].series_description,
                    "instances": len(items),
                    # What the instance numbers suggest the series should hold.
                    "expected_instances": len(items) + missing,
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


def _completeness_warnings(studies: list[dict[str, Any]]) -> list[str]:
    """ "Series 3: 118 of 120 images" for every series with gaps in its instance numbers."""
    warnings = []
    for study in studies:
        for series in study["series"]:
            if series["expected_instances"] > series["instances"]:
                label = series["series_number"] if series["series_number"] is not None else "?"
                gaps = ", ".join(str(n) for n in series["instance_number_gaps"][:10])
                warnings.append(
                    f"Series {label}: {series['instances']} of {series['expected_instances']} "
                    f"images (missing image numbers {gaps}). Check that every file was copied."
                )
    return warnings


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


class ProcessingCrashed(RuntimeError):
    """Checking a file failed unexpectedly. Told by the file's position, never its name or
    work path: archive entries are often named after patients, and this message is logged
    (the original exception's traceback is kept, its message is not)."""


class _Heartbeat:
    """Renews the processing lease from a thread of its own for as long as the upload is
    being checked, so that no single long step (unpacking an archive, hashing a large
    file, converting a photo) outlives the lease and lets a second worker take over.

    ``lost`` is set once a renewal finds the lease gone (cancelled, or taken over after
    this process stalled): the worker then stops and writes nothing. The thread uses its
    own database connection and closes it when it ends.
    """

    def __init__(self, *, upload_id: uuid.UUID, token: str) -> None:
        self.upload_id = upload_id
        self.token = token
        self.interval = min(RENEW_EVERY_SECONDS, settings.UPLOAD_LEASE_SECONDS / 3)
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-heartbeat", daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        try:
            while not self._stop.wait(self.interval):
                if time.monotonic() - started > MAX_PROCESSING_SECONDS:
                    logger.error(
                        "upload %s: still checking after %.0f s; no longer renewing its lease",
                        self.upload_id,
                        MAX_PROCESSING_SECONDS,
                    )
                    return
                try:
                    renewed = lease_renew(
                        upload_id=self.upload_id, token=self.token, state=UploadState.PROCESSING
                    )
                except DatabaseError:
                    logger.warning("upload %s: renewing the lease failed; retrying", self.upload_id)
                    continue
                if not renewed:
                    self.lost.set()
                    return
        finally:
            connection.close()

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def _fail(*, upload_id: uuid.UUID, token: str, code: str, message: str, hint: str) -> None:
    with transaction.atomic():
        failed = transitions.upload_processing_failed(
            upload_id=upload_id,
            token=token,
            error={"code": code, "message": message, "hint": hint},
        )
        if failed:

            def remove() -> None:
                # Nothing of a refused upload can be retried: drop its bytes now (PHI).
                upload_files_delete(upload_id=upload_id)  # on failure, uploads_cleanup retries
                events.emit(events.UPLOAD_FAILED, upload_id=str(upload_id), code=code)

            transaction.on_commit(remove)


class _Expander:
    """Turns the manifest into the list of files to check: archives unpacked (one level of
    nesting), photos converted to Secondary Capture, header-less DICOM re-wrapped. Every
    derived file is a row pointing to its parent and a file in the work folder."""

    def __init__(self, *, session: UploadSession, manifest: list[UploadFile]) -> None:
        self.session = session
        self.upload_id = session.id
        self.work = storage.work_reset(upload_id=session.id)
        self.next_position = max((f.position for f in manifest), default=-1) + 1
        self.files: list[UploadFile] = []
        self.archive_error: ArchiveError | None = None
        self.unsafe: ArchiveError | None = None
        self.over_limit: ArchiveLimitExceeded | None = None
        self.warnings: list[str] = []
        self.photos = 0
        # What this run opened since the last storage_ensure (see there).
        self.opened: list[BinaryIO] = []
        self.storage_errors: list[storage.StorageUnavailable] = []
        # One budget for every archive of the upload, nested ones included.
        self.budget = ArchiveBudget(
            limits=ArchiveLimits(
                max_total_bytes=settings.ARCHIVE_MAX_EXPANDED_BYTES,
                max_ratio=settings.ARCHIVE_MAX_RATIO,
                max_entries=settings.ARCHIVE_MAX_ENTRIES,
            )
        )

    def child(self, parent: UploadFile, *, name: str, path: str = "", size: int = 0) -> UploadFile:
        row = UploadFile(
            session=self.session,
            # Always the manifest file it came from (saved), even through nested archives.
            parent=parent.parent if parent.parent is not None else parent,
            position=self.next_position,
            name=name[:1024],
            size=size,
            offset=0,
            path=path,
        )
        self.next_position += 1
        self.files.append(row)
        return row

    def open(self, f: UploadFile) -> BinaryIO:
        try:
            stream = storage.open_member(
                upload_id=self.upload_id, offset=f.offset, size=f.size, path=f.path
            )
        except storage.StorageUnavailable as exc:
            self.storage_errors.append(exc)
            raise
        self.opened.append(stream)
        raw = getattr(stream, "raw", None)
        if f.path and raw is not None:
            # A work-folder file's name is its path, which holds archive entry names;
            # libraries put a stream's name in log lines and exception messages.
            raw.name = f"upload file {f.position}"
        return stream

    def storage_ensure(self) -> None:
        """Raise the StorageUnavailable that a stream opened since the last call raised,
        if one did. pydicom, Pillow, the archive readers and the clinical object turn
        any read error into "damaged file"; an outage of the storage must not become a
        verdict on the clinic's files (the upload waits for the storage instead)."""
        errors = self.storage_errors + [
            error for stream in self.opened if (error := storage.storage_failure(stream))
        ]
        self.opened.clear()
        self.storage_errors.clear()
        if errors:
            raise errors[0]

    def expand_archive(self, f: UploadFile, kind: str) -> list[UploadFile]:
        folder = f"{f.position}.d"
        dest = self.work / folder
        dest.mkdir()
        if not f.path:
            # An archive as uploaded: what its archives may unpack is judged against this.
            self.budget.add_received(f.size)
        try:
            with self.open(f) as stream:
                if kind == "zip":
                    result = expand_zip(stream=stream, dest=dest, budget=self.budget)
                else:
                    result = expand_rar(stream=stream, dest=dest, budget=self.budget, version=kind)
        except ArchiveError as exc:
            shutil.rmtree(dest, ignore_errors=True)
            f.kind, f.reason = FileKind.REJECTED, exc.message[:500]
            if isinstance(exc, ArchiveLimitExceeded):
                self.over_limit = exc
            elif exc.code == "unsafe_archive":
                self.unsafe = self.unsafe or exc
            else:
                self.archive_error = self.archive_error or exc
            return []
        f.kind = FileKind.ARCHIVE
        f.reason = f"unpacked: {len(result.files)} files"
        children = [
            self.child(f, name=f"{f.name}/{name}", path=f"{folder}/{relpath}", size=size)
            for name, relpath, size in result.files
        ]
        for name, reason in result.skipped:
            skipped = self.child(f, name=f"{f.name}/{name}")
            skipped.kind, skipped.reason = FileKind.SKIPPED, reason
        return children

    def convert_photo(self, f: UploadFile, kind: str) -> list[UploadFile]:
        metadata = self.session.metadata
        facility = self.session.facility  # where the study was sent from, recorded at init
        self.photos += 1
        root = settings.DICOM_UID_ROOT
        # UIDs derived from the upload and the file: a re-run never makes a second copy.
        patient = PatientContext(
            patient_name=metadata.get("patient_name", ""),
            patient_id=metadata.get("patient_id", ""),
            patient_birth_date=metadata.get("patient_birth_date", ""),
            patient_sex=metadata.get("patient_sex", ""),
            issuer_of_patient_id=facility.issuer_of_patient_id if facility else "",
            study_date=metadata.get("study_date", ""),
            study_description=metadata.get("study_description", ""),
            accession_number=metadata.get("accession_number", ""),
        )
        series = SeriesContext(
            uid_root=root,
            # The study the photos join (added to an earlier upload's study, checked at
            # init), else a study of their own derived from the upload.
            study_instance_uid=metadata.get("study_instance_uid")
            or generate_uid(prefix=root, entropy_srcs=[str(self.upload_id), "study"]),
            series_instance_uid=generate_uid(
                prefix=root, entropy_srcs=[str(self.upload_id), "photos"]
            ),
            institution=facility.name if facility else "",
        )
        relpath = f"{f.position}.dcm"
        try:
            with self.open(f) as stream:
                convert_image(
                    stream=stream,
                    kind=kind,
                    dest=self.work / relpath,
                    patient=patient,
                    series=series,
                    number=self.photos,
                    sop_instance_uid=generate_uid(
                        prefix=root, entropy_srcs=[str(self.upload_id), f.name, str(f.position)]
                    ),
                )
        except ImageConversionError as exc:
            f.kind, f.reason = FileKind.REJECTED, exc.reason[:500]
            return []
        f.kind, f.reason = FileKind.CONVERTED, "photo converted to DICOM Secondary Capture"
        size = (self.work / relpath).stat().st_size
        return [self.child(f, name=f"{f.name} (DICOM)", path=relpath, size=size)]

    def wrap(self, f: UploadFile) -> list[UploadFile]:
        relpath = f"{f.position}.wrapped.dcm"
        with self.open(f) as stream:
            wrapped = wrap_without_meta(stream=stream, size=f.size, dest=str(self.work / relpath))
        if not wrapped:
            return []
        f.kind, f.reason = (
            FileKind.CONVERTED,
            "DICOM without a file header: a correct header was added",
        )
        self.warnings.append(f"{f.name} had no DICOM file header; RelayPACS added one.")
        size = (self.work / relpath).stat().st_size
        return [self.child(f, name=f"{f.name} (with header)", path=relpath, size=size)]


def upload_process(*, upload_id: uuid.UUID) -> bool:
    """Check every file of a received upload and decide what happens next.

    Idempotent: claims the lease on a ``processing`` upload or does nothing; a re-run
    starts from the manifest again. Archives are unpacked, photos converted and header-less
    DICOM wrapped first (see ``_Expander``). Moves the upload to ``forwarding``,
    ``needs_confirmation`` or ``failed``, and releases the lease.

    Returns True when this call moved the upload to ``forwarding``: the caller forwards it
    next (``upload_forward``). Nothing is queued for it, so that forwarding starts without
    a trip through the broker; should the caller die first, beat re-dispatches it.
    Memory stays flat: files are read as streams and pixel data is never loaded (a photo
    being converted is the exception).

    A heartbeat renews the lease while the files are checked (``_Heartbeat``), and the
    results are written only if the lease is still ours, under the row lock of that check,
    so a worker that took over is never overwritten. The archive limits hold for the
    whole upload; going over one fails it, even when a partial upload is allowed. An
    unexpected error is raised as ProcessingCrashed, which names no file. When the upload
    storage cannot be reached (``storage.StorageUnavailable``, also where a file parser
    swallowed it), the upload is given back uncounted (``_wait_for_storage``) and the error
    raised for the task to retry. In S3 mode a cancelled upload publishes nothing, and what
    a publish racing the cancel put back is deleted (``_published_for_nobody``).
    """
    token = lease_claim(upload_id=upload_id, states=[UploadState.PROCESSING])
    if token is None:
        return False
    # In S3 mode the derived files are written on this node's disk only for this run.
    with (
        _Heartbeat(upload_id=upload_id, token=token) as heartbeat,
        storage.work_scope(upload_id=upload_id),
    ):
        try:
            return _process(upload_id=upload_id, token=token, heartbeat=heartbeat)
        except storage.StorageUnavailable as exc:
            if not _wait_for_storage(upload_id=upload_id, token=token, error=exc):
                return False
            raise


def _wait_for_storage(
    *, upload_id: uuid.UUID, token: str, error: storage.StorageUnavailable
) -> bool:
    """The upload storage is down: give the upload back (still ``processing``, lease
    released) without counting this claim among its attempts, so that an outage never
    brings it to MAX_PROCESSING_ATTEMPTS (``processing_failed``, bytes deleted). The
    task retries with backoff, then beat re-dispatches it (UNCLAIMED_GRACE after it was
    given back) until the storage is back. False when the lease was not ours any more."""
    released = lease_release(
        upload_id=upload_id,
        token=token,
        from_state=UploadState.PROCESSING,
        attempts=F("attempts") - 1,
    )
    # The message names the operation and S3's error code only.
    logger.warning("upload %s waits for the upload storage: %s", upload_id, error)
    return released


def _process(*, upload_id: uuid.UUID, token: str, heartbeat: _Heartbeat) -> bool:
    """The body of ``upload_process``, run under a live lease ``token``."""
    session = UploadSession.objects.select_related("facility").get(pk=upload_id)
    # Derived files, and the objects the relay added, are made again from the manifest.
    UploadFile.objects.filter(session=session, parent__isnull=False).delete()
    UploadFile.objects.filter(session=session, added_by_relay=True).delete()
    manifest = list(UploadFile.objects.filter(session=session).order_by("position"))
    expander = _Expander(session=session, manifest=manifest)
    queue: deque[tuple[UploadFile, int]] = deque((f, 0) for f in manifest)
    infos: list[DicomInfo] = []
    seen: dict[str, str] = {}
    current: UploadFile | None = None
    known = prehashed_sha256s(session=session, files=manifest)
    if known:
        logger.info(
            "upload %s: %d of %d files were checked against their SHA-256 while it arrived",
            upload_id,
            len(known),
            len(manifest),
        )
    hashes = _Hashes(upload_id=upload_id, files=manifest, lost=heartbeat.lost, known=known)
    try:
        while queue and expander.over_limit is None and not heartbeat.lost.is_set():
            expander.storage_ensure()  # the previous file's verdict was not an outage
            f, depth = queue.popleft()
            current = f
            if f.size == 0:
                f.kind, f.reason = FileKind.SKIPPED, "empty file"
                continue
            # A small file is read once: hashed, sniffed and its header parsed from that copy.
            whole: bytes | None = None
            if _inline(f):
                with expander.open(f) as stream:
                    whole = stream.read(f.size)
                sha256 = (hashes.known(f) or hashlib.sha256(whole).hexdigest()) if f.sha256 else ""
            else:
                sha256 = hashes.of(f) if f.sha256 else ""
            if f.sha256 and sha256 != f.sha256:
                f.kind = FileKind.REJECTED
                f.reason = "the file changed on the way: its SHA-256 does not match the one sent"
                continue
            if whole is not None:
                head = whole[:HEAD_BYTES]
            else:
                with expander.open(f) as stream:
                    head = stream.read(HEAD_BYTES)
            archive = archive_kind(head)
            photo = image_kind(head)
            if archive:
                if depth >= MAX_ARCHIVE_DEPTH:
                    f.kind, f.reason = (
                        FileKind.SKIPPED,
                        "an archive inside an archive inside an archive (not unpacked)",
                    )
                    continue
                queue.extend((c, depth + 1) for c in expander.expand_archive(f, archive))
                continue
            if photo:
                queue.extend((c, depth + 1) for c in expander.convert_photo(f, photo))
                continue
            if whole is not None:
                inspection = inspect_instance(stream=io.BytesIO(whole), size=f.size, name=f.name)
            else:
                with expander.open(f) as stream:
                    inspection = inspect_instance(stream=stream, size=f.size, name=f.name)
            if (
                inspection.kind == "skipped"
                and "no DICM" in inspection.reason
                and not f.path.endswith(".wrapped.dcm")
            ):
                wrapped = expander.wrap(f)
                if wrapped:
                    queue.extend((c, depth) for c in wrapped)
                    continue
                inspection = Inspection("skipped", sniff_reason(head))
            if inspection.kind == "dicom" and inspection.info is not None:
                uid = inspection.info.sop_instance_uid
                if uid in seen:
                    f.kind = FileKind.SKIPPED
                    f.reason = (
                        f"the same image (SOP Instance UID) is also in {seen[uid]}; sent once"
                    )
                    continue
                seen[uid] = f.name
                _apply_info(f, inspection.info)
                infos.append(inspection.info)
            else:
                f.kind = FileKind.SKIPPED if inspection.kind == "skipped" else FileKind.REJECTED
                f.reason = inspection.reason[:500]
        expander.storage_ensure()
    except HashingStopped:
        # Only the heartbeat's ``lost`` stops a hash while this loop runs.
        logger.info("upload %s: lease lost while hashing; stopping", upload_id)
        return False
    except (DatabaseError, storage.StorageUnavailable):
        raise  # retried by the task; its message names no file
    except Exception as exc:
        expander.storage_ensure()  # an outage some library turned into its own error
        if not lease_renew(upload_id=upload_id, token=token, state=UploadState.PROCESSING):
            # Cancelled (its files were deleted under us) or taken over: nothing to report.
            logger.info("upload %s: stopped while processing; not ours any more", upload_id)
            return False
        position = current.position if current is not None else -1
        raise ProcessingCrashed(
            f"upload {upload_id}: checking file {position} failed ({type(exc).__name__})"
        ).with_traceback(exc.__traceback__) from None
    finally:
        hashes.close()
    if heartbeat.lost.is_set():
        logger.info("upload %s: lease lost while processing; stopping", upload_id)
        return False
    files = manifest + expander.files
    studies = _studies_from(infos)
    with transaction.atomic():
        # Still ours? The UPDATE that says so keeps the upload's row locked until the
        # results are in: a worker trying to take over waits, then finds the lease renewed.
        if not lease_renew(upload_id=upload_id, token=token, state=UploadState.PROCESSING):
            logger.info("upload %s: lease lost before the results were written", upload_id)
            return False
        UploadFile.objects.bulk_create(expander.files, batch_size=500)
        # All of it is between "complete" and the first byte sent. Derived files
        # (unpacked, converted) were inserted just above with these values already.
        _checked_fields_save(manifest)
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
    if expander.unsafe is not None:
        _fail(
            upload_id=upload_id,
            token=token,
            code=expander.unsafe.code,
            message=expander.unsafe.message,
            hint=expander.unsafe.hint,
        )
        return False
    if expander.over_limit is not None:
        # The limits bound the whole upload: nothing of it is sent, partial or not.
        _fail(
            upload_id=upload_id,
            token=token,
            code=expander.over_limit.code,
            message=expander.over_limit.message,
            hint=expander.over_limit.hint,
        )
        return False
    if rejected and not session.allow_partial and expander.archive_error is not None:
        _fail(
            upload_id=upload_id,
            token=token,
            code=expander.archive_error.code,
            message=expander.archive_error.message,
            hint=expander.archive_error.hint,
        )
        return False
    if not infos:
        _fail(
            upload_id=upload_id,
            token=token,
            code="no_dicom_files",
            message="None of the files in this upload is a DICOM image that can be sent.",
            hint="Check that you picked the study's image files (not only a DICOMDIR or "
            "documents), then upload again.",
        )
        return False
    if rejected and not session.allow_partial:
        _fail(
            upload_id=upload_id,
            token=token,
            code="invalid_files",
            message=f"{rejected} of {len(files)} files are damaged or not valid DICOM, so "
            "nothing was sent to the PACS.",
            hint="The damaged files are listed with the reason for each. Copy them again "
            "from the source and send the study again, or send the other files without them.",
        )
        return False
    mismatches = _mismatch_warnings(metadata=session.metadata, studies=studies)
    warnings = list(mismatches) + expander.warnings + _completeness_warnings(studies)
    if rejected:
        warnings.append(f"{rejected} damaged files are not sent (partial upload allowed).")
    # The clinic's note and service level, added to each study for the reader in the PACS
    # (uploads/clinical_object.py): sent with the study, the received images unchanged.
    try:
        added = clinical_objects_make(
            session=session,
            instances=files,
            open_instance=expander.open,
            first_position=expander.next_position,
        )
    except ClinicalObjectFailed as exc:
        expander.storage_ensure()  # not made because the storage was down: wait for it
        logger.error("%s; the study is sent without it", exc)
        added = []
        warnings.append(
            "The clinical note and service level could not be added to the study in the "
            "PACS. Tell the reading radiologist about them another way, for example by phone."
        )
    needs_person = bool(mismatches)
    next_state = UploadState.NEEDS_CONFIRMATION if needs_person else UploadState.FORWARDING
    expander.storage_ensure()
    # Still ours? A cancelled upload's bytes were deleted: publishing would put derived
    # files (patient data) back into the bucket for nobody.
    if not lease_renew(upload_id=upload_id, token=token, state=UploadState.PROCESSING):
        logger.info("upload %s: lease lost before its derived files were published", upload_id)
        return False
    # Before the upload moves on: forwarding may run on another node (S3 mode).
    storage.work_publish(upload_id=upload_id)
    with transaction.atomic():
        moved = transitions.upload_checked(
            upload_id=upload_id, token=token, needs_confirmation=needs_person, warnings=warnings
        )
        if moved and added:
            UploadFile.objects.bulk_create(added)
            # Made again with the same UIDs when an upload is processed again.
            RelayAddedObject.objects.bulk_create(
                [
                    RelayAddedObject(
                        sop_instance_uid=f.sop_instance_uid,
                        study_instance_uid=f.study_instance_uid,
                    )
                    for f in added
                ],
                ignore_conflicts=True,
            )
        if moved and next_state == UploadState.NEEDS_CONFIRMATION:
            transaction.on_commit(
                lambda: events.emit(events.UPLOAD_NEEDS_CONFIRMATION, upload_id=str(upload_id))
            )
    if not moved:
        _published_for_nobody(upload_id=upload_id)
    return moved and next_state == UploadState.FORWARDING


def _published_for_nobody(*, upload_id: uuid.UUID) -> None:
    """The upload left processing while its derived files were being published. If it was
    cancelled or its bytes deleted (their deletion may have run before the publish), delete
    what the publish put back; a worker that took over keeps its own files (it published
    them after its work_reset). On failure the orphan sweep removes them."""
    row = UploadSession.objects.filter(pk=upload_id).values_list("state", "files_deleted").first()
    if row is None or row[0] == UploadState.CANCELLED or row[1]:
        storage.stream_delete(upload_id=upload_id)
        logger.info("upload %s: removed the derived files of a cancelled upload", upload_id)
