"""The admin: users, facilities, invitation codes, sessions (read-only) and the audit
trail (read-only).

Self-registered accounts wait for approval: *Users* filtered by *Approval: Waiting for
approval* lists them, and the action *Approve selected accounts* sets their role and
facility (audited as ``account_approved``).

Every change of a security record made here is audited: accounts (created, rights
changed, password set, deleted) and the 2FA devices and lockout records that django-otp
and django-axes register, which are re-registered below with auditing.
"""

from datetime import timedelta
from typing import Any

from axes.admin import AccessAttemptAdmin, AccessFailureLogAdmin, AccessLogAdmin
from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.contrib.auth.admin import UserAdmin
from django.db.models import Model, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.utils import timezone
from django_otp.plugins.otp_static.admin import StaticDeviceAdmin
from django_otp.plugins.otp_static.models import StaticDevice
from django_otp.plugins.otp_totp.admin import TOTPDeviceAdmin
from django_otp.plugins.otp_totp.models import TOTPDevice

from .clientinfo import client_info
from .models import Approval, AuditEvent, AuthSession, Facility, FacilityInvitation, Role, User
from .selectors import audit_events_visible_to
from .services.admin import (
    admin_record_changed,
    user_admin_changed,
    user_admin_created,
    user_admin_delete,
    user_admin_password_set,
    user_security_snapshot,
    user_unlock,
)
from .services.approval import invitation_create, user_approve
from .services.roles import user_role_access_apply
from .services.twofactor import twofactor_reset

# How long a new invitation code is valid unless the administrator picks another expiry.
INVITATION_DEFAULT_LIFETIME = timedelta(days=7)


def _by(request: HttpRequest) -> User | None:
    return request.user if isinstance(request.user, User) else None


def _is_superuser(request: HttpRequest) -> bool:
    return bool(getattr(request.user, "is_superuser", False))


@admin.register(Facility)
class FacilityAdmin(admin.ModelAdmin):
    list_display = ["name", "code", "issuer_of_patient_id"]
    search_fields = ["name", "code"]


class ApprovalForm(forms.Form):
    """What the *Approve selected accounts* action asks for."""

    role = forms.ChoiceField(choices=Role.choices)
    facility = forms.ModelChoiceField(
        queryset=Facility.objects.all(), required=False, empty_label="(no facility)"
    )


@admin.register(User)
class RelayUserAdmin(UserAdmin):
    """Accounts as a clinic's IT person manages them: the role decides what an account may
    do, including whether it may use this site (services.roles), so no raw permission or
    group lists and no *staff* box; one name field (the full name)."""

    list_display = [
        "username",
        "full_name",
        "role",
        "facility",
        "approval",
        "is_active",
        "email_verified",
        "email",
    ]
    list_filter = ["approval", "role", "facility", "is_active", "email_verified"]
    list_select_related = ["facility"]
    search_fields = ["username", "full_name", "email"]
    filter_horizontal = ("reading_facilities",)
    fieldsets = (
        (None, {"fields": ("username", "password")}),
        ("Person", {"fields": ("full_name", "email", "email_verified", "pending_email")}),
        ("Role and clinic", {"fields": ("role", "facility", "approval", "reading_facilities")}),
        (
            "Access",
            {
                "fields": ("is_active", "admin_site_access", "is_superuser"),
                "description": "Accounts with the role Administrator can use this admin "
                "site; no other role can. Untick Active to stop an account signing in.",
            },
        ),
        ("History", {"fields": ("last_login", "date_joined")}),
    )
    # Approval changes only through the audited action (one conditional update).
    readonly_fields = [
        "approval",
        "pending_email",
        "admin_site_access",
        "last_login",
        "date_joined",
    ]
    add_fieldsets = (
        (
            None,
            {
                "classes": ("wide",),
                "fields": ("username", "usable_password", "password1", "password2"),
            },
        ),
        ("Person", {"fields": ("full_name", "email")}),
        ("Role and clinic", {"fields": ("role", "facility")}),
    )
    actions = ["approve_accounts", "unlock_sign_in", "reset_two_factor", "mark_email_verified"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fields = list(super().get_readonly_fields(request, obj))
        if not _is_superuser(request):
            fields.append("is_superuser")  # only a superuser makes another one
        return fields

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # An administrator who is not a superuser cannot take over a superuser's account
        # (password, role, deactivation).
        if isinstance(obj, User) and obj.is_superuser and not _is_superuser(request):
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if isinstance(obj, User) and obj.is_superuser and not _is_superuser(request):
            return False
        return super().has_delete_permission(request, obj)

    @admin.display(description="Can use this admin site")
    def admin_site_access(self, obj: User) -> str:
        if obj.pk is None:
            return "-"
        if obj.is_superuser:
            return "Yes (superuser: every permission)"
        if obj.is_staff:
            return "Yes (role Administrator)"
        return "No (only the role Administrator can)"

    def save_model(self, request: HttpRequest, obj: User, form: Any, change: bool) -> None:
        before = user_security_snapshot(user_id=obj.pk)
        super().save_model(request, obj, form, change)
        # The new access is part of the one audit event of the change (is_staff in it).
        user_role_access_apply(user=obj, audit=False)
        if change:
            user_admin_changed(
                user=obj, before=before, by=_by(request), client=client_info(request)
            )
        else:
            user_admin_created(user=obj, by=_by(request), client=client_info(request))

    def delete_model(self, request: HttpRequest, obj: User) -> None:
        user_admin_delete(user=obj, by=_by(request), client=client_info(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        for user in queryset.order_by("pk"):
            user_admin_delete(user=user, by=_by(request), client=client_info(request))

    def user_change_password(
        self, request: HttpRequest, id: str, form_url: str = ""
    ) -> HttpResponse:
        """The admin's password form; a password set here is audited and signs the user
        out of every device."""
        response = super().user_change_password(request, id, form_url)
        # Django answers a saved password with a redirect, an invalid form with the form.
        if request.method == "POST" and isinstance(response, HttpResponseRedirect):
            user = User.objects.get(pk=unquote(id))
            user_admin_password_set(user=user, by=_by(request), client=client_info(request))
        return response

    @admin.action(
        description="Approve selected accounts (choose their role and facility)",
        permissions=["change"],
    )
    def approve_accounts(
        self, request: HttpRequest, queryset: QuerySet[User]
    ) -> TemplateResponse | None:
        """A page that asks for the role and facility, then approves each selected account
        that is waiting (each audited); accounts approved already are left as they are."""
        pending = list(queryset.filter(approval=Approval.PENDING).order_by("pk"))
        if not pending:
            self.message_user(
                request, "None of the selected accounts is waiting for approval.", messages.INFO
            )
            return None
        if "apply" in request.POST:
            form = ApprovalForm(request.POST)
            if form.is_valid():
                approved = 0
                for user in pending:
                    if user_approve(
                        user=user,
                        role=form.cleaned_data["role"],
                        facility=form.cleaned_data["facility"],
                        by=_by(request),
                        client=client_info(request),
                    ):
                        approved += 1
                        user_role_access_apply(
                            user=user, by=_by(request), client=client_info(request)
                        )
                self.message_user(
                    request,
                    f"Approved {approved} account(s); they can send studies now.",
                    messages.SUCCESS,
                )
                return None
        else:
            form = ApprovalForm(initial={"role": pending[0].role, "facility": pending[0].facility})
        context = {
            **self.admin_site.each_context(request),
            "title": "Approve accounts",
            "opts": self.model._meta,
            "accounts": pending,
            "form": form,
            "selected": queryset.values_list("pk", flat=True),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/accounts/user/approve_accounts.html", context)

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
    """Read-only: the audit trail is append-only. An auditor sees what the export gives
    them (``audit_events_visible_to``)."""

    list_display = ["occurred_at", "action", "event_id", "outcome", "username", "ip_address"]
    list_filter = ["action", "outcome", "facility"]
    search_fields = ["username", "object_id"]
    date_hierarchy = "occurred_at"

    def get_queryset(self, request: HttpRequest) -> QuerySet[AuditEvent]:
        queryset = super().get_queryset(request)
        user = request.user
        if isinstance(user, User) and not user.is_superuser:
            queryset = queryset & audit_events_visible_to(user=user)
        return queryset

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class AuditedAdmin(admin.ModelAdmin):
    """Audits each add, change and delete made in this admin as ``audit_action``."""

    audit_action = ""

    def audit_detail(self, obj: Any) -> dict[str, Any]:
        return {}

    def _audit(self, request: HttpRequest, obj: Model, change: str, **detail: Any) -> None:
        admin_record_changed(
            action=self.audit_action,
            object_type=obj._meta.model_name or "",
            object_id=str(obj.pk),
            change=change,
            by=_by(request),
            client=client_info(request),
            detail={**self.audit_detail(obj), **detail},
        )

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        fields = sorted(getattr(form, "changed_data", None) or [])
        self._audit(request, obj, "changed" if change else "added", fields=fields)

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        self._audit(request, obj, "deleted")  # before: the row loses its pk
        super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        for obj in queryset.order_by("pk"):
            self._audit(request, obj, "deleted")
        super().delete_queryset(request, queryset)


@admin.register(FacilityInvitation)
class FacilityInvitationAdmin(AuditedAdmin):
    """Invitation codes: the code is shown once, when the invitation is saved first; only
    its digest is kept. To withdraw a code, set its expiry to now or delete it."""

    audit_action = "invitation_changed"
    list_display = ["facility", "role", "label", "uses", "max_uses", "expires_at", "created_by"]
    list_filter = ["facility"]
    list_select_related = ["facility", "created_by"]
    fields = ["facility", "role", "label", "max_uses", "expires_at", "uses", "created_by"]
    readonly_fields = ["uses", "created_by"]

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        return {"expires_at": timezone.now() + INVITATION_DEFAULT_LIFETIME, "max_uses": 1}

    def audit_detail(self, obj: Any) -> dict[str, Any]:
        return {"facility_id": obj.facility_id, "max_uses": obj.max_uses, "uses": obj.uses}

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        code = invitation_create(invitation=obj, by=_by(request), client=client_info(request))
        self.message_user(
            request,
            f"The invitation code is {code} . Copy it now: it is not stored and cannot be "
            "shown again.",
            messages.WARNING,
        )


class AuditedDeviceAdmin(AuditedAdmin):
    audit_action = "twofactor_device_changed"

    def audit_detail(self, obj: Any) -> dict[str, Any]:
        return {"user_id": obj.user_id, "confirmed": obj.confirmed}


class AuditedTOTPDeviceAdmin(AuditedDeviceAdmin, TOTPDeviceAdmin):
    pass


class AuditedStaticDeviceAdmin(AuditedDeviceAdmin, StaticDeviceAdmin):
    # Backup codes are stored as keyed digests (services.twofactor): codes typed into an
    # admin form would never match, so they are only made by enrolment.
    inlines = []


class AuditedLockoutAdmin(AuditedAdmin):
    audit_action = "lockout_records_changed"

    def audit_detail(self, obj: Any) -> dict[str, Any]:
        return {"username": obj.username or "", "ip_address": obj.ip_address or ""}


class AuditedAccessAttemptAdmin(AuditedLockoutAdmin, AccessAttemptAdmin):
    @admin.action(description="Clean up expired attempts")
    def cleanup_expired_attempts(self, request: HttpRequest, queryset: Any) -> None:
        super().cleanup_expired_attempts(request, queryset)
        admin_record_changed(
            action=self.audit_action,
            object_type="accessattempt",
            object_id="",
            change="expired_cleaned",
            by=_by(request),
            client=client_info(request),
        )


class AuditedAccessLogAdmin(AuditedLockoutAdmin, AccessLogAdmin):
    pass


class AuditedAccessFailureLogAdmin(AuditedLockoutAdmin, AccessFailureLogAdmin):
    pass


for _model, _model_admin in (
    (TOTPDevice, AuditedTOTPDeviceAdmin),
    (StaticDevice, AuditedStaticDeviceAdmin),
    (AccessAttempt, AuditedAccessAttemptAdmin),
    (AccessLog, AuditedAccessLogAdmin),
    (AccessFailureLog, AuditedAccessFailureLogAdmin),
):
    # django-axes registers its models only when AXES_ENABLE_ADMIN is on.
    if admin.site.is_registered(_model):
        admin.site.unregister(_model)
        admin.site.register(_model, _model_admin)
