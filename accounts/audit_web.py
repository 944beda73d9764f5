"""The auditor's page at /audit/: the audit trail filtered by date range, facility, user,
event type and outcome, a preview of the first rows, and the same rows downloaded as CSV
or JSON, streamed.

Server-rendered (templates/audit/), signed in through the staff web sign-in (accounts.web,
with two-step sign-in). The rows are those of ``selectors.audit_events`` (an auditor bound
to a facility sees that facility's events only; one without a facility, and an
administrator, see all) written by accounts.exports, exactly as the API's CSV export; every
download is itself audited ("Audit Log Used").
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import render
from django.views.decorators.http import require_GET

from .clientinfo import client_info
from .exports import audit_csv_rows, audit_json_rows
from .models import AuditEvent, AuditOutcome, Facility, Role, User
from .selectors import audit_events
from .services import AUDIT_VOCABULARY, audit_export_record
from .web import staff_page

AUDIT_ROLES = frozenset({Role.AUDITOR, Role.ADMIN})
AUDIENCE = "auditors (and administrators): it is where the audit trail is read and exported"
auditors_only = staff_page(roles=AUDIT_ROLES, audience=AUDIENCE)
# Rows shown on the page; the downloads have them all.
PREVIEW_ROWS = 50


def _action_label(action: str) -> str:
    event_id, event_type = AUDIT_VOCABULARY[action]
    words = action.replace("_", " ").capitalize()
    dicom = event_type.split(" ", 1)[-1] if event_type else event_id.split(" ", 1)[-1]
    return f"{words} ({dicom})"


class AuditFilterForm(forms.Form):
    date_from = forms.DateField(
        required=False, label="From", widget=forms.DateInput(attrs={"type": "date"})
    )
    date_to = forms.DateField(
        required=False, label="Until", widget=forms.DateInput(attrs={"type": "date"})
    )
    facility = forms.ChoiceField(required=False)
    user = forms.CharField(required=False, max_length=150, label="User")
    action = forms.ChoiceField(required=False, label="Event type")
    outcome = forms.ChoiceField(
        choices=[("", "Any"), *AuditOutcome.choices], required=False, label="Outcome"
    )

    def __init__(self, *args: Any, viewer: User, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        facilities: QuerySet[Facility] = Facility.objects.order_by("name")
        bound = viewer.role == Role.AUDITOR and viewer.facility_id is not None
        if viewer.role == Role.AUDITOR and viewer.facility_id is not None:
            facilities = facilities.filter(pk=viewer.facility_id)
        facility = self.fields["facility"]
        assert isinstance(facility, forms.ChoiceField)  # noqa: S101
        facility.choices = [
            *([] if bound else [("", "Any")]),
            *[(f.code, f.name) for f in facilities],
        ]
        action = self.fields["action"]
        assert isinstance(action, forms.ChoiceField)  # noqa: S101
        action.choices = [
            ("", "Any"),
            *[(a, _action_label(a)) for a in sorted(AUDIT_VOCABULARY)],
        ]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        start, end = data.get("date_from"), data.get("date_to")
        if start and end and end < start:
            raise forms.ValidationError("'Until' is before 'From': swap the two dates.")
        return data


def _day_start(day: date | None) -> datetime | None:
    return datetime.combine(day, time.min, tzinfo=UTC) if day is not None else None


def _filtered(request: HttpRequest, user: User) -> tuple[AuditFilterForm, QuerySet[AuditEvent]]:
    """The form of the query string and the events it selects (an invalid filter
    selects nothing: a download never has more than the auditor asked for)."""
    form = AuditFilterForm(request.GET or None, viewer=user)
    if request.GET and not form.is_valid():
        return form, AuditEvent.objects.none()
    data = form.cleaned_data if request.GET else {}
    until = data.get("date_to")
    events = audit_events(
        viewer=user,
        since=_day_start(data.get("date_from")),
        until=_day_start(until + timedelta(days=1)) if until else None,
        username=data.get("user") or None,
        facility_code=data.get("facility") or None,
        action=data.get("action") or None,
        outcome=data.get("outcome") or None,
    )
    return form, events


def _filters_text(form: AuditFilterForm) -> dict[str, str]:
    if not form.is_bound or not form.is_valid():
        return {}
    return {k: str(v) for k, v in form.cleaned_data.items() if v not in (None, "")}


def _user(request: HttpRequest) -> User:
    user = request.user
    assert isinstance(user, User)  # noqa: S101 - staff_page let only a User through
    return user


@require_GET
@auditors_only
def trail(request: HttpRequest) -> HttpResponse:
    user = _user(request)
    form, events = _filtered(request, user)
    preview = list(events[:PREVIEW_ROWS])
    query = urlencode({k: v for k, v in request.GET.items() if v})
    return render(
        request,
        "audit/trail.html",
        {
            "form": form,
            "rows": preview,
            "count": events.count(),
            "preview_rows": PREVIEW_ROWS,
            "query": query,
            "bound_facility": (
                user.facility if user.role == Role.AUDITOR and user.facility_id else None
            ),
        },
    )


def _download(request: HttpRequest, kind: str) -> HttpResponseBase:
    user = _user(request)
    form, events = _filtered(request, user)
    if form.is_bound and not form.is_valid():
        refused = trail(request)
        refused.status_code = 400
        return refused
    audit_export_record(
        user=user, client=client_info(request), filters={**_filters_text(form), "format": kind}
    )
    stamp = datetime.now(tz=UTC).strftime("%Y%m%d-%H%M%S")
    response: HttpResponseBase
    if kind == "json":
        response = StreamingHttpResponse(
            audit_json_rows(events=events), content_type="application/json; charset=utf-8"
        )
    else:
        response = StreamingHttpResponse(
            audit_csv_rows(events=events), content_type="text/csv; charset=utf-8"
        )
    response["Content-Disposition"] = f'attachment; filename="relaypacs-audit-{stamp}.{kind}"'
    return response


@require_GET
@auditors_only
def export_csv(request: HttpRequest) -> HttpResponseBase:
    return _download(request, "csv")


@require_GET
@auditors_only
def export_json(request: HttpRequest) -> HttpResponseBase:
    return _download(request, "json")
