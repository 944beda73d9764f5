"""The upload state machine: every transition is conditional on the state it leaves, so a
cancel wins or loses cleanly against a worker."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from uploads.models import UploadSession, UploadState
from uploads.services import transitions
from uploads.services.ingest import upload_cancel
from uploads.services.leases import lease_claim, lease_renew
from uploads.tests.test_services_maintenance import new_upload

pytestmark = pytest.mark.django_db


def test_the_forwarding_claim_takes_the_lease_and_the_state_in_one_update(user):
    session = new_upload(user)
    UploadSession.objects.filter(pk=session.pk).update(
        state=UploadState.WAITING_FOR_PACS, next_retry_at=timezone.now() - timedelta(seconds=1)
    )
    with CaptureQueriesContext(connection) as queries:
        token = transitions.upload_forwarding_claim(upload_id=session.pk)
    # One statement: no moment in which the upload is leased but still waiting, where a
    # cancel could land and then be overwritten by "forwarding".
    assert token and len(queries.captured_queries) == 1
    session.refresh_from_db()
    assert (session.state, session.lease_owner) == (UploadState.FORWARDING, token)


def test_a_cancelled_upload_cannot_be_claimed(user):
    session = new_upload(user)
    UploadSession.objects.filter(pk=session.pk).update(state=UploadState.WAITING_FOR_PACS)
    upload_cancel(session=UploadSession.objects.get(pk=session.pk))
    assert transitions.upload_forwarding_claim(upload_id=session.pk) is None
    assert lease_claim(upload_id=session.pk, states=[UploadState.PROCESSING]) is None
    assert UploadSession.objects.get(pk=session.pk).state == UploadState.CANCELLED


@pytest.mark.parametrize("state", [UploadState.PROCESSING, UploadState.FORWARDING])
def test_cancel_drops_the_lease_so_the_worker_holding_it_cannot_undo_it(user, state):
    session = new_upload(user)
    UploadSession.objects.filter(pk=session.pk).update(state=state)
    token = lease_claim(upload_id=session.pk, states=[state])
    assert token

    upload_cancel(session=UploadSession.objects.get(pk=session.pk))

    session.refresh_from_db()
    assert (session.state, session.lease_owner, session.lease_until) == (
        UploadState.CANCELLED,
        "",
        None,
    )
    pk = session.pk
    # Everything the worker that held the lease could do next is refused.
    assert not lease_renew(upload_id=pk, token=token, state=state)
    assert not transitions.upload_checked(
        upload_id=pk, token=token, needs_confirmation=False, warnings=[]
    )
    assert not transitions.upload_processing_failed(upload_id=pk, token=token, error={})
    assert not transitions.upload_delivered(upload_id=pk, token=token)
    assert not transitions.upload_forwarding_failed(upload_id=pk, token=token, error={})
    assert not transitions.upload_waits_for_pacs(
        upload_id=pk,
        token=token,
        first_failure_at=timezone.now(),
        next_retry_at=timezone.now(),
        error={},
    )
    # Nor can a worker whose lease was taken before the cancel find it by its token.
    assert not UploadSession.objects.filter(pk=pk, lease_owner=token).exists()
    assert UploadSession.objects.get(pk=pk).state == UploadState.CANCELLED


def test_each_transition_leaves_only_its_own_states(user):
    session = new_upload(user)
    pk = session.pk
    assert not transitions.upload_confirmed(upload_id=pk)  # receiving: nothing to confirm
    assert not transitions.upload_retried(upload_id=pk)
    assert not transitions.upload_retry_due(upload_id=pk)
    assert transitions.upload_received(upload_id=pk)
    assert not transitions.upload_received(upload_id=pk)  # twice: the second loses
    assert UploadSession.objects.get(pk=pk).state == UploadState.PROCESSING
    assert transitions.upload_cancelled(upload_id=pk)
    assert not transitions.upload_cancelled(upload_id=pk)
    assert not transitions.upload_retried(upload_id=pk)  # a cancelled upload stays cancelled


def test_an_upload_the_checks_refused_cannot_be_retried_even_while_its_files_remain(user):
    from relaypacs.errors import ApplicationError
    from uploads.models import FileKind, UploadFile
    from uploads.services import upload_retry

    session = UploadSession.objects.create(
        owner=user, total_size=10, chunk_size=256 * 1024, total_chunks=1
    )
    UploadFile.objects.create(
        session=session, position=0, name="a.dcm", size=10, offset=0, kind=FileKind.DICOM
    )
    UploadSession.objects.filter(pk=session.pk).update(
        state=UploadState.FAILED,
        received_at=timezone.now(),
        failed_at=timezone.now(),
        error={"code": "invalid_files", "message": "", "hint": ""},
    )
    session.refresh_from_db()
    with pytest.raises(ApplicationError) as refused:
        upload_retry(session=session)
    assert refused.value.code == "nothing_to_retry"
    assert not transitions.upload_retried(upload_id=session.pk)  # nor by a stale caller
    assert UploadSession.objects.get(pk=session.pk).state == UploadState.FAILED


def test_an_upload_that_received_a_chunk_since_the_cleanup_looked_does_not_expire(user):
    now = timezone.now()
    session = UploadSession.objects.create(
        owner=user, total_size=10, chunk_size=256 * 1024, total_chunks=1
    )
    UploadSession.objects.filter(pk=session.pk).update(
        created_at=now - timedelta(days=2), last_chunk_at=now
    )
    assert not transitions.upload_expired(
        upload_id=session.pk,
        now=now,
        idle_since=now - timedelta(hours=24),
        error={"code": "upload_expired", "message": "", "hint": ""},
    )
    assert UploadSession.objects.get(pk=session.pk).state == UploadState.RECEIVING
