"""Delivery to more than one PACS, and cancel racing the worker: a real Celery worker
(with beat), two real Orthancs, and a proxy in front of a PACS that counts (and, to be a
slow PACS, holds) what is sent to it."""

from __future__ import annotations

import re
import time
import zipfile
from pathlib import Path

import pytest

from pacs.models import DeliveredInstance, PacsDestination
from uploads.models import UploadFile, UploadSession, UploadState
from uploads.services.forwarding import upload_forward
from uploads.tests.fixtures import TEST_LEASE_SECONDS
from uploads.tests.helpers import sample_paths, sop_uid
from uploads.tests.pacs_proxy import pacs_proxy, proxied_pacs_env, second_orthanc, worker_with
from uploads.tests.synthetic import write_study
from uploads.tests.test_pipeline_e2e import FINAL, send_upload, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

ENV_PACS = "env:default"  # the key of the environment's PACS (PACS_NAME "default")
# The second PACS has credentials of its own (the root conftest cannot be imported by name:
# frontend/tests_e2e has a conftest module too).
SECOND_PACS_USERNAME = "second-pacs"
SECOND_PACS_PASSWORD = "second-pacs-password"  # noqa: S105 - a throwaway local test server


@pytest.fixture(scope="module")
def second_pacs(tmp_path_factory):
    with second_orthanc(
        tmp_path_factory.mktemp("second-pacs"),
        username=SECOND_PACS_USERNAME,
        password=SECOND_PACS_PASSWORD,
    ) as pacs:
        yield pacs


@pytest.fixture
def second_pacs_clean(second_pacs):
    second_pacs.start()
    second_pacs.clear()
    return second_pacs


def add_destination(proxy) -> PacsDestination:
    """The second PACS, as an administrator adds it in Django admin (behind ``proxy``)."""
    return PacsDestination.objects.create(
        name="Second PACS",
        dicomweb_url=proxy.dicomweb_url,
        orthanc_url=proxy.url,
        username=SECOND_PACS_USERNAME,
        password=SECOND_PACS_PASSWORD,
        priority=10,
    )


def test_failover_delivers_to_the_next_pacs_and_never_to_the_first_when_it_returns(
    api, celery_worker, orthanc_clean, second_pacs_clean
):
    paths = sample_paths()[:4]
    uids = {sop_uid(p) for p in paths}
    with pacs_proxy(second_pacs_clean.url) as second:
        destination = add_destination(second)
        orthanc_clean.stop()  # the environment's PACS, tried first, is down
        try:
            upload = send_upload(api, paths)
            status = wait_for(api, upload["upload_id"], FINAL | {"waiting_for_pacs"})
            assert status["state"] == "completed", status
            assert status["pacs"]["destination"] == "Second PACS"
            receipt = status["pacs"]["receipt"]
            assert receipt[f"db:{destination.pk}"]["confirmed_at"]
            assert not (receipt.get(ENV_PACS) or {}).get("confirmed_at")
            assert second_pacs_clean.sop_instance_uids() == uids
        finally:
            orthanc_clean.start()

        # The first PACS is back; a repeated message (or beat) finds nothing left to do.
        upload_forward(upload_id=upload["upload_id"])
        assert wait_for(api, upload["upload_id"], FINAL)["state"] == "completed"
        assert orthanc_clean.sop_instance_uids() == set()
        assert second.sent_counts() == {uid: 1 for uid in uids}
        delivered = DeliveredInstance.objects.filter(sop_instance_uid__in=uids)
        assert set(delivered.values_list("target_key", flat=True)) == {f"db:{destination.pk}"}


def test_mode_all_completes_once_every_pacs_confirmed_and_retries_only_the_missing_one(
    api, celery_worker, orthanc_clean, second_pacs_clean
):
    paths = sample_paths()[:4]
    uids = {sop_uid(p) for p in paths}
    with pacs_proxy(second_pacs_clean.url) as second, worker_with(celery_worker, PACS_MODE="all"):
        destination = add_destination(second)
        orthanc_clean.stop()
        try:
            upload = send_upload(api, paths)
            status = wait_for(api, upload["upload_id"], FINAL | {"waiting_for_pacs"})
            assert status["state"] == "waiting_for_pacs", status
            assert status["error"]["code"] == "pacs_unavailable"
            assert status["error"]["destination"] == "default"
            receipt = status["pacs"]["receipt"]
            assert receipt[f"db:{destination.pk}"]["confirmed_at"]
            assert second_pacs_clean.sop_instance_uids() == uids
            asked_when_confirmed = len(second.requests)
            # Let the worker retry the missing PACS a few times while it is down.
            first_attempts = status["pacs"]["attempts"]
            deadline = time.monotonic() + 30
            while (
                wait_for(api, upload["upload_id"], {"waiting_for_pacs"})["pacs"]["attempts"]
                < first_attempts + 2
            ):
                assert time.monotonic() < deadline, "the worker did not retry"
                time.sleep(0.2)
        finally:
            orthanc_clean.start()

        status = wait_for(api, upload["upload_id"], FINAL)
        assert status["state"] == "completed", status
        assert orthanc_clean.sop_instance_uids() == uids
        assert {r["confirmed_at"] is not None for r in status["pacs"]["receipt"].values()} == {True}
        # The PACS that had confirmed was not sent to (nor asked) again.
        assert second.sent_counts() == {uid: 1 for uid in uids}
        assert len(second.requests) == asked_when_confirmed


@pytest.fixture(scope="module")
def proxied(orthanc, celery_worker):
    """The worker's PACS (the environment's) behind a proxy that counts and can hold."""
    with pacs_proxy(orthanc.url) as proxy, worker_with(celery_worker, **proxied_pacs_env(proxy)):
        yield proxy


def worker_logged(worker, offset: int, pattern: str, timeout: float = 60) -> None:
    """Wait until the worker's log, from ``offset`` on, matches ``pattern``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(worker.log_path, "rb") as log:
            log.seek(offset)
            if re.search(pattern.encode(), log.read()):
                return
        time.sleep(0.1)
    raise AssertionError(f"the worker did not log {pattern!r}")


def test_cancel_while_a_slow_pacs_receives_stops_forwarding_for_good(
    api, celery_worker, proxied, orthanc_clean, tmp_path
):
    proxied.reset()
    # Two instances per STOW-RS request (the test worker's batches are 4 MiB): 4 requests.
    paths = write_study(tmp_path / "study", instances=8, instance_bytes=3 * 512 * 1024)
    # The first request is answered, the next ones wait.
    proxied.hold_stow(passing={sop_uid(p) for p in paths[:2]})
    offset = celery_worker.log_path.stat().st_size
    upload = send_upload(api, paths, shuffle=False)
    # Two requests are on the wire (PACS_STOW_IN_FLIGHT), waiting for the slow PACS.
    proxied.wait_until(lambda proxy: proxy.held == 2)
    files = UploadFile.objects.filter(session_id=upload["upload_id"]).order_by("position")
    at_cancel = list(files.values_list("pacs_status", flat=True))

    assert api.delete(f"/api/v1/upload/{upload['upload_id']}").status_code in (200, 202, 204)
    cancelled_at = time.monotonic()
    proxied.release()  # the slow PACS answers both

    worker_logged(celery_worker, offset, f"upload {upload['upload_id']}: lease lost")
    session = UploadSession.objects.get(pk=upload["upload_id"])
    assert session.state == UploadState.CANCELLED
    # Nothing the worker learned after the cancel was written, and nothing more was sent.
    assert list(files.values_list("pacs_status", flat=True)) == at_cancel
    stow = proxied.stow_requests()
    assert all(r.received_at < cancelled_at for r in stow), "sent after the cancel"
    # Three distinct batches, each sent once: none resent (by a worker that gave up on the
    # slow answer, or took the upload over when a lease lapsed) and none abandoned.
    assert all(r.forwarded for r in stow)
    assert len({r.sop_instance_uids for r in stow}) == len(stow) == 3
    assert set(proxied.sent_counts().values()) == {1}
    # The PACS holds what was on the wire at the cancel, and none of the rest.
    on_the_wire = {uid for r in stow for uid in r.sop_instance_uids}
    assert orthanc_clean.sop_instance_uids() == on_the_wire
    assert len(on_the_wire) == 6 < len(paths)


def test_a_pacs_answering_slower_than_the_lease_is_not_sent_anything_twice(
    api, celery_worker, proxied, orthanc_clean, tmp_path
):
    """The worker renews its lease while a slow PACS holds its batches: a lapsed lease
    would let another worker take the upload over and send the same batches again."""
    proxied.reset()
    paths = write_study(tmp_path / "study", instances=8, instance_bytes=3 * 512 * 1024)
    proxied.hold_stow(passing={sop_uid(p) for p in paths[:2]})
    upload = send_upload(api, paths, shuffle=False)
    proxied.wait_until(lambda proxy: proxy.held == 2)
    # Longer than two leases of the test worker (and much shorter than its PACS timeout
    # behind the proxy): time has to pass for a lease to lapse.
    time.sleep(2 * TEST_LEASE_SECONDS + 1)
    assert proxied.held == 2 and len(proxied.stow_requests()) == 1
    session = UploadSession.objects.get(pk=upload["upload_id"])
    assert session.state == UploadState.FORWARDING and session.lease_expiries == 0
    proxied.release()

    assert wait_for(api, upload["upload_id"], FINAL)["state"] == "completed"
    assert proxied.sent_counts() == {sop_uid(p): 1 for p in paths}
    assert orthanc_clean.sop_instance_uids() == {sop_uid(p) for p in paths}


def test_cancel_while_processing_sends_nothing(
    api, celery_worker, proxied, orthanc_clean, tmp_path
):
    proxied.reset()
    # An archive of many small images: checking it keeps the worker busy for a while.
    paths = write_study(tmp_path / "study", instances=400, instance_bytes=1024)
    archive = tmp_path / "cd.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zipped:
        for path in paths:
            zipped.write(path, f"DICOM/{path.name}")
    offset = celery_worker.log_path.stat().st_size
    upload = send_upload(api, [Path(archive)], shuffle=False)
    deadline = time.monotonic() + 30
    while True:
        session = UploadSession.objects.get(pk=upload["upload_id"])
        if session.state == UploadState.PROCESSING and session.lease_owner:
            break  # a worker claimed it and is checking the files
        assert session.state == UploadState.PROCESSING and time.monotonic() < deadline, (
            session.state
        )
        time.sleep(0.01)

    assert api.delete(f"/api/v1/upload/{upload['upload_id']}").status_code in (200, 202, 204)

    # The worker's task ends (whether its checks noticed the cancel or ran to the end).
    worker_logged(celery_worker, offset, r"upload_process_task\[[^\]]+\] (succeeded|raised)")
    assert UploadSession.objects.get(pk=upload["upload_id"]).state == UploadState.CANCELLED
    assert proxied.stow_requests() == []
    assert orthanc_clean.sop_instance_uids() == set()
