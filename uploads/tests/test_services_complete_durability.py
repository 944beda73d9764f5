"""Complete is where the server takes an upload, so it is where its bytes become durable
(``UPLOAD_FSYNC``, uploads.services.ingest.upload_complete): on local disk the assembly
file is flushed once there, and chunks a power cut lost after their answer are asked for
again with ``upload_incomplete``; ``UPLOAD_FSYNC=chunk`` still flushes every chunk; S3
needs nothing more. Real PostgreSQL, real files, the moto S3 server."""

from __future__ import annotations

import errno
import io
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection

from relaypacs.errors import ApplicationError
from relaypacs.settings.base import upload_fsync_mode
from uploads import storage
from uploads.models import UploadChunk, UploadChunkCounter, UploadSession, UploadState
from uploads.selectors import upload_status
from uploads.services import chunk_store, upload_cancel, upload_complete
from uploads.services.ingest import (
    COMPLETE_ROUNDS,
    STORAGE_RETRY_AFTER_SECONDS,
    ManifestFile,
    UploadInit,
    upload_init,
)
from uploads.services.recovery import upload_chunks_forget, uploads_reconcile
from uploads.tests.helpers import content_md5

REPO = Path(__file__).resolve().parents[2]
CHUNK = 256 * 1024  # the smallest chunk the API allows
CHUNKS = 4


@pytest.fixture
def payload() -> bytes:
    return os.urandom(CHUNK * (CHUNKS - 1) + 1000)


def _chunk(payload: bytes, index: int) -> bytes:
    return payload[index * CHUNK : (index + 1) * CHUNK]


def _local(settings: Any, tmp_path: Path, mode: str) -> Path:
    settings.UPLOAD_STORAGE = "local"
    settings.UPLOAD_STORAGE_DIR = tmp_path / "uploads"
    settings.UPLOAD_FSYNC = mode
    return tmp_path / "uploads"


def _new_upload(user: Any, payload: bytes) -> UploadSession:
    return upload_init(
        owner=user,
        request=UploadInit(
            files=[ManifestFile(name="a.dcm", size=len(payload))],
            metadata={},
            clinical_notes="",
            service_level="routine",
            chunk_size=CHUNK,
            allow_partial=False,
            force_upload=True,
        ),
    )


def _send(session: UploadSession, payload: bytes, index: int) -> None:
    data = _chunk(payload, index)
    chunk_store(
        session=session,
        index=index,
        body=io.BytesIO(data),
        length=len(data),
        content_md5=content_md5(data),
    )


def _api_upload(api: Any, payload: bytes) -> str:
    return str(
        api.post(
            "/api/v1/upload/init",
            {"files": [{"name": "a.dcm", "size": len(payload)}], "chunk_size": CHUNK},
            format="json",
        ).json()["upload_id"]
    )


def _put(api: Any, upload_id: str, payload: bytes, index: int) -> Any:
    data = _chunk(payload, index)
    return api.put(
        f"/api/v1/upload/{upload_id}/chunk?index={index}",
        data=data,
        content_type="application/octet-stream",
        HTTP_CONTENT_MD5=content_md5(data),
    )


def _power_cut(path: Path, payload: bytes, *, kept: list[int]) -> None:
    """The assembly file as a power cut leaves it when only the chunks ``kept`` had
    reached the disk: the same size, the others' ranges never written (holes)."""
    os.truncate(path, 0)
    os.truncate(path, len(payload))
    fd = os.open(path, os.O_WRONLY)
    try:
        for index in kept:
            os.pwrite(fd, _chunk(payload, index), index * CHUNK)
    finally:
        os.close(fd)


@pytest.mark.django_db
def test_chunks_a_power_cut_lost_before_complete_are_asked_for_again(
    api, settings, tmp_path, payload
):
    root = _local(settings, tmp_path, "complete")
    upload = api.post(
        "/api/v1/upload/init",
        {"files": [{"name": "a.dcm", "size": len(payload)}], "chunk_size": CHUNK},
        format="json",
    ).json()
    upload_id = upload["upload_id"]
    for index in range(CHUNKS):
        assert _put(api, upload_id, payload, index).status_code == 200
    _power_cut(root / upload_id / "stream.bin", payload, kept=[0, 1, 3])

    response = api.post(f"/api/v1/upload/{upload_id}/complete")

    assert response.status_code == 409, response.json()
    error = response.json()["error"]
    assert error["code"] == "upload_incomplete"
    assert error["missing_chunks"] == [2]
    status = api.get(f"/api/v1/upload/{upload_id}/status").json()
    assert status["state"] == "receiving"
    assert status["missing_chunks"] == [2]
    assert status["bytes_received"] == len(payload) - CHUNK
    assert UploadChunkCounter.objects.get(session_id=upload_id).bytes_received == (
        len(payload) - CHUNK
    )

    assert _put(api, upload_id, payload, 2).status_code == 200
    response = api.post(f"/api/v1/upload/{upload_id}/complete")

    assert response.status_code == 202, response.json()
    assert response.json()["state"] == "processing"
    with storage.open_range(upload_id=upload_id, offset=0, size=len(payload)) as stream:
        assert stream.read() == payload


@pytest.mark.django_db
def test_an_assembly_file_lost_whole_is_made_again_and_every_chunk_asked_for(
    user, settings, tmp_path, payload
):
    root = _local(settings, tmp_path, "complete")
    session = _new_upload(user, payload)
    for index in range(CHUNKS):
        _send(session, payload, index)
    shutil.rmtree(root / str(session.pk))  # the folder's entry never reached the disk

    with pytest.raises(ApplicationError) as refused:
        upload_complete(session=session)

    assert refused.value.code == "upload_incomplete"
    assert refused.value.extra["missing_chunks"] == [0, 1, 2, 3]
    assert upload_status(session=session)["bytes_received"] == 0
    for index in range(CHUNKS):
        _send(session, payload, index)  # the stream is there again to take them
    assert upload_complete(session=session).state == UploadState.PROCESSING


@pytest.fixture
def flushes(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Every ``os.fdatasync`` (by the name of the file flushed) and folder ``os.fsync``,
    counted, then done for real."""
    seen: Counter[str] = Counter()
    real_fdatasync, real_fsync = os.fdatasync, os.fsync

    def name(fd: int) -> str:
        return os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))

    def fdatasync(fd: int) -> None:
        seen[f"fdatasync {name(fd)}"] += 1
        real_fdatasync(fd)

    def fsync(fd: int) -> None:
        seen["fsync folder" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync file"] += 1
        real_fsync(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(os, "fsync", fsync)
    return seen


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("mode", "during_chunks", "at_complete"),
    [
        ("chunk", {"fdatasync stream.bin": CHUNKS}, {"fdatasync stream.bin": 1, "fsync folder": 2}),
        ("complete", {}, {"fdatasync stream.bin": 1, "fsync folder": 2}),
        ("off", {}, {}),
    ],
)
def test_each_mode_flushes_where_it_says(
    api, settings, tmp_path, payload, flushes, mode, during_chunks, at_complete
):
    _local(settings, tmp_path, mode)
    upload_id = api.post(
        "/api/v1/upload/init",
        {"files": [{"name": "a.dcm", "size": len(payload)}], "chunk_size": CHUNK},
        format="json",
    ).json()["upload_id"]
    flushes.clear()  # init writes nothing it must flush

    for index in range(CHUNKS):
        assert _put(api, upload_id, payload, index).status_code == 200
    assert dict(flushes) == during_chunks
    flushes.clear()
    assert api.post(f"/api/v1/upload/{upload_id}/complete").status_code == 202

    assert dict(flushes) == at_complete


def _failing_fdatasync(fd: int) -> None:
    raise OSError(errno.EIO, "Input/output error")


@pytest.mark.django_db
def test_a_flush_the_disk_refuses_forgets_every_chunk_and_asks_to_wait(
    api, settings, tmp_path, payload, monkeypatch
):
    _local(settings, tmp_path, "complete")
    upload_id = _api_upload(api, payload)
    for index in range(CHUNKS):
        assert _put(api, upload_id, payload, index).status_code == 200

    with monkeypatch.context() as patched:
        patched.setattr(os, "fdatasync", _failing_fdatasync)
        response = api.post(f"/api/v1/upload/{upload_id}/complete")

    assert response.status_code == 503, response.json()
    assert response.json()["error"]["code"] == "storage_unavailable"
    assert response["Retry-After"] == str(STORAGE_RETRY_AFTER_SECONDS)
    status = api.get(f"/api/v1/upload/{upload_id}/status").json()
    assert status["state"] == "receiving"
    assert status["missing_chunks"] == [0, 1, 2, 3]
    assert status["bytes_received"] == 0


@pytest.mark.django_db
def test_a_read_back_the_disk_refuses_is_a_flush_error(
    user, settings, tmp_path, payload, monkeypatch
):
    _local(settings, tmp_path, "complete")
    session = _new_upload(user, payload)
    for index in range(CHUNKS):
        _send(session, payload, index)
    _received_before_boot(session, [1])  # so that it is read back

    def failing_pread(fd: int, length: int, offset: int) -> bytes:
        raise OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as patched, pytest.raises(ApplicationError) as refused:
        patched.setattr(os, "pread", failing_pread)
        upload_complete(session=session)

    assert (refused.value.code, refused.value.status_code) == ("storage_unavailable", 503)
    assert upload_status(session=session)["missing_chunks"] == [0, 1, 2, 3]


@pytest.mark.django_db
def test_a_cancel_while_complete_flushes_wins_and_complete_says_so(
    user, settings, tmp_path, payload, monkeypatch, caplog, django_capture_on_commit_callbacks
):
    # The cancel commits (and its callback removes the upload's folder) between the
    # assembly file's flush and its folder's: no disk error is reported for it.
    _local(settings, tmp_path, "complete")
    session = _new_upload(user, payload)
    for index in range(CHUNKS):
        _send(session, payload, index)
    real_fdatasync = os.fdatasync
    pending = [True]

    def fdatasync_then_cancel(fd: int) -> None:
        real_fdatasync(fd)
        if pending:
            pending.pop()
            with django_capture_on_commit_callbacks(execute=True):
                upload_cancel(session=_fresh(session))

    monkeypatch.setattr(os, "fdatasync", fdatasync_then_cancel)
    caplog.set_level(logging.INFO)

    with pytest.raises(ApplicationError) as refused:
        upload_complete(session=session)

    assert not pending, "the cancel ran during the flush"
    assert not storage.stream_exists(upload_id=session.pk)  # its folder was removed
    assert refused.value.code == "upload_not_receiving"
    assert _fresh(session).state == UploadState.CANCELLED
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def _boot_time() -> datetime:
    """This machine's boot time, as the kernel computes /proc/stat's btime."""
    return datetime.fromtimestamp(time.time() - time.clock_gettime(time.CLOCK_BOOTTIME), tz=UTC)


def _received_before_boot(session: UploadSession, indexes: list[int]) -> None:
    """Chunks ``indexes`` as a machine rebooted since they were received finds them: a
    minute AFTER the boot time the clocks give, inside the margin a clock stepped after
    the boot may hide (so the margin's direction is checked too)."""
    UploadChunk.objects.filter(session=session, index__in=indexes).update(
        received_at=_boot_time() + timedelta(seconds=60)
    )


def _overwrite(path: Path, index: int) -> None:
    """Other, non-zero bytes over chunk ``index``, with no hole: what a filesystem that
    reports no holes (or ext4 data=writeback's stale blocks) shows for a lost write."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, b"\xa5" * CHUNK, index * CHUNK)
    finally:
        os.close(fd)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.lseek(fd, index * CHUNK, os.SEEK_HOLE) >= (index + 1) * CHUNK  # no hole
    finally:
        os.close(fd)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The offset of every ``os.pread``, recorded, then done for real."""
    seen: list[int] = []
    real = os.pread

    def pread(fd: int, length: int, offset: int) -> bytes:
        seen.append(offset)
        return real(fd, length, offset)

    monkeypatch.setattr(os, "pread", pread)
    return seen


@pytest.mark.django_db
def test_a_chunk_received_before_the_boot_is_read_back_and_found_lost_without_a_hole(
    user, settings, tmp_path, payload, reads
):
    root = _local(settings, tmp_path, "complete")
    session = _new_upload(user, payload)
    for index in range(CHUNKS):
        _send(session, payload, index)
    _received_before_boot(session, [2])
    _overwrite(root / str(session.pk) / "stream.bin", 2)

    with pytest.raises(ApplicationError) as refused:
        upload_complete(session=session)

    assert refused.value.code == "upload_incomplete"
    assert refused.value.extra["missing_chunks"] == [2]
    assert {offset // CHUNK for offset in reads} == {2}  # only that chunk was read back
    _send(session, payload, 2)
    assert upload_complete(session=session).state == UploadState.PROCESSING


@pytest.mark.django_db
def test_a_chunk_received_since_the_boot_is_not_read_back_the_page_cache_cannot_lose_it_without_a_reboot(
    user, settings, tmp_path, payload, reads, monkeypatch
):
    # The same damage as above, on a chunk received after the boot: by design it is not
    # looked for (no reboot, no lost page-cache write), and the check reads nothing. The
    # boot a day ago: a CI machine may have booted minutes ago (inside the margin).
    from uploads.storage import local

    monkeypatch.setattr(local, "booted_at", lambda: datetime.now(tz=UTC) - timedelta(days=1))
    root = _local(settings, tmp_path, "complete")
    session = _new_upload(user, payload)
    for index in range(CHUNKS):
        _send(session, payload, index)
    _overwrite(root / str(session.pk) / "stream.bin", 2)

    assert upload_complete(session=session).state == UploadState.PROCESSING
    assert reads == []


@pytest.mark.django_db
def test_where_the_boot_time_cannot_be_told_every_chunk_is_read_back(
    user, settings, tmp_path, payload, reads, monkeypatch
):
    root = _local(settings, tmp_path, "complete")
    session = _new_upload(user, payload)
    for index in range(CHUNKS):
        _send(session, payload, index)
    _overwrite(root / str(session.pk) / "stream.bin", 1)
    monkeypatch.delattr(time, "CLOCK_BOOTTIME")  # as on a system other than Linux

    with pytest.raises(ApplicationError) as refused:
        upload_complete(session=session)

    assert refused.value.extra["missing_chunks"] == [1]
    assert {offset // CHUNK for offset in reads} == {0, 1, 2, 3}


@pytest.mark.django_db
def test_reconcile_reads_back_a_receiving_uploads_chunks_received_before_the_boot(
    user, settings, tmp_path, payload
):
    root = _local(settings, tmp_path, "complete")
    session = _new_upload(user, payload)
    for index in range(CHUNKS):
        _send(session, payload, index)
    _received_before_boot(session, [0, 3])
    _overwrite(root / str(session.pk) / "stream.bin", 3)

    summary = uploads_reconcile()

    assert (summary.resumable, summary.chunks_to_resend) == (1, 1)
    assert upload_status(session=session)["missing_chunks"] == [3]


@pytest.mark.django_db
def test_a_chunk_forgotten_and_sent_again_while_complete_flushes_is_flushed_before_it_takes(
    user, settings, tmp_path, payload, monkeypatch, flushes
):
    # A concurrent complete found chunk 1 lost and forgot it, and the client sent it
    # again, all while this complete was flushing: the chunk it checked is gone, and the
    # one sent again is not flushed yet.
    _local(settings, tmp_path, "complete")
    session = _new_upload(user, payload)
    for index in range(CHUNKS):
        _send(session, payload, index)

    def forget_and_send_again() -> None:
        assert upload_chunks_forget(upload_id=session.pk, size=session.total_size, lost=[1])
        _send(session, payload, 1)

    _around_flush(monkeypatch, forget_and_send_again)

    assert upload_complete(session=session).state == UploadState.PROCESSING
    assert flushes["fdatasync stream.bin"] == 2  # a second round flushed the chunk sent again
    assert upload_status(session=session)["bytes_received"] == len(payload)


def _fresh(session: UploadSession) -> UploadSession:
    return UploadSession.objects.get(pk=session.pk)


def _around_flush(monkeypatch: pytest.MonkeyPatch, meanwhile: Callable[[], None]) -> None:
    """Run ``meanwhile`` once, right after the first real ``storage.stream_flush``: what a
    concurrent request does while complete flushes."""
    real = storage.stream_flush
    pending = [meanwhile]

    def flush(*, upload_id: Any) -> None:
        real(upload_id=upload_id)
        if pending:
            pending.pop()()

    monkeypatch.setattr(storage, "stream_flush", flush)


@pytest.mark.django_db
def test_on_s3_complete_makes_no_request_for_durability(user, s3_settings, settings, payload):
    settings.UPLOAD_FSYNC = "complete"
    session = _new_upload(user, payload)
    for index in range(CHUNKS):
        _send(session, payload, index)
    requests: list[str] = []

    def count(request: Any, **kwargs: Any) -> None:
        requests.append(f"{request.method} {request.url}")

    events = storage.s3_client().meta.events
    events.register("before-send.s3", count)
    try:
        assert upload_complete(session=session).state == UploadState.PROCESSING
    finally:
        events.unregister("before-send.s3", count)

    assert requests == []
    with storage.open_range(upload_id=session.pk, offset=0, size=len(payload)) as stream:
        assert stream.read() == payload


@pytest.mark.parametrize(
    ("value", "mode"),
    [
        ("complete", "complete"),
        ("chunk", "chunk"),
        ("off", "off"),
        (" Chunk ", "chunk"),
        ("true", "chunk"),
        ("1", "chunk"),
        ("yes", "chunk"),
        ("false", "off"),
        ("0", "off"),
        ("no", "off"),
    ],
)
def test_upload_fsync_takes_the_three_modes_and_the_old_booleans(value, mode):
    assert upload_fsync_mode(value) == mode


@pytest.mark.parametrize("value", ["always", "", "2"])
def test_a_malformed_upload_fsync_is_refused_with_a_sentence(value):
    with pytest.raises(ImproperlyConfigured) as refused:
        upload_fsync_mode(value)
    assert str(refused.value) == (
        "The environment variable UPLOAD_FSYNC is malformed: it must be complete (the "
        "default), chunk or off (true and false are read as chunk and off). Correct "
        "UPLOAD_FSYNC and start again."
    )


def _settings_process(tmp_path: Path, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "UPLOAD_FSYNC"}
    environment.update(
        DJANGO_SETTINGS_MODULE="relaypacs.settings.dev", DATA_DIR=str(tmp_path), **env
    )
    return subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {code}"],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_default_is_complete_and_a_malformed_value_stops_start_up(tmp_path):
    done = _settings_process(
        tmp_path, "from django.conf import settings; print(settings.UPLOAD_FSYNC)"
    )
    assert done.stdout.strip() == "complete", done.stderr

    done = _settings_process(tmp_path, "print('started')", UPLOAD_FSYNC="sometimes")

    assert done.returncode != 0 and "started" not in done.stdout
    assert "The environment variable UPLOAD_FSYNC is malformed" in done.stderr
    assert "sometimes" not in done.stderr


@pytest.mark.django_db
def test_when_chunks_are_forgotten_and_sent_again_at_every_round_complete_asks_for_them(
    user, settings, tmp_path, payload, monkeypatch
):
    _local(settings, tmp_path, "complete")
    session = _new_upload(user, payload)
    for index in range(CHUNKS):
        _send(session, payload, index)
    real = storage.stream_flush
    rounds: list[None] = []

    def flush_while_chunk_1_is_forgotten_and_sent_again(*, upload_id: Any) -> None:
        real(upload_id=upload_id)
        rounds.append(None)
        assert upload_chunks_forget(upload_id=session.pk, size=session.total_size, lost=[1])
        _send(session, payload, 1)

    monkeypatch.setattr(storage, "stream_flush", flush_while_chunk_1_is_forgotten_and_sent_again)

    with pytest.raises(ApplicationError) as refused:
        upload_complete(session=session)

    assert len(rounds) == COMPLETE_ROUNDS
    assert refused.value.code == "upload_incomplete"
    assert refused.value.extra["missing_chunks"] == [1]
    assert "lost track" in refused.value.message
    assert "have not arrived" not in refused.value.message
    assert _fresh(session).state == UploadState.RECEIVING


@pytest.mark.django_db
def test_an_upload_deleted_while_complete_flushes_is_not_found(
    api, settings, tmp_path, payload, monkeypatch
):
    _local(settings, tmp_path, "complete")
    upload_id = _api_upload(api, payload)
    for index in range(CHUNKS):
        assert _put(api, upload_id, payload, index).status_code == 200
    _around_flush(monkeypatch, lambda: UploadSession.objects.filter(pk=upload_id).delete())

    response = api.post(f"/api/v1/upload/{upload_id}/complete")

    assert response.status_code == 404
    unknown = api.post(f"/api/v1/upload/{uuid.uuid4()}/complete")
    assert response.json() == unknown.json()


def _flock_refusals(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every ``flock`` of the upload storage refused because another holds the lock (the
    complete lock polls without blocking), recorded by file descriptor."""
    from uploads.storage import local

    refused: list[int] = []
    real = local.fcntl.flock

    def flock(fd: int, operation: int) -> None:
        try:
            real(fd, operation)
        except BlockingIOError:
            refused.append(fd)
            raise

    monkeypatch.setattr(local.fcntl, "flock", flock)
    return refused


@pytest.mark.django_db(transaction=True)
def test_a_second_complete_waits_for_the_first_round_and_finds_what_its_failed_flush_forgot(
    user, settings, tmp_path, payload, monkeypatch
):
    # Linux reports a failed write-back to the first fdatasync only: complete A gets the
    # error, complete B (started while A flushes) would flush without one and take the
    # upload, its bytes never written, unless it waits for A to forget the chunks.
    root = _local(settings, tmp_path, "complete")
    session = _new_upload(user, payload)
    for index in range(CHUNKS):
        _send(session, payload, index)
    assert (root / str(session.pk) / "stream.bin").exists()
    refusals = _flock_refusals(monkeypatch)
    real_fdatasync = os.fdatasync
    first = threading.Event()
    b_waited: list[bool] = []

    def fdatasync(fd: int) -> None:
        if first.is_set():
            real_fdatasync(fd)
            return
        first.set()  # A's flush: wait for B to wait for A's lock, then fail
        deadline = time.monotonic() + 20
        while not refusals and time.monotonic() < deadline:
            time.sleep(0.01)
        b_waited.append(bool(refusals))
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    outcomes: dict[str, Any] = {}

    def complete(name: str) -> None:
        try:
            outcomes[name] = upload_complete(session=_fresh(session)).state
        except ApplicationError as error:
            outcomes[name] = error
        finally:
            connection.close()

    a = threading.Thread(target=complete, args=("a",))
    a.start()
    assert first.wait(20)
    b = threading.Thread(target=complete, args=("b",))
    b.start()
    a.join(30)
    b.join(30)

    assert b_waited == [True]
    assert outcomes["a"].code == "storage_unavailable"
    assert outcomes["b"].code == "upload_incomplete"
    assert outcomes["b"].extra["missing_chunks"] == [0, 1, 2, 3]
    assert _fresh(session).state == UploadState.RECEIVING


@pytest.mark.django_db
def test_a_complete_behind_another_ones_long_flush_answers_busy_instead_of_waiting_for_ever(
    user, settings, tmp_path, payload, monkeypatch
):
    import fcntl

    from uploads.storage import local

    root = _local(settings, tmp_path, "complete")
    session = _new_upload(user, payload)
    for index in range(CHUNKS):
        _send(session, payload, index)
    monkeypatch.setattr(local, "COMPLETE_LOCK_WAIT_SECONDS", 0.3)
    holder = os.open(root / str(session.pk) / "stream.bin", os.O_RDWR)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)  # another complete, flushing (a hung disk)
        began = time.monotonic()
        with pytest.raises(ApplicationError) as busy:
            upload_complete(session=session)
        assert time.monotonic() - began < 5
    finally:
        os.close(holder)
    assert (busy.value.code, busy.value.status_code, busy.value.retry_after) == (
        "storage_unavailable",
        503,
        5,
    )
    assert _fresh(session).state == UploadState.RECEIVING
    assert upload_complete(session=session).state == UploadState.PROCESSING  # lock gone
