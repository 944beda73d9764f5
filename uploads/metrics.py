"""The upload pipeline's Prometheus metrics (exposed by relaypacs.metrics at /metrics).

Counted where things happen, in whichever process does them (web workers count chunks,
the Celery worker counts stages); prometheus-client's multiprocess mode sums processes.
``UploadsCollector`` computes the gauges of "now" from the database at scrape time.
Labels are states, stages and outcomes only: never an upload id, a user or a file.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Max, Min
from django.http import Http404
from django.utils import timezone
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from rest_framework.exceptions import APIException

from relaypacs import events
from relaypacs.errors import ApplicationError

CHUNKS_RECEIVED = Counter(
    "relaypacs_chunks_received_total",
    "Chunk requests, one per request, by outcome (stored, duplicate, checksum_mismatch, "
    "conflict, busy, refused, error); busy: 503 server_busy, the web process's chunk memory "
    "budget stayed spent for CHUNK_MEMORY_WAIT_SECONDS.",
    ["outcome"],
)
BYTES_RECEIVED = Counter(
    "relaypacs_bytes_received_total",
    "Bytes of chunks stored (a duplicate chunk adds nothing).",
)
# From a second (a small photo) to a day (a large study on a clinic's uplink).
STAGE_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
UPLOAD_STAGE_SECONDS = Histogram(
    "relaypacs_upload_stage_seconds",
    "Time uploads spent per stage: receive (init to the last chunk), process, forward, and "
    "pacs_receipt (init to the PACS confirming every instance).",
    ["stage"],
    buckets=STAGE_BUCKETS,
)
BACKUPS = Counter(
    "relaypacs_backups_total",
    "Scheduled backups (manage.py backup's daily run by beat), by outcome: written or "
    "failed (the log and the audit trail say why).",
    ["outcome"],
)
# Both outcomes exist at 0 from the start, so that the first failure is an increase an alert
# sees (deploy/prometheus/alerts.yml, RelayPacsBackupFailed), not a new series.
for _outcome in ("written", "failed"):
    BACKUPS.labels(outcome=_outcome)
PACS_RETRIES = Counter(
    "relaypacs_upload_pacs_retries_total",
    "Times an upload was put back to wait for an unreachable PACS (a retry scheduled).",
)

OUTCOME_BY_ERROR_CODE = {
    "checksum_mismatch": "checksum_mismatch",
    "chunk_conflict": "conflict",
    "server_busy": "busy",
}
# How long chunk PUTs that found the web process's chunk memory budget spent waited for room
# (the others do not wait and are not observed), up to CHUNK_MEMORY_WAIT_SECONDS (30 s).
CHUNK_MEMORY_WAIT_SECONDS = Histogram(
    "relaypacs_chunk_memory_wait_seconds",
    "Time chunk PUTs that found their web process's chunk memory budget spent waited for "
    "room before their body was read (those refused with server_busy count the whole wait).",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60),
)
CHUNKS_SLOWED_DOWN = Counter(
    "relaypacs_chunks_slowed_down_total",
    "Chunks answered with max_in_flight 1: their body waited more than "
    "UPLOAD_CHUNK_BUSY_SECONDS for one of the web process's chunk threads (a backlog).",
)
# Waiting states and the moment their wait began: a receiving upload since its init, one
# waiting for the PACS since the first failure (retries do not restart the clock).
WAITING_SINCE = {
    "receiving": "created_at",
    "needs_confirmation": "updated_at",
    "waiting_for_pacs": "first_pacs_failure_at",
}


def chunk_counted(*, error_code: str | None = None, duplicate: bool = False, size: int = 0) -> None:
    """Count one chunk request: ``error_code`` of the ApplicationError that refused it
    ("server_error" for an unexpected failure), else stored or duplicate."""
    if error_code is None:
        CHUNKS_RECEIVED.labels(outcome="duplicate" if duplicate else "stored").inc()
        if not duplicate:
            BYTES_RECEIVED.inc(size)
        return
    if error_code == "server_error":
        outcome = "error"
    else:
        outcome = OUTCOME_BY_ERROR_CODE.get(error_code, "refused")
    CHUNKS_RECEIVED.labels(outcome=outcome).inc()


class ChunkRequest:
    """What ``chunk_request`` counts when the request ends: set ``receipt`` on success."""

    receipt: Any = None


@contextmanager
def chunk_request() -> Iterator[ChunkRequest]:
    """Count the chunk request run inside: its ApplicationError's code when one escapes,
    "refused" for a 404/403 and the like, "server_error" for any other exception, else the receipt (stored or duplicate)."""
    request = ChunkRequest()
    try:
        yield request
    except ApplicationError as error:
        chunk_counted(error_code=error.code)
        raise
    except (Http404, PermissionDenied, APIException):
        chunk_counted(error_code="refused")
        raise
    except Exception:
        chunk_counted(error_code="server_error")
        raise
    receipt = request.receipt
    if receipt is not None:
        chunk_counted(duplicate=receipt.duplicate, size=receipt.size)


class StageTiming:
    """Set ``counted`` to False when the work turned out not to be this task's (another
    worker had claimed it): such a run says nothing about the stage's time."""

    counted: bool = True


@contextmanager
def stage_timer(stage: str) -> Iterator[StageTiming]:
    """Observe the time of the block in ``relaypacs_upload_stage_seconds{stage}``."""
    timing = StageTiming()
    started = time.monotonic()
    try:
        yield timing
    finally:
        if timing.counted:
            UPLOAD_STAGE_SECONDS.labels(stage=stage).observe(time.monotonic() - started)


def _since_created(upload_id: str, *, until_field: str | None) -> float | None:
    from .models import UploadSession

    row = (
        UploadSession.objects.filter(pk=upload_id)
        .values("created_at", *([until_field] if until_field else []))
        .first()
    )
    if row is None:
        return None
    until = row.get(until_field) if until_field else None
    return ((until or timezone.now()) - row["created_at"]).total_seconds()


def upload_metrics_on_domain_event(*, name: str, upload_id: str = "", **payload: Any) -> None:
    """Stage times and retries from the pipeline's domain events (after their commit)."""
    if name == events.UPLOAD_RECEIVED and upload_id:
        seconds = _since_created(upload_id, until_field="received_at")
        if seconds is not None:
            UPLOAD_STAGE_SECONDS.labels(stage="receive").observe(seconds)
    elif name == events.UPLOAD_COMPLETED and upload_id:
        seconds = _since_created(upload_id, until_field="completed_at")
        if seconds is not None:
            UPLOAD_STAGE_SECONDS.labels(stage="pacs_receipt").observe(seconds)
    elif name == events.PACS_UNREACHABLE:
        PACS_RETRIES.inc()


def backup_families() -> Iterator[Metric]:
    """The daily backup's gauges for RelayPacsBackupMissing (deploy/prometheus/alerts.yml):
    whether beat schedules it, when it last wrote a backup (the audit trail), and when the
    database was created (the grace of a stack that never had one). Two small indexed
    queries; no sample of the last backup when there was none."""
    from .selectors import backup_scheduled_last_written_at, database_created_at

    yield GaugeMetricFamily(
        "relaypacs_backup_scheduled",
        "1 when beat backs the product up daily (BACKUP_SCHEDULE a time of day), 0 when "
        "BACKUP_SCHEDULE is off.",
        value=0.0 if str(settings.BACKUP_SCHEDULE).strip().lower() == "off" else 1.0,
    )
    last = GaugeMetricFamily(
        "relaypacs_backup_last_success_timestamp_seconds",
        "When beat's daily backup last wrote a whole backup (Unix time, from the audit "
        "trail; a backup by hand does not count); no sample when it never did.",
    )
    written_at = backup_scheduled_last_written_at()
    if written_at is not None:
        last.add_metric([], written_at.timestamp())
    yield last
    created = GaugeMetricFamily(
        "relaypacs_database_created_timestamp_seconds",
        "When this database was created (Unix time its first migration was applied): "
        "a stack that never had a backup is given 26 hours from then to write its first.",
    )
    created_at = database_created_at()
    if created_at is not None:
        created.add_metric([], created_at.timestamp())
    yield created


class UploadsCollector(Collector):
    """Uploads per state, the oldest upload of each waiting state, the most leases run out
    in a row per leased state, and the daily backup's gauges (``backup_families``), from
    the database at scrape time."""

    def collect(self) -> Iterable[Metric]:
        from .models import LEASED_STATES, UploadSession, UploadState

        per_state = GaugeMetricFamily(
            "relaypacs_uploads", "Uploads in each state now.", labels=["state"]
        )
        counts = dict(
            UploadSession.objects.values_list("state")
            .annotate(n=Count("pk"))
            .values_list("state", "n")
        )
        for state in UploadState.values:
            per_state.add_metric([state], counts.get(state, 0))
        yield per_state

        oldest = GaugeMetricFamily(
            "relaypacs_upload_oldest_waiting_seconds",
            "Age of the oldest upload in each waiting state (receiving: since init; "
            "waiting_for_pacs: since the first PACS failure); 0 when none.",
            labels=["state"],
        )
        now = timezone.now()
        for state, field in WAITING_SINCE.items():
            at = UploadSession.objects.filter(state=state).aggregate(t=Min(field))["t"]
            oldest.add_metric([state], (now - at).total_seconds() if at else 0.0)
        yield oldest

        expiries = GaugeMetricFamily(
            "relaypacs_upload_lease_expiries_max",
            "The most leases that ran out in a row on one upload in each leased state (a "
            "worker killed or hung while holding it); 0 when none.",
            labels=["state"],
        )
        most = dict(
            UploadSession.objects.filter(state__in=LEASED_STATES)
            .values_list("state")
            .annotate(m=Max("lease_expiries"))
            .values_list("state", "m")
        )
        for state in LEASED_STATES:
            expiries.add_metric([str(state)], float(most.get(state) or 0))
        yield expiries
        yield from backup_families()
