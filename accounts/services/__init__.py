"""Writes on accounts. A package: sessions, registration, approval, passwords, 2FA, audit,
profile."""

from .approval import invitation_create, invitation_redeem, user_approve
from .audit import AUDIT_VOCABULARY, audit_export_record, audit_record
from .mail import email_verification_link
from .passwords import password_change, password_reset_confirm, password_reset_request
from .profile import preferences_update, profile_update, user_data_export
from .registration import (
    RegistrationReceipt,
    email_verification_resend,
    email_verify,
    password_check,
    user_register,
)
from .sessions import (
    SignIn,
    auth_session_revoke,
    auth_session_start,
    auth_session_touch,
    auth_sessions_revoke_all,
    session_login,
    session_logout,
    session_refresh,
    sign_in_check,
)
from .twofactor import (
    TwoFactorEnrolment,
    twofactor_backup_codes_left,
    twofactor_confirm,
    twofactor_disable,
    twofactor_enabled,
    twofactor_reset,
    twofactor_setup,
    twofactor_verify,
)

__all__ = [
    "AUDIT_VOCABULARY",
    "RegistrationReceipt",
    "TwoFactorEnrolment",
    "audit_export_record",
    "audit_record",
    "email_verification_link",
    "email_verification_resend",
    "email_verify",
    "invitation_create",
    "invitation_redeem",
    "password_change",
    "password_check",
    "password_reset_confirm",
    "password_reset_request",
    "preferences_update",
    "profile_update",
    "user_data_export",
    "user_approve",
    "user_register",
    "SignIn",
    "auth_session_revoke",
    "auth_session_start",
    "auth_session_touch",
    "auth_sessions_revoke_all",
    "session_login",
    "session_logout",
    "session_refresh",
    "sign_in_check",
    "twofactor_backup_codes_left",
    "twofactor_confirm",
    "twofactor_disable",
    "twofactor_enabled",
    "twofactor_reset",
    "twofactor_setup",
    "twofactor_verify",
]
