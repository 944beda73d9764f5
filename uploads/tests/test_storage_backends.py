"""The upload storage contract, run against both backends: local disk and S3 (a real moto
server spoken to over HTTP)."""

from __future__ import annotations

import io
import os
import random
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.utils import timezone

from relaypacs.errors import ApplicationError
from uploads import storage
from uploads.checks import upload_storage_check
from uploads.services.maintenance import upload_folders_sweep

CHUNK = 256 * 1024


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, settings: Any, tmp_path: Path) -> str:
    settings.UPLOAD_STORAGE_DIR = tmp_path / "uploads"
    if request.param == "s3":
        request.getfixturevalue("s3_settings")
    else:
        settings.UPLOAD_STORAGE = "local"
    return str(request.param)


def _chunks(data: bytes) -> list[tuple[int, bytes]]:
    return [(offset, data[offset : offset + CHUNK]) for offset in range(0, len(data), CHUNK)]


def _stored(data: bytes, *, shuffle: bool = True) -> uuid.UUID:
    upload_id = uuid.uuid4()
    storage.stream_create(upload_id=upload_id, size=len(data))
    chunks = _chunks(data)
    if shuffle:
        random.Random(7).shuffle(chunks)
    for offset, chunk in chunks:
        storage.stream_write(upload_id=upload_id, offset=offset, data=chunk)
    return upload_id


def _read(upload_id: uuid.UUID, offset: int, size: int, block: int = 65536) -> bytes:
    with storage.open_range(upload_id=upload_id, offset=offset, size=size) as reader:
        return b"".join(iter(lambda: reader.read(block), b""))


def _bucket_keys(s3_server: Any, upload_id: uuid.UUID) -> list[str]:
    return s3_server.keys(f"uploads/{upload_id}/")


def test_chunks_written_out_of_order_and_concurrently_read_back_whole(backend):
    data = os.urandom(9 * CHUNK + 4321)
    upload_id = uuid.uuid4()
    storage.stream_create(upload_id=upload_id, size=len(data))
    chunks = _chunks(data)
    random.Random(3).shuffle(chunks)

    with ThreadPoolExecutor(max_workers=6) as pool:
        list(
            pool.map(
                lambda c: storage.stream_write(upload_id=upload_id, offset=c[0], data=c[1]), chunks
            )
        )

    assert _read(upload_id, 0, len(data)) == data
    assert storage.stream_delete(upload_id=upload_id)


def test_a_retried_or_duplicated_chunk_changes_nothing(backend, request):
    data = os.urandom(4 * CHUNK + 99)
    upload_id = _stored(data)
    duplicate = data[2 * CHUNK : 3 * CHUNK]

    with ThreadPoolExecutor(max_workers=4) as pool:  # a retry racing the first attempt
        list(
            pool.map(
                lambda _: storage.stream_write(
                    upload_id=upload_id, offset=2 * CHUNK, data=memoryview(duplicate)
                ),
                range(4),
            )
        )

    assert _read(upload_id, 0, len(data)) == data
    if backend == "s3":
        keys = _bucket_keys(request.getfixturevalue("s3_server"), upload_id)
        assert len([k for k in keys if "/chunks/" in k]) == 5  # one object per chunk
    storage.stream_delete(upload_id=upload_id)


@pytest.mark.parametrize(
    ("offset", "size"),
    [
        (0, 1),
        (CHUNK - 1, 2),  # one byte each side of a boundary
        (CHUNK, CHUNK),  # exactly one chunk
        (CHUNK - 10, 3 * CHUNK + 20),  # spans four chunks
        (777, 5 * CHUNK),
        (6 * CHUNK - 5, 4321 + 5),  # into the short last chunk, to the end
        (0, 6 * CHUNK + 4321),  # everything
        (1234, 0),  # an empty file
    ],
)
@pytest.mark.parametrize("block", [1000, 65536, 3 * CHUNK])
def test_ranges_across_chunk_boundaries_read_exactly_their_bytes(backend, offset, size, block):
    data = os.urandom(6 * CHUNK + 4321)
    upload_id = _stored(data)

    assert _read(upload_id, offset, size, block) == data[offset : offset + size]
    storage.stream_delete(upload_id=upload_id)


def test_a_reader_seeks_back_and_forth_across_chunks(backend):
    data = os.urandom(5 * CHUNK + 17)
    upload_id = _stored(data)
    offset, size = 100, 5 * CHUNK - 150
    window = data[offset : offset + size]
    buffer = bytearray(300)

    with storage.open_range(upload_id=upload_id, offset=offset, size=size) as reader:
        for pos in [3 * CHUNK - 150, 10, 2 * CHUNK - 100, size - 120, 0, CHUNK]:
            reader.seek(pos)
            count = reader.readinto(buffer)
            assert bytes(buffer[:count]) == window[pos : pos + 300]
            assert reader.tell() == pos + count
        reader.seek(-5, io.SEEK_END)
        assert reader.read() == window[-5:]
        assert reader.read(10) == b""
    storage.stream_delete(upload_id=upload_id)


def test_derived_files_are_read_from_any_node_once_published(backend, request):
    data = os.urandom(2 * CHUNK)
    upload_id = _stored(data)
    small, large = os.urandom(1000), os.urandom(3 * CHUNK + 5)

    with storage.work_scope(upload_id=upload_id):
        work = storage.work_reset(upload_id=upload_id)
        (work / "0.d").mkdir()
        (work / "0.d" / "Patient Name.dcm").write_bytes(small)
        (work / "1.dcm").write_bytes(large)
        with storage.open_member(
            upload_id=upload_id, offset=0, size=len(small), path="0.d/Patient Name.dcm"
        ) as reader:
            assert reader.read() == small  # while processing: this node's scratch
        storage.work_publish(upload_id=upload_id)

    for path, content in [("0.d/Patient Name.dcm", small), ("1.dcm", large)]:
        with storage.open_member(
            upload_id=upload_id, offset=0, size=len(content), path=path
        ) as reader:
            assert reader.read() == content
    with storage.open_member(upload_id=upload_id, offset=CHUNK - 3, size=6) as reader:
        assert reader.read() == data[CHUNK - 3 : CHUNK + 3]
    if backend == "s3":
        assert not storage.work_dir(upload_id=upload_id).exists()  # nothing left on disk
        keys = _bucket_keys(request.getfixturevalue("s3_server"), upload_id)
        assert not any("Patient" in key for key in keys)  # entry names never in keys
    storage.stream_delete(upload_id=upload_id)


def test_a_large_derived_file_goes_up_in_parts_of_at_least_5_mib(
    s3_settings, settings, tmp_path, monkeypatch
):
    from uploads.storage import s3

    settings.UPLOAD_STORAGE_DIR = tmp_path / "uploads"
    # Our own part size, at S3's (and moto's) minimum: 3 parts for 12 MiB.
    monkeypatch.setattr(s3, "MULTIPART_THRESHOLD", 6 * 1024 * 1024)
    monkeypatch.setattr(s3, "MULTIPART_CHUNKSIZE", 5 * 1024 * 1024)
    content = os.urandom(12 * 1024 * 1024 + 7)
    upload_id = _stored(os.urandom(CHUNK))
    with storage.work_scope(upload_id=upload_id):
        (storage.work_reset(upload_id=upload_id) / "big.dcm").write_bytes(content)
        storage.work_publish(upload_id=upload_id)

    with storage.open_member(
        upload_id=upload_id, offset=0, size=len(content), path="big.dcm"
    ) as reader:
        assert reader.read() == content
    head = s3_settings.client().head_object(
        Bucket=s3_settings.bucket, Key=s3._work_key(upload_id, "big.dcm")
    )
    assert head["ETag"].strip('"').endswith("-3")  # a multipart object of three parts
    storage.stream_delete(upload_id=upload_id)


def test_delete_removes_every_object_and_unfinished_multipart_upload(backend, request):
    upload_id = _stored(os.urandom(3 * CHUNK + 1))
    with storage.work_scope(upload_id=upload_id):
        (storage.work_reset(upload_id=upload_id) / "1.dcm").write_bytes(b"x" * 100)
        storage.work_publish(upload_id=upload_id)
    storage.work_reset(upload_id=upload_id)  # a run killed while writing derived files
    if backend == "s3":
        s3_server = request.getfixturevalue("s3_server")
        # ... and while publishing a large one.
        s3_server.client().create_multipart_upload(
            Bucket=s3_server.bucket, Key=f"uploads/{upload_id}/work/abc"
        )
    assert storage.stream_exists(upload_id=upload_id)

    assert storage.stream_delete(upload_id=upload_id)
    assert storage.stream_delete(upload_id=upload_id)  # idempotent

    assert not storage.stream_exists(upload_id=upload_id)
    assert upload_id not in {u for u, _ in storage.stored_uploads()}
    if backend == "s3":
        assert _bucket_keys(s3_server, upload_id) == []
        assert s3_server.multipart_uploads(f"uploads/{upload_id}/") == []
    assert not (Path(storage.storage_root()) / str(upload_id)).exists()


@pytest.mark.django_db
def test_the_sweep_removes_bytes_no_upload_owns(backend):
    orphan = _stored(os.urandom(CHUNK + 5))
    listed = dict(storage.stored_uploads())
    assert orphan in listed and listed[orphan] <= timezone.now() + timedelta(seconds=5)

    upload_folders_sweep(now=timezone.now() + timedelta(days=2))

    assert not storage.stream_exists(upload_id=orphan)


def test_multipart_uploads_older_than_the_resume_window_are_aborted(s3_settings, settings):
    s3 = s3_settings.client()
    key = f"uploads/{uuid.uuid4()}/work/abc"
    s3.create_multipart_upload(Bucket=s3_settings.bucket, Key=key)

    # moto reports every multipart upload as started on 2010-11-10 (a fixed date in its
    # answer), so "newer than the cut-off" is shown with a cut-off before that.
    assert storage.multipart_uploads_abort(older_than=datetime(2001, 1, 1, tzinfo=UTC)) == 0
    assert [u for u in s3_settings.multipart_uploads() if u["Key"] == key] != []
    window = timezone.now() - settings.UPLOAD_RESUME_WINDOW
    assert storage.multipart_uploads_abort(older_than=window) == 1
    assert [u for u in s3_settings.multipart_uploads() if u["Key"] == key] == []


def test_storage_check_and_free_space(backend):
    state, detail = storage.storage_check()
    assert state == "ok", detail
    if backend == "s3":
        assert "not applicable" in detail
        # A bucket has no free space to run out of: init's disk check always passes.
        assert storage.free_bytes() - 256 * 1024**2 > 20 * 1024**4
    else:
        assert storage.free_bytes() > 0


def test_a_missing_bucket_is_a_start_up_error_that_names_it(s3_settings, settings):
    settings.S3_BUCKET = "relaypacs-no-such-bucket"

    errors = upload_storage_check()

    assert [e.id for e in errors] == ["uploads.E002"]
    assert "relaypacs-no-such-bucket" in errors[0].msg and "does not exist" in errors[0].msg
    with pytest.raises(SystemCheckError, match="relaypacs-no-such-bucket"):
        call_command("check")


def test_the_configured_bucket_passes_the_start_up_check(s3_settings):
    assert upload_storage_check() == []


def test_an_unknown_storage_is_a_start_up_error(settings):
    settings.UPLOAD_STORAGE = "ftp"

    assert [e.id for e in upload_storage_check()] == ["uploads.E001"]


def test_a_chunk_the_bucket_refuses_is_not_acknowledged(s3_settings, settings):
    settings.S3_BUCKET = "relaypacs-no-such-bucket"

    with pytest.raises(ApplicationError) as caught:
        storage.stream_write(upload_id=uuid.uuid4(), offset=0, data=b"x" * 10)

    assert caught.value.status_code == 503 and caught.value.code == "storage_unavailable"


def test_s3_settings_can_be_read_from_files(tmp_path, monkeypatch):
    from relaypacs.settings.base import _env_or_file

    secret = tmp_path / "s3-secret"
    secret.write_text("from-a-file\n")
    monkeypatch.setenv("S3_SECRET_ACCESS_KEY", "from-the-environment")
    assert _env_or_file("S3_SECRET_ACCESS_KEY") == "from-the-environment"
    monkeypatch.setenv("S3_SECRET_ACCESS_KEY_FILE", str(secret))
    assert _env_or_file("S3_SECRET_ACCESS_KEY") == "from-a-file"


def test_without_s3_credentials_boto3s_default_chain_is_used(s3_settings, settings, monkeypatch):
    from uploads.storage import s3

    settings.S3_ACCESS_KEY_ID = settings.S3_SECRET_ACCESS_KEY = ""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-aws-variables")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-aws-variables-secret")

    assert storage.storage_check()[0] == "ok"
    assert s3.client()._request_signer._credentials.access_key == "from-aws-variables"


@pytest.fixture
def s3_calls(s3_settings: Any) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """The S3 operations this process makes, with their parameters, while the test runs."""
    from uploads.storage import s3

    calls: list[tuple[str, dict[str, Any]]] = []

    def record(model: Any, params: dict[str, Any], **_: Any) -> None:
        calls.append((model.name, params))

    events = s3.client().meta.events
    events.register("provide-client-params.s3.*", record, unique_id="test-s3-calls")
    yield calls
    events.unregister("provide-client-params.s3.*", unique_id="test-s3-calls")


def test_each_chunk_costs_one_put_and_a_read_streams_bounded_windows(s3_calls, settings, tmp_path):
    from uploads.storage import s3

    settings.UPLOAD_STORAGE_DIR = tmp_path / "uploads"
    # Chunks larger than the largest window, so that a GET of a whole object would show.
    big = s3.MAX_WINDOW + 1024 * 1024
    data = os.urandom(2 * big + 3)
    upload_id = uuid.uuid4()
    calls = s3_calls
    storage.stream_create(upload_id=upload_id, size=len(data))
    for offset in range(0, len(data), big):
        storage.stream_write(upload_id=upload_id, offset=offset, data=data[offset : offset + big])
    assert [name for name, _ in calls] == ["PutObject"] * 4  # the marker, then 1 per chunk

    calls.clear()
    with storage.open_range(upload_id=upload_id, offset=10, size=len(data) - 20) as reader:
        while block := reader.read(1024 * 1024):
            assert len(block) <= 1024 * 1024
    gets = [params for name, params in calls if name == "GetObject"]
    assert [name for name, _ in calls if name != "GetObject"] == ["HeadObject"]  # chunk size
    windows = [int(b) - int(a) + 1 for a, b in (p["Range"][6:].split("-") for p in gets)]
    # From one buffer, growing WINDOW_GROWTH times per sequential GET, up to MAX_WINDOW.
    growing = [s3.MIN_WINDOW * s3.WINDOW_GROWTH**n for n in range(4)]
    assert growing[-1] < s3.MAX_WINDOW
    assert windows[:4] == growing
    assert max(windows) == s3.MAX_WINDOW < big  # never a whole object, let alone a file
    assert sum(windows) == len(data) - 20  # every byte fetched once
    assert len(gets) <= 4 * 3 + 3  # a few GETs per chunk on a sequential read
    storage.stream_delete(upload_id=upload_id)


def test_a_chunk_given_as_a_memoryview_goes_up_without_a_copy(s3_settings, settings, tmp_path):
    settings.UPLOAD_STORAGE_DIR = tmp_path / "uploads"
    data = bytearray(os.urandom(16 * 1024 * 1024))  # the largest chunk a client may send
    upload_id = uuid.uuid4()
    storage.stream_create(upload_id=upload_id, size=len(data))
    storage.stream_write(upload_id=upload_id, offset=0, data=b"warm up the client")

    tracemalloc.start()
    try:
        storage.stream_write(upload_id=upload_id, offset=0, data=memoryview(data))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < len(data) // 2  # a copy of the chunk would be all of it
    assert _read(upload_id, 0, len(data), block=4 * 1024 * 1024) == data
    storage.stream_delete(upload_id=upload_id)


@pytest.fixture
def health_probes(s3_settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The S3 operations of the health probe, and a clock the test moves."""
    from uploads.storage import s3

    calls: list[str] = []
    clock = [1000.0]
    monkeypatch.setattr(s3, "_clock", lambda: clock[0])
    monkeypatch.setattr(s3, "_health", {})

    def record(model: Any, **_: Any) -> None:
        calls.append(model.name)

    events = s3.client(probe=True).meta.events
    events.register("provide-client-params.s3.*", record, unique_id="test-health-calls")

    class Probes:
        operations = calls

        @staticmethod
        def advance(seconds: float) -> None:
            clock[0] += seconds

    yield Probes
    events.unregister("provide-client-params.s3.*", unique_id="test-health-calls")


def test_the_s3_health_check_is_cached_and_writes_only_now_and_then(health_probes, settings):
    from uploads.storage import s3

    for _ in range(5):  # a load balancer polling
        assert storage.storage_check()[0] == "ok"
    assert health_probes.operations == ["HeadBucket", "PutObject", "DeleteObject"]

    health_probes.operations.clear()
    health_probes.advance(s3.HEALTH_CACHE_SECONDS - 1)
    storage.storage_check()
    assert health_probes.operations == []  # within the cache: no request at all
    health_probes.advance(2)
    storage.storage_check()
    storage.storage_check()
    assert health_probes.operations == ["HeadBucket"]  # no write probe yet
    health_probes.operations.clear()
    health_probes.advance(s3.HEALTH_WRITE_PROBE_SECONDS)
    assert storage.storage_check()[0] == "ok"
    assert health_probes.operations == ["HeadBucket", "PutObject", "DeleteObject"]

    # One attempt per request and short timeouts: a poll never waits for botocore.
    config = s3.client(probe=True).meta.config
    assert config.retries["total_max_attempts"] == 1
    assert config.connect_timeout == s3.HEALTH_CONNECT_TIMEOUT
    assert config.read_timeout == s3.HEALTH_READ_TIMEOUT


def test_the_s3_health_check_fails_fast_when_the_storage_is_down(s3_settings, settings):
    from uploads.storage import s3
    from uploads.tests.s3_server import S3Outage

    outage = S3Outage(s3_settings.endpoint_url)
    settings.S3_ENDPOINT_URL = outage.endpoint_url
    try:
        outage.down()
        started = time.monotonic()
        state, detail = storage.storage_check()
        assert state == "failing" and s3_settings.bucket in detail
        assert time.monotonic() - started < s3.HEALTH_CONNECT_TIMEOUT + s3.HEALTH_READ_TIMEOUT
    finally:
        outage.close()


def test_s3_errors_that_say_wait_are_told_apart_from_errors_that_say_wrong():
    from botocore.exceptions import ClientError, EndpointConnectionError

    from uploads.storage import s3

    def client_error(code: str, status: int) -> ClientError:
        return ClientError(
            {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject"
        )

    for outage in [
        EndpointConnectionError(endpoint_url="http://s3.invalid"),
        client_error("InternalError", 500),
        client_error("ServiceUnavailable", 503),
        client_error("SlowDown", 503),
        client_error("RequestTimeout", 400),
        client_error("AccessDenied", 403),
        client_error("NoSuchBucket", 404),
    ]:
        assert isinstance(s3._storage_error("a read", outage), storage.StorageUnavailable), outage
    wrong = s3._storage_error("a read", client_error("InvalidRange", 416))
    assert isinstance(wrong, OSError) and not isinstance(wrong, storage.StorageUnavailable)
    assert str(wrong) == "a read: S3 request failed (InvalidRange)"
