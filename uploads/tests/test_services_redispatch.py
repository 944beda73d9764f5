"""Beat's re-dispatch, on the real broker: stranded work is queued once, not every run;
forwarding that keeps being interrupted ends failed.

Messages go to a queue of the test's own (``private_queue``) where the test reads them.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from uploads.models import UploadSession, UploadState
from uploads.services import uploads_redispatch
from uploads.services.dispatch import FORWARD_TASK, PROCESS_TASK
from uploads.services.forwarding import MAX_FORWARDING_INTERRUPTIONS, upload_forward
from uploads.services.maintenance import REDISPATCH_AGAIN_AFTER
from uploads.services.transitions import upload_forwarding_claim
from uploads.tests.broker import private_queue
from uploads.tests.test_services_maintenance import new_upload

pytestmark = pytest.mark.django_db


@pytest.fixture
def broker():
    with private_queue() as queue:
        yield queue


@pytest.fixture
def redispatch(django_capture_on_commit_callbacks):
    """Run beat's job and send what it queues (its messages are sent on commit)."""

    def run() -> int:
        with django_capture_on_commit_callbacks(execute=True):
            return uploads_redispatch()

    return run


def test_redispatch_picks_expired_leases_and_due_retries_only(user, broker, redispatch):
    now = timezone.now()
    stranded = new_upload(user)
    UploadSession.objects.filter(pk=stranded.pk).update(
        state=UploadState.FORWARDING, lease_until=now - timedelta(seconds=5)
    )
    busy = new_upload(user)
    UploadSession.objects.filter(pk=busy.pk).update(
        state=UploadState.FORWARDING, lease_until=now + timedelta(minutes=5)
    )
    due = new_upload(user)
    UploadSession.objects.filter(pk=due.pk).update(
        state=UploadState.WAITING_FOR_PACS, next_retry_at=now - timedelta(seconds=1)
    )
    later = new_upload(user)
    UploadSession.objects.filter(pk=later.pk).update(
        state=UploadState.WAITING_FOR_PACS, next_retry_at=now + timedelta(hours=1)
    )
    crashed = new_upload(user)
    UploadSession.objects.filter(pk=crashed.pk).update(
        state=UploadState.PROCESSING, lease_until=now - timedelta(seconds=5)
    )

    assert redispatch() == 3

    queued = {(task.name, task.args[0]) for task in broker.tasks()}
    assert queued == {
        (FORWARD_TASK, str(stranded.pk)),
        (FORWARD_TASK, str(due.pk)),
        (PROCESS_TASK, str(crashed.pk)),
    }


def test_unclaimed_work_is_queued_once_not_on_every_beat_run(user, broker, redispatch):
    now = timezone.now()
    stranded = new_upload(user)
    UploadSession.objects.filter(pk=stranded.pk).update(
        state=UploadState.FORWARDING, lease_until=now - timedelta(seconds=5)
    )
    never_claimed = new_upload(user)
    UploadSession.objects.filter(pk=never_claimed.pk).update(
        state=UploadState.PROCESSING, lease_until=None
    )
    UploadSession.objects.filter(pk=never_claimed.pk).update(updated_at=now - timedelta(hours=1))

    for _ in range(4):  # a minute of beat runs with no worker taking the messages
        redispatch()

    assert broker.for_upload(stranded.pk) == [FORWARD_TASK]
    assert broker.for_upload(never_claimed.pk) == [PROCESS_TASK]


def test_work_is_queued_again_once_claimed_and_stranded_or_its_message_presumed_lost(
    user, broker, redispatch
):
    now = timezone.now()
    session = new_upload(user)
    UploadSession.objects.filter(pk=session.pk).update(
        state=UploadState.FORWARDING, lease_until=now - timedelta(seconds=5)
    )
    redispatch()
    # A worker takes it and dies: its lease runs out, and beat queues it again at once.
    assert upload_forwarding_claim(upload_id=session.pk)
    UploadSession.objects.filter(pk=session.pk).update(lease_until=now - timedelta(seconds=1))
    redispatch()
    assert broker.for_upload(session.pk) == [FORWARD_TASK, FORWARD_TASK]
    # Nobody takes that message: it is presumed lost after REDISPATCH_AGAIN_AFTER only.
    redispatch()
    assert len(broker.for_upload(session.pk)) == 2
    UploadSession.objects.filter(pk=session.pk).update(
        dispatched_at=now - REDISPATCH_AGAIN_AFTER - timedelta(seconds=1)
    )
    redispatch()
    assert len(broker.for_upload(session.pk)) == 3


def test_forwarding_interrupted_again_and_again_ends_failed_with_a_sentence(user):
    session = new_upload(user)
    UploadSession.objects.filter(pk=session.pk).update(state=UploadState.FORWARDING)
    for _ in range(MAX_FORWARDING_INTERRUPTIONS):
        # A worker claims the upload and is killed while sending: its lease runs out.
        assert upload_forwarding_claim(upload_id=session.pk)
        UploadSession.objects.filter(pk=session.pk).update(
            lease_until=timezone.now() - timedelta(seconds=1)
        )

    upload_forward(upload_id=session.pk)

    session.refresh_from_db()
    assert session.state == UploadState.FAILED
    assert session.error["code"] == "forwarding_failed"
    assert session.error["message"] == (
        f"Sending this study to the PACS stopped {MAX_FORWARDING_INTERRUPTIONS} times before "
        "it finished, so RelayPACS stopped trying."
    )
    assert (session.lease_owner, session.lease_until) == ("", None)
