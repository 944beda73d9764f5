"""Notifications, the users' event streams and the Web Push subscriptions in the admin site.

- Notifications are what each user reads in the notification centre: shown and filtered,
  never added or edited here; *Mark as read* and *Mark as unread* go through
  ``services.notification_mark`` like the app's, so the user's other devices hear of it,
  and each run of them is one audit event (``notifications_marked``: which notifications
  of which users, read or unread).
- Stream events are history (what each user's live stream sent): read-only.
- A push subscription can be looked at and deleted (revoked: that device gets no more
  pushes until the app subscribes again); deletion goes through
  ``push.push_subscription_delete``, the service the app's "turn off" uses, and is
  audited. The endpoint is a capability URL and the browser's keys are secrets: only
  the push service's host and a few characters are shown.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.contrib import admin, messages
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts.clientinfo import client_info
from accounts.models import User
from accounts.services.admin import admin_record_changed
from accounts.services.audit import AUDIT_VOCABULARY
from relaypacs.admin_base import ViewOnlyAdmin

from .models import Event, Notification, PushSubscription
from .push import push_subscription_delete
from .services import notification_mark

# How much of a secret the admin shows: enough to tell two apart, too little to use.
SECRET_PREFIX_CHARS = 6

# An administrator changed other users' notifications from the admin (DICOM "Use of
# Restricted Function": acting on records that are the users' own). Registered at import:
# the admin's AppConfig (first in INSTALLED_APPS) imports this module in its ready(),
# before any URL module builds the audit trail's list of actions.
AUDIT_VOCABULARY.setdefault(
    "notifications_marked", ("110113 Security Alert", "110132 Use of Restricted Function")
)


def _by(request: HttpRequest) -> User | None:
    return request.user if isinstance(request.user, User) else None


def masked(value: str) -> str:
    """``"BNcRdreALRFX…"`` → ``"BNcRdr… (87 characters)"``: never the whole secret."""
    if not value:
        return "-"
    return f"{value[:SECRET_PREFIX_CHARS]}… ({len(value)} characters)"


def push_service_host(endpoint: str) -> str:
    """The push service an endpoint belongs to (``fcm.googleapis.com``), not its path."""
    return urlsplit(endpoint).hostname or "-"


class ReadFilter(admin.SimpleListFilter):
    title = "read"
    parameter_name = "read"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("no", "Unread"), ("yes", "Read")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "no":
            return queryset.filter(read_at__isnull=True)
        if self.value() == "yes":
            return queryset.filter(read_at__isnull=False)
        return queryset


@admin.register(Notification)
class NotificationAdmin(ViewOnlyAdmin):
    """Titles and bodies never carry patient data (they reach lock screens)."""

    list_display = ["created_at", "kind", "user", "title", "is_read", "upload_id", "report_id"]
    list_filter = ["kind", ReadFilter, "created_at"]
    list_select_related = ["user"]
    search_fields = ["user__username", "=upload_id", "=report_id"]
    show_full_result_count = False
    fields = [
        "user",
        "kind",
        "title",
        "body",
        "upload_id",
        "report_id",
        "event_seq",
        "created_at",
        "read_at",
    ]
    readonly_fields = list(fields)  # type: ignore[arg-type]
    actions = ["mark_read", "mark_unread"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The list's actions need "change"; a notification's own page stays read-only.
        if obj is not None:
            return False
        return super(ViewOnlyAdmin, self).has_change_permission(request, obj)

    @admin.display(boolean=True, description="read", ordering="read_at")
    def is_read(self, obj: Notification) -> bool:
        return obj.read_at is not None

    @transaction.atomic
    def _mark(self, request: HttpRequest, queryset: QuerySet[Notification], *, read: bool) -> int:
        """Mark the selected notifications through the service and record one audit event
        for the run, with the ids of those it changed and of their users; none when nothing
        changed. Returns how many changed. The selected rows are locked first, in
        primary-key order, so that what they read is what this run changes: a notification
        another request marks meanwhile waits for this run, and is not counted in it."""
        changed: list[int] = []
        users: set[int] = set()
        rows = (
            queryset.select_for_update(of=("self",))
            .order_by("pk")
            .values_list("pk", "user_id", "read_at")
        )
        for notification_id, user_id, read_at in rows:
            if (read_at is not None) == read:
                continue
            notification_mark(user_id=user_id, notification_id=notification_id, read=read)
            changed.append(notification_id)
            users.add(user_id)
        if changed:
            admin_record_changed(
                action="notifications_marked",
                object_type="notification",
                object_id="",  # several: their ids are in the detail
                change="changed",
                by=_by(request),
                client=client_info(request),
                detail={
                    "read": read,
                    "count": len(changed),
                    "notification_ids": changed,
                    "user_ids": sorted(users),
                },
            )
        return len(changed)

    @admin.action(
        description="Mark as read (for the user, on every device)", permissions=["change"]
    )
    def mark_read(self, request: HttpRequest, queryset: QuerySet[Notification]) -> None:
        changed = self._mark(request, queryset, read=True)
        self.message_user(request, f"Marked {changed} notification(s) read.", messages.SUCCESS)

    @admin.action(description="Mark as unread", permissions=["change"])
    def mark_unread(self, request: HttpRequest, queryset: QuerySet[Notification]) -> None:
        changed = self._mark(request, queryset, read=False)
        self.message_user(request, f"Marked {changed} notification(s) unread.", messages.SUCCESS)


@admin.register(Event)
class EventAdmin(ViewOnlyAdmin):
    """What each user's live stream sent (ids and states, never patient data): history."""

    list_display = ["created_at", "user", "seq", "type", "state", "upload_id", "report_id"]
    list_filter = ["type", "created_at"]
    list_select_related = ["user"]
    search_fields = ["user__username", "=upload_id", "=report_id"]
    show_full_result_count = False
    fields = ["user", "seq", "type", "state", "upload_id", "report_id", "data", "created_at"]
    readonly_fields = list(fields)  # type: ignore[arg-type]


class SessionStateFilter(admin.SimpleListFilter):
    title = "signed-in device"
    parameter_name = "session"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("active", "Signed in"), ("revoked", "Signed out (revoked)")]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[PushSubscription]
    ) -> QuerySet[PushSubscription]:
        if self.value() == "active":
            return queryset.filter(session__revoked_at__isnull=True)
        if self.value() == "revoked":
            return queryset.filter(session__revoked_at__isnull=False)
        return queryset


@admin.register(PushSubscription)
class PushSubscriptionAdmin(ViewOnlyAdmin):
    """One device's Web Push subscription: view it, or delete it (revoke) through the
    service the app uses; audited as ``push_subscription_revoked``."""

    list_display = [
        "user",
        "push_service",
        "device",
        "created_at",
        "updated_at",
        "last_delivered_at",
    ]
    list_filter = [SessionStateFilter, "last_delivered_at"]
    list_select_related = ["user", "session"]
    search_fields = ["user__username"]
    fields = [
        "user",
        "device",
        "push_service",
        "endpoint_masked",
        "p256dh_masked",
        "auth_masked",
        "created_at",
        "updated_at",
        "last_delivered_at",
    ]
    readonly_fields = list(fields)  # type: ignore[arg-type]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super(ViewOnlyAdmin, self).has_delete_permission(request, obj)

    @admin.display(description="push service")
    def push_service(self, obj: PushSubscription) -> str:
        return push_service_host(obj.endpoint)

    @admin.display(description="device (sign-in session)")
    def device(self, obj: PushSubscription) -> str:
        session = obj.session
        state = "signed out" if session.revoked_at is not None else "signed in"
        return f"{session.user_agent[:80] or 'unknown browser'} ({state})"

    @admin.display(description="endpoint")
    def endpoint_masked(self, obj: PushSubscription) -> str:
        return f"{push_service_host(obj.endpoint)}/{masked(urlsplit(obj.endpoint).path[1:])}"

    @admin.display(description="browser public key (p256dh)")
    def p256dh_masked(self, obj: PushSubscription) -> str:
        return masked(obj.p256dh)

    @admin.display(description="auth secret")
    def auth_masked(self, obj: PushSubscription) -> str:
        return masked(obj.auth)

    def _revoke(self, request: HttpRequest, obj: PushSubscription) -> None:
        if push_subscription_delete(session_id=obj.session_id):
            admin_record_changed(
                action="push_subscription_revoked",
                object_type="pushsubscription",
                object_id=str(obj.pk),
                change="deleted",
                by=_by(request),
                client=client_info(request),
                detail={"user_id": obj.user_id, "session_id": str(obj.session_id)},
            )

    def delete_model(self, request: HttpRequest, obj: PushSubscription) -> None:
        self._revoke(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[PushSubscription]) -> None:
        for subscription in queryset.order_by("pk"):
            self._revoke(request, subscription)
