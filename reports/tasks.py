"""Celery entry points of the reports app: thin wrappers over services, safe to run twice."""

from __future__ import annotations

from celery import shared_task
from django.db import OperationalError

# Database hiccups are retried here; a render that failed otherwise is dispatched again by
# the synchronisation beat job (reports_pdf_redispatch).
_RETRY = {
    "acks_late": True,
    "autoretry_for": (OperationalError,),
    "retry_backoff": True,
    "retry_jitter": True,
    "max_retries": 5,
}


@shared_task(**_RETRY)
def report_pdf_render_task(version_id: int) -> None:
    from .services.pdf import report_version_render

    report_version_render(version_id=version_id)


@shared_task(acks_late=True)
def reports_sync_task() -> None:
    from .services.intake import reports_open_missing
    from .services.sync import reports_pdf_redispatch, reports_sync

    reports_open_missing()
    reports_pdf_redispatch()
    reports_sync()
