"""Celery entry points of the notifications app: thin wrappers over services, safe to run twice."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from .push import PushServiceBusy, push_retry_countdown

# A push service that answers 408/425/429/5xx (or cannot be reached) is retried
# PUSH_RETRIES times, after 2^n s (n = 0 … 9: 1, 2, 4 … 512 s) jittered to between half
# and all of it, or after its Retry-After when that is longer, never more than
# push.PUSH_RETRY_MAX_SECONDS (600 s) apart: 8.5 to 17 minutes in all without
# Retry-After, at most 100 minutes with it; well inside the message's TTL at the push
# service (WEB_PUSH_TTL_SECONDS, 24 h).
PUSH_RETRIES = 10
# One push is a DNS lookup and one POST bounded at 5 s to connect and 10 s to answer
# (clients/webpush.TIMEOUT_SECONDS): 30 s is well past that; at 40 s the worker process
# is killed and replaced, so a hung resolver never holds a worker.
PUSH_SOFT_TIME_LIMIT_SECONDS = 30
PUSH_TIME_LIMIT_SECONDS = 40


@shared_task(acks_late=True)
def notifications_prune_task() -> int:
    from .services import notifications_prune

    return notifications_prune()


@shared_task(
    bind=True,
    acks_late=True,
    max_retries=PUSH_RETRIES,
    soft_time_limit=PUSH_SOFT_TIME_LIMIT_SECONDS,
    time_limit=PUSH_TIME_LIMIT_SECONDS,
)
def push_deliver_task(self: Any, *, notification_id: int, subscription_id: int) -> str:
    from .push import push_deliver

    try:
        outcome = push_deliver(notification_id=notification_id, subscription_id=subscription_id)
    except PushServiceBusy as busy:
        countdown = push_retry_countdown(retries=self.request.retries, retry_after=busy.retry_after)
        raise self.retry(exc=busy, countdown=countdown) from None
    return str(outcome or "skipped")
