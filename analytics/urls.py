"""The statistics API, mounted at api/v1/ before uploads' routes (relaypacs/urls.py):
``upload/stats`` is no upload id (those routes take a UUID), and it comes first anyway."""

from django.urls import path

from . import apis

urlpatterns = [
    path("upload/stats", apis.UploadStatsApi.as_view(), name="upload-stats"),
    path("upload/stats/export", apis.UploadStatsExportApi.as_view(), name="upload-stats-export"),
    path(
        "upload/<uuid:upload_id>/telemetry",
        apis.UploadTelemetryApi.as_view(),
        name="upload-telemetry",
    ),
]
