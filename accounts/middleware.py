"""Middleware of the accounts app.

``AuthSessionMiddleware``: a Django session tied to an AuthSession ends with it.

``PatientDataAccessAuditMiddleware``: audit of access to patient data served by other
apps' views.

The upload status shows patient names and study details: reading another person's upload
there is "DICOM Instances Accessed". Recorded after a successful response, at most once per
user and upload per ACCESS_AUDIT_WINDOW, so a PWA polling its progress does not flood the
trail. Listed by URL name, so the views themselves stay unaware of auditing.
"""

from __future__ import annotations

from collections.abc import Callable

from django.core.cache import cache
from django.http import HttpRequest, HttpResponse

from .clientinfo import client_info
from .models import User
from .selectors import audit_upload_origin
from .services.audit import FACILITY_OF_USER, audit_record
from .web import auth_session_guard

# URL name -> (audit action, object type, URL keyword holding the object id)
AUDITED_READS = {
    "upload-status": ("instances_accessed", "upload", "upload_id"),
}
# One audit row per user and upload in this many seconds of repeated reads.
ACCESS_AUDIT_WINDOW = 3600


class AuthSessionMiddleware:
    """Ends a Django session whose AuthSession (the staff web's or the admin site's
    sign-in) was revoked or idled out, before any view runs (``web.auth_session_guard``),
    so no page, the admin site included, accepts the cookie afterwards. Goes after the
    authentication, OTP and messages middleware. Costs nothing without a session cookie."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        auth_session_guard(request)
        return self.get_response(request)


class PatientDataAccessAuditMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        match = request.resolver_match
        if match is None or match.url_name not in AUDITED_READS:
            return response
        # DRF puts the authenticated user on the Django request as well.
        user = getattr(request, "user", None)
        if request.method != "GET" or response.status_code != 200 or not isinstance(user, User):
            return response
        action, object_type, key = AUDITED_READS[match.url_name]
        object_id = str(match.kwargs.get(key, ""))
        if cache.add(f"audit-access:{user.pk}:{object_type}:{object_id}", 1, ACCESS_AUDIT_WINDOW):
            client = client_info(request)
            # Filed under the upload's facility, like the upload's own events.
            origin = audit_upload_origin(upload_id=object_id) if object_type == "upload" else None
            audit_record(
                action=action,
                user=user,
                facility_id=origin.facility_id if origin is not None else FACILITY_OF_USER,
                ip_address=client.ip_address,
                user_agent=client.user_agent,
                object_type=object_type,
                object_id=object_id,
            )
        return response
