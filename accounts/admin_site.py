"""The admin site: an account that turned on two-factor sign-in must give its one-time
code here too (the most powerful accounts sign in here)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.http import HttpRequest
from django_otp import user_has_device
from django_otp.admin import OTPAdminAuthenticationForm, OTPAdminSite


class RelayAdminAuthenticationForm(OTPAdminAuthenticationForm):
    """Asks for the one-time code (TOTP or a backup code) only of accounts with a confirmed
    2FA device; the code is checked as at the API's sign-in (same replay lock, backup codes
    by digest), so no device must be picked."""

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

    def has_permission(self, request: HttpRequest) -> bool:
        user: Any = request.user
        if not (user.is_active and user.is_staff):
            return False
        return bool(user.is_verified()) or not user_has_device(user, confirmed=True)
