from __future__ import annotations

import uuid
from typing import Any, ClassVar, NoReturn

from django.contrib.auth.models import AbstractUser, UserManager
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone


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


class Approval(models.TextChoices):
    """Whether an administrator has let the account send studies.

    Only self-registration without an invitation code makes an account pending; every
    account made by an administrator (admin site, ``createsuperuser``, ``create_user``)
    is approved from the start.
    """

    PENDING = "pending", "Waiting for approval"
    APPROVED = "approved", "Approved"


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
    full_name = models.CharField(max_length=200, blank=True)
    # A new address waits here until the link sent to it is followed; sign-in is unaffected.
    pending_email = models.EmailField(blank=True)
    # Upload preferences of the PWA's settings screen (empty: the server's default).
    default_service_level = models.CharField(max_length=16, blank=True, default="routine")
    default_chunk_size = models.IntegerField(null=True, blank=True)
    duplicate_detection = models.BooleanField(default=True)
    # A pending account signs in and edits its profile but sends no study until an
    # administrator approves it (and sets its facility and role).
    approval = models.CharField(
        max_length=16, choices=Approval.choices, default=Approval.APPROVED, db_index=True
    )
    # A radiologist reads the studies of these facilities; none assigned: every facility.
    reading_facilities = models.ManyToManyField(
        Facility,
        blank=True,
        related_name="readers",
        help_text="For radiologists: the facilities whose studies they read. "
        "Leave empty to read every facility's studies.",
    )

    objects: ClassVar[RelayUserManager] = RelayUserManager()  # type: ignore[assignment]

    def __str__(self) -> str:
        return self.username

    @property
    def is_approved(self) -> bool:
        return self.approval == Approval.APPROVED


class FacilityInvitation(models.Model):
    """A code an administrator hands out: registering with it approves the account at once,
    in ``facility`` and with ``role`` (the registrant's choice when blank).

    Only a SHA-256 digest of the code is stored (the code is random, 80 bits, so a
    digest without a key suffices); the admin shows the code once, when it is made.
    ``uses`` is raised by one conditional UPDATE per registration, so concurrent
    registrations never use a code more than ``max_uses`` times.
    """

    facility = models.ForeignKey(Facility, on_delete=models.CASCADE, related_name="invitations")
    role = models.CharField(
        max_length=20,
        blank=True,
        choices=[(Role.CLINICIAN, "Clinician"), (Role.RADIOGRAPHER, "Radiographer")],
        help_text="The role of accounts registered with this code; blank: their choice.",
    )
    label = models.CharField(
        max_length=200, blank=True, help_text="For whom or what the code was made."
    )
    code_digest = models.CharField(max_length=64, unique=True, editable=False)
    max_uses = models.PositiveIntegerField(
        default=1, help_text="How many registrations the code approves (1: single use)."
    )
    uses = models.PositiveIntegerField(default=0, editable=False)
    expires_at = models.DateTimeField(help_text="The code approves nothing after this time.")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    created_by = models.ForeignKey(
        "User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(max_uses__gte=1), name="invitation_max_uses_positive"
            ),
            models.CheckConstraint(
                condition=models.Q(uses__lte=models.F("max_uses")),
                name="invitation_uses_within_max",
            ),
        ]

    def __str__(self) -> str:
        return f"invitation {self.pk} to {self.facility_id}"

    def clean(self) -> None:
        if self.max_uses is not None and self.max_uses < self.uses:
            raise ValidationError(
                {
                    "max_uses": f"The code has been used {self.uses} times already: allow at "
                    "least that many, or set the expiry to now to withdraw it."
                }
            )


class AuthSession(models.Model):
    """One signed-in device: the family of refresh tokens that rotate from one login.

    Its id travels in every token of the family as the ``sid`` claim; revoking the
    session ends every token of the family at once.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="auth_sessions")
    user_agent = models.CharField(max_length=300, blank=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_reason = models.CharField(max_length=40, blank=True)

    class Meta:
        ordering = ["-last_seen_at"]
        indexes = [models.Index(fields=["user", "revoked_at"])]

    def __str__(self) -> str:
        return f"session {self.id} of user {self.user_id}"


class AuditOutcome(models.TextChoices):
    # DICOM Event Outcome Indicator (PS3.15 A.5.3.1): 0 success, 4 minor failure, 8 serious.
    SUCCESS = "0", "Success"
    MINOR_FAILURE = "4", "Minor failure"
    SERIOUS_FAILURE = "8", "Serious failure"


class AuditEventQuerySet(models.QuerySet["AuditEvent"]):
    def update(self, **kwargs: Any) -> NoReturn:
        raise PermissionError("The audit trail is append-only.")

    def delete(self) -> NoReturn:
        raise PermissionError("The audit trail is append-only.")


class AuditEvent(models.Model):
    """An append-only record of a security event or of access to patient data.

    ``action`` is our stable code; ``event_id`` and ``event_type`` are the DICOM audit
    message vocabulary (PS3.15 A.5, codes of DCM) it maps to. Rows are inserted, never
    updated or deleted through the application (save and delete refuse it).
    """

    occurred_at = models.DateTimeField(default=timezone.now, db_index=True)
    action = models.CharField(max_length=40, db_index=True)
    event_id = models.CharField(max_length=80)
    event_type = models.CharField(max_length=80, blank=True)
    outcome = models.CharField(
        max_length=2, choices=AuditOutcome.choices, default=AuditOutcome.SUCCESS
    )
    # Who acted: kept as text as well, so the trail outlives a deleted account.
    user = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    username = models.CharField(max_length=150, blank=True)
    facility = models.ForeignKey(
        Facility, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=300, blank=True)
    object_type = models.CharField(max_length=40, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    detail = models.JSONField(default=dict, blank=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-occurred_at", "-id"]

    def __str__(self) -> str:
        return f"{self.occurred_at:%Y-%m-%d %H:%M:%S} {self.action} {self.username}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None:
            raise PermissionError("The audit trail is append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise PermissionError("The audit trail is append-only.")
