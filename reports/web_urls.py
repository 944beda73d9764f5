"""The radiologist's pages (reports.web), mounted at reports/ (relaypacs/urls.py)."""

from django.urls import path

from . import web

app_name = "reports-web"
urlpatterns = [
    path("", web.worklist, name="worklist"),
    path("<int:report_id>/", web.report_page, name="report"),
    path("<int:report_id>/pdf", web.report_pdf, name="pdf"),
    path("<int:report_id>/next", web.report_next, name="next"),
    path("<int:report_id>/<slug:action>", web.report_action, name="action"),
]
