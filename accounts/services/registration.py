"""Self-registration and email verification."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.password_validation import validate_password
from django.core import signing
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from relaypacs.errors import ApplicationError

from ..clientinfo import ClientInfo
from ..models import Approval, Role, User
from .approval import invitation_redeem
from .audit import audit_record
from .mail import (
    VERIFY_SALT,
    registration_attempt_notice_queue,
    username_taken_notice_queue,
    verification_email_queue,
)

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


@dataclass(frozen=True)
class RegistrationReceipt:
    """The answer to a registration: the same whether an account was made or the username
    or address was taken, so it does not tell who has an account."""

    username: str
    email: str
    full_name: str
    role: str
    # "pending" (an administrator approves the account) or "approved" (by an invitation
    # code); it depends on the request only, like the rest of the receipt.
    approval: str = Approval.PENDING
    email_verified: bool = False


@transaction.atomic
def user_register(
    *,
    username: str,
    email: str,
    password: str,
    full_name: str,
    role: str = Role.CLINICIAN,
    invitation_code: str = "",
    client: ClientInfo,
) -> RegistrationReceipt:
    """Create an unverified account and email its verification link (a task, after commit).

    The account waits for an administrator's approval (``approval`` pending: it signs in
    and edits its profile but sends no study), unless ``invitation_code`` is a valid
    facility invitation: then it is approved in the invitation's facility, with the
    invitation's role when it names one. A valid code counts one use whether or not an
    account is made, so neither its count nor a second try tells who has an account.

    When the address is taken, its owner is emailed that someone tried to register with
    it; when only the username is taken, the new address is emailed to choose another. The
    answer, and the work done before it, are the same in all three cases: the password is
    hashed, both lookups run, and the account and its audit event are inserted, then rolled
    back to a savepoint when taken (see _user_insert). Raises ``role_not_allowed`` (400) for
    a role above radiographer, ``weak_password`` (400) and ``invalid_invitation_code``
    (400, unknown, expired or used up), which depend on the request only.
    """
    if role not in SELF_REGISTRATION_ROLES:
        raise ApplicationError(
            "role_not_allowed",
            "You can register as a clinician or a radiographer only.",
            "Register, then ask your RelayPACS administrator for the role you need.",
        )
    email = User.objects.normalize_email(email)
    user = User(
        username=username,
        email=email,
        full_name=full_name,
        role=role,
        email_verified=False,
        approval=Approval.PENDING,
    )
    password_check(password=password, user=user)
    user.set_password(password)
    if invitation_code.strip():
        invitation = invitation_redeem(code=invitation_code)
        user.facility_id = invitation.facility_id
        user.role = invitation.role or role
        user.approval = Approval.APPROVED
    receipt = RegistrationReceipt(
        username=username,
        email=email,
        full_name=full_name,
        role=user.role,
        approval=user.approval,
    )
    owner = User.objects.filter(email__iexact=email).order_by("pk").first()
    username_taken = User.objects.filter(username__iexact=username).exists()
    kept = _user_insert(
        user=user, role=user.role, client=client, keep=owner is None and not username_taken
    )
    if owner is not None:
        registration_attempt_notice_queue(owner=owner)
    elif not kept:
        # Taken, or taken by a registration running at the same moment (unique index).
        username_taken_notice_queue(email=email, username=username)
    else:
        verification_email_queue(user=user)
    return receipt


def _user_insert(*, user: User, role: str, client: ClientInfo, keep: bool) -> bool:
    """Insert the account and its ``user_registered`` event in a savepoint, and keep them
    only when ``keep``: a taken username or address does the same database work as a new
    account, so the time of the answer does not tell them apart. Returns whether the
    account was kept (False as well when the username's unique index refused it)."""
    try:
        with transaction.atomic():
            user.save()
            audit_record(
                action="user_registered",
                user=user,
                ip_address=client.ip_address,
                user_agent=client.user_agent,
                detail={"role": role, "approval": user.approval},
            )
            if not keep:
                transaction.set_rollback(True)
    except IntegrityError:
        return False
    return keep


@transaction.atomic
def email_verify(*, token: str) -> User:
    """Mark the account's email verified, or switch to the pending new address the link
    was sent to. Idempotent for the same link.

    Raises ``invalid_verification_link`` (400) for a forged, expired or outdated link
    (the address changed since it was sent), and ``email_taken`` (409) when another account
    has confirmed this address meanwhile: a confirmed address belongs to one account only.
    (The one who opens the link reads that address's mail, so telling them is no leak.)
    """
    invalid = ApplicationError(
        "invalid_verification_link",
        "This confirmation link is not valid or has expired.",
        "Ask for a new confirmation email from the sign-in screen.",
    )
    try:
        data: dict[str, Any] = signing.loads(
            token, salt=VERIFY_SALT, max_age=settings.AUTH_EMAIL_LINK_MAX_AGE
        )
    except signing.BadSignature as exc:
        raise invalid from exc
    if not isinstance(data, dict) or not isinstance(data.get("u"), int):
        raise invalid
    address = str(data.get("e", ""))
    user = User.objects.select_for_update().filter(pk=data["u"]).first()
    if user is None or address not in (user.email, user.pending_email) or not address:
        raise invalid
    changes_state = (address == user.pending_email and address != user.email) or (
        not user.email_verified
    )
    if changes_state and _confirmed_elsewhere(user=user, address=address):
        raise ApplicationError(
            "email_taken",
            "This email address already belongs to another RelayPACS account, so it cannot "
            "be confirmed for this one.",
            "Sign in to the account that uses this address, or choose another address.",
            status_code=409,
        )
    if address == user.pending_email and address != user.email:
        user.email, user.pending_email, user.email_verified = address, "", True
        user.save(update_fields=["email", "pending_email", "email_verified"])
        audit_record(action="profile_changed", user=user, detail={"field": "email"})
    elif not user.email_verified:
        user.email_verified = True
        user.save(update_fields=["email_verified"])
        audit_record(action="email_verified", user=user)
    return user


def _confirmed_elsewhere(*, user: User, address: str) -> bool:
    return (
        User.objects.filter(email__iexact=address, email_verified=True).exclude(pk=user.pk).exists()
    )


def email_verification_resend(*, email: str) -> None:
    """Send the link again to an unverified account with this address; silent otherwise,
    so the answer does not tell who has an account."""
    user = User.objects.filter(email__iexact=email, email_verified=False, is_active=True).first()
    if user is not None:
        verification_email_queue(user=user)
