"""Checking files' SHA-256 while the rest of the upload is still arriving.

Processing checks every manifest file against the SHA-256 the client sent before anything
goes to the PACS. For a 1 GB study that check is most of processing's own time (about 1 s
of CPU here, bench/RESULTS.md), and it sat between the client's ``complete`` and the first
STOW-RS batch. The bytes of most files are stored long before ``complete``, so the worker
hashes each file once all of its chunks are stored, and processing takes that result
instead of hashing the file again.

- The web side only asks: the chunk that carries the upload's stored bytes across a
  multiple of PREHASH_EVERY_BYTES queues ``upload_prehash_task`` (one message per 64 MiB,
  sent without retries; a failed send is logged, and processing then hashes as before).
  An upload smaller than that is hashed by processing only.
- One task per upload at a time (``prehash_until``, a lease on the upload's row), so an
  upload's hashing holds at most one worker slot; a task queued while another runs ends
  at once, and the next one takes what became complete meanwhile. Each file is hashed at
  most once: the task claims the rows of the files it will hash (``prehash_chunks`` set
  to a claim of its own) first.
- The result counts only while it proves something: it is kept only when it equals the
  SHA-256 the client sent (a damaged file is left for processing to reject, with the
  reason it gives), together with a fingerprint of the MD5 claims of the chunks the file
  lies in. Stored chunks are never rewritten with other bytes (a claim keeps its first
  MD5), but recovery may forget a chunk that a crash lost and a new claim take its place:
  processing accepts the result only when the fingerprint still matches the claims. A
  restore forgets every result (``recovery``), since the bytes on disk may not be the
  ones hashed.
- Hashing runs in a thread whose nice value is PREHASH_NICE above the worker's, so where
  it shares the CPU scheduler's group with the web processes (``manage.py serve``: one
  session) receiving chunks comes first; separate containers are scheduled apart. It
  stops as soon as the upload leaves ``receiving`` (``complete`` arrived: processing
  hashes what is left; cancelled; removed).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import timedelta

from celery import current_app
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from ..models import UploadChunk, UploadFile, UploadSession, UploadState
from . import hashing

logger = logging.getLogger(__name__)

PREHASH_TASK = "uploads.tasks.upload_prehash_task"
# One message per this many stored bytes: a few per GB, so the broker and the chunk path
# hardly notice, and the files of the last stretch before ``complete`` (at most this much,
# plus files whose chunks arrive out of order) are hashed by processing as before.
PREHASH_EVERY_BYTES = 64 * 1024 * 1024
# The hashing thread's nice value above the worker's own: on a machine busy receiving
# chunks the hashing takes what receiving leaves (raising one's own nice value needs no
# privilege).
PREHASH_NICE = 10
# How often hashing checks that the upload is still receiving (one primary-key read), and
# saves what it has: processing starting meanwhile finds the results saved until then,
# and the upload's task gives its worker slot back about this soon after ``complete``.
STATE_CHECK_SECONDS = 0.2
# Once the upload left receiving, how long to wait for a read under way to end before
# giving the worker slot back anyway (a storage read that hangs keeps only its thread).
STOP_GRACE_SECONDS = 2.0
# The per-upload lease: longer than hashing any one step takes even on a slow disk; a
# worker that died holding it only costs the upload its hashing ahead for this long.
LEASE = timedelta(minutes=5)
# The start of ``prehash_chunks`` of a file a task claimed and has no usable result for
# (still hashing, damaged, stopped, or the worker died): processing hashes it itself.
CLAIMED = "claimed"
# Files claimed per UPDATE: ``pk IN`` lists stay well below SQLite's variable limit.
CLAIM_BATCH = 500
# Results saved per transaction at most (also saved every STATE_CHECK_SECONDS).
SAVE_BATCH = 500


def prehash_due(*, stored_before: int, stored_after: int) -> bool:
    """Whether the chunk that moved the upload's stored bytes from ``stored_before`` to
    ``stored_after`` crossed a multiple of PREHASH_EVERY_BYTES (exactly one chunk does)."""
    return stored_after // PREHASH_EVERY_BYTES > stored_before // PREHASH_EVERY_BYTES


# After a send failed having waited at least SEND_PAUSE_AFTER_WAIT_SECONDS, this process
# queues no hashing ahead for SEND_PAUSE_SECONDS: a broker that is down costs each send a
# wait, which every chunk thread crossing a multiple of PREHASH_EVERY_BYTES would otherwise
# pay (about 6 s when Redis refuses connections, kombu trying to connect again within
# Celery's 4 s broker_connection_timeout; 4-5 s when it does not answer, bounded by
# REDIS_SOCKET_TIMEOUT_SECONDS). An error raised at once pauses nothing. The deadline is a
# float shared by the chunk threads (its reads and writes are atomic); sends already under
# way when the first one fails still wait, at most one per chunk thread.
SEND_PAUSE_SECONDS = 30.0
SEND_PAUSE_AFTER_WAIT_SECONDS = 1.0
_send_paused_until = 0.0


def prehash_request(*, upload_id: uuid.UUID) -> None:
    """Queue hashing of the upload's fully stored files (see the module docstring). Sent at
    once and without retries; a failed send is logged and not raised (the chunk is stored;
    processing hashes the files), and pauses this process's sends for SEND_PAUSE_SECONDS."""
    global _send_paused_until
    if time.monotonic() < _send_paused_until:
        logger.debug("hashing ahead paused after a failed send; upload %s skipped", upload_id)
        return
    began = time.monotonic()
    try:
        current_app.send_task(PREHASH_TASK, args=[str(upload_id)], retry=False)
    except Exception:
        waited = time.monotonic() - began
        paused = waited >= SEND_PAUSE_AFTER_WAIT_SECONDS
        if paused:
            _send_paused_until = time.monotonic() + SEND_PAUSE_SECONDS
        logger.warning(
            "could not queue hashing ahead for upload %s after %.1f s; processing will hash "
            "its files%s",
            upload_id,
            waited,
            f" (none is queued from this process for {SEND_PAUSE_SECONDS:.0f} s)" if paused else "",
            exc_info=True,
        )


def chunks_fingerprint(
    *, offset: int, size: int, chunk_size: int, md5_of: Mapping[int, str]
) -> str | None:
    """The fingerprint of the stored chunks the bytes ``[offset, offset + size)`` lie in:
    the SHA-256 of their indexes and claimed MD5s; None while any of them is not stored."""
    digest = hashlib.sha256()
    for index in range(offset // chunk_size, (offset + size - 1) // chunk_size + 1):
        md5 = md5_of.get(index)
        if md5 is None:
            return None
        digest.update(f"{index}:{md5};".encode())
    return digest.hexdigest()


def _stored_md5s(*, session: UploadSession, from_index: int = 0) -> dict[int, str]:
    return dict(
        UploadChunk.objects.filter(session=session, stored=True, index__gte=from_index).values_list(
            "index", "md5"
        )
    )


def prehashed_sha256s(*, session: UploadSession, files: Iterable[UploadFile]) -> dict[int, str]:
    """The SHA-256 of each of ``files`` (by pk) whose hash taken during the upload still
    holds: it equals the one the client sent and the file's chunks carry the claims it was
    taken over. For processing, once every chunk is stored."""
    candidates = [f for f in files if f.sha256 and f.size and f.prehash_sha256 == f.sha256]
    if not candidates:
        return {}
    md5_of = _stored_md5s(session=session)
    return {
        f.pk: f.prehash_sha256
        for f in candidates
        if chunks_fingerprint(
            offset=f.offset, size=f.size, chunk_size=session.chunk_size, md5_of=md5_of
        )
        == f.prehash_chunks
    }


def prehash_forget(*, upload_id: uuid.UUID) -> int:
    """Forget every result of hashing ahead for the upload (after a restore, the bytes on
    disk may not be those hashed); the number of files whose result went."""
    return (
        UploadFile.objects.filter(session_id=upload_id)
        .exclude(prehash_chunks="", prehash_sha256="")
        .update(prehash_sha256="", prehash_chunks="")
    )


def _lower_priority() -> None:
    try:
        # On Linux a thread has a nice value of its own: this lowers this thread only.
        tid = threading.get_native_id()
        os.setpriority(
            os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + PREHASH_NICE)
        )
    except (AttributeError, OSError):  # not Linux, or not allowed: hash at normal priority
        pass


class _Receiving:
    """Whether the upload is still ``receiving``, asked at most every STATE_CHECK_SECONDS;
    ``stopped`` is set (for the hashing thread) once it is not."""

    def __init__(self, upload_id: uuid.UUID) -> None:
        self.upload_id = upload_id
        self.stopped = threading.Event()
        self._asked_at = time.monotonic()

    def check(self) -> bool:
        now = time.monotonic()
        if not self.stopped.is_set() and now - self._asked_at >= STATE_CHECK_SECONDS:
            self._asked_at = now
            if not UploadSession.objects.filter(
                pk=self.upload_id, state=UploadState.RECEIVING
            ).exists():
                self.stopped.set()
        return not self.stopped.is_set()


def _hash_while_receiving(
    *, pool: ThreadPoolExecutor, receiving: _Receiving, f: UploadFile
) -> str | None:
    """The file's SHA-256 hashed in ``pool``; None when the upload left ``receiving`` (after
    at most STOP_GRACE_SECONDS for a read under way) or the bytes could not be read
    (processing then hashes the file itself)."""
    future = pool.submit(
        hashing.sha256_of, upload_id=receiving.upload_id, f=f, stop=receiving.stopped.is_set
    )
    stopped_at: float | None = None
    while True:
        try:
            return future.result(timeout=STATE_CHECK_SECONDS)
        except FutureTimeout:
            if receiving.check():
                continue
            stopped_at = stopped_at or time.monotonic()
            if time.monotonic() - stopped_at >= STOP_GRACE_SECONDS:
                return None
        except hashing.HashingStopped:
            return None
        except OSError as exc:  # storage trouble or bytes removed: processing will say
            logger.info(
                "upload %s: file %s not hashed ahead: %s", receiving.upload_id, f.position, exc
            )
            return None


def _lease_take(*, upload_id: uuid.UUID) -> bool:
    now = timezone.now()
    return bool(
        UploadSession.objects.filter(pk=upload_id, state=UploadState.RECEIVING)
        .filter(Q(prehash_until__isnull=True) | Q(prehash_until__lt=now))
        .update(prehash_until=now + LEASE)
    )


def _lease_release(*, upload_id: uuid.UUID) -> None:
    UploadSession.objects.filter(pk=upload_id, prehash_until__isnull=False).update(
        prehash_until=None
    )


def _claim(*, pks: list[int], token: str) -> set[int]:
    """Claim those of the files ``pks`` no task has taken; the pks this call claimed."""
    claimed: set[int] = set()
    for start in range(0, len(pks), CLAIM_BATCH):
        batch = pks[start : start + CLAIM_BATCH]
        UploadFile.objects.filter(pk__in=batch, prehash_chunks="").update(prehash_chunks=token)
        claimed.update(
            UploadFile.objects.filter(pk__in=batch, prehash_chunks=token).values_list(
                "pk", flat=True
            )
        )
    return claimed


def _results_save(*, results: list[tuple[int, str, str]], token: str) -> None:
    """Write (pk, SHA-256, fingerprint) of files this task claimed, in one transaction
    (on SQLite, one write lock taken beside the chunk path's, not one per file)."""
    if not results:
        return
    with transaction.atomic():
        for pk, digest, fingerprint in results:
            UploadFile.objects.filter(pk=pk, prehash_chunks=token).update(
                prehash_sha256=digest, prehash_chunks=fingerprint
            )
    results.clear()


def _ready_files(*, session: UploadSession) -> list[tuple[UploadFile, str]]:
    """The manifest files with a SHA-256 sent that no task took yet and whose chunks are
    all stored, in stream order, each with its chunks' fingerprint."""
    files = list(
        UploadFile.objects.filter(
            session=session, parent__isnull=True, prehash_chunks="", size__gt=0
        )
        .exclude(sha256="")
        .order_by("offset")
    )
    if not files:
        return []
    md5_of = _stored_md5s(session=session, from_index=files[0].offset // session.chunk_size)
    ready = []
    for f in files:
        fingerprint = chunks_fingerprint(
            offset=f.offset, size=f.size, chunk_size=session.chunk_size, md5_of=md5_of
        )
        if fingerprint is not None:
            ready.append((f, fingerprint))
    return ready


def upload_prehash(*, upload_id: uuid.UUID) -> int:
    """Hash the upload's manifest files whose chunks are all stored and that no task has
    taken yet, while the upload is receiving and no other task hashes it; the number of
    results kept. Safe to run twice and beside processing (see the module docstring)."""
    if not _lease_take(upload_id=upload_id):
        return 0
    try:
        return _prehash(upload_id=upload_id)
    finally:
        _lease_release(upload_id=upload_id)


def _prehash(*, upload_id: uuid.UUID) -> int:
    session = UploadSession.objects.get(pk=upload_id)
    ready = _ready_files(session=session)
    token = f"{CLAIMED}:{uuid.uuid4().hex[:16]}"
    mine = _claim(pks=[f.pk for f, _ in ready], token=token)
    receiving = _Receiving(upload_id)
    results: list[tuple[int, str, str]] = []
    saved_at = time.monotonic()
    kept = 0
    pool = ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="prehash", initializer=_lower_priority
    )
    try:
        for f, fingerprint in ready:
            if f.pk not in mine:
                continue
            if not receiving.check():
                break
            digest = _hash_while_receiving(pool=pool, receiving=receiving, f=f)
            if digest is None or digest != f.sha256:
                continue  # damaged or not read: left claimed, processing decides
            results.append((f.pk, digest, fingerprint))
            kept += 1
            if len(results) >= SAVE_BATCH or time.monotonic() - saved_at >= STATE_CHECK_SECONDS:
                _results_save(results=results, token=token)
                saved_at = time.monotonic()
    finally:
        _results_save(results=results, token=token)
        # Not waiting: a read that hangs keeps its thread, not this worker slot.
        pool.shutdown(wait=False, cancel_futures=True)
    return kept
