"""The SHA-256 pass of processing stops with its lease: a cancel, or a second worker taking
the upload over, ends the hashing of a multi-GB file within one block, not after the file.

The upload is one sparse file of several GiB (no disk used; reading its holes costs no
I/O, so the full hash takes as long as SHA-256 of that many bytes). Bytes read are taken
from the kernel's count for this process (``rchar`` in /proc/self/io), so the test does
not depend on how busy the machine is.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from uploads import storage
from uploads.models import FileKind, UploadFile, UploadSession, UploadState
from uploads.services.processing import upload_process

pytestmark = pytest.mark.django_db(transaction=True)

# Several seconds of SHA-256 here (about 1.8 GB/s per core), so that a hash run to the
# end is told apart from one that stopped.
FILE_SIZE = 8 * 1024**3
CHUNK_SIZE = 16 * 1024 * 1024
# Hashing is under way once the process has read this much since the start.
STARTED_BYTES = 64 * 1024 * 1024


def bytes_read() -> int:
    """Bytes this process (all its threads) has read so far, as the kernel counts them."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def large_upload_processing(api: Any) -> uuid.UUID:
    """An upload of one FILE_SIZE file with a SHA-256 sent, left ``processing`` as
    ``complete`` leaves it (its bytes are the sparse assembly file ``init`` made)."""
    init = api.post(
        "/api/v1/upload/init",
        {
            "files": [{"name": "IM0001.dcm", "size": FILE_SIZE, "sha256": "ab" * 32}],
            "chunk_size": CHUNK_SIZE,
        },
        "json",
    )
    assert init.status_code == 201, init.json()
    upload_id = uuid.UUID(init.json()["upload_id"])
    now = timezone.now()
    moved = UploadSession.objects.filter(pk=upload_id, state=UploadState.RECEIVING).update(
        state=UploadState.PROCESSING, received_at=now, updated_at=now
    )
    assert moved == 1
    return upload_id


def cancel(api: Any, upload_id: uuid.UUID) -> None:
    response = api.delete(f"/api/v1/upload/{upload_id}")
    assert response.status_code in (200, 202, 204), response.content


def take_over(api: Any, upload_id: uuid.UUID) -> None:
    # Another worker took the upload over (as after this process stalled past its lease).
    UploadSession.objects.filter(pk=upload_id).update(
        lease_owner="another-worker", lease_until=timezone.now() + timedelta(minutes=5)
    )


@pytest.mark.parametrize("lose_the_lease", [cancel, take_over], ids=["cancel", "take-over"])
def test_losing_the_lease_stops_hashing_a_large_file_within_a_block(api, settings, lose_the_lease):
    settings.UPLOAD_LEASE_SECONDS = 1  # the heartbeat renews every third of a second
    upload_id = large_upload_processing(api)

    def run() -> bool:
        try:
            return upload_process(upload_id=upload_id)
        finally:
            connection.close()  # this thread's own connection

    before = bytes_read()
    with ThreadPoolExecutor(max_workers=1) as pool:
        outcome = pool.submit(run)
        deadline = time.monotonic() + 60
        while bytes_read() - before < STARTED_BYTES and not outcome.done():
            assert time.monotonic() < deadline, "hashing never started"
            time.sleep(0.005)
        assert not outcome.done()  # still hashing the file

        lose_the_lease(api, upload_id)
        lost_at, read_at_loss = time.monotonic(), bytes_read()
        assert outcome.result(timeout=60) is False  # stopped, wrote nothing
        stopped_after = time.monotonic() - lost_at
        read_after_loss = bytes_read() - read_at_loss

    # One heartbeat interval to notice, then one block: far from the rest of the file.
    assert read_after_loss < FILE_SIZE // 4, read_after_loss
    assert stopped_after < 3.0, stopped_after
    assert set(UploadFile.objects.filter(session_id=upload_id).values_list("kind", flat=True)) <= {
        FileKind.PENDING
    }
    storage.stream_delete(upload_id=upload_id)  # the take-over left it (sparse, no data)
