"""Backups in an S3 bucket (``s3://<bucket>/<prefix>``): streamed in, listed, pruned, read
back. Used by ``uploads.management.backups`` only, which decides what goes in.

A backup in a bucket is the objects ``<prefix>relaypacs-backup-<UTC time>/<file>``, the
same files as a backup folder. S3 has no rename, so ``manifest.json`` is written last and
only after every other file is whole: a backup is whole exactly when its manifest is
there, and listing, pruning and restoring look at those only. A backup that fails
deletes what it had written.

Every file is streamed: the producer (``pg_dump`` writing to a pipe, the report store's
tar written as it is read) writes into an OS pipe whose other end boto3's managed
transfer reads (``upload_fileobj``: multipart in ``PART_BYTES`` parts beyond the
threshold), so memory holds at most three parts (48 MiB) whatever the database's size,
and nothing is written to local disk. The SHA-256 of each file is computed on the way.

The bucket is reached with the upload storage's S3 client (``uploads.storage``: the
S3_* settings, endpoint and credentials), unless BACKUP_S3_ENDPOINT_URL, BACKUP_S3_REGION,
BACKUP_S3_ACCESS_KEY_ID or BACKUP_S3_SECRET_ACCESS_KEY is set: then with a client of its
own, each of those in place of its S3_* namesake (another S3 service, or credentials
only backups hold). The bucket named in the target may be any one that client reaches.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO

from relaypacs.errors import ApplicationError

# S3 allows 10,000 parts: 16 MiB parts carry a dump of up to 156 GiB. boto3 reads a
# pipe a part at a time and holds at most IN_MEMORY_PARTS parts waiting or being sent,
# plus the one it is reading: PART_BYTES * (IN_MEMORY_PARTS + 1), 48 MiB, however far
# pg_dump runs ahead of the bucket (boto3's default of 10 would let it reach 176 MiB).
# Measured, 512 MiB from a fast producer into moto: peak RSS 69 MiB above the start with
# 2 parts, 213 MiB with 10 (request copies and checksums come on top of the parts).
PART_BYTES = 16 * 1024 * 1024
CONCURRENCY = 2
IN_MEMORY_PARTS = CONCURRENCY
# Objects deleted per DeleteObjects request (S3's maximum).
DELETE_BATCH = 1000
MANIFEST = "manifest.json"
# The UTC time in a backup's name (relaypacs-backup-<time>).
NAME_TIME = "%Y%m%dT%H%M%S%fZ"


@dataclass(frozen=True)
class BucketPlace:
    """A bucket and a key prefix ("" or ending with "/")."""

    bucket: str
    prefix: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


# The BACKUP_S3_* settings, each overriding its S3_* namesake for backups only.
_OVERRIDES = ("ENDPOINT_URL", "REGION", "ACCESS_KEY_ID", "SECRET_ACCESS_KEY")
# Attempts per S3 request (botocore's standard retry mode), as the upload storage's.
MAX_ATTEMPTS = 5
_clients: dict[tuple[Any, ...], Any] = {}
_clients_lock = threading.Lock()


def _client() -> Any:
    """The S3 client for backups: the upload storage's (``uploads.storage``, the S3_*
    settings) unless a BACKUP_S3_* setting is set, then one of its own with each
    BACKUP_S3_* value in place of its S3_* one (one per process and settings)."""
    from django.conf import settings

    values = {name: str(getattr(settings, f"BACKUP_S3_{name}", "") or "") for name in _OVERRIDES}
    if not any(values.values()):
        from uploads import storage

        return storage.s3_client()
    effective = {
        name: values[name] or str(getattr(settings, f"S3_{name}", "") or "") for name in _OVERRIDES
    }
    key = (os.getpid(), *(effective[name] for name in _OVERRIDES))
    with _clients_lock:
        found = _clients.get(key)
        if found is None:
            import boto3
            from botocore.config import Config

            endpoint = effective["ENDPOINT_URL"]
            found = boto3.session.Session().client(
                "s3",
                endpoint_url=endpoint or None,
                region_name=effective["REGION"] or None,
                aws_access_key_id=effective["ACCESS_KEY_ID"] or None,
                aws_secret_access_key=effective["SECRET_ACCESS_KEY"] or None,
                config=Config(
                    retries={"total_max_attempts": MAX_ATTEMPTS, "mode": "standard"},
                    connect_timeout=10,
                    read_timeout=60,
                    # A custom endpoint (MinIO, moto, Ceph) names buckets in the path.
                    s3={"addressing_style": "path"} if endpoint else None,
                ),
            )
            _clients.clear()  # settings changed (tests) or a fork: the old ones are stale
            _clients[key] = found
        return found


def _transfer_config() -> Any:
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(
        multipart_threshold=PART_BYTES,
        multipart_chunksize=PART_BYTES,
        max_concurrency=CONCURRENCY,
        use_threads=True,
    )
    # boto3's TransferConfig takes no such argument, but its s3transfer base reads it.
    config.max_in_memory_upload_chunks = IN_MEMORY_PARTS
    return config


def _error_code(exc: BaseException) -> str:
    from botocore.exceptions import ClientError

    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ClientError):
            return str(cause.response.get("Error", {}).get("Code", "ClientError"))
        cause = cause.__cause__ or cause.__context__
    return type(exc).__name__


def bucket_unavailable(place: BucketPlace, exc: BaseException, *, what: str) -> ApplicationError:
    """The error of a failed S3 call: the bucket and the S3 error code, never a key's
    content or boto3's message (which names local paths)."""
    return ApplicationError(
        "backup_bucket_unavailable",
        f"The bucket {place} could not be {what} ({_error_code(exc)}).",
        "Check that the bucket exists and that the configured S3 credentials may list, "
        "read and write it, then try again.",
        status_code=503,
    )


class ProducerFailed(OSError):
    """Raised into boto3's transfer when the producer failed: the upload is aborted."""


class _ProducedReader:
    """The read end of the pipe, as boto3 reads it: hashes what passes, and at the end
    of the bytes waits for the producer's verdict. A producer that failed makes the last
    read raise, so boto3 aborts the multipart upload instead of completing a truncated
    object."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.digest = hashlib.sha256()
        self.size = 0
        self._finished = threading.Event()
        self._ok = False

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        if data:
            self.digest.update(data)
            self.size += len(data)
            return data
        self._finished.wait()
        if not self._ok:
            raise ProducerFailed("the backup's producer did not finish")
        return b""

    def readable(self) -> bool:
        return True

    def verdict(self, *, ok: bool) -> None:
        self._ok = ok
        self._finished.set()

    def close(self) -> None:
        self._raw.close()


def stream_upload(*, place: BucketPlace, key: str, produce: Callable[[int], None]) -> str:
    """Upload what ``produce(fd)`` writes into the file descriptor ``fd`` as the object
    ``key``; returns its SHA-256. ``produce`` must not close ``fd``.

    The object exists only if ``produce`` returned normally and every byte arrived:
    otherwise the multipart upload is aborted and the producer's error (or, when the
    bucket failed first, ApplicationError ``backup_bucket_unavailable``) is raised.
    """
    read_fd, write_fd = os.pipe()
    source = _ProducedReader(os.fdopen(read_fd, "rb"))
    upload_errors: list[BaseException] = []

    def upload() -> None:
        try:
            _client().upload_fileobj(source, place.bucket, key, Config=_transfer_config())
        except BaseException as exc:  # noqa: BLE001  (re-raised by the caller's thread)
            upload_errors.append(exc)
        finally:
            source.close()  # a producer still writing gets EPIPE and stops

    thread = threading.Thread(target=upload, name="backup-upload", daemon=True)
    thread.start()
    produced: BaseException | None = None
    try:
        produce(write_fd)
    except BaseException as exc:  # noqa: BLE001  (re-raised below, after the join)
        produced = exc
    finally:
        os.close(write_fd)
        source.verdict(ok=produced is None)
        thread.join()
    if produced is None:
        if upload_errors:
            raise bucket_unavailable(place, upload_errors[0], what="written")
        return source.digest.hexdigest()
    if upload_errors and not _caused_by(upload_errors[0], ProducerFailed):
        # The bucket failed first; the producer's broken pipe (or pg_dump ended by
        # SIGPIPE) follows from it.
        raise bucket_unavailable(place, upload_errors[0], what="written") from produced
    raise produced


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, kind):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def put_bytes(*, place: BucketPlace, key: str, data: bytes) -> None:
    """A small object (the manifest) in one PUT."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        _client().put_object(Bucket=place.bucket, Key=key, Body=data)
    except (BotoCoreError, ClientError) as exc:
        raise bucket_unavailable(place, exc, what="written") from None


def _keys(place: BucketPlace, prefix: str) -> Iterator[str]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        pages = (
            _client().get_paginator("list_objects_v2").paginate(Bucket=place.bucket, Prefix=prefix)
        )
        for page in pages:
            for item in page.get("Contents", []):
                yield str(item["Key"])
    except (BotoCoreError, ClientError) as exc:
        raise bucket_unavailable(place, exc, what="listed") from None


def backups_list(*, place: BucketPlace, name_prefix: str) -> list[str]:
    """Names of the whole backups (their manifest is there) under ``place``, oldest first."""
    whole = set()
    for key in _keys(place, place.prefix + name_prefix):
        name, _, rest = key[len(place.prefix) :].partition("/")
        if rest == MANIFEST:
            whole.add(name)
    return sorted(whole)


def _multipart_uploads(place: BucketPlace, prefix: str) -> Iterator[dict[str, Any]]:
    """The unfinished multipart uploads under ``prefix`` (a worker killed mid-backup)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        pages = (
            _client()
            .get_paginator("list_multipart_uploads")
            .paginate(Bucket=place.bucket, Prefix=prefix)
        )
        for page in pages:
            yield from page.get("Uploads", [])
    except (BotoCoreError, ClientError) as exc:
        raise bucket_unavailable(place, exc, what="listed") from None


def backups_unfinished(*, place: BucketPlace, name_prefix: str, older_than: datetime) -> list[str]:
    """Names of the backups under ``place`` without a manifest (cut short: a worker
    killed, a cleanup that failed) that nothing can still be writing: the time in their
    name, each object's last write and each unfinished multipart upload's start are all
    before ``older_than``. Oldest first."""
    whole: set[str] = set()
    newest: dict[str, datetime] = {}
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        pages = (
            _client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=place.bucket, Prefix=place.prefix + name_prefix)
        )
        for page in pages:
            for item in page.get("Contents", []):
                name, _, rest = str(item["Key"])[len(place.prefix) :].partition("/")
                if rest == MANIFEST:
                    whole.add(name)
                newest[name] = max(item["LastModified"], newest.get(name, item["LastModified"]))
    except (BotoCoreError, ClientError) as exc:
        raise bucket_unavailable(place, exc, what="listed") from None
    for upload in _multipart_uploads(place, place.prefix + name_prefix):
        name = str(upload["Key"])[len(place.prefix) :].partition("/")[0]
        started = upload["Initiated"]
        newest[name] = max(started, newest.get(name, started))
    unfinished = []
    for name, when in newest.items():
        started = name_time(name=name, name_prefix=name_prefix)
        if name in whole or started is None or started >= older_than or when >= older_than:
            continue
        unfinished.append(name)
    return sorted(unfinished)


def name_time(*, name: str, name_prefix: str) -> datetime | None:
    """When the backup ``name`` (``<name_prefix><UTC time>``) was started; None when
    the name is not a backup's."""
    try:
        return datetime.strptime(name[len(name_prefix) :], NAME_TIME).replace(tzinfo=UTC)
    except ValueError:
        return None


def backup_delete(*, place: BucketPlace, name: str) -> None:
    """Delete every object of the backup ``name`` (whole or not) and abort its
    unfinished multipart uploads (their parts are patient data too). Idempotent."""
    from botocore.exceptions import BotoCoreError, ClientError

    keys = list(_keys(place, f"{place.prefix}{name}/"))
    # The manifest first: a backup half deleted is no longer listed as whole.
    keys.sort(key=lambda key: not key.endswith("/" + MANIFEST))
    try:
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start : start + DELETE_BATCH]
            _client().delete_objects(
                Bucket=place.bucket,
                Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
            )
        for upload in _multipart_uploads(place, f"{place.prefix}{name}/"):
            _client().abort_multipart_upload(
                Bucket=place.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )
    except (BotoCoreError, ClientError) as exc:
        raise bucket_unavailable(place, exc, what="cleaned up") from None


def read_bytes(*, place: BucketPlace, key: str) -> bytes | None:
    """A small object's bytes (the manifest), or None when it is not there."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        answer = _client().get_object(Bucket=place.bucket, Key=key)
        return bytes(answer["Body"].read())
    except ClientError as exc:
        if _error_code(exc) in {"404", "NoSuchKey", "NotFound"}:
            return None
        raise bucket_unavailable(place, exc, what="read") from None
    except BotoCoreError as exc:
        raise bucket_unavailable(place, exc, what="read") from None


@contextmanager
def open_object(*, place: BucketPlace, key: str) -> Iterator[Any]:
    """A streaming reader of one object (one GET, read as it goes); the caller reads it
    through once. FileNotFoundError when it is not there."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        answer = _client().get_object(Bucket=place.bucket, Key=key)
    except ClientError as exc:
        if _error_code(exc) in {"404", "NoSuchKey", "NotFound"}:
            raise FileNotFoundError(key) from None
        raise bucket_unavailable(place, exc, what="read") from None
    except BotoCoreError as exc:
        raise bucket_unavailable(place, exc, what="read") from None
    body = answer["Body"]
    try:
        yield _BodyReader(body, place)
    finally:
        body.close()


class _BodyReader:
    """A StreamingBody whose read errors are the bucket's sentence."""

    def __init__(self, body: Any, place: BucketPlace) -> None:
        self._body = body
        self._place = place

    def read(self, size: int = -1) -> bytes:
        from botocore.exceptions import BotoCoreError

        try:
            data: bytes = self._body.read(None if size < 0 else size)
        except (BotoCoreError, OSError) as exc:
            raise bucket_unavailable(self._place, exc, what="read") from None
        return data
