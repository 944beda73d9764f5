from django.urls import path

from . import apis

urlpatterns = [
    path("login", apis.LoginApi.as_view(), name="auth-login"),
    path("refresh", apis.RefreshApi.as_view(), name="auth-refresh"),
    path("logout", apis.LogoutApi.as_view(), name="auth-logout"),
    path("sessions", apis.SessionsApi.as_view(), name="auth-sessions"),
    path(
        "sessions/revoke-all", apis.SessionsRevokeAllApi.as_view(), name="auth-sessions-revoke-all"
    ),
    path("sessions/<uuid:session_id>", apis.SessionRevokeApi.as_view(), name="auth-session"),
    path("register", apis.RegisterApi.as_view(), name="auth-register"),
    path("verify-email", apis.VerifyEmailApi.as_view(), name="auth-verify-email"),
    path(
        "verify-email/resend", apis.VerifyEmailResendApi.as_view(), name="auth-verify-email-resend"
    ),
    path("password", apis.PasswordChangeApi.as_view(), name="auth-password-change"),
    path("password-reset", apis.PasswordResetApi.as_view(), name="auth-password-reset"),
    path(
        "password-reset/confirm",
        apis.PasswordResetConfirmApi.as_view(),
        name="auth-password-reset-confirm",
    ),
    path("2fa", apis.TwoFactorApi.as_view(), name="auth-2fa"),
    path("2fa/setup", apis.TwoFactorSetupApi.as_view(), name="auth-2fa-setup"),
    path("2fa/confirm", apis.TwoFactorConfirmApi.as_view(), name="auth-2fa-confirm"),
    path("2fa/disable", apis.TwoFactorDisableApi.as_view(), name="auth-2fa-disable"),
    path("audit/events.csv", apis.AuditExportApi.as_view(), name="audit-export"),
    path("audit/events.json", apis.AuditExportJsonApi.as_view(), name="audit-export-json"),
    path("me", apis.MeApi.as_view(), name="me"),
    path("me/preferences", apis.PreferencesApi.as_view(), name="me-preferences"),
    path("me/export", apis.DataExportApi.as_view(), name="me-export"),
]
