"""Reading from the bucket ahead: a long read sends the GET of its next window while it
reads the current one (uploads.storage.s3, READ_AHEAD_WINDOW), against moto's S3 server."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from uploads import storage

# The read-ahead GET runs in another thread: it shows in the client's events at once on
# an idle machine, within seconds on a loaded one.
AHEAD_SEEN_SECONDS = 30


@pytest.fixture
def gets(s3_settings: Any, settings: Any, tmp_path: Path) -> Iterator[list[tuple[int, int]]]:
    """The byte ranges (first, last) of every GetObject this process sends, in order."""
    from uploads.storage import s3

    settings.UPLOAD_STORAGE_DIR = tmp_path / "uploads"
    ranges: list[tuple[int, int]] = []
    lock = threading.Lock()

    def record(model: Any, params: dict[str, Any], **_: Any) -> None:
        if model.name == "GetObject":
            first, last = params["Range"][len("bytes=") :].split("-")
            with lock:
                ranges.append((int(first), int(last)))

    events = s3.client().meta.events
    events.register("provide-client-params.s3.GetObject", record, unique_id="test-read-ahead")
    yield ranges
    events.unregister("provide-client-params.s3.GetObject", unique_id="test-read-ahead")


def _stored_in_one_chunk(size: int) -> tuple[uuid.UUID, bytes]:
    """An upload whose bytes are one chunk object, so that ranges are offsets in it."""
    data = os.urandom(size)
    upload_id = uuid.uuid4()
    storage.stream_create(upload_id=upload_id, size=size)
    storage.stream_write(upload_id=upload_id, offset=0, data=data)
    return upload_id, data


def _wait_for(check: Any) -> None:
    deadline = time.monotonic() + AHEAD_SEEN_SECONDS
    while not check():
        assert time.monotonic() < deadline, "the read-ahead GET was never sent"
        time.sleep(0.01)


def test_a_long_read_asks_for_its_next_window_before_it_gets_there(gets):
    from uploads.storage import s3

    upload_id, data = _stored_in_one_chunk(3 * s3.MAX_WINDOW)
    with storage.open_range(upload_id=upload_id, offset=0, size=len(data)) as reader:
        first = reader.read(1024 * 1024)
        # The GET of bytes not read yet is on its way before the reader asks for them.
        _wait_for(lambda: any(start >= len(first) for start, _ in list(gets)))
        rest = b"".join(iter(lambda: reader.read(1024 * 1024), b""))
    assert first + rest == data
    ranges = sorted(gets)
    # Every byte fetched once: the windows sent ahead were the ones read.
    assert ranges[0][0] == 0 and ranges[-1][1] == len(data) - 1
    assert all(a[1] + 1 == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    storage.stream_delete(upload_id=upload_id)


def test_a_reader_that_seeks_or_closes_with_a_window_on_its_way_reads_true_bytes(gets):
    from uploads.storage import s3

    upload_id, data = _stored_in_one_chunk(2 * s3.MAX_WINDOW + 12345)
    with storage.open_range(upload_id=upload_id, offset=0, size=len(data)) as reader:
        assert reader.read(1024 * 1024) == data[: 1024 * 1024]
        reader.seek(100)
        assert reader.read(1024 * 1024) == data[100 : 100 + 1024 * 1024]
        reader.seek(len(data) - 5000)
        assert reader.read(1024 * 1024) == data[-5000:]
        reader.seek(0)
        assert b"".join(iter(lambda: reader.read(1024 * 1024), b"")) == data
    with storage.open_range(upload_id=upload_id, offset=10, size=len(data) - 10) as reader:
        assert reader.read(1024 * 1024) == data[10 : 10 + 1024 * 1024]
    # Closed with a window sent ahead: the next reader still gets its bytes.
    with storage.open_range(upload_id=upload_id, offset=0, size=len(data)) as reader:
        assert b"".join(iter(lambda: reader.read(1024 * 1024), b"")) == data
    storage.stream_delete(upload_id=upload_id)


def test_a_header_read_sends_nothing_ahead(gets):
    from uploads.storage import s3

    upload_id, data = _stored_in_one_chunk(3 * s3.MAX_WINDOW)
    with storage.open_range(upload_id=upload_id, offset=0, size=len(data)) as reader:
        assert reader.read(16) == data[:16]
        reader.seek(s3.MAX_WINDOW)
        assert reader.read(132) == data[s3.MAX_WINDOW : s3.MAX_WINDOW + 132]
    # A long read afterwards, whose GETs come after any the header reads sent.
    with storage.open_range(upload_id=upload_id, offset=0, size=len(data)) as reader:
        assert b"".join(iter(lambda: reader.read(1024 * 1024), b"")) == data
    assert gets[:2] == [
        (0, s3.MIN_WINDOW - 1),
        (s3.MAX_WINDOW, s3.MAX_WINDOW + s3.MIN_WINDOW - 1),
    ]
    # Nothing was sent ahead by the header reads: the rest is the long read, once.
    assert gets[2] == (0, s3.MIN_WINDOW - 1)
    assert sum(last - first + 1 for first, last in gets[2:]) == len(data)
    storage.stream_delete(upload_id=upload_id)
