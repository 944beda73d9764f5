"""The account emails and their links.

Each email is sent by a Celery task (accounts.tasks) queued once the transaction commits,
so a request never waits for the mail server, a slow or absent one never fails it, and the
answer takes as long whether or not an email goes out. The tasks take ids and load what
they need, so a mail always says what the database says when it is sent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib.auth.tokens import default_token_generator
from django.core import signing
from django.core.mail import send_mail
from django.db import transaction
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from .. import tasks
from ..models import User

logger = logging.getLogger(__name__)

VERIFY_SALT = "relaypacs.verify-email.v1"


def email_verification_token(*, user: User, email: str | None = None) -> str:
    address = email or user.email
    return signing.dumps({"u": user.pk, "e": address}, salt=VERIFY_SALT, compress=True)


def email_verification_link(*, user: User, email: str | None = None) -> str:
    """The PWA's page, which POSTs the token to /api/v1/auth/verify-email. Links sent
    before pointed at the API itself (GET), which still accepts them."""
    token = email_verification_token(user=user, email=email)
    return f"{settings.PUBLIC_BASE_URL}/verify-email?token={token}"


def password_reset_link(*, user: User) -> str:
    uid = urlsafe_base64_encode(force_bytes(user.pk))
    token = default_token_generator.make_token(user)
    return f"{settings.PUBLIC_BASE_URL}/reset-password?uid={uid}&token={token}"


def _queue_on_commit(task: Any, **kwargs: Any) -> None:
    """Queue ``task`` after commit. A broker that refuses it is logged, not raised: the
    account change is committed, and the person can ask for the email again."""

    def send() -> None:
        try:
            task.delay(**kwargs)
        except Exception:
            logger.exception("could not queue %s; the email is not sent", task.name)

    transaction.on_commit(send)


def verification_email_queue(*, user: User, email: str | None = None) -> None:
    _queue_on_commit(tasks.verification_email_task, user_id=user.pk, email=email)


def password_reset_email_queue(*, user: User) -> None:
    _queue_on_commit(tasks.password_reset_email_task, user_id=user.pk)


def registration_attempt_notice_queue(*, owner: User) -> None:
    _queue_on_commit(tasks.registration_attempt_notice_task, user_id=owner.pk)


def email_change_attempt_notice_queue(*, owner: User) -> None:
    _queue_on_commit(tasks.email_change_attempt_notice_task, user_id=owner.pk)


def username_taken_notice_queue(*, email: str, username: str) -> None:
    _queue_on_commit(tasks.username_taken_notice_task, email=email, username=username)


def _greeting(user: User) -> str:
    return f"Hello {user.full_name or user.username},\n\n"


def _send(*, to: str, subject: str, body: str) -> None:
    send_mail(subject=subject, message=body, from_email=None, recipient_list=[to])


def _with_user(send: Callable[[User], bool], *, user_id: int) -> bool:
    user = User.objects.filter(pk=user_id, is_active=True).first()
    return send(user) if user is not None else False


def verification_email_send(*, user_id: int, email: str | None = None) -> bool:
    """Email the confirmation link to the account's address, or to ``email`` when it is
    the address waiting for confirmation. Returns False (nothing sent) for a deleted or
    inactive account or an address the account no longer has."""

    def send(user: User) -> bool:
        address = email or user.email
        if address not in (user.email, user.pending_email):
            return False
        hours = int(settings.AUTH_EMAIL_LINK_MAX_AGE.total_seconds() // 3600)
        _send(
            to=address,
            subject="Confirm your RelayPACS email address",
            body=_greeting(user)
            + "Please confirm your email address for your RelayPACS account by opening this "
            f"link within {hours} hours:\n\n"
            f"{email_verification_link(user=user, email=address)}\n\n"
            "If you did not ask for this, ignore this email; nothing changes.\n",
        )
        return True

    return _with_user(send, user_id=user_id)


def password_reset_email_send(*, user_id: int) -> bool:
    """Email a password reset link; False (nothing sent) for an account that cannot use one."""

    def send(user: User) -> bool:
        if not user.has_usable_password():
            return False
        minutes = int(settings.PASSWORD_RESET_TIMEOUT // 60)
        _send(
            to=user.email,
            subject="Reset your RelayPACS password",
            body=_greeting(user)
            + f"To choose a new RelayPACS password, open this link within {minutes} minutes:\n\n"
            f"{password_reset_link(user=user)}\n\n"
            "If you did not ask for this, ignore this email: your password stays as it is.\n",
        )
        return True

    return _with_user(send, user_id=user_id)


def registration_attempt_notice_send(*, user_id: int) -> bool:
    """Tell the owner of an address that someone tried to register with it."""

    def send(user: User) -> bool:
        _send(
            to=user.email,
            subject="Someone tried to register with your email address",
            body=_greeting(user)
            + "Someone tried to create a new RelayPACS account with this email address, "
            f"which already belongs to your account (username: {user.username}).\n\n"
            f"If it was you, sign in instead at {settings.PUBLIC_BASE_URL}/ , or reset your "
            "password with 'Forgot password' on the sign-in screen if you forgot it.\n\n"
            "If it was not you, ignore this email: your account has not changed.\n",
        )
        return True

    return _with_user(send, user_id=user_id)


def email_change_attempt_notice_send(*, user_id: int) -> bool:
    """Tell the owner of an address that someone asked to move it to another account."""

    def send(user: User) -> bool:
        _send(
            to=user.email,
            subject="Someone tried to use your email address for another account",
            body=_greeting(user)
            + "Someone tried to use this email address for another RelayPACS account. It "
            f"already belongs to your account (username: {user.username}), so it was not "
            "added to the other one and no confirmation link was sent.\n\n"
            "If it was you, sign in to your account instead at "
            f"{settings.PUBLIC_BASE_URL}/ ; if you forgot its password, use 'Forgot your "
            "password?' on the sign-in screen.\n\n"
            "If it was not you, ignore this email: your account has not changed.\n",
        )
        return True

    return _with_user(send, user_id=user_id)


def username_taken_notice_send(*, email: str, username: str) -> bool:
    """Tell an address that registered with a taken username to choose another."""
    _send(
        to=email,
        subject="Your RelayPACS registration was not completed",
        body="Hello,\n\n"
        f"Someone, probably you, tried to register a RelayPACS account with this email "
        f"address and the username '{username}'. That username is already taken, so no "
        "account was created.\n\n"
        f"Please register again with another username: {settings.PUBLIC_BASE_URL}/\n\n"
        "If it was not you, ignore this email.\n",
    )
    return True
