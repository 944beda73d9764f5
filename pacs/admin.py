from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from pacs.models import DeliveredInstance, PacsDestination, PacsHealthProbe
from pacs.selectors import destination_target, pacs_health


class PacsDestinationForm(forms.ModelForm):  # type: ignore[type-arg]
    class Meta:
        model = PacsDestination
        fields = [
            "name",
            "enabled",
            "priority",
            "dicomweb_url",
            "orthanc_url",
            "timeout_seconds",
            "username",
            "password",
            "token",
            "ca_bundle",
            "client_cert",
            "client_key",
        ]
        widgets = {
            # Kept on re-save but never shown in the page source as plain text.
            "password": forms.PasswordInput(render_value=True),
            "token": forms.PasswordInput(render_value=True),
        }


@admin.register(PacsDestination)
class PacsDestinationAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    form = PacsDestinationForm
    list_display = ["name", "enabled", "priority", "last_health", "dicomweb_url", "orthanc_url"]
    list_editable = ["priority", "enabled"]
    list_filter = ["enabled"]
    search_fields = ["name", "dicomweb_url", "orthanc_url"]
    readonly_fields = ["created_at", "updated_at"]
    actions = ["check_connection"]
    fieldsets = [
        (None, {"fields": ["name", "enabled", "priority"]}),
        ("Addresses", {"fields": ["dicomweb_url", "orthanc_url", "timeout_seconds"]}),
        ("Authentication", {"fields": ["username", "password", "token"]}),
        ("TLS", {"fields": ["ca_bundle", "client_cert", "client_key"]}),
        ("History", {"fields": ["created_at", "updated_at"]}),
    ]

    @admin.display(description="health (last check)")
    def last_health(self, obj: PacsDestination) -> str:
        probe = PacsHealthProbe.objects.filter(target_key=f"db:{obj.pk}").first()
        return _health_sentence(probe)

    @admin.action(description="Check the connection to the selected PACS")
    def check_connection(self, request: HttpRequest, queryset: QuerySet[PacsDestination]) -> None:
        for destination in queryset:
            health = pacs_health(target=destination_target(destination))
            level = messages.SUCCESS if health["state"] == "ok" else messages.WARNING
            self.message_user(request, f"{health['name']}: {health['detail']}", level)


def _health_sentence(probe: PacsHealthProbe | None) -> str:
    if probe is None or not probe.state:
        return "Not checked yet"
    state = "Working" if probe.state == "ok" else "Not working"
    return f"{state}: {probe.detail}" if probe.detail else state


@admin.register(PacsHealthProbe)
class PacsHealthProbeAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Read-only: the last health check of each PACS (the status page and the destinations
    list read the same rows); *Check the connection* on a destination checks it now."""

    list_display = ["target_key", "health", "checked_at", "next_probe_at"]
    fields = ["target_key", "health", "checked_at", "next_probe_at"]
    readonly_fields = ["target_key", "health", "checked_at", "next_probe_at"]

    @admin.display(description="health")
    def health(self, obj: PacsHealthProbe) -> str:
        return _health_sentence(obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(DeliveredInstance)
class DeliveredInstanceAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ["sop_instance_uid", "study_instance_uid", "target_key", "delivered_at"]
    list_filter = ["target_key"]
    search_fields = ["=sop_instance_uid", "=study_instance_uid"]
    date_hierarchy = "delivered_at"
    readonly_fields = ["target_key", "sop_instance_uid", "study_instance_uid", "delivered_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
