from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts.clientinfo import client_info
from accounts.models import User

from .models import Study, UploadFile, UploadSession
from .services.removal import upload_admin_delete


def _by(request: HttpRequest) -> User | None:
    return request.user if isinstance(request.user, User) else None


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

    # Deleting here (one upload or "delete selected") goes through the service, so the
    # upload's bytes go with its row and the deletion is audited.
    def delete_model(self, request: HttpRequest, obj: UploadSession) -> None:
        upload_admin_delete(session=obj, by=_by(request), client=client_info(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[UploadSession]) -> None:
        for session in queryset.order_by("pk"):
            upload_admin_delete(session=session, by=_by(request), client=client_info(request))


@admin.register(UploadFile)
class UploadFileAdmin(admin.ModelAdmin):
    list_display = ["name", "session", "kind", "pacs_status", "size"]
    list_filter = ["kind", "pacs_status"]
    readonly_fields = [f.name for f in UploadFile._meta.fields]
