"""Upload statistics: one rollup row per day × facility × modality × service level ×
outcome, and per upload what the events told us and what it adds to the rollups.

The rollups are the only thing the statistics read, so a request never scans uploads.
Each upload's contribution is kept (``UploadTimeline.counted``): an event applies the
difference between the new contribution and the one recorded, so an event delivered twice
changes nothing, and an upload that failed and then completed after a retry moves from
one bucket to the other instead of being counted twice.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Value
from django.db.models.functions import Coalesce


class Outcome(models.TextChoices):
    IN_PROGRESS = "in_progress", "In progress"
    COMPLETED = "completed", "Received by PACS"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


# The summed columns of a rollup row, in the order of the CSV export.
ROLLUP_FIELDS = (
    "uploads",
    "bytes",
    # Durations in whole milliseconds, so that sums are exact whatever the order of
    # additions (a rebuild gives the same figures to the unit).
    # init → PACS receipt and its parts, over completed uploads only; each with the number
    # of uploads it was measured on (an upload older than this app has no processing time).
    "upload_ms",
    "upload_timed",
    "transfer_ms",
    "transfer_timed",
    "processing_ms",
    "processing_timed",
    "confirmation_ms",
    "confirmation_timed",
    "forwarding_ms",
    "forwarding_timed",
    "pacs_retries",
    "manual_retries",
    "uploads_retried",
    # The network the app saw, as the PWA reported it (POST upload/{id}/telemetry).
    "telemetry_uploads",
    "network_bytes",
    "network_ms",
    "outages",
    "outage_ms",
    "retried_chunks",
)


class Grain(models.TextChoices):
    """How finely a rollup row cuts. Each upload is in one row of each grain, so that a
    long period reads few rows: at a network's scale (thousands of uploads a day) the day
    × facility × modality × service level × outcome buckets hold one or two uploads each,
    and a year of them is as many rows as uploads."""

    # day × facility × modality × service level × outcome: the export, narrow filters and
    # the first, partial month of a period.
    DAY = "day", "Day, every dimension"
    # The same per calendar month (``day`` is the 1st): modality and service-level
    # breakdowns of the whole months of a period.
    MONTH = "month", "Month, every dimension"
    # day × facility × outcome (modality and service level blank): totals, outcomes, the
    # daily trend and the facility table.
    TREND = "trend", "Day, facility and outcome only"


class UploadRollup(models.Model):
    """The sums of the uploads started on ``day`` (in TIME_ZONE; for the month grain, in
    that month) at one facility, with one modality and service level, that are in one
    outcome now."""

    grain = models.CharField(max_length=5, choices=Grain.choices, default=Grain.DAY)
    day = models.DateField()
    # A facility can be deleted only once its uploads are (uploads protect it); its
    # statistics then go with it (CASCADE): kept, they would block the deletion, and moved
    # to "no facility" they would merge into other rows and be another clinic's figures.
    facility = models.ForeignKey(
        "accounts.Facility", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    modality = models.CharField(max_length=16, blank=True)
    service_level = models.CharField(max_length=16)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)

    uploads = models.BigIntegerField(default=0)
    bytes = models.BigIntegerField(default=0)
    upload_ms = models.BigIntegerField(default=0)
    upload_timed = models.BigIntegerField(default=0)
    transfer_ms = models.BigIntegerField(default=0)
    transfer_timed = models.BigIntegerField(default=0)
    processing_ms = models.BigIntegerField(default=0)
    processing_timed = models.BigIntegerField(default=0)
    confirmation_ms = models.BigIntegerField(default=0)
    confirmation_timed = models.BigIntegerField(default=0)
    forwarding_ms = models.BigIntegerField(default=0)
    forwarding_timed = models.BigIntegerField(default=0)
    pacs_retries = models.BigIntegerField(default=0)
    manual_retries = models.BigIntegerField(default=0)
    uploads_retried = models.BigIntegerField(default=0)
    telemetry_uploads = models.BigIntegerField(default=0)
    network_bytes = models.BigIntegerField(default=0)
    network_ms = models.BigIntegerField(default=0)
    outages = models.BigIntegerField(default=0)
    outage_ms = models.BigIntegerField(default=0)
    retried_chunks = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            # One row per bucket; "no facility" is one bucket too (NULLs are not equal).
            models.UniqueConstraint(
                "grain",
                "day",
                Coalesce("facility", Value(0)),
                "modality",
                "service_level",
                "outcome",
                name="analytics_rollup_one_per_bucket",
            )
        ]
        indexes = [
            models.Index(fields=["grain", "facility", "day"], name="analytics_rollup_fac_day"),
        ]

    def __str__(self) -> str:
        # Shown by the admin (e.g. what deleting a facility deletes): a sentence.
        uploads = "1 upload" if self.uploads == 1 else f"{self.uploads} uploads"
        what = ", ".join(
            part
            for part in (self.modality or "", self.service_level, self.get_outcome_display())
            if part
        )
        when = f"in {self.day:%B %Y}" if self.grain == Grain.MONTH else f"on {self.day}"
        return f"Statistics of {uploads} {when} ({what})."


class UploadTimeline(models.Model):
    """What the domain events told about one upload, and what it adds to the rollups now.

    Keyed by the upload's id without a foreign key: the statistics of an upload outlive
    the upload (an administrator may delete it). Holds no patient data.
    """

    upload_id = models.UUIDField(primary_key=True)
    # First time processing was over (needs confirmation or sending), a person was asked
    # to confirm, and sending to the PACS began.
    checked_at = models.DateTimeField(null=True, blank=True)
    confirmation_asked_at = models.DateTimeField(null=True, blank=True)
    forwarding_at = models.DateTimeField(null=True, blank=True)
    # Waits for the PACS (each a later automatic retry), told apart by their retry time so
    # that an event delivered twice counts once.
    pacs_waits = models.IntegerField(default=0)
    last_wait_key = models.CharField(max_length=40, blank=True)
    # Retries pressed by a person after a failure, told apart by the failure's time.
    manual_retries = models.IntegerField(default=0)
    last_failure_key = models.CharField(max_length=40, blank=True)
    retried_failure_key = models.CharField(max_length=40, blank=True)
    # The PWA's latest report of the network (totals for the upload: a report replaces
    # the previous one, so sending it twice is harmless).
    telemetry_at = models.DateTimeField(null=True, blank=True)
    network_bytes = models.BigIntegerField(default=0)
    network_ms = models.BigIntegerField(default=0)
    outages = models.BigIntegerField(default=0)
    outage_ms = models.BigIntegerField(default=0)
    retried_chunks = models.BigIntegerField(default=0)
    # The bucket and values this upload added to the rollups ({"key": [...], "values":
    # {...}}), or null before it was counted.
    counted = models.JSONField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"timeline of {self.upload_id}"
