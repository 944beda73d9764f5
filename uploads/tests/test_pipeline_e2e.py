"""The whole path against a real Celery worker (with beat) and a real Orthanc."""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from uploads import storage
from uploads.models import PacsStatus, UploadFile, UploadSession
from uploads.tests.helpers import (
    HttpUploader,
    content_md5,
    iter_file_chunks,
    manifest,
    sample_paths,
    sop_uid,
)
from uploads.tests.pacs_proxy import pacs_proxy, proxied_pacs_env, worker_with
from uploads.tests.synthetic import write_study

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

CHUNK = 256 * 1024
FINAL = {"completed", "failed", "cancelled", "needs_confirmation"}


def send_upload(
    api: Any, paths: list[Path], *, shuffle: bool = True, **extra: Any
) -> dict[str, Any]:
    body = manifest(paths, chunk_size=CHUNK, **extra)
    init = api.post("/api/v1/upload/init", body, format="json")
    assert init.status_code == 201, init.json()
    upload = init.json()
    chunks = list(iter_file_chunks(paths, CHUNK))
    if shuffle:
        random.shuffle(chunks)
    for index, data in chunks:
        response = api.put(
            f"/api/v1/upload/{upload['upload_id']}/chunk?index={index}",
            data=data,
            content_type="application/octet-stream",
            HTTP_CONTENT_MD5=content_md5(data),
        )
        assert response.status_code == 200, response.json()
    complete = api.post(f"/api/v1/upload/{upload['upload_id']}/complete")
    assert complete.status_code == 202, complete.json()
    return upload


def wait_for(api: Any, upload_id: str, states: set[str], timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = api.get(f"/api/v1/upload/{upload_id}/status").json()
        if status["state"] in states:
            return status
        time.sleep(0.2)
    raise AssertionError(f"upload stayed {status.get('state')}: {status}")


def test_pydicom_files_reach_the_pacs_byte_identical(api, celery_worker, orthanc_clean):
    paths = sample_paths()
    upload = send_upload(api, paths)
    status = wait_for(api, upload["upload_id"], FINAL)
    assert status["state"] == "completed", status
    for path in paths:
        assert orthanc_clean.instance_file(sop_uid(path)) == path.read_bytes(), path.name
    assert status["pacs"]["acknowledged_instances"] == len(paths)
    receipt = next(iter(status["pacs"]["receipt"].values()))
    assert receipt["confirmed_instances"] == len(paths) and receipt["confirmed_at"]
    names = {s["patient_name"] for s in status["studies"]}
    assert "Люкceмбypг" in names  # chrRuss: ISO 8859-5 decoded to UTF-8
    assert any("قباني" in n for n in names)  # chrArab
    assert sum(s["instances"] for s in status["studies"]) == len(paths)
    assert not storage.stream_exists(upload_id=upload["upload_id"])  # no PHI left behind


def test_files_are_hashed_while_the_rest_arrives_and_the_study_reaches_the_pacs(
    api, celery_worker, orthanc_clean, tmp_path
):
    # 70 MiB in 1 MiB chunks. The 64th chunk stored carries the upload across 64 MiB
    # (PREHASH_EVERY_BYTES) and queues the worker's hashing; the rest is sent only once
    # it is done, so exactly the files inside the first 64 MiB can have been hashed.
    paths = write_study(tmp_path / "study", instances=70, instance_bytes=1024 * 1024 - 4096)
    chunk = 1024 * 1024
    init = api.post("/api/v1/upload/init", manifest(paths, chunk_size=chunk), format="json")
    assert init.status_code == 201, init.json()
    upload_id = init.json()["upload_id"]
    chunks = list(iter_file_chunks(paths, chunk))

    def put(index: int, data: bytes) -> None:
        response = api.put(
            f"/api/v1/upload/{upload_id}/chunk?index={index}",
            data=data,
            content_type="application/octet-stream",
            HTTP_CONTENT_MD5=content_md5(data),
        )
        assert response.status_code == 200, response.json()

    for index, data in chunks[:64]:
        put(index, data)
    files = UploadFile.objects.filter(session_id=upload_id)
    inside = {f.position for f in files if f.offset + f.size <= 64 * chunk}
    assert 60 <= len(inside) < len(paths)
    deadline = time.monotonic() + 60
    while files.exclude(prehash_sha256="").count() < len(inside):
        assert time.monotonic() < deadline, "the worker did not hash the stored files ahead"
        time.sleep(0.2)
    assert {f.position for f in files.all() if f.prehash_sha256 == f.sha256} == inside
    for index, data in chunks[64:]:
        put(index, data)

    complete = api.post(f"/api/v1/upload/{upload_id}/complete")
    assert complete.status_code == 202, complete.json()
    status = wait_for(api, upload_id, FINAL)
    assert status["state"] == "completed", status
    for path in paths:
        assert orthanc_clean.instance_file(sop_uid(path)) == path.read_bytes(), path.name
    # Processing took those results instead of hashing the files again.
    used = f"upload {upload_id}: {len(inside)} of {len(paths)} files were checked"
    assert used in celery_worker.log_path.read_text()


def test_damaged_file_blocks_forwarding_unless_partial_is_allowed(
    api, celery_worker, orthanc_clean, tmp_path
):
    good = sample_paths(["test_files/CT_small.dcm"])[0]
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(good.read_bytes()[:-300])
    notes = tmp_path / "Thumbs.db"
    notes.write_bytes(b"not dicom at all" * 20)
    upload = send_upload(api, [good, truncated, notes])
    status = wait_for(api, upload["upload_id"], FINAL)
    assert status["state"] == "failed"
    assert status["error"]["code"] == "invalid_files"
    assert [f["name"] for f in status["rejected_files"]] == ["truncated.dcm"]
    assert "truncated" in status["rejected_files"][0]["reason"]
    assert [f["name"] for f in status["skipped_files"]] == ["Thumbs.db"]
    assert sop_uid(good) not in orthanc_clean.sop_instance_uids()

    partial = send_upload(api, [good, truncated, notes], allow_partial=True)
    status = wait_for(api, partial["upload_id"], FINAL)
    assert status["state"] == "completed", status
    assert sop_uid(good) in orthanc_clean.sop_instance_uids()


def test_typed_patient_name_that_differs_needs_confirmation(api, celery_worker, orthanc_clean):
    path = sample_paths(["test_files/CT_small.dcm"])[0]
    upload = send_upload(api, [path], metadata={"patient_name": "Someone^Else"})
    status = wait_for(api, upload["upload_id"], FINAL)
    assert status["state"] == "needs_confirmation"
    assert any("differs" in w for w in status["warnings"])
    assert sop_uid(path) not in orthanc_clean.sop_instance_uids()
    assert api.post(f"/api/v1/upload/{upload['upload_id']}/confirm").status_code == 202
    assert wait_for(api, upload["upload_id"], FINAL)["state"] == "completed"
    assert sop_uid(path) in orthanc_clean.sop_instance_uids()


def test_instances_already_delivered_are_not_sent_again(api, celery_worker, orthanc_clean):
    paths = sample_paths(["test_files/CT_small.dcm", "charset_files/chrGreek.dcm"])
    first = send_upload(api, paths[:1])
    assert wait_for(api, first["upload_id"], FINAL)["state"] == "completed"
    second = send_upload(api, paths)
    status = wait_for(api, second["upload_id"], FINAL)
    assert status["state"] == "completed"
    assert status["pacs"]["already_delivered_instances"] == [sop_uid(paths[0])]
    assert status["pacs"]["acknowledged_instances"] == 1


def test_pacs_down_then_back_is_delivered_when_it_returns(
    api, client, celery_worker, orthanc_clean
):
    paths = sample_paths(["test_files/CT_small.dcm", "charset_files/chrH31.dcm"])
    orthanc_clean.stop()
    try:
        upload = send_upload(api, paths)
        status = wait_for(api, upload["upload_id"], FINAL | {"waiting_for_pacs"})
        assert status["state"] == "waiting_for_pacs"
        assert status["pacs"]["next_retry_at"]
        assert status["error"]["code"] == "pacs_unavailable"
        health = client.get("/api/v1/health")
        assert health.status_code == 200  # store-and-forward keeps accepting uploads
        assert health.json() == {"status": "degraded"}
    finally:
        orthanc_clean.start()
    status = wait_for(api, upload["upload_id"], FINAL)
    assert status["state"] == "completed", status
    assert {sop_uid(p) for p in paths} <= orthanc_clean.sop_instance_uids()


def test_worker_killed_during_forwarding_delivers_each_instance_once(
    api, celery_worker, orthanc_clean, tmp_path
):
    # Two instances per STOW-RS request (the test worker's batches are 4 MiB): 6 requests.
    paths = write_study(tmp_path / "study", instances=12, instance_bytes=3 * 512 * 1024)
    uids = [sop_uid(p) for p in paths]
    # Orthanc keeps one copy per SOP Instance UID whatever it is sent: only a proxy in
    # front of it can count what was sent.
    with (
        pacs_proxy(orthanc_clean.url) as pacs,
        worker_with(celery_worker, **proxied_pacs_env(pacs)),
    ):
        # The first request is answered; the next ones wait.
        pacs.hold_stow(passing=set(uids[:2]))
        upload = send_upload(api, paths, shuffle=False)
        files = UploadFile.objects.filter(session_id=upload["upload_id"], kind="dicom")
        pacs.wait_until(lambda proxy: proxy.held == 2)  # on the wire (PACS_STOW_IN_FLIGHT)
        acknowledged = set(
            files.filter(pacs_status=PacsStatus.STORED).values_list("sop_instance_uid", flat=True)
        )
        assert 0 < len(acknowledged) < len(uids)

        celery_worker.kill9()  # while two requests are on their way to the PACS
        pacs.wait_until(lambda proxy: proxy.held == 0)  # their sender is gone: never delivered
        pacs.release()
        assert UploadSession.objects.get(pk=upload["upload_id"]).state == "forwarding"
        celery_worker.start()
        status = wait_for(api, upload["upload_id"], FINAL, timeout=120)

    assert status["state"] == "completed", status
    # Each instance reached the PACS in exactly one STOW-RS request: those acknowledged
    # before the kill were not sent again, and the rest were sent once by the next worker.
    assert pacs.sent_counts() == {uid: 1 for uid in uids}
    assert orthanc_clean.sop_instance_uids() == set(uids)
    for path in paths[:3]:
        assert orthanc_clean.instance_file(sop_uid(path)) == path.read_bytes()


def test_concurrent_out_of_order_chunks_over_http(live_server, user, celery_worker, orthanc_clean):
    from rest_framework_simplejwt.tokens import RefreshToken

    paths = sample_paths()
    client = HttpUploader(live_server.url, str(RefreshToken.for_user(user).access_token), CHUNK)
    upload = client.init(paths)
    chunks = list(iter_file_chunks(paths, CHUNK))
    work = chunks + chunks[:3]  # a few retries racing their first attempt
    random.shuffle(work)
    with ThreadPoolExecutor(max_workers=4) as pool:
        codes = list(pool.map(lambda item: client.put_chunk(upload, *item), work))
    assert codes == [200] * len(work)
    status = client.status(upload)
    assert status["missing_chunks"] == [] and status["bytes_received"] == upload["total_size"]
    client.complete(upload)
    status = client.wait(upload, FINAL)
    assert status["state"] == "completed", status
    for path in paths:
        assert orthanc_clean.instance_file(sop_uid(path)) == path.read_bytes()
