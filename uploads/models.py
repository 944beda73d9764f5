"""The upload pipeline's state: sessions, their chunks, files and studies."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone


class UploadState(models.TextChoices):
    RECEIVING = "receiving", "Receiving"
    PROCESSING = "processing", "Processing"
    NEEDS_CONFIRMATION = "needs_confirmation", "Needs confirmation"
    FORWARDING = "forwarding", "Sending to PACS"
    WAITING_FOR_PACS = "waiting_for_pacs", "Waiting for PACS"
    COMPLETED = "completed", "Received by PACS"
    CANCELLED = "cancelled", "Cancelled"
    FAILED = "failed", "Failed"


# States in which a worker owns the upload under a lease.
LEASED_STATES = (UploadState.PROCESSING, UploadState.FORWARDING, UploadState.WAITING_FOR_PACS)
FINAL_STATES = (UploadState.COMPLETED, UploadState.CANCELLED, UploadState.FAILED)


class ServiceLevel(models.TextChoices):
    ROUTINE = "routine", "Routine"
    URGENT = "urgent", "Urgent"
    EMERGENCY = "emergency", "Emergency"
    STAT = "stat", "STAT"


class UploadSession(models.Model):
    """One upload: the files of a manifest concatenated into one byte stream.

    No column here is written per chunk: chunks live in their own rows, so concurrent
    chunk writers never contend for this row.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="uploads"
    )
    # The owner's facility when the upload was opened: visibility is scoped by it, so moving
    # a user to another clinic does not move their upload history.
    facility = models.ForeignKey(
        "accounts.Facility",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="uploads",
    )
    state = models.CharField(
        max_length=24, choices=UploadState.choices, default=UploadState.RECEIVING, db_index=True
    )
    total_size = models.BigIntegerField()
    chunk_size = models.IntegerField()
    total_chunks = models.IntegerField()
    metadata = models.JSONField(default=dict, blank=True)
    clinical_notes = models.TextField(blank=True)
    service_level = models.CharField(
        max_length=16, choices=ServiceLevel.choices, default=ServiceLevel.ROUTINE
    )
    allow_partial = models.BooleanField(default=False)
    force_upload = models.BooleanField(default=False)
    duplicate_key = models.CharField(max_length=64, blank=True, db_index=True)

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    received_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)

    # Work ownership: a task claims the upload by setting a lease; beat re-dispatches work
    # whose lease has expired, so a killed worker never strands an upload.
    lease_until = models.DateTimeField(null=True, blank=True, db_index=True)
    lease_owner = models.CharField(max_length=36, blank=True)
    attempts = models.IntegerField(default=0)
    next_retry_at = models.DateTimeField(null=True, blank=True, db_index=True)
    first_pacs_failure_at = models.DateTimeField(null=True, blank=True)
    # While a task hashes this upload's files as they arrive (uploads/services/prehash.py):
    # one such task per upload at a time, so it holds at most one worker slot.
    prehash_until = models.DateTimeField(null=True, blank=True)
    # When a task message for this upload was queued and no worker has claimed it since
    # (a claim clears it): beat does not queue the same work again while one is waiting.
    dispatched_at = models.DateTimeField(null=True, blank=True)
    # Leases that ran out in a row without the work finishing (a worker killed or hung
    # while holding the upload): past a limit the upload is poison and ends failed.
    lease_expiries = models.IntegerField(default=0)

    destination = models.CharField(max_length=200, blank=True)
    receipt = models.JSONField(null=True, blank=True)
    warnings = models.JSONField(default=list, blank=True)
    error = models.JSONField(null=True, blank=True)
    files_deleted = models.BooleanField(default=False)
    # When a chunk was last stored, to the minute (the resume window slides from it): kept
    # on the upload so that no request aggregates over its chunks for the expiry, and
    # written at most once a minute, so that chunks do not all update this row.
    last_chunk_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner", "-created_at"])]

    def __str__(self) -> str:
        return f"upload {self.id} ({self.state})"


class UploadChunk(models.Model):
    """A claimed chunk. The row is inserted (the claim) before a byte is written;
    ``stored`` turns true once the bytes are written (durable on disk with
    ``UPLOAD_FSYNC=chunk``; otherwise flushed and checked when complete takes the upload)."""

    session = models.ForeignKey(UploadSession, on_delete=models.CASCADE, related_name="chunks")
    index = models.IntegerField()
    size = models.IntegerField()
    md5 = models.CharField(max_length=32)
    stored = models.BooleanField(default=False)
    # How many times this chunk arrived (a retry whose first answer was lost adds one):
    # lets tests and support see that acknowledged chunks are not sent again.
    times_received = models.IntegerField(default=1)
    received_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["session", "index"], name="uniq_chunk_per_session")
        ]

    def __str__(self) -> str:
        return f"chunk {self.index} of {self.session_id}"


class UploadChunkCounter(models.Model):
    """The bytes of an upload's stored chunks, added by the request that stores each chunk
    (in the same transaction that marks it stored), so that a chunk's answer reads one row
    instead of summing every chunk row of the upload. A narrow row of its own, so that the
    upload's row is not written by chunks."""

    session = models.OneToOneField(
        UploadSession, on_delete=models.CASCADE, primary_key=True, related_name="chunk_counter"
    )
    bytes_received = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.bytes_received} bytes of {self.session_id}"


class FileKind(models.TextChoices):
    PENDING = "pending", "Not checked yet"
    DICOM = "dicom", "DICOM instance"
    SKIPPED = "skipped", "Skipped"
    REJECTED = "rejected", "Rejected"
    ARCHIVE = "archive", "Archive (unpacked)"
    CONVERTED = "converted", "Converted to DICOM"


class PacsStatus(models.TextChoices):
    PENDING = "pending", "Not sent yet"
    STORED = "stored", "Stored by PACS"
    FAILED = "failed", "Refused by PACS"
    ALREADY_DELIVERED = "already_delivered", "Already delivered"
    NOT_SENT = "not_sent", "Not sent"


class UploadFile(models.Model):
    """One file of the manifest: a byte range of the upload's stream."""

    session = models.ForeignKey(UploadSession, on_delete=models.CASCADE, related_name="files")
    # Files unpacked from an archive, converted from a photo or re-wrapped point to the
    # manifest file they came from and live in the upload's work folder at ``path``;
    # manifest files are byte ranges of the upload stream (``path`` empty).
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="derived"
    )
    path = models.CharField(max_length=2048, blank=True)
    position = models.IntegerField()
    name = models.CharField(max_length=1024)
    size = models.BigIntegerField()
    offset = models.BigIntegerField()
    sha256 = models.CharField(max_length=64, blank=True)
    # The file's SHA-256 as hashed while the rest of the upload was arriving, kept only when
    # it equals ``sha256``, and the fingerprint of the chunk claims it was taken over (or
    # "claimed" while hashing or when no result was kept): see uploads/services/prehash.py.
    prehash_sha256 = models.CharField(max_length=64, blank=True)
    prehash_chunks = models.CharField(max_length=64, blank=True)
    kind = models.CharField(max_length=16, choices=FileKind.choices, default=FileKind.PENDING)
    reason = models.CharField(max_length=500, blank=True)
    sop_class_uid = models.CharField(max_length=64, blank=True)
    sop_instance_uid = models.CharField(max_length=64, blank=True, db_index=True)
    study_instance_uid = models.CharField(max_length=64, blank=True)
    series_instance_uid = models.CharField(max_length=64, blank=True)
    pacs_status = models.CharField(
        max_length=20, choices=PacsStatus.choices, default=PacsStatus.PENDING
    )
    pacs_reason = models.CharField(max_length=500, blank=True)
    # An object RelayPACS made and added to the study (the clinic's note for the reader),
    # not a file the clinic sent: its SOP Instance UID is how the report synchronisation
    # knows it is ours and never a report.
    added_by_relay = models.BooleanField(default=False)

    class Meta:
        ordering = ["position"]
        constraints = [
            models.UniqueConstraint(fields=["session", "position"], name="uniq_file_position")
        ]

    def __str__(self) -> str:
        return f"file {self.position} of {self.session_id}"


class RelayAddedObject(models.Model):
    """A DICOM object RelayPACS made and added to a study in the PACS (the clinic's note for
    the reader), kept apart from the upload that made it.

    The report synchronisation knows the relay's own objects by these SOP Instance UIDs. The
    record outlives its upload (an administrator may delete the upload; the object stays in
    the PACS), so it holds no link to it and no patient data: UIDs and a time only.
    """

    sop_instance_uid = models.CharField(max_length=64, primary_key=True)
    study_instance_uid = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"relay object {self.sop_instance_uid}"


class Study(models.Model):
    """A study found in an upload (one upload can carry several)."""

    session = models.ForeignKey(UploadSession, on_delete=models.CASCADE, related_name="studies")
    study_instance_uid = models.CharField(max_length=64)
    patient_name = models.CharField(max_length=400, blank=True)
    patient_id = models.CharField(max_length=64, blank=True)
    patient_birth_date = models.CharField(max_length=8, blank=True)
    patient_sex = models.CharField(max_length=16, blank=True)
    study_date = models.CharField(max_length=8, blank=True)
    study_description = models.CharField(max_length=400, blank=True)
    accession_number = models.CharField(max_length=64, blank=True)
    modalities = models.JSONField(default=list)
    series = models.JSONField(default=list)
    instances = models.IntegerField(default=0)
    pacs_state = models.CharField(max_length=24, default="pending")

    class Meta:
        ordering = ["id"]
        verbose_name_plural = "studies"
        constraints = [
            models.UniqueConstraint(
                fields=["session", "study_instance_uid"], name="uniq_study_per_session"
            )
        ]

    def __str__(self) -> str:
        return f"study {self.study_instance_uid}"
