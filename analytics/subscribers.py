"""The statistics' view of the domain events; connected in AnalyticsConfig.ready."""

from __future__ import annotations

import uuid
from typing import Any

from relaypacs import events

from .services import stats_cache_invalidate, upload_event_record

UPLOAD_EVENTS = frozenset(
    {
        events.UPLOAD_STARTED,
        events.UPLOAD_RECEIVED,
        events.UPLOAD_NEEDS_CONFIRMATION,
        events.UPLOAD_FORWARDING,
        events.UPLOAD_WAITING_FOR_PACS,
        events.UPLOAD_COMPLETED,
        events.UPLOAD_FAILED,
        events.UPLOAD_CANCELLED,
    }
)
# An upload that ends changes the figures people look at: cached answers are dropped.
UPLOAD_ENDINGS = frozenset({events.UPLOAD_COMPLETED, events.UPLOAD_FAILED, events.UPLOAD_CANCELLED})


def analytics_on_domain_event(sender: Any, name: str = "", **payload: Any) -> None:
    """Every upload event: count the upload in the rollups as it is now."""
    if name not in UPLOAD_EVENTS:
        return
    try:
        upload_id = uuid.UUID(str(payload.get("upload_id") or ""))
    except ValueError:
        return
    upload_event_record(upload_id=upload_id, name=name)
    if name in UPLOAD_ENDINGS:
        stats_cache_invalidate()
