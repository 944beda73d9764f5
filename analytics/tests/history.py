"""A mixed upload history driven through the upload state machine itself
(uploads.services.transitions, the only writer of an upload's state), with the domain
events emitted as the upload services emit them after each transition's commit."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from django.utils import timezone

from relaypacs import events
from uploads.models import UploadSession, UploadState
from uploads.services import transitions
from uploads.services.leases import lease_claim


class History:
    """Moves uploads through their states; ``emit`` runs the events' subscribers (the
    transitions' own events run on commit, which the test's capture executes)."""

    def __init__(self, capture: Any, *, deliver_twice: bool = False) -> None:
        self.capture = capture
        self.deliver_twice = deliver_twice

    def emit(self, name: str, upload: UploadSession, **payload: Any) -> None:
        for _ in range(2 if self.deliver_twice else 1):
            events.emit(name, upload_id=str(upload.pk), **payload)

    def run(self, step: Any) -> Any:
        """A transition whose own events (if any) are emitted on commit."""
        with self.capture(execute=True):
            return step()

    def start(
        self, owner: Any, *, size: int = 1000, level: str = "routine", modality: str = "CT"
    ) -> UploadSession:
        upload = UploadSession.objects.create(
            owner=owner,
            facility_id=owner.facility_id,
            total_size=size,
            chunk_size=256 * 1024,
            total_chunks=1,
            service_level=level,
            metadata={"modality": modality, "patient_name": "DOE^JANE"},
        )
        self.emit(events.UPLOAD_STARTED, upload, owner_id=owner.pk, facility_id=owner.facility_id)
        return upload

    def receive(self, upload: UploadSession) -> None:
        assert transitions.upload_received(upload_id=upload.pk)
        self.emit(events.UPLOAD_RECEIVED, upload, owner_id=upload.owner_id)

    def check(self, upload: UploadSession, *, needs_confirmation: bool = False) -> None:
        token = lease_claim(upload_id=upload.pk, states=[UploadState.PROCESSING])
        assert token
        assert self.run(
            lambda: transitions.upload_checked(
                upload_id=upload.pk,
                token=token,
                needs_confirmation=needs_confirmation,
                warnings=[],
            )
        )
        if needs_confirmation:
            self.emit(events.UPLOAD_NEEDS_CONFIRMATION, upload)
        elif self.deliver_twice:
            events.emit(events.UPLOAD_FORWARDING, upload_id=str(upload.pk))

    def refuse(self, upload: UploadSession) -> None:
        token = lease_claim(upload_id=upload.pk, states=[UploadState.PROCESSING])
        assert token
        error = {"code": "invalid_files", "message": "", "hint": ""}
        assert transitions.upload_processing_failed(upload_id=upload.pk, token=token, error=error)
        self.emit(events.UPLOAD_FAILED, upload, code="invalid_files")

    def confirm(self, upload: UploadSession) -> None:
        assert self.run(lambda: transitions.upload_confirmed(upload_id=upload.pk))

    def wait_for_pacs(self, upload: UploadSession, *, index: int) -> None:
        token = transitions.upload_forwarding_claim(upload_id=upload.pk)
        assert token
        now = timezone.now()
        assert self.run(
            lambda: transitions.upload_waits_for_pacs(
                upload_id=upload.pk,
                token=token,
                first_failure_at=now,
                # Due at once, so that the next claim may take it; distinct per wait.
                next_retry_at=now - timedelta(seconds=1 + index),
                error={"code": "pacs_unavailable", "message": "", "hint": ""},
            )
        )
        if self.deliver_twice:
            events.emit(events.UPLOAD_WAITING_FOR_PACS, upload_id=str(upload.pk))

    def fail_delivery(self, upload: UploadSession) -> None:
        token = transitions.upload_forwarding_claim(upload_id=upload.pk)
        assert token
        error = {"code": "pacs_unreachable", "message": "", "hint": ""}
        assert transitions.upload_forwarding_failed(upload_id=upload.pk, token=token, error=error)
        self.emit(events.UPLOAD_FAILED, upload, code="pacs_unreachable")

    def retry(self, upload: UploadSession) -> None:
        assert self.run(lambda: transitions.upload_retried(upload_id=upload.pk))

    def deliver(self, upload: UploadSession) -> None:
        token = transitions.upload_forwarding_claim(upload_id=upload.pk)
        assert token
        assert transitions.upload_delivered(
            upload_id=upload.pk, token=token, completed_at=timezone.now()
        )
        self.emit(events.UPLOAD_COMPLETED, upload)

    def cancel(self, upload: UploadSession) -> None:
        assert transitions.upload_cancelled(upload_id=upload.pk)
        self.emit(events.UPLOAD_CANCELLED, upload, owner_id=upload.owner_id, actor_id=None)


def mixed_history(history: History, *, alice: Any, bob: Any, nobody: Any) -> dict[str, uuid.UUID]:
    """Eight uploads: completed (direct, after confirmation, after two waits for the PACS,
    after a failed delivery and a retry), refused by the checks, cancelled, in progress,
    and one of a user without a facility."""
    h = history
    made: dict[str, uuid.UUID] = {}

    direct = h.start(alice, size=1000, level="stat", modality="CT")
    h.receive(direct)
    h.check(direct)
    h.deliver(direct)
    made["direct"] = direct.pk

    confirmed = h.start(alice, size=2000, level="routine", modality="MR")
    h.receive(confirmed)
    h.check(confirmed, needs_confirmation=True)
    h.confirm(confirmed)
    h.deliver(confirmed)
    made["confirmed"] = confirmed.pk

    waited = h.start(alice, size=3000, level="urgent", modality="CT")
    h.receive(waited)
    h.check(waited)
    h.wait_for_pacs(waited, index=0)
    h.wait_for_pacs(waited, index=1)
    h.deliver(waited)
    made["waited"] = waited.pk

    retried = h.start(bob, size=4000, level="routine", modality="XC")
    h.receive(retried)
    h.check(retried)
    h.fail_delivery(retried)
    h.retry(retried)
    h.deliver(retried)
    made["retried"] = retried.pk

    refused = h.start(bob, size=5000, level="routine", modality="CT")
    h.receive(refused)
    h.refuse(refused)
    made["refused"] = refused.pk

    cancelled = h.start(alice, size=6000, level="routine", modality="CT")
    h.cancel(cancelled)
    made["cancelled"] = cancelled.pk

    running = h.start(bob, size=7000, level="emergency", modality="CT")
    h.receive(running)
    made["running"] = running.pk

    orphan = h.start(nobody, size=8000, level="routine", modality="US")
    h.receive(orphan)
    h.check(orphan)
    h.deliver(orphan)
    made["orphan"] = orphan.pk
    return made
