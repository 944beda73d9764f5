"""Upload bytes in an S3-compatible bucket (``UPLOAD_STORAGE=s3``).

Layout, under the key prefix ``uploads/<upload id>/`` of ``S3_BUCKET``:

- ``stream``: an empty marker written at init (``stream_create``); its metadata holds the
  upload's size and its date tells the orphan sweep how old the upload is;
- ``chunks/<offset, 20 digits>``: one object per received chunk, written with one PUT
  before the chunk is acknowledged. S3 acknowledges a PUT only once the object is
  durable, and a PUT of a key replaces it whole, so a retried or concurrent duplicate
  of a chunk (same bytes, checked by ``chunk_store``) is harmless, any node takes any
  chunk in any order, and nothing of the upload stays on the node that took it. There
  are no multipart uploads for chunks, so neither S3's 5 MiB part minimum nor its
  10,000-part maximum applies, however often an upload is resumed;
- ``work/<sha256 of the work path>``: the files processing derived (unpacked archive
  entries, converted photos, re-wrapped DICOM, the clinical information object), put by
  ``work_publish`` before the upload leaves processing. The key is a digest because
  work paths hold archive entry names, which can name the patient; files over
  ``MULTIPART_THRESHOLD`` go up as multipart uploads (``MULTIPART_CHUNKSIZE`` parts,
  grown by boto3 to stay under 10,000 parts), aborted by boto3 on error and, after a
  crash, by the next ``work_reset``, by ``stream_delete`` and by
  ``multipart_uploads_abort`` (beat).

Reading a file of the manifest (``open_range``) finds its chunk objects from its offset
and the upload's chunk size (the size of chunk 0, asked once per process with a HEAD),
then streams ranged GETs: a window starts at ``MIN_WINDOW`` and grows ``WINDOW_GROWTH``
times per sequential GET up to ``MAX_WINDOW`` (never past a chunk object's end), so memory
is bounded by one buffer whatever the file size. A long read (hashing, forwarding) sends
the GET of its next window while it reads the current one (``READ_AHEAD_WINDOW``): the
wait for each window's first byte overlaps the reading of the window before.

S3 requests per chunk: receiving it is 1 PUT. Processing and forwarding read it back
with about one ranged GET per pass (a sequential read needs one GET per chunk object,
plus a few small ones at each file's start and at each seek); there are 2 to 3 passes
(SHA-256 check when the client sent one, DICOM inspection of the headers, forwarding).
Deleting it costs 1/1000 LIST and 1/1000 DeleteObjects. Per upload: 1 PUT at init,
1 HEAD per reading process, 1 LIST of multipart uploads at deletion. ``/health``: at most
1 HEAD of the bucket per HEALTH_CACHE_SECONDS per process, and a PUT and a DELETE per
HEALTH_WRITE_PROBE_SECONDS.

Errors: what says S3 cannot work just now (connection errors and timeouts after
botocore's MAX_ATTEMPTS, HTTP 5xx, UNAVAILABLE_CODES) is raised as
``StorageUnavailable``, other failures as ``OSError``, a missing object as
``FileNotFoundError``; messages name the operation and S3's error code only.

On this node's disk, S3 mode keeps only processing's scratch folder
(``<UPLOAD_STORAGE_DIR>/<id>/work``) for as long as one processing run lasts
(``work_scope``): archives are unpacked and photos converted with file APIs.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings

from relaypacs.errors import ApplicationError

from . import StorageUnavailable, local
from .streams import SeekableRaw, StoredChunk

logger = logging.getLogger(__name__)

KEY_PREFIX = "uploads/"
# Where backups go in the product's bucket by default (uploads.management.backups), and
# the age past which an unfinished multipart upload there belongs to no running backup.
BACKUP_PREFIX = "backups/"
BACKUP_UNFINISHED_AGE = timedelta(days=1)
# Health probes live outside KEY_PREFIX, so the orphan sweep never sees them.
PROBE_PREFIX = "health/"
# A bucket has no free space to speak of: what free_bytes answers, so that init's
# "enough free disk space" check (free - reserve < total) always passes in S3 mode.
UNBOUNDED_FREE_BYTES = 2**63 - 1
# Offsets in chunk keys: 20 digits hold any 64-bit offset, so keys sort by offset.
OFFSET_DIGITS = 20
# Ranged GETs: the first after an open or a seek asks for one buffer (a header read often
# needs no more), each sequential one WINDOW_GROWTH times more, up to MAX_WINDOW: few
# requests for a long read, little transferred for a short one.
MIN_WINDOW = 64 * 1024
WINDOW_GROWTH = 4
MAX_WINDOW = 8 * 1024 * 1024
# A reader that reads on in windows of at least READ_AHEAD_WINDOW, or in blocks larger
# than its buffer (hashing, forwarding: 1 MiB), sends the GET of its next window while
# it reads the current one: with one object per 1 MiB chunk a 1 GB read is about 1,000
# GETs, and a round trip each adds up (20 ms each is 20 s). A header read sends nothing
# ahead. One GET ahead per reader, in a pool of READ_AHEAD_THREADS per process (readers
# of two worker slots and a web process's thread pool); a reader that seeks or closes
# leaves at most one window unread.
READ_AHEAD_WINDOW = 1024 * 1024
READ_AHEAD_THREADS = 8
# A reader leaving a response with at most this much unread drains it, so the connection
# goes back to the pool; with more unread, closing (a new connection) is cheaper.
DRAIN_BYTES = 64 * 1024
# A read that fails mid-stream (a reset connection) is resumed where it stopped this many
# times before the error goes to the caller; botocore already retries each request.
READ_ATTEMPTS = 3
READ_BUFFER = 64 * 1024
# Derived files above this go up as multipart uploads in parts of this size (boto3 grows
# the parts for files over 10,000 parts of it); both well above S3's 5 MiB part minimum.
MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNKSIZE = 64 * 1024 * 1024
# How many chunk sizes a process remembers (one per upload it read recently).
CHUNK_SIZE_CACHE = 1024
# S3 DeleteObjects takes at most 1,000 keys.
DELETE_BATCH = 1000
# Attempts per S3 request, the first included (botocore's standard retry mode:
# exponential backoff with jitter, up to about 15 s in all): rides out a dropped connection or a throttled second; an
# outage longer than that is the caller's to wait out (StorageUnavailable).
MAX_ATTEMPTS = 5
# Errors that say the storage cannot work just now rather than that the request is wrong:
# throttling and S3's own transient errors (besides every HTTP 5xx), and refused
# credentials or a missing bucket, which the operator fixes without the upload changing.
UNAVAILABLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequests",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "ServiceUnavailable",
        "InternalError",
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "NoSuchBucket",
    }
)
# /health in S3 mode: a HEAD of the bucket at most this often per process (the answer in
# between is the last one, as for the PACS probes), a write probe (PUT and DELETE) at
# most every HEALTH_WRITE_PROBE_SECONDS, each with one attempt and short timeouts, so
# that a load balancer polling /health never waits a minute nor costs a PUT per poll.
HEALTH_CACHE_SECONDS = 30.0
HEALTH_WRITE_PROBE_SECONDS = 300.0
HEALTH_CONNECT_TIMEOUT = 2
HEALTH_READ_TIMEOUT = 3

_clients: dict[tuple[Any, ...], Any] = {}
_clients_lock = threading.Lock()
_chunk_sizes: OrderedDict[uuid.UUID, int] = OrderedDict()
_chunk_sizes_lock = threading.Lock()
# Uploads whose derived files this process is writing right now (between work_reset and
# work_publish): open_member reads those from the scratch folder, all others from the
# bucket. In memory on purpose: a scratch folder left by a killed process is never read.
_scratch_active: set[uuid.UUID] = set()
_read_ahead_pools: dict[int, ThreadPoolExecutor] = {}


def client(*, probe: bool = False) -> Any:
    """The S3 client for the current settings (one per process: boto3 clients are
    thread-safe, not fork-safe). Credentials are S3_ACCESS_KEY_ID/S3_SECRET_ACCESS_KEY
    when set, else boto3's default chain (AWS_* variables, shared config, instance role).
    ``probe``: the health check's client, one attempt per request and short timeouts."""
    key = (
        os.getpid(),
        probe,
        MAX_ATTEMPTS,
        settings.S3_ENDPOINT_URL,
        settings.S3_REGION,
        settings.S3_ACCESS_KEY_ID,
        settings.S3_SECRET_ACCESS_KEY,
    )
    with _clients_lock:
        found = _clients.get(key)
        if found is None:
            config = Config(
                retries={"total_max_attempts": 1 if probe else MAX_ATTEMPTS, "mode": "standard"},
                connect_timeout=HEALTH_CONNECT_TIMEOUT if probe else 10,
                read_timeout=HEALTH_READ_TIMEOUT if probe else 60,
                # Chunk requests run in a thread pool per web process, reads in workers.
                max_pool_connections=32,
                # A custom endpoint (MinIO, moto, Ceph) names buckets in the path.
                s3={"addressing_style": "path"} if settings.S3_ENDPOINT_URL else None,
            )
            found = boto3.session.Session().client(
                "s3",
                endpoint_url=settings.S3_ENDPOINT_URL or None,
                region_name=settings.S3_REGION or None,
                aws_access_key_id=settings.S3_ACCESS_KEY_ID or None,
                aws_secret_access_key=settings.S3_SECRET_ACCESS_KEY or None,
                config=config,
            )
            # Settings changed (tests) or a fork: the old ones are stale.
            for stale in [k for k in _clients if k[0] != key[0] or k[3:] != key[3:]]:
                del _clients[stale]
            _clients[key] = found
        return found


def _bucket() -> str:
    return str(settings.S3_BUCKET)


def _upload_prefix(upload_id: uuid.UUID) -> str:
    return f"{KEY_PREFIX}{upload_id}/"


def _marker_key(upload_id: uuid.UUID) -> str:
    return f"{_upload_prefix(upload_id)}stream"


def _chunk_key(upload_id: uuid.UUID, offset: int) -> str:
    return f"{_upload_prefix(upload_id)}chunks/{offset:0{OFFSET_DIGITS}d}"


def _work_prefix(upload_id: uuid.UUID) -> str:
    return f"{_upload_prefix(upload_id)}work/"


def _work_key(upload_id: uuid.UUID, path: str) -> str:
    return _work_prefix(upload_id) + hashlib.sha256(path.encode()).hexdigest()


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "ClientError"))
    return type(exc).__name__


def _is_missing(exc: ClientError) -> bool:
    """The object is not there (a missing bucket is an outage, see UNAVAILABLE_CODES)."""
    return _error_code(exc) in {"404", "NoSuchKey", "NotFound"}


def _is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the storage cannot work just now (see StorageUnavailable)."""
    if isinstance(exc, S3UploadFailedError):
        # boto3 raises it while handling the ClientError that says why.
        cause = exc.__cause__ or exc.__context__
        return cause is None or _is_outage(cause)
    if isinstance(exc, ClientError):
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return status >= 500 or status in (408, 429) or _error_code(exc) in UNAVAILABLE_CODES
    return isinstance(exc, (BotoCoreError, StorageUnavailable))


def _storage_error(what: str, exc: BaseException) -> OSError:
    """``exc`` of an S3 call as the error the backend raises: StorageUnavailable for an
    outage, else an OSError. Either names ``what`` and the S3 error code only (boto3's own
    messages name keys and local paths, which hold archive entry names)."""
    if isinstance(exc, StorageUnavailable):
        return exc
    code = "S3UploadFailedError" if isinstance(exc, S3UploadFailedError) else _error_code(exc)
    if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, ClientError):
        code = _error_code(exc.__context__)
    message = f"{what}: S3 request failed ({code})"
    if _is_outage(exc):
        return StorageUnavailable(message)
    return OSError(message)


def bucket_problem() -> str | None:
    """Why uploads cannot be stored in the configured bucket, or None when they can.

    One HEAD request. Used at start-up (``uploads.checks``): a missing bucket is named.
    """
    bucket = _bucket()
    if not bucket:
        return "UPLOAD_STORAGE is s3 but S3_BUCKET is not set."
    where = settings.S3_ENDPOINT_URL or "AWS S3"
    try:
        client().head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = _error_code(exc)
        if code in {"404", "NoSuchBucket", "NotFound"}:
            return f"The S3 bucket '{bucket}' does not exist at {where}."
        if code in {"403", "AccessDenied"}:
            return f"Access to the S3 bucket '{bucket}' at {where} was refused ({code})."
        return f"The S3 bucket '{bucket}' at {where} could not be checked ({code})."
    except BotoCoreError as exc:
        return f"The S3 bucket '{bucket}' at {where} could not be reached ({_error_code(exc)})."
    return None


def free_bytes() -> int:
    """Not applicable to a bucket: ``UNBOUNDED_FREE_BYTES``, which passes every
    "enough free space" check."""
    return UNBOUNDED_FREE_BYTES


def stream_create(*, upload_id: uuid.UUID, size: int) -> None:
    """Put the upload's marker object (1 PUT). Idempotent. Raises ApplicationError (503)
    when the bucket cannot be written."""
    try:
        client().put_object(
            Bucket=_bucket(), Key=_marker_key(upload_id), Body=b"", Metadata={"size": str(size)}
        )
    except (ClientError, BotoCoreError) as exc:
        raise _unavailable(upload_id, "prepare", exc) from None


# What a client that honours Retry-After waits after botocore's own retries (about 15 s)
# found the bucket unreachable: the minute the message asks for.
S3_RETRY_AFTER_SECONDS = 60


def _unavailable(upload_id: uuid.UUID, action: str, exc: Exception) -> ApplicationError:
    logger.error("S3: could not %s upload %s (%s)", action, upload_id, _error_code(exc))
    return ApplicationError(
        "storage_unavailable",
        "The server could not reach its upload storage just now, so nothing was stored.",
        "Try again in a minute; tell your RelayPACS administrator if this keeps happening.",
        status_code=503,
        retry_after=S3_RETRY_AFTER_SECONDS,
    )


def stream_exists(*, upload_id: uuid.UUID) -> bool:
    """Whether any object, unfinished multipart upload or scratch folder on this node of
    the upload is left (2 LISTs)."""
    listed = client().list_objects_v2(Bucket=_bucket(), Prefix=_upload_prefix(upload_id), MaxKeys=1)
    if listed.get("KeyCount", 0):
        return True
    uploads = client().list_multipart_uploads(
        Bucket=_bucket(), Prefix=_upload_prefix(upload_id), MaxUploads=1
    )
    return bool(uploads.get("Uploads")) or local.work_dir(upload_id=upload_id).parent.exists()


def chunks_present(
    *,
    upload_id: uuid.UUID,
    chunks: Mapping[int, StoredChunk],
    verify_offsets: Collection[int] = frozenset(),
) -> set[int]:
    """The offsets of ``chunks`` whose objects are in the bucket with the chunk's size
    (1 LIST per 1,000 chunks). The ETag is not compared with the MD5: with SSE-KMS or
    SSE-C it is not one. ``verify_offsets`` changes nothing: an acknowledged PUT is
    durable, so no crash can leave a listed object with other bytes."""
    prefix = f"{_upload_prefix(upload_id)}chunks/"
    found: set[int] = set()
    try:
        pages = client().get_paginator("list_objects_v2").paginate(Bucket=_bucket(), Prefix=prefix)
        for page in pages:
            for item in page.get("Contents", []):
                tail = str(item["Key"])[len(prefix) :]
                if not tail.isdigit():
                    continue
                chunk = chunks.get(int(tail))
                if chunk is not None and int(item.get("Size", -1)) == chunk.size:
                    found.add(int(tail))
    except (ClientError, BotoCoreError) as exc:
        raise _storage_error(f"list the chunks of upload {upload_id}", exc) from None
    return found


def stream_write(*, upload_id: uuid.UUID, offset: int, data: bytes | memoryview) -> None:
    """Put one chunk as its own object (1 PUT), durable in the bucket when this returns.

    ``offset`` must be a chunk boundary and ``data`` the whole chunk, as ``chunk_store``
    writes them: readers find chunk objects by offset and chunk size. Idempotent (same
    key, same bytes). Raises ApplicationError (503) when S3 refuses or cannot be reached
    after botocore's retries; the chunk is then not acknowledged and the client resends.
    """
    body = _ViewBody(data) if isinstance(data, memoryview) else data
    try:
        client().put_object(Bucket=_bucket(), Key=_chunk_key(upload_id, offset), Body=body)
    except (ClientError, BotoCoreError) as exc:
        raise _unavailable(upload_id, "store a chunk of", exc) from None


def stream_flush(*, upload_id: uuid.UUID) -> None:
    """Nothing to do: S3 answers a PUT only once its object is durable, so every chunk
    ``stream_write`` acknowledged is already safe (and no request is made)."""


@contextmanager
def stream_complete_lock(*, upload_id: uuid.UUID) -> Iterator[None]:
    """Nothing to hold: there is no flush whose error one complete alone could see."""
    yield


class _ViewBody(SeekableRaw):
    """A seekable file over a memoryview, so that a chunk (up to 16 MiB) goes to
    ``put_object`` without a copy of it: botocore reads the body in blocks, once for its
    checksum and once for sending, seeking back in between."""

    def __init__(self, view: memoryview) -> None:
        self._view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
        self._size = len(self._view)
        self._pos = 0

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        with memoryview(buffer) as target, target.cast("B") as octets:
            count = max(0, min(len(octets), len(self._view) - self._pos))
            octets[:count] = self._view[self._pos : self._pos + count]
        self._pos += count
        return count

    def __len__(self) -> int:
        return len(self._view)


def _chunk_size(upload_id: uuid.UUID) -> int:
    """The upload's chunk size: the size of its chunk 0 (every chunk but the last has the
    chunk size; a one-chunk upload holds every range in chunk 0). One HEAD per process."""
    with _chunk_sizes_lock:
        known = _chunk_sizes.get(upload_id)
        if known is not None:
            _chunk_sizes.move_to_end(upload_id)
            return known
    try:
        head = client().head_object(Bucket=_bucket(), Key=_chunk_key(upload_id, 0))
    except ClientError as exc:
        if _is_missing(exc):
            raise FileNotFoundError(
                errno.ENOENT, f"upload {upload_id} has no chunk 0 in the bucket"
            ) from None
        raise _storage_error(f"upload {upload_id}: HEAD of chunk 0", exc) from None
    except BotoCoreError as exc:
        raise _storage_error(f"upload {upload_id}: HEAD of chunk 0", exc) from None
    size = int(head["ContentLength"])
    with _chunk_sizes_lock:
        _chunk_sizes[upload_id] = size
        while len(_chunk_sizes) > CHUNK_SIZE_CACHE:
            _chunk_sizes.popitem(last=False)
    return size


# Where a position of a reader's window is: (object key, offset in the object, bytes
# of the window left in that object from there).
Locator = Callable[[int], tuple[str, int, int]]


def _read_ahead_pool() -> ThreadPoolExecutor:
    """This process's read-ahead threads (made after a fork, never inherited)."""
    with _clients_lock:
        pool = _read_ahead_pools.get(os.getpid())
        if pool is None:
            _read_ahead_pools.clear()
            pool = ThreadPoolExecutor(READ_AHEAD_THREADS, thread_name_prefix="s3-read-ahead")
            _read_ahead_pools[os.getpid()] = pool
        return pool


def _discard(response: Future[Any] | None) -> None:
    """Drop a read-ahead response nobody will read: its GET is not sent if it is still
    queued (all READ_AHEAD_THREADS busy), else its body is closed once it has come."""

    def close(done: Future[Any]) -> None:
        try:
            done.result()["Body"].close()
        except Exception:  # noqa: BLE001,S110  (a failed read-ahead nobody waits for)
            pass

    if response is not None and not response.cancel():
        response.add_done_callback(close)


class _S3RangeRaw(SeekableRaw):
    """A read-only, seekable window of ``size`` bytes laid over one or more objects,
    streamed with ranged GETs into the caller's buffer (see the module docstring)."""

    def __init__(self, *, locate: Locator, size: int, name: str) -> None:
        self._client = client()
        self._bucket = _bucket()
        self._locate = locate
        self._size = size
        self._pos = 0
        self._body: Any = None
        self._body_pos = 0  # the window position the open body's next byte is at
        self._body_left = 0
        self._window = MIN_WINDOW
        self._sequential_at = -1  # where the last fully read response ended
        # The GET of the window after the open body, sent ahead: (future, position, length).
        self._ahead: tuple[Future[Any], int, int] | None = None
        self.name = name
        # The outage this reader raised, for callers whose parser swallowed it
        # (uploads.storage.storage_failure).
        self.storage_error: StorageUnavailable | None = None

    def _drop(self) -> None:
        body, self._body = self._body, None
        if body is None:
            return
        try:
            if 0 < self._body_left <= DRAIN_BYTES:
                body.read()
        except (BotoCoreError, OSError):
            pass
        finally:
            body.close()

    def _get(self, key: str, start: int, length: int) -> Any:
        return self._client.get_object(
            Bucket=self._bucket, Key=key, Range=f"bytes={start}-{start + length - 1}"
        )

    def _open(self, want: int) -> None:
        """Open the GET of the window at the position (the one sent ahead, if that is
        it); on a long read (see READ_AHEAD_WINDOW; ``want`` is the caller's read) send
        the GET of the following window."""
        self._drop()
        if self._pos == self._sequential_at:
            self._window = min(self._window * WINDOW_GROWTH, MAX_WINDOW)
        else:
            self._window = MIN_WINDOW
        ahead, self._ahead = self._ahead, None
        try:
            if ahead is not None and ahead[1] == self._pos:
                length = ahead[2]
                response = ahead[0].result()
            else:
                _discard(ahead[0] if ahead else None)
                key, start, left = self._locate(self._pos)
                length = min(self._window, left)
                response = self._get(key, start, length)
        except ClientError as exc:
            if _is_missing(exc):
                raise FileNotFoundError(errno.ENOENT, f"{self.name}: object missing") from None
            raise self._failed(_storage_error(f"{self.name}: GET", exc)) from None
        except BotoCoreError as exc:
            # botocore retried the request already: the storage is not answering.
            raise self._failed(_storage_error(f"{self.name}: GET", exc)) from None
        self._body = response["Body"]
        self._body_pos = self._pos
        self._body_left = length
        following = self._pos + length
        if following < self._size and (self._window >= READ_AHEAD_WINDOW or want > READ_BUFFER):
            key, start, left = self._locate(following)
            size = min(min(self._window * WINDOW_GROWTH, MAX_WINDOW), left)
            self._ahead = (_read_ahead_pool().submit(self._get, key, start, size), following, size)

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        remaining = self._size - self._pos
        if remaining <= 0:
            return 0
        with memoryview(buffer) as view, view.cast("B") as octets:
            want = min(len(octets), remaining)
            if want == 0:
                return 0
            data = b""
            for attempt in range(READ_ATTEMPTS):
                if self._body is None or self._body_pos != self._pos:
                    self._open(want)  # its errors go to the caller: botocore retried the GET
                try:
                    data = self._body.read(min(want, self._body_left))
                    if data:
                        break
                    raise OSError(f"{self.name}: response ended early")
                except (BotoCoreError, OSError) as exc:
                    self._body_left = 0
                    self._drop()
                    if attempt == READ_ATTEMPTS - 1:
                        # A response cut short READ_ATTEMPTS times in a row: an outage.
                        raise self._failed(
                            StorageUnavailable(
                                f"{self.name}: reading from S3 failed ({_error_code(exc)})"
                            )
                        ) from None
            read = len(data)
            octets[:read] = data
        self._pos += read
        self._body_pos += read
        self._body_left -= read
        if self._body_left == 0:
            self._sequential_at = self._pos
            self._drop()
        return read

    def _failed(self, error: OSError) -> OSError:
        if isinstance(error, StorageUnavailable):
            self.storage_error = error
        return error

    def close(self) -> None:
        if not self.closed:
            self._drop()
            ahead, self._ahead = self._ahead, None
            _discard(ahead[0] if ahead else None)
        super().close()


def open_range(*, upload_id: uuid.UUID, offset: int, size: int) -> BinaryIO:
    """A buffered, seekable reader of bytes ``[offset, offset+size)`` of the upload,
    streamed from its chunk objects; the caller closes it. Raises FileNotFoundError when
    the upload has no chunk 0 (nothing received, or deleted), StorageUnavailable when S3
    cannot be reached (when opened or read; the reader keeps it in ``storage_error``)."""
    chunk = _chunk_size(upload_id) if size > 0 else 1

    def locate(pos: int) -> tuple[str, int, int]:
        absolute = offset + pos
        start = absolute - absolute % chunk
        return (
            _chunk_key(upload_id, start),
            absolute - start,
            min(chunk - (absolute - start), size - pos),
        )

    raw = _S3RangeRaw(locate=locate, size=size, name=f"range:{offset}+{size}")
    return io.BufferedReader(raw, buffer_size=READ_BUFFER)  # type: ignore[return-value]


def _delete_prefix(prefix: str) -> None:
    """Delete every object and abort every multipart upload under ``prefix``.
    Raises ClientError/BotoCoreError, or OSError when S3 refused some of the keys."""
    s3 = client()
    bucket = _bucket()
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        for start in range(0, len(keys), DELETE_BATCH):
            answer = s3.delete_objects(
                Bucket=bucket, Delete={"Objects": keys[start : start + DELETE_BATCH], "Quiet": True}
            )
            if answer.get("Errors"):
                raise OSError(f"S3 refused to delete {len(answer['Errors'])} objects")
    for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix):
        for upload in page.get("Uploads", []):
            s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])


def work_reset(*, upload_id: uuid.UUID) -> Path:
    """Empty this node's scratch folder and delete the derived files published by an
    earlier run (and any multipart upload a killed run left): a re-run starts clean.
    Until ``work_publish``, this process's ``open_member`` reads derived files from the
    scratch folder. Raises StorageUnavailable (processing waits and retries), OSError."""
    try:
        _delete_prefix(_work_prefix(upload_id))
    except (ClientError, BotoCoreError, OSError) as exc:
        raise _storage_error(f"upload {upload_id}: deleting earlier derived files", exc) from None
    directory = local.work_reset(upload_id=upload_id)
    _scratch_active.add(upload_id)
    return directory


def work_publish(*, upload_id: uuid.UUID) -> None:
    """Put every file of the scratch folder into the bucket (1 PUT each, or a multipart
    upload above MULTIPART_THRESHOLD), then remove the folder: from here on every node
    reads them from the bucket. Idempotent. Raises StorageUnavailable, OSError (a local
    file that cannot be read)."""
    directory = local.work_dir(upload_id=upload_id)
    transfer = TransferConfig(
        multipart_threshold=MULTIPART_THRESHOLD,
        multipart_chunksize=MULTIPART_CHUNKSIZE,
        max_concurrency=4,
    )
    s3 = client()
    if directory.exists():
        for path in sorted(directory.rglob("*")):
            if path.is_file() and not path.is_symlink():
                relpath = path.relative_to(directory).as_posix()
                try:
                    s3.upload_file(
                        str(path), _bucket(), _work_key(upload_id, relpath), Config=transfer
                    )
                except (ClientError, BotoCoreError, S3UploadFailedError) as exc:
                    # Not chained: boto3's message names the local path (entry names).
                    raise _storage_error(f"upload {upload_id}: publishing a file", exc) from None
    _scratch_active.discard(upload_id)
    shutil.rmtree(directory.parent, ignore_errors=True)


@contextmanager
def work_scope(*, upload_id: uuid.UUID) -> Iterator[None]:
    """Remove this node's scratch folder of the upload when the block ends, however."""
    try:
        yield
    finally:
        _scratch_active.discard(upload_id)
        shutil.rmtree(local.work_dir(upload_id=upload_id).parent, ignore_errors=True)


def open_member(*, upload_id: uuid.UUID, offset: int, size: int, path: str = "") -> BinaryIO:
    """A reader of one file of the upload: a derived file when ``path`` is set (from the
    scratch folder while this process is deriving them, else from the bucket), else a
    byte range of the upload stream. The caller closes it."""
    if not path:
        return open_range(upload_id=upload_id, offset=offset, size=size)
    if upload_id in _scratch_active:
        return local.open_member(upload_id=upload_id, offset=offset, size=size, path=path)
    key = _work_key(upload_id, path)
    raw = _S3RangeRaw(locate=lambda pos: (key, pos, size - pos), size=size, name="work file")
    return io.BufferedReader(raw, buffer_size=READ_BUFFER)  # type: ignore[return-value]


def stream_delete(*, upload_id: uuid.UUID) -> bool:
    """Delete every object of the upload, abort its unfinished multipart uploads and
    remove this node's scratch folder; True once nothing of it is left.

    Idempotent. Never raises for a storage failure: it is logged with the upload id and
    the S3 error code only, and returns False (the caller retries).
    """
    _scratch_active.discard(upload_id)
    with _chunk_sizes_lock:
        _chunk_sizes.pop(upload_id, None)
    try:
        _delete_prefix(_upload_prefix(upload_id))
    except (ClientError, BotoCoreError, OSError) as exc:
        logger.error(
            "could not delete the objects of upload %s (%s); deletion will be retried",
            upload_id,
            _error_code(exc),
        )
        return False
    return local.stream_delete(upload_id=upload_id)


def _upload_id_of(key: str) -> uuid.UUID | None:
    name = key[len(KEY_PREFIX) :].split("/", 1)[0]
    try:
        upload_id = uuid.UUID(name)
    except ValueError:
        return None
    return upload_id if str(upload_id) == name else None


def stored_uploads() -> Iterator[tuple[uuid.UUID, datetime]]:
    """Each upload with objects, unfinished multipart uploads or a scratch folder on this
    node, with the latest of: its marker's date (else its first object's), its multipart
    uploads' start, its scratch folder's change. One LIST per 1,000 uploads, one HEAD per
    upload, one LIST of multipart uploads per 1,000."""
    s3 = client()
    bucket = _bucket()
    found: dict[uuid.UUID, datetime] = {}

    def note(upload_id: uuid.UUID, when: datetime) -> None:
        if upload_id not in found or found[upload_id] < when:
            found[upload_id] = when

    listing = s3.get_paginator("list_objects_v2")
    for page in listing.paginate(Bucket=bucket, Prefix=KEY_PREFIX, Delimiter="/"):
        for common in page.get("CommonPrefixes", []):
            upload_id = _upload_id_of(common["Prefix"])
            if upload_id is None:
                continue
            try:
                when = s3.head_object(Bucket=bucket, Key=_marker_key(upload_id))["LastModified"]
            except ClientError as exc:
                if not _is_missing(exc):
                    raise
                first = s3.list_objects_v2(Bucket=bucket, Prefix=common["Prefix"], MaxKeys=1)
                if not first.get("Contents"):
                    continue  # deleted meanwhile
                when = first["Contents"][0]["LastModified"]
            note(upload_id, when)
    for page in s3.get_paginator("list_multipart_uploads").paginate(
        Bucket=bucket, Prefix=KEY_PREFIX
    ):
        for upload in page.get("Uploads", []):
            upload_id = _upload_id_of(upload["Key"])
            if upload_id is not None:
                note(upload_id, upload["Initiated"])
    for upload_id, changed in local.stored_uploads():
        note(upload_id, changed)
    yield from found.items()


def multipart_uploads_abort(*, older_than: datetime) -> int:
    """Abort every unfinished multipart upload under KEY_PREFIX started before
    ``older_than`` (a worker killed while publishing a large derived file), and under
    BACKUP_PREFIX started before ``older_than`` and at least BACKUP_UNFINISHED_AGE ago (a
    worker killed mid-backup; a backup runs far shorter); returns how many. Idempotent.
    Raises ClientError/BotoCoreError."""
    s3 = client()
    bucket = _bucket()
    aborted = 0
    backup_cut_off = min(older_than, datetime.now(tz=UTC) - BACKUP_UNFINISHED_AGE)
    for prefix, cut_off in ((KEY_PREFIX, older_than), (BACKUP_PREFIX, backup_cut_off)):
        for page in s3.get_paginator("list_multipart_uploads").paginate(
            Bucket=bucket, Prefix=prefix
        ):
            for upload in page.get("Uploads", []):
                if upload["Initiated"] < cut_off:
                    s3.abort_multipart_upload(
                        Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    aborted += 1
    return aborted


_health_lock = threading.Lock()
_clock = time.monotonic  # the health cache's clock (a test moves it)
# The last answer of storage_check, per settings: (key, answer, when, last write probe).
_health: dict[str, Any] = {}


def storage_check() -> tuple[str, str]:
    """``("ok"|"failing", detail)``: can we reach and write to the bucket?

    Cached per process for HEALTH_CACHE_SECONDS: a HEAD of the bucket, plus a PUT and a
    DELETE of a probe object outside the uploads' prefix when the last write probe is
    HEALTH_WRITE_PROBE_SECONDS old, each one attempt with short timeouts. While one
    thread probes, the others get the last answer. Never raises.
    """
    key = f"{settings.S3_ENDPOINT_URL}|{_bucket()}|{settings.S3_ACCESS_KEY_ID}"
    now = _clock()
    with _health_lock:
        cached = _health if _health.get("key") == key else {}
        if cached and now - cached["when"] < HEALTH_CACHE_SECONDS:
            return cached["answer"]  # type: ignore[no-any-return]
        if _health.get("probing") and cached:
            return cached["answer"]  # type: ignore[no-any-return]
        _health["probing"] = True
    written = cached.get("written", -HEALTH_WRITE_PROBE_SECONDS) if cached else None
    try:
        answer, wrote = _storage_probe(
            write=written is None or now - written >= HEALTH_WRITE_PROBE_SECONDS
        )
    finally:
        with _health_lock:
            _health["probing"] = False
    with _health_lock:
        last_write = now if wrote else (written if written is not None else None)
        _health.clear()
        _health.update(key=key, answer=answer, when=_clock(), probing=False)
        if last_write is not None:
            _health["written"] = last_write
    return answer


def _storage_probe(*, write: bool) -> tuple[tuple[str, str], bool]:
    """One health probe of the bucket: the answer, and whether a write probe passed."""
    bucket = _bucket()
    s3 = client(probe=True)
    try:
        s3.head_bucket(Bucket=bucket)
    except (ClientError, BotoCoreError) as exc:
        return ("failing", f"S3 bucket {bucket} cannot be reached ({_error_code(exc)})"), False
    if not write:
        return ("ok", f"S3 bucket {bucket} is reachable (free space: not applicable)"), False
    probe = f"{PROBE_PREFIX}probe-{uuid.uuid4().hex}"
    try:
        s3.put_object(Bucket=bucket, Key=probe, Body=b"ok")
        s3.delete_object(Bucket=bucket, Key=probe)
    except (ClientError, BotoCoreError) as exc:
        return ("failing", f"S3 bucket {bucket} is not writable ({_error_code(exc)})"), False
    return ("ok", f"S3 bucket {bucket} is writable (free space: not applicable)"), True
