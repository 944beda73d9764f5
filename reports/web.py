"""The radiologist's web pages at /reports/: the worklist and the study and report page.

Server-rendered (templates/reports/), signed in through the staff web sign-in
(accounts.web). Views validate a form, call one selector or one transition service (the
same as the API's, reports.services.transitions) and render; a step the report's state no
longer allows (someone else signed first) comes back as the service's sentence on the
page, with what was typed kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from accounts.models import User
from accounts.web import staff_page
from relaypacs.errors import ApplicationError
from uploads.models import ServiceLevel

from . import selectors
from .models import OPEN_STATUSES, Report, ReportStatus
from .services import pdf, transitions

# A screen's worth of rows; the page's queries do not grow with it (query-count test).
WORKLIST_PAGE_SIZE = 50
AUDIENCE = "radiologists (and administrators): it is where studies are read and reported"
readers_only = staff_page(roles=selectors.READER_ROLES, audience=AUDIENCE)

# The worklist's status filter: "open" (the default) is every status still to be reported.
STATUS_OPEN, STATUS_ALL = "open", "all"
STATUS_FILTERS = [
    (STATUS_OPEN, "Open"),
    *ReportStatus.choices,
    (STATUS_ALL, "All"),
]
# Reports can be long; far above any report, far below what would strain a request.
TEXT_MAX = 50_000


def _user(request: HttpRequest) -> User:
    user = request.user
    assert isinstance(user, User)  # noqa: S101 - staff_page let only a User through
    return user


class WorklistFilterForm(forms.Form):
    q = forms.CharField(required=False, max_length=100, label="Patient or accession")
    status = forms.ChoiceField(choices=STATUS_FILTERS, required=False)
    modality = forms.ChoiceField(required=False)
    facility = forms.TypedChoiceField(required=False, coerce=int, empty_value=None)
    service_level = forms.ChoiceField(
        choices=[("", "Any"), *ServiceLevel.choices], required=False, label="Service level"
    )
    date_from = forms.DateField(
        required=False, label="Received from", widget=forms.DateInput(attrs={"type": "date"})
    )
    date_to = forms.DateField(
        required=False, label="Received until", widget=forms.DateInput(attrs={"type": "date"})
    )

    def __init__(self, *args: Any, user: User, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        modality = self.fields["modality"]
        assert isinstance(modality, forms.ChoiceField)  # noqa: S101
        modality.choices = [
            ("", "Any"),
            *[(c, c) for c in selectors.report_modalities_for(user=user)],
        ]
        facility = self.fields["facility"]
        assert isinstance(facility, forms.TypedChoiceField)  # noqa: S101
        facility.choices = [
            ("", "Any"),
            *[(f.pk, f.name) for f in selectors.report_facilities_for(user=user)],
        ]

    def filters(self) -> tuple[selectors.WorklistFilters, str]:
        """The worklist filters of the valid fields (an invalid one is ignored and its
        error shown), and the status filter chosen."""
        self.is_valid()
        data = getattr(self, "cleaned_data", {})
        status = data.get("status") or STATUS_OPEN
        statuses: tuple[str, ...] | None
        if status == STATUS_OPEN:
            statuses = tuple(OPEN_STATUSES)
        elif status == STATUS_ALL:
            statuses = None
        else:
            statuses = (status,)
        return (
            selectors.WorklistFilters(
                statuses=statuses,
                modality=data.get("modality") or None,
                facility_id=data.get("facility"),
                service_level=data.get("service_level") or None,
                date_from=data.get("date_from"),
                date_to=data.get("date_to"),
                search=data.get("q") or "",
            ),
            status,
        )


@dataclass(frozen=True)
class WorklistRow:
    report: Report
    age: str
    stat_overdue: bool
    assignee: str


def age_text(delta: timedelta) -> str:
    """ "5 min", "3 h 05 min", "2 d 4 h": how long a study has waited, at a glance."""
    minutes = max(int(delta.total_seconds() // 60), 0)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def _assignee_text(report: Report, user: User) -> str:
    if report.assignee_id is None:
        return "Pool"
    if report.assignee_id == user.pk:
        return "You"
    assignee = report.assignee
    return (assignee.full_name or assignee.username) if assignee is not None else ""


def _row(report: Report, *, user: User, now: datetime, alert_after: timedelta) -> WorklistRow:
    waited = now - report.created_at
    return WorklistRow(
        report=report,
        age=age_text(waited),
        stat_overdue=(
            report.service_level == ServiceLevel.STAT
            and report.status in OPEN_STATUSES
            and waited > alert_after
        ),
        assignee=_assignee_text(report, user),
    )


@require_GET
@readers_only
def worklist(request: HttpRequest) -> HttpResponse:
    user = _user(request)
    form = WorklistFilterForm(request.GET or None, user=user)
    filters, status = form.filters()
    paginator = Paginator(
        selectors.reports_worklist(user=user, filters=filters), WORKLIST_PAGE_SIZE
    )
    page = paginator.get_page(request.GET.get("page"))
    counts = selectors.reports_status_counts(user=user, filters=filters)
    now = timezone.now()
    alert_after = timedelta(minutes=settings.REPORT_STAT_ALERT_MINUTES)
    rows = [_row(report, user=user, now=now, alert_after=alert_after) for report in page]
    status_tabs = []
    for value, label in STATUS_FILTERS:
        if value == STATUS_OPEN:
            count = sum(counts[s] for s in OPEN_STATUSES)
        elif value == STATUS_ALL:
            count = sum(counts.values())
        else:
            count = counts[value]
        status_tabs.append(
            {
                "value": value,
                "label": label,
                "count": count,
                "query": _query_with(request, status=value, page=None),
                "current": value == status,
            }
        )
    return render(
        request,
        "reports/worklist.html",
        {
            "form": form,
            "rows": rows,
            "page": page,
            "status_tabs": status_tabs,
            "alert_minutes": settings.REPORT_STAT_ALERT_MINUTES,
            "overdue": sum(1 for row in rows if row.stat_overdue),
            "previous_query": (
                _query_with(request, page=page.previous_page_number())
                if page.has_previous()
                else ""
            ),
            "next_query": (
                _query_with(request, page=page.next_page_number()) if page.has_next() else ""
            ),
            "list_query": request.GET.urlencode(),
        },
    )


def _query_with(request: HttpRequest, **changes: Any) -> str:
    query = request.GET.copy()
    for key, value in changes.items():
        if value is None:
            query.pop(key, None)
        else:
            query[key] = str(value)
    return query.urlencode()


class ActionForm(forms.Form):
    """Every radiologist's step posts this form (the fields it needs)."""

    findings = forms.CharField(required=False, strip=False, max_length=TEXT_MAX)
    impression = forms.CharField(required=False, strip=False, max_length=TEXT_MAX)
    question = forms.CharField(required=False, max_length=TEXT_MAX)
    reason = forms.CharField(required=False, max_length=2000)


_DONE = {
    "claim": "The report is yours: it is marked as being read by you.",
    "draft": "Draft saved.",
    "sign": "Signed. The PDF is being made; the report turns ready when it is stored.",
    "ask": "Your question was sent to the sending clinic; the report waits for their answer.",
    "amend": "Amendment signed. The PDF of the new version is being made.",
    "cancel": "The report is cancelled: this study will not be reported.",
}


def _act(*, action: str, report_id: int, user: User, data: dict[str, str]) -> None:
    if action == "claim":
        transitions.report_claim(report_id=report_id, actor=user)
    elif action == "draft":
        transitions.report_draft_save(
            report_id=report_id,
            actor=user,
            findings=data["findings"],
            impression=data["impression"],
        )
    elif action == "sign":
        transitions.report_sign(
            report_id=report_id,
            actor=user,
            findings=data["findings"],
            impression=data["impression"],
        )
    elif action == "amend":
        transitions.report_amend(
            report_id=report_id,
            actor=user,
            findings=data["findings"],
            impression=data["impression"],
        )
    elif action == "ask":
        transitions.report_ask(report_id=report_id, actor=user, question=data["question"])
    elif action == "cancel":
        transitions.report_cancel(report_id=report_id, actor=user, reason=data["reason"])
    else:
        raise Http404


@require_POST
@readers_only
def report_action(request: HttpRequest, report_id: int, action: str) -> HttpResponse:
    """One radiologist's step (claim, draft, sign, ask, amend, cancel) on a report."""
    if action not in _DONE:
        raise Http404
    user = _user(request)
    report = selectors.report_get_for(report_id=report_id, user=user)
    form = ActionForm(request.POST)
    if not form.is_valid():
        error = ApplicationError(
            "text_too_long",
            "The text is longer than a report can hold.",
            "Shorten it, then try again.",
        )
        return _report_page(request, report, error=error, typed=request.POST, status=400)
    try:
        _act(action=action, report_id=report.pk, user=user, data=form.cleaned_data)
    except ApplicationError as exc:
        fresh = selectors.report_get_for(report_id=report_id, user=user)
        return _report_page(
            request, fresh, error=exc, typed=form.cleaned_data, status=exc.status_code
        )
    messages.success(request, _DONE[action])
    return redirect("reports-web:report", report_id=report.pk)


@require_GET
@readers_only
def report_page(request: HttpRequest, report_id: int) -> HttpResponse:
    report = selectors.report_get_for(report_id=report_id, user=_user(request))
    return _report_page(request, report)


_HISTORY_WORDS = {
    "create": "Opened: the PACS confirmed receipt of the study",
    "claim": "Claimed",
    "draft": "Draft saved",
    "sign": "Signed",
    "pdf_stored": "PDF stored",
    "ask": "Question sent to the clinic",
    "reply": "Answer from the clinic",
    "amend": "Amendment signed",
    "cancel": "Cancelled",
    "pacs_preliminary": "Preliminary result from the PACS",
    "pacs_final": "Final result from the PACS",
}


def _history(report: Report) -> list[dict[str, Any]]:
    rows = []
    for event in selectors.report_history(report=report):
        detail = event.detail or {}
        if event.action == "report_accessed":
            what = f"PDF of version {detail.get('version', '?')} downloaded"
        else:
            what = _HISTORY_WORDS.get(str(detail.get("transition", "")), "Changed")
        status = str(detail.get("to", ""))
        who = (event.user.full_name or event.user.username) if event.user else event.username
        rows.append(
            {
                "at": event.occurred_at,
                "what": what,
                "status": ReportStatus(status).label if status in ReportStatus.values else "",
                "who": "RelayPACS" if who in ("", "relaypacs") else who,
            }
        )
    return rows


def _series_rows(study: Any) -> list[dict[str, Any]]:
    """Each series with what the upload records about its completeness: the images
    received and, when the image numbers have gaps, how many the numbers call for."""
    rows = []
    for series in study.series or []:
        received = int(series.get("instances") or 0)
        expected = int(series.get("expected_instances") or received)
        gaps = series.get("instance_number_gaps") or []
        if expected > received:
            completeness = f"{received} of {expected} images"
            note = "missing image numbers " + ", ".join(str(n) for n in gaps[:10])
            if len(gaps) > 10:
                note += ", …"
        else:
            completeness = f"{received} image" + ("" if received == 1 else "s")
            note = (
                "no gap in the image numbers; how many images the scanner made is not "
                "recorded, so missing last images would not show"
            )
        rows.append(
            {
                "number": series.get("series_number"),
                "modality": series.get("modality") or "",
                "description": series.get("description") or "",
                "completeness": completeness,
                "incomplete": expected > received,
                "note": note,
            }
        )
    return rows


def _viewer_url(report: Report) -> str:
    template = settings.PACS_VIEWER_URL
    if not template or not report.study_instance_uid:
        return ""
    return template.replace("{study_uid}", quote(report.study_instance_uid, safe=""))


def _report_page(
    request: HttpRequest,
    report: Report,
    *,
    error: ApplicationError | None = None,
    typed: Any = None,
    status: int = 200,
) -> HttpResponse:
    user = _user(request)
    uploads = selectors.report_uploads(report=report)
    upload_rows = [
        {
            "upload": item.upload,
            "studies": [{"study": s, "series": _series_rows(s)} for s in item.studies],
        }
        for item in uploads
    ]
    typed = typed or {}
    versions = list(report.versions.all())
    return render(
        request,
        "reports/report.html",
        {
            "report": report,
            "uploads": upload_rows,
            "first_upload": uploads[0].upload if uploads else None,
            "versions": versions,
            "history": _history(report),
            "actions": selectors.report_actions_for(report=report, user=user),
            "viewer_url": _viewer_url(report),
            "error": error,
            "findings": typed.get("findings", report.findings),
            "impression": typed.get("impression", report.impression),
            "question": typed.get("question", ""),
            "reason": typed.get("reason", ""),
            "age": age_text(timezone.now() - report.created_at),
            "stat_overdue": _row(
                report,
                user=user,
                now=timezone.now(),
                alert_after=timedelta(minutes=settings.REPORT_STAT_ALERT_MINUTES),
            ).stat_overdue,
            "alert_minutes": settings.REPORT_STAT_ALERT_MINUTES,
            "assignee": _assignee_text(report, user),
            "list_query": request.GET.get("list", ""),
        },
        status=status,
    )


@require_GET
@readers_only
def report_pdf(request: HttpRequest, report_id: int) -> HttpResponseBase:
    """The PDF of the current version, or of ``?version=N``; a report without one yet
    returns to its page with the sentence."""
    user = _user(request)
    report = selectors.report_get_for(report_id=report_id, user=user)
    raw = request.GET.get("version", "")
    if raw and not raw.isdigit():
        raise Http404
    try:
        version, handle = pdf.report_pdf_open(
            report=report, number=int(raw) if raw else None, user=user
        )
    except ApplicationError as exc:
        messages.error(request, f"{exc.message} {exc.hint}")
        return redirect("reports-web:report", report_id=report.pk)
    response = FileResponse(
        handle,
        content_type="application/pdf",
        as_attachment=True,
        filename=f"report-{report.pk}-v{version.number}.pdf",
    )
    response["Cache-Control"] = "private, no-store"
    return response


@require_GET
@readers_only
def report_next(request: HttpRequest, report_id: int) -> HttpResponse:
    """The next study to read after this one (the "next study" shortcut)."""
    user = _user(request)
    current = selectors.report_get_for(report_id=report_id, user=user)
    following = selectors.report_next_for(user=user, after=current)
    if following is None:
        messages.info(request, "No other study is waiting to be read.")
        return redirect(reverse("reports-web:worklist"))
    return redirect("reports-web:report", report_id=following.pk)
