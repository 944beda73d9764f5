from django.contrib import admin
from django.contrib.auth.admin import UserAdmin

from .models import Facility, User


@admin.register(Facility)
class FacilityAdmin(admin.ModelAdmin):
    list_display = ["name", "code", "issuer_of_patient_id"]
    search_fields = ["name", "code"]


@admin.register(User)
class RelayUserAdmin(UserAdmin):
    list_display = ["username", "email", "role", "facility", "is_active", "email_verified"]
    list_filter = ["role", "facility", "is_active", "email_verified"]
    list_select_related = ["facility"]
    fieldsets = (
        *(UserAdmin.fieldsets or ()),
        ("RelayPACS", {"fields": ("role", "facility", "email_verified")}),
    )
    add_fieldsets = (
        *UserAdmin.add_fieldsets,
        ("RelayPACS", {"fields": ("role", "facility")}),
    )
