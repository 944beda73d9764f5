"""What one upload adds to the rollups: a pure function of the upload's facts (read through
uploads.selectors) and of what the events told (``UploadTimeline``).

The events keep the rollups up to date with it and a rebuild recomputes every upload with
it, so the two agree by construction wherever the events arrived.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from django.utils import timezone

from uploads.selectors import UploadFacts

from .models import ROLLUP_FIELDS, Grain, Outcome, UploadTimeline

# A bucket: day (ISO), facility id (or None), modality, service level, outcome. Lists, as
# stored in UploadTimeline.counted (JSON).
BucketKey = tuple[str, int | None, str, str, str]
# A rollup row: the grain, then a bucket (the month grain's day is the month's first).
RollupKey = tuple[str, str, int | None, str, str, str]
Values = dict[str, int]

_FINAL_OUTCOMES = {Outcome.COMPLETED, Outcome.FAILED, Outcome.CANCELLED}


def outcome_of(state: str) -> str:
    """completed, failed, cancelled, or in_progress for every state that is not final."""
    return state if state in _FINAL_OUTCOMES else Outcome.IN_PROGRESS.value


def _ms(start: datetime | None, end: datetime | None) -> int | None:
    """Whole milliseconds from start to end (never negative), or None if one is unknown.
    Exact integer arithmetic (floored), as the set-based rebuild computes it in SQL: a
    float of seconds times 1000 would now and then be one millisecond short."""
    if start is None or end is None:
        return None
    return max((end - start) // timedelta(milliseconds=1), 0)


def contribution_of(*, facts: UploadFacts, timeline: UploadTimeline | None) -> dict[str, Any]:
    """``{"key": [...], "values": {...}}``: the bucket of the upload and its sums there.

    The day is the day the upload started, in TIME_ZONE, so an upload stays on its day
    whatever happens to it later. Durations count for completed uploads only: init → PACS
    receipt (``upload``) and its parts: ``transfer`` (init → every chunk in),
    ``processing`` (→ checked), ``confirmation`` (asked → confirmed, when asked) and
    ``forwarding`` (first send → PACS receipt, waits for the PACS and retries included).
    """
    outcome = outcome_of(facts.state)
    values: Values = dict.fromkeys(ROLLUP_FIELDS, 0)
    values["uploads"] = 1
    values["bytes"] = facts.total_size
    if outcome == Outcome.COMPLETED:
        checked_at = timeline.checked_at if timeline else None
        asked_at = timeline.confirmation_asked_at if timeline else None
        forwarding_at = timeline.forwarding_at if timeline else None
        parts = {
            "upload": _ms(facts.created_at, facts.completed_at),
            "transfer": _ms(facts.created_at, facts.received_at),
            "processing": _ms(facts.received_at, checked_at),
            "confirmation": _ms(asked_at, forwarding_at),
            "forwarding": _ms(forwarding_at, facts.completed_at),
        }
        for part, ms in parts.items():
            if ms is not None:
                values[f"{part}_ms"] = ms
                values[f"{part}_timed"] = 1
    if timeline is not None:
        values["pacs_retries"] = timeline.pacs_waits
        values["manual_retries"] = timeline.manual_retries
        values["uploads_retried"] = int(timeline.pacs_waits + timeline.manual_retries > 0)
        if timeline.telemetry_at is not None:
            values["telemetry_uploads"] = 1
            values["network_bytes"] = timeline.network_bytes
            values["network_ms"] = timeline.network_ms
            values["outages"] = timeline.outages
            values["outage_ms"] = timeline.outage_ms
            values["retried_chunks"] = timeline.retried_chunks
    day = timezone.localdate(facts.created_at).isoformat()
    key = [day, facts.facility_id, facts.modality, facts.service_level, outcome]
    return {"key": key, "values": {k: v for k, v in values.items() if v}}


def bucket_key(counted: dict[str, Any]) -> BucketKey:
    day, facility_id, modality, service_level, outcome = counted["key"]
    return (day, facility_id, modality, service_level, outcome)


def rollup_keys(key: BucketKey) -> list[RollupKey]:
    """The rows, one per grain, that an upload in bucket ``key`` is counted in."""
    day, facility_id, modality, service_level, outcome = key
    month = date.fromisoformat(day).replace(day=1).isoformat()
    return [
        (Grain.DAY.value, day, facility_id, modality, service_level, outcome),
        (Grain.MONTH.value, month, facility_id, modality, service_level, outcome),
        (Grain.TREND.value, day, facility_id, "", "", outcome),
    ]
