"""Reads of the reports app: who sees which report, lists and filters."""

from __future__ import annotations

import uuid
from datetime import date, datetime, time, timedelta

from django.db.models import Exists, OuterRef, Prefetch, Q, QuerySet
from django.http import Http404
from django.utils import timezone

from accounts.models import Role, User
from uploads.models import UploadSession

from .models import Report, ReportVersion

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
    descending = sort.startswith("-")
    field = SORT_FIELDS.get(sort.lstrip("-"), "created_at")
    order = f"-{field}" if descending else field
    return _with_relations(queryset).order_by(order, "-id" if descending else "id")
