"""The live stream's metrics (prometheus-client; summed over processes by relaypacs.metrics).

``relaypacs_event_delivery_seconds``: from an event's commit (its ``created_at``, written
in the same transaction) to its send on an open stream, for events stored while that
stream was open. Backlog replayed after a reconnect is left out: its age is the time the
client was away, not the delivery latency.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.utils import timezone
from prometheus_client import Histogram

EVENT_DELIVERY_SECONDS = Histogram(
    "relaypacs_event_delivery_seconds",
    "Seconds from a domain event stored to its message sent on an open live stream",
    ["transport"],
    # The goal is p95 < 1 s (issue 12); the embedded default checks every 0.2 s.
    buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 2, 5, 10, 30),
)


def event_delivered(*, event: dict[str, Any], stream_opened_at: datetime, transport: str) -> None:
    """Observe one event sent live (not replayed); events without a time are skipped."""
    try:
        stored = datetime.fromisoformat(str(event["created_at"]))
    except (KeyError, ValueError):
        return
    if stored < stream_opened_at:
        return
    EVENT_DELIVERY_SECONDS.labels(transport=transport).observe(
        max((timezone.now() - stored).total_seconds(), 0.0)
    )
