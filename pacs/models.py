from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models

# DICOM UIDs are at most 64 characters; the columns allow more so that a non-conformant
# UID the PACS accepted can still be recorded instead of failing after delivery.
UID_MAX_LENGTH = 128


class PacsDestination(models.Model):
    """An extra PACS managed in the admin, tried after the one configured by environment.

    Credentials are stored as entered: the database must be protected like the settings.
    """

    name = models.CharField(max_length=100, unique=True)
    dicomweb_url = models.URLField(
        "DICOMweb URL",
        max_length=500,
        blank=True,
        help_text="Base URL of the DICOMweb service, e.g. https://pacs.example.org/dicom-web",
    )
    orthanc_url = models.URLField(
        "Orthanc REST URL",
        max_length=500,
        blank=True,
        help_text=(
            "For Orthanc only: checks faster that images arrived, and sends them when "
            "DICOMweb is not available."
        ),
    )
    username = models.CharField(max_length=200, blank=True)
    password = models.CharField(max_length=500, blank=True)
    token = models.CharField(
        "bearer token", max_length=4000, blank=True, help_text="Instead of username/password."
    )
    ca_bundle = models.CharField(
        "CA bundle path", max_length=500, blank=True, help_text="Empty: system CAs."
    )
    client_cert = models.CharField("client certificate path", max_length=500, blank=True)
    client_key = models.CharField("client key path", max_length=500, blank=True)
    timeout_seconds = models.FloatField(default=120)
    priority = models.IntegerField(default=100, help_text="Lower is tried first.")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["priority", "pk"]
        verbose_name = "PACS destination"

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if not self.dicomweb_url and not self.orthanc_url:
            errors["dicomweb_url"] = "Enter a DICOMweb URL, an Orthanc REST URL, or both."
        if self.token and (self.username or self.password):
            errors["token"] = "Use a bearer token or a username and password, not both."  # noqa: S105
        if self.client_key and not self.client_cert:
            errors["client_cert"] = "A client key needs its client certificate."
        if self.timeout_seconds is not None and self.timeout_seconds <= 0:
            errors["timeout_seconds"] = "The timeout must be more than zero seconds."
        if errors:
            raise ValidationError(errors)


class DeliveredInstance(models.Model):
    """Receipt: this SOP instance was acknowledged by the PACS known by ``target_key``.

    One row per (target, instance); a re-delivery moves ``delivered_at`` forward.
    """

    target_key = models.CharField(max_length=120)
    sop_instance_uid = models.CharField(max_length=UID_MAX_LENGTH)
    study_instance_uid = models.CharField(max_length=UID_MAX_LENGTH)
    delivered_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["target_key", "sop_instance_uid"],
                name="pacs_delivered_target_sop_unique",
            )
        ]

    def __str__(self) -> str:
        return f"{self.sop_instance_uid} → {self.target_key}"


class PacsHealthProbe(models.Model):
    """The last health probe of one PACS target, shared by every process.

    The process that moves ``next_probe_at`` forward (a conditional UPDATE) probes; every
    other request meanwhile reads ``state`` and ``detail`` (empty until the first probe
    finished), so a PACS is probed at most once per interval however many callers ask.
    """

    target_key = models.CharField(max_length=120, unique=True)
    state = models.CharField(max_length=16, blank=True)
    detail = models.CharField(max_length=300, blank=True)
    checked_at = models.DateTimeField(null=True, blank=True)
    next_probe_at = models.DateTimeField()

    class Meta:
        verbose_name = "PACS health probe"

    def __str__(self) -> str:
        return f"{self.target_key}: {self.state or 'not checked yet'}"
