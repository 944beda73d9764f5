"""The uploads in the admin site: what happened to each, and the two actions that exist
(retry, cancel), which go through the upload services like the API's."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import URLPattern, path, reverse
from django.utils.dateparse import parse_datetime
from django.utils.formats import localize
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.timezone import localtime

from accounts.clientinfo import client_info
from accounts.models import AuditEvent, User
from relaypacs.errors import ApplicationError

from .models import (
    FINAL_STATES,
    FileKind,
    PacsStatus,
    Study,
    UploadFile,
    UploadSession,
    UploadState,
)
from .services import upload_cancel, upload_retry
from .services.removal import upload_admin_delete

_UNITS = ("bytes", "kB", "MB", "GB", "TB")
# Where the page offers Retry (the service decides; e.g. a failed upload whose files are
# gone is refused with its sentence).
RETRYABLE_STATES = (UploadState.WAITING_FOR_PACS, UploadState.FAILED)
# What each audit event of an upload means, by (action, phase) of accounts.subscribers.
_TIMELINE_EVENTS = {
    ("data_import", "started"): "Upload started",
    ("data_import", "received"): "Every byte received; checking the files",
    ("data_import", "cancelled"): "Cancelled",
    ("data_import", "failed"): "Failed",
    ("instances_transferred", "acknowledged"): "PACS stored the images",
    ("instances_transferred", "confirmed"): "Delivered: the PACS lists every image",
}


def readable_size(size: int | None) -> str:
    """``1234567890`` → ``"1.2 GB"`` (decimal units, as disks and networks count)."""
    if size is None:
        return "-"
    value = float(size)
    for unit in _UNITS:
        if value < 1000 or unit == _UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def _by(request: HttpRequest) -> User | None:
    return request.user if isinstance(request.user, User) else None


def _relay_added_words(count: int) -> str:
    """The relay's own objects beside the clinic's images (the clinical note)."""
    noun = "object" if count == 1 else "objects"
    return f"{count} {noun} added by RelayPACS (the clinic's note)"


def _when(moment: datetime | str | None) -> str:
    if isinstance(moment, str):
        moment = parse_datetime(moment)
    return localize(localtime(moment)) if moment is not None else ""


class StudyInline(admin.TabularInline):
    model = Study
    extra = 0
    fields = ("study_date", "modality_list", "study_description", "instances", "pacs_state")
    readonly_fields = fields
    can_delete = False
    verbose_name_plural = "Studies in this upload"

    @admin.display(description="modalities")
    def modality_list(self, obj: Study) -> str:
        return ", ".join(obj.modalities or [])

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class NotSentFileInline(admin.TabularInline):
    """Each file that was rejected or skipped, or that the PACS refused, with its reason."""

    model = UploadFile
    extra = 0
    fields = ("name", "kind", "file_size", "why")
    readonly_fields = fields
    can_delete = False
    verbose_name = "file not sent"
    verbose_name_plural = "Files rejected, skipped or refused by the PACS (with the reason)"

    def get_queryset(self, request: HttpRequest) -> QuerySet[UploadFile]:
        queryset = super().get_queryset(request)
        return queryset.filter(kind__in=[FileKind.REJECTED, FileKind.SKIPPED]) | queryset.filter(
            pacs_status=PacsStatus.FAILED
        )

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="size")
    def file_size(self, obj: UploadFile) -> str:
        return readable_size(obj.size)

    @admin.display(description="reason")
    def why(self, obj: UploadFile) -> str:
        if obj.pacs_status == PacsStatus.FAILED:
            return f"Refused by the PACS: {obj.pacs_reason or 'no reason given'}"
        return obj.reason or "-"


@admin.register(UploadSession)
class UploadSessionAdmin(admin.ModelAdmin):
    list_display = [
        "state",
        "service_level",
        "owner",
        "facility",
        "size",
        "created_at",
        "completed_at",
        "short_id",
    ]
    list_filter = ["state", "service_level", "facility"]
    list_select_related = ["owner", "facility"]
    search_fields = ["=id", "owner__username"]
    date_hierarchy = "created_at"
    actions = ["retry_uploads", "cancel_uploads"]
    inlines = [StudyInline, NotSentFileInline]
    change_form_template = "admin/uploads/uploadsession/change_form.html"
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "state",
                    "problem",
                    "service_level",
                    "owner",
                    "facility",
                    "size",
                    "files_summary",
                    "warnings_list",
                ]
            },
        ),
        ("What happened", {"fields": ["timeline"]}),
        ("PACS receipt", {"fields": ["destination", "receipt_summary"]}),
        (
            "Technical details",
            {
                "classes": ["collapse"],
                "fields": [
                    "id",
                    "total_chunks",
                    "chunk_size",
                    "attempts",
                    "next_retry_at",
                    "lease_until",
                    "allow_partial",
                    "force_upload",
                    "files_deleted",
                ],
            },
        ),
    ]
    readonly_fields = [
        "state",
        "problem",
        "service_level",
        "owner",
        "facility",
        "size",
        "files_summary",
        "warnings_list",
        "timeline",
        "destination",
        "receipt_summary",
        "id",
        "total_chunks",
        "chunk_size",
        "attempts",
        "next_retry_at",
        "lease_until",
        "allow_partial",
        "force_upload",
        "files_deleted",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    # --- columns and fields -------------------------------------------------------------

    @admin.display(description="size", ordering="total_size")
    def size(self, obj: UploadSession) -> str:
        return readable_size(obj.total_size)

    @admin.display(description="upload")
    def short_id(self, obj: UploadSession) -> str:
        return str(obj.id)[:8]

    @admin.display(description="problem")
    def problem(self, obj: UploadSession) -> str:
        error = obj.error or {}
        sentences = [str(error.get(key) or "") for key in ("message", "hint")]
        return " ".join(s for s in sentences if s) or "-"

    @admin.display(description="files")
    def files_summary(self, obj: UploadSession) -> str:
        files = list(UploadFile.objects.filter(session=obj).values_list("kind", flat=True))
        if not files:
            return "-"
        labels = dict(FileKind.choices)
        return ", ".join(f"{labels[kind]}: {files.count(kind)}" for kind in dict.fromkeys(files))

    @admin.display(description="warnings")
    def warnings_list(self, obj: UploadSession) -> SafeString | str:
        if not obj.warnings:
            return "-"
        return format_html(
            "<ul>{}</ul>", format_html_join("", "<li>{}</li>", ((w,) for w in obj.warnings))
        )

    @admin.display(description="timeline")
    def timeline(self, obj: UploadSession) -> SafeString | str:
        """The upload's timestamps and its audit events (who did what, when), oldest first."""
        rows: list[tuple[datetime, str, str]] = []
        events = list(
            AuditEvent.objects.filter(object_type="upload", object_id=str(obj.id)).order_by(
                "occurred_at", "id"
            )
        )
        # A timestamp says what its audit event says (without who): shown only without one.
        phases = {str(event.detail.get("phase") or "") for event in events}
        for moment, what, phase in (
            (obj.created_at, "Opened", "started"),
            (obj.received_at, "Every byte received", "received"),
            (obj.completed_at, "Delivered to the PACS", "confirmed"),
            (obj.failed_at, "Failed", "failed"),
        ):
            if moment is not None and phase not in phases:
                rows.append((moment, what, ""))
        for event in events:
            phase = str(event.detail.get("phase") or "")
            what = _TIMELINE_EVENTS.get((event.action, phase)) or event.action.replace("_", " ")
            extra = [
                str(event.detail[key]) for key in ("destination", "code") if event.detail.get(key)
            ]
            if event.detail.get("instances"):
                extra.append(f"{event.detail['instances']} images")
            if event.detail.get("relay_added_instances"):
                extra.append(_relay_added_words(int(event.detail["relay_added_instances"])))
            who = f"by {event.username}" if event.username else ""
            rows.append((event.occurred_at, what, ", ".join([*extra, who] if who else extra)))
        rows.sort(key=lambda row: row[0])
        return format_html(
            '<table class="upload-timeline"><tbody>{}</tbody></table>',
            format_html_join(
                "",
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                ((_when(moment), what, extra) for moment, what, extra in rows),
            ),
        )

    @admin.display(description="per destination")
    def receipt_summary(self, obj: UploadSession) -> SafeString | str:
        destinations = (obj.receipt or {}).get("destinations") or {}
        if not destinations:
            return "Nothing was sent to a PACS yet."
        # The clinic's images and the relay's own objects (the clinical note) apart.
        relay_added = set(
            obj.files.filter(added_by_relay=True).values_list("sop_instance_uid", flat=True)
        )
        lines = []
        for key, record in sorted(destinations.items()):
            name = record.get("name") or key
            acknowledged = set(record.get("acknowledged") or [])
            refused = set(record.get("failed") or {})
            ours = len(acknowledged & relay_added)
            if record.get("confirmed_at"):
                # Confirmation counts every instance sent, the relay's objects included.
                confirmed = int(record.get("confirmed_instances") or 0)
                images = max(confirmed - len(relay_added), 0)
                status = (
                    f"confirmed {_when(record['confirmed_at'])}: {images} images listed by the PACS"
                )
            else:
                stored = len(acknowledged - relay_added)
                status = (
                    f"not confirmed yet: {stored} images stored, "
                    f"{len(refused - relay_added)} refused"
                )
            if ours:
                status += f"; {_relay_added_words(ours)}"
            lines.append((name, status))
        return format_html(
            "<ul>{}</ul>", format_html_join("", "<li><strong>{}</strong>: {}</li>", lines)
        )

    # --- retry and cancel ---------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        own = [
            path(
                "<path:object_id>/retry/",
                self.admin_site.admin_view(self.retry_view),
                name="uploads_uploadsession_retry",
            ),
            path(
                "<path:object_id>/cancel/",
                self.admin_site.admin_view(self.cancel_view),
                name="uploads_uploadsession_cancel",
            ),
        ]
        return own + super().get_urls()

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        session = UploadSession.objects.filter(pk=object_id).first()
        context = {
            **(extra_context or {}),
            # Nothing on the page is edited: the state changes only through the actions.
            "show_save": False,
            "show_save_and_continue": False,
            "show_save_and_add_another": False,
            "can_act": self.has_change_permission(request, session),
            "can_retry": session is not None and session.state in RETRYABLE_STATES,
            "can_cancel": session is not None and session.state not in FINAL_STATES,
            "title": "Upload",
        }
        return super().change_view(request, object_id, form_url, context)

    def _act(self, request: HttpRequest, object_id: str, act: str) -> HttpResponse:
        session = get_object_or_404(UploadSession, pk=object_id)
        target = reverse("admin:uploads_uploadsession_change", args=[session.pk])
        if request.method != "POST" or not self.has_change_permission(request, session):
            return HttpResponseRedirect(target)
        if self._apply(request, session, act):
            done = (
                "The upload is being sent to the PACS again."
                if act == "retry"
                else "The upload is cancelled and its files are deleted."
            )
            self.message_user(request, done, messages.SUCCESS)
        return HttpResponseRedirect(target)

    def _apply(self, request: HttpRequest, session: UploadSession, act: str) -> bool:
        """Run the service; its refusal is shown as the message it carries."""
        try:
            if act == "retry":
                upload_retry(session=session)
            else:
                upload_cancel(session=session, actor=_by(request))
        except ApplicationError as refusal:
            self.message_user(request, f"{refusal.message} {refusal.hint}".strip(), messages.ERROR)
            return False
        return True

    def retry_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return self._act(request, object_id, "retry")

    def cancel_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return self._act(request, object_id, "cancel")

    def _act_on_many(
        self, request: HttpRequest, queryset: QuerySet[UploadSession], act: str
    ) -> None:
        done = sum(self._apply(request, s, act) for s in queryset.order_by("pk"))
        if done:
            verb = "Retrying" if act == "retry" else "Cancelled"
            self.message_user(request, f"{verb} {done} upload(s).", messages.SUCCESS)

    @admin.action(
        description="Retry sending the selected uploads to the PACS", permissions=["change"]
    )
    def retry_uploads(self, request: HttpRequest, queryset: QuerySet[UploadSession]) -> None:
        self._act_on_many(request, queryset, "retry")

    @admin.action(description="Cancel the selected uploads", permissions=["change"])
    def cancel_uploads(self, request: HttpRequest, queryset: QuerySet[UploadSession]) -> None:
        self._act_on_many(request, queryset, "cancel")

    # Deleting here (one upload or "delete selected") goes through the service, so the
    # upload's bytes go with its row and the deletion is audited.
    def delete_model(self, request: HttpRequest, obj: UploadSession) -> None:
        upload_admin_delete(session=obj, by=_by(request), client=client_info(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[UploadSession]) -> None:
        for session in queryset.order_by("pk"):
            upload_admin_delete(session=session, by=_by(request), client=client_info(request))


_STUDY_FIELDS = (
    "session",
    "study_date",
    "study_description",
    "modalities",
    "instances",
    "pacs_state",
    "study_instance_uid",
)


@admin.register(Study)
class StudyAdmin(admin.ModelAdmin):
    """Read-only: studies are found by checking an upload's files."""

    list_display = ["pacs_state", "study_date", "modality_list", "instances", "session"]
    list_filter = ["pacs_state"]
    list_select_related = ["session"]
    fields = _STUDY_FIELDS
    readonly_fields = _STUDY_FIELDS

    @admin.display(description="modalities")
    def modality_list(self, obj: Study) -> str:
        return ", ".join(obj.modalities or [])

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(UploadFile)
class UploadFileAdmin(admin.ModelAdmin):
    list_display = ["kind", "pacs_status", "name", "file_size", "session"]
    list_filter = ["kind", "pacs_status"]
    list_select_related = ["session"]
    readonly_fields = [f.name for f in UploadFile._meta.fields]

    @admin.display(description="size", ordering="size")
    def file_size(self, obj: UploadFile) -> str:
        return readable_size(obj.size)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
