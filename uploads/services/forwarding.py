"""Forwarding a processed upload to the PACS and confirming receipt."""

from __future__ import annotations

import functools
import logging
import uuid
from collections import defaultdict
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from pacs import selectors as pacs_selectors
from pacs import services as pacs_services
from pacs.selectors import PacsTarget
from pacs.services import (
    InstanceOutcome,
    InstanceSource,
    InstanceSourceError,
    PacsRejected,
    PacsUnavailable,
)
from relaypacs import events

from .. import storage
from ..models import FileKind, PacsStatus, Study, UploadFile, UploadSession, UploadState
from . import transitions
from .leases import lease_release, lease_renew
from .removal import upload_files_delete

logger = logging.getLogger(__name__)


class _LeaseLost(Exception):
    """The upload was cancelled or another worker took it over: stop quietly."""


class _Refused(Exception):
    def __init__(self, failed: dict[str, str]) -> None:
        super().__init__(f"{len(failed)} instances refused")
        self.failed = failed


class _NotListed(Exception):
    def __init__(self, missing: set[str]) -> None:
        super().__init__(f"{len(missing)} instances not listed")
        self.missing = missing


# Forwarding whose lease ran out this many times in a row (a worker killed or hung while
# sending: a poison study, or a PACS answer that kills the worker) is not tried again:
# like processing, it stops and tells the user instead of crashing workers forever.
MAX_FORWARDING_INTERRUPTIONS = 5
# While a batch is on the wire the lease is renewed at least three times per lease length
# (as processing's heartbeat), so that a slow PACS answer never lets it lapse: a lapsed
# lease lets another worker take the upload over and send the same batches again.
LEASE_RENEWALS_PER_LEASE = 3
# Rows per UPDATE of delivery outcomes: a batch holds at most 500 instances
# (pacs.services.STOW_BATCH_MAX_INSTANCES), and SQLite takes up to 999 parameters.
OUTCOME_UPDATE_BATCH = 500


def _receipt_save(*, session: UploadSession, token: str) -> bool:
    """Write ``session.receipt`` if we still hold the upload in ``forwarding``."""
    return (
        UploadSession.objects.filter(
            pk=session.pk, state=UploadState.FORWARDING, lease_owner=token
        ).update(receipt=session.receipt, updated_at=timezone.now())
        == 1
    )


def _source(upload_id: uuid.UUID, f: UploadFile) -> InstanceSource:
    return InstanceSource(
        sop_instance_uid=f.sop_instance_uid,
        study_instance_uid=f.study_instance_uid,
        size=f.size,
        open=functools.partial(
            storage.open_member, upload_id=upload_id, offset=f.offset, size=f.size, path=f.path
        ),
    )


class _Delivery:
    """Delivers one upload's instances to one PACS target under the worker's lease."""

    def __init__(
        self, *, session: UploadSession, token: str, target: PacsTarget, files: list[UploadFile]
    ) -> None:
        self.session = session
        self.token = token
        self.target = target
        self.files = files
        self.by_uid = {f.sop_instance_uid: f for f in files}
        receipt = session.receipt or {}
        record = receipt.get("destinations", {}).get(target.key, {})
        self.acknowledged: set[str] = set(record.get("acknowledged", []))
        self.failed: dict[str, str] = dict(record.get("failed", {}))
        self.retrieve_urls: dict[str, str] = {}

    def _save(self, changed: list[UploadFile]) -> None:
        receipt = self.session.receipt or {"destinations": {}}
        receipt.setdefault("destinations", {})[self.target.key] = {
            "name": self.target.name,
            "acknowledged": sorted(self.acknowledged),
            "failed": self.failed,
            "updated_at": timezone.now().isoformat(),
        }
        self.session.receipt = receipt
        # One UPDATE per distinct outcome (usually one per batch: every instance stored),
        # not bulk_update's CASE over every row, which cost 0.7 s of the worker's time for
        # a study of 2,000 images here, while the next batch waited for it.
        by_outcome: dict[tuple[str, str], list[int]] = defaultdict(list)
        for f in changed:
            by_outcome[(f.pacs_status, f.pacs_reason)].append(f.pk)
        with transaction.atomic():
            if not _receipt_save(session=self.session, token=self.token):
                raise _LeaseLost
            for (status, reason), pks in sorted(by_outcome.items()):
                for start in range(0, len(pks), OUTCOME_UPDATE_BATCH):
                    UploadFile.objects.filter(
                        pk__in=pks[start : start + OUTCOME_UPDATE_BATCH]
                    ).update(pacs_status=status, pacs_reason=reason)

    def _on_batch(self, outcomes: list[InstanceOutcome]) -> None:
        changed = []
        for outcome in outcomes:
            f = self.by_uid.get(outcome.sop_instance_uid)
            if f is None:
                continue
            if outcome.stored:
                self.acknowledged.add(outcome.sop_instance_uid)
                self.failed.pop(outcome.sop_instance_uid, None)
                f.pacs_status, f.pacs_reason = PacsStatus.STORED, ""
            else:
                reason = outcome.failure_reason or "refused by the PACS"
                self.failed[outcome.sop_instance_uid] = reason
                f.pacs_status, f.pacs_reason = PacsStatus.FAILED, reason[:500]
            changed.append(f)
        self._save(changed)
        self._renew()

    def _renew(self) -> None:
        """Keep the lease; raises _LeaseLost when another worker took the upload over."""
        if not lease_renew(
            upload_id=self.session.id, token=self.token, state=UploadState.FORWARDING
        ):
            raise _LeaseLost

    def run(self) -> None:
        """Send what the target lacks, then confirm it lists every instance.

        Raises PacsUnavailable (retry later), PacsRejected, _Refused, _NotListed, _LeaseLost.
        """
        uids = list(self.by_uid)
        since = timezone.now() - settings.UPLOAD_DUPLICATE_WINDOW
        earlier = pacs_selectors.delivered_recently(
            target_key=self.target.key, sop_instance_uids=uids, since=since
        )
        already = [self.by_uid[u] for u in earlier if u not in self.acknowledged]
        for f in already:
            f.pacs_status, f.pacs_reason = PacsStatus.ALREADY_DELIVERED, ""
        if already:
            self._save(already)
        to_send = [
            f
            for f in self.files
            if f.sop_instance_uid not in self.acknowledged and f.sop_instance_uid not in earlier
        ]
        self._send(to_send)
        if self._fatal_failures():
            raise _Refused(self._fatal_failures())
        missing = self._unlisted()
        # Instances delivered by an earlier upload but no longer in the PACS: send them now.
        resend = [self.by_uid[u] for u in missing if u in earlier and u not in self.acknowledged]
        if resend:
            self._send(resend)
            if self._fatal_failures():
                raise _Refused(self._fatal_failures())
            missing = self._unlisted()
        if missing:
            raise _NotListed(missing)

    def _send(self, files: list[UploadFile]) -> None:
        if not files:
            return
        pacs_services.instances_store(
            target=self.target,
            instances=[_source(self.session.id, f) for f in files],
            on_batch=self._on_batch,
            heartbeat=self._renew,
            heartbeat_seconds=min(
                pacs_services.HEARTBEAT_SECONDS,
                settings.UPLOAD_LEASE_SECONDS / LEASE_RENEWALS_PER_LEASE,
            ),
        )

    def _fatal_failures(self) -> dict[str, str]:
        """Refusals that fail the upload: the clinic's images. A PACS that refuses the
        clinical-information object the relay added (some take no SR) does not keep the
        images from being delivered; the upload says so in its warnings."""
        return {
            uid: reason
            for uid, reason in self.failed.items()
            if uid not in self.by_uid or not self.by_uid[uid].added_by_relay
        }

    def _unlisted(self) -> set[str]:
        by_study: dict[str, list[str]] = defaultdict(list)
        for f in self.files:
            if f.added_by_relay and f.sop_instance_uid in self.failed:
                continue  # refused, and not needed for the study to count as delivered
            by_study[f.study_instance_uid].append(f.sop_instance_uid)
        return pacs_services.instances_confirm(
            target=self.target, sop_instance_uids_by_study=by_study
        )


def _destinations(session: UploadSession) -> dict[str, dict[str, Any]]:
    receipt = session.receipt or {}
    destinations: dict[str, dict[str, Any]] = receipt.get("destinations", {})
    return destinations


def _confirmed_keys(session: UploadSession) -> set[str]:
    """Keys of the destinations that stored and confirmed this upload already."""
    return {key for key, record in _destinations(session).items() if record.get("confirmed_at")}


def _confirm(
    *, session: UploadSession, token: str, target: PacsTarget, delivery: _Delivery
) -> None:
    """Record that ``target`` stored and lists every instance: its receipt record gets
    ``confirmed_at`` and its instances are recorded as delivered there, together, while we
    still hold the upload. A later attempt (``PACS_MODE=all``) does not send to it again.
    Raises _LeaseLost when the upload was cancelled or taken over."""
    now = timezone.now()
    receipt = session.receipt or {"destinations": {}}
    record = receipt.setdefault("destinations", {}).setdefault(target.key, {})
    record.update(
        name=target.name,
        confirmed_at=now.isoformat(),
        confirmed_instances=len(delivery.by_uid),
    )
    session.receipt = receipt
    with transaction.atomic():
        if not _receipt_save(session=session, token=token):
            raise _LeaseLost
        pacs_services.deliveries_record(
            target_key=target.key,
            instances=[(f.sop_instance_uid, f.study_instance_uid) for f in delivery.files],
            delivered_at=now,
        )
    logger.info("upload %s confirmed by PACS %s", session.id, target.name)


# Added to a delivered upload's warnings when the PACS refused the relay's own object.
RELAY_OBJECT_REFUSED = (
    "The PACS did not accept the clinic's note that RelayPACS adds beside the images; "
    "the images were delivered, but the radiologist will not see the note in the PACS."
)


def _complete(
    *, session: UploadSession, token: str, confirmed: list[PacsTarget], files: list[UploadFile]
) -> None:
    now = timezone.now()
    warnings = list(session.warnings or [])
    if (
        any(f.added_by_relay and f.pacs_status == PacsStatus.FAILED for f in files)
        and RELAY_OBJECT_REFUSED not in warnings
    ):
        warnings.append(RELAY_OBJECT_REFUSED)
    with transaction.atomic():
        done = transitions.upload_delivered(
            upload_id=session.id,
            token=token,
            warnings=warnings,
            completed_at=now,
            receipt=session.receipt,
            destination=", ".join(target.name for target in confirmed),
        )
        if not done:
            return
        Study.objects.filter(session=session).update(pacs_state="received")
        upload_id = session.id
        # The clinic's instances and the relay's own objects (the clinical note), counted
        # apart: a receipt's ``instances`` are the images the clinic sent.
        clinic = sum(not f.added_by_relay for f in files)
        relay_added = sum(f.added_by_relay and f.pacs_status != PacsStatus.FAILED for f in files)
        names = [target.name for target in confirmed]

        def finish() -> None:
            upload_files_delete(upload_id=upload_id)
            for name in names:
                events.emit(
                    events.PACS_RECEIPT,
                    upload_id=str(upload_id),
                    destination=name,
                    instances=clinic,
                    relay_added_instances=relay_added,
                )
            events.emit(events.UPLOAD_COMPLETED, upload_id=str(upload_id))

        transaction.on_commit(finish)
    logger.info("upload %s completed: PACS confirmed every instance", session.id)


def _fail(*, session: UploadSession, token: str, error: dict[str, Any]) -> None:
    with transaction.atomic():
        if transitions.upload_forwarding_failed(upload_id=session.id, token=token, error=error):
            upload_id = session.id
            transaction.on_commit(
                lambda: events.emit(
                    events.UPLOAD_FAILED, upload_id=str(upload_id), code=error["code"]
                )
            )


def _wait_for_pacs(*, session: UploadSession, token: str, error: dict[str, Any]) -> None:
    now = timezone.now()
    first = session.first_pacs_failure_at or now
    if now - first > settings.PACS_RETRY_WINDOW:
        days = settings.PACS_RETRY_WINDOW / timedelta(days=1)
        _fail(
            session=session,
            token=token,
            error={
                "code": "pacs_unreachable",
                "message": f"The PACS could not be reached for {days:g} days, so the study was not delivered.",
                "hint": "Ask your PACS administrator to check the PACS; then press retry.",
            },
        )
        return
    delay = pacs_services.retry_delay_seconds(attempt=session.attempts)
    moved = transitions.upload_waits_for_pacs(
        upload_id=session.id,
        token=token,
        first_failure_at=first,
        next_retry_at=now + timedelta(seconds=delay),
        error=error,
    )
    if not moved:
        return
    events.emit(events.PACS_UNREACHABLE, upload_id=str(session.id))
    logger.info("upload %s waits for the PACS; next try in %.0fs", session.id, delay)


def _not_listing(target: PacsTarget, missing: set[str]) -> dict[str, Any]:
    return {
        "code": "pacs_not_listing",
        "message": f"The PACS {target.name} acknowledged the study but does "
        f"not list {len(missing)} of its images yet.",
        "hint": "RelayPACS will check again automatically.",
        "destination": target.name,
    }


def _storage_outage(exc: BaseException) -> storage.StorageUnavailable | None:
    """The StorageUnavailable behind an instance that could not be read, if that was why
    (the PACS gateway wraps every read error as InstanceSourceError)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, storage.StorageUnavailable):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def upload_forward(*, upload_id: uuid.UUID) -> None:
    """Deliver a processed upload to the configured PACS and confirm receipt.

    Idempotent and safe to run twice: it claims the upload (``forwarding``, or
    ``waiting_for_pacs`` whose retry time came) in one conditional UPDATE or does nothing;
    instances a destination acknowledged are not sent to it again, a destination that
    confirmed the upload is not sent to again, and the PACS stores a re-sent instance once.

    ``PACS_MODE=failover``: destinations are tried in order (``pacs_targets``) and the first
    that stores and lists every instance completes the upload; one that is unreachable,
    does not list the study yet or refuses every request is skipped for the next.
    ``PACS_MODE=all``: each destination that has not confirmed yet is tried; the upload
    completes once every destination confirmed, and waits for the PACS otherwise.

    When the upload storage cannot be read (``storage.StorageUnavailable``), the upload
    stays ``forwarding``, its lease released without counting the claim, and the error is
    raised for the task to retry (beat re-dispatches it after that).

    Ends in ``completed`` (confirmed per destination in ``receipt``), ``waiting_for_pacs``
    (retry at ``next_retry_at``) or ``failed`` (e.g. ``forwarding_failed`` once its lease ran
    out MAX_FORWARDING_INTERRUPTIONS times in a row). Stops without a write once the
    upload was cancelled.
    """
    token = transitions.upload_forwarding_claim(upload_id=upload_id)
    if token is None:
        return
    session = UploadSession.objects.get(pk=upload_id)
    if session.lease_expiries >= MAX_FORWARDING_INTERRUPTIONS:
        logger.error("upload %s failed: forwarding was interrupted repeatedly", upload_id)
        _fail(
            session=session,
            token=token,
            error={
                "code": "forwarding_failed",
                "message": "Sending this study to the PACS stopped "
                f"{session.lease_expiries} times before it finished, so RelayPACS stopped "
                "trying.",
                "hint": "Press retry to send it once more; if it stops again, tell your "
                "RelayPACS administrator.",
            },
        )
        return
    files = list(
        UploadFile.objects.filter(session=session, kind=FileKind.DICOM).order_by("position")
    )
    targets = pacs_selectors.pacs_targets()
    if not targets:
        _fail(
            session=session,
            token=token,
            error={
                "code": "no_pacs_configured",
                "message": "No PACS destination is configured, so the study cannot be delivered.",
                "hint": "Ask your RelayPACS administrator to configure a PACS, then press retry.",
            },
        )
        return
    every = pacs_selectors.pacs_mode() == "all"
    already = _confirmed_keys(session)
    confirmed = [target for target in targets if target.key in already]
    unavailable: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    try:
        for target in targets:
            if target.key in already:
                continue
            if confirmed and not every:
                break
            delivery = _Delivery(session=session, token=token, target=target, files=files)
            try:
                delivery.run()
            except PacsUnavailable as exc:
                unavailable.append({**exc.as_dict(), "destination": target.name})
                continue
            except _NotListed as exc:
                unavailable.append(_not_listing(target, exc.missing))
                continue
            except PacsRejected as exc:
                if every:
                    raise
                # Failover: a destination refusing every request is skipped like one that
                # is down; the upload fails on it only if no other destination takes it.
                rejected.append({**exc.as_dict(), "destination": target.name})
                continue
            _confirm(session=session, token=token, target=target, delivery=delivery)
            confirmed.append(target)
    except _LeaseLost:
        logger.info("upload %s: lease lost while forwarding; stopping", upload_id)
        return
    except _Refused as exc:
        _fail(
            session=session,
            token=token,
            error={
                "code": "pacs_refused_instances",
                "message": f"The PACS refused {len(exc.failed)} of {len(files)} images.",
                "hint": "See failed_instances for the PACS's reasons; fix the images or ask "
                "the PACS administrator, then press retry.",
            },
        )
        return
    except PacsRejected as exc:
        _fail(session=session, token=token, error=exc.as_dict())
        return
    except InstanceSourceError as exc:
        outage = _storage_outage(exc)
        if outage is not None:
            # Not the upload's fault: give it back uncounted and let the task retry.
            released = lease_release(
                upload_id=upload_id,
                token=token,
                from_state=UploadState.FORWARDING,
                attempts=F("attempts") - 1,
            )
            logger.warning("upload %s waits for the upload storage: %s", upload_id, outage)
            if released:
                raise outage from None
            return
        _fail(
            session=session,
            token=token,
            error={
                "code": "upload_damaged",
                "message": "The server's copy of this study could not be read back, so it was not sent.",
                "hint": "Upload the study again; tell your RelayPACS administrator if it happens twice.",
            },
        )
        return
    delivered = len(confirmed) == len(targets) if every else bool(confirmed)
    if delivered:
        _complete(session=session, token=token, confirmed=confirmed, files=files)
    elif unavailable:
        _wait_for_pacs(session=session, token=token, error=unavailable[0])
    else:
        _fail(session=session, token=token, error=rejected[0])
