"""Every write of the statistics: the rollups kept up to date from the domain events, the
PWA's network reports, a rebuild from scratch, and the cache of the answers."""

from __future__ import annotations

import logging
import math
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from accounts.models import Facility
from relaypacs import events
from relaypacs.errors import ApplicationError
from uploads.models import UploadSession
from uploads.selectors import UploadFacts, upload_facts

from . import rebuild_sql
from .contributions import RollupKey, bucket_key, contribution_of, rollup_keys
from .models import ROLLUP_FIELDS, UploadRollup, UploadTimeline

logger = logging.getLogger(__name__)

# The cache key whose value is part of every cached answer's key: changing it (an upload
# ended) makes every cached answer unreachable at once, in every process sharing the cache.
STATS_CACHE_VERSION_KEY = "analytics:stats:version"
# Rows written per INSERT by a rebuild, and uploads read per batch.
REBUILD_BATCH = 2000


def stats_cache_invalidate() -> None:
    """Forget every cached statistics answer (an upload ended). Idempotent."""
    cache.set(STATS_CACHE_VERSION_KEY, uuid.uuid4().hex, timeout=None)


def _row_filter(key: RollupKey) -> dict[str, Any]:
    grain, day, facility_id, modality, service_level, outcome = key
    where: dict[str, Any] = {
        "grain": grain,
        "day": date.fromisoformat(day),
        "modality": modality,
        "service_level": service_level,
        "outcome": outcome,
    }
    if facility_id is None:
        where["facility__isnull"] = True
    else:
        where["facility_id"] = facility_id
    return where


def _rollup_apply(*, key: RollupKey, delta: dict[str, int]) -> None:
    """Add ``delta`` to the row of ``key``, creating it when missing; a row left with no
    upload is deleted. Runs in the caller's transaction."""
    rows = UploadRollup.objects.filter(**_row_filter(key))
    changes = {name: F(name) + amount for name, amount in delta.items()}
    if rows.update(**changes) == 0:
        if any(amount < 0 for amount in delta.values()):
            logger.warning("analytics: a rollup row to take an upload from was missing")
            return
        grain, day, facility_id, modality, service_level, outcome = key
        try:
            with transaction.atomic():
                UploadRollup.objects.create(
                    grain=grain,
                    day=date.fromisoformat(day),
                    facility_id=facility_id,
                    modality=modality,
                    service_level=service_level,
                    outcome=outcome,
                    **delta,
                )
        except IntegrityError:
            # Another upload created the row since our UPDATE: add to it.
            rows.update(**changes)
    elif delta.get("uploads", 0) < 0:
        rows.filter(uploads__lte=0).delete()


def _recount(*, timeline: UploadTimeline, facts: UploadFacts) -> bool:
    """Move the upload's contribution in the rollups from what was counted to what its
    facts say now. Returns whether anything changed (nothing does for an event delivered
    twice). The caller holds the timeline row's lock."""
    new = contribution_of(facts=facts, timeline=timeline)
    old = timeline.counted
    if old == new:
        return False
    deltas: dict[RollupKey, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for counted, sign in ((old, -1), (new, 1)):
        if not counted:
            continue
        for key in rollup_keys(bucket_key(counted)):
            for name, amount in counted["values"].items():
                deltas[key][name] += sign * amount
    # Rows are locked in one order (their key's), so two uploads moving between the same
    # buckets cannot deadlock.
    for key in sorted(deltas, key=lambda k: tuple(str(p) for p in k)):
        delta = {name: amount for name, amount in deltas[key].items() if amount}
        if delta:
            _rollup_apply(key=key, delta=delta)
    timeline.counted = new
    return True


def _timeline_locked(upload_id: uuid.UUID) -> UploadTimeline:
    UploadTimeline.objects.get_or_create(upload_id=upload_id)
    return UploadTimeline.objects.select_for_update().get(pk=upload_id)


def _key(value: Any) -> str:
    return value.isoformat() if value is not None else ""


@transaction.atomic
def upload_event_record(*, upload_id: uuid.UUID, name: str) -> bool:
    """Record an upload's domain event and bring its contribution to the rollups up to
    date. Idempotent: an event delivered twice is counted once (first times are kept,
    retries are told apart by their retry or failure time). Returns whether the rollups
    changed. An upload that no longer exists keeps what it was counted for."""
    if next(upload_facts(upload_ids=[upload_id]), None) is None:
        return False
    timeline = _timeline_locked(upload_id)
    # Read again under the lock: facts read before it could predate a change another
    # event already counted (completed), which this one would then count back.
    facts = next(upload_facts(upload_ids=[upload_id]), None)
    if facts is None:
        return False
    now = timezone.now()
    if name in (events.UPLOAD_NEEDS_CONFIRMATION, events.UPLOAD_FORWARDING):
        timeline.checked_at = timeline.checked_at or now
    if name == events.UPLOAD_NEEDS_CONFIRMATION:
        timeline.confirmation_asked_at = timeline.confirmation_asked_at or now
    elif name == events.UPLOAD_FORWARDING:
        timeline.forwarding_at = timeline.forwarding_at or now
        if timeline.last_failure_key and timeline.last_failure_key != timeline.retried_failure_key:
            # Sending again after a failure: a person pressed retry.
            timeline.manual_retries += 1
            timeline.retried_failure_key = timeline.last_failure_key
    elif name == events.UPLOAD_WAITING_FOR_PACS:
        wait = _key(facts.next_retry_at)
        if wait and wait != timeline.last_wait_key:
            timeline.pacs_waits += 1
            timeline.last_wait_key = wait
    elif name == events.UPLOAD_FAILED:
        timeline.last_failure_key = _key(facts.failed_at) or timeline.last_failure_key
    changed = _recount(timeline=timeline, facts=facts)
    timeline.save()
    return changed


@dataclass(frozen=True)
class NetworkReport:
    """The network as the PWA saw it while sending one upload (totals for the upload)."""

    bytes_sent: int
    active_seconds: float
    outages: int
    offline_seconds: float
    retried_chunks: int


# How far a network report may go beyond the upload it describes: outages and retried
# chunks at most this many times its chunks (plus a few for a tiny upload), bytes sent
# (retries included) at most as many whole chunks, seconds at most the resume
# window or the upload's age, whichever is longer. Beyond that the report is not the
# app's, and a huge figure would overflow the day's shared rollup row for everyone.
TELEMETRY_COUNT_FACTOR = 10
TELEMETRY_COUNT_SLACK = 100


def _telemetry_check(
    *, report: NetworkReport, chunk_size: int, total_chunks: int, created_at: Any
) -> None:
    seconds_max = max(
        settings.UPLOAD_RESUME_WINDOW.total_seconds(),
        (timezone.now() - created_at).total_seconds() + 3600,
    )
    counts_max = TELEMETRY_COUNT_FACTOR * max(total_chunks, 1) + TELEMETRY_COUNT_SLACK
    limits: list[tuple[str, float, float]] = [
        ("bytes_sent", report.bytes_sent, counts_max * max(chunk_size, 1)),
        ("active_seconds", report.active_seconds, seconds_max),
        ("offline_seconds", report.offline_seconds, seconds_max),
        ("outages", report.outages, counts_max),
        ("retried_chunks", report.retried_chunks, counts_max),
    ]
    for name, value, most in limits:
        if not math.isfinite(value) or value < 0 or value > most:
            raise ApplicationError(
                "invalid_telemetry",
                f"The network report's {name} ({value:g}) is not possible for this upload: "
                f"it must be between 0 and {most:g}.",
                "Send the totals the app measured for this upload; nothing was recorded.",
                extra={"field": name},
            )


@transaction.atomic
def upload_telemetry_record(*, upload_id: uuid.UUID, report: NetworkReport) -> None:
    """Keep the PWA's latest network report of the upload (it replaces an earlier one, so
    sending it twice is harmless) and count it in the rollups. A figure the upload could
    not have produced (see TELEMETRY_*) is refused with ApplicationError (400) before
    anything is written."""
    size = (
        UploadSession.objects.filter(pk=upload_id)
        .values_list("chunk_size", "total_chunks", "created_at")
        .first()
    )
    if size is None:
        return
    _telemetry_check(report=report, chunk_size=size[0], total_chunks=size[1], created_at=size[2])
    if next(upload_facts(upload_ids=[upload_id]), None) is None:
        return
    timeline = _timeline_locked(upload_id)
    facts = next(upload_facts(upload_ids=[upload_id]), None)  # under the lock (see above)
    if facts is None:
        return
    timeline.telemetry_at = timezone.now()
    timeline.network_bytes = report.bytes_sent
    timeline.network_ms = int(report.active_seconds * 1000)
    timeline.outages = report.outages
    timeline.outage_ms = int(report.offline_seconds * 1000)
    timeline.retried_chunks = report.retried_chunks
    _recount(timeline=timeline, facts=facts)
    timeline.save()


def _batches(facts: Iterator[UploadFacts]) -> Iterator[list[UploadFacts]]:
    batch: list[UploadFacts] = []
    for item in facts:
        batch.append(item)
        if len(batch) >= REBUILD_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _facility_ids() -> set[int]:
    return set(Facility.objects.values_list("pk", flat=True))


def rollups_recomputed() -> tuple[dict[RollupKey, dict[str, int]], dict[uuid.UUID, Any]]:
    """The rollups recomputed from scratch, in Python, upload by upload: every upload's
    facts (uploads.selectors) with what the events told about it, plus what was counted
    for uploads deleted since (unless their facility was deleted too: its statistics went
    with it). Returns the sums per bucket and each upload's contribution. Reads only; the
    reference that ``analytics_rebuild --check`` and the tests hold the rollups to."""
    totals: dict[RollupKey, dict[str, int]] = defaultdict(lambda: dict.fromkeys(ROLLUP_FIELDS, 0))
    contributions: dict[uuid.UUID, Any] = {}
    for batch in _batches(upload_facts()):
        timelines = UploadTimeline.objects.in_bulk([f.upload_id for f in batch])
        for facts in batch:
            counted = contribution_of(facts=facts, timeline=timelines.get(facts.upload_id))
            contributions[facts.upload_id] = counted
    facilities = _facility_ids()
    gone = UploadTimeline.objects.exclude(counted=None).values_list("upload_id", "counted")
    for upload_id, stored in gone.iterator(chunk_size=REBUILD_BATCH):
        if upload_id in contributions or not stored:
            continue
        facility_id = bucket_key(stored)[1]
        if facility_id is None or facility_id in facilities:
            contributions[upload_id] = stored
    for counted in contributions.values():
        for key in rollup_keys(bucket_key(counted)):
            sums = totals[key]
            for name, amount in counted["values"].items():
                sums[name] += amount
    return dict(totals), contributions


def rollups_current() -> dict[RollupKey, dict[str, int]]:
    """The rollups as stored, in the shape of ``rollups_recomputed``."""
    out: dict[RollupKey, dict[str, int]] = {}
    fields = ("grain", "day", "facility_id", "modality", "service_level", "outcome")
    for row in UploadRollup.objects.values(*fields, *ROLLUP_FIELDS).iterator(
        chunk_size=REBUILD_BATCH
    ):
        key = (
            row["grain"],
            row["day"].isoformat(),
            row["facility_id"],
            row["modality"],
            row["service_level"],
            row["outcome"],
        )
        out[key] = {name: int(row[name]) for name in ROLLUP_FIELDS}
    return out


def _statistics_tables_lock() -> None:
    """Lock the statistics' tables against every writer until the transaction ends, in
    the order an event's handler locks them (its upload's timeline row, then rollup
    rows): a rebuild so waits for the handlers under way and the handlers that come
    meanwhile wait for it, and neither can deadlock the other. EXCLUSIVE mode lets plain
    reads (the statistics API) go on, answering from the rollups before the rebuild.
    PostgreSQL only; SQLite lets one writer at a time anyway."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"LOCK TABLE {UploadTimeline._meta.db_table}, {UploadRollup._meta.db_table} "
            "IN EXCLUSIVE MODE"
        )


@transaction.atomic
def rollups_rebuild() -> int:
    """Throw the rollups away and write them again from every upload and what the events
    told about it, recording each upload's contribution (uploads older than this app get
    a timeline); uploads deleted since keep what they were counted for, unless their
    facility was deleted too. For a backfill or a repair; safe to run twice, and safe
    during traffic: it locks the statistics' tables first (``_statistics_tables_lock``),
    so events wait for it, and none is lost. Returns the number of rollup rows written.

    On PostgreSQL a few set-based statements (``rebuild_sql``), minutes at most for
    millions of uploads (bench/RESULTS.md); elsewhere (SQLite, the embedded default) the
    same figures from ``rollups_recomputed``, upload by upload. The tests hold both to
    ``rollups_recomputed``."""
    if connection.vendor == "postgresql":
        _statistics_tables_lock()
        rows = rebuild_sql.rollups_rebuild_in_sql(time_zone=settings.TIME_ZONE)
    else:
        rows = rollups_rebuild_in_python()
    transaction.on_commit(stats_cache_invalidate)
    return rows


def rollups_rebuild_in_python() -> int:
    """``rollups_rebuild``'s work, upload by upload (a database without ``rebuild_sql``).
    The caller holds the transaction."""
    totals, contributions = rollups_recomputed()
    UploadRollup.objects.all().delete()
    rows = []
    for (grain, day, facility_id, modality, service_level, outcome), sums in totals.items():
        rows.append(
            UploadRollup(
                grain=grain,
                day=date.fromisoformat(day),
                facility_id=facility_id,
                modality=modality,
                service_level=service_level,
                outcome=outcome,
                **sums,
            )
        )
    UploadRollup.objects.bulk_create(rows, batch_size=REBUILD_BATCH)
    known = set(UploadTimeline.objects.values_list("upload_id", flat=True))
    UploadTimeline.objects.bulk_create(
        [
            UploadTimeline(upload_id=u, counted=c)
            for u, c in contributions.items()
            if u not in known
        ],
        batch_size=REBUILD_BATCH,
    )
    changed = [
        UploadTimeline(upload_id=u, counted=c) for u, c in contributions.items() if u in known
    ]
    UploadTimeline.objects.bulk_update(changed, ["counted"], batch_size=REBUILD_BATCH)
    return len(rows)
