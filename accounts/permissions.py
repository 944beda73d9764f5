from __future__ import annotations

from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.views import APIView

from .models import Role


class CanReadAuditTrail(BasePermission):
    """Auditors and administrators read and export the audit trail."""

    message = "Only auditors and administrators can read the audit trail."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return getattr(request.user, "role", None) in (Role.AUDITOR, Role.ADMIN)
