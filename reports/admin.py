from django.contrib import admin

from .models import Letterhead, Report, ReportVersion


@admin.register(Letterhead)
class LetterheadAdmin(admin.ModelAdmin):
    list_display = ["facility"]
    list_select_related = ["facility"]


class ReportVersionInline(admin.TabularInline):
    model = ReportVersion
    extra = 0
    fields = ("number", "source", "signed_by_name", "signed_at", "superseded", "pdf_sha256")
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False


@admin.register(Report)
class ReportAdmin(admin.ModelAdmin):
    """Read-only: every change of a report goes through its transitions (audited)."""

    list_display = ["id", "status", "facility", "service_level", "source", "created_at"]
    list_filter = ["status", "service_level", "source"]
    list_select_related = ["facility"]
    readonly_fields = [field.name for field in Report._meta.fields]
    exclude = ["uploads"]
    inlines = [ReportVersionInline]

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False
