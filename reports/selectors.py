"""Reads of the reports app: who sees which report, lists and filters."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from django.db.models import (
    Case,
    Count,
    Exists,
    IntegerField,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    Value,
    When,
)
from django.http import Http404
from django.utils import timezone

from accounts.models import AuditEvent, Facility, Role, User
from accounts.selectors import audit_events_of_object
from uploads.models import Study, UploadSession

from .models import OPEN_STATUSES, Report, ReportStatus, ReportVersion

# Roles that act on reports (the transitions); admins do everything.
READER_ROLES = frozenset({Role.RADIOLOGIST, Role.ADMIN})
# Roles that sent the studies and answer the radiologist's questions.
SENDER_ROLES = frozenset({Role.CLINICIAN, Role.RADIOGRAPHER, Role.ADMIN})
SORT_FIELDS = {
    "date": "created_at",
    "status": "status",
    "modality": "modality",
    "service_level": "service_level",
}


def reports_visible_to(*, user: User) -> QuerySet[Report]:
    """The reports a user's role lets them see (docs/reports.md).

    clinician: those of their own uploads; radiographer: their facility's (their own
    without a facility); radiologist: the facilities an administrator assigned them
    (``reading_facilities``), all when none is assigned; admin: all; auditor: none (report events are in
    the audit export, report text is not).
    """
    queryset = Report.objects.all()
    if not user.is_active:
        return queryset.none()
    if user.role == Role.RADIOLOGIST:
        assigned = list(user.reading_facilities.values_list("pk", flat=True))
        return queryset.filter(facility_id__in=assigned) if assigned else queryset
    if user.role in READER_ROLES:
        return queryset
    own = Q(sender=user) | Exists(UploadSession.objects.filter(reports=OuterRef("pk"), owner=user))
    if user.role == Role.RADIOGRAPHER and user.facility_id is not None:
        return queryset.filter(own | Q(facility_id=user.facility_id))
    if user.role in (Role.CLINICIAN, Role.RADIOGRAPHER):
        return queryset.filter(own)
    return queryset.none()


def _with_relations(queryset: QuerySet[Report]) -> QuerySet[Report]:
    return queryset.select_related("assignee", "sender", "signed_by").prefetch_related(
        Prefetch("uploads", queryset=UploadSession.objects.only("id")),
        Prefetch("versions", queryset=ReportVersion.objects.order_by("number")),
    )


def report_get_for(*, report_id: int, user: User) -> Report:
    """The report if this user may see it; Http404 otherwise (never 403)."""
    report = _with_relations(reports_visible_to(user=user)).filter(pk=report_id).first()
    if report is None:
        raise Http404
    return report


def report_for_upload(*, upload_id: uuid.UUID, user: User) -> Report:
    """The report of the study that upload delivered (the first, for an upload of several)."""
    report = (
        _with_relations(reports_visible_to(user=user))
        .filter(uploads=upload_id)
        .order_by("id")
        .first()
    )
    if report is None:
        raise Http404
    return report


def _day_start(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min), timezone.get_current_timezone())


def reports_list(
    *,
    user: User,
    status: str | None = None,
    modality: str | None = None,
    facility_id: int | None = None,
    service_level: str | None = None,
    date_from: date | None = None,
    date_to: date | None = None,
    sort: str = "-date",
) -> QuerySet[Report]:
    """Visible reports, filtered; ``sort`` is one of SORT_FIELDS, "-" first for descending.

    ``date_from``/``date_to`` bound the day the report was opened, both inclusive.
    """
    queryset = _reports_filtered(
        user=user,
        status=status,
        modality=modality,
        facility_id=facility_id,
        service_level=service_level,
        date_from=date_from,
        date_to=date_to,
    )
    descending = sort.startswith("-")
    field = SORT_FIELDS.get(sort.lstrip("-"), "created_at")
    order = f"-{field}" if descending else field
    return _with_relations(queryset).order_by(order, "-id" if descending else "id")


def _reports_filtered(
    *,
    user: User,
    status: str | None,
    modality: str | None,
    facility_id: int | None,
    service_level: str | None,
    date_from: date | None,
    date_to: date | None,
) -> QuerySet[Report]:
    queryset = reports_visible_to(user=user)
    if status:
        queryset = queryset.filter(status=status)
    if modality:
        code = modality.upper()
        queryset = queryset.filter(
            Q(modality=code)
            | Q(modality__startswith=f"{code}\\")
            | Q(modality__endswith=f"\\{code}")
            | Q(modality__contains=f"\\{code}\\")
        )
    if facility_id is not None:
        queryset = queryset.filter(facility_id=facility_id)
    if service_level:
        queryset = queryset.filter(service_level=service_level)
    if date_from is not None:
        queryset = queryset.filter(created_at__gte=_day_start(date_from))
    if date_to is not None:
        queryset = queryset.filter(created_at__lt=_day_start(date_to) + timedelta(days=1))
    return queryset


# The worklist's order of urgency: the first is read first.
SERVICE_LEVEL_PRIORITY = ("stat", "emergency", "urgent", "routine")


@dataclass(frozen=True)
class WorklistFilters:
    """What the radiologist's worklist is narrowed to (reports.web). ``statuses`` None:
    every status; ``search`` matches patient name, patient ID and accession number."""

    statuses: tuple[str, ...] | None = OPEN_STATUSES
    modality: str | None = None
    facility_id: int | None = None
    service_level: str | None = None
    date_from: date | None = None
    date_to: date | None = None
    search: str = ""


def _priority() -> Case:
    return Case(
        *[
            When(service_level=level, then=Value(rank))
            for rank, level in enumerate(SERVICE_LEVEL_PRIORITY)
        ],
        default=Value(len(SERVICE_LEVEL_PRIORITY)),
        output_field=IntegerField(),
    )


def _worklist_base(*, user: User, filters: WorklistFilters) -> QuerySet[Report]:
    queryset = _reports_filtered(
        user=user,
        status=None,
        modality=filters.modality,
        facility_id=filters.facility_id,
        service_level=filters.service_level,
        date_from=filters.date_from,
        date_to=filters.date_to,
    )
    # Every word must match one of the fields: "doe jane" finds "DOE^JANE".
    for word in filters.search.split()[:WORKLIST_SEARCH_MAX_WORDS]:
        queryset = queryset.filter(
            Q(patient_name__icontains=word)
            | Q(patient_id__icontains=word)
            | Q(accession_number__icontains=word)
        )
    return queryset


# More words than this in a search are ignored (each is a condition on three columns).
WORKLIST_SEARCH_MAX_WORDS = 5


def reports_worklist(*, user: User, filters: WorklistFilters) -> QuerySet[Report]:
    """The radiologist's worklist: the visible reports matching ``filters``, by service
    level (stat, emergency, urgent, routine), then oldest received first. Rows carry
    their facility, assignee and sender (no query per row)."""
    queryset = _worklist_base(user=user, filters=filters)
    if filters.statuses is not None:
        queryset = queryset.filter(status__in=list(filters.statuses))
    return (
        queryset.select_related("facility", "assignee", "sender")
        .annotate(priority=_priority())
        .order_by("priority", "created_at", "id")
    )


def reports_status_counts(*, user: User, filters: WorklistFilters) -> dict[str, int]:
    """How many visible reports of each status match ``filters`` (its ``statuses`` aside);
    one query. Every status is a key, zero included."""
    counts = {status: 0 for status in ReportStatus.values}
    rows = (
        _worklist_base(user=user, filters=filters)
        .order_by()
        .values_list("status")
        .annotate(n=Count("id"))
    )
    for status, n in rows:
        counts[status] = n
    return counts


def report_next_for(*, user: User, after: Report) -> Report | None:
    """The next report to read after ``after`` in worklist order: an open one waiting for a
    reader (in the pool or the user's own), wrapping round to the first; None when there is
    no other."""
    waiting = (
        reports_visible_to(user=user)
        .filter(status__in=[ReportStatus.ASSIGNED, ReportStatus.PENDING], signing=False)
        .filter(Q(assignee__isnull=True) | Q(assignee=user))
        .exclude(pk=after.pk)
        .annotate(priority=_priority())
        .order_by("priority", "created_at", "id")
    )
    rank = (
        SERVICE_LEVEL_PRIORITY.index(after.service_level)
        if after.service_level in SERVICE_LEVEL_PRIORITY
        else len(SERVICE_LEVEL_PRIORITY)
    )
    later = waiting.filter(
        Q(priority__gt=rank)
        | Q(priority=rank, created_at__gt=after.created_at)
        | Q(priority=rank, created_at=after.created_at, pk__gt=after.pk)
    ).first()
    return later if later is not None else waiting.first()


def report_facilities_for(*, user: User) -> QuerySet[Facility]:
    """The facilities whose reports the user may see, for the worklist's filter: a
    radiologist's reading facilities when an administrator assigned some, else all."""
    if user.role == Role.RADIOLOGIST:
        assigned = user.reading_facilities.all().order_by("name")
        if assigned.exists():
            return assigned
    return Facility.objects.order_by("name")


def report_modalities_for(*, user: User) -> list[str]:
    """The modality codes found in the reports the user may see (for the filter)."""
    values = reports_visible_to(user=user).order_by().values_list("modality", flat=True).distinct()
    codes = {code for value in values for code in value.split("\\") if code}
    return sorted(codes)


@dataclass(frozen=True)
class ReportUpload:
    """One upload of a report's study, as the report page shows it: the studies' series
    (with their image counts), the sender's notes and the upload's warnings."""

    upload: UploadSession
    studies: list[Study]


def report_uploads(*, report: Report) -> list[ReportUpload]:
    """The uploads that delivered the report's study, oldest first, each with its
    Study rows of that study (two queries)."""
    uploads = (
        UploadSession.objects.filter(reports=report)
        .select_related("owner", "facility")
        .prefetch_related(
            Prefetch(
                "studies",
                queryset=Study.objects.filter(study_instance_uid=report.study_instance_uid),
                to_attr="report_studies",
            )
        )
        .order_by("created_at")
    )
    return [ReportUpload(upload=u, studies=list(u.report_studies)) for u in uploads]


def report_history(*, report: Report) -> QuerySet[AuditEvent]:
    """The report's events (its transitions and PDF downloads), oldest first."""
    return audit_events_of_object(object_type="report", object_id=str(report.pk))


def report_actions_for(*, report: Report, user: User) -> frozenset[str]:
    """The radiologist's steps (claim, draft, sign, ask, amend, cancel) that the report's
    state lets ``user`` take now, by the same states as their services
    (reports.services.transitions); the services still decide, so a page built on an
    older state meets their 409. None while a signed version waits for its PDF."""
    from .services import transitions

    if report.signing or user.role not in READER_ROLES:
        return frozenset()
    offered = {
        name
        for name, states in (
            ("claim", transitions.CLAIM_FROM),
            ("draft", transitions.DRAFT_FROM),
            ("sign", transitions.SIGN_FROM),
            ("amend", transitions.AMEND_FROM),
            ("ask", transitions.ASK_FROM),
            ("cancel", transitions.CANCEL_FROM),
        )
        if report.status in states
    }
    taken_over = user.role == Role.ADMIN or user.is_superuser
    if report.assignee_id not in (None, user.pk) and not taken_over:
        offered -= transitions.READER_ONLY
    return frozenset(offered)
