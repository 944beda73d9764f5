from __future__ import annotations

from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request
from rest_framework.views import APIView

from accounts.models import Role

from .tokens import UploadTokenClaim

# Roles that send studies; radiologists and auditors read, they do not upload.
UPLOADER_ROLES = frozenset({Role.CLINICIAN, Role.RADIOGRAPHER, Role.ADMIN})


class AccessTokenOnly(BasePermission):
    """Signed in with an access token (an upload token opens one upload only).

    Starting an upload also needs a role that uploads. Views of one upload leave the
    rest to queryset scoping, so an upload the user may not reach is 404, never 403.
    """

    message = "Your account is not allowed to send studies."

    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        if not user or isinstance(request.auth, UploadTokenClaim):
            return False
        if request.method in SAFE_METHODS or "upload_id" in view.kwargs:
            return True
        return getattr(user, "role", None) in UPLOADER_ROLES
