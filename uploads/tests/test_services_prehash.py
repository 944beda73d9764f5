"""Files are hashed while the rest of the upload arrives, and processing takes the result
only while it still proves the file: equal to the SHA-256 sent, over the same chunk claims.

The services run here, in the test process; the messages the chunk path queues go to the
real broker, on a queue of this test's own that no worker consumes (``private_queue``).
The worker's side, through a real worker, is in ``test_pipeline_e2e.py``.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.db import connection, transaction
from django.utils import timezone

from uploads import storage
from uploads.models import FileKind, UploadChunk, UploadFile, UploadSession, UploadState
from uploads.services import hashing, prehash, processing
from uploads.services.prehash import CLAIMED, PREHASH_TASK, upload_prehash
from uploads.services.processing import upload_process
from uploads.services.recovery import upload_chunks_forget, uploads_reconcile
from uploads.tests.broker import private_queue
from uploads.tests.helpers import content_md5, iter_file_chunks, manifest
from uploads.tests.synthetic import write_study
from uploads.tests.test_services_processing_hashes import bytes_read

pytestmark = pytest.mark.django_db(transaction=True)

CHUNK = 256 * 1024
# Larger than processing's INLINE_MAX_BYTES, so processing hashes these files apart
# (``sha256_of``), where the test can count the files it hashed.
INSTANCE_BYTES = 1_500_000


@pytest.fixture
def broker():
    # A send that failed in an earlier test of this process would pause the sends here.
    prehash._send_paused_until = 0.0
    with private_queue() as queue:
        yield queue


@pytest.fixture
def study(tmp_path: Path) -> list[Path]:
    paths = write_study(tmp_path / "study", instances=3, instance_bytes=INSTANCE_BYTES)
    assert all(p.stat().st_size > processing.INLINE_MAX_BYTES for p in paths)
    return paths


def put(api: Any, upload_id: uuid.UUID, index: int, data: bytes) -> None:
    response = api.put(
        f"/api/v1/upload/{upload_id}/chunk?index={index}",
        data=data,
        content_type="application/octet-stream",
        HTTP_CONTENT_MD5=content_md5(data),
    )
    assert response.status_code == 200, response.json()


def init(api: Any, paths: list[Path], **extra: Any) -> uuid.UUID:
    response = api.post("/api/v1/upload/init", manifest(paths, chunk_size=CHUNK, **extra), "json")
    assert response.status_code == 201, response.json()
    return uuid.UUID(response.json()["upload_id"])


def last_chunk_of(upload_id: uuid.UUID, position: int) -> int:
    f = UploadFile.objects.get(session_id=upload_id, position=position)
    return (f.offset + f.size - 1) // CHUNK


def send(api: Any, upload_id: uuid.UUID, paths: list[Path], *, up_to: int | None = None) -> None:
    """Send the upload's chunks (only indexes up to ``up_to`` when given)."""
    for index, data in iter_file_chunks(paths, CHUNK):
        if up_to is None or index <= up_to:
            put(api, upload_id, index, data)


def to_processing(upload_id: uuid.UUID) -> None:
    """Leave the upload ``processing`` as ``complete`` does, without queueing the task."""
    now = timezone.now()
    moved = UploadSession.objects.filter(pk=upload_id, state=UploadState.RECEIVING).update(
        state=UploadState.PROCESSING, received_at=now, updated_at=now
    )
    assert moved == 1


def prehashed(upload_id: uuid.UUID) -> list[tuple[str, str]]:
    """By position: ("kept" when the hash ahead equals the one sent, else what it holds;
    "fingerprint", CLAIMED or what ``prehash_chunks`` holds)."""
    rows = UploadFile.objects.filter(session_id=upload_id).order_by("position")
    return [
        (
            "kept" if f.prehash_sha256 and f.prehash_sha256 == f.sha256 else f.prehash_sha256,
            "fingerprint"
            if len(f.prehash_chunks) == 64
            else CLAIMED
            if f.prehash_chunks.startswith(f"{CLAIMED}:")
            else f.prehash_chunks,
        )
        for f in rows
    ]


def hashed_by_processing(upload_id: uuid.UUID) -> list[int]:
    """Process the upload here; the positions of the files processing hashed itself."""
    with mock.patch.object(processing, "sha256_of", wraps=processing.sha256_of) as hashed:
        upload_process(upload_id=upload_id)
    return sorted(call.kwargs["f"].position for call in hashed.call_args_list)


def test_stored_files_are_hashed_ahead_once_and_processing_uses_the_results(api, study, broker):
    upload_id = init(api, study)
    send(api, upload_id, study, up_to=last_chunk_of(upload_id, 1))  # file 2 not complete

    assert upload_prehash(upload_id=upload_id) == 2
    assert prehashed(upload_id) == [("kept", "fingerprint"), ("kept", "fingerprint"), ("", "")]
    assert upload_prehash(upload_id=upload_id) == 0  # nothing new is complete
    send(api, upload_id, study)
    to_processing(upload_id)
    assert upload_prehash(upload_id=upload_id) == 0  # no longer receiving: left to processing
    assert prehashed(upload_id)[2] == ("", "")

    assert hashed_by_processing(upload_id) == [2]
    session = UploadSession.objects.get(pk=upload_id)
    assert session.state == UploadState.FORWARDING, session.error
    kinds = UploadFile.objects.filter(session=session).values_list("kind", flat=True)
    assert list(kinds) == [FileKind.DICOM] * 3


def test_a_file_damaged_on_the_way_keeps_no_result_and_processing_rejects_it(api, study, broker):
    body = manifest(study, chunk_size=CHUNK, allow_partial=True)
    body["files"][1]["sha256"] = "ab" * 32
    response = api.post("/api/v1/upload/init", body, "json")
    assert response.status_code == 201, response.json()
    upload_id = uuid.UUID(response.json()["upload_id"])
    send(api, upload_id, study)

    assert upload_prehash(upload_id=upload_id) == 2
    assert prehashed(upload_id) == [("kept", "fingerprint"), ("", CLAIMED), ("kept", "fingerprint")]
    to_processing(upload_id)
    assert hashed_by_processing(upload_id) == [1]
    damaged = UploadFile.objects.get(session_id=upload_id, position=1)
    assert (damaged.kind, damaged.reason) == (
        FileKind.REJECTED,
        "the file changed on the way: its SHA-256 does not match the one sent",
    )


def test_a_result_over_a_chunk_forgotten_and_sent_again_differently_is_not_used(api, study, broker):
    upload_id = init(api, study)
    send(api, upload_id, study)
    assert upload_prehash(upload_id=upload_id) == 3
    # A chunk inside file 0 is forgotten (as recovery does when a power cut lost its bytes)
    # and arrives again with other bytes of the same size.
    f = UploadFile.objects.get(session_id=upload_id, position=0)
    index = f.offset // CHUNK + 1
    assert (index + 1) * CHUNK <= f.offset + f.size
    session = UploadSession.objects.get(pk=upload_id)
    with transaction.atomic():
        assert upload_chunks_forget(upload_id=upload_id, size=session.total_size, lost=[index])
    put(api, upload_id, index, os.urandom(CHUNK))

    to_processing(upload_id)
    assert hashed_by_processing(upload_id) == [0]
    changed = UploadFile.objects.get(session_id=upload_id, position=0)
    assert (changed.kind, changed.reason) == (
        FileKind.REJECTED,
        "the file changed on the way: its SHA-256 does not match the one sent",
    )


def test_the_chunk_that_crosses_each_step_queues_one_hashing(api, study, broker, monkeypatch):
    monkeypatch.setattr(prehash, "PREHASH_EVERY_BYTES", 4 * CHUNK)
    upload_id = init(api, study)
    chunks = list(iter_file_chunks(study, CHUNK))
    for index, data in chunks[:9]:
        put(api, upload_id, index, data)
    assert broker.for_upload(upload_id) == [PREHASH_TASK] * 2  # 4 and 8 chunks stored
    put(api, upload_id, *chunks[8])  # the same chunk again stores nothing new
    assert broker.for_upload(upload_id) == [PREHASH_TASK] * 2
    for index, data in chunks[9:]:
        put(api, upload_id, index, data)
    total = UploadSession.objects.get(pk=upload_id).total_size
    assert broker.for_upload(upload_id) == [PREHASH_TASK] * (total // (4 * CHUNK))


def test_the_hashing_thread_runs_below_normal_priority():
    seen: list[int] = []

    def run() -> None:
        prehash._lower_priority()
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert seen == [min(19, base + prehash.PREHASH_NICE)]
    assert base < seen[0]  # this thread, the caller's, is not lowered


# Several seconds of SHA-256 here, so that a hash run to the end is told apart from one
# that stopped (a sparse file: reading its holes costs no I/O).
LARGE_FILE = 8 * 1024**3
LARGE_CHUNK = 16 * 1024 * 1024


def test_hashing_stops_soon_after_the_upload_leaves_receiving(api):
    response = api.post(
        "/api/v1/upload/init",
        {
            "files": [{"name": "IM0001.dcm", "size": LARGE_FILE, "sha256": "ab" * 32}],
            "chunk_size": LARGE_CHUNK,
        },
        "json",
    )
    assert response.status_code == 201, response.json()
    upload_id = uuid.UUID(response.json()["upload_id"])
    session = UploadSession.objects.get(pk=upload_id)
    assert storage.stream_exists(upload_id=upload_id)
    # Every chunk stored, as far as the rows say (the bytes are the sparse file's holes).
    UploadChunk.objects.bulk_create(
        UploadChunk(session=session, index=i, size=LARGE_CHUNK, md5="0" * 32, stored=True)
        for i in range(session.total_chunks)
    )
    start = bytes_read()
    outcome: list[int] = []

    def run() -> None:
        try:
            outcome.append(upload_prehash(upload_id=upload_id))
        finally:
            connection.close()  # this thread's own

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 30
    while bytes_read() - start < 64 * 1024 * 1024:
        assert time.monotonic() < deadline, "hashing did not start"
        time.sleep(0.01)
    to_processing(upload_id)
    stopped_at = time.monotonic()
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert outcome == [0]
    # Within a state check and a block, not after the 8 GiB.
    assert time.monotonic() - stopped_at < prehash.STATE_CHECK_SECONDS + 2
    assert bytes_read() - start < LARGE_FILE // 2
    assert prehashed(upload_id) == [("", CLAIMED)]


def test_files_another_task_is_hashing_are_not_hashed_again(api, study, broker):
    upload_id = init(api, study)
    send(api, upload_id, study)
    first_two = UploadFile.objects.filter(session_id=upload_id, position__lt=2)
    assert prehash._claim(pks=[f.pk for f in first_two], token=f"{CLAIMED}:other") == {
        f.pk for f in first_two
    }

    with mock.patch.object(hashing, "sha256_of", wraps=hashing.sha256_of) as hashed:
        assert upload_prehash(upload_id=upload_id) == 1
    assert [call.kwargs["f"].position for call in hashed.call_args_list] == [2]
    assert prehashed(upload_id) == [("", CLAIMED), ("", CLAIMED), ("kept", "fingerprint")]


def test_small_files_read_in_one_piece_are_not_hashed_again(api, tmp_path, broker):
    paths = write_study(tmp_path / "small", instances=3, instance_bytes=500_000)
    assert all(p.stat().st_size <= processing.INLINE_MAX_BYTES for p in paths)

    def sha256_calls(*, ahead: bool) -> int:
        upload_id = init(api, paths)
        send(api, upload_id, paths)
        if ahead:
            assert upload_prehash(upload_id=upload_id) == 3
        to_processing(upload_id)
        with mock.patch.object(processing, "hashlib", wraps=hashlib) as counted:
            upload_process(upload_id=upload_id)
        assert UploadSession.objects.get(pk=upload_id).state == UploadState.FORWARDING
        return counted.sha256.call_count

    assert sha256_calls(ahead=False) == 3
    assert sha256_calls(ahead=True) == 0


def test_a_restore_forgets_the_results(api, study, broker):
    upload_id = init(api, study)
    send(api, upload_id, study)
    assert upload_prehash(upload_id=upload_id) == 3

    uploads_reconcile()

    assert prehashed(upload_id) == [("", "")] * 3
    to_processing(upload_id)
    assert hashed_by_processing(upload_id) == [0, 1, 2]


def test_one_task_hashes_an_upload_at_a_time(api, study, broker):
    upload_id = init(api, study)
    send(api, upload_id, study)
    running = timezone.now() + prehash.LEASE
    UploadSession.objects.filter(pk=upload_id).update(prehash_until=running)
    assert upload_prehash(upload_id=upload_id) == 0  # another task holds the upload
    assert prehashed(upload_id) == [("", "")] * 3

    # That task's worker died: once its lease runs out, the next task hashes the files.
    UploadSession.objects.filter(pk=upload_id).update(prehash_until=timezone.now())
    assert upload_prehash(upload_id=upload_id) == 3
    assert UploadSession.objects.get(pk=upload_id).prehash_until is None


def test_sends_paused_after_a_failed_send_resume_when_the_pause_ends(broker):
    """The pause a failed send sets (test_broker_unanswered.py) holds back sends until its
    deadline and no longer: the next chunk that asks after it queues hashing ahead again."""
    paused, resumed = uuid.uuid4(), uuid.uuid4()
    prehash._send_paused_until = time.monotonic() + prehash.SEND_PAUSE_SECONDS
    prehash.prehash_request(upload_id=paused)
    prehash._send_paused_until = time.monotonic() - 0.001  # the pause just ended
    prehash.prehash_request(upload_id=resumed)
    assert broker.for_upload(paused) == []
    assert broker.for_upload(resumed) == [PREHASH_TASK]
