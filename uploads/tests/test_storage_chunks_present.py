"""``storage.chunks_present`` tells a chunk whose bytes are stored from one whose row says
stored but whose bytes are not: a hole in the local assembly file (a write that never
reached the disk), a file cut short (a copied-back folder), an object of the wrong size."""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from uploads import storage
from uploads.selectors import upload_status
from uploads.services import chunk_store
from uploads.services.ingest import ManifestFile, UploadInit, upload_init
from uploads.services.recovery import uploads_reconcile
from uploads.storage import StoredChunk
from uploads.tests.helpers import content_md5

CHUNK = 256 * 1024  # the smallest chunk the API allows


def _facts(data: bytes) -> StoredChunk:
    return StoredChunk(size=len(data), md5=hashlib.md5(data).hexdigest())


def _local_stream(settings: Any, tmp_path: Path, size: int) -> tuple[uuid.UUID, Path]:
    settings.UPLOAD_STORAGE = "local"
    settings.UPLOAD_STORAGE_DIR = tmp_path / "uploads"
    upload_id = uuid.uuid4()
    storage.stream_create(upload_id=upload_id, size=size)
    return upload_id, tmp_path / "uploads" / str(upload_id) / "stream.bin"


def test_on_local_disk_a_chunk_never_written_is_a_hole_and_not_present(settings, tmp_path):
    chunks = [os.urandom(CHUNK), os.urandom(CHUNK), os.urandom(CHUNK), os.urandom(1000)]
    upload_id, _ = _local_stream(settings, tmp_path, 3 * CHUNK + 1000)
    for index in (0, 2, 3):
        storage.stream_write(upload_id=upload_id, offset=index * CHUNK, data=chunks[index])
    # All four rows say stored (chunk 1's write was lost in a crash).
    rows = {index * CHUNK: _facts(data) for index, data in enumerate(chunks)}

    assert storage.chunks_present(upload_id=upload_id, chunks=rows) == {0, 2 * CHUNK, 3 * CHUNK}


def test_on_local_disk_a_file_cut_short_loses_the_chunks_past_its_end(settings, tmp_path):
    chunks = [os.urandom(CHUNK) for _ in range(3)]
    upload_id, path = _local_stream(settings, tmp_path, 3 * CHUNK)
    for index, data in enumerate(chunks):
        storage.stream_write(upload_id=upload_id, offset=index * CHUNK, data=data)
    rows = {index * CHUNK: _facts(data) for index, data in enumerate(chunks)}
    assert storage.chunks_present(upload_id=upload_id, chunks=rows) == {0, CHUNK, 2 * CHUNK}

    os.truncate(path, 2 * CHUNK + CHUNK // 2)  # a partial copy back after a restore

    assert storage.chunks_present(upload_id=upload_id, chunks=rows) == {0, CHUNK}
    # A row whose size does not fit the file is not trusted either.
    longer = {CHUNK: StoredChunk(size=2 * CHUNK, md5=rows[CHUNK].md5)}
    assert storage.chunks_present(upload_id=upload_id, chunks=longer) == set()


def test_on_local_disk_a_chunk_of_zeros_reads_back_whole_even_from_a_hole(settings, tmp_path):
    zeros = bytes(CHUNK)
    upload_id, _ = _local_stream(settings, tmp_path, 2 * CHUNK)
    storage.stream_write(upload_id=upload_id, offset=0, data=zeros)
    # Chunk 1, all zeros too, never written: its hole reads as exactly its bytes (a
    # filesystem that compresses, such as ZFS, keeps written zeros as a hole as well).
    rows = {0: _facts(zeros), CHUNK: _facts(zeros)}

    assert storage.chunks_present(upload_id=upload_id, chunks=rows) == {0, CHUNK}
    with storage.open_range(upload_id=upload_id, offset=0, size=2 * CHUNK) as reader:
        assert reader.read() == bytes(2 * CHUNK)


def test_on_local_disk_a_written_chunk_whose_zeros_are_a_hole_is_present(settings, tmp_path):
    """A compressing filesystem (ZFS) or a sparse copy back (rsync -S) stores a run of
    zeros inside written data as a hole: read back, the chunk is whole, so it is present
    (a hole alone made the app send it again for ever)."""
    data = os.urandom(64 * 1024) + bytes(128 * 1024) + os.urandom(64 * 1024)
    upload_id, path = _local_stream(settings, tmp_path, CHUNK)
    fd = os.open(path, os.O_WRONLY)
    try:  # the zeros never written: the file keeps a hole there
        os.pwrite(fd, data[: 64 * 1024], 0)
        os.pwrite(fd, data[192 * 1024 :], 192 * 1024)
    finally:
        os.close(fd)
    fd = os.open(path, os.O_RDONLY)
    try:
        has_hole = os.lseek(fd, 0, os.SEEK_HOLE) < CHUNK
    except OSError:
        has_hole = False
    finally:
        os.close(fd)
    if not has_hole:
        pytest.skip("this filesystem does not report holes")

    assert storage.chunks_present(upload_id=upload_id, chunks={0: _facts(data)}) == {0}
    # The same hole under a row whose MD5 says other bytes: not present.
    other = _facts(os.urandom(CHUNK))
    assert storage.chunks_present(upload_id=upload_id, chunks={0: other}) == set()


def test_on_local_disk_nothing_is_present_without_the_assembly_file(settings, tmp_path):
    settings.UPLOAD_STORAGE = "local"
    settings.UPLOAD_STORAGE_DIR = tmp_path / "uploads"
    rows = {0: _facts(b"x" * CHUNK)}
    assert storage.chunks_present(upload_id=uuid.uuid4(), chunks=rows) == set()


def test_in_s3_a_chunk_object_of_the_wrong_size_is_not_present(s3_settings):
    upload_id = uuid.uuid4()
    chunks = [os.urandom(CHUNK), os.urandom(CHUNK), os.urandom(CHUNK)]
    storage.stream_create(upload_id=upload_id, size=3 * CHUNK)
    for index in (0, 1):
        storage.stream_write(upload_id=upload_id, offset=index * CHUNK, data=chunks[index])
    # Chunk 1's object replaced by a short one (a damaged copy put back by hand).
    s3_settings.client().put_object(
        Bucket=s3_settings.bucket,
        Key=f"uploads/{upload_id}/chunks/{CHUNK:020d}",
        Body=chunks[1][: CHUNK // 2],
    )
    rows = {index * CHUNK: _facts(data) for index, data in enumerate(chunks)}
    try:
        assert storage.chunks_present(upload_id=upload_id, chunks=rows) == {0}
    finally:
        storage.stream_delete(upload_id=upload_id)


@pytest.mark.django_db
def test_reconcile_asks_again_for_a_chunk_marked_stored_whose_bytes_never_reached_disk(
    user, settings, tmp_path
):
    settings.UPLOAD_STORAGE = "local"
    settings.UPLOAD_STORAGE_DIR = tmp_path / "uploads"
    session = upload_init(
        owner=user,
        request=UploadInit(
            files=[ManifestFile(name="a.dcm", size=3 * CHUNK)],
            metadata={},
            clinical_notes="",
            service_level="routine",
            chunk_size=CHUNK,
            allow_partial=False,
            force_upload=True,
        ),
    )
    chunks = [os.urandom(CHUNK) for _ in range(3)]
    for index in (0, 1):
        chunk_store(
            session=session,
            index=index,
            body=io.BytesIO(chunks[index]),
            length=CHUNK,
            content_md5=content_md5(chunks[index]),
        )
    # A power cut with UPLOAD_FSYNC off: the assembly file came back with chunk 0 only.
    path = tmp_path / "uploads" / str(session.pk) / "stream.bin"
    os.truncate(path, 0)
    os.truncate(path, 3 * CHUNK)
    storage.stream_write(upload_id=session.pk, offset=0, data=chunks[0])

    summary = uploads_reconcile()

    assert (summary.resumable, summary.chunks_to_resend) == (1, 1)
    status = upload_status(session=session)
    assert status["missing_chunks"] == [1, 2]
    assert status["bytes_received"] == CHUNK
