"""The processing task forwards a checked upload itself, without a second broker message.

The task runs here in the test process against the real Orthanc; the messages go to the
real broker, on a queue of this test's own that no worker consumes (``private_queue``),
where the test reads what was queued.
"""

from __future__ import annotations

import pytest

from uploads.models import UploadSession, UploadState
from uploads.services.dispatch import PROCESS_TASK
from uploads.tasks import upload_process_task
from uploads.tests.broker import private_queue
from uploads.tests.helpers import sample_paths, sop_uid
from uploads.tests.test_pipeline_e2e import send_upload

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def broker():
    with private_queue() as queue:
        yield queue


def test_a_checked_upload_is_forwarded_by_the_processing_task(api, orthanc_clean, broker):
    paths = sample_paths()
    upload = send_upload(api, paths)

    upload_process_task(upload["upload_id"])

    session = UploadSession.objects.get(pk=upload["upload_id"])
    assert session.state == UploadState.COMPLETED, session.error
    assert orthanc_clean.sop_instance_uids() == {sop_uid(p) for p in paths}
    # Queued by complete; no forwarding message.
    assert broker.for_upload(upload["upload_id"]) == [PROCESS_TASK]


def test_running_the_processing_task_again_changes_nothing(api, orthanc_clean, broker):
    paths = sample_paths()[:3]
    upload = send_upload(api, paths)
    upload_process_task(upload["upload_id"])
    completed = UploadSession.objects.get(pk=upload["upload_id"])

    upload_process_task(upload["upload_id"])

    again = UploadSession.objects.get(pk=upload["upload_id"])
    assert again.state == UploadState.COMPLETED
    assert (again.attempts, again.completed_at) == (completed.attempts, completed.completed_at)
    assert len(orthanc_clean.sop_instance_uids()) == len(paths)
    assert broker.for_upload(upload["upload_id"]) == [PROCESS_TASK]


def test_an_upload_that_needs_a_person_is_not_forwarded(api, orthanc_clean, broker):
    path = sample_paths(["test_files/CT_small.dcm"])[0]
    upload = send_upload(api, [path], metadata={"patient_name": "Someone^Else"})

    upload_process_task(upload["upload_id"])

    assert UploadSession.objects.get(pk=upload["upload_id"]).state == (
        UploadState.NEEDS_CONFIRMATION
    )
    assert orthanc_clean.sop_instance_uids() == set()
    assert broker.for_upload(upload["upload_id"]) == [PROCESS_TASK]
