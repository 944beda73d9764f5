"""The auditor's page (accounts.audit_web), mounted at audit/ (relaypacs/urls.py)."""

from django.urls import path

from . import audit_web

app_name = "audit-web"
urlpatterns = [
    path("", audit_web.trail, name="trail"),
    path("export.csv", audit_web.export_csv, name="export-csv"),
    path("export.json", audit_web.export_json, name="export-json"),
]
