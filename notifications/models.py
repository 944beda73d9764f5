"""Each user's event stream, their notifications, and the single-use stream tickets.

Why a counter row per user (``EventCounter``) and not the table's own id: a client resumes
with "everything after N", so an event must never become visible with a number smaller
than one a reader has already seen. A global auto-increment id does not promise that on
PostgreSQL: two producers take ids 41 and 42, 42 commits first, a reader sends 42 and
remembers it, then 41 commits and is never sent. The per-user counter row is locked
(``select_for_update``) by the transaction that appends the event and stays locked until
it commits, so a second producer for the same user waits, takes the next number and
commits after the first: numbers become visible in order, without gaps (a rolled-back
append gives its number back). On SQLite every write transaction is serialised anyway.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class EventCounter(models.Model):
    """The last event number given to a user; the lock that orders their events."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        primary_key=True,
        on_delete=models.CASCADE,
        related_name="+",
    )
    last_seq = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"user {self.user_id}: {self.last_seq}"


class Event(models.Model):
    """One message of a user's stream: an upload or report change, or a notification."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    seq = models.BigIntegerField(help_text="The user's event number: the stream's `id`.")
    type = models.CharField(max_length=64)
    upload_id = models.UUIDField(null=True, blank=True)
    report_id = models.BigIntegerField(null=True, blank=True)
    state = models.CharField(max_length=32, blank=True)
    # The message the stream sends, as JSON (ids, states, a notification): never patient data.
    data = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "seq"], name="notifications_event_user_seq")
        ]

    def __str__(self) -> str:
        return f"{self.type} #{self.seq} for user {self.user_id}"


class NotificationKind(models.TextChoices):
    UPLOAD_COMPLETED = "upload_completed", "Upload complete"
    UPLOAD_FAILED = "upload_failed", "Upload failed"
    UPLOAD_NEEDS_ATTENTION = "upload_needs_attention", "Upload needs attention"
    REPORT_ASSIGNED = "report_assigned", "Report assigned"
    REPORT_READY = "report_ready", "Report ready"
    REPORT_ADDITIONAL_DATA_REQUIRED = "report_additional_data_required", "Additional data required"
    REPORT_ANSWERED = "report_answered", "Question answered"


class Notification(models.Model):
    """What a user reads in the notification centre; linked to its upload or report.

    Titles and bodies never carry a patient's name, ID or birth date: they end up on lock
    screens (Web Push, part 2).
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notifications"
    )
    kind = models.CharField(max_length=40, choices=NotificationKind.choices)
    title = models.CharField(max_length=200)
    body = models.TextField(blank=True)
    upload_id = models.UUIDField(null=True, blank=True)
    report_id = models.BigIntegerField(null=True, blank=True)
    event_seq = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["user", "-created_at"], name="notifications_user_newest"),
            models.Index(
                fields=["user"],
                condition=models.Q(read_at__isnull=True),
                name="notifications_user_unread",
            ),
        ]

    def __str__(self) -> str:
        return self.title


class StreamTicket(models.Model):
    """A single-use, 30-second key for opening the stream from a URL (EventSource cannot
    send headers). Only its SHA-256 is stored; it carries the session and the expiry of
    the access token that asked for it, so the stream it opens ends with them."""

    digest = models.CharField(max_length=64, unique=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    session_id = models.UUIDField(null=True, blank=True)
    access_expires_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)
    used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"ticket of user {self.user_id}"


class PushSubscription(models.Model):
    """One device's Web Push subscription: what ``PushSubscription.toJSON()`` gave the PWA.

    One per signed-in device (the accounts ``AuthSession`` of the access token that posted
    it): signing out deletes it, and so does the session row's deletion (CASCADE). An
    endpoint belongs to one browser profile, so it is kept once: a second sign-in on the
    same browser takes it over (the earlier account's pushes must not reach it).
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    session = models.OneToOneField(
        "accounts.AuthSession", on_delete=models.CASCADE, related_name="+"
    )
    endpoint = models.CharField(max_length=2048, unique=True)
    # The browser's P-256 public key (65 bytes) and auth secret (16 bytes), base64url.
    p256dh = models.CharField(max_length=100)
    auth = models.CharField(max_length=32)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    last_delivered_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"push subscription of user {self.user_id}"
