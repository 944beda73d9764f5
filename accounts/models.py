from __future__ import annotations

from typing import Any, ClassVar

from django.contrib.auth.models import AbstractUser, UserManager
from django.db import models


class Facility(models.Model):
    """A clinic or hospital site that users belong to."""

    name = models.CharField(max_length=200)
    code = models.SlugField(max_length=50, unique=True)
    issuer_of_patient_id = models.CharField(
        max_length=64,
        blank=True,
        help_text="DICOM Issuer of Patient ID (0010,0021) used for this facility's patients.",
    )

    class Meta:
        verbose_name_plural = "facilities"
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.code})"


class Role(models.TextChoices):
    CLINICIAN = "clinician", "Clinician"
    RADIOGRAPHER = "radiographer", "Radiographer"
    RADIOLOGIST = "radiologist", "Radiologist"
    ADMIN = "admin", "Administrator"
    AUDITOR = "auditor", "Auditor"


class RelayUserManager(UserManager["User"]):
    def create_superuser(
        self, username: str, email: str | None = None, password: str | None = None, **extra: Any
    ) -> User:
        extra.setdefault("role", Role.ADMIN)
        extra.setdefault("email_verified", True)
        return super().create_superuser(username, email, password, **extra)


class User(AbstractUser):
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.CLINICIAN)
    facility = models.ForeignKey(
        Facility, null=True, blank=True, on_delete=models.PROTECT, related_name="users"
    )
    # Accounts made by an administrator (admin site, createsuperuser) are verified;
    # self-registration sets this to False until the email link is followed.
    email_verified = models.BooleanField(default=True)

    objects: ClassVar[RelayUserManager] = RelayUserManager()  # type: ignore[assignment]

    def __str__(self) -> str:
        return self.username
