"""The statistics' rollups and per-upload timelines in the admin site: read-only.

Both are derived from the domain events (``services``) and rebuilt from the uploads by
``manage.py analytics_rebuild``; a row edited or deleted by hand would make the figures
disagree with the uploads, so nobody adds, changes or deletes them here. Neither holds
patient data.
"""

from __future__ import annotations

from django.contrib import admin

from relaypacs.admin_base import ViewOnlyAdmin

from .models import ROLLUP_FIELDS, UploadRollup, UploadTimeline


@admin.register(UploadRollup)
class UploadRollupAdmin(ViewOnlyAdmin):
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
class UploadTimelineAdmin(ViewOnlyAdmin):
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
