from typing import Any

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest

from .clientinfo import client_info
from .models import AuditEvent, AuthSession, Facility, User
from .services.admin import user_admin_changed, user_security_snapshot, user_unlock
from .services.twofactor import twofactor_reset


def _by(request: HttpRequest) -> User | None:
    return request.user if isinstance(request.user, User) else None


@admin.register(Facility)
class FacilityAdmin(admin.ModelAdmin):
    list_display = ["name", "code", "issuer_of_patient_id"]
    search_fields = ["name", "code"]


@admin.register(User)
class RelayUserAdmin(UserAdmin):
    list_display = ["username", "email", "role", "facility", "is_active", "email_verified"]
    list_filter = ["role", "facility", "is_active", "email_verified"]
    list_select_related = ["facility"]
    fieldsets = (
        *(UserAdmin.fieldsets or ()),
        ("RelayPACS", {"fields": ("full_name", "role", "facility", "email_verified")}),
    )
    add_fieldsets = (
        *UserAdmin.add_fieldsets,
        ("RelayPACS", {"fields": ("role", "facility")}),
    )
    actions = ["unlock_sign_in", "reset_two_factor", "mark_email_verified"]

    def save_model(self, request: HttpRequest, obj: User, form: Any, change: bool) -> None:
        before = user_security_snapshot(user_id=obj.pk)
        super().save_model(request, obj, form, change)
        user_admin_changed(user=obj, before=before, by=_by(request), client=client_info(request))

    @admin.action(description="Unlock sign-in after too many failed attempts")
    def unlock_sign_in(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        for user in queryset:
            user_unlock(user=user, by=_by(request), client=client_info(request))
        self.message_user(request, f"Unlocked {queryset.count()} account(s).", messages.SUCCESS)

    @admin.action(description="Turn off two-step sign-in (lost phone and backup codes)")
    def reset_two_factor(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        for user in queryset:
            twofactor_reset(user=user, by=_by(request), client=client_info(request))
        self.message_user(request, "Two-step sign-in turned off.", messages.SUCCESS)

    @admin.action(description="Mark email address as verified")
    def mark_email_verified(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        for user in queryset.filter(email_verified=False):
            before = user_security_snapshot(user_id=user.pk)
            user.email_verified = True
            user.save(update_fields=["email_verified"])
            user_admin_changed(
                user=user, before=before, by=_by(request), client=client_info(request)
            )
        self.message_user(request, "Email addresses marked verified.", messages.SUCCESS)


@admin.register(AuthSession)
class AuthSessionAdmin(admin.ModelAdmin):
    list_display = ["user", "user_agent", "ip_address", "created_at", "last_seen_at", "revoked_at"]
    list_filter = ["revoked_reason"]
    list_select_related = ["user"]
    search_fields = ["user__username"]
    readonly_fields = [f.name for f in AuthSession._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Read-only: the audit trail is append-only."""

    list_display = ["occurred_at", "action", "event_id", "outcome", "username", "ip_address"]
    list_filter = ["action", "outcome", "facility"]
    search_fields = ["username", "object_id"]
    date_hierarchy = "occurred_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
