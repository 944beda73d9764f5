"""The whole upload path in S3 mode: chunks through the API into a real S3 server (moto,
over HTTP), processed and forwarded by a real Celery worker in S3 mode, delivered to a
real Orthanc byte-identical; afterwards the bucket and both processes' disks hold nothing
of the upload."""

from __future__ import annotations

import random
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from accounts.tests.factories import UserFactory
from uploads import storage
from uploads.models import UploadSession
from uploads.tests.fixtures import client_for
from uploads.tests.helpers import content_md5, iter_file_chunks, manifest, sample_paths, sop_uid
from uploads.tests.pacs_proxy import worker_with
from uploads.tests.s3_server import S3Outage

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

CHUNK = 256 * 1024
FINAL = {"completed", "failed", "cancelled", "needs_confirmation"}
NOTE = "Query fracture; compare with last year's study."


def _wait_for(api: Any, upload_id: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = api.get(f"/api/v1/upload/{upload_id}/status").json()
        if status["state"] in FINAL:
            return status
        time.sleep(0.3)
    raise AssertionError(f"upload stayed {status.get('state')}: {status}")


def _put(api: Any, upload_id: str, index: int, data: bytes) -> int:
    response = api.put(
        f"/api/v1/upload/{upload_id}/chunk?index={index}",
        data=data,
        content_type="application/octet-stream",
        HTTP_CONTENT_MD5=content_md5(data),
    )
    assert response.status_code == 200, response.json()
    return response.status_code


def test_an_upload_in_s3_reaches_the_pacs_byte_identical_and_leaves_nothing_behind(
    s3_settings, celery_worker, orthanc_clean, upload_storage_dir, tmp_path
):
    images = sample_paths()
    loose, zipped = images[:9], images[9:]
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as handle:
        for path in zipped:
            handle.write(path, arcname=f"DICOM/{path.name}")
    paths = [*loose, archive]
    api = client_for(UserFactory())

    with worker_with(celery_worker, **s3_settings.env()):
        init = api.post(
            "/api/v1/upload/init",
            manifest(paths, chunk_size=CHUNK, clinical_notes=NOTE, service_level="urgent"),
            format="json",
        )
        assert init.status_code == 201, init.json()
        upload_id = init.json()["upload_id"]
        chunks = list(iter_file_chunks(paths, CHUNK))
        random.shuffle(chunks)
        retried = chunks[: len(chunks) // 3]  # sent twice, as a client that lost the 200
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda c: _put(api, upload_id, *c), chunks + retried))
        prefix = f"uploads/{upload_id}/"
        assert len([k for k in s3_settings.keys(prefix) if "/chunks/" in k]) == len(chunks)
        assert not (Path(upload_storage_dir) / upload_id).exists()  # no bytes on this node
        complete = api.post(f"/api/v1/upload/{upload_id}/complete")
        assert complete.status_code == 202, complete.json()

        status = _wait_for(api, upload_id)
        # The worker deletes the bytes once "completed" has committed: it keeps running
        # until they are gone (stopped at once, it would leave them to uploads_cleanup).
        deadline = time.monotonic() + 60
        while s3_settings.keys(prefix):
            assert time.monotonic() < deadline, s3_settings.keys(prefix)[:5]
            time.sleep(0.2)

    assert status["state"] == "completed", status
    for path in images:
        assert orthanc_clean.instance_file(sop_uid(path)) == path.read_bytes(), path.name
    assert status["pacs"]["acknowledged_instances"] == len(images)
    # The note, one object per study: derived files published by processing.
    added = status["pacs"]["relay_added_instances"]
    assert len(added) == len(status["studies"]) > 1
    assert set(added) <= orthanc_clean.sop_instance_uids()
    # Nothing of the upload anywhere: not in the bucket (above), not on either process's disk.
    assert s3_settings.keys(prefix) == []
    assert s3_settings.multipart_uploads(prefix) == []
    assert not storage.stream_exists(upload_id=upload_id)
    assert not (Path(upload_storage_dir) / upload_id).exists()


def test_a_cancelled_upload_in_s3_leaves_nothing_in_the_bucket(s3_settings, upload_storage_dir):
    paths = sample_paths()[:4]
    api = client_for(UserFactory())
    init = api.post("/api/v1/upload/init", manifest(paths, chunk_size=CHUNK), format="json")
    assert init.status_code == 201, init.json()
    upload_id = init.json()["upload_id"]
    for index, data in list(iter_file_chunks(paths, CHUNK))[:2]:
        _put(api, upload_id, index, data)
    prefix = f"uploads/{upload_id}/"
    assert len(s3_settings.keys(prefix)) == 3  # the marker and two chunks

    assert api.delete(f"/api/v1/upload/{upload_id}").status_code in (200, 202, 204)

    assert api.get(f"/api/v1/upload/{upload_id}/status").json()["state"] == "cancelled"
    assert s3_settings.keys(prefix) == []
    assert not storage.stream_exists(upload_id=upload_id)
    assert not (Path(upload_storage_dir) / upload_id).exists()


def test_an_upload_processed_while_s3_is_down_completes_once_it_is_back(
    s3_settings, celery_worker, orthanc_clean, upload_storage_dir
):
    """The worker reaches the bucket through a relay that drops every connection: its task
    gives the upload back uncounted and retries with backoff; once the relay is up again
    the same upload is processed and delivered."""
    paths = sample_paths()[:4]
    api = client_for(UserFactory())
    outage = S3Outage(s3_settings.endpoint_url)
    try:
        with worker_with(celery_worker, **s3_settings.env(S3_ENDPOINT_URL=outage.endpoint_url)):
            init = api.post("/api/v1/upload/init", manifest(paths, chunk_size=CHUNK), format="json")
            assert init.status_code == 201, init.json()
            upload_id = init.json()["upload_id"]
            for index, data in iter_file_chunks(paths, CHUNK):
                _put(api, upload_id, index, data)  # this process reaches the bucket directly
            outage.down()
            assert api.post(f"/api/v1/upload/{upload_id}/complete").status_code == 202

            # The worker tried, found the storage down and gave the upload back uncounted.
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                session = UploadSession.objects.get(pk=upload_id)
                if outage.refused and session.attempts == 0 and not session.lease_owner:
                    break
                time.sleep(0.3)
            else:
                raise AssertionError("the worker never tried while the storage was down")
            assert session.state == "processing" and session.error is None
            outage.up()

            status = _wait_for(api, upload_id)
    finally:
        outage.close()

    assert status["state"] == "completed", status
    for path in paths:
        assert orthanc_clean.instance_file(sop_uid(path)) == path.read_bytes(), path.name
    assert s3_settings.keys(f"uploads/{upload_id}/") == []
