"""Reports: one per study and facility, its workflow state and its signed versions."""

from __future__ import annotations

from typing import Any, NoReturn

from django.conf import settings
from django.db import models
from django.utils import timezone

from .store import ReportStoreStorage


class ReportStatus(models.TextChoices):
    ASSIGNED = "assigned", "On the worklist"
    PENDING = "pending", "Being read"
    READY = "ready", "Ready"
    ADDITIONAL_DATA_REQUIRED = "additional_data_required", "Question to the sender"
    AMENDED = "amended", "Amended"
    CANCELLED = "cancelled", "Cancelled"


# Reports still waiting for a final result.
OPEN_STATUSES = (
    ReportStatus.ASSIGNED,
    ReportStatus.PENDING,
    ReportStatus.ADDITIONAL_DATA_REQUIRED,
)
# Reports that have a current signed version with its PDF.
FINAL_STATUSES = (ReportStatus.READY, ReportStatus.AMENDED)


class ReportSource(models.TextChoices):
    RELAY = "relay", "Written in RelayPACS"
    PACS_SR = "pacs_sr", "Structured report from the PACS"
    PACS_PDF = "pacs_pdf", "PDF from the PACS"
    HL7 = "hl7", "HL7"
    FHIR = "fhir", "FHIR"


def letterhead_storage() -> ReportStoreStorage:
    """Logos live in the report store (``letterheads/`` of REPORT_STORAGE_DIR, or of the
    bucket's ``reports/`` prefix in S3 mode), so a letterhead is backed up with the reports
    and every node reads it. The store picks its backend at each call.

    A callable, so that migrations refer to it rather than to this machine's storage."""
    return ReportStoreStorage(location="letterheads")


class Letterhead(models.Model):
    """What a facility's report PDFs carry at the top: its name, address and logo."""

    facility = models.OneToOneField(
        "accounts.Facility", on_delete=models.CASCADE, related_name="letterhead"
    )
    address = models.TextField(blank=True, help_text="Printed under the facility's name.")
    logo = models.ImageField(
        storage=letterhead_storage,
        upload_to="logos/",
        blank=True,
        help_text="A PNG or JPEG, printed at the top left of every report.",
    )

    def __str__(self) -> str:
        return f"letterhead of facility {self.facility_id}"


class Report(models.Model):
    """The report of one study (Study Instance UID) for one facility.

    ``status`` is written only by reports.services.transitions. ``signing`` is true while a
    signed version waits for its PDF; the report turns ``ready`` (or ``amended``) only
    once that PDF is stored.
    """

    facility = models.ForeignKey(
        "accounts.Facility",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="reports",
    )
    study_instance_uid = models.CharField(max_length=128, db_index=True)
    uploads = models.ManyToManyField("uploads.UploadSession", related_name="reports", blank=True)
    sender = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="sent_reports",
    )
    service_level = models.CharField(max_length=16, default="routine", db_index=True)
    status = models.CharField(
        max_length=32,
        choices=ReportStatus.choices,
        default=ReportStatus.ASSIGNED,
        db_index=True,
    )
    source = models.CharField(
        max_length=16, choices=ReportSource.choices, default=ReportSource.RELAY
    )
    assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="assigned_reports",
        help_text="Empty: the report is in the reading pool.",
    )
    # The study, as the upload described it (the PDF's patient and study block).
    patient_name = models.CharField(max_length=400, blank=True)
    patient_id = models.CharField(max_length=64, blank=True)
    patient_birth_date = models.CharField(max_length=8, blank=True)
    patient_sex = models.CharField(max_length=16, blank=True)
    study_date = models.CharField(max_length=8, blank=True)
    study_description = models.CharField(max_length=400, blank=True)
    accession_number = models.CharField(max_length=64, blank=True)
    # DICOM modalities of the study, backslash-separated and sorted ("CT\\SR").
    modality = models.CharField(max_length=64, blank=True, db_index=True)
    clinical_notes = models.TextField(blank=True)

    findings = models.TextField(blank=True)
    impression = models.TextField(blank=True)
    question = models.TextField(blank=True, help_text="The radiologist's question to the sender.")
    answer = models.TextField(blank=True, help_text="The sender's answer to the question.")
    signed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="signed_reports",
    )
    signed_at = models.DateTimeField(null=True, blank=True)
    signing = models.BooleanField(default=False)

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(default=timezone.now)
    # When the PACS was last asked about this report's study.
    synced_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["study_instance_uid", "facility"],
                condition=models.Q(facility__isnull=False),
                name="report_one_per_study_and_facility",
            ),
            models.UniqueConstraint(
                fields=["study_instance_uid"],
                condition=models.Q(facility__isnull=True),
                name="report_one_per_study_without_facility",
            ),
        ]
        indexes = [models.Index(fields=["status", "-created_at"])]

    def __str__(self) -> str:
        return f"report {self.pk} ({self.status})"


class ReportVersionQuerySet(models.QuerySet["ReportVersion"]):
    def delete(self) -> tuple[int, dict[str, int]]:
        raise PermissionError("Signed report versions are kept.")


class ReportVersion(models.Model):
    """One signed version: its text and PDF never change once written.

    The PDF is written once (``pdf_path`` from empty to set, by reports.services.pdf);
    ``superseded`` turns true when a later version's PDF is stored. ``pdf_path`` is
    its name in the report store (reports.store). ``render_dispatched_at`` and
    ``render_attempts`` are bookkeeping of its render task (reports.services.sync.reports_pdf_redispatch), not
    part of the signed version.
    """

    report = models.ForeignKey(Report, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    source = models.CharField(max_length=16, choices=ReportSource.choices)
    findings = models.TextField(blank=True)
    impression = models.TextField(blank=True)
    signed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    # Kept as text so the PDF and the trail outlive a deleted account (and name a PACS signer).
    signed_by_name = models.CharField(max_length=200, blank=True)
    signed_at = models.DateTimeField()
    # The PACS object this version came from (empty for reports written on our pages).
    sop_instance_uid = models.CharField(max_length=128, blank=True)
    pdf_path = models.CharField(max_length=500, blank=True)
    pdf_sha256 = models.CharField(max_length=64, blank=True)
    pdf_size = models.BigIntegerField(default=0)
    pdf_stored_at = models.DateTimeField(null=True, blank=True)
    superseded = models.BooleanField(default=False)
    # When its render task was last queued, and how many times it was.
    render_dispatched_at = models.DateTimeField(null=True, blank=True)
    render_attempts = models.PositiveSmallIntegerField(default=0)

    objects = ReportVersionQuerySet.as_manager()

    class Meta:
        ordering = ["report", "number"]
        constraints = [
            models.UniqueConstraint(fields=["report", "number"], name="report_version_unique")
        ]

    def __str__(self) -> str:
        return f"version {self.number} of report {self.report_id}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None:
            raise PermissionError("A signed report version never changes.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise PermissionError("Signed report versions are kept.")


class PacsReportObject(models.Model):
    """A report object of the PACS (SR or encapsulated PDF) the synchronisation has taken in,
    so that each is read once."""

    report = models.ForeignKey(Report, on_delete=models.CASCADE, related_name="pacs_objects")
    sop_instance_uid = models.CharField(max_length=128)
    sop_class_uid = models.CharField(max_length=128)
    target_key = models.CharField(max_length=120)
    outcome = models.CharField(max_length=32)
    seen_at = models.DateTimeField(default=timezone.now)
    # Cycles in a row whose taking in of this object failed (outcome "failing" while it is
    # tried again, "gave_up" once sync.APPLY_GIVE_UP_AFTER has passed since the first
    # failure, ``seen_at``, with at least sync.APPLY_MAX_ATTEMPTS failures).
    failures = models.PositiveSmallIntegerField(default=0)
    # A failing object is not tried before this time (growing intervals, sync.retry_delay).
    next_attempt_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["report", "sop_instance_uid"], name="report_pacs_object_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.sop_class_uid} of report {self.report_id}"
