"""The statistics' rollups and per-upload timelines in the admin site: read-only.

Both are derived from the domain events (``services``) and rebuilt from the uploads by
``manage.py analytics_rebuild``; a row edited or deleted by hand would make the figures
disagree with the uploads, so nobody adds, changes or deletes them here. Neither holds
patient data.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from .models import ROLLUP_FIELDS, UploadRollup, UploadTimeline


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(UploadRollup)
class UploadRollupAdmin(ReadOnlyAdmin):
    list_display = [
        "day",
        "grain",
        "facility",
        "modality",
        "service_level",
        "outcome",
        "uploads",
        "bytes",
    ]
    # Millions of rows at scale: no filters built from DISTINCT over the table (modality,
    # service level), no date drill-down and no full count on every page; the order is
    # the table's index (grain, facility, day).
    list_filter = ["grain", "outcome", "facility"]
    list_select_related = ["facility"]
    search_fields = ["facility__name", "facility__code", "=modality"]
    show_full_result_count = False
    ordering = ["grain", "facility_id", "-day"]
    fields = ["grain", "day", "facility", "modality", "service_level", "outcome", *ROLLUP_FIELDS]
    readonly_fields = list(fields)  # type: ignore[arg-type]


@admin.register(UploadTimeline)
class UploadTimelineAdmin(ReadOnlyAdmin):
    list_display = [
        "upload_id",
        "checked_at",
        "forwarding_at",
        "pacs_waits",
        "manual_retries",
        "telemetry_at",
        "updated_at",
    ]
    search_fields = ["=upload_id"]
    # One row per upload: ordered by its key, no date drill-down, no full count per page.
    show_full_result_count = False
    ordering = ["-upload_id"]
    readonly_fields = [field.name for field in UploadTimeline._meta.fields]
