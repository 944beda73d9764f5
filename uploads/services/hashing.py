"""The SHA-256 of a file of an upload, read from the upload storage in blocks: shared by
processing and by the hashing while the upload arrives (``prehash``)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable

from .. import storage
from ..models import UploadFile

HASH_BLOCK = 1024 * 1024


class HashingStopped(Exception):
    """Hashing gave up before the end of the file: its ``stop()`` said so (processing: the
    lease was lost or processing is ending; hashing ahead: the upload left receiving)."""


def sha256_of(
    *, upload_id: uuid.UUID, f: UploadFile, stop: Callable[[], bool] | None = None
) -> str:
    """The hex SHA-256 of ``f``, read in HASH_BLOCKs. Raises HashingStopped as soon as
    ``stop()`` is true before a block (a multi-GB file ends within one block, not after
    the whole file), StorageUnavailable and OSError as reading does."""
    digest = hashlib.sha256()
    with storage.open_range(upload_id=upload_id, offset=f.offset, size=f.size) as stream:
        while block := stream.read(HASH_BLOCK):
            if stop is not None and stop():
                raise HashingStopped
            digest.update(block)
    return digest.hexdigest()
