"""Password change and reset by email."""

from __future__ import annotations

import uuid

from django.contrib.auth.tokens import default_token_generator
from django.db import transaction
from django.utils.encoding import force_str
from django.utils.http import urlsafe_base64_decode

from relaypacs.errors import ApplicationError

from ..clientinfo import ClientInfo
from ..models import User
from .audit import audit_record
from .mail import password_reset_email_queue
from .reauth import current_password_confirm
from .registration import password_check
from .sessions import auth_sessions_revoke_all


@transaction.atomic
def password_change(
    *,
    user: User,
    current_password: str,
    new_password: str,
    current_session: uuid.UUID | None,
    client: ClientInfo,
) -> int:
    """Change the password and sign out every other device; returns how many were.

    Raises ``invalid_current_password`` (400) or ``weak_password`` (400).
    """
    current_password_confirm(user=user, password=current_password)
    password_check(password=new_password, user=user)
    user.set_password(new_password)
    user.save(update_fields=["password"])
    audit_record(
        action="password_changed",
        user=user,
        ip_address=client.ip_address,
        user_agent=client.user_agent,
    )
    return auth_sessions_revoke_all(
        user=user, client=client, reason="password_changed", keep=current_session
    )


def password_reset_request(*, email: str, client: ClientInfo) -> None:
    """Email a reset link to the active account with this address, if there is one.

    Silent either way, so the answer does not tell who has an account.
    """
    for user in User.objects.filter(email__iexact=email, is_active=True):
        if user.has_usable_password():
            password_reset_email_queue(user=user)


@transaction.atomic
def password_reset_confirm(*, uid: str, token: str, new_password: str, client: ClientInfo) -> User:
    """Set the new password from a reset link and sign out every device.

    The link works once (the token covers the password hash) and expires after
    PASSWORD_RESET_TIMEOUT. Raises ``invalid_reset_link`` (400) or ``weak_password`` (400).
    Following the link also proves the email address, so the account becomes verified.
    """
    invalid = ApplicationError(
        "invalid_reset_link",
        "This password reset link is not valid, was already used or has expired.",
        "Ask for a new reset email from the sign-in screen.",
    )
    try:
        pk = int(force_str(urlsafe_base64_decode(uid)))
    except (ValueError, TypeError, OverflowError) as exc:
        raise invalid from exc
    user = User.objects.filter(pk=pk, is_active=True).first()
    if user is None or not default_token_generator.check_token(user, token):
        raise invalid
    password_check(password=new_password, user=user)
    user.set_password(new_password)
    user.email_verified = True
    user.save(update_fields=["password", "email_verified"])
    audit_record(
        action="password_reset",
        user=user,
        ip_address=client.ip_address,
        user_agent=client.user_agent,
    )
    auth_sessions_revoke_all(user=user, client=client, reason="password_reset", keep=None)
    return user
