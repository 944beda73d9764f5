from django.urls import path

from . import apis

# Mounted at api/v1/ (relaypacs/urls.py).
urlpatterns = [
    path("reports", apis.ReportListApi.as_view(), name="reports-list"),
    path("reports/<int:report_id>", apis.ReportDetailApi.as_view(), name="report-detail"),
    path(
        "reports/upload/<uuid:upload_id>",
        apis.ReportForUploadApi.as_view(),
        name="report-for-upload",
    ),
    path(
        "reports/<int:report_id>/download", apis.ReportDownloadApi.as_view(), name="report-download"
    ),
    path("reports/<int:report_id>/reply", apis.ReportReplyApi.as_view(), name="report-reply"),
    path("reports/<int:report_id>/claim", apis.ReportClaimApi.as_view(), name="report-claim"),
    path("reports/<int:report_id>/draft", apis.ReportDraftApi.as_view(), name="report-draft"),
    path("reports/<int:report_id>/sign", apis.ReportSignApi.as_view(), name="report-sign"),
    path("reports/<int:report_id>/ask", apis.ReportAskApi.as_view(), name="report-ask"),
    path("reports/<int:report_id>/amend", apis.ReportAmendApi.as_view(), name="report-amend"),
    path("reports/<int:report_id>/cancel", apis.ReportCancelApi.as_view(), name="report-cancel"),
]
