"""The admin site: a site a clinic's IT person can run.

- Its index is grouped by what an administrator looks after (ADMIN_SECTIONS: People,
  Uploads, PACS, Security, Audit, Reports), not by Django app; the sections of the
  libraries (django-axes, django-otp, the token blacklist) are listed under Security.
- An account that turned on two-factor sign-in must give its one-time code here too (the
  most powerful accounts sign in here); nobody picks a device.
- A sign-in here starts an AuthSession like the app's and the staff web's, and the
  session ends with it (revoked, signed out everywhere, idle).
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse
from django_otp import user_has_device
from django_otp.admin import OTPAdminAuthenticationForm, OTPAdminSite

# (section label, title, [(app label, model name, name shown or "" for its own)]), in
# the order shown. Models registered but missing here are listed under "Other" last,
# so nothing registered disappears from the index.
ADMIN_SECTIONS: list[tuple[str, str, list[tuple[str, str, str]]]] = [
    (
        "people",
        "People",
        [
            ("accounts", "user", "Users"),
            ("accounts", "pendingapprovals", ""),  # its name carries the count
            ("accounts", "facility", "Facilities"),
            ("accounts", "facilityinvitation", "Invitation codes"),
        ],
    ),
    (
        "uploads",
        "Uploads",
        [
            ("uploads", "uploadsession", "Uploads"),
            ("uploads", "study", "Studies"),
            ("uploads", "uploadfile", "Files of uploads"),
        ],
    ),
    (
        "pacs",
        "PACS",
        [
            ("pacs", "pacsdestination", "PACS destinations"),
            ("pacs", "pacshealthprobe", "PACS health"),
            ("pacs", "deliveredinstance", "Delivered images"),
        ],
    ),
    (
        "security",
        "Security",
        [
            ("axes", "accessattempt", "Lockouts (failed sign-ins that count)"),
            ("axes", "accessfailurelog", "Failed sign-ins (log)"),
            ("axes", "accesslog", "Sign-ins (log)"),
            ("otp_totp", "totpdevice", "Two-step sign-in: authenticator apps"),
            ("otp_static", "staticdevice", "Two-step sign-in: backup codes"),
            ("accounts", "authsession", "Signed-in devices (sessions)"),
            ("token_blacklist", "outstandingtoken", "Sign-in tokens issued"),
            ("token_blacklist", "blacklistedtoken", "Sign-in tokens revoked"),
            ("auth", "group", "Groups"),
        ],
    ),
    ("audit", "Audit", [("accounts", "auditevent", "Audit trail")]),
    ("reports", "Reports", []),  # every model of the reports app
    (
        "notifications",
        "Notifications",
        [
            ("notifications", "notification", "Notifications"),
            ("notifications", "pushsubscription", "Web Push subscriptions (devices)"),
            ("notifications", "event", "Live stream events (history)"),
        ],
    ),
    (
        "statistics",
        "Statistics",
        [
            ("analytics", "uploadrollup", "Upload statistics (rollups)"),
            ("analytics", "uploadtimeline", "Upload timelines"),
        ],
    ),
]
# Apps whose every model belongs to a section without being listed one by one.
_WHOLE_APPS = {"reports": "reports"}


class RelayAdminAuthenticationForm(OTPAdminAuthenticationForm):
    """Asks for the one-time code (TOTP or a backup code) only of accounts with a confirmed
    2FA device; the code is checked as at the API's sign-in (same replay lock, backup codes
    by digest), so no device is picked (the device picker and the challenge button of
    django-otp's form are removed)."""

    otp_device = None  # type: ignore[assignment]
    otp_challenge = None  # type: ignore[assignment]
    otp_token = forms.CharField(
        required=False,
        label="Two-step sign-in code",
        help_text="Only if your account uses two-step sign-in: the code from your "
        "authenticator app or a backup code.",
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric"}),
    )

    def clean_otp(self, user: Any) -> None:
        if user is None or not user_has_device(user, confirmed=True):
            return
        code = "".join((self.cleaned_data.get("otp_token") or "").split())
        if not code:
            raise forms.ValidationError(
                "This account uses two-factor sign-in: enter the code from your authenticator app.",
                code="token_required",
            )
        # Imported here: this module is loaded with the admin site, before the models.
        from .services.twofactor import twofactor_device_for_code

        device = twofactor_device_for_code(user=user, code=code)
        if device is not None:
            user.otp_device = device
            return
        raise forms.ValidationError(
            "The one-time code is not correct or was already used; enter the current code.",
            code="invalid_token",
        )


class RelayAdminSite(OTPAdminSite):
    login_form = RelayAdminAuthenticationForm
    login_template = "admin/relaypacs_login.html"
    site_header = "RelayPACS administration"
    site_title = "RelayPACS admin"
    index_title = "Manage RelayPACS"

    def login(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        """Django's admin sign-in; a successful one is tied to a new AuthSession (listed
        among the account's signed-in devices, audited as a login), so that "sign out
        everywhere", an administrator's revocation and the idle timeout end it as they end
        the app's sessions (accounts.web.auth_session_guard, on every request)."""
        response = super().login(request, extra_context)
        user: Any = request.user
        if request.method == "POST" and response.status_code == 302 and user.is_authenticated:
            # Imported here: this module is loaded with the admin site, before the models.
            from .web import AUTH_SESSION_KEY, auth_session_link

            if not request.session.get(AUTH_SESSION_KEY):
                auth_session_link(request, user=user)
        return response

    def logout(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        """Signing out of the admin ends its AuthSession too (the device leaves the list of
        signed-in devices); signing out twice is harmless."""
        if request.method == "POST":
            from .web import end_linked_auth_session

            end_linked_auth_session(request)
        return super().logout(request, extra_context)

    def has_permission(self, request: HttpRequest) -> bool:
        user: Any = request.user
        if not (user.is_active and user.is_staff):
            return False
        return bool(user.is_verified()) or not user_has_device(user, confirmed=True)

    def get_app_list(self, request: HttpRequest, app_label: str | None = None) -> list[Any]:
        """The index (and the navigation beside every page) grouped into ADMIN_SECTIONS;
        an app's own page (``app_label``) keeps Django's list of that app."""
        if app_label is not None:
            return super().get_app_list(request, app_label)
        models: dict[tuple[str, str], dict[str, Any]] = {}
        for app in self._build_app_dict(request).values():
            for model in app["models"]:
                models[(app["app_label"], model["object_name"].lower())] = model
        pending = self._pending_approvals(request)
        if pending is not None:
            models[("accounts", "pendingapprovals")] = pending
        sections = []
        for label, title, entries in ADMIN_SECTIONS:
            listed = []
            for app, model_name, shown in entries:
                model = models.pop((app, model_name), None)
                if model is not None:
                    listed.append({**model, "name": shown or model["name"]})
            for key in sorted(key for key in models if _WHOLE_APPS.get(key[0]) == label):
                listed.append(models.pop(key))
            if listed:
                sections.append(_section(label, title, listed))
        if models:
            rest = sorted(models.values(), key=lambda model: str(model["name"]))
            sections.append(_section("other", "Other", rest))
        return sections

    def _pending_approvals(self, request: HttpRequest) -> dict[str, Any] | None:
        """A link to the accounts waiting for approval, with how many there are."""
        user: Any = request.user
        if not user.has_perm("accounts.change_user"):
            return None
        from .models import Approval, User

        try:
            url = reverse("admin:accounts_user_changelist", current_app=self.name)
        except NoReverseMatch:
            return None
        waiting = User.objects.filter(approval=Approval.PENDING).count()
        return {
            "model": None,
            "name": f"Pending approvals ({waiting})",
            "object_name": "PendingApprovals",
            "perms": {"view": True, "change": True},
            "admin_url": f"{url}?approval__exact={Approval.PENDING}",
            "add_url": None,
            "view_only": False,
        }


def _section(label: str, title: str, models: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": title,
        "app_label": label,
        "app_url": "",
        "has_module_perms": True,
        "models": models,
    }
