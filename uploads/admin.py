from django.contrib import admin

from .models import Study, UploadFile, UploadSession


class StudyInline(admin.TabularInline):
    model = Study
    extra = 0
    fields = ("study_instance_uid", "study_date", "modalities", "instances", "pacs_state")
    readonly_fields = ("study_instance_uid", "study_date", "modalities", "instances", "pacs_state")
    can_delete = False


@admin.register(UploadSession)
class UploadSessionAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "owner",
        "state",
        "total_size",
        "service_level",
        "created_at",
        "completed_at",
    ]
    list_filter = ["state", "service_level"]
    list_select_related = ["owner"]
    search_fields = ["id", "owner__username"]
    readonly_fields = [f.name for f in UploadSession._meta.fields]
    inlines = [StudyInline]


@admin.register(UploadFile)
class UploadFileAdmin(admin.ModelAdmin):
    list_display = ["name", "session", "kind", "pacs_status", "size"]
    list_filter = ["kind", "pacs_status"]
    readonly_fields = [f.name for f in UploadFile._meta.fields]
