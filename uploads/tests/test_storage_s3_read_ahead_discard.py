"""A window sent ahead that nobody will read (uploads.storage.s3, ``_discard``): when its
GET is still queued, because every read-ahead thread is busy, it is never sent; against
moto's S3 server."""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path
from typing import Any

from uploads import storage


def test_a_read_ahead_still_queued_when_its_reader_closes_is_never_sent(
    s3_settings: Any, settings: Any, tmp_path: Path
) -> None:
    from uploads.storage import s3

    settings.UPLOAD_STORAGE_DIR = tmp_path / "uploads"
    data = os.urandom(2 * s3.MAX_WINDOW)
    upload_id = uuid.uuid4()
    storage.stream_create(upload_id=upload_id, size=len(data))
    storage.stream_write(upload_id=upload_id, offset=0, data=data)
    sent: list[tuple[int, int]] = []
    lock = threading.Lock()

    def record(model: Any, params: dict[str, Any], **_: Any) -> None:
        if model.name == "GetObject":
            first, last = params["Range"][len("bytes=") :].split("-")
            with lock:
                sent.append((int(first), int(last)))

    events = s3.client().meta.events
    events.register("provide-client-params.s3.GetObject", record, unique_id="test-discard")
    pool = s3._read_ahead_pool()
    release = threading.Event()
    # Every read-ahead thread busy: a window sent ahead now waits in the queue.
    busy = [pool.submit(release.wait, 60) for _ in range(s3.READ_AHEAD_THREADS)]
    try:
        with storage.open_range(upload_id=upload_id, offset=0, size=len(data)) as reader:
            # One long read of the raw reader: it gets the first window and sends the GET
            # of the next one ahead (a buffered read would go on to wait for it).
            buffer = bytearray(4 * s3.READ_BUFFER)
            read = reader.raw.readinto(memoryview(buffer))  # type: ignore[attr-defined]
            assert bytes(buffer[:read]) == data[:read]
    finally:
        release.set()
        for task in busy:
            task.result(timeout=30)
        pool.submit(lambda: None).result(timeout=30)  # the queue ran dry behind it
        events.unregister("provide-client-params.s3.GetObject", unique_id="test-discard")
    assert sent == [(0, read - 1)]  # the queued read-ahead was dropped, not sent
    # The pool still serves the next reader.
    with storage.open_range(upload_id=upload_id, offset=0, size=len(data)) as reader:
        assert b"".join(iter(lambda: reader.read(1024 * 1024), b"")) == data
    storage.stream_delete(upload_id=upload_id)
