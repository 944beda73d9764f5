"""Celery entry points of accounts: thin wrappers over services, safe to run twice
(an email sent twice is a nuisance, not harm; the cleanup deletes what is still there)."""

from __future__ import annotations

from smtplib import SMTPException

from celery import shared_task
from django.db import OperationalError

# A mail server that is down or slow, or a database hiccup, is retried with growing
# pauses (about 1, 2, 4, 8, 16 minutes... with jitter), then given up: the person can ask
# for the email again.
_MAIL_RETRY = {
    "acks_late": True,
    "autoretry_for": (SMTPException, OSError, OperationalError),
    "retry_backoff": 60,
    "retry_jitter": True,
    "max_retries": 6,
}


@shared_task(**_MAIL_RETRY)
def verification_email_task(user_id: int, email: str | None = None) -> bool:
    from .services.mail import verification_email_send

    return verification_email_send(user_id=user_id, email=email)


@shared_task(**_MAIL_RETRY)
def password_reset_email_task(user_id: int) -> bool:
    from .services.mail import password_reset_email_send

    return password_reset_email_send(user_id=user_id)


@shared_task(**_MAIL_RETRY)
def registration_attempt_notice_task(user_id: int) -> bool:
    from .services.mail import registration_attempt_notice_send

    return registration_attempt_notice_send(user_id=user_id)


@shared_task(**_MAIL_RETRY)
def email_change_attempt_notice_task(user_id: int) -> bool:
    from .services.mail import email_change_attempt_notice_send

    return email_change_attempt_notice_send(user_id=user_id)


@shared_task(**_MAIL_RETRY)
def username_taken_notice_task(email: str, username: str) -> bool:
    from .services.mail import username_taken_notice_send

    return username_taken_notice_send(email=email, username=username)


@shared_task(acks_late=True, autoretry_for=(OperationalError,), retry_backoff=True, max_retries=3)
def auth_records_cleanup_task() -> dict[str, int]:
    from .services.cleanup import auth_records_cleanup

    return auth_records_cleanup().as_dict()
