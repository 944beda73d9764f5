"""Complete is where the server takes an upload, so it is where its bytes become durable
(``UPLOAD_FSYNC``, uploads.services.ingest.upload_complete): on local disk the assembly
file is flushed once there, and chunks a power cut lost after their answer are asked for
again with ``upload_incomplete``; ``UPLOAD_FSYNC=chunk`` still flushes every chunk; S3
needs nothing more. Real PostgreSQL, real files, the moto S3 server."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from relaypacs.errors import ApplicationError
from relaypacs.settings.base import upload_fsync_mode
from uploads import storage
from uploads.models import UploadChunkCounter, UploadSession, UploadState
from uploads.selectors import upload_status
from uploads.services import chunk_store, upload_cancel, upload_complete
from uploads.services.ingest import ManifestFile, UploadInit, upload_init
from uploads.services.recovery import upload_chunks_forget
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


@pytest.mark.django_db
def test_a_flush_the_disk_refuses_asks_for_every_chunk_again(
    user, settings, tmp_path, payload, monkeypatch
):
    _local(settings, tmp_path, "complete")
    session = _new_upload(user, payload)
    for index in range(CHUNKS):
        _send(session, payload, index)
    real_fdatasync = os.fdatasync

    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(ApplicationError) as refused:
        upload_complete(session=session)
    monkeypatch.setattr(os, "fdatasync", real_fdatasync)

    assert refused.value.extra["missing_chunks"] == [0, 1, 2, 3]
    session.refresh_from_db()
    assert session.state == UploadState.RECEIVING
    assert upload_status(session=session)["bytes_received"] == 0


@pytest.mark.django_db
def test_a_cancel_while_complete_flushes_wins_and_complete_says_so(
    user, settings, tmp_path, payload, monkeypatch
):
    _local(settings, tmp_path, "complete")
    session = _new_upload(user, payload)
    for index in range(CHUNKS):
        _send(session, payload, index)
    _around_flush(monkeypatch, lambda: upload_cancel(session=_fresh(session)))

    with pytest.raises(ApplicationError) as refused:
        upload_complete(session=session)

    assert refused.value.code == "upload_not_receiving"
    assert _fresh(session).state == UploadState.CANCELLED


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
