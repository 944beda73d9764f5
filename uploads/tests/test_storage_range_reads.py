"""Reading a file of the upload back: a window of the assembly file, into the caller's buffer."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from uploads import storage


@pytest.fixture
def stream() -> Iterator[tuple[uuid.UUID, bytes]]:
    upload_id = uuid.uuid4()
    data = os.urandom(3 * storage.BLOCK_SIZE + 12345)
    storage.stream_create(upload_id=upload_id, size=len(data))
    storage.stream_write(upload_id=upload_id, offset=0, data=data)
    yield upload_id, data
    storage.stream_delete(upload_id=upload_id)


@pytest.mark.parametrize("block", [1, 4096, 65536, storage.BLOCK_SIZE, 5 * storage.BLOCK_SIZE])
def test_a_range_reads_back_exactly_its_bytes_whatever_the_block_size(stream, block):
    upload_id, data = stream
    offset, size = 777, 2 * storage.BLOCK_SIZE + 999

    with storage.open_range(upload_id=upload_id, offset=offset, size=size) as reader:
        got = b"".join(iter(lambda: reader.read(block), b""))

    assert got == data[offset : offset + size]


def test_readinto_fills_the_callers_buffer_and_stops_at_the_end_of_the_range(stream):
    upload_id, data = stream
    buffer = bytearray(100)

    with storage.open_range(upload_id=upload_id, offset=10, size=60) as reader:
        assert reader.readinto(buffer) == 60
        assert reader.readinto(buffer) == 0
        reader.seek(50)
        assert reader.readinto(memoryview(buffer)[:5]) == 5

    assert bytes(buffer[:5]) == data[60:65]
    assert bytes(buffer[5:60]) == data[15:70]
