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


def csv_cell(value: Any) -> str:
    """A CSV cell a spreadsheet will not run as a formula; for every CSV export."""
    return _safe(value)


def _event_record(event: AuditEvent) -> dict[str, Any]:
    """One event as the exports give it, in COLUMNS order."""
    return {
        "occurred_at": event.occurred_at.isoformat(),
        "action": event.action,
        "event_id": event.event_id,
        "event_type": event.event_type,
        "outcome": event.get_outcome_display(),
        "username": event.username,
        "facility": event.facility.code if event.facility else "",
        "ip_address": event.ip_address,
        "user_agent": event.user_agent,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "detail": event.detail,
    }


def audit_csv_rows(*, events: QuerySet[AuditEvent]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(COLUMNS)
    for event in events.iterator(chunk_size=BATCH_SIZE):
        record = _event_record(event)
        record["detail"] = json.dumps(event.detail, sort_keys=True)
        yield writer.writerow([_safe(record[column]) for column in COLUMNS])


def audit_json_rows(*, events: QuerySet[AuditEvent]) -> Iterator[str]:
    """The same events as a JSON array of objects (the CSV's columns, ``detail`` as an
    object), one event per line, written as it is read."""
    yield "[\n"
    separator = ""
    for event in events.iterator(chunk_size=BATCH_SIZE):
        yield separator + json.dumps(_event_record(event), sort_keys=False)
        separator = ",\n"
    yield "\n]\n"
