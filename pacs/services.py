"""Writes and side effects of the PACS gateway: sending instances, confirming, receipts.

Callers hand over plain data (``InstanceSource``, ``PacsTarget``) and get plain data back
(``InstanceOutcome``); nothing here knows about uploads. Instance bytes are streamed from
their source to the PACS unchanged and never held whole in memory.
"""

from __future__ import annotations

import logging
import queue
import random
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import BinaryIO

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from pacs.clients.dicomweb import DicomwebClient, QidoNotAvailable, StowNotAvailable
from pacs.clients.orthanc import OrthancClient
from pacs.errors import InstanceSourceError, PacsRejected, PacsUnavailable
from pacs.models import DeliveredInstance
from pacs.selectors import PacsTarget

__all__ = [
    "InstanceOutcome",
    "InstanceSource",
    "InstanceSourceError",
    "PacsRejected",
    "PacsUnavailable",
    "deliveries_record",
    "instances_confirm",
    "instances_store",
    "retry_delay_seconds",
    "stow_batches",
]

logger = logging.getLogger(__name__)

# Instances per STOW-RS request, whatever their size: the PACS answers with one DICOM
# JSON item per instance and processes the request as a whole, so a CD of 5,000 tiny
# images is split into requests that each finish (and renew the caller's lease) quickly.
STOW_BATCH_MAX_INSTANCES = 500
# While a batch is on the wire the caller's ``heartbeat`` runs this often: on a slow link
# one 50 MB batch takes minutes (two share the link), longer than a caller's lease would
# last if it were renewed per batch only.
HEARTBEAT_SECONDS = 30.0
# Rows per INSERT of receipts: one round trip for a typical study, bounded for a huge one.
DELIVERY_RECORD_BATCH = 500

NOT_ACKNOWLEDGED = "Not acknowledged by the PACS (STOW-RS answered HTTP {status})."
_jitter = random.SystemRandom()


@dataclass(frozen=True)
class InstanceSource:
    """One Part 10 file to deliver.

    ``open()`` returns a fresh readable binary stream positioned at the start of exactly
    ``size`` bytes; it may be called more than once (a retried or fallen-back batch).
    The gateway closes every stream it opens.
    """

    sop_instance_uid: str
    study_instance_uid: str
    size: int
    open: Callable[[], BinaryIO] = field(repr=False, compare=False)


@dataclass(frozen=True)
class InstanceOutcome:
    """What the PACS said about one instance.

    ``stored`` is True only when the PACS acknowledged this SOP Instance UID.
    ``failure_reason`` is a sentence for a technician when it is not; ``retrieve_url``
    is where the PACS says the instance can be fetched, when it says so.
    """

    sop_instance_uid: str
    stored: bool
    failure_reason: str | None = None
    retrieve_url: str | None = None


def stow_batches(
    instances: Sequence[InstanceSource],
    *,
    max_bytes: int,
    max_instances: int = STOW_BATCH_MAX_INSTANCES,
) -> list[list[InstanceSource]]:
    """Split ``instances``, in order, into batches of at most ``max_bytes`` (sum of sizes)
    and ``max_instances``; an instance larger than ``max_bytes`` goes alone."""
    batches: list[list[InstanceSource]] = []
    current: list[InstanceSource] = []
    current_bytes = 0
    for instance in instances:
        too_big = current_bytes + instance.size > max_bytes
        if current and (too_big or len(current) >= max_instances):
            batches.append(current)
            current, current_bytes = [], 0
        current.append(instance)
        current_bytes += instance.size
    if current:
        batches.append(current)
    return batches


def instances_store(
    *,
    target: PacsTarget,
    instances: Sequence[InstanceSource],
    on_batch: Callable[[list[InstanceOutcome]], None] | None = None,
    in_flight: int | None = None,
    heartbeat: Callable[[], None] | None = None,
) -> list[InstanceOutcome]:
    """Send ``instances`` to ``target`` and return one outcome per instance, in order.

    Instances go in STOW-RS batches bounded by settings.PACS_STOW_BATCH_BYTES (and
    STOW_BATCH_MAX_INSTANCES), each streamed from its source in 1 MiB blocks, with up to
    ``in_flight`` (default settings.PACS_STOW_IN_FLIGHT) batches on the wire at once (each on its own connection, from a worker
    thread). ``on_batch`` is called in the caller's thread, batch by batch in order, with
    that batch's outcomes (the place to renew a lease and record progress); an exception
    it raises stops the delivery (no further batch is started, one already on the wire
    is finished) and propagates. ``heartbeat`` runs in the caller's thread before each
    batch is started and every HEARTBEAT_SECONDS while batches are on the wire (the place
    to renew a lease on a slow link); an exception it raises stops the delivery the same way.

    Targets without a DICOMweb URL, and targets whose STOW-RS answers 404/405/501 while
    they have an Orthanc URL, get each file by Orthanc REST instead (POST /instances).

    Idempotent: re-sending instances the PACS already holds is harmless (they come back
    stored). A per-instance refusal is an outcome with stored=False, never an exception;
    an instance the PACS neither stored nor refused counts as failed.

    Raises PacsUnavailable (retryable: network, timeout, 5xx, 408, 429; outcomes of the
    batches before it were already given to ``on_batch``), PacsRejected (the PACS refuses
    every request, e.g. wrong credentials or URL), InstanceSourceError (a source stream
    that cannot be read or has the wrong size).
    """
    if not target.dicomweb_url and not target.orthanc_url:
        raise PacsRejected(pacs=target.name, detail="no DICOMweb or Orthanc URL configured")
    batches = stow_batches(instances, max_bytes=settings.PACS_STOW_BATCH_BYTES)
    outcomes: list[InstanceOutcome] = []
    wanted = settings.PACS_STOW_IN_FLIGHT if in_flight is None else in_flight
    slots = max(1, min(wanted, len(batches)))
    with _Sender(target, slots=slots) as sender:
        pending: deque[tuple[int, list[InstanceSource], Future[_Sent]]] = deque()
        with ThreadPoolExecutor(max_workers=slots, thread_name_prefix="stow") as pool:
            try:
                for number, batch in enumerate(batches, start=1):
                    if heartbeat is not None:
                        heartbeat()
                    pending.append((number, batch, pool.submit(sender.send, batch)))
                    if len(pending) >= slots:
                        outcomes.extend(
                            _collect(sender, pending.popleft(), len(batches), on_batch, heartbeat)
                        )
                while pending:
                    outcomes.extend(
                        _collect(sender, pending.popleft(), len(batches), on_batch, heartbeat)
                    )
            except BaseException:
                # Start nothing more; a batch already on the wire is finished (and its
                # stream closed) before this returns, its outcome left unreported: the next
                # delivery sends it again and the PACS keeps one copy.
                for number, _, future in pending:
                    if not future.cancel():
                        future.add_done_callback(partial(_log_dropped, target.name, number))
                raise
    return outcomes


def _log_dropped(pacs: str, number: int, future: Future[_Sent]) -> None:
    error = future.exception()
    logger.info(
        "PACS %s batch %d finished after the delivery stopped: %s (sent again next time)",
        pacs,
        number,
        type(error).__name__ if error is not None else "stored",
    )


@dataclass(frozen=True)
class _Sent:
    outcomes: list[InstanceOutcome]
    via_rest: bool
    seconds: float


class _Sender:
    """Sends one batch at a time per slot: each slot has its own DICOMweb and Orthanc
    client (an HTTP session is not shared between threads). Remembers that the target
    has no STOW-RS once it said so, and sends every later batch by REST."""

    def __init__(self, target: PacsTarget, *, slots: int) -> None:
        self.target = target
        self.use_rest = not target.dicomweb_url
        self._free: queue.SimpleQueue[tuple[DicomwebClient | None, OrthancClient | None]]
        self._free = queue.SimpleQueue()
        with ExitStack() as clients:
            for _ in range(slots):
                dicomweb = DicomwebClient(target) if target.dicomweb_url else None
                orthanc = OrthancClient(target) if target.orthanc_url else None
                for client in (dicomweb, orthanc):
                    if client is not None:
                        clients.enter_context(client)
                self._free.put((dicomweb, orthanc))
            self._clients = clients.pop_all()

    def __enter__(self) -> _Sender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._clients.close()

    def send(self, batch: list[InstanceSource]) -> _Sent:
        """One batch by STOW-RS, or by REST when the target has no STOW-RS (thread-safe)."""
        started = time.monotonic()
        dicomweb, orthanc = self._free.get()
        try:
            if not self.use_rest and dicomweb is not None:
                try:
                    return _Sent(_batch_stow(dicomweb, batch), False, time.monotonic() - started)
                except StowNotAvailable as exc:
                    if orthanc is None:
                        raise PacsRejected(
                            pacs=self.target.name, detail=str(exc), http_status=exc.status_code
                        ) from exc
                    if not self.use_rest:
                        logger.warning(
                            "STOW-RS not available on PACS %s (HTTP %s); using Orthanc REST",
                            self.target.name,
                            exc.status_code,
                        )
                    self.use_rest = True
            return _Sent(_batch_rest(_required(orthanc), batch), True, time.monotonic() - started)
        finally:
            self._free.put((dicomweb, orthanc))


def _collect(
    sender: _Sender,
    item: tuple[int, list[InstanceSource], Future[_Sent]],
    total: int,
    on_batch: Callable[[list[InstanceOutcome]], None] | None,
    heartbeat: Callable[[], None] | None,
) -> list[InstanceOutcome]:
    """Wait for one batch (beating ``heartbeat`` meanwhile), log it and hand its outcomes
    to ``on_batch``."""
    number, batch, future = item
    while True:
        try:
            sent = future.result(timeout=HEARTBEAT_SECONDS if heartbeat is not None else None)
            break
        except FutureTimeout:
            if heartbeat is not None:
                heartbeat()
    stored = sum(outcome.stored for outcome in sent.outcomes)
    logger.info(
        "PACS %s batch %d/%d via %s: %d sent, %d stored, %d failed, %d bytes, %.1fs",
        sender.target.name,
        number,
        total,
        "REST" if sent.via_rest else "STOW-RS",
        len(batch),
        stored,
        len(batch) - stored,
        sum(instance.size for instance in batch),
        sent.seconds,
    )
    if on_batch is not None:
        on_batch(sent.outcomes)
    return sent.outcomes


def _required(client: OrthancClient | None) -> OrthancClient:
    # The REST path is only taken when the target has an Orthanc URL.
    if client is None:
        raise RuntimeError("Orthanc REST path taken for a target without an Orthanc URL")
    return client


def _batch_stow(client: DicomwebClient, batch: list[InstanceSource]) -> list[InstanceOutcome]:
    response = client.instances_stow(parts=batch)
    sent = {instance.sop_instance_uid for instance in batch}
    unexpected = (response.stored.keys() | response.failed.keys()) - sent
    if unexpected:
        logger.warning(
            "PACS %s acknowledged %d SOP instances that were not in the batch",
            client.target.name,
            len(unexpected),
        )
    if response.warnings:
        logger.info(
            "PACS %s stored %d instances with warnings", client.target.name, len(response.warnings)
        )
    outcomes = []
    for instance in batch:
        uid = instance.sop_instance_uid
        if uid in response.stored:
            outcomes.append(
                InstanceOutcome(
                    sop_instance_uid=uid, stored=True, retrieve_url=response.stored[uid]
                )
            )
        elif uid in response.failed:
            outcomes.append(
                InstanceOutcome(
                    sop_instance_uid=uid, stored=False, failure_reason=response.failed[uid]
                )
            )
        else:
            outcomes.append(
                InstanceOutcome(
                    sop_instance_uid=uid,
                    stored=False,
                    failure_reason=NOT_ACKNOWLEDGED.format(status=response.status_code),
                )
            )
    return outcomes


def _batch_rest(client: OrthancClient, batch: list[InstanceSource]) -> list[InstanceOutcome]:
    outcomes = []
    for instance in batch:
        uid = instance.sop_instance_uid
        response = client.instance_store(part=instance)
        if not response.stored or response.orthanc_id is None:
            outcomes.append(
                InstanceOutcome(
                    sop_instance_uid=uid, stored=False, failure_reason=response.failure_reason
                )
            )
            continue
        # Orthanc's answer names its own id only: check it indexed the UID we claim.
        indexed_uid = client.instance_sop_uid(orthanc_id=response.orthanc_id)
        if indexed_uid != uid:
            outcomes.append(
                InstanceOutcome(
                    sop_instance_uid=uid,
                    stored=False,
                    failure_reason="The PACS stored the file under another SOP Instance UID.",
                )
            )
            continue
        outcomes.append(
            InstanceOutcome(
                sop_instance_uid=uid,
                stored=True,
                retrieve_url=f"{client.base_url}/instances/{response.orthanc_id}",
            )
        )
    return outcomes


def instances_confirm(
    *, target: PacsTarget, sop_instance_uids_by_study: Mapping[str, Collection[str]]
) -> set[str]:
    """The SOP Instance UIDs of ``sop_instance_uids_by_study`` that ``target`` does NOT list.

    Asks QIDO-RS once per study (paged); REST-only targets, and targets whose QIDO-RS
    answers 404/405/501 while they have an Orthanc URL, are asked through Orthanc's
    tools/find. A QIDO-RS 404 without an Orthanc URL means the study is unknown there.
    Read-only and safe to repeat.

    Raises PacsUnavailable when the PACS cannot be reached, PacsRejected when it refuses.
    """
    if not target.dicomweb_url and not target.orthanc_url:
        raise PacsRejected(pacs=target.name, detail="no DICOMweb or Orthanc URL configured")
    missing: set[str] = set()
    use_rest = not target.dicomweb_url
    with ExitStack() as clients:
        dicomweb = clients.enter_context(DicomwebClient(target)) if target.dicomweb_url else None
        orthanc = clients.enter_context(OrthancClient(target)) if target.orthanc_url else None
        for study_uid, sop_uids in sop_instance_uids_by_study.items():
            expected = set(sop_uids)
            if not expected:
                continue
            present: set[str] | None = None
            if not use_rest and dicomweb is not None:
                try:
                    present = dicomweb.study_sop_instance_uids(study_instance_uid=study_uid)
                except QidoNotAvailable as exc:
                    if orthanc is not None:
                        use_rest = True
                    elif exc.status_code == 404:
                        present = set()
                    else:
                        raise PacsRejected(
                            pacs=target.name, detail=str(exc), http_status=exc.status_code
                        ) from exc
            if present is None:
                present = _required(orthanc).study_sop_instance_uids(study_instance_uid=study_uid)
            missing |= expected - present
    logger.info(
        "PACS %s confirm: %d studies, %d instances not listed",
        target.name,
        len(sop_instance_uids_by_study),
        len(missing),
    )
    return missing


@transaction.atomic
def deliveries_record(
    *,
    target_key: str,
    instances: Iterable[tuple[str, str]],
    delivered_at: datetime | None = None,
) -> None:
    """Record receipts for (SOP Instance UID, Study Instance UID) pairs delivered to
    ``target_key``, at ``delivered_at`` (default: now).

    An upsert: a re-delivered instance keeps one row whose ``delivered_at`` (and study)
    is updated. Idempotent; rows are written in UID order so that concurrent writers
    lock them in the same order.
    """
    when = delivered_at or timezone.now()
    studies_by_sop = dict(instances)  # one row per SOP instance, the last pair wins
    rows = [
        DeliveredInstance(
            target_key=target_key,
            sop_instance_uid=sop_uid,
            study_instance_uid=studies_by_sop[sop_uid],
            delivered_at=when,
        )
        for sop_uid in sorted(studies_by_sop)
    ]
    DeliveredInstance.objects.bulk_create(
        rows,
        batch_size=DELIVERY_RECORD_BATCH,
        update_conflicts=True,
        unique_fields=["target_key", "sop_instance_uid"],
        update_fields=["study_instance_uid", "delivered_at"],
    )


def retry_delay_seconds(*, attempt: int) -> float:
    """Seconds to wait before retry number ``attempt`` (1 after the first failure).

    Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**(attempt-1))]
    with base PACS_RETRY_BASE_SECONDS and cap PACS_RETRY_MAX_SECONDS, so many workers
    whose PACS came back do not all retry at the same moment.
    """
    base = float(settings.PACS_RETRY_BASE_SECONDS)
    cap = float(settings.PACS_RETRY_MAX_SECONDS)
    exponent = max(attempt, 1) - 1
    # Past 2**62 the product only overflows; the cap has long been reached.
    ceiling = cap if exponent > 62 else min(cap, base * 2**exponent)
    return _jitter.uniform(0, ceiling)
