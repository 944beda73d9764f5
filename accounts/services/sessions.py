"""Sign-in, token rotation and sessions.

A session is one signed-in device: the family of refresh tokens that rotate from one
login, sharing the ``sid`` claim. Access tokens carry the same ``sid``, so revoking the
session ends the family's access tokens as well (see accounts.authentication).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import authenticate, user_logged_in, user_login_failed
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone
from django_otp.models import Device
from rest_framework_simplejwt.exceptions import TokenBackendError, TokenError
from rest_framework_simplejwt.settings import api_settings
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken
from rest_framework_simplejwt.tokens import RefreshToken

from relaypacs import events
from relaypacs.errors import ApplicationError

from ..clientinfo import ClientInfo
from ..models import AuditOutcome, AuthSession, User
from .audit import audit_record
from .mail import verification_email_queue
from .twofactor import otp_throttled_error, twofactor_code_check, twofactor_enabled

# last_seen_at is written at most this often per session, not on every API call.
TOUCH_INTERVAL = timedelta(minutes=1)
# A sign-in with the right password to an account whose address is not confirmed sends the
# confirmation email again, at most this often per account: often enough that a person
# who lost the first email gets one while trying, rarely enough that sign-in attempts
# cannot flood the address (the counter lives in the shared cache).
VERIFICATION_RESEND_INTERVAL = timedelta(minutes=15)


def _invalid_refresh() -> ApplicationError:
    return ApplicationError(
        "invalid_refresh_token",
        "Your session has ended or the sign-in token is not valid.",
        "Sign in again with your username and password.",
        status_code=401,
    )


def _invalid_credentials() -> ApplicationError:
    return ApplicationError(
        "invalid_credentials",
        "The username or password is not correct, or the account's email address is not "
        "confirmed yet.",
        "Check both and try again. A new account signs in once the link in its confirmation "
        "email is opened; you can ask for that email again. If you forgot your password, use "
        "'Forgot your password?'.",
        status_code=401,
    )


def _tokens_for(*, session: AuthSession) -> dict[str, str]:
    refresh = RefreshToken.for_user(session.user)
    refresh["sid"] = str(session.id)
    return {"access": str(refresh.access_token), "refresh": str(refresh)}


def _login_failed(
    *, username: str, user: User | None, reason: str, client: ClientInfo, request: Any = None
) -> None:
    """Audit a failed sign-in; with ``request``, also count it for django-axes' lockout."""
    if request is not None:
        user_login_failed.send(sender=__name__, credentials={"username": username}, request=request)
    audit_record(
        action="login_failed",
        user=user,
        username=username,
        outcome=AuditOutcome.MINOR_FAILURE,
        ip_address=client.ip_address,
        user_agent=client.user_agent,
        detail={"reason": reason},
    )


@dataclass(frozen=True)
class SignIn:
    """Who passed the sign-in checks, and the two-step device that accepted their code
    (None for an account without two-step sign-in)."""

    user: User
    device: Device | None


def session_login(
    *, username: str, password: str, otp: str | None, client: ClientInfo, request: Any
) -> dict[str, str]:
    """Check the credentials (and the 2FA code when enrolled, ``sign_in_check``); start a
    session (``auth_session_start``). Returns ``{access, refresh}``; raises what
    ``sign_in_check`` raises."""
    signed_in = sign_in_check(
        username=username, password=password, otp=otp, client=client, request=request
    )
    user_logged_in.send(sender=User, request=request, user=signed_in.user)
    session = auth_session_start(user=signed_in.user, client=client)
    return _tokens_for(session=session)


def sign_in_check(
    *, username: str, password: str, otp: str | None, client: ClientInfo, request: Any
) -> SignIn:
    """Check the credentials (and the 2FA code when enrolled) of a sign-in: the API's and
    the staff web pages' (accounts.web) alike. Starts nothing: the caller starts its kind of
    session (and sends ``user_logged_in``, which resets django-axes' count).

    Raises ApplicationError: ``sign_in_locked`` (429) after
    too many consecutive failures from this address; ``invalid_credentials`` (401) for a
    wrong username or password, an inactive account, or an account whose email address is
    not confirmed yet, all with the same body, so an attacker who registered a username
    or address cannot tell from sign-in whether the registration made an account; for the
    unconfirmed account with the right password the confirmation email is sent again
    (at most once per VERIFICATION_RESEND_INTERVAL, by the Celery mail task after commit);
    ``otp_required`` (401) when 2FA is on and no code came, ``invalid_otp`` (401) for a
    wrong or replayed code, ``otp_throttled`` (401) while django-otp makes the user wait
    after wrong codes (the code is not checked). Every failure counts for django-axes,
    which gets ``request`` and counts failures per username and address.
    """
    user = authenticate(request=request, username=username, password=password)
    if getattr(request, "axes_locked_out", False):
        # The lockout itself is audited once, where django-axes signals it (accounts.signals);
        # an attempt refused while locked is a failed sign-in.
        if getattr(request, "axes_failures_since_start", 0) > settings.AXES_FAILURE_LIMIT:
            _login_failed(username=username, user=None, reason="sign_in_locked", client=client)
        raise ApplicationError(
            "sign_in_locked",
            "Signing in to this account from this device is locked after too many failed attempts.",
            f"Wait {int(settings.AXES_COOLOFF_TIME.total_seconds() // 60)} minutes and try "
            "again, or ask your RelayPACS administrator to unlock it.",
            status_code=429,
        )
    if not isinstance(user, User):
        # django-axes counted this failure itself (authenticate() signalled it).
        _login_failed(username=username, user=None, reason="invalid_credentials", client=client)
        raise _invalid_credentials()
    if not user.email_verified:
        # Answered exactly as a wrong password (and counted as one by django-axes).
        _login_failed(
            username=username,
            user=user,
            reason="email_not_verified",
            client=client,
            request=request,
        )
        _verification_email_resend_limited(user=user)
        raise _invalid_credentials()
    if twofactor_enabled(user=user):
        if not otp:
            raise ApplicationError(
                "otp_required",
                "This account uses two-step sign-in: a code from your authenticator app is needed.",
                "Send the 6-digit code from your authenticator app (or a backup code) as 'otp'.",
                status_code=401,
            )
        check = twofactor_code_check(user=user, code=otp)
        if check.device is None:
            # Counts as a failed sign-in, so codes cannot be guessed without a lockout.
            _login_failed(
                username=username,
                user=user,
                reason="otp_throttled" if check.locked_until else "invalid_otp",
                client=client,
                request=request,
            )
            if check.locked_until is not None:
                raise otp_throttled_error(locked_until=check.locked_until, status_code=401)
            raise ApplicationError(
                "invalid_otp",
                "The two-step sign-in code is not correct or was already used.",
                "Wait for the next code in your authenticator app and try again.",
                status_code=401,
            )
        return SignIn(user=user, device=check.device)
    return SignIn(user=user, device=None)


def auth_session_start(*, user: User, client: ClientInfo) -> AuthSession:
    """A new signed-in device of ``user`` (after ``sign_in_check``), audited as a login."""
    session = AuthSession.objects.create(
        user=user, ip_address=client.ip_address, user_agent=client.user_agent
    )
    audit_record(
        action="login",
        user=user,
        ip_address=client.ip_address,
        user_agent=client.user_agent,
        object_type="session",
        object_id=str(session.id),
    )
    return session


def _verification_email_resend_limited(*, user: User) -> None:
    """Queue the confirmation email again unless one was queued for this account within
    VERIFICATION_RESEND_INTERVAL (``cache.add`` is atomic, so parallel sign-ins queue one)."""
    key = f"accounts:sign-in-verification-resend:{user.pk}"
    if cache.add(key, 1, timeout=int(VERIFICATION_RESEND_INTERVAL.total_seconds())):
        verification_email_queue(user=user)


def _decode_refresh(refresh: str) -> dict[str, Any]:
    """The payload of a genuine, unexpired refresh token (blacklisted or not)."""
    from rest_framework_simplejwt.state import token_backend

    try:
        payload = token_backend.decode(refresh, verify=True)  # type: ignore[arg-type]
    except (TokenBackendError, TokenError) as exc:
        raise _invalid_refresh() from exc
    if payload.get(api_settings.TOKEN_TYPE_CLAIM) != "refresh" or not payload.get("sid"):
        raise _invalid_refresh()
    return payload


def _session_of(payload: dict[str, Any]) -> AuthSession | None:
    try:
        sid = uuid.UUID(str(payload["sid"]))
    except ValueError:
        return None
    user_id = payload.get(api_settings.USER_ID_CLAIM)
    if not isinstance(user_id, int | str):
        return None
    return AuthSession.objects.select_related("user").filter(pk=sid, user_id=user_id).first()


def _is_idle(session: AuthSession) -> bool:
    return session.last_seen_at < timezone.now() - settings.AUTH_SESSION_IDLE_TIMEOUT


def session_refresh(*, refresh: str, client: ClientInfo) -> dict[str, str]:
    """Rotate a refresh token: the old one is blacklisted, a new pair is returned.

    Presenting a refresh token that was already rotated means it was copied: the whole
    session is revoked (theft detection) and ``invalid_refresh_token`` (401) raised. A
    revoked, idle-expired or deactivated session raises the same.
    """
    payload = _decode_refresh(refresh)
    session = _session_of(payload)
    if session is None or session.revoked_at is not None or not session.user.is_active:
        raise _invalid_refresh()
    # The revocations below must outlive the error raised after them, so they run
    # outside the rotation's transaction.
    if BlacklistedToken.objects.filter(token__jti=payload[api_settings.JTI_CLAIM]).exists():
        auth_session_revoke(session=session, reason="reuse_detected", client=client)
        raise _invalid_refresh()
    if _is_idle(session):
        auth_session_revoke(session=session, reason="idle", client=client)
        raise _invalid_refresh()
    try:
        return _rotate(session=session, refresh=refresh, client=client)
    except _AlreadyRotated:
        # Two requests raced with the same token: the loser presented a rotated token,
        # which is reuse all the same.
        auth_session_revoke(session=session, reason="reuse_detected", client=client)
        raise _invalid_refresh() from None


class _AlreadyRotated(Exception):
    """The token was blacklisted by a concurrent rotation (raised inside the transaction,
    so the revocation can happen after it rolls back)."""


@transaction.atomic
def _rotate(*, session: AuthSession, refresh: str, client: ClientInfo) -> dict[str, str]:
    session = AuthSession.objects.select_for_update().select_related("user").get(pk=session.pk)
    if session.revoked_at is not None:
        raise _invalid_refresh()
    try:
        # The row lock above serialises rotations of one session: a second rotation of the
        # same token finds it blacklisted here.
        RefreshToken(refresh).blacklist()  # type: ignore[arg-type]
    except TokenError as exc:
        raise _AlreadyRotated from exc
    session.last_seen_at = timezone.now()
    session.ip_address = client.ip_address
    session.save(update_fields=["last_seen_at", "ip_address"])
    return _tokens_for(session=session)


def session_logout(*, refresh: str, client: ClientInfo) -> None:
    """End the session of this refresh token; logging out twice is harmless."""
    payload = _decode_refresh(refresh)
    session = _session_of(payload)
    try:
        RefreshToken(refresh).blacklist()  # type: ignore[arg-type]
    except TokenError as exc:
        if "blacklisted" not in str(exc).lower():
            raise _invalid_refresh() from exc
    if session is not None and session.revoked_at is None:
        auth_session_revoke(session=session, reason="logout", client=client)


def auth_session_revoke(*, session: AuthSession, reason: str, client: ClientInfo) -> None:
    """Revoke a session: its refresh and access tokens stop working. Idempotent."""
    updated = AuthSession.objects.filter(pk=session.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now(), revoked_reason=reason
    )
    if not updated:
        return
    action = {"logout": "logout", "reuse_detected": "session_reuse_detected"}.get(
        reason, "session_revoked"
    )
    audit_record(
        action=action,
        user=session.user,
        outcome=(
            AuditOutcome.MINOR_FAILURE
            if action == "session_reuse_detected"
            else AuditOutcome.SUCCESS
        ),
        ip_address=client.ip_address,
        user_agent=client.user_agent,
        object_type="session",
        object_id=str(session.id),
        detail={"reason": reason},
    )
    # The device's Web Push subscription (notifications) ends with it.
    session_id, user_id = str(session.id), session.user_id
    transaction.on_commit(
        lambda: events.emit(events.ACCOUNT_SESSION_REVOKED, session_id=session_id, user_id=user_id)
    )


def auth_sessions_revoke_all(
    *, user: User, client: ClientInfo, reason: str = "logout_everywhere", keep: uuid.UUID | None
) -> int:
    """Revoke every active session of the user except ``keep``; returns how many ended."""
    sessions = AuthSession.objects.filter(user=user, revoked_at__isnull=True).select_related("user")
    if keep is not None:
        sessions = sessions.exclude(pk=keep)
    count = 0
    for session in sessions:
        auth_session_revoke(session=session, reason=reason, client=client)
        count += 1
    return count


def auth_session_touch(*, session_id: str, user_id: int) -> bool:
    """Whether the session of an access token is still on; records that it was seen.

    An idle-expired session is revoked here. Writes at most once per TOUCH_INTERVAL.
    """
    try:
        sid = uuid.UUID(session_id)
    except ValueError:
        return False
    session = (
        AuthSession.objects.select_related("user")
        .filter(pk=sid, user_id=user_id, revoked_at__isnull=True)
        .first()
    )
    if session is None:
        return False
    now = timezone.now()
    if _is_idle(session):
        auth_session_revoke(session=session, reason="idle", client=ClientInfo(None, ""))
        return False
    if session.last_seen_at < now - TOUCH_INTERVAL:
        AuthSession.objects.filter(pk=sid).update(last_seen_at=now)
    return True
