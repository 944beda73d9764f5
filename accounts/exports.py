"""The audit trail as CSV, written row by row so an export of years never sits in memory."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from typing import Any

from django.db.models import QuerySet

from .models import AuditEvent

COLUMNS = [
    "occurred_at",
    "action",
    "event_id",
    "event_type",
    "outcome",
    "username",
    "facility",
    "ip_address",
    "user_agent",
    "object_type",
    "object_id",
    "detail",
]
# Rows fetched per database round trip while streaming.
BATCH_SIZE = 2000


class _Echo:
    def write(self, value: str) -> str:
        return value


def _safe(value: Any) -> str:
    """Text a spreadsheet will not run as a formula (CSV injection)."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def audit_csv_rows(*, events: QuerySet[AuditEvent]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(COLUMNS)
    for event in events.iterator(chunk_size=BATCH_SIZE):
        yield writer.writerow(
            [
                _safe(v)
                for v in (
                    event.occurred_at.isoformat(),
                    event.action,
                    event.event_id,
                    event.event_type,
                    event.get_outcome_display(),
                    event.username,
                    event.facility.code if event.facility else "",
                    event.ip_address,
                    event.user_agent,
                    event.object_type,
                    event.object_id,
                    json.dumps(event.detail, sort_keys=True),
                )
            ]
        )
