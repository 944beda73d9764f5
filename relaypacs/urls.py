from django.conf import settings
from django.contrib import admin
from django.http import FileResponse, HttpRequest
from django.http.response import HttpResponseBase
from django.shortcuts import render
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from relaypacs.metrics import metrics_view


def app_shell(request: HttpRequest) -> HttpResponseBase:
    """The PWA's page. WhiteNoise serves frontend/dist (index.html at /) when it existed at
    start-up; this view covers a build made after start-up and says what to do without one."""
    index = settings.FRONTEND_DIST / "index.html"
    if index.is_file():
        response = FileResponse(index.open("rb"), content_type="text/html; charset=utf-8")
        response["Cache-Control"] = "no-cache"
        return response
    return render(request, "frontend_missing.html", status=503)


urlpatterns = [
    path("", app_shell, name="app"),
    # The PWA's pages that emailed links open (email confirmation, password reset).
    path("verify-email", app_shell, name="app-verify-email"),
    path("reset-password", app_shell, name="app-reset-password"),
    path("admin/", admin.site.urls),
    # Staff web pages (server-rendered, session cookie): sign-in, the radiologists' pages.
    path("accounts/", include("accounts.web_urls")),
    path("reports/", include("reports.web_urls")),
    path("audit/", include("accounts.audit_web_urls")),
    path("api/v1/auth/", include("accounts.urls")),
    path("api/v1/", include("analytics.urls")),
    path("api/v1/", include("uploads.urls")),
    path("api/v1/", include("reports.urls")),
    path("api/v1/", include("notifications.urls")),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/v1/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    # Prometheus text for every process (relaypacs.metrics; token or allowlist in production).
    path("metrics", metrics_view, name="metrics"),
]
