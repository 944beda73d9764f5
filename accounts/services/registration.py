"""Self-registration and email verification."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.password_validation import validate_password
from django.core import signing
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import transaction

from relaypacs.errors import ApplicationError

from ..clientinfo import ClientInfo
from ..models import Role, User
from .audit import audit_record

_VERIFY_SALT = "relaypacs.verify-email.v1"
# Roles a person may choose when registering; an administrator grants any other.
SELF_REGISTRATION_ROLES = (Role.CLINICIAN, Role.RADIOGRAPHER)


def password_check(*, password: str, user: User) -> None:
    """Raise ``weak_password`` (400) with every rule the password breaks, in plain words."""
    try:
        validate_password(password, user=user)
    except ValidationError as exc:
        raise ApplicationError(
            "weak_password",
            "This password is not strong enough: " + " ".join(exc.messages),
            "Use at least 12 characters mixing words, capitals, digits or signs, unlike your name.",
            extra={"problems": list(exc.messages)},
        ) from exc


def email_verification_token(*, user: User, email: str | None = None) -> str:
    address = email or user.email
    return signing.dumps({"u": user.pk, "e": address}, salt=_VERIFY_SALT, compress=True)


def email_verification_link(*, user: User, email: str | None = None) -> str:
    token = email_verification_token(user=user, email=email)
    return f"{settings.PUBLIC_BASE_URL}/api/v1/auth/verify-email?token={token}"


def send_verification_email(*, user: User, email: str | None = None) -> None:
    link = email_verification_link(user=user, email=email)
    hours = int(settings.AUTH_EMAIL_LINK_MAX_AGE.total_seconds() // 3600)
    send_mail(
        subject="Confirm your RelayPACS email address",
        message=(
            f"Hello {user.full_name or user.username},\n\n"
            "Please confirm your email address to finish creating your RelayPACS account by "
            f"opening this link within {hours} hours:\n\n{link}\n\n"
            "If you did not register, ignore this email; no account will be usable.\n"
        ),
        from_email=None,
        recipient_list=[email or user.email],
    )


@transaction.atomic
def user_register(
    *,
    username: str,
    email: str,
    password: str,
    full_name: str,
    role: str = Role.CLINICIAN,
    client: ClientInfo,
) -> User:
    """Create an unverified account and email its verification link (after commit).

    Raises ``username_taken`` or ``email_taken`` (409), ``role_not_allowed`` (400) for a
    role above radiographer, ``weak_password`` (400).
    """
    if role not in SELF_REGISTRATION_ROLES:
        raise ApplicationError(
            "role_not_allowed",
            "You can register as a clinician or a radiographer only.",
            "Register, then ask your RelayPACS administrator for the role you need.",
        )
    if User.objects.filter(username__iexact=username).exists():
        raise ApplicationError(
            "username_taken",
            "This username is already taken.",
            "Choose another username, or sign in if this is your account.",
            status_code=409,
        )
    email = User.objects.normalize_email(email)
    if User.objects.filter(email__iexact=email).exists():
        raise ApplicationError(
            "email_taken",
            "An account with this email address already exists.",
            "Sign in, or reset your password if you forgot it.",
            status_code=409,
        )
    user = User(
        username=username,
        email=email,
        full_name=full_name,
        role=role,
        email_verified=False,
    )
    password_check(password=password, user=user)
    user.set_password(password)
    user.save()
    audit_record(
        action="user_registered",
        user=user,
        ip_address=client.ip_address,
        user_agent=client.user_agent,
        detail={"role": role},
    )
    transaction.on_commit(lambda: send_verification_email(user=user))
    return user


def email_verify(*, token: str) -> User:
    """Mark the account's email verified, or switch to the pending new address the link
    was sent to. Idempotent for the same link.

    Raises ``invalid_verification_link`` (400) for a forged, expired or outdated link
    (the address changed since it was sent).
    """
    invalid = ApplicationError(
        "invalid_verification_link",
        "This confirmation link is not valid or has expired.",
        "Ask for a new confirmation email from the sign-in screen.",
    )
    try:
        data: dict[str, Any] = signing.loads(
            token, salt=_VERIFY_SALT, max_age=settings.AUTH_EMAIL_LINK_MAX_AGE
        )
    except signing.BadSignature as exc:
        raise invalid from exc
    if not isinstance(data, dict) or not isinstance(data.get("u"), int):
        raise invalid
    address = str(data.get("e", ""))
    user = User.objects.filter(pk=data["u"]).first()
    if user is None or address not in (user.email, user.pending_email) or not address:
        raise invalid
    if address == user.pending_email and address != user.email:
        user.email, user.pending_email, user.email_verified = address, "", True
        user.save(update_fields=["email", "pending_email", "email_verified"])
        audit_record(action="profile_changed", user=user, detail={"field": "email"})
    elif not user.email_verified:
        user.email_verified = True
        user.save(update_fields=["email_verified"])
        audit_record(action="email_verified", user=user)
    return user


def email_verification_resend(*, email: str) -> None:
    """Send the link again to an unverified account with this address; silent otherwise,
    so the answer does not tell who has an account."""
    user = User.objects.filter(email__iexact=email, email_verified=False, is_active=True).first()
    if user is not None:
        transaction.on_commit(lambda: send_verification_email(user=user))
