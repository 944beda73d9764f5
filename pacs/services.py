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
from datetime import datetime, timedelta
from functools import partial
from typing import BinaryIO

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from pacs.clients.dicomweb import DicomwebClient, QidoNotAvailable, StowNotAvailable
from pacs.clients.orthanc import OrthancClient
from pacs.errors import InstanceSourceError, PacsNotListing, PacsRejected, PacsUnavailable
from pacs.models import DeliveredInstance, PacsHealthProbe
from pacs.selectors import PacsHealth, PacsTarget, pacs_health

__all__ = [
    "InstanceOutcome",
    "InstanceSource",
    "InstanceSourceError",
    "PacsNotListing",
    "PacsRejected",
    "PacsUnavailable",
    "deliveries_record",
    "instances_confirm",
    "instances_store",
    "pacs_health_probes",
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
# Connect and read timeout of the receipt check's first try through Orthanc's index
# (tools/find) where QIDO-RS is there as well: a page answers in well under a second, so
# a REST URL that does not answer within this is given up for QIDO-RS, instead of holding
# the confirmation for the target's full timeout (120 s by default).
INDEX_FIRST_TIMEOUT_SECONDS = 5.0

# The health endpoint is anonymous (load balancers, monitors, anyone on the network): each
# PACS is probed at most once in this time, whatever the request rate or the number of
# web processes, so the endpoint cannot be used to flood a PACS with logins.
HEALTH_PROBE_INTERVAL_SECONDS = 30
# Probes of several PACS run side by side: one answer takes at most the probe timeout.
HEALTH_PROBE_MAX_PARALLEL = 8
HEALTH_DETAIL_MAX_CHARS = 300

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
    heartbeat_seconds: float | None = None,
) -> list[InstanceOutcome]:
    """Send ``instances`` to ``target`` and return one outcome per instance, in order.

    Instances go in STOW-RS batches bounded by settings.PACS_STOW_BATCH_BYTES (and
    STOW_BATCH_MAX_INSTANCES), each streamed from its source in 1 MiB blocks, with up to
    ``in_flight`` (default settings.PACS_STOW_IN_FLIGHT) batches on the wire at once (each on its own connection, from a worker
    thread). ``on_batch`` is called in the caller's thread, batch by batch in order, with
    that batch's outcomes (the place to renew a lease and record progress); an exception
    it raises stops the delivery (no further batch is started, one already on the wire
    is finished) and propagates. ``heartbeat`` runs in the caller's thread before each
    batch is started and every ``heartbeat_seconds`` (default HEARTBEAT_SECONDS) while
    batches are on the wire (the place to renew a lease on a slow link: a caller whose lease
    is shorter passes a shorter interval); an exception it raises stops the delivery the
    same way.

    Targets without a DICOMweb URL, and targets whose STOW-RS answers 404/405/501 while
    they have an Orthanc URL, get each file by Orthanc REST instead (POST /instances).

    Idempotent: re-sending instances the PACS already holds is harmless (they come back
    stored). A per-instance refusal is an outcome with stored=False, never an exception.
    STOW-RS answers are read as DICOM JSON or DICOM XML; when a 2xx answer does not name
    an instance (no body, one that cannot be read, the instance left out), QIDO-RS is
    asked: listed means stored, not listed raises PacsNotListing. After any other status
    an instance the PACS neither stored nor refused counts as failed.

    Raises PacsUnavailable (retryable: network, timeout, 5xx, 408, 429, and its subclass
    PacsNotListing; outcomes of the batches before it were already given to
    ``on_batch``), PacsRejected (the PACS refuses
    every request, e.g. wrong credentials or URL), InstanceSourceError (a source stream
    that cannot be read or has the wrong size).
    """
    if not target.dicomweb_url and not target.orthanc_url:
        raise PacsRejected(pacs=target.name, detail="no DICOMweb or Orthanc URL configured")
    batches = stow_batches(instances, max_bytes=settings.PACS_STOW_BATCH_BYTES)
    outcomes: list[InstanceOutcome] = []
    wanted = settings.PACS_STOW_IN_FLIGHT if in_flight is None else in_flight
    beat_every = HEARTBEAT_SECONDS if heartbeat_seconds is None else heartbeat_seconds
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
                            _collect(
                                sender,
                                pending.popleft(),
                                len(batches),
                                on_batch,
                                heartbeat,
                                beat_every,
                            )
                        )
                while pending:
                    outcomes.extend(
                        _collect(
                            sender, pending.popleft(), len(batches), on_batch, heartbeat, beat_every
                        )
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
                    return _Sent(
                        _batch_stow(dicomweb, orthanc, batch), False, time.monotonic() - started
                    )
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
    beat_every: float,
) -> list[InstanceOutcome]:
    """Wait for one batch (beating ``heartbeat`` every ``beat_every`` seconds meanwhile),
    log it and hand its outcomes to ``on_batch``."""
    number, batch, future = item
    while True:
        try:
            sent = future.result(timeout=beat_every if heartbeat is not None else None)
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


def _batch_stow(
    client: DicomwebClient, orthanc: OrthancClient | None, batch: list[InstanceSource]
) -> list[InstanceOutcome]:
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
    unanswered = [
        instance
        for instance in batch
        if instance.sop_instance_uid not in response.stored
        and instance.sop_instance_uid not in response.failed
    ]
    listed: set[str] = set()
    if unanswered and 200 <= response.status_code < 300:
        listed = _listed_after_success(client, orthanc, response.status_code, unanswered)
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
        elif uid in listed:
            outcomes.append(InstanceOutcome(sop_instance_uid=uid, stored=True))
        else:
            outcomes.append(
                InstanceOutcome(
                    sop_instance_uid=uid,
                    stored=False,
                    failure_reason=NOT_ACKNOWLEDGED.format(status=response.status_code),
                )
            )
    return outcomes


def _listed_after_success(
    client: DicomwebClient,
    orthanc: OrthancClient | None,
    status: int,
    unanswered: list[InstanceSource],
) -> set[str]:
    """The ``unanswered`` instances of a 2xx STOW-RS answer that the PACS lists.

    A 2xx says the PACS took the request; when its answer does not name an instance (no
    body, a body neither DICOM JSON nor XML, an instance left out) only a query can tell
    whether it was stored. Raises PacsNotListing when some are not listed (the caller
    sends them again later; the PACS keeps one copy), and what listing raises.
    """
    name = client.target.name
    logger.info(
        "PACS %s answered STOW-RS with HTTP %d without naming %d instances; asking QIDO-RS",
        name,
        status,
        len(unanswered),
    )
    by_study: dict[str, set[str]] = {}
    for instance in unanswered:
        by_study.setdefault(instance.study_instance_uid, set()).add(instance.sop_instance_uid)
    lister = _Lister(client.target, dicomweb=client, orthanc=orthanc)
    listed: set[str] = set()
    for study_uid, expected in by_study.items():
        listed |= lister.listed(study_instance_uid=study_uid, expected=expected) & expected
    not_listed = len(unanswered) - len(listed)
    if not_listed:
        raise PacsNotListing(
            pacs=name,
            detail=f"STOW-RS answered HTTP {status} without naming {len(unanswered)} "
            f"instances; QIDO-RS does not list {not_listed} of them",
            http_status=status,
        )
    return listed


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


class _Lister:
    """Lists a study's instances on one target: QIDO-RS, or Orthanc's tools/find for
    REST-only targets and once QIDO-RS answered 404/405/501 where an Orthanc URL is set.
    A QIDO-RS 404 without an Orthanc URL means the study is unknown there.

    ``index``: where both URLs are set, an Orthanc client (with a short timeout, see
    INDEX_FIRST_TIMEOUT_SECONDS) asked first through tools/find; QIDO-RS is asked
    instead, for this and every later study, once Orthanc's REST API refuses (e.g. a
    proxy that publishes DICOMweb only) or cannot be reached (5xx, refused connection,
    timeout) while DICOMweb still works. Both read Orthanc's index, but QIDO-RS builds a
    DICOM JSON document of fifteen attributes per instance: for a study of 2,000 images
    1.5-2 s here, tools/find 0.2 s."""

    def __init__(
        self,
        target: PacsTarget,
        *,
        dicomweb: DicomwebClient | None,
        orthanc: OrthancClient | None,
        index: OrthancClient | None = None,
    ) -> None:
        self.target = target
        self.dicomweb = dicomweb
        self.orthanc = orthanc
        self.use_rest = dicomweb is None
        self.index = index if dicomweb is not None else None

    def listed(self, *, study_instance_uid: str, expected: Collection[str]) -> set[str]:
        """The SOP Instance UIDs listed for the study (paging stops once all of
        ``expected`` were seen). Raises PacsUnavailable, PacsRejected."""
        if self.index is not None:
            try:
                return self.index.study_sop_instance_uids(
                    study_instance_uid=study_instance_uid, expected=expected
                )
            except (PacsRejected, PacsUnavailable) as exc:
                # Code and status only: the detail of a transport error is the
                # library's text, which need not stay free of what was asked.
                logger.info(
                    "PACS %s: Orthanc's REST API did not list (%s, HTTP %s); using QIDO-RS",
                    self.target.name,
                    exc.code,
                    exc.http_status,
                )
                self.index = None
        if not self.use_rest and self.dicomweb is not None:
            try:
                return self.dicomweb.study_sop_instance_uids(
                    study_instance_uid=study_instance_uid, expected=expected
                )
            except QidoNotAvailable as exc:
                if self.orthanc is not None:
                    self.use_rest = True
                elif exc.status_code == 404:
                    return set()
                else:
                    raise PacsRejected(
                        pacs=self.target.name, detail=str(exc), http_status=exc.status_code
                    ) from exc
        return _required(self.orthanc).study_sop_instance_uids(
            study_instance_uid=study_instance_uid, expected=expected
        )


def instances_confirm(
    *, target: PacsTarget, sop_instance_uids_by_study: Mapping[str, Collection[str]]
) -> set[str]:
    """The SOP Instance UIDs of ``sop_instance_uids_by_study`` that ``target`` does NOT list.

    Asks once per study (paged): Orthanc's tools/find where the target has an Orthanc
    URL (QIDO-RS if its REST API refuses or cannot be reached), else QIDO-RS; targets
    whose QIDO-RS answers 404/405/501 while they have an Orthanc URL are asked through
    tools/find too. A QIDO-RS 404 without an Orthanc URL means the study is unknown there.
    Read-only and safe to repeat.

    Raises PacsUnavailable when the PACS cannot be reached, PacsRejected when it refuses.
    """
    if not target.dicomweb_url and not target.orthanc_url:
        raise PacsRejected(pacs=target.name, detail="no DICOMweb or Orthanc URL configured")
    missing: set[str] = set()
    with ExitStack() as clients:
        dicomweb = clients.enter_context(DicomwebClient(target)) if target.dicomweb_url else None
        orthanc = clients.enter_context(OrthancClient(target)) if target.orthanc_url else None
        index = None
        if dicomweb is not None and orthanc is not None:
            index = clients.enter_context(
                OrthancClient(
                    target, timeout=min(INDEX_FIRST_TIMEOUT_SECONDS, target.timeout_seconds)
                )
            )
        lister = _Lister(target, dicomweb=dicomweb, orthanc=orthanc, index=index)
        for study_uid, sop_uids in sop_instance_uids_by_study.items():
            expected = set(sop_uids)
            if not expected:
                continue
            missing |= expected - lister.listed(study_instance_uid=study_uid, expected=expected)
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


def pacs_health_probes(
    *, targets: Sequence[PacsTarget], now: datetime | None = None
) -> list[PacsHealth]:
    """The health of each of ``targets``, in order, from a probe at most
    HEALTH_PROBE_INTERVAL_SECONDS old.

    A target whose probe is due is claimed by a conditional UPDATE of its PacsHealthProbe
    row (the row count tells which process won), probed, and the result stored; any other
    caller in any process gets the stored result meanwhile ("degraded" with a sentence
    until the first probe finished). So each PACS sees at most one probe per interval.
    Claimed targets are probed in parallel. Never raises for a PACS failure; raises
    DatabaseError when the database fails.
    """
    now = now or timezone.now()
    due: list[PacsTarget] = []
    stored: dict[str, PacsHealthProbe] = {}
    for target in targets:
        row, _ = PacsHealthProbe.objects.get_or_create(
            target_key=target.key, defaults={"next_probe_at": now}
        )
        claimed = PacsHealthProbe.objects.filter(pk=row.pk, next_probe_at__lte=now).update(
            next_probe_at=now + timedelta(seconds=HEALTH_PROBE_INTERVAL_SECONDS)
        )
        if claimed == 1:
            due.append(target)
        else:
            stored[target.key] = row
    fresh: dict[str, PacsHealth] = {}
    if due:
        workers = min(len(due), HEALTH_PROBE_MAX_PARALLEL)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="health") as pool:
            results = list(pool.map(lambda target: pacs_health(target=target), due))
        checked_at = timezone.now()
        for target, health in zip(due, results, strict=True):
            PacsHealthProbe.objects.filter(target_key=target.key).update(
                state=health["state"],
                detail=health["detail"][:HEALTH_DETAIL_MAX_CHARS],
                checked_at=checked_at,
            )
            fresh[target.key] = health
    answers: list[PacsHealth] = []
    for target in targets:
        if target.key in fresh:
            answers.append(fresh[target.key])
            continue
        row = stored[target.key]
        if not row.state:
            answers.append(
                {
                    "name": target.name,
                    "state": "degraded",
                    "detail": "The first check of this PACS has not finished yet.",
                }
            )
        else:
            answers.append(
                {
                    "name": target.name,
                    "state": "ok" if row.state == "ok" else "degraded",
                    "detail": row.detail,
                }
            )
    return answers
