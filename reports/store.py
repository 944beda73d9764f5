"""The report store: where signed reports' PDFs and facilities' letterhead logos live, and
the only code that touches their bytes (as ``uploads.storage`` is for upload bytes).

Two backends behind one set of functions, picked by ``UPLOAD_STORAGE`` at every call:

- ``local`` (the embedded default): files under ``REPORT_STORAGE_DIR`` (``DATA_DIR/reports``);
- ``s3``: objects under the key prefix ``reports/`` of ``S3_BUCKET``, so that any web node
  serves any report and any worker renders any. The uploads' orphan sweep, deletions and
  multipart aborts only ever list ``uploads/``, so they never touch these objects.

Names are relative paths (``<report id>/v<n>-<sha256 prefix>.pdf``,
``letterheads/logos/<file>``). Each name is written once: ``write_once`` never replaces a
name's bytes with different ones (it raises ``ReportStoreConflict``), and writing the same
bytes again is a no-op, so a render retried or run twice on two nodes is harmless.

Errors: a missing file is ``FileNotFoundError``; a store that cannot be reached or refuses
(S3: connection errors after botocore's retries, HTTP 5xx, refused credentials, a missing
bucket) is ``ReportStoreUnavailable`` (an ``OSError``: retryable, nothing is wrong with
the report). Messages name the operation and the S3 error code, never patient data.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import logging
import mimetypes
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any, BinaryIO

from django.conf import settings
from django.core.files import File
from django.core.files.storage import Storage
from django.utils.deconstruct import deconstructible

from uploads.storage.streams import SeekableRaw

logger = logging.getLogger(__name__)

KEY_PREFIX = "reports/"
# Copying and hashing in blocks: memory stays bounded whatever the file's size.
BLOCK = 1024 * 1024
READ_BUFFER = 64 * 1024
# A body to put in S3 is spooled to a temporary file (so that botocore can read it twice,
# for its checksum and for sending) in memory up to this size, on disk beyond it.
SPOOL_IN_MEMORY = 8 * 1024 * 1024
# S3 metadata key holding an object's SHA-256, for write_once's "same bytes?" question.
DIGEST_METADATA = "sha256"


class ReportStoreUnavailable(OSError):
    """The report store could not be reached or refused to work just now. Retryable."""


class ReportStoreConflict(FileExistsError):
    """A name of the report store already holds different bytes; nothing was written."""


def backend_name() -> str:
    """``"s3"`` when upload bytes are in S3 (``UPLOAD_STORAGE=s3``), else ``"local"``."""
    from uploads.storage import backend_name as upload_backend

    return "s3" if upload_backend() == "s3" else "local"


def root() -> Path:
    """The local store's folder (``REPORT_STORAGE_DIR``; unused in S3 mode)."""
    return Path(settings.REPORT_STORAGE_DIR)


def where() -> str:
    """Where the store is, for operators' messages: a folder or ``s3://bucket/reports/``."""
    if backend_name() == "s3":
        from uploads.storage import s3_bucket

        return f"s3://{s3_bucket()}/{KEY_PREFIX}"
    return str(root())


def _checked(relative: str) -> str:
    """``relative`` as a clean relative POSIX path; ValueError for anything that could
    leave the store (absolute, ``..``, empty parts)."""
    path = PurePosixPath(relative)
    if (
        not relative
        or path.is_absolute()
        or "\\" in relative
        or any(part in {"", ".", ".."} for part in relative.split("/"))
    ):
        raise ValueError("A report store name is a relative path inside the store.")
    return str(path)


def _blocks(data: bytes | IO[bytes]) -> Iterator[bytes]:
    if isinstance(data, bytes | bytearray | memoryview):
        yield bytes(data)
        return
    while block := data.read(BLOCK):
        yield block


# --- S3 ---------------------------------------------------------------------------------


def _s3() -> tuple[Any, str]:
    from uploads.storage import s3_bucket, s3_client

    return s3_client(), s3_bucket()


def _s3_code(exc: BaseException) -> str:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "ClientError"))
    return type(exc).__name__


def _s3_missing(exc: BaseException) -> bool:
    return _s3_code(exc) in {"404", "NoSuchKey", "NotFound"}


def _s3_unavailable(what: str, exc: BaseException) -> ReportStoreUnavailable:
    return ReportStoreUnavailable(f"report store: {what}: S3 request failed ({_s3_code(exc)})")


def _s3_digest(client: Any, bucket: str, key: str) -> str:
    """The SHA-256 of an object: from its metadata, else by reading it (streamed)."""
    head = client.head_object(Bucket=bucket, Key=key)
    known = head.get("Metadata", {}).get(DIGEST_METADATA)
    if known:
        return str(known)
    digest = hashlib.sha256()
    with _S3ObjectReader(client=client, bucket=bucket, key=key) as raw:
        while block := raw.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _s3_write_once(relative: str, data: bytes | IO[bytes]) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    client, bucket = _s3()
    key = KEY_PREFIX + relative
    digest = hashlib.sha256()
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as body:
        for block in _blocks(data):
            digest.update(block)
            body.write(block)
        body.seek(0)
        content_type = mimetypes.guess_type(relative)[0] or "application/octet-stream"
        try:
            # If-None-Match: S3 (and MinIO, moto) refuse to replace an existing key, so
            # two writers racing on one name never replace each other's bytes.
            client.put_object(
                Bucket=bucket,
                Key=key,
                Body=body,
                ContentType=content_type,
                Metadata={DIGEST_METADATA: digest.hexdigest()},
                IfNoneMatch="*",
            )
            return
        except ClientError as exc:
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if status != 412 and _s3_code(exc) != "PreconditionFailed":
                raise _s3_unavailable("PUT", exc) from None
        except BotoCoreError as exc:
            raise _s3_unavailable("PUT", exc) from None
    try:
        existing = _s3_digest(client, bucket, key)
    except (ClientError, BotoCoreError) as exc:
        raise _s3_unavailable("HEAD", exc) from None
    if existing != digest.hexdigest():
        raise ReportStoreConflict(f"report store: {relative} already holds other bytes")


class _S3ObjectReader(SeekableRaw):
    """A seekable reader of one object, streamed from one GET (a ranged GET after a seek
    elsewhere): memory is one buffer whatever the size. Seeking to the end and back (as
    Django's FileResponse does to learn the length) costs no request."""

    def __init__(self, *, client: Any, bucket: str, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        self._client = client
        self._bucket = bucket
        self._key = key
        try:
            response = client.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _s3_missing(exc):
                raise FileNotFoundError(f"report store: {key} is missing") from None
            raise _s3_unavailable("GET", exc) from None
        except BotoCoreError as exc:
            raise _s3_unavailable("GET", exc) from None
        self._body: Any = response["Body"]
        self._size = int(response["ContentLength"])
        self._pos = 0
        self._body_pos = 0

    def _drop(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            body.close()

    def _reopen(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        self._drop()
        try:
            response = self._client.get_object(
                Bucket=self._bucket, Key=self._key, Range=f"bytes={self._pos}-"
            )
        except ClientError as exc:
            if _s3_missing(exc):
                raise FileNotFoundError(f"report store: {self._key} is missing") from None
            raise _s3_unavailable("GET", exc) from None
        except BotoCoreError as exc:
            raise _s3_unavailable("GET", exc) from None
        self._body = response["Body"]
        self._body_pos = self._pos

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        from botocore.exceptions import BotoCoreError
        from urllib3.exceptions import HTTPError

        if self._pos >= self._size:
            return 0
        if self._body is None or self._body_pos != self._pos:
            self._reopen()
        with memoryview(buffer) as view, view.cast("B") as octets:
            want = min(len(octets), self._size - self._pos)
            try:
                data = self._body.read(want)
            except (BotoCoreError, HTTPError, OSError) as exc:
                self._drop()
                raise _s3_unavailable("reading", exc) from None
            if not data:
                self._drop()
                raise ReportStoreUnavailable("report store: the S3 response ended early")
            octets[: len(data)] = data
        self._pos += len(data)
        self._body_pos += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._drop()
        super().close()


# --- local disk -------------------------------------------------------------------------


def _local_write_once(relative: str, data: bytes | IO[bytes]) -> None:
    path = root() / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    # Each writer has its own temporary file in the same folder; a hard link then puts
    # it under its name only if the name is free (atomic, and never replacing a file).
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    digest = hashlib.sha256()
    try:
        with os.fdopen(handle, "wb") as out:
            for block in _blocks(data):
                digest.update(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            if _local_digest(path) != digest.hexdigest():
                raise ReportStoreConflict(
                    f"report store: {relative} already holds other bytes"
                ) from None
            return
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)  # the new name survives a power cut
        finally:
            os.close(folder)
    finally:
        Path(temporary).unlink(missing_ok=True)


def _local_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


# --- the contract -----------------------------------------------------------------------


def write_once(*, relative: str, data: bytes | IO[bytes]) -> None:
    """Store ``data`` (bytes, or a binary stream read to its end) under ``relative``,
    durably once this returns: a crash leaves the whole file or none.

    Write-once: when the name already holds the same bytes, nothing changes (idempotent);
    when it holds other bytes, ReportStoreConflict and nothing changes. Local: a
    temporary file, fsync, then a hard link to the name; S3: one PUT with
    ``If-None-Match: *``. Raises ReportStoreUnavailable, OSError (local disk), ValueError
    for a name outside the store.
    """
    relative = _checked(relative)
    if backend_name() == "s3":
        _s3_write_once(relative, data)
    else:
        _local_write_once(relative, data)


def open(*, relative: str) -> BinaryIO:  # noqa: A001 - the store's own open
    """A buffered, seekable binary reader of the file, streamed (S3: one GET, read in
    READ_BUFFER blocks); the caller closes it. Raises FileNotFoundError,
    ReportStoreUnavailable."""
    relative = _checked(relative)
    if backend_name() == "s3":
        client, bucket = _s3()
        raw = _S3ObjectReader(client=client, bucket=bucket, key=KEY_PREFIX + relative)
        return io.BufferedReader(raw, buffer_size=READ_BUFFER)  # type: ignore[return-value]
    return builtins.open(root() / relative, "rb")  # noqa: SIM115 - the caller closes it


def delete(*, relative: str) -> None:
    """Remove the file; idempotent (a missing file is not an error). Raises
    ReportStoreUnavailable."""
    relative = _checked(relative)
    if backend_name() == "s3":
        from botocore.exceptions import BotoCoreError, ClientError

        client, bucket = _s3()
        try:
            client.delete_object(Bucket=bucket, Key=KEY_PREFIX + relative)
        except (ClientError, BotoCoreError) as exc:
            raise _s3_unavailable("DELETE", exc) from None
        return
    (root() / relative).unlink(missing_ok=True)


def _s3_head(relative: str) -> dict[str, Any] | None:
    from botocore.exceptions import BotoCoreError, ClientError

    client, bucket = _s3()
    try:
        head: dict[str, Any] = client.head_object(Bucket=bucket, Key=KEY_PREFIX + relative)
    except ClientError as exc:
        if _s3_missing(exc):
            return None
        raise _s3_unavailable("HEAD", exc) from None
    except BotoCoreError as exc:
        raise _s3_unavailable("HEAD", exc) from None
    return head


def exists(*, relative: str) -> bool:
    """Whether the name holds a file. Raises ReportStoreUnavailable."""
    relative = _checked(relative)
    if backend_name() == "s3":
        return _s3_head(relative) is not None
    return (root() / relative).is_file()


def size(*, relative: str) -> int:
    """The file's size in bytes. Raises FileNotFoundError, ReportStoreUnavailable."""
    relative = _checked(relative)
    if backend_name() == "s3":
        head = _s3_head(relative)
        if head is None:
            raise FileNotFoundError(f"report store: {relative} is missing")
        return int(head["ContentLength"])
    return (root() / relative).stat().st_size


def files() -> Iterator[tuple[str, int]]:
    """Every stored file as (name, size), sorted by name (for backups). Writers'
    temporary files (local disk) are left out. Raises ReportStoreUnavailable."""
    if backend_name() == "s3":
        from botocore.exceptions import BotoCoreError, ClientError

        client, bucket = _s3()
        try:
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=KEY_PREFIX
            )
            for page in pages:
                for item in page.get("Contents", []):
                    name = item["Key"][len(KEY_PREFIX) :]
                    if name and not name.endswith("/"):
                        yield name, int(item["Size"])
        except (ClientError, BotoCoreError) as exc:
            raise _s3_unavailable("LIST", exc) from None
        return
    folder = root()
    if not folder.is_dir():
        return
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink() and not path.name.startswith("."):
            yield path.relative_to(folder).as_posix(), path.stat().st_size


# --- Django storage (letterhead logos) ---------------------------------------------------


@deconstructible(path="reports.store.ReportStoreStorage")
class ReportStoreStorage(Storage):
    """A Django file storage over the report store, under ``location`` (the letterhead
    logos: ``letterheads``), so that an uploaded logo is in the bucket in S3 mode and is
    backed up with the reports. Logos are not served over HTTP (``url`` is a fragment the
    admin shows as the current file's name); the PDF renderer reads them with ``open``.
    """

    def __init__(self, location: str) -> None:
        self.location = location.strip("/")

    def _name(self, name: str) -> str:
        return f"{self.location}/{name}"

    def _open(self, name: str, mode: str = "rb") -> File:  # type: ignore[type-arg]
        if set(mode) - {"r", "b"}:
            raise ValueError("The report store's files are read-only once written.")
        return File(open(relative=self._name(name)), name=name)

    def _save(self, name: str, content: File) -> str:  # type: ignore[type-arg]
        if hasattr(content, "seek"):
            content.seek(0)
        write_once(relative=self._name(name), data=content)  # type: ignore[arg-type]
        return name

    def delete(self, name: str) -> None:
        if name:
            delete(relative=self._name(name))

    def exists(self, name: str) -> bool:
        return exists(relative=self._name(name))

    def size(self, name: str) -> int:
        return size(relative=self._name(name))

    def url(self, name: str | None) -> str:
        return f"#{name or ''}"
