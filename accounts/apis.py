"""Account API views: validate input, call one service, serialise output."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.http import StreamingHttpResponse
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from relaypacs.errors import ApplicationError
from relaypacs.openapi import error_responses

from . import selectors, services
from .authentication import SessionJWTAuthentication
from .clientinfo import client_info
from .exports import audit_csv_rows, audit_json_rows
from .models import AuditOutcome, User
from .permissions import CanReadAuditTrail


def _user(request: Request) -> User:
    user = request.user
    assert isinstance(user, User)  # noqa: S101 - IsAuthenticated ran first
    return user


def _current_session_id(request: Request) -> uuid.UUID | None:
    sid = request.auth.get("sid") if hasattr(request.auth, "get") else None
    try:
        return uuid.UUID(str(sid)) if sid else None
    except ValueError:
        return None


class PublicApi(APIView):
    """Open without a token (sign-in, registration, email links, password reset)."""

    permission_classes = [AllowAny]
    authentication_classes: list[type] = []


class SignedInApi(APIView):
    """Needs a signed-in user with an access token (not an upload token)."""

    permission_classes = [IsAuthenticated]
    authentication_classes = [SessionJWTAuthentication]


_TokenPair = inline_serializer(
    "TokenPair", {"access": serializers.CharField(), "refresh": serializers.CharField()}
)


class LoginApi(PublicApi):
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "auth_login"

    class LoginInputSerializer(serializers.Serializer):
        username = serializers.CharField(max_length=150)
        password = serializers.CharField(trim_whitespace=False, max_length=1024)
        otp = serializers.CharField(
            required=False,
            allow_blank=True,
            max_length=32,
            help_text="The 6-digit code of the authenticator app, or a backup code, when "
            "two-step sign-in is on.",
        )

    @extend_schema(
        operation_id="auth_login",
        request=LoginInputSerializer,
        description="A wrong username or password, an inactive account and an account whose "
        "email address is not confirmed yet all get the same invalid_credentials answer, so "
        "sign-in does not tell whether a registration made an account. With the right "
        "password, an unconfirmed account is sent its confirmation email again (at most every "
        "15 minutes); the client may offer POST /api/v1/auth/verify-email/resend too.",
        responses={
            200: _TokenPair,
            **error_responses(
                400,
                401,
                429,
                s401="invalid_credentials (wrong username or password, or email not confirmed "
                "yet) / otp_required / invalid_otp / otp_throttled (wait, the code was not "
                "checked).",
                s429="sign_in_locked (too many failed sign-ins from this address) or rate_limited.",
            ),
        },
    )
    def post(self, request: Request) -> Response:
        data = self.LoginInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return Response(
            services.session_login(
                username=data.validated_data["username"],
                password=data.validated_data["password"],
                otp=data.validated_data.get("otp") or None,
                client=client_info(request),
                request=request,
            )
        )


class RefreshApi(PublicApi):
    class RefreshInputSerializer(serializers.Serializer):
        refresh = serializers.CharField()

    @extend_schema(
        operation_id="auth_refresh",
        request=RefreshInputSerializer,
        responses={200: _TokenPair, **error_responses(400, 401)},
    )
    def post(self, request: Request) -> Response:
        data = self.RefreshInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return Response(
            services.session_refresh(
                refresh=data.validated_data["refresh"], client=client_info(request)
            )
        )


class LogoutApi(PublicApi):
    class LogoutInputSerializer(serializers.Serializer):
        refresh = serializers.CharField()

    @extend_schema(
        operation_id="auth_logout",
        request=LogoutInputSerializer,
        responses={204: None, **error_responses(400, 401)},
    )
    def post(self, request: Request) -> Response:
        data = self.LogoutInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.session_logout(refresh=data.validated_data["refresh"], client=client_info(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


class SessionsApi(SignedInApi):
    class SessionsOutputSerializer(serializers.Serializer):
        id = serializers.UUIDField()
        user_agent = serializers.CharField()
        ip_address = serializers.IPAddressField(allow_null=True)
        created_at = serializers.DateTimeField()
        last_seen_at = serializers.DateTimeField()
        current = serializers.BooleanField()

    @extend_schema(
        operation_id="auth_sessions_list",
        summary="The devices signed in to this account",
        responses={200: SessionsOutputSerializer(many=True), **error_responses(401)},
    )
    def get(self, request: Request) -> Response:
        current = _current_session_id(request)
        rows = [
            {
                "id": s.id,
                "user_agent": s.user_agent,
                "ip_address": s.ip_address,
                "created_at": s.created_at,
                "last_seen_at": s.last_seen_at,
                "current": s.id == current,
            }
            for s in selectors.auth_sessions_active(user=_user(request))
        ]
        return Response(self.SessionsOutputSerializer(rows, many=True).data)


class SessionRevokeApi(SignedInApi):
    @extend_schema(
        operation_id="auth_session_revoke",
        summary="Sign one device out",
        responses={204: None, **error_responses(401, 404)},
    )
    def delete(self, request: Request, session_id: uuid.UUID) -> Response:
        session = selectors.auth_sessions_active(user=_user(request)).filter(pk=session_id).first()
        if session is None:
            raise ApplicationError(
                "not_found",
                "This session does not exist or has already ended.",
                "Reload the list of signed-in devices.",
                status_code=404,
            )
        services.auth_session_revoke(session=session, reason="revoked", client=client_info(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


class SessionsRevokeAllApi(SignedInApi):
    class SessionsRevokeAllInputSerializer(serializers.Serializer):
        keep_current = serializers.BooleanField(
            default=False, help_text="Keep this device signed in and end all the others."
        )

    @extend_schema(
        operation_id="auth_sessions_revoke_all",
        summary="Sign out everywhere",
        request=SessionsRevokeAllInputSerializer,
        responses={
            200: inline_serializer("SessionsRevoked", {"revoked": serializers.IntegerField()}),
            **error_responses(400, 401),
        },
    )
    def post(self, request: Request) -> Response:
        data = self.SessionsRevokeAllInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        keep = _current_session_id(request) if data.validated_data["keep_current"] else None
        revoked = services.auth_sessions_revoke_all(
            user=_user(request), client=client_info(request), keep=keep
        )
        return Response({"revoked": revoked})


_Accepted = OpenApiResponse(
    inline_serializer("Accepted", {"detail": serializers.CharField()}),
    description="Accepted; the same answer whether or not an account matches.",
)


class RegisterApi(PublicApi):
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "auth_register"

    class RegisterInputSerializer(serializers.Serializer):
        username = serializers.RegexField(
            r"^[\w.@+-]+\Z", max_length=150, help_text="Letters, digits and @ . + - _ only."
        )
        email = serializers.EmailField(max_length=254)
        password = serializers.CharField(trim_whitespace=False, max_length=1024)
        full_name = serializers.CharField(max_length=200)
        role = serializers.ChoiceField(
            choices=["clinician", "radiographer"], default="clinician", required=False
        )
        invitation_code = serializers.CharField(
            required=False,
            allow_blank=True,
            max_length=64,
            help_text="A facility invitation code from an administrator: the account is "
            "approved at once, in that facility. Without one it waits for approval.",
        )

    class RegisterOutputSerializer(serializers.Serializer):
        username = serializers.CharField()
        email = serializers.EmailField()
        full_name = serializers.CharField()
        role = serializers.CharField()
        email_verified = serializers.BooleanField()
        approval = serializers.ChoiceField(
            choices=["pending", "approved"],
            help_text="pending: an administrator must approve the account before it can send "
            "studies; approved: by the invitation code.",
        )

    @extend_schema(
        operation_id="auth_register",
        summary="Create an account; a confirmation link is emailed",
        request=RegisterInputSerializer,
        description="The answer is the same when the username or the email address is "
        "already taken, so it does not tell who has an account: the address then receives an "
        "email saying what happened (sign in or reset the password; or choose another username). "
        "A self-registered account waits for an administrator's approval before it can send "
        "studies (approval: pending), unless a valid invitation_code approves it at once.",
        responses={
            201: RegisterOutputSerializer,
            **error_responses(
                400,
                429,
                s400="invalid_request / weak_password (problems lists each rule) / role_not_allowed "
                "/ invalid_invitation_code (unknown, expired or used up).",
                s429="rate_limited: too many registrations from this address.",
            ),
        },
    )
    def post(self, request: Request) -> Response:
        data = self.RegisterInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        code = values.pop("invitation_code", "")
        receipt = services.user_register(
            **values, invitation_code=code, client=client_info(request)
        )
        return Response(self.RegisterOutputSerializer(receipt).data, status=status.HTTP_201_CREATED)


_Verified = inline_serializer(
    "EmailVerified",
    {"username": serializers.CharField(), "email_verified": serializers.BooleanField()},
)


class VerifyEmailApi(PublicApi):
    """The link in the confirmation email opens GET; the PWA may POST the token."""

    class VerifyEmailInputSerializer(serializers.Serializer):
        token = serializers.CharField(max_length=1000)

    @extend_schema(
        operation_id="auth_verify_email_link",
        summary="Confirm an email address (the emailed link)",
        parameters=[OpenApiParameter("token", str, required=True)],
        responses={
            200: _Verified,
            **error_responses(
                400,
                409,
                s400="invalid_verification_link.",
                s409="email_taken: another account has confirmed this address meanwhile.",
            ),
        },
    )
    def get(self, request: Request) -> Response:
        return self._verify(request.query_params)

    @extend_schema(
        operation_id="auth_verify_email",
        summary="Confirm an email address",
        request=VerifyEmailInputSerializer,
        responses={
            200: _Verified,
            **error_responses(
                400,
                409,
                s400="invalid_verification_link.",
                s409="email_taken: another account has confirmed this address meanwhile.",
            ),
        },
    )
    def post(self, request: Request) -> Response:
        return self._verify(request.data)

    def _verify(self, payload: Any) -> Response:
        data = self.VerifyEmailInputSerializer(data=payload)
        data.is_valid(raise_exception=True)
        user = services.email_verify(token=data.validated_data["token"])
        return Response({"username": user.username, "email_verified": user.email_verified})


class VerifyEmailResendApi(PublicApi):
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "auth_password_reset"

    class VerifyEmailResendInputSerializer(serializers.Serializer):
        email = serializers.EmailField(max_length=254)

    @extend_schema(
        operation_id="auth_verify_email_resend",
        summary="Send the confirmation email again",
        request=VerifyEmailResendInputSerializer,
        responses={202: _Accepted, **error_responses(400, 429)},
    )
    def post(self, request: Request) -> Response:
        data = self.VerifyEmailResendInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.email_verification_resend(email=data.validated_data["email"])
        return Response(
            {"detail": "If an unconfirmed account uses this address, an email is on its way."},
            status=status.HTTP_202_ACCEPTED,
        )


class PasswordChangeApi(SignedInApi):
    # Guessing the current password here must be as slow as at sign-in.
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "auth_login"

    class PasswordChangeInputSerializer(serializers.Serializer):
        current_password = serializers.CharField(trim_whitespace=False, max_length=1024)
        new_password = serializers.CharField(trim_whitespace=False, max_length=1024)

    @extend_schema(
        operation_id="auth_password_change",
        summary="Change the password; other devices are signed out",
        request=PasswordChangeInputSerializer,
        responses={
            200: inline_serializer("PasswordChanged", {"revoked": serializers.IntegerField()}),
            **error_responses(400, 401, s400="invalid_current_password / weak_password."),
        },
    )
    def post(self, request: Request) -> Response:
        data = self.PasswordChangeInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        revoked = services.password_change(
            user=_user(request),
            current_password=data.validated_data["current_password"],
            new_password=data.validated_data["new_password"],
            current_session=_current_session_id(request),
            client=client_info(request),
        )
        return Response({"revoked": revoked})


class PasswordResetApi(PublicApi):
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "auth_password_reset"

    class PasswordResetInputSerializer(serializers.Serializer):
        email = serializers.EmailField(max_length=254)

    @extend_schema(
        operation_id="auth_password_reset",
        summary="Email a password reset link",
        request=PasswordResetInputSerializer,
        responses={202: _Accepted, **error_responses(400, 429)},
    )
    def post(self, request: Request) -> Response:
        data = self.PasswordResetInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.password_reset_request(
            email=data.validated_data["email"], client=client_info(request)
        )
        return Response(
            {"detail": "If an account uses this address, a reset link is on its way."},
            status=status.HTTP_202_ACCEPTED,
        )


class PasswordResetConfirmApi(PublicApi):
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "auth_password_reset"

    class PasswordResetConfirmInputSerializer(serializers.Serializer):
        uid = serializers.CharField(max_length=64)
        token = serializers.CharField(max_length=128)
        new_password = serializers.CharField(trim_whitespace=False, max_length=1024)

    @extend_schema(
        operation_id="auth_password_reset_confirm",
        summary="Choose a new password with the emailed link",
        request=PasswordResetConfirmInputSerializer,
        responses={
            204: None,
            **error_responses(400, 429, s400="invalid_reset_link / weak_password."),
        },
    )
    def post(self, request: Request) -> Response:
        data = self.PasswordResetConfirmInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        services.password_reset_confirm(**data.validated_data, client=client_info(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


class _OtpInput(serializers.Serializer):
    otp = serializers.CharField(
        max_length=32, help_text="The code your authenticator app shows now (or a backup code)."
    )


class TwoFactorApi(SignedInApi):
    @extend_schema(
        operation_id="auth_2fa_status",
        summary="Whether two-step sign-in is on",
        responses={
            200: inline_serializer(
                "TwoFactorStatus",
                {
                    "enabled": serializers.BooleanField(),
                    "backup_codes_left": serializers.IntegerField(),
                },
            ),
            **error_responses(401),
        },
    )
    def get(self, request: Request) -> Response:
        user = _user(request)
        return Response(
            {
                "enabled": services.twofactor_enabled(user=user),
                "backup_codes_left": services.twofactor_backup_codes_left(user=user),
            }
        )


_REAUTH_ERRORS = "current_password_required / invalid_current_password"


class TwoFactorSetupApi(SignedInApi):
    # Guessing the password here must be as slow as at sign-in.
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "auth_login"

    class TwoFactorSetupInputSerializer(serializers.Serializer):
        password = serializers.CharField(
            required=False,
            allow_blank=True,
            trim_whitespace=False,
            max_length=1024,
            help_text="The account's current password (needed to set up two-step sign-in).",
        )

    @extend_schema(
        operation_id="auth_2fa_setup",
        summary="Start two-step sign-in: scan the QR code with an authenticator app",
        request=TwoFactorSetupInputSerializer,
        responses={
            200: inline_serializer(
                "TwoFactorSetup",
                {"otpauth_uri": serializers.CharField(), "qr_svg": serializers.CharField()},
            ),
            **error_responses(
                400,
                401,
                409,
                429,
                s400=f"invalid_request / {_REAUTH_ERRORS}.",
                s409="twofactor_already_enabled.",
                s429="rate_limited: too many password tries from this address.",
            ),
        },
    )
    def post(self, request: Request) -> Response:
        data = self.TwoFactorSetupInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        enrolment = services.twofactor_setup(
            user=_user(request), password=data.validated_data.get("password") or None
        )
        return Response({"otpauth_uri": enrolment.otpauth_uri, "qr_svg": enrolment.qr_svg})


class TwoFactorConfirmApi(SignedInApi):
    # Guessing codes here must be as slow as at sign-in (django-otp slows each device too).
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "auth_login"

    @extend_schema(
        operation_id="auth_2fa_confirm",
        summary="Turn two-step sign-in on with a first code; returns 10 backup codes, once",
        request=_OtpInput,
        responses={
            200: inline_serializer(
                "TwoFactorBackupCodes",
                {"backup_codes": serializers.ListField(child=serializers.CharField())},
            ),
            **error_responses(
                400,
                401,
                409,
                429,
                s400="invalid_otp / otp_throttled (too many wrong codes: wait, then retry).",
                s409="twofactor_not_started.",
                s429="rate_limited: too many tries from this address.",
            ),
        },
    )
    def post(self, request: Request) -> Response:
        data = _OtpInput(data=request.data)
        data.is_valid(raise_exception=True)
        codes = services.twofactor_confirm(
            user=_user(request), code=data.validated_data["otp"], client=client_info(request)
        )
        return Response({"backup_codes": codes})


class TwoFactorDisableApi(SignedInApi):
    # Guessing codes here must be as slow as at sign-in (django-otp slows each device too).
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "auth_login"

    @extend_schema(
        operation_id="auth_2fa_disable",
        summary="Turn two-step sign-in off (needs a current code)",
        request=_OtpInput,
        responses={
            204: None,
            **error_responses(
                400,
                401,
                429,
                s400="invalid_otp / otp_throttled (too many wrong codes: wait, then retry).",
                s429="rate_limited: too many tries from this address.",
            ),
        },
    )
    def post(self, request: Request) -> Response:
        data = _OtpInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.twofactor_disable(
            user=_user(request), code=data.validated_data["otp"], client=client_info(request)
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class AuditExportApi(SignedInApi):
    permission_classes = [IsAuthenticated, CanReadAuditTrail]

    class AuditExportFilterSerializer(serializers.Serializer):
        date_from = serializers.DateField(required=False, help_text="First day, YYYY-MM-DD (UTC).")
        date_to = serializers.DateField(required=False, help_text="Last day, YYYY-MM-DD (UTC).")
        user = serializers.CharField(required=False, max_length=150, help_text="A username.")
        facility = serializers.CharField(
            required=False, max_length=50, help_text="A facility code."
        )
        action = serializers.ChoiceField(choices=sorted(services.AUDIT_VOCABULARY), required=False)
        outcome = serializers.ChoiceField(
            choices=AuditOutcome.values,
            required=False,
            help_text="DICOM Event Outcome Indicator: 0 success, 4 minor, 8 serious failure.",
        )

    # The streamed rows and the download's type and name (the JSON export overrides them).
    rows = staticmethod(audit_csv_rows)
    content_type = "text/csv; charset=utf-8"
    filename = "relaypacs-audit.csv"
    export_format = "csv"

    @extend_schema(
        operation_id="audit_export_csv",
        summary="Download the audit trail as CSV (auditors and administrators)",
        description="An auditor with a facility gets the events filed under that facility "
        "only; an auditor without one, and an administrator, get every event.",
        parameters=[AuditExportFilterSerializer],
        responses={
            (200, "text/csv"): OpenApiResponse(
                {"type": "string"}, description="One row per event, oldest first, streamed."
            ),
            **error_responses(400, 401, 403, s403="permission_denied: not an auditor or admin."),
        },
    )
    def get(self, request: Request) -> StreamingHttpResponse:
        data = self.AuditExportFilterSerializer(data=request.query_params)
        data.is_valid(raise_exception=True)
        filters = data.validated_data
        since = _day_start(filters.get("date_from"))
        until = _day_start(filters["date_to"] + timedelta(days=1)) if "date_to" in filters else None
        events = selectors.audit_events(
            viewer=_user(request),
            since=since,
            until=until,
            username=filters.get("user"),
            facility_code=filters.get("facility"),
            action=filters.get("action"),
            outcome=filters.get("outcome"),
        )
        recorded = {k: str(v) for k, v in filters.items()}
        if self.export_format != "csv":
            recorded["format"] = self.export_format
        services.audit_export_record(
            user=_user(request), client=client_info(request), filters=recorded
        )
        response = StreamingHttpResponse(self.rows(events=events), content_type=self.content_type)
        response["Content-Disposition"] = f'attachment; filename="{self.filename}"'
        return response


class AuditExportJsonApi(AuditExportApi):
    """The same events as a JSON array (the CSV's columns; ``detail`` an object)."""

    rows = staticmethod(audit_json_rows)
    content_type = "application/json; charset=utf-8"
    filename = "relaypacs-audit.json"
    export_format = "json"

    @extend_schema(
        operation_id="audit_export_json",
        summary="Download the audit trail as JSON (auditors and administrators)",
        description="The events of the CSV export, as a JSON array of objects, streamed.",
        parameters=[AuditExportApi.AuditExportFilterSerializer],
        responses={
            (200, "application/json"): OpenApiResponse(
                {"type": "array", "items": {"type": "object"}},
                description="One object per event, oldest first, streamed.",
            ),
            **error_responses(400, 401, 403, s403="permission_denied: not an auditor or admin."),
        },
    )
    def get(self, request: Request) -> StreamingHttpResponse:
        return super().get(request)


def _day_start(day: date | None) -> datetime | None:
    if day is None:
        return None
    return datetime.combine(day, time.min, tzinfo=UTC)


class MeProfileOutputSerializer(serializers.Serializer):
    username = serializers.CharField(read_only=True)
    role = serializers.CharField(read_only=True)
    facility = serializers.SerializerMethodField()
    email = serializers.EmailField()
    pending_email = serializers.EmailField(
        read_only=True, help_text="A new address waiting for its confirmation link."
    )
    full_name = serializers.CharField()
    email_verified = serializers.BooleanField(read_only=True)
    approval = serializers.ChoiceField(
        choices=["pending", "approved"],
        read_only=True,
        help_text="pending: waiting for an administrator's approval; until then the account "
        "signs in and edits its profile but cannot send studies (upload/init answers 403 "
        "account_pending_approval).",
    )
    twofactor_enabled = serializers.SerializerMethodField()

    def get_facility(self, user: User) -> dict[str, str] | None:
        return {"code": user.facility.code, "name": user.facility.name} if user.facility else None

    def get_twofactor_enabled(self, user: User) -> bool:
        return services.twofactor_enabled(user=user)


class MeApi(SignedInApi):
    throttle_scope = "auth_login"

    class MeInputSerializer(serializers.Serializer):
        email = serializers.EmailField(required=False, max_length=254)
        full_name = serializers.CharField(required=False, max_length=200)
        current_password = serializers.CharField(
            required=False,
            allow_blank=True,
            trim_whitespace=False,
            max_length=1024,
            help_text="The account's current password: needed when the email changes.",
        )

    def get_throttles(self) -> list[Any]:
        # Only the change may test passwords; reading the profile is not limited.
        return [ScopedRateThrottle()] if self.request.method == "PATCH" else []

    @extend_schema(
        operation_id="me_profile",
        summary="Your profile (username and role are read-only)",
        responses={200: MeProfileOutputSerializer, **error_responses(401)},
    )
    def get(self, request: Request) -> Response:
        return Response(MeProfileOutputSerializer(_user(request)).data)

    @extend_schema(
        operation_id="me_profile_update",
        summary="Change your full name or email (a new email needs current_password and is "
        "used once confirmed)",
        description="A new address is shown as pending_email whether or not another account "
        "uses it, so the answer does not tell who has an account: a free address is sent a "
        "confirmation link, a taken one is sent a notice to its owner instead (and can never "
        "be confirmed for this account).",
        request=MeInputSerializer,
        responses={
            200: MeProfileOutputSerializer,
            **error_responses(
                400,
                401,
                429,
                s400=f"invalid_request / {_REAUTH_ERRORS} (a new email needs the password).",
                s429="rate_limited: too many password tries from this address.",
            ),
        },
    )
    def patch(self, request: Request) -> Response:
        data = self.MeInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = services.profile_update(
            user=_user(request),
            full_name=data.validated_data.get("full_name"),
            email=data.validated_data.get("email"),
            current_password=data.validated_data.get("current_password") or None,
            client=client_info(request),
        )
        return Response(MeProfileOutputSerializer(user).data)


class PreferencesSerializer(serializers.Serializer):
    default_service_level = serializers.ChoiceField(
        choices=["routine", "urgent", "emergency", "stat"], required=False
    )
    default_chunk_size = serializers.IntegerField(
        required=False, allow_null=True, help_text="Bytes, 256 KiB to 16 MiB; null: server default."
    )
    duplicate_detection = serializers.BooleanField(required=False)


class PreferencesApi(SignedInApi):
    @extend_schema(
        operation_id="me_preferences",
        summary="Your upload preferences",
        responses={200: PreferencesSerializer, **error_responses(401)},
    )
    def get(self, request: Request) -> Response:
        return Response(PreferencesSerializer(_user(request)).data)

    @extend_schema(
        operation_id="me_preferences_update",
        summary="Change your upload preferences (send only what changes)",
        request=PreferencesSerializer,
        responses={
            200: PreferencesSerializer,
            **error_responses(400, 401, s400="invalid_request / invalid_chunk_size."),
        },
    )
    def patch(self, request: Request) -> Response:
        data = PreferencesSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        user = services.preferences_update(
            user=_user(request),
            default_service_level=values.get("default_service_level"),
            default_chunk_size=values.get("default_chunk_size"),
            duplicate_detection=values.get("duplicate_detection"),
            clear_chunk_size="default_chunk_size" in values
            and values["default_chunk_size"] is None,
        )
        return Response(PreferencesSerializer(user).data)


class DataExportApi(SignedInApi):
    @extend_schema(
        operation_id="me_export",
        summary="Download everything your account holds about you (GDPR), as JSON",
        responses={
            200: inline_serializer(
                "PersonalDataExport",
                {
                    "profile": serializers.DictField(),
                    "preferences": serializers.DictField(),
                    "sessions": serializers.ListField(child=serializers.DictField()),
                    "audit_events": serializers.ListField(child=serializers.DictField()),
                },
            ),
            **error_responses(401),
        },
    )
    def get(self, request: Request) -> Response:
        data = services.user_data_export(user=_user(request), client=client_info(request))
        response = Response(data)
        response["Content-Disposition"] = 'attachment; filename="relaypacs-my-data.json"'
        return response
