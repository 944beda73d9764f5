"""A task outliving the Redis broker's visibility timeout is delivered again: harmless.

Forwarding a 20 GB study outlasts Redis's ``visibility_timeout`` (an hour by default);
Redis then hands the unacknowledged task (``acks_late``) to a worker a second time while
the first still runs. Here the timeout is three seconds and the PACS (behind a proxy)
holds the STOW requests far longer: the second delivery finds the upload's lease held
(the first renews it while it waits for the PACS), does nothing and ends, and every
instance reaches the PACS exactly once.
"""

from __future__ import annotations

import re
import time
from collections import Counter

import pytest

from uploads.models import UploadSession, UploadState
from uploads.tests.helpers import sop_uid
from uploads.tests.pacs_proxy import pacs_proxy, proxied_pacs_env, worker_with
from uploads.tests.synthetic import write_study
from uploads.tests.test_pipeline_e2e import FINAL, send_upload, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

VISIBILITY_SECONDS = 3
TASK = "uploads.tasks.upload_process_task"
RECEIVED = re.compile(rb"Task " + re.escape(TASK.encode()) + rb"\[([0-9a-f-]+)\] received")
SUCCEEDED = rb"Task " + re.escape(TASK.encode()) + rb"\[%s\] succeeded"


def _log_since(worker, offset: int) -> bytes:
    with open(worker.log_path, "rb") as log:
        log.seek(offset)
        return log.read()


def _redelivered(worker, offset: int, timeout: float = 45) -> bytes:
    """The id of a task the worker received twice, once the second delivery ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = _log_since(worker, offset)
        twice = [i for i, n in Counter(RECEIVED.findall(text)).items() if n >= 2]
        for task_id in twice:
            if re.search(SUCCEEDED % re.escape(task_id), text):
                return task_id
        time.sleep(0.2)
    raise AssertionError(f"no task was delivered again: {_log_since(worker, offset)[-3000:]!r}")


def test_a_task_delivered_again_past_the_visibility_timeout_sends_nothing_twice(
    api, celery_worker, orthanc_clean, tmp_path
):
    paths = write_study(tmp_path / "study", instances=8, instance_bytes=3 * 512 * 1024)
    uids = [sop_uid(p) for p in paths]
    with (
        pacs_proxy(orthanc_clean.url) as pacs,
        worker_with(
            celery_worker,
            **proxied_pacs_env(pacs),
            BROKER_VISIBILITY_TIMEOUT_SECONDS=str(VISIBILITY_SECONDS),
        ),
    ):
        # The first request is answered; the next ones wait: a slow PACS.
        pacs.hold_stow(passing=set(uids[:2]))
        offset = celery_worker.log_path.stat().st_size
        upload = send_upload(api, paths, shuffle=False)
        pacs.wait_until(lambda proxy: proxy.held == 2)  # on the wire (PACS_STOW_IN_FLIGHT)
        stow_before = len(pacs.stow_requests())

        task_id = _redelivered(celery_worker, offset)

        # The second delivery ended while the first still waits for the PACS: it sent
        # nothing and took nothing over.
        assert pacs.held == 2
        assert len(pacs.stow_requests()) == stow_before
        session = UploadSession.objects.get(pk=upload["upload_id"])
        assert session.state == UploadState.FORWARDING
        assert session.lease_expiries == 0
        text = _log_since(celery_worker, offset)
        assert len(re.findall(SUCCEEDED % re.escape(task_id), text)) == 1
        pacs.release()

        status = wait_for(api, upload["upload_id"], FINAL)
    assert status["state"] == "completed", status
    assert pacs.sent_counts() == {uid: 1 for uid in uids}
    for path in paths:
        assert orthanc_clean.instance_file(sop_uid(path)) == path.read_bytes()
