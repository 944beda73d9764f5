"""Celery entry points of the notifications app: thin wrappers over services, safe to run twice."""

from __future__ import annotations

from celery import shared_task


@shared_task(acks_late=True)
def notifications_prune_task() -> int:
    from .services import notifications_prune

    return notifications_prune()
