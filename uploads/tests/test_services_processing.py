"""The processing service run here, in the test process: its lease, the archive limits of a
whole upload, damaged inputs, and what reaches the logs.

Uploads are received through the API and then handed to ``upload_process`` directly (not
through ``complete``), so that no worker of another test picks them up.
"""

from __future__ import annotations

import io
import logging
import random
import threading
import time
import traceback
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.db import connection
from django.utils import timezone
from PIL import Image

from uploads import storage
from uploads.models import FileKind, Study, UploadFile, UploadSession, UploadState
from uploads.services import processing
from uploads.services.leases import lease_claim
from uploads.services.processing import upload_process
from uploads.tests.helpers import content_md5, iter_file_chunks, manifest, sample_paths
from uploads.tests.rar5 import rar5_stored

pytestmark = pytest.mark.django_db(transaction=True)

CHUNK = 256 * 1024
# A synthetic patient name, as a CD names its folders; it must never reach a log line.
PATIENT_FOLDER = "MUSTERMANN^ERIKA"


def received_upload(
    api: Any, paths: list[Path], files: list[dict[str, Any]] | None = None, **extra: Any
) -> uuid.UUID:
    """Send ``paths`` as one upload and leave it ``processing``, as ``complete`` does, but
    without queueing the task. ``files``: the manifest's entries, if not those of ``paths``."""
    body = manifest(paths, chunk_size=CHUNK, **extra)
    if files is not None:
        body["files"] = files
    init = api.post("/api/v1/upload/init", body, "json")
    assert init.status_code == 201, init.json()
    upload_id = uuid.UUID(init.json()["upload_id"])
    for index, data in iter_file_chunks(paths, CHUNK):
        response = api.put(
            f"/api/v1/upload/{upload_id}/chunk?index={index}",
            data=data,
            content_type="application/octet-stream",
            HTTP_CONTENT_MD5=content_md5(data),
        )
        assert response.status_code == 200, response.json()
    now = timezone.now()
    moved = UploadSession.objects.filter(pk=upload_id, state=UploadState.RECEIVING).update(
        state=UploadState.PROCESSING, received_at=now, updated_at=now
    )
    assert moved == 1
    return upload_id


def zip_file(path: Path, entries: list[tuple[str, bytes]], compression: int = 0) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return path


def zip_data(entries: list[tuple[str, bytes]], compression: int = 0) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


class SlowStep:
    """Makes the header check of the first file wait until the test lets it go: one step
    of processing longer than the lease. The real check runs afterwards. (The header
    check, not the SHA-256: small files are hashed inline, large ones in threads, and
    every DICOM file's header is checked.)"""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.real = processing.inspect_instance

    def __call__(self, *, stream: Any, size: int, name: str) -> Any:
        if not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(60), "the test never let the slow step finish"
        return self.real(stream=stream, size=size, name=name)


def process_in_thread(pool: ThreadPoolExecutor, upload_id: uuid.UUID) -> Any:
    def run() -> bool:
        try:
            return upload_process(upload_id=upload_id)
        finally:
            connection.close()  # this thread's own connection

    return pool.submit(run)


# --- the lease while working (issue 9, item 3) -----------------------------------------


def test_processing_keeps_its_lease_through_a_step_longer_than_the_lease(api, settings):
    settings.UPLOAD_LEASE_SECONDS = 1
    paths = sample_paths()[:3]
    upload_id = received_upload(api, paths)
    slow = SlowStep()
    with (
        mock.patch.object(processing, "inspect_instance", autospec=True, side_effect=slow),
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        outcome = process_in_thread(pool, upload_id)
        assert slow.entered.wait(30)
        first_lease = UploadSession.objects.get(pk=upload_id).lease_until
        # Three lease lengths past the lease first taken, a second worker still finds the
        # upload taken, because the first keeps renewing while it works.
        deadline = first_lease + timedelta(seconds=3 * settings.UPLOAD_LEASE_SECONDS)
        tries = 0
        while timezone.now() < deadline:
            assert lease_claim(upload_id=upload_id, states=[UploadState.PROCESSING]) is None
            tries += 1
            time.sleep(0.05)
        assert tries > 10
        slow.release.set()
        assert outcome.result(timeout=60) is True
    session = UploadSession.objects.get(pk=upload_id)
    assert session.state == UploadState.FORWARDING
    assert session.attempts == 1  # nobody else ever claimed it
    kinds = set(UploadFile.objects.filter(session_id=upload_id).values_list("kind", flat=True))
    assert kinds == {FileKind.DICOM}


def test_a_worker_stuck_in_one_file_lets_its_lease_lapse_after_the_maximum_time(
    api, settings, monkeypatch
):
    settings.UPLOAD_LEASE_SECONDS = 1
    monkeypatch.setattr(processing, "MAX_PROCESSING_SECONDS", 1.5)
    upload_id = received_upload(api, sample_paths()[:2])
    slow = SlowStep()
    with (
        mock.patch.object(processing, "inspect_instance", autospec=True, side_effect=slow),
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        outcome = process_in_thread(pool, upload_id)
        assert slow.entered.wait(30)
        # The step never ends by itself (a hung decoder): after the maximum time the
        # heartbeat stops, the lease lapses and another worker can take the upload.
        deadline = time.monotonic() + 30
        token = None
        while token is None and time.monotonic() < deadline:
            token = lease_claim(upload_id=upload_id, states=[UploadState.PROCESSING])
            time.sleep(0.1)
        assert token is not None
        slow.release.set()
        assert outcome.result(timeout=60) is False  # the stuck worker writes nothing
    session = UploadSession.objects.get(pk=upload_id)
    assert (session.state, session.lease_owner) == (UploadState.PROCESSING, token)


def test_a_worker_that_lost_its_lease_writes_no_results(api, settings):
    settings.UPLOAD_LEASE_SECONDS = 1
    upload_id = received_upload(api, sample_paths()[:3])
    slow = SlowStep()
    with (
        mock.patch.object(processing, "inspect_instance", autospec=True, side_effect=slow),
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        outcome = process_in_thread(pool, upload_id)
        assert slow.entered.wait(30)
        # Another worker took the upload over (as after this process stalled past its lease).
        UploadSession.objects.filter(pk=upload_id).update(
            lease_owner="another-worker", lease_until=timezone.now() + timedelta(minutes=5)
        )
        slow.release.set()
        assert outcome.result(timeout=60) is False
    session = UploadSession.objects.get(pk=upload_id)
    assert (session.state, session.lease_owner) == (UploadState.PROCESSING, "another-worker")
    rows = UploadFile.objects.filter(session_id=upload_id)
    assert set(rows.values_list("kind", flat=True)) == {FileKind.PENDING}
    assert not rows.filter(parent__isnull=False).exists()
    assert not Study.objects.filter(session_id=upload_id).exists()


# --- archive limits for the whole upload (issue 9, item 7) -----------------------------


def _random(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _too_large(ct: bytes) -> list[bytes]:
    # 3 x 250 kB unpacked twice (the inner zips, then their contents): more than 1 MiB.
    return [zip_data([("IM1", ct), ("a.bin", _random(250_000, 1))])] + [
        zip_data([("b.bin", _random(250_000, n))]) for n in (2, 3)
    ]


def _too_many_entries(ct: bytes) -> list[bytes]:
    # 3 inner zips of 20 entries and the outer one's 3: 63 entries, more than 50.
    return [zip_data([("IM1", ct)] + [(f"n{n}.txt", b"x") for n in range(19)])] + [
        zip_data([(f"n{n}.txt", b"x") for n in range(20)]) for _ in range(2)
    ]


def _ratio(ct: bytes) -> list[bytes]:
    # 3 inner zips of 6 MiB of zeros, each below the 8 MiB from which the ratio is judged:
    # together 18 MiB out of about 60 kB received, over the default 100:1.
    return [zip_data([("IM1", ct)])] + [
        zip_data([("z.bin", b"\0" * 6 * 1024**2)], zipfile.ZIP_DEFLATED) for _ in range(3)
    ]


@pytest.mark.parametrize(
    ("code", "overrides", "inner"),
    [
        ("archive_too_large", {"ARCHIVE_MAX_EXPANDED_BYTES": 1024**2}, _too_large),
        ("archive_too_many_entries", {"ARCHIVE_MAX_ENTRIES": 50}, _too_many_entries),
        ("archive_ratio_exceeded", {}, _ratio),
    ],
)
def test_a_zip_of_zips_within_the_limits_each_but_over_them_together_fails(
    api, settings, tmp_path, code, overrides, inner
):
    """Every archive is within the limits alone; a good DICOM file is inside and a partial
    upload is allowed: still the upload fails with the limit's code and nothing is sent."""
    for name, value in overrides.items():
        setattr(settings, name, value)
    ct = sample_paths(["test_files/CT_small.dcm"])[0].read_bytes()
    outer = zip_file(
        tmp_path / "study.zip", [(f"part{i}.zip", data) for i, data in enumerate(inner(ct))]
    )
    upload_id = received_upload(api, [outer], allow_partial=True)

    assert upload_process(upload_id=upload_id) is False

    session = UploadSession.objects.get(pk=upload_id)
    assert session.state == UploadState.FAILED
    assert session.error["code"] == code
    assert "archives in this upload" in session.error["message"]
    assert session.files_deleted and not storage.stream_exists(upload_id=upload_id)


# --- damaged inputs and what the logs see (issue 9, items 8 and 9) ---------------------


def _photo() -> bytes:
    buffer = io.BytesIO()
    pixels = random.Random(5).randbytes(320 * 240 * 3)
    Image.frombytes("RGB", (320, 240), pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_no_archive_entry_name_reaches_a_log_line_or_an_error(api, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="pydicom")
    ct, mr = sample_paths(["test_files/CT_small.dcm", "test_files/examples_overlay.dcm"])
    photo = _photo()
    broken_inner = bytearray(zip_data([("IM5", _random(3000, 1) * 30)], zipfile.ZIP_DEFLATED))
    broken_inner[60:1500] = _random(1440, 2)  # its compressed data is damaged
    folder = PATIENT_FOLDER
    cd = zip_file(
        tmp_path / "cd.zip",
        [
            (f"{folder}/DICOM/IM1", ct.read_bytes()),
            (f"{folder}/DICOM/IM2", mr.read_bytes()[:5000]),  # truncated DICOM
            (f"{folder}/DICOM/IM1/IM3", b"a file where a folder of that name is"),
            (f"{folder}/{'X' * 300}", b"a name too long for the disk"),
            (f"../{folder}/escape", b"leaves the folder"),
            (f"{folder}/FOTO1.JPG", photo[: len(photo) // 2]),  # truncated photo
            (f"{folder}/inner.zip", bytes(broken_inner)),
        ],
        zipfile.ZIP_DEFLATED,
    )
    rar = rar5_stored(
        tmp_path / "referral.rar",
        [(f"{folder}/IM1", b"a file"), (f"{folder}/IM1/IM2", b"below a file")],
    )
    upload_id = received_upload(api, [cd, rar])

    raised: BaseException | None = None
    try:
        upload_process(upload_id=upload_id)
    except Exception as exc:  # what a crash would log, with its whole chain
        raised = exc

    assert folder not in caplog.text
    assert "MUSTERMANN" not in caplog.text
    if raised is not None:
        assert "MUSTERMANN" not in "".join(traceback.format_exception(raised))
    assert raised is None
    session = UploadSession.objects.get(pk=upload_id)
    assert session.state == UploadState.FAILED
    assert "MUSTERMANN" not in str(session.error)
    # The uploader's own file list names the files, with a reason for each.
    reasons = {
        f.name: f.reason
        for f in UploadFile.objects.filter(session_id=upload_id)
        if f.kind in (FileKind.REJECTED, FileKind.SKIPPED)
    }
    assert "damaged" in reasons[f"cd.zip/{folder}/FOTO1.JPG"]
    assert "too long" in reasons[f"cd.zip/{folder}/{'X' * 300}"]
    assert "share its path" in reasons[f"cd.zip/{folder}/DICOM/IM1/IM3"]
    assert "share its path" in reasons[f"referral.rar/{folder}/IM1/IM2"]
    assert "damaged" in reasons[f"cd.zip/{folder}/inner.zip"]


# --- small files checked from one read (issue 17) --------------------------------------


def _outcomes(upload_id: uuid.UUID) -> list[tuple[Any, ...]]:
    return list(
        UploadFile.objects.filter(session_id=upload_id)
        .order_by("position")
        .values_list(
            "position",
            "kind",
            "reason",
            "sop_class_uid",
            "sop_instance_uid",
            "study_instance_uid",
            "series_instance_uid",
        )
    )


def test_small_files_read_once_end_as_when_streamed(api, tmp_path, monkeypatch):
    # Every verdict a file of the manifest can get from the hash, the head and the header:
    # good, duplicate, truncated, trailing bytes, not DICOM, header-less (wrapped), empty,
    # and a file whose bytes differ from the SHA-256 sent.
    good = sample_paths()
    data = good[0].read_bytes()
    made = {
        "truncated.dcm": data[: len(data) // 2],
        "trailing.dcm": data + b"\0" * 10,
        "notes.txt": b"not an image, just words\n" * 20,
        "bare.dcm": data[132 + _meta_length(data) :],
        "empty.dcm": b"",
        "changed.dcm": good[1].read_bytes(),
    }
    paths = [*good, good[0]]
    for name, content in made.items():
        (tmp_path / name).write_bytes(content)
        paths.append(tmp_path / name)
    assert all(p.stat().st_size <= processing.INLINE_MAX_BYTES for p in paths)

    def upload() -> uuid.UUID:
        files = manifest(paths)["files"]
        files[-1]["sha256"] = "ab" * 32  # "changed.dcm" changed on the way
        return received_upload(api, paths, files, allow_partial=True)

    streamed = upload()
    with monkeypatch.context() as patch:
        patch.setattr(processing, "INLINE_MAX_BYTES", 0)  # every file read as before
        upload_process(upload_id=streamed)
    read_once = upload()
    with mock.patch.object(processing, "sha256_of", autospec=True) as hashed_apart:
        upload_process(upload_id=read_once)
    hashed_apart.assert_not_called()  # hashed inline, from the one read

    expected = _outcomes(streamed)
    assert _outcomes(read_once) == expected
    by_position = {row[0]: row[1:3] for row in expected}
    first = len(good)
    assert [by_position[p][0] for p in range(first)] == [FileKind.DICOM] * first
    assert by_position[first][0] == FileKind.SKIPPED  # the same image twice
    assert by_position[first + 1][1].startswith("the file is truncated")
    assert by_position[first + 2][1].endswith("unreadable bytes after its last element")
    assert by_position[first + 3] == (FileKind.SKIPPED, "a text file, not a DICOM image")
    assert by_position[first + 4][0] == FileKind.CONVERTED  # header added
    assert by_position[first + 5] == (FileKind.SKIPPED, "empty file")
    assert by_position[first + 6] == (
        FileKind.REJECTED,
        "the file changed on the way: its SHA-256 does not match the one sent",
    )


def _meta_length(data: bytes) -> int:
    """Bytes of the file meta group after the preamble and DICM (its group length + 12)."""
    assert data[128:132] == b"DICM" and data[132:136] == b"\x02\x00\x00\x00"
    return int.from_bytes(data[140:144], "little") + 12
