from __future__ import annotations

from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.views import APIView

from .tokens import UploadTokenClaim


class AccessTokenOnly(BasePermission):
    """Signed in with an access token (an upload token opens one upload only)."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        return bool(request.user) and not isinstance(request.auth, UploadTokenClaim)
