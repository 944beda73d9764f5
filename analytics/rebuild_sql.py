"""The rollups rebuilt in a few set-based statements on PostgreSQL: the same figures as
``contributions.contribution_of`` applied to every upload (tests/test_rebuild.py holds
the two to each other), without reading a million uploads into Python.

It reads the uploads app's tables directly, as one query plan rather than through
``uploads.selectors.upload_facts`` (two queries per 2,000 uploads, and every row through
Python). What it repeats from there is spelled out next to each expression: the modality
rule of ``uploads.selectors._modality_of``, the day in TIME_ZONE, durations in whole
milliseconds. A change to either side shows in the test.
"""

from __future__ import annotations

from django.db import connection

from accounts.models import Facility
from uploads.models import Study, UploadSession

from .models import ROLLUP_FIELDS, UploadRollup, UploadTimeline

# The contributions, one row per counted upload, while the rebuild runs.
_WORK_TABLE = "analytics_rebuild_contribution"


def _ms(start: str, end: str) -> str:
    """contribution_of's _ms: whole milliseconds, floored, never negative; NULL when one
    end is unknown (EXTRACT gives an exact numeric on PostgreSQL 14+; GREATEST would
    take a NULL for nothing, hence the CASE)."""
    return (
        f"(CASE WHEN {start} IS NOT NULL AND {end} IS NOT NULL THEN "
        f"GREATEST(floor(EXTRACT(EPOCH FROM ({end} - {start})) * 1000), 0)::bigint END)"
    )


def _contributions_sql() -> str:
    upload = UploadSession._meta.db_table
    study = Study._meta.db_table
    timeline = UploadTimeline._meta.db_table
    facility = Facility._meta.db_table
    done = "f.state = 'completed'"
    timed = {
        "upload": _ms("f.created_at", "f.completed_at"),
        "transfer": _ms("f.created_at", "f.received_at"),
        "processing": _ms("f.received_at", "t.checked_at"),
        "confirmation": _ms("t.confirmation_asked_at", "t.forwarding_at"),
        "forwarding": _ms("t.forwarding_at", "f.completed_at"),
    }
    parts = ",\n".join(
        f"COALESCE(CASE WHEN {done} THEN {sql} END, 0) AS {part}_ms, "
        f"(({done}) AND {sql} IS NOT NULL)::int AS {part}_timed"
        for part, sql in timed.items()
    )
    telemetry = ",\n".join(
        f"CASE WHEN t.telemetry_at IS NOT NULL THEN t.{name} ELSE 0 END AS {name}"
        for name in ("network_bytes", "network_ms", "outages", "outage_ms", "retried_chunks")
    )
    stored = ",\n".join(
        f"COALESCE((t.counted -> 'values' ->> '{name}')::bigint, 0) AS {name}"
        for name in ROLLUP_FIELDS
    )
    whitespace = r"E' \t\n\r\f\v'"  # what Python's str.strip() takes away
    # Table and column names come from the models, values are parameters.
    return f"""
    CREATE TEMPORARY TABLE {_WORK_TABLE} AS
    WITH facts AS (
        SELECT s.id AS upload_id, s.facility_id, s.state, s.total_size, s.service_level,
               s.created_at, s.received_at, s.completed_at,
               COALESCE(
                   -- The first study (by id) with a modality: its first that is not SR
                   -- (the relay's note), else SR.
                   (SELECT left(COALESCE(
                               (SELECT upper(e.v)
                                  FROM jsonb_array_elements_text(st.modalities)
                                       WITH ORDINALITY AS e(v, i)
                                 WHERE e.v <> '' AND upper(e.v) <> 'SR'
                                 ORDER BY e.i LIMIT 1),
                               'SR'), 16)
                      FROM {study} st
                     WHERE st.session_id = s.id
                       AND jsonb_typeof(st.modalities) = 'array'
                       AND EXISTS (SELECT 1 FROM jsonb_array_elements_text(st.modalities) x(v)
                                    WHERE x.v <> '')
                     ORDER BY st.id LIMIT 1),
                   -- No study: the modality typed at init.
                   left(upper(btrim(COALESCE(s.metadata ->> 'modality', ''), {whitespace})), 16)
               ) AS modality
          FROM {upload} s
    )
    SELECT f.upload_id, true AS live,
           (f.created_at AT TIME ZONE %(time_zone)s)::date AS day,
           f.facility_id, f.modality, f.service_level,
           CASE WHEN f.state IN ('completed', 'failed', 'cancelled') THEN f.state
                ELSE 'in_progress' END AS outcome,
           1::bigint AS uploads,
           f.total_size AS bytes,
           {parts},
           COALESCE(t.pacs_waits, 0)::bigint AS pacs_retries,
           COALESCE(t.manual_retries, 0)::bigint AS manual_retries,
           (COALESCE(t.pacs_waits, 0) + COALESCE(t.manual_retries, 0) > 0)::int
               AS uploads_retried,
           (t.telemetry_at IS NOT NULL)::int AS telemetry_uploads,
           {telemetry}
      FROM facts f
      LEFT JOIN {timeline} t ON t.upload_id = f.upload_id
    UNION ALL
    -- Uploads deleted since they were counted keep their place in the figures, unless
    -- their facility is gone too (its statistics went with it).
    SELECT t.upload_id, false,
           (t.counted -> 'key' ->> 0)::date,
           (t.counted -> 'key' ->> 1)::bigint,
           t.counted -> 'key' ->> 2,
           t.counted -> 'key' ->> 3,
           t.counted -> 'key' ->> 4,
           {stored}
      FROM {timeline} t
     WHERE t.counted IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM {upload} s WHERE s.id = t.upload_id)
       AND (t.counted -> 'key' ->> 1 IS NULL
            OR EXISTS (SELECT 1 FROM {facility} fa
                        WHERE fa.id = (t.counted -> 'key' ->> 1)::bigint))
    """  # noqa: S608


def _rollups_sql() -> str:
    rollup = UploadRollup._meta.db_table
    sums = ", ".join(f"SUM({name})" for name in ROLLUP_FIELDS)
    dims = "day, facility_id, modality, service_level, outcome"
    # Table and column names come from the models, values are parameters.
    return f"""
    INSERT INTO {rollup} (grain, {dims}, {", ".join(ROLLUP_FIELDS)})
    SELECT 'day', {dims}, {sums} FROM {_WORK_TABLE} GROUP BY {dims}
    UNION ALL
    SELECT 'month', date_trunc('month', day)::date AS month, facility_id, modality,
           service_level, outcome, {sums}
      FROM {_WORK_TABLE} GROUP BY month, facility_id, modality, service_level, outcome
    UNION ALL
    SELECT 'trend', day, facility_id, '', '', outcome, {sums}
      FROM {_WORK_TABLE} GROUP BY day, facility_id, outcome
    """  # noqa: S608


def _timelines_sql() -> str:
    timeline = UploadTimeline._meta.db_table
    # contribution_of's {"key": [...], "values": {...}}, zeros left out.
    values = ", ".join(f"'{name}', NULLIF({name}, 0)" for name in ROLLUP_FIELDS)
    counted = (
        "jsonb_build_object('key', jsonb_build_array(to_char(day, 'YYYY-MM-DD'), "
        "facility_id, modality, service_level, outcome), "
        f"'values', jsonb_strip_nulls(jsonb_build_object({values})))"
    )
    # Table and column names come from the models, values are parameters.
    return f"""
    INSERT INTO {timeline} (upload_id, pacs_waits, last_wait_key, manual_retries,
                            last_failure_key, retried_failure_key, network_bytes,
                            network_ms, outages, outage_ms, retried_chunks, counted,
                            updated_at)
    SELECT upload_id, 0, '', 0, '', '', 0, 0, 0, 0, 0, {counted}, now()
      FROM {_WORK_TABLE} WHERE live
    ON CONFLICT (upload_id) DO UPDATE SET counted = EXCLUDED.counted
     WHERE {timeline}.counted IS DISTINCT FROM EXCLUDED.counted
    """  # noqa: S608


def rollups_rebuild_in_sql(*, time_zone: str) -> int:
    """Delete every rollup row and write them again from the uploads and their
    timelines, and record each upload's contribution on its timeline (made for uploads
    older than this app). The caller holds the transaction and the statistics' tables'
    lock (services.rollups_rebuild). Returns the number of rollup rows written."""
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {_WORK_TABLE}")
        cursor.execute(_contributions_sql(), {"time_zone": time_zone})
        cursor.execute(f"ANALYZE {_WORK_TABLE}")
        cursor.execute(f"DELETE FROM {UploadRollup._meta.db_table}")  # noqa: S608
        cursor.execute(_rollups_sql())
        rows = cursor.rowcount
        cursor.execute(_timelines_sql())
        cursor.execute(f"DROP TABLE {_WORK_TABLE}")
    return rows
