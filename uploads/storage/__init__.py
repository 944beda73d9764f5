"""Where upload bytes live: the only code that touches them.

Two backends behind one set of functions, picked by ``UPLOAD_STORAGE`` at every call:

- ``local`` (the embedded default, ``uploads/storage/local.py``): one sparse assembly file
  per upload under ``UPLOAD_STORAGE_DIR``;
- ``s3`` (``uploads/storage/s3.py``): one object per chunk in an S3-compatible bucket, so
  that any web node takes any chunk and any worker reads any upload.

Callers never know which: every function here has the same contract in both (see each
backend's docstrings for what differs in cost). Derived files (unpacked, converted,
re-wrapped) are written by processing into ``work_reset``'s folder on this node's disk;
``work_publish`` makes them readable from every node before the upload moves on, and
``work_scope`` removes what the S3 backend kept on this node's disk.

Errors: a call that cannot reach the storage (in S3 mode: a connection error, a timeout,
HTTP 5xx, throttling, refused credentials, a missing bucket) raises
``StorageUnavailable`` (an ``OSError``), also from a reader in the middle of a file. It
says nothing about the upload: the same work succeeds once the storage is back, so
processing and forwarding wait and retry instead of failing the upload. A reader also
keeps the error it raised in ``storage_error`` (see ``storage_failure``), so that a
caller can tell an outage from damaged bytes even where a file parser swallowed it.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO

from django.conf import settings

from . import local
from .local import BLOCK_SIZE, CompleteLockBusy
from .streams import StoredChunk

__all__ = [
    "BLOCK_SIZE",
    "StorageUnavailable",
    "StoredChunk",
    "chunks_present",
    "free_bytes",
    "multipart_uploads_abort",
    "open_member",
    "open_range",
    "s3_bucket",
    "s3_client",
    "storage_check",
    "storage_failure",
    "storage_root",
    "stored_uploads",
    "stream_create",
    "stream_delete",
    "stream_exists",
    "CompleteLockBusy",
    "stream_complete_lock",
    "stream_flush",
    "stream_removed_on_error",
    "stream_write",
    "stream_write_recreates",
    "stream_writes_durable",
    "work_dir",
    "work_publish",
    "work_reset",
    "work_scope",
    "writes_maybe_lost",
]

BACKENDS = ("local", "s3")


class StorageUnavailable(OSError):
    """The upload storage could not be reached or refused to work just now (S3: a
    connection error or timeout after botocore's retries, HTTP 5xx, throttling, refused
    credentials, a missing bucket). Retryable: nothing is known to be wrong with the
    upload. Its message names the operation and the S3 error code, never a work path."""


def storage_failure(stream: object) -> StorageUnavailable | None:
    """The StorageUnavailable a reader returned by ``open_range``/``open_member`` raised,
    if it did: file parsers (pydicom, Pillow, libarchive) turn any read error into "this
    file is damaged", which an outage must never become."""
    raw = getattr(stream, "raw", stream)
    error = getattr(raw, "storage_error", None)
    return error if isinstance(error, StorageUnavailable) else None


def backend_name() -> str:
    """``"local"`` or ``"s3"`` (``UPLOAD_STORAGE``; anything else is refused by the
    start-up check ``uploads.checks``)."""
    return str(getattr(settings, "UPLOAD_STORAGE", "local") or "local").lower()


def _backend() -> ModuleType:
    if backend_name() == "s3":
        from . import s3  # boto3 is imported only where S3 is used

        return s3
    return local


def storage_root() -> Path:
    """This node's folder under ``UPLOAD_STORAGE_DIR`` (in S3 mode: processing scratch only)."""
    return local.storage_root()


def free_bytes() -> int:
    """Bytes that uploads may still fill. The S3 backend answers ``s3.UNBOUNDED_FREE_BYTES``
    (a bucket has no free space to speak of), so that the disk-full check of init passes."""
    result: int = _backend().free_bytes()
    return result


def stream_create(*, upload_id: uuid.UUID, size: int) -> None:
    """Prepare storage for an upload of ``size`` bytes. Idempotent."""
    _backend().stream_create(upload_id=upload_id, size=size)


def stream_exists(*, upload_id: uuid.UUID) -> bool:
    """Whether anything of the upload is still stored."""
    return bool(_backend().stream_exists(upload_id=upload_id))


def chunks_present(
    *,
    upload_id: uuid.UUID,
    chunks: Mapping[int, StoredChunk],
    verify_offsets: Collection[int] = frozenset(),
) -> set[int]:
    """Which of ``chunks`` (by offset: chunks marked stored, with the size and MD5 their
    rows recorded) still have their bytes: after a restore, an upload's rows may name
    chunks whose bytes were never backed up, and a crash can leave a chunk marked stored
    whose write never reached the disk. Local disk: the assembly file reaches the chunk's
    end and the chunk's range is written (no hole in the sparse file, unless the chunk was
    all zeros); no bytes are read, except for a range with a hole and for the offsets in
    ``verify_offsets`` (those ``writes_maybe_lost`` names: read back and their MD5
    compared whatever the holes say). S3: the chunk's object is listed with the chunk's
    size (one LIST per 1,000 chunks; ``verify_offsets`` is not needed there, an
    acknowledged PUT being durable). Raises StorageUnavailable (S3), ``OSError`` when a
    read-back fails (local disk)."""
    found: set[int] = _backend().chunks_present(
        upload_id=upload_id, chunks=chunks, verify_offsets=verify_offsets
    )
    return found


def writes_maybe_lost(*, written_at: Mapping[int, datetime | None]) -> set[int]:
    """Of the chunks ``written_at`` (offset -> when its ``stream_write`` had returned, the
    row's ``received_at``), those a crash since may have lost in a way only a read-back
    finds, for ``chunks_present``'s ``verify_offsets``. Local disk: those written before
    this machine last booted (every one where the boot time is unknown); normally none,
    at no cost but two clock reads. S3: none."""
    if backend_name() == "s3":
        return set()
    return local.writes_maybe_lost(written_at=written_at)


def stream_write(*, upload_id: uuid.UUID, offset: int, data: bytes | memoryview) -> None:
    """Store one chunk's ``data`` at ``offset``. Idempotent for the same bytes; safe beside
    concurrent writers of any chunk, on any node. Durable once this returns in S3 mode and
    on local disk with ``UPLOAD_FSYNC=chunk``; otherwise (local disk, the default
    ``complete``) once ``stream_flush`` returned after it."""
    _backend().stream_write(upload_id=upload_id, offset=offset, data=data)


def stream_flush(*, upload_id: uuid.UUID) -> None:
    """Make every chunk ``stream_write`` stored so far durable. Local disk: one
    ``fdatasync`` of the assembly file and an ``fsync`` of its folders (nothing with
    ``UPLOAD_FSYNC=off``). S3: nothing, and no request (an acknowledged PUT is durable).
    Idempotent. Raises ``OSError`` when the disk refuses the flush."""
    _backend().stream_flush(upload_id=upload_id)


@contextmanager
def stream_complete_lock(*, upload_id: uuid.UUID) -> Iterator[None]:
    """Around one complete's flush, check and forget or take: a second complete of the
    same upload waits until the first's round is done, so that a flush error reported to
    the first only (Linux reports a failed write-back once) is acted on before another
    flush can succeed and take the upload. Local disk: an ``flock`` on the assembly file,
    shared by every process of the node (none when the file is missing). S3: nothing (no
    flush). Never hold a database lock or transaction around it. Raises CompleteLockBusy
    when another complete held it for ``local.COMPLETE_LOCK_WAIT_SECONDS``."""
    with _backend().stream_complete_lock(upload_id=upload_id):
        yield


def stream_writes_durable() -> bool:
    """Whether a chunk ``stream_write`` acknowledged is durable by itself, whatever
    happens next (S3: yes). Where it is not (local disk: the page cache until
    ``stream_flush``, and the assembly file's folder entry until then in every mode), a
    power cut can lose acknowledged chunks, so the caller flushes and checks them with
    ``chunks_present`` before it takes the upload."""
    return backend_name() == "s3"


def stream_write_recreates() -> bool:
    """Whether ``stream_write`` can store bytes of an upload whose stream was deleted
    meanwhile (S3: a PUT creates its key; local disk: the write needs the assembly file).
    Where it can, the caller checks after the write that the upload still wants them."""
    return backend_name() == "s3"


def open_range(*, upload_id: uuid.UUID, offset: int, size: int) -> BinaryIO:
    """A buffered, seekable reader of bytes ``[offset, offset+size)`` of the upload, in
    bounded memory whatever ``size``; the caller closes it. Raises StorageUnavailable
    (when opened or read), FileNotFoundError when the upload's bytes are gone."""
    reader: BinaryIO = _backend().open_range(upload_id=upload_id, offset=offset, size=size)
    return reader


def work_dir(*, upload_id: uuid.UUID) -> Path:
    """The folder on this node for files derived from the upload (unpacked, converted,
    re-wrapped)."""
    return local.work_dir(upload_id=upload_id)


def work_reset(*, upload_id: uuid.UUID) -> Path:
    """Empty the work folder (and, in S3 mode, the derived files published earlier): a
    re-run of processing starts clean. Returns the folder. Raises StorageUnavailable."""
    path: Path = _backend().work_reset(upload_id=upload_id)
    return path


def work_publish(*, upload_id: uuid.UUID) -> None:
    """Make the work folder's files readable by ``open_member`` on every node. Call it
    after the last derived file is written and before the upload moves on to forwarding.
    Local disk: nothing to do. Idempotent. Raises StorageUnavailable."""
    _backend().work_publish(upload_id=upload_id)


@contextmanager
def work_scope(*, upload_id: uuid.UUID) -> Iterator[None]:
    """Around one processing run: in S3 mode, whatever the run left in this node's work
    folder is removed when it ends (published or not, raised or not)."""
    with _backend().work_scope(upload_id=upload_id):
        yield


def open_member(*, upload_id: uuid.UUID, offset: int, size: int, path: str = "") -> BinaryIO:
    """A reader of one file of the upload: a derived file when ``path`` is set, else a
    byte range of the upload stream. The caller closes it."""
    reader: BinaryIO = _backend().open_member(
        upload_id=upload_id, offset=offset, size=size, path=path
    )
    return reader


def stream_delete(*, upload_id: uuid.UUID) -> bool:
    """Remove everything stored for the upload; True once nothing of it is left.

    Idempotent. Never raises for a storage failure: it is logged with the upload id only
    and returns False, so that the caller keeps the upload marked as holding bytes and
    retries.
    """
    return bool(_backend().stream_delete(upload_id=upload_id))


@contextmanager
def stream_removed_on_error(*, upload_id: uuid.UUID) -> Iterator[None]:
    """Remove the upload's bytes when the block raises, then let the exception go on.

    Around the transaction that creates an upload's row and its stream: should it roll
    back (or its commit fail) after the stream was created, nothing stays behind without
    an upload. An outer transaction rolled back later is not seen here; the orphan sweep
    removes those bytes.
    """
    try:
        yield
    except BaseException:
        stream_delete(upload_id=upload_id)
        raise


def stored_uploads() -> Iterator[tuple[uuid.UUID, datetime]]:
    """Each upload that has something stored, with when it last changed (for the orphan
    sweep). Anything not named by an upload id is left out."""
    yield from _backend().stored_uploads()


def multipart_uploads_abort(*, older_than: datetime) -> int:
    """Abort the unfinished multipart uploads started before ``older_than`` (S3 only: a
    worker killed while publishing a large derived file leaves one); returns how many.
    Idempotent. Local disk has none: 0."""
    if backend_name() != "s3":
        return 0
    from . import s3

    return s3.multipart_uploads_abort(older_than=older_than)


def s3_client() -> Any:
    """The process's boto3 S3 client for the S3_* settings (shared with other stores of
    the same bucket, e.g. ``reports.store``). Imports boto3 only when called."""
    from . import s3

    return s3.client()


def s3_bucket() -> str:
    """``S3_BUCKET``. Upload bytes use only its ``uploads/`` prefix (and ``health/`` for
    probes): every other prefix is another store's and never swept here."""
    return str(settings.S3_BUCKET)


def storage_check() -> tuple[str, str]:
    """``("ok"|"failing", detail)``: can we write to the upload storage?"""
    result: tuple[str, str] = _backend().storage_check()
    return result
