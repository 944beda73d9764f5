"""Reads of the statistics: who sees which facilities, and the figures of a period, all
from the rollups (a handful of GROUP BY queries, however many uploads there were)."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from django.core.cache import cache
from django.db import connection, transaction
from django.db.models import BigIntegerField, Q, QuerySet, Sum, Value
from django.db.models.functions import Cast, Coalesce
from django.utils import timezone

from accounts.exports import csv_cell
from accounts.models import Facility, Role, User
from relaypacs.errors import ApplicationError

from .models import ROLLUP_FIELDS, Grain, Outcome, UploadRollup
from .services import STATS_CACHE_VERSION_KEY

# Days of each period, today included; "all" has no start.
PERIODS: dict[str, int | None] = {"1w": 7, "2w": 14, "1m": 30, "3m": 91, "6m": 182, "all": None}
DEFAULT_PERIOD = "1m"
# Cached answers live this long at most (and are dropped at once when an upload ends).
STATS_CACHE_SECONDS = 60
# Rollup rows read per round trip while streaming the export.
EXPORT_BATCH = 2000
# Roles that see their facility's figures; administrators see every facility.
FACILITY_ROLES = frozenset({Role.CLINICIAN, Role.RADIOGRAPHER})


@dataclass(frozen=True)
class StatsScope:
    """The facilities a user's figures cover: every one (``facility_id`` None and
    ``all_facilities``) or one."""

    all_facilities: bool
    facility_id: int | None


@dataclass(frozen=True)
class StatsFilters:
    period: str
    facility: str | None = None
    modality: str | None = None
    service_level: str | None = None


def stats_scope_for(*, user: User) -> StatsScope:
    """An administrator sees every facility; a clinician or radiographer their own; the
    others get no upload statistics. Raises ApplicationError (403) with the reason."""
    if user.role == Role.ADMIN or user.is_superuser:
        return StatsScope(all_facilities=True, facility_id=None)
    if user.role not in FACILITY_ROLES:
        raise ApplicationError(
            "permission_denied",
            "Upload statistics are for clinic staff and administrators; radiologists and "
            "auditors do not get them.",
            "Auditors find the audit trail at /audit/; radiologists their worklist at /reports/.",
            status_code=403,
        )
    if not user.is_approved:
        raise ApplicationError(
            "account_pending_approval",
            "Your account is waiting for an administrator's approval, so it has no statistics yet.",
            "Ask your RelayPACS administrator to approve your account.",
            status_code=403,
        )
    if user.facility_id is None:
        raise ApplicationError(
            "no_facility",
            "Your account belongs to no facility, so there are no facility statistics to show.",
            "Ask your RelayPACS administrator to link your account to your clinic.",
            status_code=403,
        )
    return StatsScope(all_facilities=False, facility_id=user.facility_id)


def _facility_id(*, scope: StatsScope, facility: str | None) -> int | None:
    """The facility filter (an id or a code) as an id, within the scope."""
    if not facility:
        return scope.facility_id
    found = Facility.objects.filter(
        Q(code=facility) | Q(pk=int(facility)) if facility.isdigit() else Q(code=facility)
    ).values_list("pk", flat=True)
    facility_id = next(iter(found), None)
    if facility_id is None:
        raise ApplicationError(
            "unknown_facility",
            f"There is no facility '{facility}'.",
            "Use a facility id or code from the administrator's facility table.",
            status_code=400,
        )
    if not scope.all_facilities and facility_id != scope.facility_id:
        raise ApplicationError(
            "permission_denied",
            "You can see the statistics of your own facility only.",
            "Leave out the facility filter to see your facility's figures.",
            status_code=403,
        )
    return facility_id


def period_days(*, period: str, today: date) -> tuple[date | None, date]:
    days = PERIODS[period]
    return (today - timedelta(days=days - 1) if days else None), today


def _first_full_month(since: date) -> date:
    if since.day == 1:
        return since
    return (since.replace(day=28) + timedelta(days=4)).replace(day=1)


@dataclass(frozen=True)
class _Plan:
    """The rollup rows that answer a request: ``trend`` for totals, outcomes, the daily
    trend and the facility table; ``breakdown`` for modality and service level (whole
    months from the month grain, the first partial month from the day grain)."""

    trend: QuerySet[UploadRollup]
    breakdown: QuerySet[UploadRollup]
    export: QuerySet[UploadRollup]


def _plan(*, scope: StatsScope, filters: StatsFilters, today: date) -> _Plan:
    since, until = period_days(period=filters.period, today=today)
    base = UploadRollup.objects.all()
    facility_id = _facility_id(scope=scope, facility=filters.facility)
    if facility_id is not None:
        base = base.filter(facility_id=facility_id)
    narrowed = base
    if filters.modality:
        narrowed = narrowed.filter(modality=filters.modality.upper())
    if filters.service_level:
        narrowed = narrowed.filter(service_level=filters.service_level)
    days = Q(day__lte=until) & (Q(day__gte=since) if since else Q())
    export = narrowed.filter(days, grain=Grain.DAY)
    # The trend grain has no modality or service level: filtered by them, the day grain.
    if filters.modality or filters.service_level:
        trend = export
    else:
        trend = base.filter(days, grain=Grain.TREND)
    if since is None:
        months = Q(grain=Grain.MONTH)
    else:
        first_month = _first_full_month(since)
        months = Q(grain=Grain.MONTH, day__gte=first_month, day__lte=until) | Q(
            grain=Grain.DAY, day__gte=since, day__lt=first_month, day__lte=until
        )
    return _Plan(trend=trend, breakdown=narrowed.filter(months), export=export)


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


def _avg_seconds(ms: int, count: int) -> float | None:
    return round(ms / count / 1000, 1) if count else None


# What a breakdown row shows: four sums instead of all, a fifth of the aggregation work.
_GROUP_FIELDS = ("uploads", "bytes", "upload_ms", "upload_timed")


def _figures(
    sums_by_outcome: dict[str, dict[str, Any]], fields: tuple[str, ...] = _GROUP_FIELDS
) -> dict[str, Any]:
    """Counts, bytes, success and speed of one group from its sums per outcome (``_total``:
    the sums of ``fields`` over the outcomes; a group shown as a row needs only four)."""
    total: dict[str, int] = dict.fromkeys(ROLLUP_FIELDS, 0)
    for sums in sums_by_outcome.values():
        for name in fields:
            total[name] += sums.get(name) or 0

    def uploads(outcome: str) -> int:
        return (sums_by_outcome.get(outcome) or {}).get("uploads") or 0

    completed, failed = uploads(Outcome.COMPLETED), uploads(Outcome.FAILED)
    return {
        "uploads": total["uploads"],
        "bytes": total["bytes"],
        "completed": completed,
        "failed": failed,
        "cancelled": uploads(Outcome.CANCELLED),
        "in_progress": uploads(Outcome.IN_PROGRESS),
        "success_rate": _ratio(completed, completed + failed),
        "average_upload_seconds": _avg_seconds(total["upload_ms"], total["upload_timed"]),
        "_total": total,
    }


def _grouped(
    rows: QuerySet[UploadRollup], field: str, sums: tuple[str, ...] = _GROUP_FIELDS
) -> dict[Any, dict[str, dict[str, Any]]]:
    """``{value of field: {outcome: sums}}``, one GROUP BY query.

    The ORM writes the query; it is run on the cursor, each sum cast to a 64-bit integer
    in SQL, because at a year of rollups (~1,500 day × outcome rows of 21 sums for the
    period `all`) turning PostgreSQL's numeric sums into Decimals and Django's converters
    into ints cost a third of the request (cProfile)."""
    aggregates = {name: Cast(Sum(name), BigIntegerField()) for name in sums}
    query = rows.values(field, "outcome").annotate(**aggregates).order_by().query
    sql, params = query.sql_with_params()
    by: dict[Any, dict[str, dict[str, Any]]] = {}
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        for record in cursor.fetchall():
            row = dict(zip(("_key", "outcome", *sums), record, strict=True))
            by.setdefault(row.pop("_key"), {})[row["outcome"]] = row
    return by


def _figures_of(grouped: dict[Any, dict[str, dict[str, Any]]]) -> dict[Any, dict[str, Any]]:
    return {value: _figures(outcomes) for value, outcomes in grouped.items()}


def _outcome_totals(by_day: dict[Any, dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """The period's sums per outcome, added up from its days (in Python: a few thousand
    small rows at most, instead of reading the period's rollup rows a second time)."""
    columns: dict[str, list[list[int]]] = {}
    for outcomes in by_day.values():
        for outcome, row in outcomes.items():
            columns.setdefault(outcome, []).append([row[name] or 0 for name in ROLLUP_FIELDS])
    return {
        outcome: dict(zip(ROLLUP_FIELDS, map(sum, zip(*rows, strict=True)), strict=True))
        for outcome, rows in columns.items()
    }


def _public(figures: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in figures.items() if not k.startswith("_")}


@contextmanager
def _serial_reads() -> Iterator[None]:
    """A read-only transaction in which PostgreSQL plans no parallel workers: the
    statistics aggregate tens of thousands of rollup rows at most, and starting workers
    cost more than they saved (EXPLAIN ANALYZE at a million uploads on the loaded 2-core
    bench machine: 105 of a query's 125 ms were the Gather's start)."""
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL max_parallel_workers_per_gather = 0")
        yield


def upload_stats(*, user: User, filters: StatsFilters, today: date | None = None) -> dict[str, Any]:
    """The statistics ``user`` may see for the period (docs/analytics.md): 3 queries on
    the rollups (days, modality, service level; a fourth, facilities, and their names for
    an administrator; one more for a facility filter), never on uploads, and few rows
    whatever the period (see ``Grain``)."""
    with _serial_reads():
        return _upload_stats(user=user, filters=filters, today=today)


def _upload_stats(*, user: User, filters: StatsFilters, today: date | None) -> dict[str, Any]:
    scope = stats_scope_for(user=user)
    today = today or timezone.localdate()
    plan = _plan(scope=scope, filters=filters, today=today)
    # The days with every sum: the daily trend, and added up, the period's totals.
    days = _grouped(plan.trend, "day", ROLLUP_FIELDS)
    overall = _figures(_outcome_totals(days), ROLLUP_FIELDS)
    total = overall.pop("_total")
    since, until = period_days(period=filters.period, today=today)

    by_modality = _figures_of(_grouped(plan.breakdown, "modality"))
    by_level = _figures_of(_grouped(plan.breakdown, "service_level"))
    by_day = _figures_of(days)
    first = since or (min(by_day) if by_day else today)
    daily = []
    day = first
    while day <= until:
        figures = by_day.get(day)
        daily.append({"date": day.isoformat(), **_public(figures or _figures({}))})
        day += timedelta(days=1)

    answer: dict[str, Any] = {
        "period": filters.period,
        "since": first.isoformat(),
        "until": until.isoformat(),
        "filters": {
            "facility": filters.facility or None,
            "modality": filters.modality or None,
            "service_level": filters.service_level or None,
        },
        "scope": "all_facilities" if scope.all_facilities else "facility",
        "facility_id": scope.facility_id,
        "total_uploads": overall["uploads"],
        "total_bytes": overall["bytes"],
        "outcomes": {
            "completed": overall["completed"],
            "failed": overall["failed"],
            "cancelled": overall["cancelled"],
            "in_progress": overall["in_progress"],
        },
        "success_rate": overall["success_rate"],
        "average_upload_seconds": overall["average_upload_seconds"],
        "average_parts_seconds": {
            part: _avg_seconds(total[f"{part}_ms"], total[f"{part}_timed"])
            for part in ("transfer", "processing", "confirmation", "forwarding")
        },
        "by_modality": [
            {"modality": key or "unknown", **_public(fig)}
            for key, fig in sorted(by_modality.items(), key=lambda kv: -kv[1]["uploads"])
        ],
        "by_service_level": [
            {"service_level": key, **_public(fig)}
            for key, fig in sorted(by_level.items(), key=lambda kv: -kv[1]["uploads"])
        ],
        "daily": daily,
        "retries": {
            "pacs_retries": total["pacs_retries"],
            "manual_retries": total["manual_retries"],
            "uploads_retried": total["uploads_retried"],
            "uploads_retried_rate": _ratio(total["uploads_retried"], overall["uploads"]),
        },
        "network": {
            "uploads_reported": total["telemetry_uploads"],
            "average_throughput_bytes_per_second": (
                round(total["network_bytes"] / (total["network_ms"] / 1000))
                if total["network_ms"]
                else None
            ),
            "outages": total["outages"],
            "outage_seconds": round(total["outage_ms"] / 1000, 1),
            "retried_chunks": total["retried_chunks"],
            "retried_chunks_per_upload": _ratio(
                total["retried_chunks"], total["telemetry_uploads"]
            ),
        },
    }
    if scope.all_facilities:
        by_facility = _figures_of(_grouped(plan.trend, "facility_id"))
        names = {
            f.pk: f
            for f in Facility.objects.filter(pk__in=[k for k in by_facility if k is not None])
        }
        answer["by_facility"] = [
            {
                "facility_id": key,
                "facility_code": names[key].code if key in names else None,
                "facility_name": names[key].name if key in names else "No facility",
                **_public(fig),
            }
            for key, fig in sorted(by_facility.items(), key=lambda kv: -kv[1]["uploads"])
        ]
    return answer


def upload_stats_cached(
    *, user: User, filters: StatsFilters, today: date | None = None
) -> tuple[dict[str, Any], bool]:
    """``upload_stats`` through the cache (STATS_CACHE_SECONDS, dropped when an upload
    ends): returns the answer and whether it came from the cache. The scope is checked
    on every call, cached or not."""
    scope = stats_scope_for(user=user)
    version = cache.get(STATS_CACHE_VERSION_KEY) or "0"
    today = today or timezone.localdate()
    fingerprint = json.dumps(
        [scope.all_facilities, scope.facility_id, today.isoformat(), filters.__dict__],
        sort_keys=True,
    )
    key = "analytics:stats:" + hashlib.sha256(f"{version}:{fingerprint}".encode()).hexdigest()
    cached = cache.get(key)
    if cached is not None:
        return cached, True
    answer = upload_stats(user=user, filters=filters, today=today)
    answer["generated_at"] = timezone.now().isoformat()
    cache.set(key, answer, timeout=STATS_CACHE_SECONDS)
    return answer, False


EXPORT_COLUMNS = [
    "date",
    "facility",
    "facility_name",
    "modality",
    "service_level",
    "outcome",
    "uploads",
    "bytes",
    "average_upload_seconds",
    "average_transfer_seconds",
    "average_processing_seconds",
    "average_confirmation_seconds",
    "average_forwarding_seconds",
    "upload_seconds_total",
    "uploads_timed",
    "pacs_retries",
    "manual_retries",
    "uploads_retried",
    "network_reports",
    "network_bytes",
    "network_seconds",
    "outages",
    "outage_seconds",
    "retried_chunks",
]


class _Echo:
    def write(self, value: str) -> str:
        return value


def _blank(value: float | None) -> str | float:
    return "" if value is None else value


def stats_csv_rows(
    *, user: User, filters: StatsFilters, today: date | None = None
) -> Iterator[str]:
    """The rollup rows ``user`` may see for the period, oldest day first, as CSV lines
    (header first), read EXPORT_BATCH rows at a time. The scope is checked before the
    first line, so a refusal is an error answer, not a broken download."""
    scope = stats_scope_for(user=user)
    rows = (
        _plan(scope=scope, filters=filters, today=today or timezone.localdate())
        .export.select_related("facility")
        # The unique constraint's index order: the first row comes without a sort.
        .order_by("day", Coalesce("facility", Value(0)), "modality", "service_level", "outcome")
    )
    writer = csv.writer(_Echo())

    def lines() -> Iterator[str]:
        yield writer.writerow(EXPORT_COLUMNS)
        for r in rows.iterator(chunk_size=EXPORT_BATCH):
            yield writer.writerow(
                [
                    csv_cell(v)
                    for v in (
                        r.day.isoformat(),
                        r.facility.code if r.facility else "",
                        r.facility.name if r.facility else "No facility",
                        r.modality or "unknown",
                        r.service_level,
                        r.outcome,
                        r.uploads,
                        r.bytes,
                        _blank(_avg_seconds(r.upload_ms, r.upload_timed)),
                        _blank(_avg_seconds(r.transfer_ms, r.transfer_timed)),
                        _blank(_avg_seconds(r.processing_ms, r.processing_timed)),
                        _blank(_avg_seconds(r.confirmation_ms, r.confirmation_timed)),
                        _blank(_avg_seconds(r.forwarding_ms, r.forwarding_timed)),
                        round(r.upload_ms / 1000, 1),
                        r.upload_timed,
                        r.pacs_retries,
                        r.manual_retries,
                        r.uploads_retried,
                        r.telemetry_uploads,
                        r.network_bytes,
                        round(r.network_ms / 1000, 1),
                        r.outages,
                        round(r.outage_ms / 1000, 1),
                        r.retried_chunks,
                    )
                ]
            )

    return lines()
